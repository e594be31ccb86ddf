//! BYOL objective plugin: projector, predictor, EMA target projector.
//!
//! - \[0\] BYOL, Grill et al. 2020, <https://arxiv.org/abs/2006.07733>
//!
//! The host passes, for two views, the online encoder output `y` and the target (EMA) encoder
//! output `y'` (`[B, input_dim]` each; `NEEDS_TARGET`). This plugin owns the rest of both
//! networks:
//!
//! ```text
//! online:  z = g_θ(y)     q = q_θ(z)          (projector, predictor: Linear-BN-ReLU-Linear)
//! target:  z' = g_ξ(y')                       (target projector, ξ ← τ ξ + (1 − τ) θ by the host)
//! loss  = L(q(v1), z'(v2)) + L(q(v2), z'(v1)),   L = batch mean of 2 − 2 cos   (see [`loss`])
//! ```
//! Gradients flow into the projector, the predictor and the online views only; the targets
//! get none (the host does not backprop the target encoder). The target projector's
//! parameters have role `Target` with `ema_of` naming their online twin, so the host's one
//! EMA rule updates them with the τ returned as `target_momentum`; its batch-norm running
//! statistics are its own buffers, updated by its own training-mode forward.
//!
//! Heads run on each view separately (batch-norm statistics per view), as in lightly's BYOL
//! example. Parameters, in visit order: `projector.*`, `predictor.*` (unless
//! `predictor: false`), `target_projector.*`.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `input_dim` | 128 | encoder output size (resnet-mini gives 128) |
//! | `hidden_dim` | 512 | hidden width of projector and predictor |
//! | `output_dim` | 128 | projection size (predictor maps it to itself) |
//! | `predictor` | true | false: `q = z` (no predictor; BYOL collapses, a test configuration) |
//! | `tau_base` | 0.996 | τ_base in [0, 1] (0 allowed for tests: target = online after each step) |
//!
//! Metrics: `loss`, `tau`, `collapse` (see [`loss::collapse`], on the online projections `z`,
//! mean over the two views).

pub mod loss;

use latent_sdk::prelude::*;

/// BYOL settings; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Encoder output size.
    pub input_dim: usize,
    /// Hidden width of projector and predictor.
    pub hidden_dim: usize,
    /// Projection size.
    pub output_dim: usize,
    /// Use the predictor.
    pub predictor: bool,
    /// Base target momentum τ_base.
    pub tau_base: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input_dim: 128,
            hidden_dim: 512,
            output_dim: 128,
            predictor: true,
            tau_base: 0.996,
        }
    }
}

/// The BYOL objective.
pub struct Byol {
    cfg: Config,
    /// Online projector `g_θ`.
    pub projector: Head,
    /// Online predictor `q_θ` (`None` with `predictor: false`).
    pub predictor: Option<Head>,
    /// Target projector `g_ξ`.
    pub target_projector: Head,
}

impl Plugin for Byol {
    type Config = Config;
    const NAME: &'static str = "byol";
    const DESCRIPTION: &'static str =
        "BYOL: projector + predictor regressing an EMA target projector";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(
            (0.0..=1.0).contains(&cfg.tau_base),
            "tau_base must be in [0, 1], got {}",
            cfg.tau_base
        );
        ensure!(
            cfg.input_dim > 0 && cfg.hidden_dim > 0 && cfg.output_dim > 0,
            "input_dim, hidden_dim and output_dim must be positive, got {}, {}, {}",
            cfg.input_dim,
            cfg.hidden_dim,
            cfg.output_dim
        );
        let init = Init::new(ctx.seed);
        let projector =
            Head::byol(&init.pp("projector"), cfg.input_dim, cfg.hidden_dim, cfg.output_dim);
        let predictor = cfg.predictor.then(|| {
            Head::byol(&init.pp("predictor"), cfg.output_dim, cfg.hidden_dim, cfg.output_dim)
        });
        let target_projector = projector.target_copy("target_projector");
        Ok(Byol { cfg, projector, predictor, target_projector })
    }
}

impl Module for Byol {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.projector.visit_params(f);
        if let Some(p) = &mut self.predictor {
            p.visit_params(f);
        }
        self.target_projector.visit_params(f);
    }
}

impl Objective for Byol {
    const NEEDS_TARGET: bool = true;

    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        b.expect("byol", 2, true, self.cfg.input_dim, 2)?;
        let z: Vec<Var> = b.views.iter().map(|v| self.projector.forward(g, v)).collect();
        let q: Vec<Var> = match &mut self.predictor {
            Some(p) => z.iter().map(|z| p.forward(g, z)).collect(),
            None => z.clone(),
        };
        // The target projector runs on the targets' graph, which records nothing (stop-gradient).
        let zt: Vec<Var> =
            b.targets.iter().map(|t| self.target_projector.forward(t.graph(), t)).collect();
        let loss = loss::byol_loss(&q[0], &q[1], &zt[0], &zt[1]);
        let tau = loss::tau(self.cfg.tau_base, b.step, b.total_steps);
        let collapse = (loss::collapse(&z[0].value())? + loss::collapse(&z[1].value())?) / 2.0;
        Ok(Loss::new(loss).metric("tau", tau).metric("collapse", collapse).target_momentum(tau))
    }
}

latent_sdk::export_plugins!(objectives: [Byol], encoders: [], augmentations: []);

#[cfg(test)]
mod tests;
