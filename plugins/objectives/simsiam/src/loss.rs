//! SimSiam's loss: the symmetrised negative cosine between each view's prediction and the other
//! view's projection, which is detached (stop-gradient).
//!
//! - \[0\] SimSiam, Chen & He 2021, Exploring Simple Siamese Representation Learning,
//!   <https://arxiv.org/abs/2011.10566> (equations 1–4, algorithm 1)
//!
//! ```text
//! D(p, z) = −1/N · Σ_n cos(p_n, stopgrad(z_n))
//! L       = ½ D(p₁, z₂) + ½ D(p₂, z₁)                minimum −1
//! ```
//! The same value as lightly 1.6's `0.5 · (NegativeCosineSimilarity()(p0, z1.detach()) +
//! NegativeCosineSimilarity()(p1, z0.detach()))`. The gradient is the SDK's autodiff.

use latent_sdk::prelude::*;

/// `D(p, z)`: the batch mean of −cos(p_n, z_n). `z` is the detached branch: a target, or
/// [`Var::detach`]ed.
pub fn negative_cosine(p: &Var, z: &Var) -> Var {
    -p.cosine_rows(z).mean()
}

/// SimSiam's symmetrised loss of predictions `p1`, `p2` and detached projections `z1`, `z2`
/// `[N, D]`.
pub fn simsiam_loss(p1: &Var, p2: &Var, z1: &Var, z2: &Var) -> Var {
    (negative_cosine(p1, z2) + negative_cosine(p2, z1)) * 0.5
}
