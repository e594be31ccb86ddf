//! NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR, and its decoupled form.
//!
//! - \[0\] SimCLR, 2020, <https://arxiv.org/abs/2002.05709> (equation 1)
//! - \[1\] DCL, Yeh et al. 2021, Decoupled Contrastive Learning, <https://arxiv.org/abs/2110.06848>
//!
//! ```text
//! u_k    = z_k / max(‖z_k‖, 1e-12)                       k = 0 .. 2N-1 (view 1 rows, then view 2 rows)
//! s(i,k) = u_iᵀ u_k / τ
//! p(i)   = i + N mod 2N                                  the other view of the same sample
//! D(i)   = { k ≠ i }                  positive_in_denominator = true   (NT-Xent, [0])
//!        = { k ≠ i, k ≠ p(i) }        positive_in_denominator = false  (DCL without weighting, [1])
//! l(i)   = −s(i, p(i)) + log Σ_{k ∈ D(i)} exp s(i, k)
//! loss   = 1/(2N) · Σ_i l(i)
//! ```
//! The same value as lightly 1.6's `NTXentLoss(temperature)` (cross-entropy over the 2N rows)
//! and `DCLLoss(temperature, weight_fn=None)` (`0.5 · (loss0 + loss1)`, each a batch mean).
//! The gradient is the SDK's autodiff.
//!
//! # Shapes
//! z1, z2 `[N, D]` (N ≥ 2) -> loss `[1, 1]`.
//!
//! # Defaults
//! τ = 0.5 (SimCLR's CIFAR-10 setting; lightly's default is also 0.5), positive in the
//! denominator.

use latent_sdk::prelude::*;

/// NT-Xent (or DCL with `positive_in_denominator = false`) of two views `z1`, `z2` `[N, D]`.
pub fn nt_xent(z1: &Var, z2: &Var, temperature: f32, positive_in_denominator: bool) -> Var {
    let (n, m) = (z1.rows(), 2 * z1.rows());
    let u = cat_rows(&[z1, z2]).l2_normalize();
    let s = u.matmul_t(&u) / temperature;
    let pos: Vec<usize> = (0..m).map(|i| (i + n) % m).collect();
    let mut left_out = vec![false; m * m];
    for (i, &p) in pos.iter().enumerate() {
        left_out[i * m + i] = true;
        left_out[i * m + p] |= !positive_in_denominator;
    }
    (s.masked_fill(&left_out, f32::NEG_INFINITY).logsumexp_rows() - s.pick(&pos)).mean()
}

/// `pos_cosine` (mean cosine of the positive pairs), `neg_cosine` (mean cosine over all
/// anchor-negative pairs), `top1` (fraction of the 2N anchors whose most similar other row is
/// their positive), on values.
pub fn metrics(z1: &Var, z2: &Var) -> Vec<(String, f64)> {
    let (n, m) = (z1.rows(), 2 * z1.rows());
    let z = cat_rows(&[&z1.off_tape(), &z2.off_tape()]);
    let c = z.cosine_matrix(&z).values();
    let (mut pos_cos, mut neg_cos, mut top1) = (0.0, 0.0, 0.0);
    for i in 0..m {
        let (row, p) = (&c[i * m..(i + 1) * m], (i + n) % m);
        pos_cos += row[p] as f64;
        neg_cos += (0..m).filter(|&k| k != i && k != p).map(|k| row[k] as f64).sum::<f64>();
        let best = (0..m).filter(|&k| k != i).fold(None, |b: Option<usize>, k| match b {
            Some(j) if row[j] >= row[k] => Some(j),
            _ => Some(k),
        });
        top1 += (best == Some(p)) as u8 as f64;
    }
    vec![
        ("pos_cosine".into(), pos_cos / m as f64),
        ("neg_cosine".into(), neg_cos / (m * (m - 2)) as f64),
        ("top1".into(), top1 / m as f64),
    ]
}
