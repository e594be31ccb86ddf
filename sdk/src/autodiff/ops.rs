//! The operations on [`Var`]: element-wise maths with broadcasting, reductions, matrix
//! products, the rows-and-columns helpers losses need, and the kit's convolution as a custom
//! op. Each checks shapes before dfdx sees them (see the [module docs](super)).

use super::{fail, pick_graph, Graph, T2t, Var};
use crate::kit::{BatchNorm, Conv2d, Conv2dConfig, Init, Layer, MaxPool2d, Param, Tensor};
use dfdx::prelude::{Axes2, Axis, BroadcastTo, PermuteTo, ReshapeTo, SumTo, TryMatMul};
use std::ops::{Add, Div, Mul, Neg, Sub};

fn expand(t: T2t, from: (usize, usize), to: (usize, usize)) -> T2t {
    match from {
        f if f == to => t,
        (1, 1) => t.reshape_like(&()).broadcast_like::<_, Axes2<0, 1>>(&to),
        (1, c) => t.reshape_like(&(c,)).broadcast_like::<_, Axis<0>>(&to),
        (r, 1) => t.reshape_like(&(r,)).broadcast_like::<_, Axis<1>>(&to),
        _ => unreachable!(),
    }
}

fn broadcast_dims(op: &str, a: (usize, usize), b: (usize, usize)) -> (usize, usize) {
    let dim = |x: usize, y: usize| match (x, y) {
        _ if x == y => Some(x),
        (1, y) => Some(y),
        (x, 1) => Some(x),
        _ => None,
    };
    match (dim(a.0, b.0), dim(a.1, b.1)) {
        (Some(r), Some(c)) => (r, c),
        _ => fail(format!("{op}: shapes [{}, {}] and [{}, {}] do not broadcast (each dimension must match or be 1)", a.0, a.1, b.0, b.1)),
    }
}

impl Var {
    /// `other`, copied when it is the same tensor as `self`: with both operands of one dfdx
    /// operation in one gradient slot, its backward would borrow that slot twice and panic.
    fn distinct(&self, other: &Var) -> Var {
        if self.id == other.id {
            other.scale(1.0)
        } else {
            other.clone()
        }
    }

    fn unary(&self, f: impl FnOnce(T2t) -> T2t) -> Var {
        self.g.record(f(self.traced()))
    }

    fn binary(&self, other: &Var, op: &str, f: impl FnOnce(T2t, T2t) -> T2t) -> Var {
        let g = pick_graph(&[self, other]).expect("two operands");
        let other = self.distinct(other);
        let to = broadcast_dims(op, self.dims(), other.dims());
        let a = expand(self.traced(), self.dims(), to);
        let b = expand(other.traced(), other.dims(), to);
        g.record(f(a, b))
    }

    /// `self + other` (broadcasting).
    pub fn add(&self, other: &Var) -> Var {
        self.binary(other, "add", |a, b| a + b)
    }
    /// `self − other` (broadcasting).
    pub fn sub(&self, other: &Var) -> Var {
        self.binary(other, "sub", |a, b| a - b)
    }
    /// `self ⊙ other` (broadcasting).
    pub fn mul(&self, other: &Var) -> Var {
        self.binary(other, "mul", |a, b| a * b)
    }
    /// `self / other` (broadcasting).
    pub fn div(&self, other: &Var) -> Var {
        self.binary(other, "div", |a, b| a / b)
    }
    /// `max(self, other)` element-wise (broadcasting).
    pub fn maximum(&self, other: &Var) -> Var {
        self.binary(other, "maximum", |a, b| a.maximum(b))
    }

    /// `s · self`.
    pub fn scale(&self, s: f32) -> Var {
        self.unary(|t| t * s)
    }
    /// `self + s`.
    pub fn shift(&self, s: f32) -> Var {
        self.unary(|t| t + s)
    }
    /// `eˣ`.
    pub fn exp(&self) -> Var {
        self.unary(|t| t.exp())
    }
    /// `ln x`.
    pub fn ln(&self) -> Var {
        self.unary(|t| t.ln())
    }
    /// `√x`.
    pub fn sqrt(&self) -> Var {
        self.unary(|t| t.sqrt())
    }
    /// `x²`.
    pub fn square(&self) -> Var {
        self.unary(|t| t.square())
    }
    /// `|x|`.
    pub fn abs(&self) -> Var {
        self.unary(|t| t.abs())
    }
    /// `xᵖ`.
    pub fn powf(&self, p: f32) -> Var {
        self.unary(|t| t.powf(p))
    }
    /// `max(x, 0)`.
    pub fn relu(&self) -> Var {
        self.unary(|t| t.relu())
    }
    /// GELU with the exact erf form (PyTorch's `nn.GELU()` default):
    /// `x·Φ(x)`, derivative `Φ(x) + x·φ(x)`. dfdx 0.13's `accurate_gelu` leaves the `1/√2` of
    /// the chain rule out of its derivative (8.5 % off at |x| ≈ 1), so this is a custom op.
    pub fn gelu(&self) -> Var {
        use rayon::prelude::*;
        use std::f32::consts::{FRAC_1_SQRT_2, PI};
        const CHUNK: usize = 1 << 14;
        let x = self.values();
        // Φ(x), kept for the backward pass (erf is most of the cost); parallel in chunks
        let mut cdf = vec![0f32; x.len()];
        let mut y = vec![0f32; x.len()];
        cdf.par_chunks_mut(CHUNK).zip(y.par_chunks_mut(CHUNK)).zip(x.par_chunks(CHUNK)).for_each(
            |((c, y), x)| {
                for ((c, y), &v) in c.iter_mut().zip(y.iter_mut()).zip(x) {
                    *c = 0.5 * (1.0 + libm::erff(v * FRAC_1_SQRT_2));
                    *y = v * *c;
                }
            },
        );
        let (r, c) = self.dims();
        self.g.custom(&[self], r, c, y, move |dy, dx| {
            let inv_sqrt_2pi = 1.0 / (2.0 * PI).sqrt();
            dx[0].par_chunks_mut(CHUNK).enumerate().for_each(|(b, dx)| {
                let o = b * CHUNK;
                for (k, g) in dx.iter_mut().enumerate() {
                    let v = x[o + k];
                    let pdf = inv_sqrt_2pi * (-0.5 * v * v).exp();
                    *g += dy[o + k] * (cdf[o + k] + v * pdf);
                }
            });
        })
    }
    /// Batch norm of each column over the rows, in training: `x̂ = (x − μ) / √(σ² + eps)` with
    /// the column's mean and biased variance, then `γ x̂ + β` where `affine` gives `γ` and `β`
    /// (`[1, cols]`). One fused op (the element-wise ops recorded eight tensors of `x`'s size
    /// and reduced their broadcasts in the backward: 10 % of the SimCLR objective's step).
    /// Returns the output and the columns' `(μ, σ²)` values (for running statistics).
    pub fn batch_norm_cols(
        &self,
        affine: Option<(&Var, &Var)>,
        eps: f32,
    ) -> (Var, Vec<f32>, Vec<f32>) {
        let (r, c) = self.dims();
        if let Some((gamma, beta)) = affine {
            check_affine("batch_norm_cols", (r, c), gamma, beta);
        }
        if r == 0 {
            fail(format!("batch_norm_cols: x [0, {c}] has no rows"));
        }
        let x = self.values();
        let n = r as f32;
        let mut mean = vec![0f32; c];
        for row in x.chunks_exact(c) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f32; c];
        for row in x.chunks_exact(c) {
            var.iter_mut().zip(row).zip(&mean).for_each(|((s, v), m)| *s += (v - m) * (v - m));
        }
        var.iter_mut().for_each(|s| *s /= n);
        let rstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let (gv, bv) = match affine {
            Some((g, b)) => (g.values(), b.values()),
            None => (vec![1.0; c], vec![0.0; c]),
        };
        let mut xhat = vec![0f32; r * c];
        let mut y = vec![0f32; r * c];
        for ((xr, xh), yr) in
            x.chunks_exact(c).zip(xhat.chunks_exact_mut(c)).zip(y.chunks_exact_mut(c))
        {
            for k in 0..c {
                xh[k] = (xr[k] - mean[k]) * rstd[k];
                yr[k] = xh[k] * gv[k] + bv[k];
            }
        }
        let inputs: Vec<&Var> = match affine {
            Some((g, b)) => vec![self, g, b],
            None => vec![self],
        };
        let g = pick_graph(&inputs).expect("an operand");
        let y = g.custom(&inputs, r, c, y, move |dy, dx| {
            // Σ dŷ and Σ dŷ ⊙ x̂ per column (dŷ = dy ⊙ γ), and dγ, dβ
            let (mut m1, mut m2) = (vec![0f32; c], vec![0f32; c]);
            let (mut sg, mut sb) = (vec![0f32; c], vec![0f32; c]);
            for (dyr, xh) in dy.chunks_exact(c).zip(xhat.chunks_exact(c)) {
                for k in 0..c {
                    let d = dyr[k] * gv[k];
                    m1[k] += d;
                    m2[k] += d * xh[k];
                    sb[k] += dyr[k];
                    sg[k] += dyr[k] * xh[k];
                }
            }
            // dx = rstd · (dŷ − mean(dŷ) − x̂ · mean(dŷ ⊙ x̂))
            for ((dxr, dyr), xh) in
                dx[0].chunks_exact_mut(c).zip(dy.chunks_exact(c)).zip(xhat.chunks_exact(c))
            {
                for k in 0..c {
                    dxr[k] += rstd[k] * (dyr[k] * gv[k] - m1[k] / n - xh[k] * m2[k] / n);
                }
            }
            if dx.len() == 3 {
                dx[1].iter_mut().zip(&sg).for_each(|(a, b)| *a += b);
                dx[2].iter_mut().zip(&sb).for_each(|(a, b)| *a += b);
            }
        });
        (y, mean, var)
    }
    /// Layer norm of each row: `(x − mean) / √(var + eps) · γ + β` with the biased variance
    /// (PyTorch's `LayerNorm` over the last dimension), `γ` and `β` of shape `[1, cols]`. One
    /// fused op: the same maths from the element-wise ops records nine tensors of `x`'s size.
    pub fn layer_norm_rows(&self, gamma: &Var, beta: &Var, eps: f32) -> Var {
        use rayon::prelude::*;
        let (r, c) = self.dims();
        check_affine("layer_norm_rows", (r, c), gamma, beta);
        if c == 0 {
            fail(format!("layer_norm_rows: x [{r}, 0] has no columns"));
        }
        let (x, gv, bv) = (self.values(), gamma.values(), beta.values());
        let mut xhat = vec![0f32; r * c];
        let mut rstd = vec![0f32; r];
        let mut y = vec![0f32; r * c];
        xhat.par_chunks_mut(c)
            .zip(y.par_chunks_mut(c))
            .zip(rstd.par_iter_mut())
            .enumerate()
            .for_each(|(i, ((xh, y), rs))| {
                let xi = &x[i * c..(i + 1) * c];
                let mean = xi.iter().sum::<f32>() / c as f32;
                let var = xi.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
                *rs = 1.0 / (var + eps).sqrt();
                for k in 0..c {
                    xh[k] = (xi[k] - mean) * *rs;
                    y[k] = xh[k] * gv[k] + bv[k];
                }
            });
        let g = pick_graph(&[self, gamma, beta]).expect("three operands");
        g.custom(&[self, gamma, beta], r, c, y, move |dy, dx| {
            let (dxx, rest) = dx.split_at_mut(1);
            let (dg, db) = rest.split_at_mut(1);
            // dγ and dβ: column sums, accumulated per block of rows, then the blocks' sums added
            // in block order (rayon's `reduce` grouped them as its work stealing split the
            // blocks, so the sums' rounding could change from run to run)
            let parts: Vec<(Vec<f32>, Vec<f32>)> = dy
                .par_chunks(c * 64)
                .zip(xhat.par_chunks(c * 64))
                .map(|(dyb, xhb)| {
                    let (mut sg, mut sb) = (vec![0f32; c], vec![0f32; c]);
                    for (dyr, xhr) in dyb.chunks_exact(c).zip(xhb.chunks_exact(c)) {
                        for k in 0..c {
                            sg[k] += dyr[k] * xhr[k];
                            sb[k] += dyr[k];
                        }
                    }
                    (sg, sb)
                })
                .collect();
            let (mut sg, mut sb) = (vec![0f32; c], vec![0f32; c]);
            for (x, y) in &parts {
                sg.iter_mut().zip(x).for_each(|(a, x)| *a += x);
                sb.iter_mut().zip(y).for_each(|(b, y)| *b += y);
            }
            dg[0].iter_mut().zip(&sg).for_each(|(a, b)| *a += b);
            db[0].iter_mut().zip(&sb).for_each(|(a, b)| *a += b);
            // dx = rstd · (dŷ − mean(dŷ) − x̂ · mean(dŷ ⊙ x̂)), dŷ = dy ⊙ γ
            dxx[0].par_chunks_mut(c).enumerate().for_each(|(i, dxr)| {
                let (dyr, xhr) = (&dy[i * c..(i + 1) * c], &xhat[i * c..(i + 1) * c]);
                let (mut m1, mut m2) = (0.0, 0.0);
                for k in 0..c {
                    let d = dyr[k] * gv[k];
                    m1 += d;
                    m2 += d * xhr[k];
                }
                let (m1, m2) = (m1 / c as f32, m2 / c as f32);
                for k in 0..c {
                    dxr[k] += rstd[i] * (dyr[k] * gv[k] - m1 - xhr[k] * m2);
                }
            });
        })
    }
    /// `max(x, lo)`.
    pub fn clamp_min(&self, lo: f32) -> Var {
        self.unary(|t| t.clamp(lo, f32::INFINITY))
    }

    /// Σ of every value, `[1, 1]`.
    pub fn sum(&self) -> Var {
        self.unary(|t| t.sum::<(), _>().reshape_like(&(1, 1)))
    }
    /// Mean of every value, `[1, 1]`.
    pub fn mean(&self) -> Var {
        let n = self.len().max(1) as f32;
        self.sum().scale(1.0 / n)
    }
    /// Σ over each row's columns, `[N, 1]`.
    pub fn sum_rows(&self) -> Var {
        let r = self.rows();
        self.unary(|t| t.sum::<(usize,), Axis<1>>().reshape_like(&(r, 1)))
    }
    /// Mean over each row's columns, `[N, 1]`.
    pub fn mean_rows(&self) -> Var {
        let c = self.cols().max(1) as f32;
        self.sum_rows().scale(1.0 / c)
    }
    /// Σ over each column's rows, `[1, C]`.
    pub fn sum_cols(&self) -> Var {
        let c = self.cols();
        self.unary(|t| t.sum::<(usize,), Axis<0>>().reshape_like(&(1, c)))
    }
    /// Mean over each column's rows (a batch mean), `[1, C]`.
    pub fn mean_cols(&self) -> Var {
        let r = self.rows().max(1) as f32;
        self.sum_cols().scale(1.0 / r)
    }
    /// Biased (1/N) variance of each column, `[1, C]`.
    pub fn var_cols(&self) -> Var {
        self.sub(&self.mean_cols()).square().mean_cols()
    }
    /// `log Σⱼ exp xᵢⱼ` of each row, `[N, 1]` (stable: `m + log Σⱼ exp(xᵢⱼ − m)`, `m` the row's
    /// largest value; entries of −∞ count as nothing). One fused op, whose backward is the
    /// softmax of each row times the row's gradient: dfdx's recorded the row maxima, the
    /// shifted copy, its exponentials and sums (8 % of the SimCLR objective's step).
    pub fn logsumexp_rows(&self) -> Var {
        let (r, c) = self.dims();
        let x = self.values();
        let l: Vec<f32> = (0..r)
            .map(|i| &x[i * c..(i + 1) * c])
            .map(|row| {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if m == f32::NEG_INFINITY {
                    // every entry left out: log 0
                    return m;
                }
                m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln()
            })
            .collect();
        let out = l.clone();
        self.g.custom(&[self], r, 1, out, move |dy, dx| {
            for i in 0..r {
                let (row, dxr) = (&x[i * c..(i + 1) * c], &mut dx[0][i * c..(i + 1) * c]);
                for (d, v) in dxr.iter_mut().zip(row) {
                    *d += dy[i] * (v - l[i]).exp();
                }
            }
        })
    }
    /// `xᵢⱼ − log Σₖ exp xᵢₖ` (log-softmax over each row).
    pub fn log_softmax_rows(&self) -> Var {
        self.sub(&self.logsumexp_rows())
    }
    /// Log-softmax over each row, with the entries where `mask` is true left out of the sum
    /// (their outputs are meaningless and get no gradient). `mask` is row-major, one per value.
    pub fn log_softmax_rows_masked(&self, mask: &[bool]) -> Var {
        self.masked_fill(mask, -1e30).log_softmax_rows()
    }

    /// `self · other` (`[N, K] · [K, M]`).
    pub fn matmul(&self, other: &Var) -> Var {
        let ((n, k), (k2, m)) = (self.dims(), other.dims());
        if k != k2 {
            fail(format!("matmul: [{n}, {k}] · [{k2}, {m}]: the inner dimensions differ"));
        }
        self.product(other, "matmul", false)
    }
    /// `self · otherᵀ` (`[N, K] · [M, K]ᵀ`): a similarity matrix of two sets of rows, or a
    /// linear layer with PyTorch's `[out, in]` weight.
    pub fn matmul_t(&self, other: &Var) -> Var {
        let ((n, k), (m, k2)) = (self.dims(), other.dims());
        if k != k2 {
            fail(format!("matmul_t: [{n}, {k}] · [{m}, {k2}]ᵀ: the rows have different lengths"));
        }
        self.product(other, "matmul_t", true)
    }
    /// The product of checked shapes: on the kit's kernel where the CPU has AVX-512 or AVX2 + FMA
    /// ([`Var::product_avx512`]), else dfdx's, with `other` transposed as dfdx's permute: a
    /// strided view that its matmul hands to gemm, so a weight is never copied (a transposed
    /// copy of a 2048 × 2048 weight per call cost more than the product). Distinct ids first: a
    /// product of a tensor with itself, or its own view, panics in dfdx's backward.
    fn product(&self, other: &Var, op: &str, transpose: bool) -> Var {
        if crate::kit::simd_gemm::available() {
            return self.product_avx512(other, transpose);
        }
        let other = self.distinct(other);
        let g = pick_graph(&[self, &other]).expect("two operands");
        let rhs = other.traced();
        let rhs = if transpose { rhs.permute::<(usize, usize), Axes2<1, 0>>() } else { rhs };
        g.record(self.traced().try_matmul(rhs).unwrap_or_else(|e| fail(format!("{op}: {e:?}"))))
    }
    /// [`Var::product`] on the kit's kernel (AVX-512 or AVX2), as one custom op, the rows of each product
    /// split over the threads: dfdx's products go to the `gemm` crate's AVX2 kernels on stable
    /// Rust. Each value of a product sums in the same order whatever the threads, so results
    /// are bitwise reproducible.
    fn product_avx512(&self, other: &Var, transpose: bool) -> Var {
        let ((n, k), (r2, c2)) = (self.dims(), other.dims());
        let m = if transpose { r2 } else { c2 };
        let (a, b) = (self.values(), other.values());
        // B as the kernel reads it, row-major [k, m]: a transposed copy of `other` [m, k]
        let t = |rows: usize, cols: usize, x: &[f32]| {
            let mut y = vec![0.0f32; rows * cols];
            crate::kit::simd_gemm::transpose(rows, cols, x, cols, &mut y, rows);
            y
        };
        let mut y = vec![0.0f32; n * m];
        if transpose {
            par_gemm((n, m, k), (&a, k, 1), (&t(m, k, &b), m), &mut y, false);
        } else {
            par_gemm((n, m, k), (&a, k, 1), (&b, m), &mut y, false);
        }
        self.g.custom(&[self, other], n, m, y, move |dy, dx| {
            if transpose {
                // y = a · bᵀ: da [n, k] = dy · b, db [m, k] = dyᵀ · a
                par_gemm((n, k, m), (dy, m, 1), (&b, k), &mut dx[0], true);
                par_gemm((m, k, n), (dy, 1, m), (&a, k), &mut dx[1], true);
            } else {
                // y = a · b: da [n, k] = dy · bᵀ, db [k, m] = aᵀ · dy
                par_gemm((n, k, m), (dy, m, 1), (&t(k, m, &b), k), &mut dx[0], true);
                par_gemm((k, m, n), (&a, 1, k), (dy, m), &mut dx[1], true);
            }
        })
    }
    /// The transpose, as a new contiguous tensor.
    pub fn t(&self) -> Var {
        let (r, c) = self.dims();
        let x = self.values();
        let mut y = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                y[j * r + i] = x[i * c + j];
            }
        }
        self.g.custom(&[self], c, r, y, move |dy, dx| {
            for i in 0..r {
                for j in 0..c {
                    dx[0][i * c + j] += dy[j * r + i];
                }
            }
        })
    }

    /// Each row scaled to unit length: `x / max(‖x‖, 1e-12)` (`F.normalize`). The squared norm
    /// is clamped before the square root, so a zero row gets a zero gradient, not NaN.
    pub fn l2_normalize(&self) -> Var {
        let norm = self.square().sum_rows().clamp_min(1e-24).sqrt();
        self.div(&norm)
    }
    /// Cosine similarity of matching rows, `[N, 1]`.
    pub fn cosine_rows(&self, other: &Var) -> Var {
        self.l2_normalize().mul(&other.l2_normalize()).sum_rows()
    }
    /// Cosine similarity of every row of `self` with every row of `other`, `[N, M]`.
    pub fn cosine_matrix(&self, other: &Var) -> Var {
        self.l2_normalize().matmul_t(&other.l2_normalize())
    }

    /// Rows `start..end`.
    pub fn rows_range(&self, start: usize, end: usize) -> Var {
        let (r, c) = self.dims();
        if start > end || end > r {
            fail(format!("rows_range {start}..{end} of a [{r}, {c}] tensor"));
        }
        let y = self.values()[start * c..end * c].to_vec();
        self.g.custom(&[self], end - start, c, y, move |dy, dx| {
            dx[0][start * c..end * c].iter_mut().zip(dy).for_each(|(a, b)| *a += b);
        })
    }
    /// Diagonal of a square matrix, `[N, 1]`.
    pub fn diag(&self) -> Var {
        let (r, c) = self.dims();
        if r != c {
            fail(format!("diag of a non-square [{r}, {c}] tensor"));
        }
        self.pick(&(0..r).collect::<Vec<_>>())
    }
    /// Entry `idx[i]` of each row `i`, `[N, 1]` (`gather` along the columns).
    pub fn pick(&self, idx: &[usize]) -> Var {
        let (r, c) = self.dims();
        if idx.len() != r {
            fail(format!("pick: {} indices for {r} rows", idx.len()));
        }
        if let Some((i, &j)) = idx.iter().enumerate().find(|(_, &j)| j >= c) {
            fail(format!("pick: index {j} in row {i} of a [{r}, {c}] tensor"));
        }
        let x = self.values();
        let y: Vec<f32> = idx.iter().enumerate().map(|(i, &j)| x[i * c + j]).collect();
        let idx = idx.to_vec();
        self.g.custom(&[self], r, 1, y, move |dy, dx| {
            for (i, &j) in idx.iter().enumerate() {
                dx[0][i * c + j] += dy[i];
            }
        })
    }
    /// `value` where `mask` is true (no gradient there), `self` elsewhere.
    pub fn masked_fill(&self, mask: &[bool], value: f32) -> Var {
        if mask.len() != self.len() {
            fail(format!(
                "masked_fill: {} mask entries for a {:?} tensor",
                mask.len(),
                self.dims()
            ));
        }
        let (r, c) = self.dims();
        let y: Vec<f32> =
            self.values().iter().zip(mask).map(|(&v, &m)| if m { value } else { v }).collect();
        let mask = mask.to_vec();
        self.g.custom(&[self], r, c, y, move |dy, dx| {
            for (k, &m) in mask.iter().enumerate() {
                if !m {
                    dx[0][k] += dy[k];
                }
            }
        })
    }
    /// The same values as `[rows, cols]` (row-major order kept).
    pub fn reshape(&self, rows: usize, cols: usize) -> Var {
        if rows * cols != self.len() {
            fail(format!("reshape of a {:?} tensor to [{rows}, {cols}]", self.dims()));
        }
        // dfdx keeps the tensor id of a contiguous reshape: so does the Var.
        let mut v = self.unary(|t| t.reshape_like(&(rows, cols)));
        v.id = self.id;
        v
    }
}

/// Rows of every part stacked, `[Σ Nₖ, C]` (`torch.cat(dim=0)`).
pub fn cat_rows(parts: &[&Var]) -> Var {
    let Some(first) = parts.first() else { fail("cat_rows of no tensors".into()) };
    let c = first.cols();
    if let Some(p) = parts.iter().find(|p| p.cols() != c) {
        fail(format!("cat_rows: a [{}, {}] part among parts of {c} columns", p.rows(), p.cols()));
    }
    let g: Graph = pick_graph(parts).expect("parts");
    let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    let y: Vec<f32> = parts.iter().flat_map(|p| p.values()).collect();
    let rows = y.len() / c.max(1);
    g.custom(parts, rows, c, y, move |dy, dx| {
        let mut o = 0;
        for (k, &n) in lens.iter().enumerate() {
            dx[k].iter_mut().zip(&dy[o..o + n]).for_each(|(a, b)| *a += b);
            o += n;
        }
    })
}

/// Mean cross-entropy of `logits` `[N, C]` against class indices `target` (`F.cross_entropy`).
pub fn cross_entropy(logits: &Var, target: &[usize]) -> Var {
    logits.log_softmax_rows().pick(target).mean().scale(-1.0)
}

/// 2-d convolution with the kit's fast kernels as one custom op: `x` is `[N, C·H·W]` with
/// `chw = [C, H, W]`, `weight` the `[O, C/groups·kh·kw]` view of a `[O, C/groups, kh, kw]`
/// parameter (what [`Graph::param`] gives). Returns `[N, O·H'·W']` and `[O, H', W']`. No bias.
pub fn conv2d(
    x: &Var,
    chw: [usize; 3],
    weight: &Var,
    kernel: [usize; 2],
    stride: usize,
    padding: usize,
    groups: usize,
) -> (Var, [usize; 3]) {
    let [c, h, w] = chw;
    let (n, len) = x.dims();
    let [kh, kw] = kernel;
    let o = weight.rows();
    if len != c * h * w {
        fail(format!("conv2d: input rows of {len} values are not [C, H, W] = {chw:?}"));
    }
    if groups == 0
        || c % groups != 0
        || !o.is_multiple_of(groups)
        || weight.cols() != c / groups * kh * kw
    {
        fail(format!("conv2d: weight {:?} does not fit {c} input channels, kernel {kh}x{kw}, {groups} groups", weight.dims()));
    }
    if h + 2 * padding < kh || w + 2 * padding < kw || stride == 0 {
        fail(format!("conv2d: kernel {kh}x{kw} (stride {stride}, padding {padding}) does not fit a {h}x{w} input"));
    }
    let cfg = Conv2dConfig { stride, padding, groups, bias: false };
    let mut conv = Conv2d::rect(&Init::new(0), c, o, kh, kw, cfg);
    conv.weight.value = weight.values();
    let train = pick_graph(&[x, weight]).is_some_and(|g| g.records());
    let y = conv.forward(&Tensor::new(vec![n, c, h, w], x.values()), train);
    let (oh, ow) = (y.shape[2], y.shape[3]);
    let g = pick_graph(&[x, weight]).expect("operands");
    let out = g.custom(&[x, weight], n, o * oh * ow, y.data, move |dy, dx| {
        let d = conv.backward(&Tensor::new(vec![n, o, oh, ow], dy.to_vec()));
        dx[0].iter_mut().zip(&d.data).for_each(|(a, b)| *a += b);
        dx[1].iter_mut().zip(&conv.weight.grad).for_each(|(a, b)| *a += b);
    });
    (out, [o, oh, ow])
}

/// Max pooling with the kit's kernel as a custom op: `x` `[N, C·H·W]` with `chw`, a
/// `kernel`×`kernel` window. Returns `[N, C·H'·W']` and `[C, H', W']`.
pub fn max_pool2d(
    x: &Var,
    chw: [usize; 3],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (Var, [usize; 3]) {
    let [c, h, w] = chw;
    let (n, len) = x.dims();
    if len != c * h * w {
        fail(format!("max_pool2d: input rows of {len} values are not [C, H, W] = {chw:?}"));
    }
    if kernel == 0 || stride == 0 || h + 2 * padding < kernel || w + 2 * padding < kernel {
        fail(format!("max_pool2d: window {kernel} (stride {stride}, padding {padding}) does not fit a {h}x{w} input"));
    }
    let mut pool = MaxPool2d::new(kernel, stride, padding);
    let y = pool.forward(&Tensor::new(vec![n, c, h, w], x.values()), true);
    let (oh, ow) = (y.shape[2], y.shape[3]);
    let out = x.g.custom(&[x], n, c * oh * ow, y.data, move |dy, dx| {
        let d = pool.backward(&Tensor::new(vec![n, c, oh, ow], dy.to_vec()));
        dx[0].iter_mut().zip(&d.data).for_each(|(a, b)| *a += b);
    });
    (out, [c, oh, ow])
}

/// Batch normalisation over the channels of `x` `[N, C·H·W]` (BatchNorm2d) with the kit's
/// kernel as a custom op. `gamma`, `beta` are the `[1, C]` affine parameters on the tape; the
/// running statistics are updated in place in training (the graph's mode).
pub fn batch_norm2d(
    x: &Var,
    chw: [usize; 3],
    gamma: &Var,
    beta: &Var,
    running: [&mut Param; 2],
    eps: f32,
    momentum: f32,
) -> Var {
    let [c, h, w] = chw;
    let (n, len) = x.dims();
    if len != c * h * w || gamma.dims() != (1, c) || beta.dims() != (1, c) {
        fail(format!(
            "batch_norm2d: input {:?} as {chw:?} with affine {:?} and {:?}",
            x.dims(),
            gamma.dims(),
            beta.dims()
        ));
    }
    let train = x.g.train();
    if train && n * h * w < 2 {
        fail(format!("batch-norm in training needs more than one value per channel, got [{n}, {c}, {h}, {w}]"));
    }
    let [rm, rv] = running;
    let mut bn = BatchNorm::new(&Init::new(0), c);
    bn.weight.value = gamma.values();
    bn.bias.value = beta.values();
    bn.running_mean.value.clone_from(&rm.value);
    bn.running_var.value.clone_from(&rv.value);
    (bn.eps, bn.momentum) = (eps, momentum);
    let y = bn.forward(&Tensor::new(vec![n, c, h, w], x.values()), train);
    rm.value.clone_from(&bn.running_mean.value);
    rv.value.clone_from(&bn.running_var.value);
    x.g.custom(&[x, gamma, beta], n, len, y.data, move |dy, dx| {
        let d = bn.backward(&Tensor::new(vec![n, c, h, w], dy.to_vec()));
        dx[0].iter_mut().zip(&d.data).for_each(|(a, b)| *a += b);
        dx[1].iter_mut().zip(&bn.weight.grad).for_each(|(a, b)| *a += b);
        dx[2].iter_mut().zip(&bn.bias.grad).for_each(|(a, b)| *a += b);
    })
}

/// Mean over each image's positions: `[N, C·S]` with `S` positions per channel to `[N, C]`.
pub fn global_avg_pool(x: &Var, channels: usize) -> Var {
    let (n, len) = x.dims();
    if channels == 0 || len % channels != 0 {
        fail(format!(
            "global_avg_pool: rows of {len} values do not split into {channels} channels"
        ));
    }
    x.reshape(n * channels, len / channels).mean_rows().reshape(n, channels)
}

macro_rules! bin_ops {
    ($($Tr:ident $m:ident $f:ident),*) => {$(
        impl $Tr<&Var> for &Var { type Output = Var; fn $m(self, o: &Var) -> Var { Var::$f(self, o) } }
        impl $Tr<Var> for Var { type Output = Var; fn $m(self, o: Var) -> Var { Var::$f(&self, &o) } }
        impl $Tr<&Var> for Var { type Output = Var; fn $m(self, o: &Var) -> Var { Var::$f(&self, o) } }
        impl $Tr<Var> for &Var { type Output = Var; fn $m(self, o: Var) -> Var { Var::$f(self, &o) } }
    )*};
}
bin_ops!(Add add add, Sub sub sub, Mul mul mul, Div div div);

macro_rules! scalar_ops {
    ($($T:ty),*) => {$(
        impl Mul<f32> for $T { type Output = Var; fn mul(self, s: f32) -> Var { self.scale(s) } }
        impl Div<f32> for $T { type Output = Var; fn div(self, s: f32) -> Var { self.scale(1.0 / s) } }
        impl Add<f32> for $T { type Output = Var; fn add(self, s: f32) -> Var { self.shift(s) } }
        impl Sub<f32> for $T { type Output = Var; fn sub(self, s: f32) -> Var { self.shift(-s) } }
        impl Neg for $T { type Output = Var; fn neg(self) -> Var { self.scale(-1.0) } }
    )*};
}
scalar_ops!(Var, &Var);

/// Fails unless `γ` and `β` of a norm over `x [r, c]` are `[1, c]`.
fn check_affine(op: &str, (r, c): (usize, usize), gamma: &Var, beta: &Var) {
    if gamma.dims() != (1, c) || beta.dims() != (1, c) {
        fail(format!(
            "{op}: x [{r}, {c}] needs γ and β of shape [1, {c}], got {:?} and {:?}",
            gamma.dims(),
            beta.dims()
        ));
    }
}

/// `c [m, n] (+)= A · B` on the kit's kernel (AVX-512 or AVX2), `A` [m, k] at strides `(rs, cs)`, `B`
/// row-major [k, n] of row stride `ldb`: in blocks of whole 12-row tiles over the threads, or
/// on one thread below 2²² multiply-adds (none of SimCLR's products, which have 2²⁴ and more).
fn par_gemm(
    (m, n, k): (usize, usize, usize),
    (a, rs, cs): (&[f32], usize, usize),
    (b, ldb): (&[f32], usize),
    c: &mut [f32],
    accumulate: bool,
) {
    use crate::kit::simd_gemm::{gemm, StridedA};
    use rayon::prelude::*;
    if m == 0 || n == 0 {
        return;
    }
    let threads = if m * n * k < 1 << 22 { 1 } else { rayon::current_num_threads().max(1) };
    let rows = m.div_ceil(threads).div_ceil(12).max(4) * 12;
    let run = |(i, ci): (usize, &mut [f32])| {
        let r = ci.len() / n;
        let view = StridedA { data: &a[i * rows * rs..], rs, cs };
        gemm(r, n, k, view, b, ldb, ci, n, accumulate);
    };
    if threads == 1 {
        run((0, &mut c[..m * n]));
    } else {
        c[..m * n].par_chunks_mut(rows * n).enumerate().for_each(run);
    }
}
