//! VICReg objective plugin: an expander and the variance-invariance-covariance loss.
//!
//! - \[0\] VICReg, Bardes, Ponce & LeCun 2022, <https://arxiv.org/abs/2105.04906>
//!
//! ```text
//! z = g(h)                     expander on each view   [N, output_dim]
//! L = λ s(z₁, z₂) + μ ½(v(z₁) + v(z₂)) + ν (c(z₁) + c(z₂))             (see [`loss`])
//! ```
//! No negatives, no target network, no stop-gradient: the variance term keeps every dimension
//! spread and the covariance term decorrelates them. The expander is lightly's
//! `VICRegProjectionHead` with 3 layers: Linear → BN → ReLU, Linear → BN → ReLU, Linear (with
//! a bias). Parameters: `expander.*` (`nn.Sequential` indices). Heads run on each view
//! separately (batch-norm statistics per view).
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `input_dim` | 128 | encoder output size |
//! | `hidden_dim` | 512 | hidden width of the expander (the paper: 8192) |
//! | `output_dim` | 512 | expansion size D (the paper: 8192) |
//! | `invariance` | 25 | λ |
//! | `variance` | 25 | μ |
//! | `covariance` | 1 | ν |
//! | `eps` | 1e-4 | ε of the variance term |
//!
//! Metrics: `loss`, `invariance`, `variance`, `covariance` (each term before its weight).

pub mod loss;

use latent_sdk::prelude::*;

/// VICReg settings; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Encoder output size.
    pub input_dim: usize,
    /// Hidden width of the expander.
    pub hidden_dim: usize,
    /// Expansion size D.
    pub output_dim: usize,
    /// λ.
    pub invariance: f32,
    /// μ.
    pub variance: f32,
    /// ν.
    pub covariance: f32,
    /// ε of the variance term.
    pub eps: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input_dim: 128,
            hidden_dim: 512,
            output_dim: 512,
            invariance: 25.0,
            variance: 25.0,
            covariance: 1.0,
            eps: 1e-4,
        }
    }
}

/// The VICReg objective.
pub struct VicReg {
    cfg: Config,
    /// The expander `g`.
    pub expander: Head,
}

impl Plugin for VicReg {
    type Config = Config;
    const NAME: &'static str = "vicreg";
    const DESCRIPTION: &'static str =
        "VICReg: expander + variance, invariance and covariance terms";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        for (key, v) in [
            ("input_dim", cfg.input_dim),
            ("hidden_dim", cfg.hidden_dim),
            ("output_dim", cfg.output_dim),
        ] {
            ensure!(v > 0, "{key} must be positive, got {v}");
        }
        for (key, v) in [
            ("invariance", cfg.invariance),
            ("variance", cfg.variance),
            ("covariance", cfg.covariance),
        ] {
            ensure!(v >= 0.0 && v.is_finite(), "{key} must be a non-negative weight, got {v}");
        }
        ensure!(cfg.eps > 0.0 && cfg.eps.is_finite(), "eps must be positive (it keeps the square root differentiable at zero variance), got {}", cfg.eps);
        let expander = Head::vicreg(
            &Init::new(ctx.seed).pp("expander"),
            cfg.input_dim,
            cfg.hidden_dim,
            cfg.output_dim,
        );
        Ok(VicReg { cfg, expander })
    }
}

impl Module for VicReg {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.expander.visit_params(f);
    }
}

impl Objective for VicReg {
    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        b.expect("vicreg", 2, false, self.cfg.input_dim, 2)?;
        let z: Vec<Var> = b.views.iter().map(|v| self.expander.forward(g, v)).collect();
        let w = loss::Weights {
            invariance: self.cfg.invariance,
            variance: self.cfg.variance,
            covariance: self.cfg.covariance,
            eps: self.cfg.eps,
        };
        let (loss, metrics) = loss::vicreg(&z[0], &z[1], w)?;
        Ok(Loss { metrics, ..Loss::new(loss) })
    }
}

latent_sdk::export_plugins!(objectives: [VicReg], encoders: [], augmentations: []);

#[cfg(test)]
mod tests;
