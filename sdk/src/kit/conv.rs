//! 2-d convolution (`Conv2d`), as an implicit matrix product (or im2col + matrix multiply).
//!
//! ```text
//! y[n, o, i, j] = b[o] + Σ_{c ∈ group(o)} Σ_{p<kh} Σ_{q<kw}
//!                        W[o, c − g₀, p, q] · x[n, c, s·i + p − pad, s·j + q − pad]
//! (x is 0 outside the image; g₀ is the first input channel of o's group)
//! OH = (H + 2·pad − kh) / s + 1,   OW = (W + 2·pad − kw) / s + 1
//! ```
//! # Shapes
//! x `[N, C, H, W]`, W `[O, C/groups, kh, kw]` (PyTorch layout), b `[O]`, y `[N, O, OH, OW]`.
//!
//! # How
//! On CPUs with AVX-512 or AVX2 + FMA, a 3 × 3, stride-1, padding-1 convolution of at least
//! 32 channels in and out takes Winograd's F(2×2, 3×3) for its forward and its input gradient
//! (16 products over the channels instead of 36 multiply-adds per 2 × 2 outputs; see
//! `kit/winograd.rs` in the source; F(4×4, 3×3) on planes 25 to 32 wide and on 7 × 7, 8 × 8,
//! 14 × 14, 16 × 16 and the like, `kit/winograd4.rs`). Its weight gradient takes
//! F(4×4) too on those planes, and F(2×2) where the planes' sides are even and at least 8,
//! on AMD Zen 4 and, from 64 channels, on other CPUs (elsewhere the implicit product below,
//! the faster there). The transforms are written once over `kit/lanes.rs` (16 lanes as one
//! AVX-512 register or two AVX2 ones) and give the same bits on both.
//!
//! Other convolutions of one group, on CPUs with AVX-512 or AVX2 + FMA, are an implicit
//! matrix product: each image is copied once into zero-padded phase planes, and the matrix
//! kernel reads the patch matrix's rows in place, at offsets into those planes (see `Shifted`
//! in the source). A stride-1 convolution that keeps its size, with few input channels and no input gradient (resnet's
//! stem, whose input is data), copies each input channel once per kernel column instead,
//! shifted by that column, so that the product's columns are the output's (`Columns`). Elsewhere (and
//! for grouped convolutions, or small planes where the implicit product's wrap columns would
//! cost more than the copies), for a chunk of `nb` images and one group, im2col gathers the
//! patches into
//! `cols [K = C/groups·kh·kw, nb·OH·OW]`, and then
//! ```text
//! forward:  Y_g  = W_g [O/groups, K] · cols                 (scattered back to [nb, O, OH, OW])
//! backward: dW_g += dY_g [O/groups, nb·P] · colsᵀ,   dcols = W_gᵀ · dY_g,   dx += col2im(dcols)
//!           db   += Σ_{n, i, j} dy
//! ```
//! Chunks run in parallel under rayon, each with a single-threaded gemm; when there are too few
//! chunks to keep the threads busy the gemm itself runs on rayon. Backward recomputes `cols`
//! from the saved input instead of keeping them (they are `kh·kw` times the input's size).
//! Initialised as PyTorch's `nn.Conv2d`: kaiming-uniform with fan_in = C/groups·kh·kw.

use super::ops::Mat;
use super::winograd::resize;
use super::{Init, Layer, Module, Param, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// Stride, padding, groups and bias of a [`Conv2d`]; the default is PyTorch's (1, 0, 1, bias).
#[derive(Clone, Copy, Debug)]
pub struct Conv2dConfig {
    /// Step between output positions, both axes.
    pub stride: usize,
    /// Zero padding on each side, both axes.
    pub padding: usize,
    /// Channel groups: input and output channels split into this many independent convolutions.
    pub groups: usize,
    /// With a bias.
    pub bias: bool,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Conv2dConfig { stride: 1, padding: 0, groups: 1, bias: true }
    }
}

/// A 2-d convolution layer.
pub struct Conv2d {
    /// `[O, C/groups, kh, kw]`.
    pub weight: Param,
    /// `[O]`.
    pub bias: Option<Param>,
    /// Stride, padding, groups.
    pub cfg: Conv2dConfig,
    /// Also compute, in a training forward, each output plane's [`plane_sums`] while the
    /// chunk is still in cache (a batch norm after the convolution then needs no pass of its
    /// own over the output for its statistics); read them with [`Conv2d::take_plane_sums`].
    pub want_plane_sums: bool,
    /// Compute the input's gradient in the backward (true unless set otherwise). A first layer
    /// whose input is data sets it false: its backward then computes the weight gradient only
    /// and returns zeros of the input's shape (for resnet's stem, one input channel, that
    /// product was more than half of the layer's backward).
    pub input_grad: bool,
    input: Option<Arc<Tensor>>,
    sums: Vec<(f32, f32)>,
    /// The last training forward's phase planes ([`Shifted`]), which its backward reads again,
    /// where [`Shifted::keeps_planes`] says to keep them; the buffer is kept across steps.
    planes: Vec<f32>,
    /// A buffer handed over for the next input gradient ([`Conv2d::recycle_input_grad`]).
    dx_buf: Vec<f32>,
}

/// (Σ x, Σ x·(y − μ)) of two equal-length slices in f32, in two independent sets of 16 lanes
/// (so that the adds do not wait on each other: one chain of 8 lanes made these sums 5 % of a
/// resnet step), then one more set of 16 and the rest one by one; with `y = x` and `μ = 0`, a
/// plane's sum and sum of squares, as a batch norm's statistics want them.
#[inline]
pub fn dot_sums(x: &[f32], y: &[f32], mu: f32) -> (f32, f32) {
    const L: usize = 16;
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let (mut a0, mut b0, mut a1, mut b1) = ([0f32; L], [0f32; L], [0f32; L], [0f32; L]);
    let (xc, yc) = (x.chunks_exact(2 * L), y.chunks_exact(2 * L));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (u, v) in xc.zip(yc) {
        for i in 0..L {
            a0[i] += u[i];
            b0[i] += u[i] * (v[i] - mu);
            a1[i] += u[L + i];
            b1[i] += u[L + i] * (v[L + i] - mu);
        }
    }
    let split = if xr.len() >= L { L } else { 0 };
    for i in 0..split {
        a0[i] += xr[i];
        b0[i] += xr[i] * (yr[i] - mu);
    }
    let (mut s, mut t) = (0f32, 0f32);
    for i in 0..L {
        s += a0[i] + a1[i];
        t += b0[i] + b1[i];
    }
    for (u, v) in xr[split..].iter().zip(&yr[split..]) {
        s += u;
        t += u * (v - mu);
    }
    (s, t)
}

/// (Σ x, Σ x²) of one plane: [`dot_sums`]`(p, p, 0)`.
#[inline]
pub fn plane_sums(p: &[f32]) -> (f32, f32) {
    dot_sums(p, p, 0.0)
}

/// Sizes of one convolution call.
#[derive(Clone, Copy, Debug)]
struct Geom {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    s: usize,
    pad: usize,
    groups: usize,
}

impl Geom {
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    fn og(&self) -> usize {
        self.o / self.groups
    }
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.o * self.p()
    }
}

/// Columns of one gemm we aim for per chunk of images (enough to amortise packing, small
/// enough for the chunk's `cols` to stay near the caches).
const CHUNK_COLS: usize = 1024;

/// Tasks of a convolution's backward: its chunks of images in this many runs of consecutive
/// chunks (or fewer), each run with one weight gradient.
const TASKS: usize = 64;

impl Conv2d {
    /// A square `kernel x kernel` convolution `in_ch -> out_ch`, parameters `<prefix>.weight`
    /// and `<prefix>.bias`.
    pub fn new(
        init: &Init,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        cfg: Conv2dConfig,
    ) -> Conv2d {
        Conv2d::rect(init, in_ch, out_ch, kernel, kernel, cfg)
    }

    /// A `kh x kw` convolution.
    pub fn rect(
        init: &Init,
        in_ch: usize,
        out_ch: usize,
        kh: usize,
        kw: usize,
        cfg: Conv2dConfig,
    ) -> Conv2d {
        let g = cfg.groups;
        assert!(
            g >= 1 && in_ch.is_multiple_of(g) && out_ch.is_multiple_of(g),
            "conv2d: {in_ch} -> {out_ch} channels do not split into {g} groups"
        );
        assert!(
            cfg.stride >= 1 && kh >= 1 && kw >= 1,
            "conv2d: kernel and stride must be at least 1"
        );
        let fan_in = in_ch / g * kh * kw;
        let weight = init.kaiming_uniform("weight", vec![out_ch, in_ch / g, kh, kw], fan_in);
        let bias = cfg.bias.then(|| {
            let mut b = init.kaiming_uniform("bias", vec![out_ch], fan_in);
            b.role = crate::abi::ParamRole::NoDecay;
            b
        });
        Conv2d {
            weight,
            bias,
            cfg,
            want_plane_sums: false,
            input_grad: true,
            input: None,
            sums: Vec::new(),
            planes: Vec::new(),
            dx_buf: Vec::new(),
        }
    }

    /// Output `[O, OH, OW]` for an input `[C, H, W]`, or an error if it does not fit.
    pub fn out_shape(&self, c: usize, h: usize, w: usize) -> anyhow::Result<[usize; 3]> {
        let s = &self.weight.shape;
        let (o, cg, kh, kw) = (s[0], s[1], s[2], s[3]);
        anyhow::ensure!(
            c == cg * self.cfg.groups,
            "conv2d expects {} input channels, got {c}",
            cg * self.cfg.groups
        );
        let (hp, wp) = (h + 2 * self.cfg.padding, w + 2 * self.cfg.padding);
        anyhow::ensure!(
            hp >= kh && wp >= kw,
            "conv2d: a {kh}x{kw} kernel does not fit a {h}x{w} input padded by {}",
            self.cfg.padding
        );
        Ok([o, (hp - kh) / self.cfg.stride + 1, (wp - kw) / self.cfg.stride + 1])
    }

    fn geom(&self, shape: &[usize]) -> Geom {
        let [_, c, h, w] = shape[..] else { panic!("conv2d expects [N, C, H, W], got {shape:?}") };
        let [o, oh, ow] = self.out_shape(c, h, w).unwrap_or_else(|e| panic!("{e:#}"));
        let s = &self.weight.shape;
        Geom {
            c,
            h,
            w,
            o,
            kh: s[2],
            kw: s[3],
            oh,
            ow,
            s: self.cfg.stride,
            pad: self.cfg.padding,
            groups: self.cfg.groups,
        }
    }
}

/// Images per chunk and whether gemm should itself go parallel (too few chunks for the threads).
fn chunking(n: usize, g: &Geom) -> (usize, gemm::Parallelism) {
    let threads = rayon::current_num_threads();
    let nb = (CHUNK_COLS / g.p().max(1)).clamp(1, n.div_ceil(2 * threads).max(1));
    let chunks = n.div_ceil(nb);
    let flops = g.og() * g.k() * nb * g.p();
    let par = if chunks >= 2 * threads || threads == 1 || flops < (1 << 20) {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    };
    (nb, par)
}

/// `c = a · b` or `c += a · b`, `c` row-major; as `ops::matmul` with the parallelism chosen by
/// the caller (chunks already run in parallel). Single-threaded products with a row-major `b`
/// go to the kernel of [`super::simd_gemm`] where the CPU has AVX-512 or AVX2 + FMA.
fn gemm_into(a: Mat, b: Mat, c: &mut [f32], accumulate: bool, par: gemm::Parallelism) {
    let Some((m, n, k)) = super::ops::product_dims(&a, &b, c, accumulate, "conv gemm") else {
        return;
    };
    if !b.t && matches!(par, gemm::Parallelism::None) && super::simd_gemm::available() {
        let (a_rs, a_cs) = a.strides();
        let view =
            super::simd_gemm::StridedA { data: a.data, rs: a_rs as usize, cs: a_cs as usize };
        super::simd_gemm::gemm(m, n, k, view, b.data, n, c, n, accumulate);
        return;
    }
    super::ops::gemm_f32(a, b, c, accumulate, (m, n, k), par);
}

/// The valid output range `lo..hi` along one axis for kernel offset `k`:
/// `0 <= o·s + k − pad < size`.
fn valid_range(k: usize, pad: usize, s: usize, size: usize, out: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(k).div_ceil(s).min(out);
    let hi = (size + pad).saturating_sub(k).div_ceil(s).min(out).max(lo);
    (lo, hi)
}

/// Gathers group `grp`'s patches of the `nb` images in `x` into `cols [K, nb·P]`.
fn im2col(x: &[f32], nb: usize, grp: usize, g: &Geom, cols: &mut [f32]) {
    let (p, width) = (g.p(), nb * g.p());
    let plane = g.h * g.w;
    for ci in 0..g.cg() {
        let cin = grp * g.cg() + ci;
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (ci * g.kh + ki) * g.kw + kj;
                let dst = &mut cols[row * width..(row + 1) * width];
                let (xlo, xhi) = valid_range(kj, g.pad, g.s, g.w, g.ow);
                let (ylo, yhi) = valid_range(ki, g.pad, g.s, g.h, g.oh);
                for i in 0..nb {
                    let src = &x[(i * g.c + cin) * plane..][..plane];
                    let d = &mut dst[i * p..(i + 1) * p];
                    if same_size(g) {
                        // one flat copy of the shifted plane, then zero the wrapped edge columns
                        d[..ylo * g.ow].fill(0.0);
                        d[yhi * g.ow..].fill(0.0);
                        if let Some((t0, t1, s0)) = flat_span(g, ki, kj, (xlo, xhi), (ylo, yhi)) {
                            d[t0..t1].copy_from_slice(&src[s0..s0 + t1 - t0]);
                            zero_edges(d, g.ow, (xlo, xhi), (ylo, yhi));
                        } else {
                            d[ylo * g.ow..yhi * g.ow].fill(0.0);
                        }
                        continue;
                    }
                    // rows outside ylo..yhi read only padding
                    d[..ylo * g.ow].fill(0.0);
                    d[yhi * g.ow..].fill(0.0);
                    let n = xhi - xlo;
                    for (oy, drow) in d.chunks_exact_mut(g.ow).enumerate().take(yhi).skip(ylo) {
                        zero_short(&mut drow[..xlo]);
                        zero_short(&mut drow[xhi..]);
                        if n == 0 {
                            continue;
                        }
                        let iy = oy * g.s + ki - g.pad;
                        let x0 = iy * g.w + xlo * g.s + kj - g.pad;
                        let srow = &src[x0..x0 + (n - 1) * g.s + 1];
                        match g.s {
                            1 => drow[xlo..xhi].copy_from_slice(srow),
                            2 => {
                                // exact lengths, so that the loop has no bounds checks
                                let (d, src) = (&mut drow[xlo..xhi], &srow[..2 * n - 1]);
                                for (t, v) in d.iter_mut().enumerate() {
                                    *v = src[2 * t];
                                }
                            }
                            s => drow[xlo..xhi]
                                .iter_mut()
                                .enumerate()
                                .for_each(|(t, d)| *d = srow[t * s]),
                        }
                    }
                }
            }
        }
    }
}

/// Stride 1 with "same" padding: output and input planes have one shape, so a kernel offset
/// is one flat shift of the plane.
fn same_size(g: &Geom) -> bool {
    g.s == 1 && g.oh == g.h && g.ow == g.w
}

/// For [`same_size`]: the output span `t0..t1` covering the valid rows and columns, and the
/// input index `s0` of `t0`; None when nothing is valid.
fn flat_span(
    g: &Geom,
    ki: usize,
    kj: usize,
    (xlo, xhi): (usize, usize),
    (ylo, yhi): (usize, usize),
) -> Option<(usize, usize, usize)> {
    if xhi == xlo || yhi == ylo {
        return None;
    }
    let (t0, t1) = (ylo * g.ow + xlo, (yhi - 1) * g.ow + xhi);
    let s0 = ((ylo + ki) * g.w + xlo + kj) - (g.pad * g.w + g.pad);
    Some((t0, t1, s0))
}

/// Zeroes the columns outside `xlo..xhi` of rows `ylo..yhi` of a `[.., ow]` plane.
fn zero_edges(d: &mut [f32], ow: usize, (xlo, xhi): (usize, usize), (ylo, yhi): (usize, usize)) {
    let rows = d[ylo * ow..yhi * ow].chunks_exact_mut(ow);
    match (xlo, ow - xhi) {
        (0, 0) => {}
        // a 3×3 kernel's left or right column: one store a row
        (1, 0) => rows.for_each(|r| {
            if let Some(v) = r.first_mut() {
                *v = 0.0
            }
        }),
        (0, 1) => rows.for_each(|r| {
            if let Some(v) = r.last_mut() {
                *v = 0.0
            }
        }),
        _ => rows.for_each(|r| {
            zero_short(&mut r[..xlo]);
            zero_short(&mut r[xhi..]);
        }),
    }
}

/// Zeroes a slice that is usually one or two elements long (a 3×3 or 5×5 kernel's edge) with
/// plain stores: `fill` would call memset for each (perf had those calls at 3 % of a step).
#[inline(always)]
fn zero_short(s: &mut [f32]) {
    match s {
        [] => {}
        [a] => *a = 0.0,
        [a, b] => (*a, *b) = (0.0, 0.0),
        s => s.fill(0.0),
    }
}

/// Adds `cols [K, nb·P]` back onto the images of `dx` (the adjoint of [`im2col`]); `cols` is
/// scratch and may be changed.
fn col2im(cols: &mut [f32], nb: usize, grp: usize, g: &Geom, dx: &mut [f32]) {
    let (p, width) = (g.p(), nb * g.p());
    let plane = g.h * g.w;
    for ci in 0..g.cg() {
        let cin = grp * g.cg() + ci;
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (ci * g.kh + ki) * g.kw + kj;
                let src = &mut cols[row * width..(row + 1) * width];
                let (xlo, xhi) = valid_range(kj, g.pad, g.s, g.w, g.ow);
                let (ylo, yhi) = valid_range(ki, g.pad, g.s, g.h, g.oh);
                for i in 0..nb {
                    let dst = &mut dx[(i * g.c + cin) * plane..][..plane];
                    let s = &mut src[i * p..(i + 1) * p];
                    if same_size(g) {
                        // zero the wrapped edge columns, then one flat add of the shifted plane
                        if let Some((t0, t1, s0)) = flat_span(g, ki, kj, (xlo, xhi), (ylo, yhi)) {
                            zero_edges(s, g.ow, (xlo, xhi), (ylo, yhi));
                            for (a, b) in dst[s0..s0 + t1 - t0].iter_mut().zip(&s[t0..t1]) {
                                *a += b;
                            }
                        }
                        continue;
                    }
                    for oy in 0..g.oh {
                        let iy = (oy * g.s + ki) as isize - g.pad as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let srow = &s[oy * g.ow..(oy + 1) * g.ow];
                        let drow = &mut dst[iy as usize * g.w..][..g.w];
                        if xhi == xlo {
                            continue;
                        }
                        let x0 = xlo * g.s + kj - g.pad;
                        if g.s == 1 {
                            for (a, b) in drow[x0..x0 + xhi - xlo].iter_mut().zip(&srow[xlo..xhi]) {
                                *a += b;
                            }
                        } else {
                            for (a, b) in drow[x0..].iter_mut().step_by(g.s).zip(&srow[xlo..xhi]) {
                                *a += b;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Accumulates one chunk's weight gradient `dY_g · colsᵀ` into `dwg`: as `[og, k]` with the
/// caller's gemm, or (`transposed`, the kit's kernel) as `dW_gᵀ [k, og] += cols · dY_gᵀ`,
/// which needs only a transposed copy of the (small) `dY_g` and no packing of the (large)
/// `cols`.
fn acc_dw(
    transposed: bool,
    cols: &[f32],
    k: usize,
    dyg: Mat,
    dyt: &mut Vec<f32>,
    dwg: &mut [f32],
    par: gemm::Parallelism,
) {
    let (og, width) = (dyg.rows, dyg.cols);
    if !transposed {
        gemm_into(dyg, Mat::new(cols, k, width).t(), dwg, true, par);
        return;
    }
    let t = resize(dyt, width * og);
    super::simd_gemm::transpose(og, width, dyg.data, width, t, og);
    let a = super::simd_gemm::StridedA { data: cols, rs: width, cs: 1 };
    super::simd_gemm::gemm(k, og, width, a, t, og, dwg, og, true);
}

/// `parts[0] + parts[1] + …`, element by element in that order (so the same parts give the same
/// bits), in parallel over stretches of the elements.
fn sum_in_order(parts: Vec<Vec<f32>>) -> Vec<f32> {
    let mut parts = parts.into_iter();
    let mut acc = parts.next().unwrap_or_default();
    let rest: Vec<Vec<f32>> = parts.collect();
    const STRETCH: usize = 1 << 12;
    acc.par_chunks_mut(STRETCH).enumerate().for_each(|(j, a)| {
        for p in &rest {
            a.iter_mut().zip(&p[j * STRETCH..]).for_each(|(u, v)| *u += v);
        }
    });
    acc
}

/// Is `cols` just the input itself (1x1 kernel, stride 1, no padding, one image, one group)?
fn is_identity(g: &Geom, nb: usize) -> bool {
    g.kh == 1 && g.kw == 1 && g.s == 1 && g.pad == 0 && nb == 1 && g.groups == 1
}

/// The implicit matrix product of a convolution (one group), where im2col's copies were a
/// quarter of a resnet step.
///
/// Each image's planes are copied once into zero-padded phase planes with rows of `wp`: for stride
/// `s`, phase (a, b) holds the input's rows `s·r + a` and columns `s·q + b`, so that kernel tap
/// (ki, kj) reads one phase plane at a fixed shift for every output position. Output (y, x) is
/// computed at `t = y·wp + x`, and patch row (c, ki, kj) is phase plane (c, a, b) read from
/// `shift + t`: the kernel reads B's rows in place through a table of offsets. The wrap columns
/// at the end of each output row (x ≥ OW) are computed and dropped: the product runs over
/// `span = (OH − 1)·wp + OW` columns instead of `OH·OW`. Two rows share their zero columns
/// (see [`Axis::width`]), so a 3 × 3 convolution has one wrap column per row: 3.4 % more
/// products at 28 × 28, 6.6 % at 14 × 14, 12 % at 7 × 7 (with a zero column on each side of
/// a row it was 7, 13 and 24 %).
/// The backward is the same product again: `dX`'s phase (a, b) is the convolution of a padded
/// `dY` with the kernel's taps of that phase, flipped and transposed, and `dWᵀ += patchesᵀ ·
/// dYᵀ` reads the patches in place as A's rows, with `dY` laid on the output grid (zeros under
/// the wrap columns).
#[derive(Clone, Copy, Debug)]
struct Shifted {
    s: usize,
    y: Axis,
    x: Axis,
    /// Row width of every plane (forward and backward) and the forward's phase-plane size.
    wp: usize,
    pp: usize,
    span: usize,
    /// Size of `dX`'s padded `dY` planes.
    pq: usize,
}

/// One axis of a [`Shifted`] convolution: tap `ki` reads phase `a` at shift `d`, input index
/// `s·(o + d) + a` for output `o`; `d` runs over `dmin..=dmax`.
#[derive(Clone, Copy, Debug)]
struct Axis {
    s: usize,
    pad: usize,
    size: usize,
    out: usize,
    dmin: isize,
    dmax: isize,
}

impl Axis {
    fn new(s: usize, pad: usize, k: usize, size: usize, out: usize) -> Axis {
        let (s_, pad_) = (s as isize, pad as isize);
        Axis {
            s,
            pad,
            size,
            out,
            dmin: (-pad_).div_euclid(s_),
            dmax: (k as isize - 1 - pad_).div_euclid(s_),
        }
    }
    fn tap(&self, ki: usize) -> (usize, isize) {
        let v = ki as isize - self.pad as isize;
        (v.rem_euclid(self.s as isize) as usize, v.div_euclid(self.s as isize))
    }
    /// Whether one of a kernel's `k` taps along this axis reads phase `a`.
    fn reads(&self, k: usize, a: usize) -> bool {
        (0..k).any(|ki| self.tap(ki).0 == a)
    }
    /// The forward grid: `out + dmax − dmin` (rows `dmin..out + dmax` of a phase).
    fn grid(&self) -> usize {
        self.out + (self.dmax - self.dmin) as usize
    }
    /// How many input positions phase `a` has.
    fn phase_len(&self, a: usize) -> usize {
        self.size.saturating_sub(a).div_ceil(self.s)
    }
    /// `dX`'s padded `dY`: `before` positions of zeros, then `dY`, on a grid of `dgrid()`.
    fn before(&self) -> usize {
        self.dmax as usize
    }
    fn dgrid(&self) -> usize {
        self.out.max(self.phase_len(0)) + (self.dmax - self.dmin) as usize
    }
    /// The row width of the planes along x, forward and backward alike: the zero columns
    /// between two rows are the right padding of one and the left padding of the next, so a
    /// read past a row's end lands in the next row's leading zeros. The forward's data sit at
    /// columns `−dmin..q − dmin` (q = the widest phase) and its reads reach column `out − 1 +
    /// dmax − dmin`; `dY`'s sit at `dmax..out + dmax` and `dX`'s reads reach `q − 1 + dmax −
    /// dmin`. Both need `max(q − dmin, out + dmax)`: 29 for a 3 × 3 convolution of 28 × 28
    /// planes, where padding each row on both sides took 30.
    fn width(&self) -> usize {
        (self.phase_len(0) as isize - self.dmin).max(self.out as isize + self.dmax) as usize
    }
}

/// The largest `span / (OH·OW)` for which [`Shifted`] is used. The wrap columns cost more
/// than im2col's copies on small planes with many channels: with 1.5 (and a zero column on
/// each side of a row), resnet18-cifar's 8 × 8 and 4 × 4 layers (256 and 512 channels, 22 % and
/// 38 % more products) made its step 0.91× PyTorch's instead of 1.1×. With the rows' shared
/// zero columns, 3 × 3 layers of 7 × 7 and 8 × 8 planes add 12 % and 11 % and take this path;
/// 4 × 4 (19 %) stays with im2col.
const SHIFTED_MAX_WASTE: f32 = 1.15;

impl Shifted {
    fn new(g: &Geom) -> Option<Shifted> {
        let fits = g.groups == 1
            && g.pad < g.kh.min(g.kw)
            && !(g.kh * g.kw == 1 && g.s == 1)
            && super::simd_gemm::available();
        #[cfg(test)]
        let fits = fits && !SHIFTED_DISABLED.load(std::sync::atomic::Ordering::SeqCst);
        let y = Axis::new(g.s, g.pad, g.kh, g.h, g.oh);
        let x = Axis::new(g.s, g.pad, g.kw, g.w, g.ow);
        let wp = x.width();
        let span = (g.oh - 1) * wp + g.ow;
        // the last row's reads may run past its end into one more row's leading zeros
        let reach = |rows: usize, cols: usize| (rows * wp).max((rows - 1) * wp + cols);
        let xr = (x.dmax - x.dmin) as usize;
        let pp = reach(y.grid(), g.ow + xr);
        let pq = reach(y.dgrid(), x.phase_len(0) + xr);
        let sh = Shifted { s: g.s, y, x, wp, pp, span, pq };
        #[allow(unused_mut)]
        let mut limit = SHIFTED_MAX_WASTE;
        #[cfg(test)]
        if SHIFTED_ALWAYS.load(std::sync::atomic::Ordering::SeqCst) {
            limit = f32::INFINITY;
        }
        (fits && span as f32 <= limit * g.p() as f32).then_some(sh)
    }

    /// An image's phase planes: `[C][s·s][hp × wp]`.
    fn image_len(&self, c: usize) -> usize {
        c * self.s * self.s * self.pp
    }

    /// Offsets of patch rows (c, ki, kj) in an image's phase planes.
    fn offsets(&self, g: &Geom) -> Vec<usize> {
        let mut v = Vec::with_capacity(g.k());
        for c in 0..g.c {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let ((a, di), (b, dj)) = (self.y.tap(ki), self.x.tap(kj));
                    let shift = (di - self.y.dmin) as usize * self.wp + (dj - self.x.dmin) as usize;
                    v.push((c * self.s * self.s + a * self.s + b) * self.pp + shift);
                }
            }
        }
        v
    }

    /// Whether a training forward keeps its phase planes for the backward's weight gradient:
    /// where the values of the planes that the taps read are fewer than the input's (a 1 × 1
    /// kernel of stride 2 reads one phase of four). Otherwise the backward makes them again
    /// from the input, which it reads no more of than it would read of kept planes, and the
    /// forward writes them into a per-thread scratch that stays in cache instead of to
    /// memory (one thread, 256 images of 32 × 28 × 28 → 64, 3 × 3 stride 2: forward 26.3–27.6
    /// → 24.3–24.7 ms, backward level; the 1 × 1 shortcut's backward took 8.9 ms with its
    /// plane kept, 11.0–11.8 without).
    fn keeps_planes(&self, g: &Geom) -> bool {
        let read = |axis: &Axis, k: usize| (0..self.s).filter(|&a| axis.reads(k, a)).count();
        read(&self.y, g.kh) * read(&self.x, g.kw) * self.pp < g.h * g.w
    }

    /// Phases `(a, b)` that hold input positions (`s²` unless a side is shorter than `s`).
    fn phases_with_positions(&self) -> usize {
        let count = |axis: &Axis| (0..self.s).filter(|&a| axis.phase_len(a) > 0).count();
        count(&self.y) * count(&self.x)
    }

    /// An image's input planes `x` into its phase planes. Phases that no tap reads are left
    /// as they were: a 1 × 1 convolution of stride 2 reads one phase of four.
    fn pad_input(&self, g: &Geom, x: &[f32], dst: &mut [f32]) {
        let (s, origin) = (self.s, (self.y.dmin, self.x.dmin));
        // stride 2 with both column phases read (a 3 × 3 kernel): each input row is split into
        // its even and odd columns at once
        let pairs = s == 2 && self.x.reads(g.kw, 0) && self.x.reads(g.kw, 1) && self.x.dmin <= 0;
        let mut planes = dst.chunks_exact_mut(self.pp);
        for src in x.chunks_exact(g.h * g.w).take(g.c) {
            for a in 0..s {
                if pairs {
                    let d0 = planes.next().expect("conv2d: phase planes too short");
                    let d1 = planes.next().expect("conv2d: phase planes too short");
                    if self.y.reads(g.kh, a) {
                        fill_pair(src, (g.h, g.w), a, origin, self.wp, (d0, d1));
                    }
                    continue;
                }
                for b in 0..s {
                    let d = planes.next().expect("conv2d: phase planes too short");
                    if self.y.reads(g.kh, a) && self.x.reads(g.kw, b) {
                        fill_grid(src, (g.h, g.w), (s, a, b), origin, self.wp, d);
                    }
                }
            }
        }
    }

    /// `dX` phase by phase: (a, b, R, Q, the kernel's taps of the phase as `[C, O·taps]`,
    /// offsets of (o, tap) in an image's padded `dY` planes).
    #[allow(clippy::type_complexity)]
    fn dx_phases(
        &self,
        g: &Geom,
        w: &[f32],
    ) -> Vec<(usize, usize, usize, usize, Vec<f32>, Vec<usize>)> {
        let (t, l) = (self.y.before() as isize, self.x.before() as isize);
        let mut out = Vec::new();
        for a in 0..self.s {
            for b in 0..self.s {
                let taps: Vec<(usize, usize, isize, isize)> = (0..g.kh)
                    .flat_map(|ki| (0..g.kw).map(move |kj| (ki, kj)))
                    .filter_map(|(ki, kj)| {
                        let ((a_, di), (b_, dj)) = (self.y.tap(ki), self.x.tap(kj));
                        (a_ == a && b_ == b).then_some((ki, kj, di, dj))
                    })
                    .collect();
                let (r, q) = (self.y.phase_len(a), self.x.phase_len(b));
                if taps.is_empty() || r == 0 || q == 0 {
                    continue;
                }
                let kt = g.o * taps.len();
                let mut wab = vec![0.0f32; g.c * kt];
                let mut offs = Vec::with_capacity(kt);
                for o in 0..g.o {
                    for (n, &(ki, kj, di, dj)) in taps.iter().enumerate() {
                        for c in 0..g.c {
                            wab[c * kt + o * taps.len() + n] =
                                w[((o * g.c + c) * g.kh + ki) * g.kw + kj];
                        }
                        let shift = (t - di) as usize * self.wp + (l - dj) as usize;
                        offs.push(o * self.pq + shift);
                    }
                }
                out.push((a, b, r, q, wab, offs));
            }
        }
        out
    }
}

/// The implicit product of a stride-1 convolution that keeps its output's size (a square,
/// odd kernel, padding half of it) with few input channels and no input gradient: resnet's
/// stem, whose input is data (one channel, or three).
///
/// [`Shifted`] computes such a layer on a grid one column wider than the output and copies
/// the grid's rows out; with 32 outputs of one input channel that copy was a fifth of the
/// stem's forward (`memmove` and `scatter_grid`, one thread), and the backward laid `dY` on
/// the grid again. Here each input channel is copied `kw` times instead, shifted by one
/// column each time, with the columns that fall outside the row zeroed and `pad` zero rows
/// above and below: copy
/// (c, kj) holds `x[c, r − pad, j + kj − pad]` at `r·W + j`, so that tap (c, ki, kj) reads copy
/// (c, kj) from `ki·W + t` for output `t = y·W + x`. The product's columns are the output's,
/// and it writes the output directly. The copies are `kw` times the input, so the path is
/// taken where they are fewer values than the output (`C·kw < O`). The forward gives
/// [`Shifted`]'s bits (and im2col's). The weight gradient reads the same copies against a
/// transposed copy of `dY`, as [`Shifted`]'s does on its grid, over the same positions without
/// the grid's zeros; the kernel sums them in blocks of 256 positions, which start elsewhere on
/// the grid, so its rounding differs from [`Shifted`]'s.
#[derive(Clone, Copy, Debug)]
struct Columns {
    /// One copy's size: `(H + 2·pad) × W`.
    plane: usize,
}

impl Columns {
    fn new(g: &Geom, input_grad: bool) -> Option<Columns> {
        let fits = g.groups == 1
            && g.s == 1
            && !input_grad
            && g.kh == g.kw
            && g.kh % 2 == 1
            && g.kh > 1
            && g.pad == g.kh / 2
            && g.c * g.kw < g.o
            && super::simd_gemm::available();
        #[cfg(test)]
        let fits = fits && !SHIFTED_DISABLED.load(std::sync::atomic::Ordering::SeqCst);
        fits.then_some(Columns { plane: (g.h + 2 * g.pad) * g.w })
    }

    /// An image's copies: `[C][kw][(H + 2·pad) × W]`.
    fn image_len(&self, g: &Geom) -> usize {
        g.c * g.kw * self.plane
    }

    /// Offsets of patch rows (c, ki, kj) in an image's copies.
    fn offsets(&self, g: &Geom) -> Vec<usize> {
        let mut v = Vec::with_capacity(g.k());
        for c in 0..g.c {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    v.push((c * g.kw + kj) * self.plane + ki * g.w);
                }
            }
        }
        v
    }

    /// An image's input planes `x` into its copies (every value of `dst` written): copy
    /// (c, kj) is [`fill_grid`] of plane c at stride 1 from `(−pad, kj − pad)`, `W` wide.
    fn pad_input(&self, g: &Geom, x: &[f32], dst: &mut [f32]) {
        let pad = g.pad as isize;
        let mut copies = dst.chunks_exact_mut(self.plane);
        for src in x.chunks_exact(g.h * g.w).take(g.c) {
            for kj in 0..g.kw {
                let d = copies.next().expect("conv2d: column copies too short");
                fill_grid(src, (g.h, g.w), (1, 0, 0), (-pad, kj as isize - pad), g.w, d);
            }
        }
    }
}

/// `dst[i, j] = src[s·(i + r0) + a, s·(j + q0) + b]` for a plane `dst` of `cols` columns, 0
/// where that is outside `src` (`h × w`).
fn fill_grid(
    src: &[f32],
    (h, w): (usize, usize),
    (s, a, b): (usize, usize, usize),
    (r0, q0): (isize, isize),
    cols: usize,
    dst: &mut [f32],
) {
    let rows = dst.len() / cols;
    let valid = |o: isize, n: usize, len: usize| -> (usize, usize) {
        let hi = (n as isize - o).clamp(0, len as isize) as usize;
        (((-o).max(0) as usize).min(hi), hi)
    };
    let (ilo, ihi) = valid(r0, h.saturating_sub(a).div_ceil(s), rows);
    let (jlo, jhi) = valid(q0, w.saturating_sub(b).div_ceil(s), cols);
    dst[..ilo * cols].fill(0.0);
    dst[ihi * cols..].fill(0.0);
    let n = jhi - jlo;
    for i in ilo..ihi {
        let row = &mut dst[i * cols..(i + 1) * cols];
        zero_short(&mut row[..jlo]);
        zero_short(&mut row[jhi..]);
        if n == 0 {
            continue;
        }
        let sy = (s as isize * (i as isize + r0)) as usize + a;
        let x0 = sy * w + (s as isize * (jlo as isize + q0)) as usize + b;
        copy_strided(&mut row[jlo..jhi], &src[x0..x0 + (n - 1) * s + 1], s);
    }
}

/// [`fill_grid`] of phases `(a, 0)` and `(a, 1)` of stride 2 at once, into `d0` and `d1`
/// (`q0 ≤ 0`): each input row read once and split into its even and odd columns, 16 of each
/// per step on AVX-512 (a loop of one value at a time was a fifth of a stride-2 layer's
/// forward).
fn fill_pair(
    src: &[f32],
    (h, w): (usize, usize),
    a: usize,
    (r0, q0): (isize, isize),
    cols: usize,
    (d0, d1): (&mut [f32], &mut [f32]),
) {
    assert!(q0 <= 0 && d0.len() == d1.len(), "conv2d: phase planes of stride 2");
    let rows = d0.len() / cols;
    let hi = (h.saturating_sub(a).div_ceil(2) as isize - r0).clamp(0, rows as isize) as usize;
    let lo = ((-r0).max(0) as usize).min(hi);
    let jlo = (-q0) as usize;
    let (n0, n1) = (w.div_ceil(2).min(cols - jlo), (w / 2).min(cols - jlo));
    for d in [&mut *d0, &mut *d1] {
        d[..lo * cols].fill(0.0);
        d[hi * cols..].fill(0.0);
    }
    for i in lo..hi {
        let sy = (2 * (i as isize + r0)) as usize + a;
        let row = &src[sy * w..(sy + 1) * w];
        let (e, o) = (&mut d0[i * cols..(i + 1) * cols], &mut d1[i * cols..(i + 1) * cols]);
        zero_short(&mut e[..jlo]);
        zero_short(&mut o[..jlo]);
        zero_short(&mut e[jlo + n0..]);
        zero_short(&mut o[jlo + n1..]);
        deinterleave(row, &mut e[jlo..jlo + n0], &mut o[jlo..jlo + n1]);
    }
}

#[cfg(target_arch = "x86_64")]
super::lanes::on_lanes! {
    /// [`deinterleave`] 16 values of each at a time, for `odd` no longer than `even`.
    fn deinterleave_wide = deinterleave_v(src: &[f32], even: &mut [f32], odd: &mut [f32])
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn deinterleave_v<V: super::lanes::Lanes>(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    use super::winograd::first;
    let mut k = 0;
    while k < even.len() {
        let rest = src.len() - 2 * k;
        let p = src.as_ptr().add(2 * k);
        let lo = V::load(first(rest), p);
        let hi = V::load(first(rest.saturating_sub(16)), p.wrapping_add(16));
        let (e, o) = V::even_odd(lo, hi);
        e.store(even.as_mut_ptr().add(k), first(even.len() - k));
        if k < odd.len() {
            o.store(odd.as_mut_ptr().add(k), first(odd.len() - k));
        }
        k += 16;
    }
}

/// `even[k] = src[2k]`, `odd[k] = src[2k + 1]` for every `k` of each (within `src`).
fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    assert!(2 * even.len() <= src.len() + 1 && 2 * odd.len() <= src.len());
    #[cfg(target_arch = "x86_64")]
    if super::simd_gemm::available() && odd.len() <= even.len() {
        // SAFETY: AVX-512 or AVX2 is present; the loads are masked to `src`'s length, the
        // stores to `even`'s and `odd`'s, and `odd` is no longer than `even` here (asserted
        // above: both fit `src`, `even` taking the odd one out)
        unsafe { deinterleave_wide(src, even, odd) };
        return;
    }
    even.iter_mut().zip(src.iter().step_by(2)).for_each(|(d, s)| *d = *s);
    odd.iter_mut().zip(src.iter().skip(1).step_by(2)).for_each(|(d, s)| *d = *s);
}

/// `dst[t] = src[stride · t]` for every `t` of `dst` (a `memcpy` at stride 1: an AVX-512 loop
/// of loads and stores in its place was 21–23 % of a resnet step's samples on an AMD EPYC,
/// against 7 % for memmove).
fn copy_strided(dst: &mut [f32], src: &[f32], stride: usize) {
    match stride {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        _ => dst.iter_mut().zip(src.iter().step_by(stride)).for_each(|(d, s)| *d = *s),
    }
}

/// `dst[c][s·r + a, s·q + b] = t[c·span + r·cols + q]` for `r < R`, `q < Q` and each plane `c`
/// of `dst` (`h × w`): the rows of a product on a grid, wrap columns dropped.
#[allow(clippy::too_many_arguments)]
fn scatter_grid(
    t: &[f32],
    span: usize,
    cols: usize,
    (rr, qq): (usize, usize),
    (s, a, b): (usize, usize, usize),
    (h, w): (usize, usize),
    dst: &mut [f32],
) {
    for (c, plane) in dst.chunks_exact_mut(h * w).enumerate() {
        let src = &t[c * span..];
        for r in 0..rr {
            let (srow, at) = (&src[r * cols..r * cols + qq], (s * r + a) * w + b);
            match s {
                1 => plane[at..at + qq].copy_from_slice(srow),
                _ => plane[at..].iter_mut().step_by(s).zip(srow).for_each(|(u, v)| *u = *v),
            }
        }
    }
}

/// Tests turn [`Shifted`] off to compare it with the im2col path, and on whatever its waste.
#[cfg(test)]
static SHIFTED_DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
#[cfg(test)]
static SHIFTED_ALWAYS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Chunks the forward ran on [`Shifted`]'s path, so that tests can tell that they took it.
#[cfg(test)]
static SHIFTED_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Chunks the forward ran on [`Columns`]' path (which `SHIFTED_DISABLED` turns off too).
#[cfg(test)]
static COLUMNS_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Per-thread scratch buffers.
#[derive(Default)]
struct Scratch {
    cols: Vec<f32>,
    tmp: Vec<f32>,
    dyt: Vec<f32>,
    /// [`Shifted`]'s phase planes of the input (or [`Columns`]' copies) and `dX`'s padded `dY`.
    xpad: Vec<f32>,
    dypad: Vec<f32>,
    wino: super::winograd::Scratch,
}

thread_local! {
    /// Scratch kept per thread across calls: a fresh multi-megabyte buffer per chunk would cost
    /// an mmap and a page fault per 4 KiB every time.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch (or a fresh one if a nested call holds it: a thread
/// waiting in a parallel gemm may pick up another chunk).
fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// A vector for `len` values, and whether they are initialised: the buffer handed over by
/// [`Conv2d::recycle_input_grad`] if it has that length (stale values), else empty capacity;
/// handed out in chunks by [`out_chunks`] and [`ready`], and claimed by [`claim`]. A fresh output (or input gradient) is zeroed chunk by chunk by the
/// thread about to write the chunk, while it is in that thread's cache: zeroing the whole
/// vector first (in parallel, `par_extend`) was 5.6 % of a resnet-mini step's samples on a
/// 2-core Xeon, and the chunk's writes then read every line back from memory.
fn out_buffer(recycled: &mut Vec<f32>, len: usize) -> (Vec<f32>, bool) {
    let v = std::mem::take(recycled);
    if v.len() == len {
        (v, true)
    } else {
        (Vec::with_capacity(len), false)
    }
}

/// The first `len` values of `v`, initialised or not (`init`, as [`out_buffer`] said).
fn out_chunks(v: &mut Vec<f32>, len: usize, init: bool) -> &mut [MaybeUninit<f32>] {
    if init {
        let s = &mut v[..len];
        // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the values are initialised; the
        // only writes through the view are [`ready`]'s zeros
        unsafe { &mut *(s as *mut [f32] as *mut [MaybeUninit<f32>]) }
    } else {
        v.clear();
        v.reserve_exact(len);
        &mut v.spare_capacity_mut()[..len]
    }
}

/// Chunk `c` of [`out_chunks`], zeroed if `zero` (it must be where its values are not
/// initialised, or where the writer adds onto them).
fn ready(c: &mut [MaybeUninit<f32>], zero: bool) -> &mut [f32] {
    if zero {
        c.fill(MaybeUninit::new(0.0));
    }
    // SAFETY: every value of `c` is initialised: written just above, or (`zero` false) part of
    // a recycled vector's values
    unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `v` of `len` values, once [`ready`] has been called on chunks covering all of
/// [`out_chunks`]`(v, len, _)`.
///
/// # Safety
/// Every one of the first `len` values of `v` has been initialised.
unsafe fn claim(mut v: Vec<f32>, len: usize) -> Vec<f32> {
    debug_assert!(v.capacity() >= len);
    // SAFETY: the caller initialised the first `len` values
    unsafe { v.set_len(len) };
    v
}

impl Module for Conv2d {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
}

impl Layer for Conv2d {
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        self.forward_shared(
            if train { Arc::new(x.clone()) } else { Arc::new(Tensor::default()) },
            x,
            train,
        )
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        self.backward_then(dy, |_, _| Vec::<()>::new()).0
    }
}

impl Conv2d {
    /// As [`Layer::forward`], keeping a shared handle on the input instead of a copy (a network
    /// that owns its activations saves one copy of each conv input per step).
    pub fn forward_arc(&mut self, x: Arc<Tensor>, train: bool) -> Tensor {
        self.forward_shared(x.clone(), &x, train)
    }

    fn forward_shared(&mut self, keep: Arc<Tensor>, x: &Tensor, train: bool) -> Tensor {
        let g = self.geom(&x.shape);
        let n = x.shape[0];
        let (nb, par) = chunking(n, &g);
        let (og, k, p) = (g.og(), g.k(), g.p());
        let w = &self.weight.value;
        let ylen = n * g.out_len();
        // a fresh buffer, zeroed chunk by chunk below (every path writes every value of the
        // output, but the writers take initialised slices)
        let mut y = Vec::new();
        let out = out_chunks(&mut y, ylen, false);
        let serial = matches!(par, gemm::Parallelism::None);
        let wino = serial && super::winograd::fits(g.c, g.o, (g.kh, g.kw), (g.s, g.pad, g.groups));
        let u = wino.then(|| super::winograd::Kernel::new(w, (g.o, g.c), false, (g.h, g.w)));
        let columns = Columns::new(&g, self.input_grad).filter(|_| serial && !wino);
        let shifted = Shifted::new(&g).filter(|_| serial && !wino && columns.is_none());
        let offs = match (columns, shifted) {
            (Some(cl), _) => cl.offsets(&g),
            (None, Some(sh)) => sh.offsets(&g),
            (None, None) => Vec::new(),
        };
        // a training forward keeps its phase planes for the backward where `keeps_planes` says
        let il = shifted.map_or(0, |sh| sh.image_len(g.c));
        let mut planes = std::mem::take(&mut self.planes);
        let keep_planes = train && shifted.is_some_and(|sh| sh.keeps_planes(&g));
        let mut kept: Vec<Option<&mut [f32]>> = if keep_planes {
            planes.resize(n * il, 0.0);
            planes.chunks_mut(nb * il).map(Some).collect()
        } else {
            (0..n.div_ceil(nb)).map(|_| None).collect()
        };
        let body = |s: &mut Scratch, yc: &mut [f32], xc: &[f32], kept: Option<&mut [f32]>| {
            let nbl = xc.len() / g.in_len();
            if wino {
                let u = u.as_ref().expect("winograd kernel");
                u.conv(xc, (nbl, g.c, g.h, g.w), g.o, yc, &mut s.wino);
            } else if let Some(cl) = columns {
                use super::simd_gemm::{gemm_rows, Rows};
                #[cfg(test)]
                COLUMNS_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let xp = resize(&mut s.xpad, cl.image_len(&g));
                for (yi, xi) in yc.chunks_exact_mut(g.out_len()).zip(xc.chunks_exact(g.in_len())) {
                    cl.pad_input(&g, xi, xp);
                    let (a, b) = ((&w[..], Rows::Step(k), 1), (&xp[..], Rows::Table(&offs)));
                    // the product's columns are the output's
                    gemm_rows(g.o, p, k, a, b, yi, p, false);
                }
            } else if let Some(sh) = shifted {
                use super::simd_gemm::{gemm_rows, Rows};
                #[cfg(test)]
                SHIFTED_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let xp = match kept {
                    Some(k) => k,
                    None => resize(&mut s.xpad, nbl * il),
                };
                let t = resize(&mut s.tmp, g.o * sh.span);
                for (i, yi) in yc.chunks_exact_mut(g.out_len()).enumerate() {
                    let xi = &mut xp[i * il..(i + 1) * il];
                    sh.pad_input(&g, &xc[i * g.in_len()..(i + 1) * g.in_len()], xi);
                    let (a, b) = ((&w[..], Rows::Step(k), 1), (&xi[..], Rows::Table(&offs)));
                    if sh.span == p {
                        // no wrap columns (a 1 × 1 kernel): the product is the output
                        gemm_rows(g.o, p, k, a, b, yi, p, false);
                    } else {
                        gemm_rows(g.o, sh.span, k, a, b, t, sh.span, false);
                        let (rows, s1) = ((g.oh, g.ow), (1, 0, 0));
                        scatter_grid(t, sh.span, sh.wp, rows, s1, (g.oh, g.ow), yi);
                    }
                }
            } else {
                for grp in 0..g.groups {
                    let wg = Mat::new(&w[grp * og * k..(grp + 1) * og * k], og, k);
                    let cols: &[f32] = if is_identity(&g, nbl) {
                        xc
                    } else {
                        let c = resize(&mut s.cols, k * nbl * p);
                        im2col(xc, nbl, grp, &g, c);
                        c
                    };
                    let b = Mat::new(cols, k, nbl * p);
                    if nbl == 1 {
                        gemm_into(wg, b, &mut yc[grp * og * p..(grp + 1) * og * p], false, par);
                    } else {
                        let t = resize(&mut s.tmp, og * nbl * p);
                        gemm_into(wg, b, t, false, par);
                        for i in 0..nbl {
                            for oc in 0..og {
                                let dst = (i * g.o + grp * og + oc) * p;
                                yc[dst..dst + p].copy_from_slice(&t[(oc * nbl + i) * p..][..p]);
                            }
                        }
                    }
                }
            }
            if let Some(bias) = &self.bias {
                for (blk, o) in yc.chunks_mut(p).zip((0..g.o).cycle()) {
                    let b = bias.value[o];
                    blk.iter_mut().for_each(|v| *v += b);
                }
            }
        };
        let want_sums = train && self.want_plane_sums;
        // the chunk's output planes' sums, taken while the chunk is in cache
        let sums_of = |yc: &[f32]| -> Vec<(f32, f32)> {
            if want_sums {
                yc.chunks(p).map(|q| super::simd_gemm::with_simd(|| plane_sums(q))).collect()
            } else {
                Vec::new()
            }
        };
        let sums: Vec<(f32, f32)> = if n > nb {
            out.par_chunks_mut(nb * g.out_len())
                .zip(x.data.par_chunks(nb * g.in_len()))
                .zip(kept.par_iter_mut())
                .flat_map_iter(|((yc, xc), kept)| {
                    let yc = ready(yc, true);
                    with_scratch(|s| body(s, yc, xc, kept.take()));
                    sums_of(yc)
                })
                .collect()
        } else {
            let yc = ready(out, true);
            with_scratch(|s| body(s, yc, &x.data, kept[0].take()));
            sums_of(yc)
        };
        // SAFETY: the chunks above (or the one chunk) cover all `ylen` values, each zeroed
        let y = unsafe { claim(y, ylen) };
        drop(kept);
        self.planes = planes;
        self.sums = sums;
        self.input = train.then_some(keep);
        Tensor::new(vec![n, g.o, g.oh, g.ow], y)
    }

    /// Hands the layer a buffer that its next backward writes the input gradient into, if the
    /// lengths match (its values are overwritten; otherwise it is dropped then): a caller
    /// holding a dead buffer of the input's length saves an allocation and, where every value
    /// of dX is written, the pass of zeros a fresh one needs. resnet's blocks hand over the
    /// batch norm's saved input, which dies as this layer's backward starts.
    pub fn recycle_input_grad(&mut self, v: Vec<f32>) {
        self.dx_buf = v;
    }

    /// The output planes' `(Σ y, Σ y²)` of the last training forward, plane `i = image · O +
    /// channel`, when [`Conv2d::want_plane_sums`] is set (empty otherwise).
    pub fn take_plane_sums(&mut self) -> Vec<(f32, f32)> {
        std::mem::take(&mut self.sums)
    }

    /// As [`Layer::backward`], then `after(first_image, dx)` on each chunk of whole images of
    /// the input gradient as soon as the chunk is written, by the thread that wrote it, while
    /// the chunk is in that thread's cache: a pass that the layer before would make over the
    /// whole gradient (a norm's masked sums, a residual's sum) costs no trip to memory of its
    /// own. Returns dX and `after`'s results in image order (the chunks' results
    /// concatenated). With [`Conv2d::input_grad`] off, `after` sees zeros.
    pub fn backward_then<T: Send>(
        &mut self,
        dy: &Tensor,
        after: impl Fn(usize, &mut [f32]) -> Vec<T> + Sync,
    ) -> (Tensor, Vec<T>) {
        let (dx, outs) = self.backward_impl(dy, after, true);
        (dx.expect("conv2d: an input gradient"), outs)
    }

    /// The weight (and bias) gradients of a backward alone: no input gradient is computed or
    /// allocated, whatever [`Conv2d::input_grad`] says (a caller that takes the input
    /// gradient another way, as [`Conv2d::input_grad_adder`] gives it, or never reads it).
    pub fn backward_weights(&mut self, dy: &Tensor) {
        self.backward_impl(dy, |_, _| Vec::<()>::new(), false);
    }

    /// For a 1 × 1 convolution without padding or groups (a residual block's projection
    /// shortcut) after its training forward: a function that adds its input gradient, for the
    /// output gradient `dy`, onto a chunk of whole images of another layer's input gradient
    /// from image `first` (the layer beside it on the same input, whose
    /// [`Conv2d::backward_then`] runs it on each chunk while the chunk is in cache). No
    /// input-sized buffer of its own is zeroed, written and read back; [`Conv2d::backward_weights`]
    /// then takes the weight gradient. The same products as the backward's (on the kit's kernel,
    /// the same bits). Panics on other convolutions or without a training forward.
    pub fn input_grad_adder<'a>(
        &'a self,
        dy: &'a Tensor,
    ) -> impl Fn(usize, &mut [f32]) + Sync + 'a {
        let x = self.input.as_ref().expect("conv2d: input gradient without a training forward");
        let g = self.geom(&x.shape);
        assert!(
            g.kh == 1 && g.kw == 1 && g.pad == 0 && g.groups == 1,
            "conv2d: input_grad_adder is for 1 × 1 convolutions without padding or groups"
        );
        assert_eq!(dy.shape, vec![x.shape[0], g.o, g.oh, g.ow], "conv2d backward: gradient shape");
        let (p, il, ol) = (g.p(), g.in_len(), g.out_len());
        let w = Mat::new(&self.weight.value, g.o, g.c).t();
        move |first, dx| {
            assert_eq!(dx.len() % il, 0, "conv2d: a chunk of part of an image");
            let mut t = vec![0.0f32; g.c * p];
            for (i, dxi) in dx.chunks_exact_mut(il).enumerate() {
                // t [C, P] = Wᵀ · dY_i, then t onto dX's positions (s·r, s·q)
                let dyi = Mat::new(&dy.data[(first + i) * ol..][..ol], g.o, p);
                gemm_into(w, dyi, &mut t, false, gemm::Parallelism::None);
                for (plane, tc) in dxi.chunks_exact_mut(g.h * g.w).zip(t.chunks_exact(p)) {
                    for (r, src) in tc.chunks_exact(g.ow).enumerate() {
                        let row = &mut plane[g.s * r * g.w..];
                        row.iter_mut().step_by(g.s).zip(src).for_each(|(a, b)| *a += b);
                    }
                }
            }
        }
    }

    /// The backward; with `dx_wanted` false, no input gradient at all (`None`).
    fn backward_impl<T: Send>(
        &mut self,
        dy: &Tensor,
        after: impl Fn(usize, &mut [f32]) -> Vec<T> + Sync,
        dx_wanted: bool,
    ) -> (Option<Tensor>, Vec<T>) {
        let x = self.input.take().expect("conv2d: backward without a training forward");
        let g = self.geom(&x.shape);
        let n = x.shape[0];
        assert_eq!(dy.shape, vec![n, g.o, g.oh, g.ow], "conv2d backward: gradient shape");
        let (nb, par) = chunking(n, &g);
        let (og, k, p) = (g.og(), g.k(), g.p());
        let w = &self.weight.value;
        let wlen = w.len();
        // without dX, its chunks are empty slices (nothing writes them)
        let dx_len = if dx_wanted { x.len() } else { 0 };
        let (mut dx, init) =
            if dx_wanted { out_buffer(&mut self.dx_buf, x.len()) } else { (Vec::new(), false) };
        let dx_out = out_chunks(&mut dx, dx_len, init);
        let want_dx = self.input_grad && dx_wanted;
        let dw_t = matches!(par, gemm::Parallelism::None) && super::simd_gemm::available();
        // Winograd's products for dX where they apply, and for dW too where its rule says
        let fits = dw_t && super::winograd::fits(g.c, g.o, (g.kh, g.kw), (g.s, g.pad, g.groups));
        // F(4×4)'s dW where its planes fit, else F(2×2)'s where its rule says
        let f4_dw = fits && super::winograd4::dw_fits(g.h, g.w);
        let wino_dw = fits && (f4_dw || super::winograd::dw_fits(g.h, g.w, g.c.min(g.o)));
        // (never with dX: `Columns` takes only layers without an input gradient)
        let columns = Columns::new(&g, self.input_grad).filter(|_| dw_t && !wino_dw);
        let shifted = Shifted::new(&g).filter(|_| dw_t && !wino_dw && columns.is_none());
        // dX by Winograd's products where they apply, whatever path dW takes (im2col's too, on
        // planes too small for the implicit product: resnet18-cifar's 4 × 4)
        let wino_dx = fits && want_dx;
        let ut = wino_dx.then(|| super::winograd::Kernel::new(w, (g.o, g.c), true, (g.oh, g.ow)));
        let (offs, phases) = match (columns, shifted) {
            (Some(cl), _) => (cl.offsets(&g), Vec::new()),
            // dX phase by phase where it is wanted and Winograd's products do not take it
            (None, Some(sh)) if want_dx && !fits => (sh.offsets(&g), sh.dx_phases(&g, w)),
            (None, Some(sh)) => (sh.offsets(&g), Vec::new()),
            (None, None) => Default::default(),
        };
        // Is every value of dX written (not added onto)? Winograd's products write all of it;
        // the phases write theirs (`dx_phases` lists those with positions and taps), all of dX
        // if every phase with positions has taps (a 1 × 1 kernel of stride 2 reads one phase of
        // four); im2col's col2im adds.
        let dx_written = want_dx
            && (wino_dx || shifted.is_some_and(|sh| phases.len() == sh.phases_with_positions()));
        let zero_dx = !init || !dx_written;
        let il = shifted.map_or(0, |sh| sh.image_len(g.c));
        // the forward's phase planes (absent only if a test switched paths in between)
        let planes = std::mem::take(&mut self.planes);
        let kept = shifted.is_some() && planes.len() == n * il;
        // dX of a chunk by Winograd's products (the kernel flipped)
        let dx_by_winograd = |s: &mut Scratch, dyc: &[f32], dxc: &mut [f32]| {
            let nbl = dyc.len() / g.out_len();
            let ut = ut.as_ref().expect("winograd kernel");
            ut.conv(dyc, (nbl, g.o, g.oh, g.ow), g.c, dxc, &mut s.wino);
        };
        let body_in = |s: &mut Scratch,
                       (dw, du): &mut (Vec<f32>, Vec<f32>),
                       dxc: &mut [f32],
                       xc: &[f32],
                       dyc: &[f32],
                       pc: &[f32]| {
            let nbl = xc.len() / g.in_len();
            if dw.len() != wlen {
                *dw = vec![0.0; wlen];
            }
            if wino_dw {
                // dW by Winograd's products, from the unpadded planes, in Winograd's basis
                // until the task's chunks are done (`finish`)
                let dims = (nbl, g.c, g.h, g.w);
                if du.is_empty() {
                    *du = vec![0.0; if f4_dw { 36 } else { 16 } * g.c * g.o];
                }
                if f4_dw {
                    super::winograd4::weight_grad(xc, dims, dyc, g.o, du, &mut s.wino);
                } else {
                    super::winograd::weight_grad(xc, dims, dyc, g.o, du, &mut s.wino);
                }
            } else if let Some(cl) = columns {
                use super::simd_gemm::{gemm_rows, transpose, Rows};
                debug_assert!(!want_dx, "conv2d: the column copies' path has no dX");
                let xp = resize(&mut s.xpad, cl.image_len(&g));
                let dyt = resize(&mut s.dyt, p * g.o);
                for (xi, dyi) in xc.chunks_exact(g.in_len()).zip(dyc.chunks_exact(g.out_len())) {
                    cl.pad_input(&g, xi, xp);
                    // dWᵀ += patchesᵀ · dYᵀ, dY as [P, O]
                    transpose(g.o, p, dyi, p, dyt, g.o);
                    let a = (&xp[..], Rows::Table(&offs), 1);
                    gemm_rows(k, g.o, p, a, (&dyt[..], Rows::Step(g.o)), dw, g.o, true);
                }
            } else if let Some(sh) = shifted {
                use super::simd_gemm::{gemm_rows, transpose, Rows};
                let plane = g.oh * g.ow;
                let dyp = resize(&mut s.dypad, g.o * sh.pq);
                for i in 0..nbl {
                    let xi = i * g.in_len()..(i + 1) * g.in_len();
                    // (empty without dX: no phase writes it then)
                    let dxi = dxc.get_mut(xi.clone()).unwrap_or_default();
                    debug_assert!(phases.is_empty() || !dxi.is_empty());
                    let dyi = &dyc[i * g.out_len()..(i + 1) * g.out_len()];
                    let xp: &[f32] = if kept {
                        &pc[i * il..(i + 1) * il]
                    } else {
                        let xp = resize(&mut s.xpad, il);
                        sh.pad_input(&g, &xc[xi], xp);
                        xp
                    };
                    // dX, phase by phase, from dY padded by `before` on each axis
                    let origin = (-(sh.y.before() as isize), -(sh.x.before() as isize));
                    for (src, d) in dyi.chunks_exact(plane).zip(dyp.chunks_exact_mut(sh.pq)) {
                        fill_grid(src, (g.oh, g.ow), (1, 0, 0), origin, sh.wp, d);
                    }
                    for (a, b, rr, qq, wab, offs_dy) in &phases {
                        let span = (rr - 1) * sh.wp + qq;
                        let t = resize(&mut s.tmp, g.c * span);
                        let ka = offs_dy.len();
                        let (av, bv) =
                            ((&wab[..], Rows::Step(ka), 1), (&dyp[..], Rows::Table(offs_dy)));
                        gemm_rows(g.c, span, ka, av, bv, t, span, false);
                        scatter_grid(t, span, sh.wp, (*rr, *qq), (sh.s, *a, *b), (g.h, g.w), dxi);
                    }
                    // dWᵀ += patchesᵀ · dYᵀ, dY on the output grid as [span, O]: dX's padded
                    // dY, whose rows are as wide as the grid (the cells under the wrap columns
                    // are its padding)
                    let grid = &dyp[sh.y.before() * sh.wp + sh.x.before()..];
                    let dyt = resize(&mut s.dyt, sh.span * g.o);
                    transpose(g.o, sh.span, grid, sh.pq, dyt, g.o);
                    let a = (xp, Rows::Table(&offs), 1);
                    gemm_rows(k, g.o, sh.span, a, (&dyt[..], Rows::Step(g.o)), dw, g.o, true);
                }
            } else {
                for grp in 0..g.groups {
                    let wg = Mat::new(&w[grp * og * k..(grp + 1) * og * k], og, k);
                    // dY_g as [og, nbl·P]
                    let dyg: &[f32] = if nbl == 1 {
                        &dyc[grp * og * p..(grp + 1) * og * p]
                    } else {
                        let t = resize(&mut s.tmp, og * nbl * p);
                        for i in 0..nbl {
                            for oc in 0..og {
                                let src = (i * g.o + grp * og + oc) * p;
                                t[(oc * nbl + i) * p..][..p].copy_from_slice(&dyc[src..src + p]);
                            }
                        }
                        t
                    };
                    let dyg = Mat::new(dyg, og, nbl * p);
                    let dwg = &mut dw[grp * og * k..(grp + 1) * og * k];
                    if is_identity(&g, nbl) {
                        acc_dw(dw_t, xc, k, dyg, &mut s.dyt, dwg, par);
                        if want_dx {
                            gemm_into(wg.t(), dyg, dxc, true, par);
                        }
                        continue;
                    }
                    let cols = resize(&mut s.cols, k * nbl * p);
                    im2col(xc, nbl, grp, &g, cols);
                    acc_dw(dw_t, cols, k, dyg, &mut s.dyt, dwg, par);
                    if want_dx && !fits {
                        // dcols overwrites cols
                        gemm_into(wg.t(), dyg, cols, false, par);
                        col2im(cols, nbl, grp, &g, dxc);
                    }
                }
            }
            if wino_dx {
                dx_by_winograd(s, dyc, dxc);
            }
        };
        let body = |acc: &mut (Vec<f32>, Vec<f32>), dxc: &mut [f32], xc: &[f32], dyc, pc| {
            with_scratch(|s| body_in(s, acc, dxc, xc, dyc, pc));
        };
        let finish = |(mut dw, du): (Vec<f32>, Vec<f32>)| {
            match (du.is_empty(), f4_dw) {
                (true, _) => {}
                (false, true) => super::winograd4::kernel_grad_into(&du, (g.c, g.o), &mut dw),
                (false, false) => super::winograd::kernel_grad_into(&du, (g.c, g.o), &mut dw),
            }
            dw
        };
        let (dw, outs) = if n > nb {
            // Chunks in a fixed number of tasks (consecutive chunks, one weight gradient each,
            // accumulated in chunk order), the tasks' gradients summed in task order whatever
            // thread made them: training is bitwise reproducible (and `--resume` exact), and
            // the grouping depends on the batch and the layer only. One gradient per chunk
            // was 512 per layer at 28 × 28, and their sum 2.5 % of a resnet-mini step (perf);
            // the sum runs in parallel over the elements (summed on one thread, it left the
            // other asleep)
            let per_task = n.div_ceil(nb).div_ceil(TASKS);
            let (ti, to, tp) =
                (per_task * nb * g.in_len(), per_task * nb * g.out_len(), per_task * nb * il);
            let task_planes: Vec<&[f32]> = if kept {
                planes.chunks(tp).collect()
            } else {
                vec![&[]; n.div_ceil(per_task * nb)]
            };
            let tasks = x.len().div_ceil(ti);
            let dx_tasks: Vec<&mut [MaybeUninit<f32>]> = if dx_wanted {
                dx_out.chunks_mut(ti).collect()
            } else {
                (0..tasks).map(|_| &mut [][..]).collect()
            };
            let parts: Vec<(Vec<f32>, Vec<T>)> = dx_tasks
                .into_par_iter()
                .zip(x.data.par_chunks(ti))
                .zip(dy.data.par_chunks(to))
                .zip(task_planes.par_iter())
                .enumerate()
                .map(|(task, (((dxt, xt), dyt), pt))| {
                    let mut acc = Default::default();
                    let mut outs = Vec::new();
                    let (ci, co) = (nb * g.in_len(), nb * g.out_len());
                    let mut dxs = dxt.chunks_mut(ci);
                    for (j, (xc, dyc)) in xt.chunks(ci).zip(dyt.chunks(co)).enumerate() {
                        let dxc = dxs.next().map_or(&mut [][..], |c| ready(c, zero_dx));
                        let pc = if kept {
                            &pt[j * nb * il..][..xc.len() / g.in_len() * il]
                        } else {
                            &[][..]
                        };
                        body(&mut acc, dxc, xc, dyc, pc);
                        outs.extend(after((task * per_task + j) * nb, dxc));
                    }
                    (finish(acc), outs)
                })
                .collect();
            let (parts, outs): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
            (sum_in_order(parts), outs.into_iter().flatten().collect())
        } else {
            let pc = if kept { &planes[..] } else { &[][..] };
            let mut acc = Default::default();
            let dxc = ready(dx_out, zero_dx);
            body(&mut acc, dxc, &x.data, &dy.data, pc);
            let outs = after(0, dxc);
            (finish(acc), outs)
        };
        // SAFETY: the tasks' chunks (or the one chunk) cover all of `x.len()` values, each zeroed
        // or, `zero_dx` false, a recycled buffer's (initialised) values that the paths overwrite
        let dx = dx_wanted.then(|| unsafe { claim(dx, x.len()) });
        self.planes = planes;
        if dw_t {
            // the accumulators hold dWᵀ per group, [groups][k][og]
            let mut t = vec![0.0f32; og * k];
            for grp in 0..g.groups {
                let src = &dw[grp * og * k..(grp + 1) * og * k];
                super::simd_gemm::transpose(k, og, src, og, &mut t, k);
                let dst = &mut self.weight.grad[grp * og * k..(grp + 1) * og * k];
                dst.iter_mut().zip(&t).for_each(|(a, b)| *a += b);
            }
        } else {
            self.weight.grad.iter_mut().zip(&dw).for_each(|(a, b)| *a += b);
        }
        if let Some(bias) = &mut self.bias {
            for (blk, o) in dy.data.chunks(p).zip((0..g.o).cycle()) {
                bias.grad[o] += blk.iter().sum::<f32>();
            }
        }
        (dx.map(|dx| Tensor::new(x.shape.clone(), dx)), outs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::gradcheck::{check_layer, random};

    /// Held by the tests that switch a path off, so that one does not switch the other's off.
    pub(super) static SWITCHES: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The defining sum, written out.
    fn direct(conv: &Conv2d, x: &Tensor) -> Tensor {
        let g = conv.geom(&x.shape);
        let n = x.shape[0];
        let mut y = vec![0.0f64; n * g.out_len()];
        for i in 0..n {
            for o in 0..g.o {
                let grp = o / g.og();
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = conv.bias.as_ref().map_or(0.0, |b| b.value[o] as f64);
                        for ci in 0..g.cg() {
                            let c = grp * g.cg() + ci;
                            for p in 0..g.kh {
                                for q in 0..g.kw {
                                    let iy = (oy * g.s + p) as isize - g.pad as isize;
                                    let ix = (ox * g.s + q) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x.data
                                        [((i * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = conv.weight.value
                                        [((o * g.cg() + ci) * g.kh + p) * g.kw + q];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((i * g.o + o) * g.oh + oy) * g.ow + ox] = acc;
                    }
                }
            }
        }
        Tensor::new(vec![n, g.o, g.oh, g.ow], y.into_iter().map(|v| v as f32).collect())
    }

    fn cfg(stride: usize, padding: usize, groups: usize, bias: bool) -> Conv2dConfig {
        Conv2dConfig { stride, padding, groups, bias }
    }

    // (input shape, out channels, kh, kw, config)
    fn cases() -> Vec<(Vec<usize>, usize, usize, usize, Conv2dConfig)> {
        vec![
            (vec![2, 3, 5, 5], 4, 3, 3, cfg(1, 1, 1, true)),
            (vec![1, 2, 6, 7], 3, 3, 3, cfg(2, 1, 1, false)),
            (vec![3, 4, 5, 4], 6, 3, 2, cfg(1, 0, 2, true)),
            (vec![2, 3, 7, 5], 2, 1, 1, cfg(2, 0, 1, false)),
            (vec![1, 2, 4, 4], 5, 1, 1, cfg(1, 0, 1, true)),
            (vec![2, 4, 6, 5], 4, 3, 3, cfg(2, 2, 4, false)),
            (vec![1, 2, 2, 1], 3, 3, 3, cfg(1, 2, 1, true)),
            (vec![2, 1, 7, 8], 2, 2, 3, cfg(3, 1, 1, false)),
        ]
    }

    /// A buffer handed over for dX ([`Conv2d::recycle_input_grad`]) full of NaN: every path
    /// either writes all of it or zeroes it first (the 1 × 1 stride-2 shortcut writes one phase
    /// of four, im2col adds), so dX is bitwise the fresh buffer's.
    /// `fill_pair` writes what `fill_grid` writes for phases (a, 0) and (a, 1) of stride 2,
    /// padding included, on rows of odd and even width, narrow and wider than 16 and 32.
    #[test]
    fn fill_pair_is_fill_grid_of_both_column_phases() {
        for (h, w, a, origin, cols, rows) in [
            (28, 28, 0, (-1, -1), 15, 15),
            (28, 28, 1, (-1, -1), 15, 16),
            (14, 14, 1, (-1, -1), 8, 9),
            (7, 7, 0, (0, 0), 4, 5),
            (9, 41, 1, (-1, -1), 22, 6),
            (5, 70, 0, (-2, -1), 36, 4),
            (3, 3, 1, (-1, -1), 2, 3),
        ] {
            let src = random(&[h * w], 31).data;
            let (mut want, mut got) = (
                [0, 1].map(|_| vec![7.0f32; rows * cols]),
                [0, 1].map(|_| vec![7.0f32; rows * cols]),
            );
            for (b, d) in want.iter_mut().enumerate() {
                fill_grid(&src, (h, w), (2, a, b), origin, cols, d);
            }
            let [g0, g1] = &mut got;
            fill_pair(&src, (h, w), a, origin, cols, (g0, g1));
            assert_eq!(got, want, "{h} x {w}, phase row {a}, origin {origin:?}, {rows} x {cols}");
        }
    }

    /// A 1 × 1 convolution's `input_grad_adder` adds onto any chunk of whole images the dX
    /// that `backward` returns (bitwise where the kit's kernel takes both), and
    /// `backward_weights` gives `backward`'s weight and bias gradients without an input
    /// gradient: strides 1 and 2, chunks of one image and of several.
    #[test]
    fn a_projections_input_gradient_by_chunks_and_its_weights_alone_are_the_backward() {
        for (seed, (shape, o, stride, bias, chunk)) in [
            (vec![3, 4, 6, 6], 5, 2, false, 1),
            (vec![5, 6, 7, 7], 3, 2, true, 2),
            (vec![4, 3, 5, 5], 4, 1, false, 3),
            (vec![8, 32, 28, 28], 64, 2, false, 8),
        ]
        .into_iter()
        .enumerate()
        {
            let c = cfg(stride, 0, 1, bias);
            let mut conv = Conv2d::new(&Init::new(seed as u64), shape[1], o, 1, c);
            let x = random(&shape, 700 + seed as u64);
            let oshape = conv.out_shape(shape[1], shape[2], shape[3]).unwrap();
            let dy = random(&[shape[0], oshape[0], oshape[1], oshape[2]], 800 + seed as u64);
            conv.forward(&x, true);
            let want = conv.backward(&dy);
            let (want_w, want_b) =
                (conv.weight.grad.clone(), conv.bias.as_ref().map(|b| b.grad.clone()));
            conv.visit_params(&mut |p| p.grad.fill(0.0));
            conv.forward(&x, true);
            let base = random(&shape, 900 + seed as u64);
            let mut got = base.data.clone();
            let image = x.len() / shape[0];
            let add = conv.input_grad_adder(&dy);
            for (k, part) in got.chunks_mut(chunk * image).enumerate() {
                add(k * chunk, part);
            }
            drop(add);
            conv.backward_weights(&dy);
            let exact = crate::kit::simd_gemm::available();
            for ((g, b), w) in got.iter().zip(&base.data).zip(&want.data) {
                let sum = b + w;
                assert!(
                    if exact {
                        g.to_bits() == sum.to_bits()
                    } else {
                        (g - sum).abs() <= 1e-5 * (1.0 + sum.abs())
                    },
                    "case {seed}: {g} against {b} + {w}"
                );
            }
            assert_eq!(conv.weight.grad, want_w, "case {seed}: dW");
            assert_eq!(conv.bias.as_ref().map(|b| b.grad.clone()), want_b, "case {seed}: db");
        }
    }

    /// `backward_then` runs `after` once on each chunk of whole images, in the chunks' order
    /// of images, on dX as `backward` computes it; what `after` writes is the dX it returns, and
    /// its results come back in image order. Batches of one chunk and of many (two threads).
    #[test]
    fn backward_then_sees_every_chunk_of_dx_once_in_image_order() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for (seed, (shape, o, k, c)) in [
            (vec![2, 3, 5, 5], 4, 3, cfg(1, 1, 1, false)),
            (vec![40, 8, 14, 14], 8, 3, cfg(1, 1, 1, false)),
            (vec![24, 4, 12, 12], 6, 3, cfg(2, 1, 1, false)),
            (vec![17, 3, 9, 9], 5, 1, cfg(1, 0, 1, true)),
        ]
        .into_iter()
        .enumerate()
        {
            let mut conv = Conv2d::new(&Init::new(seed as u64), shape[1], o, k, c);
            let x = random(&shape, 500 + seed as u64);
            let oshape = conv.out_shape(shape[1], shape[2], shape[3]).unwrap();
            let dy = random(&[shape[0], oshape[0], oshape[1], oshape[2]], 600 + seed as u64);
            let image = x.len() / shape[0];
            pool.install(|| {
                conv.forward(&x, true);
                let want = conv.backward(&dy);
                conv.forward(&x, true);
                let (got, outs) = conv.backward_then(&dy, |first, dx| {
                    assert_eq!(dx.len() % image, 0, "a chunk of part of an image");
                    // the chunk as `backward` made it, then doubled
                    let at = &want.data[first * image..][..dx.len()];
                    assert!(dx.iter().zip(at).all(|(a, b)| a.to_bits() == b.to_bits()));
                    dx.iter_mut().for_each(|v| *v *= 2.0);
                    (first..first + dx.len() / image).collect::<Vec<_>>()
                });
                assert_eq!(outs, (0..shape[0]).collect::<Vec<_>>(), "case {seed}: chunks");
                assert!(got.data.iter().zip(&want.data).all(|(a, b)| *a == 2.0 * b));
            });
        }
    }

    #[test]
    fn a_recycled_input_gradient_buffer_gives_the_same_dx() {
        let _same_paths_twice = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = cases();
        all.extend([
            (vec![3, 32, 28, 28], 32, 3, 3, cfg(1, 1, 1, false)),
            (vec![3, 64, 14, 14], 64, 3, 3, cfg(1, 1, 1, false)),
            (vec![3, 32, 28, 28], 64, 3, 3, cfg(2, 1, 1, false)),
            (vec![3, 32, 28, 28], 64, 1, 1, cfg(2, 0, 1, false)),
        ]);
        for (seed, (shape, o, kh, kw, c)) in all.into_iter().enumerate() {
            let mut conv = Conv2d::rect(&Init::new(seed as u64), shape[1], o, kh, kw, c);
            let x = random(&shape, 300 + seed as u64);
            let oshape = conv.out_shape(shape[1], shape[2], shape[3]).unwrap();
            let dy = random(&[shape[0], oshape[0], oshape[1], oshape[2]], 400 + seed as u64);
            conv.forward(&x, true);
            let fresh = conv.backward(&dy);
            conv.forward(&x, true);
            conv.recycle_input_grad(vec![f32::NAN; x.len()]);
            let recycled = conv.backward(&dy);
            let bits = |t: &Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fresh), bits(&recycled), "case {seed}: {shape:?} -> {o}");
        }
    }

    #[test]
    fn forward_matches_direct_convolution() {
        for (seed, (shape, o, kh, kw, c)) in cases().into_iter().enumerate() {
            let mut conv = Conv2d::rect(&Init::new(seed as u64), shape[1], o, kh, kw, c);
            let x = random(&shape, 100 + seed as u64);
            let y = conv.forward(&x, false);
            let want = direct(&conv, &x);
            assert_eq!(y.shape, want.shape);
            let scale = want.data.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            for (a, b) in y.data.iter().zip(&want.data) {
                assert!((a - b).abs() <= 1e-4 * scale, "case {seed}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn forward_matches_direct_on_a_batch_large_enough_to_chunk() {
        // 40 images of 3x9x11, 3x3 stride 2 pad 1: several chunks, run in parallel
        let mut conv = Conv2d::new(&Init::new(9), 3, 8, 3, cfg(2, 1, 1, true));
        let x = random(&[40, 3, 9, 11], 5);
        let y = conv.forward(&x, true);
        let want = direct(&conv, &x);
        let scale = want.data.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (a, b) in y.data.iter().zip(&want.data) {
            assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
        }
        // and backward of the chunked path agrees with the one-chunk path, image by image
        let dy = random(&y.shape, 6);
        let dx = conv.backward(&dy);
        let dw = std::mem::replace(&mut conv.weight.grad, vec![0.0; conv.weight.value.len()]);
        let mut dw1 = vec![0.0f32; dw.len()];
        for i in 0..40 {
            let (xi, dyi) = (
                x.data[i * 297..(i + 1) * 297].to_vec(),
                dy.data[i * 8 * 30..(i + 1) * 8 * 30].to_vec(),
            );
            conv.forward(&Tensor::new(vec![1, 3, 9, 11], xi), true);
            let dxi = conv.backward(&Tensor::new(vec![1, 8, 5, 6], dyi));
            for (a, b) in dxi.data.iter().zip(&dx.data[i * 297..(i + 1) * 297]) {
                assert!((a - b).abs() < 1e-5, "dx {a} vs {b}");
            }
            dw1.iter_mut().zip(&conv.weight.grad).for_each(|(a, b)| *a += b);
            conv.weight.grad.fill(0.0);
        }
        for (a, b) in dw.iter().zip(&dw1) {
            assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "dw {a} vs {b}");
        }
    }

    /// Winograd's path off until dropped.
    struct NoWinograd;
    impl NoWinograd {
        fn set() -> NoWinograd {
            crate::kit::winograd::DISABLED.store(true, std::sync::atomic::Ordering::SeqCst);
            NoWinograd
        }
    }
    impl Drop for NoWinograd {
        fn drop(&mut self) {
            crate::kit::winograd::DISABLED.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn winograd_agrees_with_im2col_forward_and_backward() {
        let _only_this_test_switches_paths = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
        if !crate::kit::simd_gemm::available() {
            eprintln!("no AVX-512 or AVX2 + FMA here: nothing to test");
            return;
        }
        // Winograd's dW where the planes allow, on any CPU and channel count (F(2×2)'s is in use
        // on Zen 4, and elsewhere from 64 channels)
        crate::kit::winograd::DW_ALWAYS.store(true, std::sync::atomic::Ordering::SeqCst);
        // (images, channels in, out, h, w): odd and even sides (a half tile at the edge; dW on
        // Winograd's path for even sides of 8 or more only), 1 x 1 and 1 x 2 planes, more than
        // 16 tiles in a row (two steps of the transforms), channel counts that are not
        // multiples of the kernel's tiles, batches of one chunk and of many; 5 × 5 and 4 × 4
        // take im2col's dW (the implicit product's wrap columns cost too much there) beside
        // Winograd's dX
        for (seed, (n, c, o, h, w)) in [
            (2, 64, 64, 5, 5),
            (1, 64, 64, 28, 28),
            (20, 64, 72, 7, 7),
            (3, 65, 64, 1, 1),
            (2, 64, 66, 1, 2),
            (1, 64, 64, 33, 35),
            (8, 72, 64, 8, 9),
            (2, 128, 64, 14, 14),
            (5, 32, 32, 28, 28),
            (3, 16, 32, 28, 28),
            (2, 32, 17, 9, 6),
            (2, 48, 40, 36, 34),
            (2, 40, 32, 11, 25),
            (1, 32, 48, 32, 32),
            (3, 32, 40, 4, 4),
            // F(4×4) on narrow planes (`winograd4::conv_narrow`)
            (2, 32, 40, 16, 16),
            (3, 40, 32, 8, 8),
            (2, 36, 33, 12, 15),
        ]
        .into_iter()
        .enumerate()
        {
            let mut conv =
                Conv2d::new(&Init::new(seed as u64), c, o, 3, cfg(1, 1, 1, seed % 2 == 1));
            let g = conv.geom(&[n, c, h, w]);
            // the last two cases are below the path's channel threshold, taken here all the same
            let below = c.min(o) < crate::kit::winograd::MIN_CHANNELS;
            crate::kit::winograd::ANY_CHANNELS.store(below, std::sync::atomic::Ordering::SeqCst);
            assert!(crate::kit::winograd::fits(g.c, g.o, (g.kh, g.kw), (g.s, g.pad, g.groups)));
            let x = random(&[n, c, h, w], 80 + seed as u64);
            let dy = random(&[n, o, h, w], 90 + seed as u64);
            // calls of F(2×2) and F(4×4)
            let wino_calls = || {
                crate::kit::winograd::CALLS.load(std::sync::atomic::Ordering::SeqCst)
                    + crate::kit::winograd4::CALLS.load(std::sync::atomic::Ordering::SeqCst)
                    + crate::kit::winograd4::NARROW_CALLS.load(std::sync::atomic::Ordering::SeqCst)
            };
            let mut run = |off: bool| {
                let _paths = off.then(NoWinograd::set);
                SHIFTED_DISABLED.store(off, std::sync::atomic::Ordering::SeqCst);
                conv.weight.grad.fill(0.0);
                let y = conv.forward(&x, true);
                let before = wino_calls();
                let dx = conv.backward(&dy);
                // dX by Winograd's products on every plane size
                assert!(
                    off || wino_calls() > before,
                    "case {seed}: dX did not take Winograd's path"
                );
                SHIFTED_DISABLED.store(false, std::sync::atomic::Ordering::SeqCst);
                (y.data, dx.data, conv.weight.grad.clone())
            };
            // one thread: chunks run one after the other, each with a single-threaded product
            // (on more threads a batch of few chunks takes the parallel gemm of im2col)
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let (y0, dx0, dw0) = pool.install(|| run(true));
            let calls = wino_calls();
            // calls of F(2×2)'s dW and F(4×4)'s
            let dw_calls = || {
                crate::kit::winograd::DW_CALLS.load(std::sync::atomic::Ordering::SeqCst)
                    + crate::kit::winograd4::DW_CALLS.load(std::sync::atomic::Ordering::SeqCst)
            };
            let dw_before = dw_calls();
            let (y1, dx1, dw1) = pool.install(|| run(false));
            let now = wino_calls();
            assert!(
                now >= calls + 2,
                "case {seed}: the forward and dX did not take Winograd's path"
            );
            // dW takes it where its rule says
            let dw_rule = crate::kit::winograd::dw_fits(h, w, c.min(o))
                || crate::kit::winograd4::dw_fits(h, w);
            assert!(
                !dw_rule || dw_calls() > dw_before,
                "case {seed}: dW did not take Winograd's path"
            );
            // and bitwise the same when run again
            assert_eq!(pool.install(|| run(false)).0, y1, "case {seed}: a second forward");
            // F(4×4)'s larger tile rounds more (its module's doc)
            let f4 = crate::kit::winograd4::fits(h, w) || crate::kit::winograd4::narrow_fits(h, w);
            let tol = if f4 { 2e-5 } else { 2e-6 };
            for (name, a, b) in [("y", &y0, &y1), ("dx", &dx0, &dx1), ("dw", &dw0, &dw1)] {
                let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                for (i, (u, v)) in a.iter().zip(b.iter()).enumerate() {
                    assert!(
                        (u - v).abs() <= tol * scale,
                        "case {seed}: {name}[{i}] {v} (winograd) vs {u} (im2col)"
                    );
                }
            }
        }
        crate::kit::winograd::ANY_CHANNELS.store(false, std::sync::atomic::Ordering::SeqCst);
        crate::kit::winograd::DW_ALWAYS.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn shifted_planes_agree_with_im2col_forward_and_backward() {
        let _only_this_test_switches_paths = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
        // the implicit path whatever the wrap columns cost, until the end of this test
        struct Always;
        impl Drop for Always {
            fn drop(&mut self) {
                SHIFTED_ALWAYS.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        SHIFTED_ALWAYS.store(true, std::sync::atomic::Ordering::SeqCst);
        let _always = Always;
        // and the implicit path where Winograd's would take its place
        let _no_winograd = NoWinograd::set();
        if !crate::kit::simd_gemm::available() {
            eprintln!("no AVX-512 or AVX2 + FMA here: nothing to test");
            return;
        }
        // (images, channels in, out, size h x w, kernel h x w, stride, padding): one chunk and
        // many, 3x3 and 5x5, one input channel (the stem), planes down to 1 x 1, strides 2 and
        // 3 (phase planes), 1x1 stride 2 (a resnet's shortcut), padding other than half the
        // kernel, rectangular kernels
        for (seed, (n, c, o, (h, w), (kh, kw), st, pad)) in [
            (1, 3, 4, (5, 5), (3, 3), 1, 1),
            (2, 1, 32, (28, 28), (3, 3), 1, 1),
            (40, 8, 16, (7, 7), (3, 3), 1, 1),
            (3, 4, 5, (9, 12), (5, 5), 1, 2),
            (6, 3, 2, (1, 1), (3, 3), 1, 1),
            (2, 2, 3, (2, 5), (5, 5), 1, 2),
            (2, 4, 8, (28, 28), (3, 3), 2, 1),
            (30, 6, 8, (14, 13), (3, 3), 2, 1),
            (3, 4, 6, (28, 28), (1, 1), 2, 0),
            (2, 3, 4, (11, 10), (3, 2), 3, 1),
            (2, 3, 4, (9, 9), (3, 3), 1, 0),
            (2, 3, 4, (8, 9), (4, 4), 2, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let mut conv =
                Conv2d::rect(&Init::new(seed as u64), c, o, kh, kw, cfg(st, pad, 1, seed % 2 == 0));
            let g = conv.geom(&[n, c, h, w]);
            assert!(Shifted::new(&g).is_some(), "case {seed} takes the im2col path");
            let [_, oh, ow] = conv.out_shape(c, h, w).unwrap();
            let x = random(&[n, c, h, w], 60 + seed as u64);
            let dy = random(&[n, o, oh, ow], 70 + seed as u64);
            // (im2col forward, im2col backward): both paths, and the implicit backward of an
            // im2col forward (which has no phase planes to read again, so makes its own)
            let mut run = |(fwd_off, bwd_off): (bool, bool)| {
                SHIFTED_DISABLED.store(fwd_off, std::sync::atomic::Ordering::SeqCst);
                conv.weight.grad.fill(0.0);
                let y = conv.forward(&x, true);
                SHIFTED_DISABLED.store(bwd_off, std::sync::atomic::Ordering::SeqCst);
                let dx = conv.backward(&dy);
                SHIFTED_DISABLED.store(false, std::sync::atomic::Ordering::SeqCst);
                (y, dx, conv.weight.grad.clone())
            };
            // one thread: chunks run one after the other, each with a single-threaded product
            // (on more threads a batch of few chunks takes the parallel gemm of im2col)
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let (y0, dx0, dw0) = pool.install(|| run((true, true)));
            for mode in [(false, false), (true, false)] {
                let calls = SHIFTED_CALLS.load(std::sync::atomic::Ordering::SeqCst);
                let (y1, dx1, dw1) = pool.install(|| run(mode));
                if !mode.0 {
                    let now = SHIFTED_CALLS.load(std::sync::atomic::Ordering::SeqCst);
                    assert!(now > calls, "case {seed}: the forward did not take the implicit path");
                }
                // the forward sums in the same order: the same bits
                assert_eq!(y0.data, y1.data, "case {seed}: forward");
                for (name, a, b) in [("dx", &dx0.data, &dx1.data), ("dw", &dw0, &dw1)] {
                    let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                    for (u, v) in a.iter().zip(b.iter()) {
                        assert!(
                            (u - v).abs() <= 1e-5 * scale,
                            "case {seed}, {mode:?}: {name} {u} vs {v}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn column_copies_agree_with_im2col_and_with_the_grid() {
        let _only_this_test_switches_paths = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
        if !crate::kit::simd_gemm::available() {
            eprintln!("no AVX-512 or AVX2 + FMA here: nothing to test");
            return;
        }
        // (images, channels in, out, size h x w, kernel, bias): resnet's stems (one channel,
        // three), a 5 x 5 kernel, planes narrower than the padding, one image and many chunks
        for (seed, (n, c, o, (h, w), k, bias)) in [
            (40, 1, 32, (28, 28), 3, false),
            (3, 3, 64, (32, 32), 3, false),
            (2, 2, 11, (9, 12), 5, true),
            (5, 1, 6, (1, 2), 5, true),
            (1, 3, 16, (3, 1), 3, false),
        ]
        .into_iter()
        .enumerate()
        {
            let mut conv = Conv2d::new(&Init::new(seed as u64), c, o, k, cfg(1, k / 2, 1, bias));
            conv.input_grad = false;
            let g = conv.geom(&[n, c, h, w]);
            assert!(Columns::new(&g, false).is_some(), "case {seed} does not take the copies");
            let x = random(&[n, c, h, w], 60 + seed as u64);
            let dy = random(&[n, o, h, w], 70 + seed as u64);
            // (the im2col path; an input gradient wanted, so the grid's path)
            let mut run = |(off, grid): (bool, bool)| {
                SHIFTED_DISABLED.store(off, std::sync::atomic::Ordering::SeqCst);
                conv.input_grad = grid;
                conv.visit_params(&mut |p| p.grad.fill(0.0));
                let y = conv.forward(&x, true);
                let dx = conv.backward(&dy);
                SHIFTED_DISABLED.store(false, std::sync::atomic::Ordering::SeqCst);
                conv.input_grad = false;
                let mut dw = Vec::new();
                conv.visit_params(&mut |p| dw.extend_from_slice(&p.grad));
                (y.data, dx.data, dw)
            };
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let (y0, _, dw0) = pool.install(|| run((true, false)));
            let calls = COLUMNS_CALLS.load(std::sync::atomic::Ordering::SeqCst);
            let (y1, dx1, dw1) = pool.install(|| run((false, false)));
            assert!(
                COLUMNS_CALLS.load(std::sync::atomic::Ordering::SeqCst) > calls,
                "case {seed}: the forward did not take the copies"
            );
            assert!(dx1.iter().all(|&v| v == 0.0), "case {seed}: an input gradient");
            // the forward sums in im2col's order: the same bits
            assert_eq!(y0, y1, "case {seed}: forward");
            let scale = dw0.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            for (i, (u, v)) in dw0.iter().zip(&dw1).enumerate() {
                assert!((u - v).abs() <= 1e-5 * scale, "case {seed}: dw[{i}] {v} vs {u} (im2col)");
            }
            // the grid's path (taken where dX is wanted): the forward's bits; dW's blocks of
            // positions start elsewhere there
            let (y2, _, dw2) = pool.install(|| run((false, true)));
            if Shifted::new(&g).is_some() {
                assert_eq!(y1, y2, "case {seed}: forward on the grid");
                for (i, (u, v)) in dw2.iter().zip(&dw1).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-6 * scale,
                        "case {seed}: dw[{i}] {v} vs {u} (grid)"
                    );
                }
            }
        }
    }

    #[test]
    fn dot_sums_match_f64_at_every_length_of_lanes_and_tails() {
        let (x, y) = (random(&[100], 1).data, random(&[100], 2).data);
        for n in 0..100 {
            let (s, t) = dot_sums(&x[..n], &y[..n], 0.3);
            let s64: f64 = x[..n].iter().map(|&v| v as f64).sum();
            let t64: f64 =
                x[..n].iter().zip(&y[..n]).map(|(&u, &v)| u as f64 * (v as f64 - 0.3)).sum();
            assert!((s as f64 - s64).abs() < 1e-5 * (1.0 + s64.abs()), "n {n}: {s} vs {s64}");
            assert!((t as f64 - t64).abs() < 1e-5 * (1.0 + t64.abs()), "n {n}: {t} vs {t64}");
        }
    }

    #[test]
    fn plane_sums_of_a_training_forward_are_those_of_its_output() {
        // chunked (40 images) and one chunk (1 image); none unless asked, none in evaluation
        for n in [40, 1] {
            let mut conv = Conv2d::new(&Init::new(9), 3, 8, 3, cfg(1, 1, 1, true));
            let x = random(&[n, 3, 9, 11], 5);
            conv.forward(&x, true);
            assert!(conv.take_plane_sums().is_empty());
            conv.want_plane_sums = true;
            let y = conv.forward(&x, true);
            let want: Vec<(f32, f32)> = y.data.chunks(99).map(plane_sums).collect();
            assert_eq!(want.len(), n * 8);
            assert_eq!(conv.take_plane_sums(), want);
            let (s, q) = want[3];
            let plane = &y.data[3 * 99..4 * 99];
            let (s64, q64) = plane
                .iter()
                .fold((0f64, 0f64), |(a, b), &v| (a + v as f64, b + (v as f64).powi(2)));
            assert!(
                (s as f64 - s64).abs() < 1e-4 * (1.0 + s64.abs())
                    && (q as f64 - q64).abs() < 1e-4 * q64
            );
            conv.forward(&x, false);
            assert!(conv.take_plane_sums().is_empty());
        }
    }

    /// Without the input's gradient, the backward returns zeros and the same weight gradient,
    /// bit for bit, on each path: Winograd's (32 channels of 28 × 28 and 8 × 8), a 1 × 1
    /// stride-2 shortcut, a grouped one (im2col); and a stem of one channel, which takes the
    /// column copies alone and the grid with dX (the same to rounding).
    #[test]
    fn weight_gradient_alone_is_the_same() {
        // the same paths for both runs of a case
        let _no_test_switches_paths_meanwhile = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
        for (seed, (shape, o, k, c)) in [
            (vec![40, 1, 28, 28], 32, 3, cfg(1, 1, 1, false)),
            (vec![6, 32, 28, 28], 32, 3, cfg(1, 1, 1, false)),
            (vec![6, 32, 8, 8], 32, 3, cfg(1, 1, 1, true)),
            (vec![24, 32, 28, 28], 64, 1, cfg(2, 0, 1, false)),
            (vec![5, 4, 9, 9], 6, 3, cfg(1, 1, 2, true)),
        ]
        .into_iter()
        .enumerate()
        {
            let x = random(&shape, 40 + seed as u64);
            let mut conv = Conv2d::new(&Init::new(seed as u64), shape[1], o, k, c);
            let dy = random(&conv.forward(&x, true).shape, 50 + seed as u64);
            let mut grads = |input_grad: bool| {
                conv.input_grad = input_grad;
                conv.visit_params(&mut |p| p.grad.fill(0.0));
                conv.forward(&x, true);
                let dx = conv.backward(&dy);
                let mut g = Vec::new();
                conv.visit_params(&mut |p| g.extend_from_slice(&p.grad));
                (dx, g)
            };
            let (dx, all) = grads(true);
            let (zeros, alone) = grads(false);
            assert!(dx.data.iter().any(|&v| v != 0.0), "case {seed}: no input gradient");
            assert_eq!(zeros.shape, dx.shape, "case {seed}");
            assert!(zeros.data.iter().all(|&v| v == 0.0), "case {seed}: input gradient computed");
            assert!(all.iter().any(|&v| v != 0.0), "case {seed}: no weight gradient");
            if Columns::new(&conv.geom(&shape), false).is_some() {
                // alone, the stem's layer takes the column copies, whose sums round otherwise
                // (column_copies_agree_with_im2col_and_with_the_grid)
                let scale = all.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let near = all.iter().zip(&alone).all(|(u, v)| (u - v).abs() <= 1e-6 * scale);
                assert!(near, "case {seed}: weight gradient");
            } else {
                assert_eq!(all, alone, "case {seed}: weight gradient");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (seed, (shape, o, kh, kw, c)) in cases().into_iter().enumerate() {
            let mut conv = Conv2d::rect(&Init::new(seed as u64).pp("conv"), shape[1], o, kh, kw, c);
            check_layer(&mut conv, &shape, 20 + seed as u64, 1e-2);
        }
    }

    #[test]
    fn portable_gemm_path_agrees_too() {
        // with the kit's kernel off (other tests may run either path meanwhile: both are right)
        let _only_this_test_switches_paths = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
        crate::kit::simd_gemm::DISABLED.store(true, std::sync::atomic::Ordering::SeqCst);
        for (seed, (shape, o, kh, kw, c)) in cases().into_iter().enumerate().take(4) {
            let mut conv = Conv2d::rect(&Init::new(seed as u64), shape[1], o, kh, kw, c);
            let x = random(&shape, 100 + seed as u64);
            let y = conv.forward(&x, false);
            let want = direct(&conv, &x);
            for (a, b) in y.data.iter().zip(&want.data) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "case {seed}: {a} vs {b}");
            }
            check_layer(&mut conv, &shape, 40 + seed as u64, 1e-2);
        }
        crate::kit::simd_gemm::DISABLED.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn init_and_shapes_follow_pytorch() {
        let conv = Conv2d::new(&Init::new(0).pp("c"), 4, 6, 3, cfg(2, 1, 2, true));
        assert_eq!(conv.weight.shape, vec![6, 2, 3, 3]);
        assert_eq!(conv.weight.name, "c.weight");
        let bound = 1.0 / (18f32).sqrt();
        assert!(conv.weight.value.iter().all(|v| v.abs() <= bound));
        assert_eq!(conv.out_shape(4, 28, 28).unwrap(), [6, 14, 14]);
        assert_eq!(conv.out_shape(4, 7, 5).unwrap(), [6, 4, 3]);
        assert!(conv
            .out_shape(3, 8, 8)
            .unwrap_err()
            .to_string()
            .contains("expects 4 input channels, got 3"));
    }
}

/// A measurement, not a check: the forward and backward of one layer on one thread, with
/// Winograd's path and without, for the layer shapes of resnet-mini and resnet18-cifar
/// (`cargo test --release -p latent-sdk time_winograd_layers -- --ignored --nocapture`). The
/// figures in `winograd.rs` and bench/README.md come from it.
#[cfg(test)]
mod timing {
    use super::*;
    use crate::kit::gradcheck::random;

    /// The best forward and backward times of `reps` (seconds), the forward through
    /// `forward_arc` as resnet calls it (`Layer::forward` would time a copy of the input too);
    /// `NOBWD=1` the forward alone (the backward's time is then infinite).
    fn best_of(conv: &mut Conv2d, x: &Arc<Tensor>, dy: &Tensor, reps: usize) -> (f64, f64) {
        let (mut tf, mut tb) = (f64::MAX, f64::MAX);
        for _ in 0..reps {
            let t = std::time::Instant::now();
            conv.forward_arc(x.clone(), true);
            tf = tf.min(t.elapsed().as_secs_f64());
            if std::env::var("NOBWD").is_ok() {
                continue;
            }
            let t = std::time::Instant::now();
            conv.backward(dy);
            tb = tb.min(t.elapsed().as_secs_f64());
        }
        (tf, tb)
    }

    /// The stride-2 layers of resnet-mini's stages 2 and 3 (3 × 3 and the 1 × 1 shortcuts), one
    /// thread, 256 images (one thread's half of the bench's step): forward and backward, best of
    /// `REPS` (5). `ONLY=323` (channels in, kernel side) times one layer; `NOBWD=1` the forward
    /// alone (for `perf record`). Run with `MALLOC_MMAP_MAX_=0` as the step does (see
    /// `host/src/memory.rs`), or page faults of fresh buffers are timed too. Through
    /// [`best_of`] since 2026-12-05: figures from before include a copy of the input in the
    /// forward (`Layer::forward`'s), about 2 ms at 32 × 28 × 28.
    #[test]
    #[ignore]
    fn time_stride2_layers() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let n = 256;
        let only = std::env::var("ONLY").ok();
        let reps: usize = std::env::var("REPS").ok().map_or(5, |v| v.parse().unwrap());
        for (c, o, h, k) in [(32, 64, 28, 3), (64, 128, 14, 3), (32, 64, 28, 1), (64, 128, 14, 1)] {
            if only.as_ref().is_some_and(|s| *s != format!("{c}{k}")) {
                continue;
            }
            let cfg = Conv2dConfig { stride: 2, padding: k / 2, groups: 1, bias: false };
            let mut conv = Conv2d::new(&Init::new(1), c, o, k, cfg);
            // `DWONLY=1`: the weight gradient alone
            conv.input_grad = std::env::var("DWONLY").is_err();
            let oh = h / 2;
            let (x, dy) = (Arc::new(random(&[n, c, h, h], 1)), random(&[n, o, oh, oh], 2));
            let (tf, tb) = pool.install(|| best_of(&mut conv, &x, &dy, reps));
            let flop = 2.0 * (n * o * oh * oh * c * k * k) as f64;
            eprintln!(
                "{n} x {c} -> {o}, {h} x {h}, {k} x {k} stride 2: forward {:.2} ms ({:.0} GFLOP/s), \
                 backward {:.2} ms ({:.0} GFLOP/s)",
                tf * 1e3,
                flop / tf * 1e-9,
                tb * 1e3,
                2.0 * flop / tb * 1e-9
            );
        }
    }

    /// One layer given as `CONV=n,c,o,h,k,s` (images, channels in and out, side, kernel,
    /// stride; padding k / 2), one thread: forward and backward, best of `REPS` (5), through
    /// `forward_arc` as resnet calls it (no copy of the input). `NOBWD=1` the forward alone,
    /// `NODX=1` without the input gradient (as resnet's stem).
    #[test]
    #[ignore]
    fn time_conv() {
        let Ok(spec) = std::env::var("CONV") else {
            eprintln!("time_conv: set CONV=n,c,o,h,k,s");
            return;
        };
        let v: Vec<usize> =
            spec.split(',').map(|t| t.trim().parse().expect("CONV=n,c,o,h,k,s")).collect();
        let &[n, c, o, h, k, s] = &v[..] else { panic!("CONV=n,c,o,h,k,s") };
        let reps: usize = std::env::var("REPS").ok().map_or(5, |v| v.parse().unwrap());
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let cfg = Conv2dConfig { stride: s, padding: k / 2, groups: 1, bias: false };
        let mut conv = Conv2d::new(&Init::new(1), c, o, k, cfg);
        conv.want_plane_sums = true;
        conv.input_grad = std::env::var("NODX").is_err();
        let oh = (h + 2 * (k / 2) - k) / s + 1;
        let x = Arc::new(random(&[n, c, h, h], 1));
        let dy = random(&[n, o, oh, oh], 2);
        let (tf, tb) = pool.install(|| best_of(&mut conv, &x, &dy, reps));
        let flop = 2.0 * (n * o * oh * oh * c * k * k) as f64;
        eprintln!(
            "{n} x {c} -> {o}, {h} x {h}, {k} x {k} stride {s}: forward {:.2} ms ({:.0} GFLOP/s), \
             backward {:.2} ms",
            tf * 1e3,
            flop / tf * 1e-9,
            tb * 1e3,
        );
    }

    #[test]
    #[ignore]
    fn time_winograd_layers() {
        let _only_this_test_switches_paths =
            tests::SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
        // `UNPADDED=1`: the positions' slabs end to end (`winograd::slab`)
        let unpadded = std::env::var("UNPADDED").is_ok();
        crate::kit::winograd::UNPADDED.store(unpadded, std::sync::atomic::Ordering::SeqCst);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let shapes = [
            (64, 32, 28),
            (128, 64, 14),
            (256, 128, 7),
            (16, 64, 32),
            (32, 128, 16),
            (64, 256, 8),
            (128, 512, 4),
        ];
        // `SHAPE=n,c,h` times that one layer instead
        let shape: Option<Vec<usize>> = std::env::var("SHAPE")
            .ok()
            .map(|v| v.split(',').map(|t| t.trim().parse().expect("SHAPE=n,c,h")).collect());
        let shapes = match shape.as_deref() {
            Some(&[n, c, h]) => vec![(n, c, h)],
            Some(_) => panic!("SHAPE=n,c,h: images, channels, side"),
            None => shapes.to_vec(),
        };
        let only = std::env::var("ONLY").ok();
        for (n, c, h) in shapes {
            if only.as_ref().is_some_and(|s| *s != format!("{c}")) {
                continue;
            }
            let cfg = Conv2dConfig { stride: 1, padding: 1, groups: 1, bias: false };
            let mut conv = Conv2d::new(&Init::new(1), c, c, 3, cfg);
            let (x, dy) = (random(&[n, c, h, h], 1), random(&[n, c, h, h], 2));
            let mut outputs = Vec::new();
            // Winograd's path whatever the channel count (the 32-channel layer is at its threshold)
            crate::kit::winograd::ANY_CHANNELS.store(true, std::sync::atomic::Ordering::SeqCst);
            // the implicit product, F(2×2) and F(4×4) (where `winograd4::fits`), twice
            for (winograd, f4) in [(false, false), (true, false), (true, true)].repeat(2) {
                crate::kit::winograd::DISABLED
                    .store(!winograd, std::sync::atomic::Ordering::SeqCst);
                crate::kit::winograd4::DISABLED.store(!f4, std::sync::atomic::Ordering::SeqCst);
                let (mut tf, mut tb, mut y) = (f64::MAX, f64::MAX, Vec::new());
                pool.install(|| {
                    for _ in 0..5 {
                        let t = std::time::Instant::now();
                        y = conv.forward(&x, true).data;
                        tf = tf.min(t.elapsed().as_secs_f64());
                        let t = std::time::Instant::now();
                        conv.backward(&dy);
                        tb = tb.min(t.elapsed().as_secs_f64());
                    }
                });
                outputs.push(y);
                eprintln!(
                    "{n} x {c} x {h} x {h}, {}: forward {:.2} ms, backward {:.2} ms (best of 5)",
                    match (
                        winograd,
                        f4 && (crate::kit::winograd4::fits(h, h)
                            || crate::kit::winograd4::narrow_fits(h, h))
                    ) {
                        (false, _) => "implicit",
                        (true, false) => "F(2x2)  ",
                        (true, true) => "F(4x4)  ",
                    },
                    tf * 1e3,
                    tb * 1e3
                );
            }
            crate::kit::winograd::DISABLED.store(false, std::sync::atomic::Ordering::SeqCst);
            crate::kit::winograd4::DISABLED.store(false, std::sync::atomic::Ordering::SeqCst);
            // dW alone: Winograd's against the implicit product, dX by Winograd in both
            crate::kit::winograd::DW_ALWAYS.store(true, std::sync::atomic::Ordering::SeqCst);
            for implicit in [true, false, true, false] {
                crate::kit::winograd::DW_DISABLED
                    .store(implicit, std::sync::atomic::Ordering::SeqCst);
                let mut tb = f64::MAX;
                pool.install(|| {
                    for _ in 0..5 {
                        conv.forward(&x, true);
                        let t = std::time::Instant::now();
                        conv.backward(&dy);
                        tb = tb.min(t.elapsed().as_secs_f64());
                    }
                });
                let how = if implicit { "implicit" } else { "winograd" };
                eprintln!(
                    "{n} x {c} x {h} x {h}, dW {how}: backward {:.2} ms (best of 5)",
                    tb * 1e3
                );
            }
            crate::kit::winograd::DW_DISABLED.store(false, std::sync::atomic::Ordering::SeqCst);
            crate::kit::winograd::DW_ALWAYS.store(false, std::sync::atomic::Ordering::SeqCst);
            crate::kit::winograd::ANY_CHANNELS.store(false, std::sync::atomic::Ordering::SeqCst);
            let scale = outputs[0].iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            for (out, tol) in [(&outputs[1], 2e-6), (&outputs[2], 2e-5)] {
                for (a, b) in outputs[0].iter().zip(out) {
                    assert!((a - b).abs() <= tol * scale, "the paths disagree: {a} vs {b}");
                }
            }
        }
    }
}
