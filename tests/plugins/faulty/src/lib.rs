//! Test-only plugins that misbehave on purpose, one fault per config value.
//!
//! `faulty` (objective): a mean-squared loss pulling the views' embeddings together, with
//! `fault` = `none` | `panic` | `error` | `wrong-shape` | `wrong-length` (a tensor whose data
//! does not fill its shape) | `huge-shape` (dimensions whose product overflows) | `nan` |
//! `sleep`, triggered at step `at_step` and later. `faulty-encoder`: a linear map of the flattened image, with the same
//! faults in `forward`.
//!
//! Written on the SDK's autodiff: `mismatched-shapes` (a forward that multiplies `[B, D]` by
//! a `[D + 1, 3]` parameter from step `at_step` on, a plain projection before) and
//! `wrong-gradient` (a hand-written objective whose gradient for `scale.weight` is off by a
//! factor of 2: `latent check-plugin --deep` must name it).

use latent_sdk::prelude::*;

/// Which fault, and from which step.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `none`, `panic`, `error`, `wrong-shape`, `wrong-length`, `huge-shape`, `nan`, `sleep`,
    /// `drift` (encoder: its first weight moves by 1e-3 behind the optimizer's back).
    pub fault: String,
    /// First step (objective) or forward call (encoder) that misbehaves.
    pub at_step: u64,
    /// Milliseconds to stall for `sleep`.
    pub sleep_ms: u64,
    /// Output size of the encoder.
    pub dim: usize,
    /// Encoder: misbehave only on this rank of a data-parallel run (none: on every rank, and
    /// in one process).
    pub rank: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config { fault: "none".into(), at_step: 0, sleep_ms: 2000, dim: 8, rank: None }
    }
}

fn check(cfg: &Config) -> anyhow::Result<()> {
    let ok = [
        "none",
        "panic",
        "error",
        "wrong-shape",
        "wrong-length",
        "huge-shape",
        "nan",
        "sleep",
        "drift",
    ];
    ensure!(ok.contains(&cfg.fault.as_str()), "fault must be one of {ok:?}, got {:?}", cfg.fault);
    Ok(())
}

/// The faulty objective.
pub struct Faulty {
    cfg: Config,
}

impl Plugin for Faulty {
    type Config = Config;
    const NAME: &'static str = "faulty";
    const DESCRIPTION: &'static str = "test-only objective that fails on purpose";
    fn new(cfg: Config, _ctx: &Context) -> anyhow::Result<Self> {
        check(&cfg)?;
        Ok(Faulty { cfg })
    }
}

impl Module for Faulty {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
}

impl ObjectivePlugin for Faulty {
    fn compute(&mut self, b: ObjectiveBatch) -> anyhow::Result<ObjectiveResult> {
        let fire = b.step >= self.cfg.at_step;
        match self.cfg.fault.as_str() {
            "panic" if fire => panic!("deliberate panic at step {}", b.step),
            "error" if fire => bail!("deliberate error at step {}", b.step),
            "sleep" if fire => {
                std::thread::sleep(std::time::Duration::from_millis(self.cfg.sleep_ms))
            }
            _ => {}
        }
        // loss = mean over elements of (v0 - v1)^2 (or of v0^2 with one view)
        let v0 = &b.views[0];
        let zero = Tensor::zeros(v0.shape.clone());
        let v1 = b.views.get(1).unwrap_or(&zero);
        let n = v0.len().max(1) as f32;
        let diff: Vec<f32> = v0.data.iter().zip(&v1.data).map(|(a, c)| a - c).collect();
        let mut loss = diff.iter().map(|d| d * d).sum::<f32>() / n;
        let g0: Vec<f32> = diff.iter().map(|d| 2.0 * d / n).collect();
        let mut grads = vec![Tensor::new(v0.shape.clone(), g0.clone())];
        if b.views.len() > 1 {
            grads.push(Tensor::new(v0.shape.clone(), g0.iter().map(|g| -g).collect()));
        }
        if fire && self.cfg.fault == "nan" {
            loss = f32::NAN;
        }
        if fire && self.cfg.fault == "wrong-shape" {
            grads[0] = Tensor::zeros(vec![1, 1]);
        }
        if fire && self.cfg.fault == "wrong-length" {
            grads[0].data.pop(); // the fields are public: the shape now promises one value more
        }
        if fire && self.cfg.fault == "huge-shape" {
            grads[0].shape = vec![usize::MAX, 2];
        }
        Ok(ObjectiveResult {
            loss,
            grads,
            metrics: vec![("diff".into(), loss as f64)],
            target_momentum: 1.0,
        })
    }
}

/// The faulty encoder: `y = W · flatten(x)`.
pub struct FaultyEncoder {
    cfg: Config,
    fc: Option<Linear>,
    calls: u64,
}

impl Plugin for FaultyEncoder {
    type Config = Config;
    const NAME: &'static str = "faulty-encoder";
    const DESCRIPTION: &'static str = "test-only encoder that fails on purpose";
    fn new(mut cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        check(&cfg)?;
        if cfg.rank.is_some_and(|r| ctx.collective.into_option().map(|c| c.rank) != Some(r)) {
            cfg.fault = "none".into(); // another rank's fault
        }
        Ok(FaultyEncoder { cfg, fc: None, calls: 0 })
    }
}

impl Module for FaultyEncoder {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some(fc) = &mut self.fc {
            fc.visit_params(f)
        }
    }
}

impl EncoderPlugin for FaultyEncoder {
    fn out_dim(&mut self, input: [usize; 3]) -> anyhow::Result<usize> {
        if self.fc.is_none() {
            self.fc = Some(Linear::new(
                &Init::new(0).pp("fc"),
                input.iter().product(),
                self.cfg.dim,
                true,
            ));
        }
        Ok(self.cfg.dim)
    }
    fn forward(&mut self, x: Tensor, train: bool) -> anyhow::Result<Tensor> {
        let fire = self.calls >= self.cfg.at_step;
        self.calls += 1;
        let n = x.shape[0];
        let d = x.len() / n.max(1);
        let fc = self.fc.get_or_insert_with(|| Linear::new(&Init::new(0).pp("fc"), d, 8, true));
        let mut y = fc.forward(&Tensor::new(vec![n, d], x.data), train);
        match self.cfg.fault.as_str() {
            "panic" if fire => panic!("deliberate panic in forward call {}", self.calls - 1),
            "error" if fire => bail!("deliberate error in forward call {}", self.calls - 1),
            "nan" if fire => y.data[0] = f32::NAN,
            "wrong-shape" if fire => y = Tensor::zeros(vec![n + 1, 3]),
            "wrong-length" if fire => y.data.truncate(y.data.len() / 2),
            "huge-shape" if fire => y.shape = vec![usize::MAX, usize::MAX],
            // a plugin with hidden state of its own: its weights move by more than the update
            "drift" if fire => fc.weight.value[0] += 1e-3,
            "sleep" if fire => {
                std::thread::sleep(std::time::Duration::from_millis(self.cfg.sleep_ms))
            }
            _ => {}
        }
        Ok(y)
    }
    fn backward(&mut self, grad: Tensor) -> anyhow::Result<()> {
        self.fc.as_mut().context("backward before forward")?.backward(&grad);
        Ok(())
    }
}

/// An objective on the autodiff tape whose forward goes wrong at step `at_step`.
pub struct MismatchedShapes {
    at_step: u64,
    /// `proj.weight` `[D, 3]` (a correct product); `bad.weight` `[D + 1, 3]`.
    proj: Param,
    bad: Param,
}

/// `mismatched-shapes` settings.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct ShapesConfig {
    /// Feature size of the views.
    pub input_dim: usize,
    /// First step with the mismatched product.
    pub at_step: u64,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        ShapesConfig { input_dim: 8, at_step: u64::MAX }
    }
}

impl Plugin for MismatchedShapes {
    type Config = ShapesConfig;
    const NAME: &'static str = "mismatched-shapes";
    const DESCRIPTION: &'static str =
        "test-only objective whose forward multiplies mismatched shapes from a step on";
    fn new(cfg: ShapesConfig, ctx: &Context) -> anyhow::Result<Self> {
        let init = Init::new(ctx.seed);
        let d = cfg.input_dim;
        Ok(MismatchedShapes {
            at_step: cfg.at_step,
            proj: init.kaiming_uniform("proj.weight", vec![d, 3], d),
            bad: init.kaiming_uniform("bad.weight", vec![d + 1, 3], d),
        })
    }
}

impl Module for MismatchedShapes {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.proj);
        f(&mut self.bad);
    }
}

impl Objective for MismatchedShapes {
    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        let w = if b.step >= self.at_step { &self.bad } else { &self.proj };
        let z: Vec<Var> = b.views.iter().map(|v| v.matmul(&g.param(w))).collect();
        let loss = match z.len() {
            1 => z[0].square().mean(),
            _ => (&z[0] - &z[1]).square().mean(),
        };
        Ok(Loss::new(loss))
    }
}

/// A hand-written objective with a deliberately wrong parameter gradient:
/// `loss = mean((w ⊙ v0 − v1)²)`, and d loss / d w reported twice too large.
pub struct WrongGradient {
    scale: Param,
}

impl Plugin for WrongGradient {
    type Config = ShapesConfig;
    const NAME: &'static str = "wrong-gradient";
    const DESCRIPTION: &'static str =
        "test-only objective whose scale.weight gradient is twice the true one";
    fn new(cfg: ShapesConfig, ctx: &Context) -> anyhow::Result<Self> {
        let mut scale = Init::new(ctx.seed).kaiming_uniform("scale.weight", vec![cfg.input_dim], 1);
        scale.value.iter_mut().for_each(|v| *v += 1.0);
        Ok(WrongGradient { scale })
    }
}

impl Module for WrongGradient {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.scale);
    }
}

impl ObjectivePlugin for WrongGradient {
    fn compute(&mut self, b: ObjectiveBatch) -> anyhow::Result<ObjectiveResult> {
        ensure!(b.views.len() == 2, "wrong-gradient needs 2 views");
        let (n, d) = b.views[0].dims2("view 0")?;
        ensure!(
            d == self.scale.value.len(),
            "views have {d} features, the plugin {}",
            self.scale.value.len()
        );
        let m = (n * d) as f32;
        let (v0, v1, w) = (&b.views[0].data, &b.views[1].data, &self.scale.value);
        let r: Vec<f32> = (0..n * d).map(|k| w[k % d] * v0[k] - v1[k]).collect();
        let loss = r.iter().map(|x| x * x).sum::<f32>() / m;
        let g0: Vec<f32> = (0..n * d).map(|k| 2.0 * r[k] * w[k % d] / m).collect();
        let g1: Vec<f32> = r.iter().map(|x| -2.0 * x / m).collect();
        if b.train {
            for k in 0..n * d {
                self.scale.grad[k % d] += 2.0 * (2.0 * r[k] * v0[k] / m); // the deliberate factor 2
            }
        }
        let grads = if b.train {
            vec![Tensor::new(vec![n, d], g0), Tensor::new(vec![n, d], g1)]
        } else {
            vec![]
        };
        Ok(ObjectiveResult { loss, grads, metrics: vec![], target_momentum: 1.0 })
    }
}

latent_sdk::export_plugins!(objectives: [Faulty, MismatchedShapes, WrongGradient], encoders: [FaultyEncoder], augmentations: []);
