//! BYOL's regression loss and its target-momentum schedule.
//!
//! - \[0\] BYOL, Grill et al. 2020, <https://arxiv.org/abs/2006.07733> (equations 2 and 5, section 3.2)
//!
//! ```text
//! cos(q, t)   = qᵀt / (max(‖q‖, 1e-12) · max(‖t‖, 1e-12))
//! L(q, t)     = 1/B · Σ_i (2 − 2 cos(q_i, t_i))                    = 1/B · Σ_i ‖q̂_i − t̂_i‖²
//! loss        = L(q(v1), z'(v2)) + L(q(v2), z'(v1))                 (the paper's symmetrised sum)
//! τ_k         = 1 − (1 − τ_base) · (cos(π k / K) + 1) / 2            k = step (clamped to K), K = total steps
//! ```
//! Normalisation: each term is a batch mean and the two terms are summed, as in the paper
//! (`L^BYOL_θ,ξ = L + L̃`), so the loss lies in [0, 8]. lightly's examples instead use
//! `0.5 · (NegativeCosineSimilarity(p0, z1) + NegativeCosineSimilarity(p1, z0))` (in [−1, 1]);
//! the two are related by `loss_paper = 4 + 4 · loss_lightly`, gradients by the factor 4.
//!
//! Only the online predictions `q` receive gradient: the targets are constants (stop-gradient).
//! The gradient is the SDK's autodiff.
//!
//! The schedule equals lightly's `cosine_schedule(k, K + 1, τ_base, 1.0)`; K = 0 gives τ_base.
//!
//! # Shapes
//! q, t `[B, D]` -> `[1, 1]`.
//!
//! # Defaults
//! τ_base = 0.996 (the paper's ImageNet setting).

use latent_sdk::prelude::*;

/// `L(q, t) = mean_i (2 − 2 cos(q_i, t_i))`; `t` is a constant.
pub fn regression(q: &Var, t: &Var) -> Var {
    (q.cosine_rows(t) * -2.0 + 2.0).mean()
}

/// The symmetrised BYOL loss `L(q1, t2) + L(q2, t1)`.
pub fn byol_loss(q1: &Var, q2: &Var, t1: &Var, t2: &Var) -> Var {
    regression(q1, t2) + regression(q2, t1)
}

/// τ at step `k` of `total` (cosine increase from `tau_base` to 1).
pub use latent_sdk::schedule::cosine_momentum as tau;

/// The collapse indicator, shared with SimSiam: see [`latent_sdk::metrics::collapse`].
pub use latent_sdk::metrics::collapse;
