//! Finite-difference checks of anything written on the tape.
//!
//! [`check`] compares the tape's gradients of a scalar `f(inputs)` (and of the parameters of a
//! [`Module`] it uses) with central differences, and returns the worst error per tensor:
//! the largest absolute difference over the largest magnitude in either (at least 1e-3).

use super::{Graph, Var};
use crate::kit::gradcheck::{perturb, restore, snapshot};
use crate::kit::{Module, Param, Tensor};

/// One checked tensor: its name (`input 0`, a parameter name) and its worst relative error.
#[derive(Debug, Clone)]
pub struct Checked {
    /// `input k` or the parameter's name.
    pub name: String,
    /// Largest |analytic − numeric| over the largest magnitude (≥ 1e-3).
    pub error: f64,
}

/// Largest absolute difference, relative to the largest magnitude in either (at least 1e-3).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = a.iter().chain(b).fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

/// Checks d f / d inputs and d f / d every trainable parameter of `m`, with step `h`, in
/// training mode. `f` must be a scalar and deterministic; buffers (running statistics) are
/// restored around every evaluation.
pub fn check<M: Module + ?Sized>(
    m: &mut M,
    inputs: &[Tensor],
    h: f32,
    f: impl Fn(&mut M, &Graph, &[Var]) -> Var,
) -> Vec<Checked> {
    let snap = snapshot(m);
    let value = |m: &mut M, xs: &[Tensor]| -> f64 {
        let g = Graph::no_grad(true);
        let vs: Vec<Var> = xs.iter().map(|x| g.input(x).expect("input")).collect();
        let l = f(m, &g, &vs).item();
        restore(m, &snap);
        l
    };
    let g = Graph::new(true);
    let vs: Vec<Var> = inputs.iter().map(|x| g.input(x).expect("input")).collect();
    let loss = f(m, &g, &vs);
    restore(m, &snap);
    let mut grads = g.backward(&loss).expect("backward");
    let mut before = Vec::new();
    m.visit_params(&mut |p| before.push(p.grad.clone()));
    grads.add_to_params(m);
    let mut out = Vec::new();
    for (k, x) in inputs.iter().enumerate() {
        let ana: Vec<f64> = grads.of(&vs[k]).iter().map(|&v| v as f64).collect();
        let mut xs = inputs.to_vec();
        let num: Vec<f64> = (0..x.len())
            .map(|i| {
                xs[k].data[i] = x.data[i] + h;
                let lp = value(m, &xs);
                xs[k].data[i] = x.data[i] - h;
                let lm = value(m, &xs);
                xs[k].data[i] = x.data[i];
                (lp - lm) / (2.0 * h as f64)
            })
            .collect();
        out.push(Checked { name: format!("input {k}"), error: rel_err(&ana, &num) });
    }
    let mut params: Vec<(String, Vec<f32>, bool)> = Vec::new();
    let mut i = 0;
    m.visit_params(&mut |p| {
        let g: Vec<f32> = p.grad.iter().zip(&before[i]).map(|(a, b)| a - b).collect();
        params.push((p.name.clone(), g, p.trainable()));
        i += 1;
    });
    for (pi, (name, grad, trainable)) in params.iter().enumerate() {
        if !trainable {
            continue;
        }
        let num: Vec<f64> = (0..grad.len())
            .map(|j| {
                perturb(m, pi, j, h);
                let lp = value(m, inputs);
                perturb(m, pi, j, -2.0 * h);
                let lm = value(m, inputs);
                perturb(m, pi, j, h);
                (lp - lm) / (2.0 * h as f64)
            })
            .collect();
        let ana: Vec<f64> = grad.iter().map(|&v| v as f64).collect();
        out.push(Checked { name: name.clone(), error: rel_err(&ana, &num) });
    }
    out
}

/// [`check`] without a module.
pub fn check_fn(inputs: &[Tensor], h: f32, f: impl Fn(&Graph, &[Var]) -> Var) -> Vec<Checked> {
    check(&mut NoParams, inputs, h, |_, g, v| f(g, v))
}

/// Panics naming every tensor whose error is `tol` or more.
pub fn assert_within(what: &str, checked: &[Checked], tol: f64) {
    let bad: Vec<_> = checked.iter().filter(|c| c.error.is_nan() || c.error >= tol).collect();
    assert!(bad.is_empty(), "{what}: gradients off (tolerance {tol:.1e}): {bad:?}");
}

struct NoParams;
impl Module for NoParams {
    fn visit_params(&mut self, _: &mut dyn FnMut(&mut Param)) {}
}
