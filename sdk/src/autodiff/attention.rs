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
    // The inner loops are axpys over contiguous rows (a dot product of 16 floats in order is a
    // chain of dependent adds the compiler may not vectorise): each head's q, kᵀ and v are
    // first copied out of the token rows.
    p.par_chunks_mut(per).zip(out.par_chunks_mut(t * d)).enumerate().for_each(|(n, (pn, on))| {
        let xs = &x[n * t * cols..(n + 1) * t * cols];
        let (mut q, mut kt, mut v, mut o) =
            (vec![0f32; t * dh], vec![0f32; dh * t], vec![0f32; t * dh], vec![0f32; t * dh]);
        for h in 0..heads {
            gather(xs, cols, h * dh, dh, &mut q);
            gather_t(xs, cols, d + h * dh, dh, t, &mut kt);
            gather(xs, cols, 2 * d + h * dh, dh, &mut v);
            let ph = &mut pn[h * t * t..(h + 1) * t * t];
            o.iter_mut().for_each(|v| *v = 0.0);
            for i in 0..t {
                let row = &mut ph[i * t..(i + 1) * t];
                // S_i = q_i Kᵀ · scale
                for (c, &qc) in q[i * dh..(i + 1) * dh].iter().enumerate() {
                    axpy(qc * scale, &kt[c * t..(c + 1) * t], row);
                }
                let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut z = 0.0;
                row.iter_mut().for_each(|s| {
                    *s = (*s - m).exp();
                    z += *s;
                });
                let inv = 1.0 / z;
                row.iter_mut().for_each(|s| *s *= inv);
                // O_i = P_i V
                let oi = &mut o[i * dh..(i + 1) * dh];
                for (j, &pij) in row.iter().enumerate() {
                    axpy(pij, &v[j * dh..(j + 1) * dh], oi);
                }
            }
            for i in 0..t {
                on[i * d + h * dh..i * d + (h + 1) * dh].copy_from_slice(&o[i * dh..(i + 1) * dh]);
            }
        }
    });
    qkv.graph().custom(&[qkv], rows, d, out, move |dy, dxs| {
        let dx = &mut dxs[0];
        dx.par_chunks_mut(t * cols).enumerate().for_each(|(n, dxn)| {
            let xs = &x[n * t * cols..(n + 1) * t * cols];
            let dys = &dy[n * t * d..(n + 1) * t * d];
            let pn = &p[n * per..(n + 1) * per];
            let buf = |len: usize| vec![0f32; len];
            let (mut q, mut k, mut vt, mut dout) =
                (buf(t * dh), buf(t * dh), buf(dh * t), buf(t * dh));
            let (mut dq, mut dk, mut dv, mut ds) = (buf(t * dh), buf(t * dh), buf(t * dh), buf(t));
            for h in 0..heads {
                let (q0, k0, v0) = (h * dh, d + h * dh, 2 * d + h * dh);
                gather(xs, cols, q0, dh, &mut q);
                gather(xs, cols, k0, dh, &mut k);
                gather_t(xs, cols, v0, dh, t, &mut vt);
                gather(dys, d, q0, dh, &mut dout);
                for b in [&mut dq, &mut dk, &mut dv] {
                    b.iter_mut().for_each(|v| *v = 0.0);
                }
                let ph = &pn[h * t * t..(h + 1) * t * t];
                for i in 0..t {
                    let doi = &dout[i * dh..(i + 1) * dh];
                    let row = &ph[i * t..(i + 1) * t];
                    // dP_i = dO_i Vᵀ; dV_j += P_ij dO_i
                    ds.iter_mut().for_each(|v| *v = 0.0);
                    for (c, &g) in doi.iter().enumerate() {
                        axpy(g, &vt[c * t..(c + 1) * t], &mut ds);
                    }
                    for (j, &pij) in row.iter().enumerate() {
                        axpy(pij, doi, &mut dv[j * dh..(j + 1) * dh]);
                    }
                    // dS = P ⊙ (dP − Σ dP ⊙ P), then through S = q kᵀ · scale
                    let dot: f32 = ds.iter().zip(row).map(|(a, b)| a * b).sum();
                    ds.iter_mut().zip(row).for_each(|(g, &pij)| *g = pij * (*g - dot) * scale);
                    let qi = &q[i * dh..(i + 1) * dh];
                    let dqi = &mut dq[i * dh..(i + 1) * dh];
                    for (j, &g) in ds.iter().enumerate() {
                        axpy(g, &k[j * dh..(j + 1) * dh], dqi);
                        axpy(g, qi, &mut dk[j * dh..(j + 1) * dh]);
                    }
                }
                scatter_add(&dq, dxn, cols, q0, dh);
                scatter_add(&dk, dxn, cols, k0, dh);
                scatter_add(&dv, dxn, cols, v0, dh);
            }
        });
    })
}

/// `y += a · x`.
#[inline]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// Columns `c0..c0 + w` of the rows of `src` (row length `cols`) into `dst` `[rows, w]`.
fn gather(src: &[f32], cols: usize, c0: usize, w: usize, dst: &mut [f32]) {
    for (i, row) in dst.chunks_exact_mut(w).enumerate() {
        row.copy_from_slice(&src[i * cols + c0..i * cols + c0 + w]);
    }
}

/// The same columns transposed: `dst` `[w, rows]`.
fn gather_t(src: &[f32], cols: usize, c0: usize, w: usize, rows: usize, dst: &mut [f32]) {
    for i in 0..rows {
        for c in 0..w {
            dst[c * rows + i] = src[i * cols + c0 + c];
        }
    }
}

/// `dst`'s columns `c0..c0 + w` += `src` `[rows, w]`.
fn scatter_add(src: &[f32], dst: &mut [f32], cols: usize, c0: usize, w: usize) {
    for (i, row) in src.chunks_exact(w).enumerate() {
        axpy(1.0, row, &mut dst[i * cols + c0..i * cols + c0 + w]);
    }
}
