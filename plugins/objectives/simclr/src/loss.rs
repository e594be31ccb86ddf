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
//!
//! Backward: with `G(i,k) = (softmax_{D(i)} s(i,·))_k / 2N − [k = p(i)] / 2N`,
//! `dL/du = (G + Gᵀ) · U / τ`, then through the normalisation `dL/dz = (du − u (uᵀdu)) / ‖z‖`.
//! All arithmetic is in f64.
//!
//! # Shapes
//! z1, z2 `[N, D]` (N ≥ 2) -> loss scalar, dz1, dz2 `[N, D]`.
//!
//! # Defaults
//! τ = 0.5 (SimCLR's CIFAR-10 setting; lightly's default is also 0.5), positive in the
//! denominator.

use latent_sdk::prelude::*;

/// NT-Xent value, gradients and metrics.
pub struct NtXent {
    /// The loss.
    pub loss: f64,
    /// d loss / d z1.
    pub dz1: Tensor,
    /// d loss / d z2.
    pub dz2: Tensor,
    /// `pos_cosine` (mean cosine of the positive pairs), `neg_cosine` (mean cosine over all
    /// anchor-negative pairs), `top1` (fraction of the 2N anchors whose most similar other row
    /// is their positive).
    pub metrics: Vec<(String, f64)>,
}

/// Rows of `z` (`[n, d]`) scaled to unit length (F.normalize, eps 1e-12), with the norms used.
pub fn l2_normalize(z: &[f64], n: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut u = z.to_vec();
    let mut norms = Vec::with_capacity(n);
    for row in u.chunks_mut(d) {
        let nr = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= nr);
        norms.push(nr);
    }
    (u, norms)
}

/// Backward of [`l2_normalize`]: `dz = (du − u (uᵀdu)) / ‖z‖` per row.
pub fn l2_normalize_backward(u: &[f64], norms: &[f64], du: &[f64], d: usize) -> Vec<f64> {
    let mut dz = vec![0.0; u.len()];
    for (r, &nr) in norms.iter().enumerate() {
        let (ur, gr) = (&u[r * d..(r + 1) * d], &du[r * d..(r + 1) * d]);
        let dot: f64 = ur.iter().zip(gr).map(|(a, b)| a * b).sum();
        for j in 0..d {
            dz[r * d + j] = (gr[j] - ur[j] * dot) / nr;
        }
    }
    dz
}

/// NT-Xent (or DCL with `positive_in_denominator = false`) of two views `z1`, `z2` `[N, D]`.
pub fn nt_xent(z1: &Tensor, z2: &Tensor, temperature: f64, positive_in_denominator: bool) -> anyhow::Result<NtXent> {
    ensure!(temperature > 0.0, "temperature must be positive, got {temperature}");
    let (n, d) = z1.dims2("view 1 embeddings")?;
    ensure!(z2.shape == z1.shape, "the two views must have the same shape, got {:?} and {:?}", z1.shape, z2.shape);
    ensure!(n >= 2, "nt-xent needs at least 2 samples per batch, got {n}");
    let m = 2 * n;
    let z: Vec<f64> = z1.data.iter().chain(&z2.data).map(|&v| v as f64).collect();
    let (u, norms) = l2_normalize(&z, m, d);
    // cosine matrix
    let mut c = vec![0.0; m * m];
    for i in 0..m {
        for k in i..m {
            let v: f64 = u[i * d..(i + 1) * d].iter().zip(&u[k * d..(k + 1) * d]).map(|(a, b)| a * b).sum();
            c[i * m + k] = v;
            c[k * m + i] = v;
        }
    }
    let pos = |i: usize| (i + n) % m;
    let in_den = |i: usize, k: usize| k != i && (positive_in_denominator || k != pos(i));
    let mut loss = 0.0;
    let mut g = vec![0.0; m * m];
    let (mut pos_cos, mut neg_cos, mut top1) = (0.0, 0.0, 0.0);
    for i in 0..m {
        let row = &c[i * m..(i + 1) * m];
        let mx = (0..m).filter(|&k| in_den(i, k)).map(|k| row[k] / temperature).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = (0..m).filter(|&k| in_den(i, k)).map(|k| (row[k] / temperature - mx).exp()).sum();
        let lse = mx + sum.ln();
        loss += lse - row[pos(i)] / temperature;
        for k in (0..m).filter(|&k| in_den(i, k)) {
            g[i * m + k] = (row[k] / temperature - lse).exp() / m as f64;
        }
        g[i * m + pos(i)] -= 1.0 / m as f64;
        pos_cos += row[pos(i)];
        neg_cos += (0..m).filter(|&k| k != i && k != pos(i)).map(|k| row[k]).sum::<f64>();
        let best = (0..m).filter(|&k| k != i).fold(None, |b: Option<usize>, k| match b {
            Some(j) if row[j] >= row[k] => Some(j),
            _ => Some(k),
        });
        top1 += (best == Some(pos(i))) as u8 as f64;
    }
    loss /= m as f64;
    // dL/du = (G + Gᵀ) U / τ
    let mut du = vec![0.0; m * d];
    for i in 0..m {
        for k in 0..m {
            let w = (g[i * m + k] + g[k * m + i]) / temperature;
            if w != 0.0 {
                for j in 0..d {
                    du[i * d + j] += w * u[k * d + j];
                }
            }
        }
    }
    let dz = l2_normalize_backward(&u, &norms, &du, d);
    let half = n * d;
    let to32 = |s: &[f64]| Tensor::new(vec![n, d], s.iter().map(|&v| v as f32).collect());
    Ok(NtXent {
        loss,
        dz1: to32(&dz[..half]),
        dz2: to32(&dz[half..]),
        metrics: vec![
            ("loss".into(), loss),
            ("pos_cosine".into(), pos_cos / m as f64),
            ("neg_cosine".into(), neg_cos / (m * (m - 2)) as f64),
            ("top1".into(), top1 / m as f64),
        ],
    })
}
