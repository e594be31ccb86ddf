//! Barlow Twins objective plugin: a projector and the redundancy-reduction loss of the
//! cross-correlation between the two views' projections (see [`loss`]).
//!
//! - \[0\] Barlow Twins: Self-Supervised Learning via Redundancy Reduction, Zbontar, Jing,
//!   Misra, LeCun, Deny, 2021, <https://arxiv.org/abs/2103.03230> (equations 1 and 2,
//!   algorithm 1)
//! - \[1\] Tsai, Bai, Morency, Salakhutdinov, A Note on Connecting Barlow Twins with
//!   Negative-Sample-Free Contrastive Learning, 2021, <https://arxiv.org/abs/2104.13712>
//!   (λ = 1/D)
//!
//! ```text
//! z^A = g(h^A), z^B = g(h^B)                         projector on each view     [N, D]
//! L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²,  C = x̂ᴬᵀ x̂ᴮ / N    (loss::barlow_twins)
//! ```
//! No negatives, no momentum encoder, no stop-gradient: decorrelating the features prevents
//! collapse.
//!
//! # Shapes
//! views `h^A`, `h^B` `[N, input_dim]` (N ≥ 2) → projector → `z` `[N, output_dim]` →
//! `C` `[output_dim, output_dim]` → loss `[1, 1]`.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `input_dim` | 128 | encoder output size |
//! | `hidden_dim` | 512 | hidden width of the projector (the paper: 8192) |
//! | `output_dim` | 512 | D, the size of `z` (the paper: 8192) |
//! | `lambda` | 0.005 | λ, weight of the off-diagonal term (the paper's value, tuned for D = 8192) |
//! | `lambda_inv_dim` | false | use λ = 1/D instead (\[1\]; the paper's λ·D ≈ 41 is large for small D) |
//! | `eps` | 1e-5 | ε of the normalisation |
//! | `head` | true | false: the loss runs on the encoder output directly (no parameters) |
//!
//! The projector is the paper's and lightly's `BarlowTwinsProjectionHead`
//! ([`Head::barlow_twins`]): two `Linear(no bias) → BatchNorm1d → ReLU` blocks, then
//! `Linear(no bias)`: a bias on the last layer would be cancelled by the normalisation (its
//! gradient is exactly zero). Parameters: `projector.0.weight`, `projector.1.*`,
//! `projector.3.weight`, `projector.4.*`, `projector.6.weight` (PyTorch's `nn.Sequential`
//! indices).
//!
//! Metrics: `loss`, `on_diag` (Σ (1 − C_ii)²), `off_diag` (Σ_{i≠j} C_ij², before λ),
//! `mean_diag` (mean C_ii: 1 when the views agree perfectly). Exactly two views; no target
//! network (`target_momentum` is 1).

pub mod loss;

use latent_sdk::prelude::*;

/// The `barlow-twins` config; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Encoder output size.
    pub input_dim: usize,
    /// Hidden width of the projector.
    pub hidden_dim: usize,
    /// D, the projection size.
    pub output_dim: usize,
    /// λ, the weight of the off-diagonal (redundancy) term.
    pub lambda: f64,
    /// Use λ = 1/D instead of `lambda`.
    pub lambda_inv_dim: bool,
    /// ε of the per-column normalisation.
    pub eps: f64,
    /// Use the projector.
    pub head: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input_dim: 128,
            hidden_dim: 512,
            output_dim: 512,
            lambda: 5e-3,
            lambda_inv_dim: false,
            eps: 1e-5,
            head: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plugin

/// The Barlow Twins objective.
pub struct BarlowTwins {
    cfg: Config,
    /// The projector (`None` with `head: false`).
    pub projector: Option<Head>,
}

impl BarlowTwins {
    /// λ in use: `lambda`, or 1/D with `lambda_inv_dim`.
    pub fn lambda(&self) -> f64 {
        let d = if self.cfg.head { self.cfg.output_dim } else { self.cfg.input_dim };
        if self.cfg.lambda_inv_dim {
            1.0 / d as f64
        } else {
            self.cfg.lambda
        }
    }
}

impl Plugin for BarlowTwins {
    type Config = Config;
    const NAME: &'static str = "barlow-twins";
    const DESCRIPTION: &'static str =
        "Barlow Twins: projector + cross-correlation redundancy reduction";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(
            cfg.lambda >= 0.0 && cfg.lambda.is_finite(),
            "lambda must be a non-negative number, got {}",
            cfg.lambda
        );
        ensure!(
            cfg.eps >= 0.0 && cfg.eps.is_finite(),
            "eps must be a non-negative number, got {}",
            cfg.eps
        );
        ensure!(cfg.input_dim > 0, "input_dim must be positive, got {}", cfg.input_dim);
        if cfg.head {
            ensure!(
                cfg.hidden_dim > 0 && cfg.output_dim > 0,
                "hidden_dim and output_dim must be positive, got {} and {}",
                cfg.hidden_dim,
                cfg.output_dim
            );
        }
        let projector = cfg.head.then(|| {
            Head::barlow_twins(
                &Init::new(ctx.seed).pp("projector"),
                cfg.input_dim,
                cfg.hidden_dim,
                cfg.output_dim,
            )
        });
        Ok(BarlowTwins { cfg, projector })
    }
}

impl Module for BarlowTwins {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some(p) = &mut self.projector {
            p.visit_params(f);
        }
    }
}

impl Objective for BarlowTwins {
    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        b.expect("barlow-twins", 2, false, self.cfg.input_dim, 2)?;
        ensure!(
            b.views[0].rows() >= 2,
            "barlow-twins needs at least 2 samples per batch, got {}",
            b.views[0].rows()
        );
        let lambda = self.lambda();
        // The projector runs on each view separately (batch-norm statistics per view, as the
        // authors' code).
        let z: Vec<Var> = match &mut self.projector {
            Some(p) => b.views.iter().map(|v| p.forward(g, v)).collect(),
            None => b.views.clone(),
        };
        let (loss, metrics) = loss::barlow_twins(&z[0], &z[1], lambda, self.cfg.eps)?;
        Ok(Loss { metrics, ..Loss::new(loss) })
    }
}

latent_sdk::export_plugins!(objectives: [BarlowTwins], encoders: [], augmentations: []);

#[cfg(test)]
mod tests;
