//! The spectral contrastive loss, a complete objective plugin in one file: a projector head
//! and the loss, written as forward maths on the SDK's autodiff tape. The worked example of
//! a new method (examples/objective-spectral-contrastive/README.md): copy this folder to
//! start yours.
//!
//! - \[0\] HaoChen, Wei, Gaidon, Ma, Provable Guarantees for Self-Supervised Deep Learning
//!   with Spectral Contrastive Loss, NeurIPS 2021, <https://arxiv.org/abs/2106.04156>
//!   (equation 5 and its empirical form; section 6's norm bound μ)
//!
//! ```text
//! z = g(h) · min(1, √μ / ‖g(h)‖)                     projector, norm capped at √μ   [N, D]
//! L = −2/N · Σ_n zᴬ_n · zᴮ_n  +  1/(N(N−1)) · Σ_{n≠m} (zᴬ_n · zᴮ_m)²
//!     positives: align                                  other pairs: near-orthogonal
//! ```
//! Minimising it is a low-rank factorisation of the augmentation graph's normalised
//! adjacency matrix (the paper's theorem), which is where the name comes from. Unlike
//! InfoNCE there is no softmax and no temperature: the negatives enter as squared dot
//! products. The gradient is the SDK's autodiff: this file is the forward maths only.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `input_dim` | 128 | encoder output size |
//! | `hidden_dim` | 256 | hidden width of the projector |
//! | `output_dim` | 128 | D, the size of `z` |
//! | `mu` | 1 | μ: rows longer than √μ are scaled down to √μ (the authors' code) |
//!
//! The projector is SimCLR's ([`Head::simclr`]): Linear → BatchNorm1d → ReLU → Linear.
//! Parameters: `projector.0.weight`, `projector.1.*`, `projector.3.*`.
//!
//! Metrics: `loss`, `pos` (mean zᴬ_n · zᴮ_n), `neg_sq` (mean (zᴬ_n · zᴮ_m)² over n ≠ m).

use latent_sdk::prelude::*;

/// The `spectral-contrastive` config; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Encoder output size.
    pub input_dim: usize,
    /// Hidden width of the projector.
    pub hidden_dim: usize,
    /// D, the projection size.
    pub output_dim: usize,
    /// μ, the square of the largest row norm.
    pub mu: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config { input_dim: 128, hidden_dim: 256, output_dim: 128, mu: 1.0 }
    }
}

// ---------------------------------------------------------------------------------------------
// The loss: forward maths only

/// Scales each row of `z` longer than `√mu` down to length `√mu`.
pub fn cap_norm(z: &Var, mu: f32) -> Var {
    let over = (z.square().sum_rows().clamp_min(1e-12).sqrt() / mu.sqrt()).clamp_min(1.0);
    z / over
}

/// The spectral contrastive loss of two views' projections `a`, `b` `[N, D]` (N ≥ 2), with
/// the means of its two parts (`pos`, `neg_sq`).
pub fn spectral_contrastive(a: &Var, b: &Var) -> (Var, f64, f64) {
    let n = a.rows();
    let pos = a.mul(b).sum_rows().mean();
    let diagonal: Vec<bool> = (0..n * n).map(|k| k / n == k % n).collect();
    let neg_sq = a.matmul_t(b).square().masked_fill(&diagonal, 0.0).sum() / (n * (n - 1)) as f32;
    let (p, q) = (pos.item(), neg_sq.item());
    (pos.scale(-2.0) + neg_sq, p, q)
}

// ---------------------------------------------------------------------------------------------
// The plugin

/// The spectral contrastive objective.
pub struct SpectralContrastive {
    cfg: Config,
    /// The projector `g`.
    pub projector: Head,
}

impl Plugin for SpectralContrastive {
    type Config = Config;
    const NAME: &'static str = "spectral-contrastive";
    const DESCRIPTION: &'static str = "Spectral contrastive loss (HaoChen et al. 2021): projector, squared-similarity negatives; the worked example";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        for (key, v) in [
            ("input_dim", cfg.input_dim),
            ("hidden_dim", cfg.hidden_dim),
            ("output_dim", cfg.output_dim),
        ] {
            ensure!(v > 0, "{key} must be positive, got {v}");
        }
        ensure!(cfg.mu > 0.0 && cfg.mu.is_finite(), "mu must be a positive number, got {}", cfg.mu);
        let projector = Head::simclr(
            &Init::new(ctx.seed).pp("projector"),
            cfg.input_dim,
            cfg.hidden_dim,
            cfg.output_dim,
        );
        Ok(SpectralContrastive { cfg, projector })
    }
}

impl Module for SpectralContrastive {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.projector.visit_params(f);
    }
}

impl Objective for SpectralContrastive {
    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        // two views of `input_dim` features; the negatives need at least 2 rows
        b.expect("spectral-contrastive", 2, false, self.cfg.input_dim, 2)?;
        ensure!(
            b.views[0].rows() >= 2,
            "spectral-contrastive needs at least 2 images per batch, got {}",
            b.views[0].rows()
        );
        let za = cap_norm(&self.projector.forward(g, &b.views[0]), self.cfg.mu);
        let zb = cap_norm(&self.projector.forward(g, &b.views[1]), self.cfg.mu);
        let (loss, pos, neg_sq) = spectral_contrastive(&za, &zb);
        Ok(Loss::new(loss).metric("pos", pos).metric("neg_sq", neg_sq))
    }
}

latent_sdk::export_plugins!(objectives: [SpectralContrastive], encoders: [], augmentations: []);

#[cfg(test)]
mod tests;
