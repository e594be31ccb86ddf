//! SimSiam objective plugin: projector, predictor, and the negative cosine with stop-gradient.
//!
//! - \[0\] SimSiam, Chen & He 2021, <https://arxiv.org/abs/2011.10566>
//!
//! ```text
//! z = f(h)     p = q(z)                 (projector f, predictor q; both views, one network)
//! loss = ½ D(p₁, stopgrad z₂) + ½ D(p₂, stopgrad z₁),   D = batch mean of −cos   (see [`loss`])
//! ```
//! No momentum and no negatives: the other branch is the online network itself, detached (the
//! paper's point is that the stop-gradient alone prevents collapse). The detached branch is a
//! target with momentum τ = 0: the host passes the target encoder's features `h'` (which, at
//! τ = 0, are the online features, without a second encoder pass) and this plugin runs them
//! through `target_projector`, the copy the host's EMA sets to the projector after every step.
//! The stop-gradient is then the target's, as in BYOL, so the gradient of the loss in its
//! inputs is an ordinary derivative and `latent check-plugin --deep` can check it by finite
//! differences. Heads run on each view separately (batch-norm statistics per view), as
//! lightly's SimSiam example.
//!
//! The projector is lightly's `SimSiamProjectionHead`: Linear → BN → ReLU, Linear → BN →
//! ReLU, Linear → BN without γ and β, no biases. The predictor is a bottleneck: Linear → BN →
//! ReLU → Linear (with a bias). Parameters: `projector.*`, `predictor.*`, `target_projector.*`
//! (`nn.Sequential` indices).
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `input_dim` | 128 | encoder output size (resnet-mini gives 128) |
//! | `proj_hidden_dim` | 512 | hidden width of the projector (the paper: 2048) |
//! | `output_dim` | 512 | projection size (the paper: 2048) |
//! | `pred_hidden_dim` | 128 | the predictor's bottleneck (the paper: 512, a quarter of `output_dim`) |
//!
//! Metrics: `loss`, `collapse` (the paper's figure 2 monitor: std of the L2-normalised
//! projections over the batch, mean over dimensions, times √D; about 1 spread, 0 collapsed),
//! `pos_cosine` (mean cos(p₁, z₂) and cos(p₂, z₁), so −loss).

pub mod loss;

use latent_sdk::prelude::*;

/// SimSiam settings; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Encoder output size.
    pub input_dim: usize,
    /// Hidden width of the projector.
    pub proj_hidden_dim: usize,
    /// Projection size.
    pub output_dim: usize,
    /// Bottleneck width of the predictor.
    pub pred_hidden_dim: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { input_dim: 128, proj_hidden_dim: 512, output_dim: 512, pred_hidden_dim: 128 }
    }
}

/// The SimSiam objective.
pub struct SimSiam {
    cfg: Config,
    /// The projector `f`.
    pub projector: Head,
    /// The predictor `q`.
    pub predictor: Head,
    /// The detached branch: the projector's copy, set to it after every step (τ = 0).
    pub target_projector: Head,
}

impl Plugin for SimSiam {
    type Config = Config;
    const NAME: &'static str = "simsiam";
    const DESCRIPTION: &'static str =
        "SimSiam: projector + predictor, negative cosine against the other view with stop-gradient";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        for (key, v) in [
            ("input_dim", cfg.input_dim),
            ("proj_hidden_dim", cfg.proj_hidden_dim),
            ("output_dim", cfg.output_dim),
            ("pred_hidden_dim", cfg.pred_hidden_dim),
        ] {
            ensure!(v > 0, "{key} must be positive, got {v}");
        }
        let init = Init::new(ctx.seed);
        let projector = Head::simsiam_projector(
            &init.pp("projector"),
            cfg.input_dim,
            cfg.proj_hidden_dim,
            cfg.output_dim,
        );
        let predictor = Head::simsiam_predictor(
            &init.pp("predictor"),
            cfg.output_dim,
            cfg.pred_hidden_dim,
            cfg.output_dim,
        );
        let target_projector = projector.target_copy("target_projector");
        Ok(SimSiam { cfg, projector, predictor, target_projector })
    }
}

impl Module for SimSiam {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.projector.visit_params(f);
        self.predictor.visit_params(f);
        self.target_projector.visit_params(f);
    }
}

impl Objective for SimSiam {
    const NEEDS_TARGET: bool = true;

    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        b.expect("simsiam", 2, true, self.cfg.input_dim, 2)?;
        let z: Vec<Var> = b.views.iter().map(|v| self.projector.forward(g, v)).collect();
        let p: Vec<Var> = z.iter().map(|z| self.predictor.forward(g, z)).collect();
        // the detached branch runs on the targets' graph, which records nothing
        let zt: Vec<Var> =
            b.targets.iter().map(|t| self.target_projector.forward(t.graph(), t)).collect();
        let loss = loss::simsiam_loss(&p[0], &p[1], &zt[0], &zt[1]);
        let collapse = (latent_sdk::metrics::collapse(&z[0].value())?
            + latent_sdk::metrics::collapse(&z[1].value())?)
            / 2.0;
        let pos = -loss.item();
        Ok(Loss::new(loss)
            .metric("collapse", collapse)
            .metric("pos_cosine", pos)
            .target_momentum(0.0))
    }
}

latent_sdk::export_plugins!(objectives: [SimSiam], encoders: [], augmentations: []);

#[cfg(test)]
mod tests;
