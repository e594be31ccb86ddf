//! Barlow Twins, a complete objective plugin in one file: a projector head and the
//! redundancy-reduction loss, written as forward maths on the SDK's autodiff tape.
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
//! x̂_ni = (z_ni − μ_i) / sqrt(σ²_i + ε)               per column over the batch (batch-norm
//!                                                     without affine, biased variance)
//! C_ij = 1/N · Σ_n x̂^A_ni x̂^B_nj                     cross-correlation          [D, D]
//! L    = Σ_i (1 − C_ii)²  +  λ · Σ_i Σ_{j≠i} C_ij²   invariance + redundancy reduction
//! ```
//! With ε = 0, `C_ij` is exactly the paper's equation 2: the cosine between column `i` of the
//! centred `z^A` and column `j` of the centred `z^B`. ε = 1e-5 is what the authors' code uses
//! (`nn.BatchNorm1d(D, affine=False)`); it keeps a constant column from dividing by zero.
//! (The paper's pseudocode divides by `torch.std`, the unbiased standard deviation; that only
//! scales `C` by (N−1)/N.)
//!
//! The gradient is the SDK's autodiff: this file is the forward maths only.
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
//! The projector is `Linear(no bias) → BatchNorm1d → ReLU → Linear(no bias)`, as in the
//! authors' code: a bias on the last layer would be cancelled by the normalisation (its
//! gradient is exactly zero). Parameters: `projector.0.weight`, `projector.1.*`,
//! `projector.3.weight` (PyTorch's `nn.Sequential` indices).
//!
//! Metrics: `loss`, `on_diag` (Σ (1 − C_ii)²), `off_diag` (Σ_{i≠j} C_ij², before λ),
//! `mean_diag` (mean C_ii: 1 when the views agree perfectly). Exactly two views; no target
//! network (`target_momentum` is 1).

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
        Config { input_dim: 128, hidden_dim: 512, output_dim: 512, lambda: 5e-3, lambda_inv_dim: false, eps: 1e-5, head: true }
    }
}

// ---------------------------------------------------------------------------------------------
// The loss

/// The Barlow Twins loss of two projections `za`, `zb` `[N, D]` (N ≥ 2), and the metrics
/// `on_diag`, `off_diag`, `mean_diag`.
pub fn barlow_twins(za: &Var, zb: &Var, lambda: f64, eps: f64) -> anyhow::Result<(Var, Vec<(String, f64)>)> {
    ensure!(zb.dims() == za.dims(), "the two views must have the same shape, got {:?} and {:?}", za.dims(), zb.dims());
    let (n, d) = za.dims();
    ensure!(n >= 2, "barlow twins needs at least 2 samples per batch to normalise over, got {n}");
    ensure!(lambda >= 0.0 && eps >= 0.0, "lambda and eps must be non-negative, got {lambda} and {eps}");
    // x̂ = (z − μ) / sqrt(σ² + ε) per column; C = x̂ᴬᵀ x̂ᴮ / N
    let norm = |z: &Var| {
        let centred = z - z.mean_cols();
        &centred / (centred.square().mean_cols() + eps as f32).sqrt()
    };
    let c = norm(za).t().matmul(&norm(zb)) / n as f32;
    let on_diag = (c.diag() - 1.0).square().sum();
    let diagonal: Vec<bool> = (0..d * d).map(|k| k / d == k % d).collect();
    let off_diag = c.square().masked_fill(&diagonal, 0.0).sum();
    let metrics = vec![
        ("on_diag".into(), on_diag.item()),
        ("off_diag".into(), off_diag.item()),
        ("mean_diag".into(), c.diag().mean().item()),
    ];
    Ok((on_diag + off_diag * lambda as f32, metrics))
}

// ---------------------------------------------------------------------------------------------
// The plugin

/// The Barlow Twins objective.
pub struct BarlowTwins {
    cfg: Config,
    /// The projector `Linear(no bias) → BatchNorm1d → ReLU → Linear(no bias)` (`None` with
    /// `head: false`).
    pub projector: Option<Head>,
}

impl BarlowTwins {
    /// λ in use: `lambda`, or 1/D with `lambda_inv_dim`.
    pub fn lambda(&self) -> f64 {
        let d = if self.cfg.head { self.cfg.output_dim } else { self.cfg.input_dim };
        if self.cfg.lambda_inv_dim { 1.0 / d as f64 } else { self.cfg.lambda }
    }
}

impl Plugin for BarlowTwins {
    type Config = Config;
    const NAME: &'static str = "barlow-twins";
    const DESCRIPTION: &'static str = "Barlow Twins: projector + cross-correlation redundancy reduction (example)";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(cfg.lambda >= 0.0 && cfg.lambda.is_finite(), "lambda must be a non-negative number, got {}", cfg.lambda);
        ensure!(cfg.eps >= 0.0 && cfg.eps.is_finite(), "eps must be a non-negative number, got {}", cfg.eps);
        ensure!(cfg.input_dim > 0, "input_dim must be positive, got {}", cfg.input_dim);
        if cfg.head {
            ensure!(cfg.hidden_dim > 0 && cfg.output_dim > 0, "hidden_dim and output_dim must be positive, got {} and {}", cfg.hidden_dim, cfg.output_dim);
        }
        let blocks = [
            Block::new(cfg.input_dim, cfg.hidden_dim, true, Activation::Relu, false),
            Block::new(cfg.hidden_dim, cfg.output_dim, false, Activation::None, false),
        ];
        let projector = cfg.head.then(|| Head::new(&Init::new(ctx.seed).pp("projector"), &blocks));
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
        ensure!(b.views.len() == 2, "barlow-twins needs exactly 2 views, got {}", b.views.len());
        for (i, v) in b.views.iter().enumerate() {
            let (n, d) = v.dims();
            ensure!(d == self.cfg.input_dim, "view {i} has {d} features but input_dim is {}", self.cfg.input_dim);
            ensure!(n >= 2, "barlow-twins needs at least 2 samples per batch, got {n}");
        }
        let lambda = self.lambda();
        // The projector runs on each view separately (batch-norm statistics per view, as the
        // authors' code).
        let z: Vec<Var> = match &mut self.projector {
            Some(p) => b.views.iter().map(|v| p.forward(g, v)).collect(),
            None => b.views.clone(),
        };
        let (loss, metrics) = barlow_twins(&z[0], &z[1], lambda, self.cfg.eps)?;
        Ok(Loss { metrics, ..Loss::new(loss) })
    }
}

latent_sdk::export_plugins!(objectives: [BarlowTwins], encoders: [], augmentations: []);
