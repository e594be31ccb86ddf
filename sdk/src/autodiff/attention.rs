//! Multi-head scaled dot-product attention over a batch of token sequences, as one custom op:
//! the tape's `Var`s are 2-d, and attention is a matrix product per sequence and head. Written
//! for the ViT encoder of DINO (issue #16); any encoder with attention can use it.
//!
//! ```text
//! qkv [N·T, 3·D]: per token q | k | v, each D = heads · dh, head h in columns h·dh..(h+1)·dh
//!                 (timm's `Attention`: qkv = Linear(D, 3·D), then reshape(N, T, 3, heads, dh))
//! per sequence n and head h:  S = q kᵀ / √dh  [T, T];  P = softmax over each row of S;  O = P v
//! out [N·T, D]:   O of head h in columns h·dh..(h+1)·dh (timm's transpose(1, 2).reshape)
//! backward:       dV = Pᵀ dO;  dP = dO Vᵀ;  dS = P ⊙ (dP − Σ_row dP ⊙ P);
//!                 dQ = dS K / √dh;  dK = dSᵀ Q / √dh
//! ```
//! Checked against PyTorch's `scaled_dot_product_attention` (fixture and generator in
//! `sdk/src/autodiff/fixtures/`) and against finite differences.

use super::{fail, Var};
use rayon::prelude::*;

/// Attention of `seqs` sequences of `qkv.rows() / seqs` tokens with `heads` heads; see the
/// module docs for the layout. Returns `[N·T, D]`.
pub fn attention(qkv: &Var, seqs: usize, heads: usize) -> Var {
    let (rows, cols) = qkv.dims();
    if seqs == 0
        || heads == 0
        || rows == 0
        || cols == 0
        || rows % seqs != 0
        || cols % (3 * heads) != 0
    {
        fail(format!(
            "attention: qkv of shape [{rows}, {cols}] does not hold {seqs} sequences of q, k, v for {heads} heads (rows must divide by the sequences, columns by 3 × heads)"
        ));
    }
    let (t, d) = (rows / seqs, cols / 3);
    let dh = d / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let x = qkv.values();
    // P per (sequence, head), [T, T] each, kept for the backward pass
    let per = heads * t * t;
    let mut p = vec![0f32; seqs * per];
    let mut out = vec![0f32; rows * d];
    p.par_chunks_mut(per).zip(out.par_chunks_mut(t * d)).enumerate().for_each(|(n, (pn, on))| {
        let xs = &x[n * t * cols..(n + 1) * t * cols];
        for h in 0..heads {
            let (q0, k0, v0) = (h * dh, d + h * dh, 2 * d + h * dh);
            let ph = &mut pn[h * t * t..(h + 1) * t * t];
            for i in 0..t {
                let qi = &xs[i * cols + q0..i * cols + q0 + dh];
                let row = &mut ph[i * t..(i + 1) * t];
                for (j, s) in row.iter_mut().enumerate() {
                    let kj = &xs[j * cols + k0..j * cols + k0 + dh];
                    *s = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut z = 0.0;
                row.iter_mut().for_each(|s| {
                    *s = (*s - m).exp();
                    z += *s;
                });
                row.iter_mut().for_each(|s| *s /= z);
                let oi = &mut on[i * d + q0..i * d + q0 + dh];
                for (j, &pij) in row.iter().enumerate() {
                    let vj = &xs[j * cols + v0..j * cols + v0 + dh];
                    oi.iter_mut().zip(vj).for_each(|(o, v)| *o += pij * v);
                }
            }
        }
    });
    qkv.graph().custom(&[qkv], rows, d, out, move |dy, dxs| {
        let dx = &mut dxs[0];
        dx.par_chunks_mut(t * cols).enumerate().for_each(|(n, dxn)| {
            let xs = &x[n * t * cols..(n + 1) * t * cols];
            let dys = &dy[n * t * d..(n + 1) * t * d];
            let pn = &p[n * per..(n + 1) * per];
            let mut ds = vec![0f32; t];
            for h in 0..heads {
                let (q0, k0, v0) = (h * dh, d + h * dh, 2 * d + h * dh);
                let ph = &pn[h * t * t..(h + 1) * t * t];
                for i in 0..t {
                    let doi = &dys[i * d + q0..i * d + q0 + dh];
                    let row = &ph[i * t..(i + 1) * t];
                    // dP_ij = dO_i · v_j; dV_j += P_ij dO_i
                    for (j, dsj) in ds.iter_mut().enumerate() {
                        let vj = &xs[j * cols + v0..j * cols + v0 + dh];
                        *dsj = doi.iter().zip(vj).map(|(a, b)| a * b).sum::<f32>();
                        let dvj = &mut dxn[j * cols + v0..j * cols + v0 + dh];
                        dvj.iter_mut().zip(doi).for_each(|(g, o)| *g += row[j] * o);
                    }
                    // dS = P ⊙ (dP − Σ dP ⊙ P), then through S = q kᵀ · scale
                    let dot: f32 = ds.iter().zip(row).map(|(a, b)| a * b).sum();
                    for (j, dsj) in ds.iter_mut().enumerate() {
                        *dsj = row[j] * (*dsj - dot) * scale;
                    }
                    for (j, &g) in ds.iter().enumerate() {
                        for c in 0..dh {
                            let (qi, kj) = (xs[i * cols + q0 + c], xs[j * cols + k0 + c]);
                            dxn[i * cols + q0 + c] += g * kj;
                            dxn[j * cols + k0 + c] += g * qi;
                        }
                    }
                }
            }
        });
    })
}
