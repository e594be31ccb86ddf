//! Named parameter buffers ([`Param`]), the [`Module`] visitor that exposes them, and
//! [`Init`], a seeded initialiser with name prefixes (as candle's `VarBuilder`).

use crate::abi::ParamRole;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::{cell::RefCell, rc::Rc};

/// One named buffer with its gradient. The host reads and writes these through the ABI.
#[derive(Clone, Debug)]
pub struct Param {
    /// Dotted name, unique within its module.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub value: Vec<f32>,
    /// Accumulated gradient (same length as `value`; unused for buffers and targets).
    pub grad: Vec<f32>,
    /// What the host does with it.
    pub role: ParamRole,
    /// For targets: the online parameter it follows.
    pub ema_of: Option<String>,
    /// A trained parameter the optimizer leaves alone for now (PyTorch's `grad = None`):
    /// `take_grads` hands the host an empty gradient for it, so neither its value nor its
    /// optimizer moments move, while gradients still flow *through* it to earlier layers.
    /// DINO's `freeze_last_layer` sets it for the first epochs.
    pub frozen: bool,
}

impl Param {
    /// A parameter with the given values.
    pub fn new(name: String, shape: Vec<usize>, value: Vec<f32>, role: ParamRole) -> Param {
        assert_eq!(shape.iter().product::<usize>(), value.len(), "param {name}");
        let grad = vec![0.0; value.len()];
        Param { name, shape, value, grad, role, ema_of: None, frozen: false }
    }

    /// True for roles the optimizer updates.
    pub fn trainable(&self) -> bool {
        matches!(self.role, ParamRole::Weight | ParamRole::NoDecay)
    }

    /// A non-trained copy that follows `self` by EMA, named `name`.
    pub fn target_copy(&self, name: String) -> Param {
        let role = if self.trainable() { ParamRole::Target } else { ParamRole::Buffer };
        let ema_of = self.trainable().then(|| self.name.clone());
        Param {
            name,
            shape: self.shape.clone(),
            value: self.value.clone(),
            grad: vec![0.0; self.value.len()],
            role,
            ema_of,
            frozen: false,
        }
    }
}

/// Anything that owns parameters: layers, heads, whole encoders.
pub trait Module {
    /// Calls `f` on every parameter, always in the same order.
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param));

    /// Zeroes every gradient.
    fn zero_grad(&mut self) {
        self.visit_params(&mut |p| p.grad.iter_mut().for_each(|g| *g = 0.0));
    }

    /// Number of trainable scalars.
    fn num_trainable(&mut self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |p| {
            if p.trainable() {
                n += p.value.len()
            }
        });
        n
    }
}

/// The most values one parameter may hold (4 GiB of f32): beyond it a config typo
/// (`hidden_dim = 100000000000`) is refused by name instead of aborting the process when the
/// allocation fails.
pub const MAX_PARAM_VALUES: usize = 1 << 30;

fn count(name: &str, shape: &[usize]) -> usize {
    match shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= MAX_PARAM_VALUES => n,
        n => refuse(format!(
            "parameter {name} of shape {shape:?} would hold {} values, more than the {MAX_PARAM_VALUES} a parameter may have: check the size keys of the config",
            n.map_or("too many".to_string(), |n| n.to_string())
        )),
    }
}

/// Unwinds with `msg` to the plugin wrapper, which reports it as an error of the call (without
/// the panic hook's backtrace: this is a config error, not a bug).
fn refuse(msg: String) -> ! {
    std::panic::resume_unwind(Box::new(msg))
}

/// An empty vector with room for `n` values; a failed allocation is a panic naming `what`
/// (which the plugin wrapper reports as an error) instead of an abort.
fn alloc(what: &str, n: usize) -> Vec<f32> {
    let mut v = Vec::new();
    if v.try_reserve_exact(n).is_err() {
        refuse(format!("cannot allocate {n} values ({} MiB) for {what}: not enough memory; check the size keys of the config", n / (1 << 18)));
    }
    v
}

/// A seeded initialiser that hands out parameter names under a prefix.
///
/// `Init::new(seed).pp("stem").pp("conv")` names parameters `stem.conv.<leaf>`; all clones share
/// one random stream, so the order of construction fixes the values.
#[derive(Clone)]
pub struct Init {
    prefix: String,
    rng: Rc<RefCell<ChaCha8Rng>>,
}

impl Init {
    /// A root initialiser.
    pub fn new(seed: u64) -> Init {
        Init { prefix: String::new(), rng: Rc::new(RefCell::new(ChaCha8Rng::seed_from_u64(seed))) }
    }

    /// A child with `name` appended to the prefix.
    pub fn pp(&self, name: impl AsRef<str>) -> Init {
        Init { prefix: self.name(name.as_ref()), rng: self.rng.clone() }
    }

    /// The full name of a leaf under this prefix.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// `n` values uniform in `[-bound, bound)`.
    pub fn uniform(&self, n: usize, bound: f32) -> Vec<f32> {
        let mut v = alloc(&self.prefix, n);
        let mut rng = self.rng.borrow_mut();
        v.extend((0..n).map(|_| rng.gen_range(-bound..bound.max(f32::MIN_POSITIVE))));
        v
    }

    /// PyTorch's default for Linear and Conv layers: weight kaiming-uniform with a = sqrt(5),
    /// that is uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)); the same bound for the bias.
    pub fn kaiming_uniform(&self, leaf: &str, shape: Vec<usize>, fan_in: usize) -> Param {
        let n = count(&self.name(leaf), &shape);
        let bound = 1.0 / (fan_in as f32).sqrt();
        Param::new(self.name(leaf), shape, self.uniform(n, bound), ParamRole::Weight)
    }

    /// Normal(0, std) values truncated to `[a, b]` by redrawing (PyTorch's `trunc_normal_`, as
    /// ViT and DINO heads initialise their Linear weights: std 0.02, a = −2, b = 2).
    pub fn trunc_normal(&self, leaf: &str, shape: Vec<usize>, std: f32, a: f32, b: f32) -> Param {
        let n = count(&self.name(leaf), &shape);
        let mut v = alloc(&self.name(leaf), n);
        let mut rng = self.rng.borrow_mut();
        while v.len() < n {
            // Box–Muller, both halves
            let (u1, u2): (f32, f32) = (rng.gen_range(f32::MIN_POSITIVE..1.0), rng.gen());
            let r = (-2.0 * u1.ln()).sqrt();
            for z in
                [r * (std::f32::consts::TAU * u2).cos(), r * (std::f32::consts::TAU * u2).sin()]
            {
                let x = z * std;
                if (a..=b).contains(&x) && v.len() < n {
                    v.push(x);
                }
            }
        }
        drop(rng);
        Param::new(self.name(leaf), shape, v, ParamRole::Weight)
    }

    /// A parameter of constant value.
    pub fn constant(&self, leaf: &str, shape: Vec<usize>, value: f32, role: ParamRole) -> Param {
        let n = count(&self.name(leaf), &shape);
        let mut v = alloc(&self.name(leaf), n);
        v.resize(n, value);
        Param::new(self.name(leaf), shape, v, role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_beyond_the_bound_is_refused_naming_it_not_an_abort() {
        // regression: hidden_dim = 100000000000 aborted with "memory allocation failed"
        let init = Init::new(0).pp("projector");
        for shape in [vec![100_000_000_000, 128], vec![usize::MAX, 2]] {
            let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                init.kaiming_uniform("weight", shape.clone(), 128)
            }))
            .unwrap_err();
            let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains("projector.weight") && msg.contains("size keys"), "{msg}");
        }
        assert_eq!(init.kaiming_uniform("ok", vec![3, 4], 4).value.len(), 12);
    }

    #[test]
    fn trunc_normal_has_the_asked_std_and_stays_inside_its_bounds() {
        let p = Init::new(3).trunc_normal("w", vec![200, 100], 0.5, -1.0, 1.0);
        assert!(p.value.iter().all(|x| (-1.0..=1.0).contains(x)));
        let n = p.value.len() as f64;
        let mean = p.value.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (p.value.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        // a normal of σ 0.5 cut at ±2σ has std 0.5 · 0.880 = 0.440
        assert!(mean.abs() < 0.01 && (std - 0.440).abs() < 0.01, "mean {mean}, std {std}");
    }
}
