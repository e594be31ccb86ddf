//! VICReg's loss: invariance, variance and covariance terms on two expanded views.
//!
//! - \[0\] VICReg, Bardes, Ponce & LeCun 2022, <https://arxiv.org/abs/2105.04906> (equations
//!   1–6, algorithm 1)
//!
//! ```text
//! s(Z, Z')  = 1/(N·D) · Σ_n Σ_j (z_nj − z'_nj)²                     invariance (MSE)
//! v(Z)      = 1/D · Σ_j max(0, γ − sqrt(Var_j(Z) + ε))               variance hinge, Var unbiased
//! C(Z)      = 1/(N−1) · (Z − Z̄)ᵀ (Z − Z̄)                             covariance [D, D]
//! c(Z)      = 1/D · Σ_{i≠j} C(Z)_ij²                                  covariance term
//! L = λ·s(Z, Z') + μ·½(v(Z) + v(Z')) + ν·(c(Z) + c(Z'))             λ = μ = 25, ν = 1, γ = 1, ε = 1e-4
//! ```
//! The same value as lightly 1.6's `VICRegLoss(lambda_param, mu_param, nu_param, eps)` (which
//! averages the two variance terms and sums the two covariance terms, as the authors' code).
//! The gradient is the SDK's autodiff.

use latent_sdk::prelude::*;

/// The three weights and ε.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    /// λ, the invariance weight.
    pub invariance: f32,
    /// μ, the variance weight.
    pub variance: f32,
    /// ν, the covariance weight.
    pub covariance: f32,
    /// ε inside the square root of the variance term.
    pub eps: f32,
}

/// `v(Z)`: the mean over dimensions of `max(0, 1 − sqrt(Var_j + ε))`, Var unbiased.
pub fn variance(z: &Var, eps: f32) -> Var {
    let n = z.rows() as f32;
    let std = (z.var_cols() * (n / (n - 1.0)) + eps).sqrt();
    (-std + 1.0).relu().mean()
}

/// `c(Z)`: the sum of the squared off-diagonal covariances, divided by D.
pub fn covariance(z: &Var) -> Var {
    let (n, d) = z.dims();
    let zc = z - z.mean_cols();
    let cov = zc.t().matmul(&zc) / (n as f32 - 1.0);
    let diagonal: Vec<bool> = (0..d * d).map(|k| k / d == k % d).collect();
    cov.square().masked_fill(&diagonal, 0.0).sum() / d as f32
}

/// VICReg of two expanded views `za`, `zb` `[N, D]` (N ≥ 2), with the three terms as metrics
/// `invariance`, `variance`, `covariance` (unweighted).
pub fn vicreg(za: &Var, zb: &Var, w: Weights) -> anyhow::Result<(Var, Vec<(String, f64)>)> {
    ensure!(
        za.dims() == zb.dims(),
        "the two views must have the same shape, got {:?} and {:?}",
        za.dims(),
        zb.dims()
    );
    ensure!(
        za.rows() >= 2,
        "vicreg needs at least 2 samples per batch (a variance over the batch), got {}",
        za.rows()
    );
    let inv = (za - zb).square().mean();
    let var = (variance(za, w.eps) + variance(zb, w.eps)) * 0.5;
    let cov = covariance(za) + covariance(zb);
    let metrics = vec![
        ("invariance".into(), inv.item()),
        ("variance".into(), var.item()),
        ("covariance".into(), cov.item()),
    ];
    Ok((inv * w.invariance + var * w.variance + cov * w.covariance, metrics))
}
