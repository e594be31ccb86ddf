//! The one optimizer of the host: SGD (momentum, Nesterov), AdamW and LARS over every plugin's
//! parameters, and the learning-rate schedule (linear warmup, then cosine decay).
//!
//! Roles decide the treatment ([`ParamRole`]): `Weight` gets weight decay (and LARS
//! adaptation); `NoDecay` (biases, batch-norm affine) gets neither, as the SimCLR and BYOL
//! recipes do; `Buffer` and `Target` are never touched.
//!
//! ```text
//! SGD   (PyTorch):  g = ∇ + λ·w;  b = μ·b + g  (b₀ = g);  d = nesterov ? g + μ·b : b;  w -= η·d
//! AdamW (PyTorch):  w -= η·λ·w;  m = β₁m + (1−β₁)∇;  v = β₂v + (1−β₂)∇²;
//!                   w -= η · (m / (1−β₁ᵗ)) / (sqrt(v / (1−β₂ᵗ)) + ε)
//! LARS  (You et al. 2017, as in SimCLR/BYOL):  g = ∇ + λ·w;  r = τ·‖w‖/‖g‖ (1 when either
//!                   norm is 0, and for NoDecay parameters);  b = μ·b + r·g;  w -= η·b
//! schedule:         η(s) = η₀·(s+1)/W for s < W;  then η_min + (η₀ − η_min)·(1 + cos(π·(s−W)/(T−W)))/2
//! weight decay:     λ(s) = λ_end + (λ − λ_end)·(1 + cos(π·s/T))/2 with `weight_decay_end` (DINO:
//!                   0.04 → 0.4), else λ
//! clipping (before the update, on the gradients of every trained parameter):
//!   clip_grad       each parameter's gradient on its own: g *= c/(‖g‖ + 1e-6) when that is < 1
//!                   (DINO's `utils.clip_gradients`, 3.0 in the reference)
//!   clip_grad_norm  all of them together: g *= c/(‖(g₁, g₂, ...)‖ + 1e-6) when < 1
//!                   (`torch.nn.utils.clip_grad_norm_`)
//! ```

use anyhow::{bail, Result};
use latent_abi::ParamRole;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The optimizer (`optim.name`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum (and Nesterov), PyTorch's.
    Sgd,
    /// Adam with decoupled weight decay, PyTorch's.
    Adamw,
    /// LARS (You et al. 2017), as in SimCLR and BYOL.
    Lars,
}

/// The learning rate after warm-up (`optim.schedule`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// A cosine from the peak to `min_lr` at the last step.
    Cosine,
    /// The peak rate to the end.
    Constant,
}

/// Optimizer settings (`[optim]` in the config).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// `sgd`, `adamw` or `lars`.
    pub name: OptimizerKind,
    /// Base learning rate η₀.
    pub lr: f64,
    /// Multiply `lr` by batch_size / 256 (the SimCLR/BYOL linear scaling rule).
    pub scale_lr_by_batch: bool,
    /// Momentum μ (SGD, LARS).
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// Weight decay λ (Weight parameters only).
    pub weight_decay: f64,
    /// Adam β₁, β₂.
    pub betas: [f64; 2],
    /// Adam ε.
    pub eps: f64,
    /// LARS trust coefficient τ.
    pub trust_coefficient: f64,
    /// Warmup length in steps (takes precedence over `warmup_epochs` when > 0).
    pub warmup_steps: u64,
    /// Warmup length in epochs.
    pub warmup_epochs: f64,
    /// `cosine` (decay to `min_lr` after warmup) or `constant`.
    pub schedule: LrSchedule,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f64,
    /// Weight decay at the last step, reached on a cosine from `weight_decay` (off: constant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay_end: Option<f64>,
    /// Clip each parameter's gradient norm to this on its own (DINO's `clip_grad`; off: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_grad: Option<f64>,
    /// Clip the norm of all gradients together to this (off: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            name: OptimizerKind::Sgd,
            lr: 0.06,
            scale_lr_by_batch: false,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            trust_coefficient: 0.001,
            warmup_steps: 0,
            warmup_epochs: 0.0,
            schedule: LrSchedule::Cosine,
            min_lr: 0.0,
            weight_decay_end: None,
            clip_grad: None,
            clip_grad_norm: None,
        }
    }
}

impl OptimConfig {
    /// The weight decay at step `s` of `total`: a cosine from `weight_decay` to
    /// `weight_decay_end` (DINO's `cosine_scheduler(wd, wd_end, ...)`), or constant.
    pub fn weight_decay_at(&self, s: u64, total: u64) -> f64 {
        match self.weight_decay_end {
            Some(end) if total > 0 => {
                let p = (s.min(total) as f64) / total as f64;
                end + (self.weight_decay - end) * (1.0 + (std::f64::consts::PI * p).cos()) / 2.0
            }
            _ => self.weight_decay,
        }
    }

    /// Clips the gradients of the trained parameters in place (`clip_grad` per parameter, then
    /// `clip_grad_norm` over all); returns the norm of all of them before clipping.
    pub fn clip(&self, grads: &mut [&mut [f32]]) -> f64 {
        let norm = |g: &[f32]| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        let total = grads.iter().map(|g| norm(g).powi(2)).sum::<f64>().sqrt();
        if let Some(c) = self.clip_grad {
            for g in grads.iter_mut() {
                let coef = c / (norm(g) + 1e-6);
                if coef < 1.0 {
                    g.iter_mut().for_each(|x| *x *= coef as f32);
                }
            }
        }
        if let Some(c) = self.clip_grad_norm {
            let now = grads.iter().map(|g| norm(g).powi(2)).sum::<f64>().sqrt();
            let coef = c / (now + 1e-6);
            if coef < 1.0 {
                grads.iter_mut().for_each(|g| g.iter_mut().for_each(|x| *x *= coef as f32));
            }
        }
        total
    }

    /// Checks the values, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("optim.lr must be positive, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("optim.momentum must be in [0, 1), got {}", self.momentum);
        }
        if self.weight_decay < 0.0 {
            bail!("optim.weight_decay must be >= 0, got {}", self.weight_decay);
        }
        if let Some(w) = self.weight_decay_end.filter(|w| !(*w >= 0.0 && w.is_finite())) {
            bail!("optim.weight_decay_end must be >= 0, got {w}");
        }
        for (key, v) in [("clip_grad", self.clip_grad), ("clip_grad_norm", self.clip_grad_norm)] {
            if let Some(c) = v.filter(|c| !(*c > 0.0 && c.is_finite())) {
                bail!("optim.{key} must be positive (leave it out for no clipping), got {c}");
            }
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            bail!("optim.betas must be in [0, 1), got {:?}", self.betas);
        }
        Ok(())
    }
}

/// Learning-rate schedule resolved for a run.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Peak learning rate (after batch scaling).
    pub base: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
    /// Cosine or constant after warmup.
    pub cosine: bool,
    /// Floor of the cosine.
    pub min_lr: f64,
}

impl Schedule {
    /// The schedule of `cfg` for a run of `total` steps, `steps_per_epoch` per epoch.
    pub fn new(cfg: &OptimConfig, batch_size: usize, total: u64, steps_per_epoch: u64) -> Schedule {
        let base = if cfg.scale_lr_by_batch { cfg.lr * batch_size as f64 / 256.0 } else { cfg.lr };
        let warmup = if cfg.warmup_steps > 0 {
            cfg.warmup_steps
        } else {
            (cfg.warmup_epochs * steps_per_epoch as f64).round() as u64
        };
        Schedule {
            base,
            warmup: warmup.min(total),
            total,
            cosine: cfg.schedule == LrSchedule::Cosine,
            min_lr: cfg.min_lr,
        }
    }

    /// Learning rate at step `s` (from 0).
    pub fn lr(&self, s: u64) -> f64 {
        if s < self.warmup {
            return self.base * (s + 1) as f64 / self.warmup as f64;
        }
        if !self.cosine || self.total <= self.warmup {
            return self.base;
        }
        let p = (s - self.warmup) as f64 / (self.total - self.warmup) as f64;
        self.min_lr
            + (self.base - self.min_lr) * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos()) / 2.0
    }
}

/// Per-parameter optimizer state, keyed by the parameter's full name.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct State {
    /// Momentum buffer (SGD, LARS) or Adam's first moment.
    pub m: Vec<f32>,
    /// Adam's second moment.
    pub v: Vec<f32>,
}

/// The optimizer.
#[derive(Clone, Debug)]
pub struct Optimizer {
    /// Settings.
    pub cfg: OptimConfig,
    /// State by parameter name.
    pub state: BTreeMap<String, State>,
    /// Number of updates done (Adam's t).
    pub t: u64,
    /// The weight decay of the current step (see [`OptimConfig::weight_decay_at`]).
    pub wd: f64,
}

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(cfg: OptimConfig) -> Result<Optimizer> {
        cfg.validate()?;
        let wd = cfg.weight_decay;
        Ok(Optimizer { cfg, state: BTreeMap::new(), t: 0, wd })
    }

    /// Starts an update: call once per step before the `update` calls of that step.
    pub fn begin_step(&mut self) {
        self.t += 1;
    }

    /// Updates `w` in place from gradient `g` with learning rate `lr`.
    pub fn update(&mut self, name: &str, role: ParamRole, w: &mut [f32], g: &[f32], lr: f64) {
        let decay = role == ParamRole::Weight;
        if !matches!(role, ParamRole::Weight | ParamRole::NoDecay) {
            return;
        }
        assert_eq!(w.len(), g.len(), "gradient length of {name}");
        let c = &self.cfg;
        let wd = if decay { self.wd as f32 } else { 0.0 };
        let (lr32, mu) = (lr as f32, c.momentum as f32);
        let st = self.state.entry(name.to_string()).or_default();
        match c.name {
            OptimizerKind::Sgd => {
                let first = st.m.is_empty();
                if first {
                    st.m = vec![0.0; w.len()];
                }
                // zipped, not indexed: no bounds checks, so the loop vectorises (the same
                // operations per value)
                for ((wi, &g), m) in w.iter_mut().zip(g).zip(st.m.iter_mut()) {
                    let gi = g + wd * *wi;
                    let b = if first { gi } else { mu * *m + gi };
                    *m = b;
                    let d = if c.nesterov { gi + mu * b } else { b };
                    *wi -= lr32 * d;
                }
            }
            OptimizerKind::Adamw => {
                if st.m.is_empty() {
                    st.m = vec![0.0; w.len()];
                    st.v = vec![0.0; w.len()];
                }
                let (b1, b2) = (c.betas[0], c.betas[1]);
                let bc1 = 1.0 - b1.powi(self.t as i32);
                let bc2 = 1.0 - b2.powi(self.t as i32);
                let (b1, b2, eps) = (b1 as f32, b2 as f32, c.eps as f32);
                let step = (lr / bc1) as f32;
                let bc2s = bc2.sqrt() as f32;
                for i in 0..w.len() {
                    w[i] *= 1.0 - lr32 * wd;
                    st.m[i] = b1 * st.m[i] + (1.0 - b1) * g[i];
                    st.v[i] = b2 * st.v[i] + (1.0 - b2) * g[i] * g[i];
                    w[i] -= step * st.m[i] / (st.v[i].sqrt() / bc2s + eps);
                }
            }
            OptimizerKind::Lars => {
                if st.m.is_empty() {
                    st.m = vec![0.0; w.len()];
                }
                let d: Vec<f32> = w.iter().zip(g).map(|(wi, gi)| gi + wd * wi).collect();
                let wn = w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                let dn = d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                let r = if decay && wn > 0.0 && dn > 0.0 {
                    (c.trust_coefficient * wn / dn) as f32
                } else {
                    1.0
                };
                for i in 0..w.len() {
                    st.m[i] = mu * st.m[i] + r * d[i];
                    w[i] -= lr32 * st.m[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: OptimizerKind) -> OptimConfig {
        OptimConfig { name, lr: 0.1, momentum: 0.9, weight_decay: 0.01, ..Default::default() }
    }

    #[test]
    fn sgd_momentum_matches_hand_computed_steps() {
        let mut o = Optimizer::new(cfg(OptimizerKind::Sgd)).unwrap();
        let mut w = vec![1.0f32, -2.0];
        o.begin_step();
        o.update("w", ParamRole::Weight, &mut w, &[0.5, 0.25], 0.1);
        // g = (0.5 + 0.01, 0.25 - 0.02) = (0.51, 0.23); b = g; w -= 0.1 b
        assert!(
            (w[0] - (1.0 - 0.051)).abs() < 1e-7 && (w[1] - (-2.0 - 0.023)).abs() < 1e-7,
            "{w:?}"
        );
        o.begin_step();
        o.update("w", ParamRole::Weight, &mut w, &[0.5, 0.25], 0.1);
        // g0 = 0.5 + 0.01*0.949 = 0.50949; b0 = 0.9*0.51 + 0.50949 = 0.96849; w0 = 0.949 - 0.096849
        assert!((w[0] - (0.949 - 0.096849)).abs() < 1e-6, "{w:?}");
        // NoDecay: no weight decay
        let mut b = vec![1.0f32];
        o.update("b", ParamRole::NoDecay, &mut b, &[0.5], 0.1);
        assert!((b[0] - 0.95).abs() < 1e-7);
        // Buffers are untouched
        let mut s = vec![3.0f32];
        o.update("s", ParamRole::Buffer, &mut s, &[1.0], 0.1);
        assert_eq!(s, vec![3.0]);
    }

    #[test]
    fn sgd_nesterov_matches_hand_computed_steps() {
        let mut o = Optimizer::new(OptimConfig {
            nesterov: true,
            weight_decay: 0.0,
            ..cfg(OptimizerKind::Sgd)
        })
        .unwrap();
        let mut w = vec![1.0f32];
        o.begin_step();
        o.update("w", ParamRole::Weight, &mut w, &[1.0], 0.1);
        // b = 1; d = 1 + 0.9 = 1.9
        assert!((w[0] - 0.81).abs() < 1e-7);
        o.begin_step();
        o.update("w", ParamRole::Weight, &mut w, &[1.0], 0.1);
        // b = 0.9 + 1 = 1.9; d = 1 + 0.9*1.9 = 2.71
        assert!((w[0] - (0.81 - 0.271)).abs() < 1e-6);
    }

    #[test]
    fn adamw_matches_hand_computed_steps() {
        let mut o = Optimizer::new(cfg(OptimizerKind::Adamw)).unwrap();
        let mut w = vec![1.0f32];
        o.begin_step();
        o.update("w", ParamRole::Weight, &mut w, &[0.5], 0.1);
        // w = 1*(1-0.001) = 0.999; m̂ = 0.5, v̂ = 0.25 → step 0.1 * 0.5/(0.5+1e-8)
        assert!((w[0] - (0.999 - 0.1)).abs() < 1e-6, "{w:?}");
        o.begin_step();
        o.update("w", ParamRole::Weight, &mut w, &[-1.0], 0.1);
        let w1 = 0.899f64 * (1.0 - 0.001);
        let m = 0.9 * 0.05 + -0.1; // 0.045 - 0.1
        let v = 0.999 * 0.00025 + 0.001 * 1.0;
        let mh = m / (1.0 - 0.81);
        let vh = v / (1.0 - 0.999f64.powi(2));
        let want = w1 - 0.1 * mh / (vh.sqrt() + 1e-8);
        assert!((w[0] as f64 - want).abs() < 1e-5, "{} vs {want}", w[0]);
    }

    #[test]
    fn lars_matches_hand_computed_step_and_skips_no_decay() {
        let mut o =
            Optimizer::new(OptimConfig { trust_coefficient: 0.001, ..cfg(OptimizerKind::Lars) })
                .unwrap();
        let mut w = vec![3.0f32, 4.0];
        o.begin_step();
        o.update("w", ParamRole::Weight, &mut w, &[0.0, 1.0], 0.1);
        // d = (0.03, 1.04); ‖w‖ = 5; ‖d‖ = sqrt(0.0009 + 1.0816); r = 0.005/‖d‖
        let dn = (0.0009f64 + 1.0816).sqrt();
        let r = 0.005 / dn;
        assert!((w[0] as f64 - (3.0 - 0.1 * r * 0.03)).abs() < 1e-6);
        assert!((w[1] as f64 - (4.0 - 0.1 * r * 1.04)).abs() < 1e-6);
        let mut b = vec![1.0f32];
        o.update("b", ParamRole::NoDecay, &mut b, &[0.5], 0.1);
        assert!((b[0] - 0.95).abs() < 1e-7, "NoDecay: plain momentum SGD, no trust ratio");
    }

    #[test]
    fn warmup_then_cosine_values() {
        let c = OptimConfig { lr: 1.0, warmup_steps: 10, ..Default::default() };
        let s = Schedule::new(&c, 256, 110, 10);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12, "half way through the cosine");
        assert!(s.lr(110).abs() < 1e-12);
        let scaled = Schedule::new(
            &OptimConfig { lr: 0.3, scale_lr_by_batch: true, ..Default::default() },
            512,
            100,
            10,
        );
        assert!((scaled.base - 0.6).abs() < 1e-12);
        let by_epoch =
            Schedule::new(&OptimConfig { warmup_epochs: 2.0, ..Default::default() }, 256, 100, 10);
        assert_eq!(by_epoch.warmup, 20);
    }

    #[test]
    fn weight_decay_follows_a_cosine_to_its_end_value() {
        let c =
            OptimConfig { weight_decay: 0.04, weight_decay_end: Some(0.4), ..Default::default() };
        assert!((c.weight_decay_at(0, 100) - 0.04).abs() < 1e-12);
        assert!((c.weight_decay_at(50, 100) - 0.22).abs() < 1e-12);
        assert!((c.weight_decay_at(100, 100) - 0.4).abs() < 1e-12);
        let flat = OptimConfig { weight_decay: 0.04, ..Default::default() };
        assert_eq!(flat.weight_decay_at(50, 100), 0.04);
        // the optimizer uses the decay of the step it is given
        let mut o =
            Optimizer::new(OptimConfig { name: OptimizerKind::Sgd, momentum: 0.0, ..c }).unwrap();
        o.wd = o.cfg.weight_decay_at(100, 100);
        let mut w = vec![1.0f32];
        o.begin_step();
        o.update("w", ParamRole::Weight, &mut w, &[0.0], 0.1);
        assert!((w[0] - (1.0 - 0.1 * 0.4)).abs() < 1e-7, "{w:?}");
    }

    #[test]
    fn clipping_per_parameter_and_by_global_norm() {
        let per = OptimConfig { clip_grad: Some(3.0), ..Default::default() };
        let (mut a, mut b) = (vec![3.0f32, 4.0], vec![1.0f32, 0.0]);
        let total = per.clip(&mut [&mut a, &mut b]);
        assert!((total - 26f64.sqrt()).abs() < 1e-9);
        // ‖a‖ = 5 > 3: scaled to norm 3 (times 5/(5 + 1e-6)); ‖b‖ = 1 < 3: left alone
        assert!((a[0] - 1.8).abs() < 1e-5 && (a[1] - 2.4).abs() < 1e-5, "{a:?}");
        assert_eq!(b, vec![1.0, 0.0]);
        let global = OptimConfig { clip_grad_norm: Some(1.0), ..Default::default() };
        let (mut a, mut b) = (vec![3.0f32, 4.0], vec![0.0f32, 12.0]);
        global.clip(&mut [&mut a, &mut b]);
        // ‖(a, b)‖ = 13: everything times 1/13
        assert!(
            (a[0] - 3.0 / 13.0).abs() < 1e-6 && (b[1] - 12.0 / 13.0).abs() < 1e-6,
            "{a:?} {b:?}"
        );
        let none = OptimConfig::default();
        let mut a = vec![30.0f32];
        none.clip(&mut [&mut a]);
        assert_eq!(a, vec![30.0]);
    }

    #[test]
    fn bad_values_are_refused_by_key() {
        // names are enums: an unknown one is refused when the config is read, with the list
        let e = toml::from_str::<OptimConfig>("name = \"adam\"").unwrap_err().to_string();
        assert!(
            e.contains("unknown variant `adam`") && e.contains("`sgd`, `adamw`, `lars`"),
            "{e}"
        );
        let e = toml::from_str::<OptimConfig>("schedule = \"step\"").unwrap_err().to_string();
        assert!(
            e.contains("unknown variant `step`") && e.contains("`cosine` or `constant`"),
            "{e}"
        );
        let e = Optimizer::new(OptimConfig { lr: -1.0, ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("optim.lr"), "{e}");
        let e =
            Optimizer::new(OptimConfig { clip_grad: Some(0.0), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("optim.clip_grad"), "{e}");
        let e = Optimizer::new(OptimConfig { clip_grad_norm: Some(-1.0), ..Default::default() })
            .unwrap_err();
        assert!(e.to_string().contains("optim.clip_grad_norm"), "{e}");
        let e =
            Optimizer::new(OptimConfig { weight_decay_end: Some(f64::NAN), ..Default::default() })
                .unwrap_err();
        assert!(e.to_string().contains("optim.weight_decay_end"), "{e}");
    }
}
