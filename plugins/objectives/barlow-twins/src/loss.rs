//! The Barlow Twins loss (Zbontar et al. 2021, equations 1 and 2, algorithm 1), the same
//! value as lightly 1.6's `BarlowTwinsLoss(lambda_param)` at ε = 1e-5.
//!
//! ```text
//! x̂_ni = (z_ni − μ_i) / sqrt(σ²_i + ε)               per column over the batch (batch-norm
//!                                                     without affine, biased variance)
//! C_ij = 1/N · Σ_n x̂^A_ni x̂^B_nj                     cross-correlation          [D, D]
//! L    = Σ_i (1 − C_ii)²  +  λ · Σ_i Σ_{j≠i} C_ij²   invariance + redundancy reduction
//! ```
//! With ε = 0, `C_ij` is exactly the paper's equation 2: the cosine between column `i` of the
//! centred `z^A` and column `j` of the centred `z^B`. ε = 1e-5 is what the authors' code
//! (`nn.BatchNorm1d(D, affine=False)`) and lightly (`F.batch_norm`) use; it keeps a constant
//! column from dividing by zero. (The paper's pseudocode divides by `torch.std`, the unbiased
//! standard deviation; that only scales `C` by (N−1)/N.) The gradient is the SDK's autodiff.

use latent_sdk::prelude::*;

/// The Barlow Twins loss of two projections `za`, `zb` `[N, D]` (N ≥ 2), and the metrics
/// `on_diag`, `off_diag`, `mean_diag`.
pub fn barlow_twins(
    za: &Var,
    zb: &Var,
    lambda: f64,
    eps: f64,
) -> anyhow::Result<(Var, Vec<(String, f64)>)> {
    ensure!(
        zb.dims() == za.dims(),
        "the two views must have the same shape, got {:?} and {:?}",
        za.dims(),
        zb.dims()
    );
    let (n, d) = za.dims();
    ensure!(n >= 2, "barlow twins needs at least 2 samples per batch to normalise over, got {n}");
    ensure!(
        lambda >= 0.0 && eps >= 0.0,
        "lambda and eps must be non-negative, got {lambda} and {eps}"
    );
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
