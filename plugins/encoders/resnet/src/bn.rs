//! Batch norm with an optional fused ReLU on owned buffers: the maths, defaults and parameter
//! names of [`latent_sdk::kit::BatchNorm`] (`[N, C, H, W]`), in two passes over memory each way.
//!
//! ```text
//! forward (train):  μ_c, σ²_c over N·H·W;  z = γ_c·(x − μ_c)/sqrt(σ²_c + ε) + β_c;  y = ReLU(z) or z
//! backward:         g = dy ⊙ [z > 0] (or dy);  x̂ = (x − μ)/σ
//!                   dγ += Σ g·x̂,  dβ += Σ g,  dx = γ/σ · (g − mean(g) − x̂·mean(g·x̂))
//! ```
//! Only the input `x` is kept for backward (moved, not copied); `x̂` and the ReLU mask are
//! recomputed from it. Sums run over 8 lanes per plane in f32 and across planes in f64.
//!
//! With `groups` G > 1 the batch is G equal consecutive slices (the views of a multi-view
//! batch) and training statistics are taken per slice, with the running statistics updated
//! once per slice in order: the same maths, gradients included, as G separate passes of
//! PyTorch's `BatchNorm2d` (lightly's examples, one encoder pass per view; MoCo's
//! `SplitBatchNorm`). Evaluation uses the running statistics whatever G is.
//!
//! With `sync` (a data-parallel run's [`Collective`]) the statistics of each slice span that
//! slice on every rank, as PyTorch's `SyncBatchNorm`: the forward pass all-reduces
//! (Σx, Σx², count) per (group, channel), the backward pass (Σg, Σg·(x − μ)). γ and β get
//! this rank's share of their gradient only: the host's all-reduce of the encoder's gradients
//! adds the ranks' shares.

use latent_sdk::kit::conv::{dot_sums, plane_sums};
use latent_sdk::kit::simd_gemm::with_simd;
use latent_sdk::kit::{Init, Module, Param, Tensor};
use latent_sdk::prelude::{Collective, ParamRole};
use rayon::prelude::*;
use std::mem::MaybeUninit;

const PAR_MIN: usize = 1 << 15;

/// A residual block's ReLU mask `[z + r > 0]` ([`BnRelu::forward_add_relu`]), one bit per
/// value: 16 to a word, each plane's bits from a word of its own. A byte per value was a
/// 12.8 MB write in the forward and a read in the backward at resnet-mini's first stage.
#[derive(Default)]
pub struct ReluMask {
    words: Vec<u16>,
    /// Values per plane.
    plane: usize,
}

impl ReluMask {
    /// Words per plane.
    fn per_plane(&self) -> usize {
        self.plane.div_ceil(16)
    }
    /// Values covered (planes × values per plane; 0 when empty).
    pub fn len(&self) -> usize {
        self.words.len().checked_div(self.per_plane()).unwrap_or(0) * self.plane
    }
    /// True when no value is covered (evaluation).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
    /// Value `k` of plane `i`.
    pub fn get(&self, i: usize, k: usize) -> bool {
        assert!(k < self.plane, "relu mask: value {k} of a plane of {}", self.plane);
        self.words[i * self.per_plane() + k / 16] >> (k % 16) & 1 == 1
    }
    /// `g ⊙ mask` in place on the planes of `g`, from plane `first` (whole planes).
    pub fn apply(&self, first: usize, g: &mut [f32]) {
        let (s, pp) = (self.plane, self.per_plane());
        assert!(s > 0 && g.len().is_multiple_of(s), "relu mask: a gradient of whole planes");
        let words = &self.words[first * pp..][..g.len() / s * pp];
        for (p, w) in g.chunks_mut(s).zip(words.chunks(pp)) {
            #[cfg(target_arch = "x86_64")]
            if latent_sdk::kit::simd_gemm::avx512() {
                // SAFETY: AVX-512 is present; `w` holds `s.div_ceil(16)` words for `p`'s `s` values
                unsafe { mask_plane(p, w) };
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            if latent_sdk::kit::simd_gemm::available() {
                // SAFETY: AVX2 is present (with FMA, or AVX-512); the same words
                unsafe { mask_plane_avx2(p, w) };
                continue;
            }
            mask_plane_scalar(p, w);
        }
    }
}

/// [`mask_plane`] without AVX-512: a select, not a branch (the mask is as good as random).
fn mask_plane_scalar(p: &mut [f32], w: &[u16]) {
    for (k, d) in p.iter_mut().enumerate() {
        *d = if w[k / 16] >> (k % 16) & 1 == 1 { *d } else { 0.0 };
    }
}

/// [`add_relu_plane`] without AVX-512.
fn add_relu_plane_scalar(
    (a, b): (f32, f32),
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    add: &[f32],
    w: &mut [u16],
) {
    w.fill(0);
    for (j, ((d, &v), &r)) in dst.iter_mut().zip(src).zip(add).enumerate() {
        let z = a * v + b + r;
        w[j / 16] |= ((z > 0.0) as u16) << (j % 16);
        d.write(z.max(0.0));
    }
}

/// The lanes of a 16-wide step that hold the first `n` values (all 16 from `n` = 16 on).
fn first_lanes(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// `p[k] = 0` where bit `k` of `w` is clear, 16 values a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn mask_plane(p: &mut [f32], w: &[u16]) {
    use std::arch::x86_64::*;
    for (k, &bits) in (0..p.len()).step_by(16).zip(w) {
        let lanes = first_lanes(p.len() - k);
        let at = p.as_mut_ptr().add(k);
        _mm512_mask_storeu_ps(at, lanes, _mm512_maskz_loadu_ps(bits & lanes, at));
    }
}

/// One plane of a residual end: `dst = max(a·x + b + r, 0)` and the words of `[a·x + b + r >
/// 0]`, 16 values a step, rounded as the scalar loop (a product, then two sums).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_relu_plane(
    (a, b): (f32, f32),
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    add: &[f32],
    w: &mut [u16],
) {
    use std::arch::x86_64::*;
    let (av, bv, zero) = (_mm512_set1_ps(a), _mm512_set1_ps(b), _mm512_setzero_ps());
    for (k, bits) in (0..src.len()).step_by(16).zip(w.iter_mut()) {
        let lanes = first_lanes(src.len() - k);
        let v = _mm512_maskz_loadu_ps(lanes, src.as_ptr().add(k));
        let r = _mm512_maskz_loadu_ps(lanes, add.as_ptr().add(k));
        let z = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(av, v), bv), r);
        *bits = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(z, zero) & lanes;
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(k) as *mut f32, lanes, _mm512_max_ps(z, zero));
    }
}

/// The AVX2 masks of lanes 0–7 and 8–15 of `bits` (all ones where the lane's bit is set).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn lane_masks(bits: u16) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let (m, lo) = (_mm256_set1_epi32(bits as i32), _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128));
    let hi = _mm256_slli_epi32::<8>(lo);
    (
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(m, lo), lo)),
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(m, hi), hi)),
    )
}

/// [`mask_plane`] on AVX2: whole steps of 16 values as an AND with the lanes' masks (a cleared
/// lane becomes +0.0, as the select writes it), the tail by the scalar loop. The scalar loop
/// alone was 4 % of a resnet-mini step on Zen 3.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mask_plane_avx2(p: &mut [f32], w: &[u16]) {
    use std::arch::x86_64::*;
    let whole = p.len() / 16;
    for (k, &bits) in w[..whole].iter().enumerate() {
        let at = p.as_mut_ptr().add(16 * k);
        let (m0, m1) = lane_masks(bits);
        _mm256_storeu_ps(at, _mm256_and_ps(_mm256_loadu_ps(at), m0));
        _mm256_storeu_ps(at.add(8), _mm256_and_ps(_mm256_loadu_ps(at.add(8)), m1));
    }
    mask_plane_scalar(&mut p[16 * whole..], &w[whole..]);
}

/// [`add_relu_plane`] on AVX2: whole steps of 16 values in vectors, rounded as the scalar loop
/// (a product, then two sums), the tail by the scalar loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_relu_plane_avx2(
    (a, b): (f32, f32),
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    add: &[f32],
    w: &mut [u16],
) {
    use std::arch::x86_64::*;
    let (av, bv, zero) = (_mm256_set1_ps(a), _mm256_set1_ps(b), _mm256_setzero_ps());
    let whole = src.len() / 16;
    for (k, bits) in w[..whole].iter_mut().enumerate() {
        let mut word = 0u16;
        for half in 0..2 {
            let at = 16 * k + 8 * half;
            let v = _mm256_loadu_ps(src.as_ptr().add(at));
            let r = _mm256_loadu_ps(add.as_ptr().add(at));
            let z = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(av, v), bv), r);
            let gt = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(z, zero)) as u16;
            word |= gt << (8 * half);
            _mm256_storeu_ps(dst.as_mut_ptr().add(at) as *mut f32, _mm256_max_ps(z, zero));
        }
        *bits = word;
    }
    let t = 16 * whole;
    add_relu_plane_scalar((a, b), &mut dst[t..], &src[t..], &add[t..], &mut w[whole..]);
}

/// Batch norm over axis 1 of `[N, C, ...]`, with a ReLU after it when `relu`.
pub struct BnRelu {
    /// γ `[C]`.
    pub weight: Param,
    /// β `[C]`.
    pub bias: Param,
    /// Running mean `[C]` (buffer).
    pub running_mean: Param,
    /// Running unbiased variance `[C]` (buffer).
    pub running_var: Param,
    /// ε = 1e-5.
    pub eps: f32,
    /// Running-average momentum 0.1.
    pub momentum: f32,
    /// ReLU after the norm.
    pub relu: bool,
    /// Training statistics per this many equal slices of the batch (1: the whole batch).
    pub groups: usize,
    /// Training statistics over every rank of a data-parallel run (none: this process's batch).
    pub sync: Option<Collective>,
    cache: Option<Cache>,
    /// The saved input's buffer once the backward is done with it ([`BnRelu::take_spare`]).
    spare: Vec<f32>,
}

/// Sums `pairs` (and the count `m`, appended) over the ranks of `sync`, in place; returns the
/// global count.
fn all_reduce(sync: Option<Collective>, pairs: &mut [(f64, f64)], m: f64) -> f64 {
    let Some(c) = sync else { return m };
    let mut flat: Vec<f64> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    flat.push(m);
    // the host ends the run when the communication fails; the message says where
    assert!(
        (c.all_reduce_sum)(flat.as_mut_slice().into()),
        "synchronised batch norm: the all-reduce across {} ranks failed",
        c.world
    );
    for (k, p) in pairs.iter_mut().enumerate() {
        *p = (flat[2 * k], flat[2 * k + 1]);
    }
    flat[flat.len() - 1]
}

struct Cache {
    x: Tensor,
    /// Per (group, channel) in training, per channel in evaluation.
    mean: Vec<f32>,
    inv: Vec<f32>,
    /// Images per statistics group (the whole batch in evaluation, so that a plane's index
    /// [`stat_index`] is its channel).
    per_group: usize,
    train: bool,
}

/// Runs `f(plane)` over the `[S]` planes of `data`, in parallel when large.
fn planes<T: Send>(data: &[f32], s: usize, f: impl Fn(&[f32]) -> T + Sync + Send) -> Vec<T> {
    if data.len() >= PAR_MIN {
        data.par_chunks(s).map(f).collect()
    } else {
        data.chunks(s).map(f).collect()
    }
}

fn planes_mut(data: &mut [f32], s: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if data.len() >= PAR_MIN {
        data.par_chunks_mut(s).enumerate().for_each(|(i, p)| f(i, p));
    } else {
        data.chunks_mut(s).enumerate().for_each(|(i, p)| f(i, p));
    }
}

/// f64 totals of per-plane pairs per (group, channel), index `group · c + channel`, for planes
/// `i = image · c + channel` and `per_group` images a group.
fn per_channel(pairs: &[(f32, f32)], c: usize, per_group: usize) -> Vec<(f64, f64)> {
    let groups = (pairs.len() / c).div_ceil(per_group).max(1);
    let mut out = vec![(0f64, 0f64); groups * c];
    // image by image, in plane order as `stat_index` numbers them (two divisions per plane
    // made this 2.5 ms of a resnet-mini step, on one thread while the others waited)
    for (img, planes) in pairs.chunks(c).enumerate() {
        let k0 = img / per_group * c;
        for (o, &(a, b)) in out[k0..k0 + planes.len()].iter_mut().zip(planes) {
            o.0 += a as f64;
            o.1 += b as f64;
        }
    }
    out
}

/// The (group, channel) statistics index of plane `i`.
#[inline]
fn stat_index(i: usize, c: usize, per_group: usize) -> usize {
    i / c / per_group * c + i % c
}

impl BnRelu {
    /// `channels` channels, PyTorch defaults, parameters `<prefix>.weight` etc.
    pub fn new(init: &Init, channels: usize, relu: bool) -> BnRelu {
        BnRelu {
            weight: init.constant("weight", vec![channels], 1.0, ParamRole::NoDecay),
            bias: init.constant("bias", vec![channels], 0.0, ParamRole::NoDecay),
            running_mean: init.constant("running_mean", vec![channels], 0.0, ParamRole::Buffer),
            running_var: init.constant("running_var", vec![channels], 1.0, ParamRole::Buffer),
            eps: 1e-5,
            momentum: 0.1,
            relu,
            groups: 1,
            sync: None,
            cache: None,
            spare: Vec::new(),
        }
    }

    fn layout(&self, shape: &[usize]) -> (usize, usize, usize) {
        let c = self.weight.value.len();
        assert!(
            shape.len() >= 2 && shape[1] == c,
            "batch-norm of {c} channels got shape {shape:?}"
        );
        (shape[0], c, shape[2..].iter().product::<usize>().max(1))
    }

    /// Normalises `x` (consumed; kept for backward when `train`). In training the batch must
    /// split into [`BnRelu::groups`] equal slices.
    pub fn forward(&mut self, x: Tensor, train: bool) -> Tensor {
        self.forward_with_sums(x, train, Vec::new())
    }

    /// As [`BnRelu::forward`], with each plane's `(Σ x, Σ x²)` already taken (by the
    /// convolution that made `x`: [`latent_sdk::kit::Conv2d::want_plane_sums`]), in plane
    /// order; an empty `sums` has them computed here.
    pub fn forward_with_sums(&mut self, x: Tensor, train: bool, sums: Vec<(f32, f32)>) -> Tensor {
        self.forward_impl(x, train, sums, None)
    }

    /// As [`BnRelu::forward_with_sums`] (for a norm without its own ReLU), then a residual
    /// block's end in the same pass: `y = max(z + r, 0)` for the residual `add`, and in
    /// training `mask = [z + r > 0]` (empty in evaluation). Two passes over the block's output
    /// (the norm's write, then the sum's read and write) become one.
    pub fn forward_add_relu(
        &mut self,
        x: Tensor,
        train: bool,
        sums: Vec<(f32, f32)>,
        add: &[f32],
        mask: &mut ReluMask,
    ) -> Tensor {
        assert!(!self.relu, "batch-norm: a residual's ReLU after the norm's own");
        assert_eq!(add.len(), x.len(), "batch-norm: residual length");
        let (n, c, s) = self.layout(&x.shape);
        mask.plane = s;
        let words = if train { n * c * mask.per_plane() } else { 0 };
        // every word is written below: the step before's are not cleared first
        mask.words.resize(words, 0);
        let pp = mask.per_plane();
        self.forward_impl(x, train, sums, Some((add, &mut mask.words, pp)))
    }

    fn forward_impl(
        &mut self,
        x: Tensor,
        train: bool,
        sums: Vec<(f32, f32)>,
        residual: Option<(&[f32], &mut [u16], usize)>,
    ) -> Tensor {
        let (n, c, s) = self.layout(&x.shape);
        let groups = if train { self.groups.max(1) } else { 1 };
        assert!(
            n % groups == 0,
            "batch-norm statistics per {groups} groups need a batch that splits evenly, got {n} images"
        );
        let per_group = (n / groups).max(1);
        let m = per_group * s;
        let (mean, inv) = if train {
            assert!(
                m > 1,
                "batch-norm in training needs more than one value per channel, got shape {:?}",
                x.shape
            );
            let pairs = if sums.len() == n * c {
                sums
            } else {
                planes(&x.data, s, |p| with_simd(|| plane_sums(p)))
            };
            let mut sums = per_channel(&pairs, c, per_group);
            let m = all_reduce(self.sync, &mut sums, m as f64) as usize;
            let mo = self.momentum;
            let mut mean = Vec::with_capacity(sums.len());
            let mut inv = Vec::with_capacity(sums.len());
            // group by group, as that many separate passes would update the running statistics
            for (k, &(a, b)) in sums.iter().enumerate() {
                let ch = k % c;
                let mu = a / m as f64;
                let var = (b / m as f64 - mu * mu).max(0.0);
                self.running_mean.value[ch] =
                    (1.0 - mo) * self.running_mean.value[ch] + mo * mu as f32;
                self.running_var.value[ch] = (1.0 - mo) * self.running_var.value[ch]
                    + mo * (var * m as f64 / (m - 1) as f64) as f32;
                mean.push(mu as f32);
                inv.push(1.0 / (var as f32 + self.eps).sqrt());
            }
            (mean, inv)
        } else {
            (
                self.running_mean.value.clone(),
                self.running_var.value.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect(),
            )
        };
        // z = a_k·x + b_k, k the plane's (group, channel)
        let a: Vec<f32> = (0..mean.len()).map(|k| self.weight.value[k % c] * inv[k]).collect();
        let b: Vec<f32> =
            (0..mean.len()).map(|k| self.bias.value[k % c] - mean[k] * a[k]).collect();
        let relu = self.relu;
        let apply = |i: usize, dst: &mut [MaybeUninit<f32>], src: &[f32]| {
            let k = stat_index(i, c, per_group);
            let (a, b) = (a[k], b[k]);
            if relu {
                dst.iter_mut().zip(src).for_each(|(d, &v)| _ = d.write((a * v + b).max(0.0)));
            } else {
                dst.iter_mut().zip(src).for_each(|(d, &v)| _ = d.write(a * v + b));
            }
        };
        // z + r, then the ReLU (and its mask, where there is one): the sum rounded as the
        // separate passes rounded it
        let apply_add =
            |i: usize, dst: &mut [MaybeUninit<f32>], src: &[f32], add: &[f32], m: &mut [u16]| {
                let k = stat_index(i, c, per_group);
                let (a, b) = (a[k], b[k]);
                if m.is_empty() {
                    for ((d, &v), &r) in dst.iter_mut().zip(src).zip(add) {
                        d.write((a * v + b + r).max(0.0));
                    }
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if latent_sdk::kit::simd_gemm::avx512() {
                    // SAFETY: AVX-512 is present; `m` holds a word per 16 of the plane's values
                    unsafe { add_relu_plane((a, b), dst, src, add, m) };
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if latent_sdk::kit::simd_gemm::available() {
                    // SAFETY: AVX2 is present (with FMA, or AVX-512); the same words
                    unsafe { add_relu_plane_avx2((a, b), dst, src, add, m) };
                    return;
                }
                add_relu_plane_scalar((a, b), dst, src, add, m);
            };
        // written once, without zeroing it first (the zeroing was a pass of its own over
        // every output, as memset)
        let mut y: Vec<f32> = Vec::with_capacity(x.len());
        let out = &mut y.spare_capacity_mut()[..x.len()];
        let par = x.len() >= PAR_MIN;
        match residual {
            None if par => out
                .par_chunks_mut(s)
                .zip(x.data.par_chunks(s))
                .enumerate()
                .for_each(|(i, (d, v))| with_simd(|| apply(i, d, v))),
            None => out
                .chunks_mut(s)
                .zip(x.data.chunks(s))
                .enumerate()
                .for_each(|(i, (d, v))| with_simd(|| apply(i, d, v))),
            // the mask in chunks of `s` too (empty in evaluation: chunks of nothing)
            Some((add, mask, per_plane)) => {
                let masks: Vec<&mut [u16]> = if mask.is_empty() {
                    (0..n * c).map(|_| &mut [][..]).collect()
                } else {
                    mask.chunks_mut(per_plane).collect()
                };
                let run = |(i, ((d, v), (r, m))): AddChunk| with_simd(|| apply_add(i, d, v, r, m));
                if par {
                    out.par_chunks_mut(s)
                        .zip(x.data.par_chunks(s))
                        .zip(add.par_chunks(s).zip(masks.into_par_iter()))
                        .enumerate()
                        .for_each(run);
                } else {
                    out.chunks_mut(s)
                        .zip(x.data.chunks(s))
                        .zip(add.chunks(s).zip(masks))
                        .enumerate()
                        .for_each(run);
                }
            }
        }
        // SAFETY: the chunks of `s` cover all x.len() = n·c·s values of `out`, and `apply`
        // writes every value of its chunk (src and dst have the same length s)
        unsafe { y.set_len(x.len()) };
        let y = Tensor::new(x.shape.clone(), y);
        self.cache = Some(Cache { x, mean, inv, per_group, train });
        y
    }

    /// The backward's first pass as a function of a chunk of whole images of `dy` starting at
    /// image `first`, for the layer that makes `dy` to run on each chunk while it is in cache
    /// (`latent_sdk::kit::Conv2d::backward_then`): `g = dy ⊙ [z > 0]` written back (with the
    /// ReLU), and each plane's `(Σ g, Σ g·(x − μ))`, which [`BnRelu::backward_with_sums`]
    /// takes. The same arithmetic, plane by plane, as the pass of [`BnRelu::backward`].
    pub fn grad_sums(&self) -> impl Fn(usize, &mut [f32]) -> Vec<(f32, f32)> + Sync + '_ {
        let cache = self.cache.as_ref().expect("batch-norm: backward without a forward");
        let (_, c, s) = self.layout(&cache.x.shape);
        move |first, chunk| {
            chunk
                .chunks_mut(s)
                .enumerate()
                .map(|(j, p)| with_simd(|| self.plane_pass(cache, (c, s), first * c + j, p)))
                .collect()
        }
    }

    /// Plane `i` of the backward's first pass (see [`BnRelu::grad_sums`]).
    #[inline]
    fn plane_pass(
        &self,
        cache: &Cache,
        (c, s): (usize, usize),
        i: usize,
        p: &mut [f32],
    ) -> (f32, f32) {
        let (g, beta) = (&self.weight.value, &self.bias.value);
        let Cache { x, mean, inv, per_group, .. } = cache;
        let (ch, k) = (i % c, stat_index(i, c, *per_group));
        let xs = &x.data[i * s..(i + 1) * s];
        if self.relu {
            let (a, b) = (g[ch] * inv[k], beta[ch] - mean[k] * g[ch] * inv[k]);
            for (d, &v) in p.iter_mut().zip(xs) {
                *d = if a * v + b > 0.0 { *d } else { 0.0 };
            }
        }
        dot_sums(p, xs, mean[k])
    }

    /// d loss / d input for d loss / d output `dy` (consumed, reused for the result).
    pub fn backward(&mut self, dy: Tensor) -> Tensor {
        self.backward_with_sums(dy, Vec::new())
    }

    /// As [`BnRelu::backward`], with the first pass already made over `dy` by
    /// [`BnRelu::grad_sums`] (its sums, in plane order); empty `sums` make it here.
    pub fn backward_with_sums(&mut self, mut dy: Tensor, sums: Vec<(f32, f32)>) -> Tensor {
        let cache = self.cache.take().expect("batch-norm: backward without a forward");
        assert_eq!(dy.shape, cache.x.shape, "batch-norm backward: gradient shape");
        let (n, c, s) = self.layout(&cache.x.shape);
        let pairs: Vec<(f32, f32)> = if sums.len() == n * c {
            sums
        } else {
            // one pass: g = dy ⊙ [z > 0] (z = a·x + b) written back, with Σ g and Σ g·(x − μ) = Σ g·x̂ / inv
            let pass =
                |i: usize, p: &mut [f32]| with_simd(|| self.plane_pass(&cache, (c, s), i, p));
            if dy.len() >= PAR_MIN {
                dy.data.par_chunks_mut(s).enumerate().map(|(i, p)| pass(i, p)).collect()
            } else {
                dy.data.chunks_mut(s).enumerate().map(|(i, p)| pass(i, p)).collect()
            }
        };
        self.finish_backward(cache, pairs, Gradient::InPlace(dy))
    }

    /// As [`BnRelu::backward_with_sums`] for a norm without a ReLU whose gradient `dy` another
    /// layer reads too (a residual block's output gradient feeds its second norm and its
    /// shortcut): `dy` is left as it is and the input gradient is written over the saved
    /// input instead, so that no copy of `dy` is made. `sums` must hold every plane's
    /// ([`BnRelu::grad_sums`]); there is no spare buffer afterwards.
    pub fn backward_beside(&mut self, dy: &Tensor, sums: Vec<(f32, f32)>) -> Tensor {
        let cache = self.cache.take().expect("batch-norm: backward without a forward");
        assert_eq!(dy.shape, cache.x.shape, "batch-norm backward: gradient shape");
        let (n, c, _) = self.layout(&cache.x.shape);
        assert!(!self.relu, "batch-norm: a backward beside its gradient with a ReLU");
        assert_eq!(sums.len(), n * c, "batch-norm backward: sums of {} planes", n * c);
        self.finish_backward(cache, sums, Gradient::Beside(dy))
    }

    /// The backward from its first pass's sums: dγ, dβ, then `dx` (in `dy`'s buffer or over
    /// the saved input).
    fn finish_backward(&mut self, cache: Cache, pairs: Vec<(f32, f32)>, dy: Gradient) -> Tensor {
        let Cache { mut x, mean, inv, per_group, train } = cache;
        let (_, c, s) = self.layout(&x.shape);
        let g = &self.weight.value;
        // statistics index of plane i: its (group, channel); its channel in evaluation
        let at = |i: usize| stat_index(i, c, per_group);
        let mut raw = per_channel(&pairs, c, per_group);
        // this rank's share of dγ and dβ; the means below span every rank when synchronised
        for (k, &(sg, sgx)) in raw.iter().enumerate() {
            self.bias.grad[k % c] += sg as f32;
            self.weight.grad[k % c] += (inv[k] as f64 * sgx) as f32;
        }
        let m = (per_group * s) as f64;
        let m = if train { all_reduce(self.sync, &mut raw, m) } else { m };
        let mut mg = vec![0f32; raw.len()];
        let mut mgx = vec![0f32; raw.len()];
        for (k, &(sg, sgx)) in raw.iter().enumerate() {
            let sgxhat = inv[k] as f64 * sgx;
            mg[k] = (sg / m) as f32;
            mgx[k] = (sgxhat / m) as f32;
        }
        // dx of plane i from its gradient value d and input value v
        let dx = |i: usize| {
            let (ch, k) = (i % c, at(i));
            let (kk, mu, is) = (g[ch] * inv[k], mean[k], inv[k]);
            let (m0, m1) = (mg[k], mgx[k]);
            move |d: f32, v: f32| {
                if train {
                    kk * (d - m0 - (v - mu) * is * m1)
                } else {
                    d * kk
                }
            }
        };
        match dy {
            Gradient::InPlace(mut dy) => {
                let xd = &x.data;
                planes_mut(&mut dy.data, s, |i, p| {
                    let f = dx(i);
                    with_simd(|| {
                        for (d, &v) in p.iter_mut().zip(&xd[i * s..(i + 1) * s]) {
                            *d = f(*d, v);
                        }
                    })
                });
                self.spare = x.data;
                dy
            }
            Gradient::Beside(dy) => {
                let gd = &dy.data;
                planes_mut(&mut x.data, s, |i, p| {
                    let f = dx(i);
                    with_simd(|| {
                        for (v, &d) in p.iter_mut().zip(&gd[i * s..(i + 1) * s]) {
                            *v = f(d, *v);
                        }
                    })
                });
                x
            }
        }
    }

    /// The buffer of the last backward's saved input (the convolution's output), dead now:
    /// the convolution before takes it for its input gradient
    /// ([`latent_sdk::kit::Conv2d::recycle_input_grad`]). Empty if there is none.
    pub fn take_spare(&mut self) -> Vec<f32> {
        std::mem::take(&mut self.spare)
    }
}

impl Module for BnRelu {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
        f(&mut self.running_mean);
        f(&mut self.running_var);
    }
}

/// Where [`BnRelu::finish_backward`] writes the input gradient: over `dy`, or over the saved
/// input beside a `dy` that is left as it is.
enum Gradient<'a> {
    InPlace(Tensor),
    Beside(&'a Tensor),
}

/// Plane `i` of a residual end's pass: (output, input), (residual, mask).
type AddChunk<'a> = (usize, ((&'a mut [MaybeUninit<f32>], &'a [f32]), (&'a [f32], &'a mut [u16])));

#[cfg(test)]
mod tests {
    use super::*;
    use latent_sdk::kit::gradcheck::random;
    use latent_sdk::kit::{BatchNorm, Layer, Relu};

    /// The residual end's plane and the mask's use, with AVX-512 and without, write the same
    /// bits, on planes shorter and longer than a vector, whole vectors and not.
    #[test]
    fn the_mask_words_are_the_same_with_simd_and_without() {
        for s in [1, 7, 15, 16, 17, 32, 49, 196] {
            let (x, r, g) = (random(&[s], 1).data, random(&[s], 2).data, random(&[s], 3).data);
            let (a, b) = (0.9f32, -0.05f32);
            let words = s.div_ceil(16);
            let mut scalar = (vec![MaybeUninit::new(7.0f32); s], vec![u16::MAX; words]);
            add_relu_plane_scalar((a, b), &mut scalar.0, &x, &r, &mut scalar.1);
            let y0: Vec<u32> =
                scalar.0.iter().map(|v| unsafe { v.assume_init() }.to_bits()).collect();
            let mut g0 = g.clone();
            mask_plane_scalar(&mut g0, &scalar.1);
            let want: Vec<bool> = (0..s).map(|k| a * x[k] + b + r[k] > 0.0).collect();
            let got: Vec<bool> = (0..s).map(|k| scalar.1[k / 16] >> (k % 16) & 1 == 1).collect();
            assert_eq!(got, want, "{s} values: the scalar mask");
            #[cfg(target_arch = "x86_64")]
            if latent_sdk::kit::simd_gemm::avx512() {
                let mut wide = (vec![MaybeUninit::new(7.0f32); s], vec![u16::MAX; words]);
                // SAFETY: AVX-512 is present; one word per 16 values
                unsafe { add_relu_plane((a, b), &mut wide.0, &x, &r, &mut wide.1) };
                let y1: Vec<u32> =
                    wide.0.iter().map(|v| unsafe { v.assume_init() }.to_bits()).collect();
                assert_eq!((y1, &wide.1), (y0.clone(), &scalar.1), "{s} values: the plane");
                let mut g1 = g.clone();
                // SAFETY: as above
                unsafe { mask_plane(&mut g1, &wide.1) };
                assert_eq!(g1, g0, "{s} values: the mask applied");
            }
            #[cfg(target_arch = "x86_64")]
            if latent_sdk::kit::simd_gemm::available() {
                let mut wide = (vec![MaybeUninit::new(7.0f32); s], vec![u16::MAX; words]);
                // SAFETY: AVX2 is present; one word per 16 values
                unsafe { add_relu_plane_avx2((a, b), &mut wide.0, &x, &r, &mut wide.1) };
                let y1: Vec<u32> =
                    wide.0.iter().map(|v| unsafe { v.assume_init() }.to_bits()).collect();
                assert_eq!((y1, &wide.1), (y0, &scalar.1), "{s} values: the plane, AVX2");
                let mut g1 = g.clone();
                // SAFETY: as above
                unsafe { mask_plane_avx2(&mut g1, &wide.1) };
                assert_eq!(g1, g0, "{s} values: the mask applied, AVX2");
            }
        }
    }

    /// The residual's end in the norm's pass is bitwise the norm, then `max(y + r, 0)` with its
    /// mask, as separate passes: in training (statistics per group too) and in evaluation, on
    /// the serial and the parallel paths.
    #[test]
    fn add_relu_in_the_norms_pass_is_the_separate_passes() {
        for (shape, train, groups) in [
            (vec![4, 3, 5, 6], true, 1),
            (vec![4, 3, 5, 6], true, 2),
            (vec![2, 5, 3, 1], false, 1),
            (vec![64, 4, 16, 16], true, 1),
            (vec![64, 4, 16, 16], false, 1),
        ] {
            let c = shape[1];
            let (x, r) = (random(&shape, 7), random(&shape, 8));
            let mut norms = [0, 1].map(|_| BnRelu::new(&Init::new(1), c, false));
            for bn in &mut norms {
                bn.weight.value = (0..c).map(|i| 0.7 + 0.2 * i as f32).collect();
                bn.bias.value = (0..c).map(|i| 0.1 * i as f32 - 0.2).collect();
                bn.groups = groups;
            }
            let [a, b] = &mut norms;
            let mut y = a.forward(x.clone(), train);
            let want_mask: Vec<bool> = y
                .data
                .iter_mut()
                .zip(&r.data)
                .map(|(v, &r)| {
                    let z = *v + r;
                    *v = z.max(0.0);
                    z > 0.0
                })
                .collect();
            // a mask left from a step of another shape, all bits set
            let mut mask = ReluMask { words: vec![u16::MAX; 5], plane: 3 };
            let got = b.forward_add_relu(x.clone(), train, Vec::new(), &r.data, &mut mask);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.data), bits(&y.data), "{shape:?} train {train}");
            if train {
                let s: usize = shape[2..].iter().product();
                assert_eq!(mask.len(), want_mask.len(), "{shape:?}: mask length");
                let got_mask: Vec<bool> =
                    (0..want_mask.len()).map(|k| mask.get(k / s, k % s)).collect();
                assert_eq!(got_mask, want_mask, "{shape:?}: mask");
                // and the mask applied to a gradient from any whole plane on
                let g = random(&shape, 9);
                let first = 1;
                let mut got_g = g.data[first * s..].to_vec();
                mask.apply(first, &mut got_g);
                let want_g: Vec<f32> = g.data[first * s..]
                    .iter()
                    .zip(&want_mask[first * s..])
                    .map(|(&d, &m)| if m { d } else { 0.0 })
                    .collect();
                assert_eq!(bits(&got_g), bits(&want_g), "{shape:?}: the mask applied");
            } else {
                assert!(mask.is_empty(), "{shape:?}: a mask in evaluation");
            }
            assert_eq!(bits(&a.running_mean.value), bits(&b.running_mean.value));
            assert_eq!(bits(&a.running_var.value), bits(&b.running_var.value));
        }
    }

    /// The backward's first pass made chunk by chunk by [`BnRelu::grad_sums`] (as a
    /// convolution's `backward_then` makes it, chunks of whole images), then
    /// `backward_with_sums` (or, without the ReLU, `backward_beside`, leaving `dy` as it was),
    /// is bitwise the backward in one call: gradients of the input, γ and β, with and without
    /// the ReLU, with statistics per group, serial and parallel.
    #[test]
    fn grad_sums_by_chunks_then_the_backward_is_the_backward() {
        for (shape, relu, groups, chunk) in [
            (vec![4, 3, 5, 6], true, 1, 1),
            (vec![6, 3, 5, 6], false, 2, 4),
            (vec![64, 4, 16, 16], true, 1, 5),
            (vec![64, 4, 16, 16], false, 2, 64),
        ] {
            let c = shape[1];
            let (x, dy) = (random(&shape, 11), random(&shape, 12));
            let mut norms = [0, 1, 2].map(|_| BnRelu::new(&Init::new(1), c, relu));
            for bn in &mut norms {
                bn.weight.value = (0..c).map(|i| 0.7 + 0.2 * i as f32).collect();
                bn.bias.value = (0..c).map(|i| 0.1 * i as f32 - 0.2).collect();
                bn.groups = groups;
                bn.forward(x.clone(), true);
            }
            let [a, b, beside] = &mut norms;
            let want = a.backward(dy.clone());
            let mut g = dy.clone();
            let image = g.len() / shape[0];
            let pass = b.grad_sums();
            let sums: Vec<(f32, f32)> = g
                .data
                .chunks_mut(chunk * image)
                .enumerate()
                .flat_map(|(k, part)| pass(k * chunk, part))
                .collect();
            drop(pass);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            if !relu {
                // beside its gradient: dy untouched, dx over the saved input
                let got = beside.backward_beside(&g, sums.clone());
                assert_eq!(bits(&got.data), bits(&want.data), "{shape:?}: dx beside dy");
                assert_eq!(bits(&g.data), bits(&dy.data), "{shape:?}: dy written");
                assert_eq!(bits(&a.weight.grad), bits(&beside.weight.grad), "{shape:?}: dγ");
                assert_eq!(bits(&a.bias.grad), bits(&beside.bias.grad), "{shape:?}: dβ");
            }
            let got = b.backward_with_sums(g, sums);
            assert_eq!(bits(&got.data), bits(&want.data), "{shape:?} relu {relu}: dx");
            assert_eq!(bits(&a.weight.grad), bits(&b.weight.grad), "{shape:?}: dγ");
            assert_eq!(bits(&a.bias.grad), bits(&b.bias.grad), "{shape:?}: dβ");
        }
    }

    /// Same outputs, input gradients, parameter gradients and running statistics as the kit's
    /// BatchNorm (followed by the kit's ReLU), in both modes.
    #[test]
    fn agrees_with_kit_batchnorm_and_relu() {
        for (shape, relu, train) in [
            (vec![4, 3, 5, 6], true, true),
            (vec![3, 2, 4, 4], false, true),
            (vec![2, 5, 3, 1], true, false),
            (vec![64, 4, 16, 16], true, true), // large enough for the parallel paths
        ] {
            let c = shape[1];
            let init = Init::new(1);
            let mut kit = BatchNorm::new(&init, c);
            let mut ours = BnRelu::new(&init, c, relu);
            let gamma: Vec<f32> =
                (0..c).map(|i| 0.5 + 0.3 * i as f32 - 0.4 * (i % 2) as f32).collect();
            let beta: Vec<f32> = (0..c).map(|i| 0.2 * i as f32 - 0.3).collect();
            kit.weight.value = gamma.clone();
            ours.weight.value = gamma;
            kit.bias.value = beta.clone();
            ours.bias.value = beta;
            if !train {
                kit.running_mean.value = vec![0.1; c];
                ours.running_mean.value = vec![0.1; c];
                kit.running_var.value = vec![2.0; c];
                ours.running_var.value = vec![2.0; c];
            }
            let x = random(&shape, 2);
            let dy = random(&shape, 3);
            let mut r = Relu::new();
            let mut want = kit.forward(&x, train);
            if relu {
                want = r.forward(&want, true);
            }
            let got = ours.forward(x.clone(), train);
            let close = |a: &[f32], b: &[f32], what: &str| {
                for (u, v) in a.iter().zip(b) {
                    assert!(
                        (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                        "{what} {shape:?}: {u} vs {v}"
                    );
                }
            };
            close(&got.data, &want.data, "output");
            close(&ours.running_mean.value, &kit.running_mean.value, "running mean");
            close(&ours.running_var.value, &kit.running_var.value, "running var");
            let g = if relu { r.backward(&dy) } else { dy.clone() };
            let want_dx = kit.backward(&g);
            let got_dx = ours.backward(dy);
            close(&got_dx.data, &want_dx.data, "dx");
            close(&ours.weight.grad, &kit.weight.grad, "dγ");
            close(&ours.bias.grad, &kit.bias.grad, "dβ");
        }
    }

    /// Statistics per group are G separate passes: outputs, input gradients, parameter
    /// gradients and the running statistics after G sequential updates.
    #[test]
    fn groups_are_separate_passes_over_the_slices() {
        for relu in [true, false] {
            let (n, c, h, w) = (6, 3, 5, 4);
            let plane = c * h * w;
            let init = Init::new(4);
            let mut grouped = BnRelu::new(&init, c, relu);
            grouped.groups = 2;
            let mut single = BnRelu::new(&init, c, relu);
            for bn in [&mut grouped, &mut single] {
                bn.weight.value = vec![0.7, 1.3, -0.4];
                bn.bias.value = vec![0.1, -0.2, 0.3];
            }
            // the second half shifted and scaled, so that its statistics differ from the first's
            let mut x = random(&[n, c, h, w], 8);
            x.data[n / 2 * plane..].iter_mut().for_each(|v| *v = 3.0 * *v + 2.0);
            let dy = random(&[n, c, h, w], 9);
            let y = grouped.forward(x.clone(), true);
            let dx = grouped.backward(dy.clone());
            let half = |t: &Tensor, k: usize| {
                Tensor::new(
                    vec![n / 2, c, h, w],
                    t.data[k * n / 2 * plane..][..n / 2 * plane].to_vec(),
                )
            };
            let mut want_y = Vec::new();
            let mut want_dx = Vec::new();
            for k in 0..2 {
                want_y.extend(single.forward(half(&x, k), true).data);
                want_dx.extend(single.backward(half(&dy, k)).data);
            }
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                for (u, v) in a.iter().zip(b) {
                    assert!((u - v).abs() <= 1e-5 * (1.0 + v.abs()), "{what}: {u} vs {v}");
                }
            };
            close(&y.data, &want_y, "output");
            close(&dx.data, &want_dx, "dx");
            close(&grouped.weight.grad, &single.weight.grad, "dγ");
            close(&grouped.bias.grad, &single.bias.grad, "dβ");
            close(&grouped.running_mean.value, &single.running_mean.value, "running mean");
            close(&grouped.running_var.value, &single.running_var.value, "running var");
            // and one group over the whole batch is not the same thing
            let mut whole = BnRelu::new(&init, c, relu);
            whole.weight.value = vec![0.7, 1.3, -0.4];
            whole.bias.value = vec![0.1, -0.2, 0.3];
            let y1 = whole.forward(x.clone(), true);
            assert!(y1.data.iter().zip(&y.data).any(|(a, b)| (a - b).abs() > 1e-2));
            // evaluation ignores the groups
            let e1 = grouped.forward(x.clone(), false);
            single.running_mean.value = grouped.running_mean.value.clone();
            single.running_var.value = grouped.running_var.value.clone();
            close(&e1.data, &single.forward(x.clone(), false).data, "evaluation");
        }
    }

    /// A two-rank all-reduce inside one process: the two "ranks" are threads (their rank in
    /// `RANK`) that leave their values in `SLOTS`, meet, sum, and meet again before the next
    /// call may overwrite a slot.
    static SLOTS: std::sync::Mutex<[Vec<f64>; 2]> = std::sync::Mutex::new([Vec::new(), Vec::new()]);
    static MEET: std::sync::LazyLock<std::sync::Barrier> =
        std::sync::LazyLock::new(|| std::sync::Barrier::new(2));
    thread_local!(static RANK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });

    extern "C" fn two_rank_sum(mut data: abi_stable::std_types::RSliceMut<'_, f64>) -> bool {
        let r = RANK.with(|r| r.get());
        SLOTS.lock().unwrap()[r] = data.to_vec();
        MEET.wait();
        let sum: Vec<f64> = {
            let s = SLOTS.lock().unwrap();
            s[0].iter().zip(&s[1]).map(|(a, b)| a + b).collect()
        };
        MEET.wait();
        data.copy_from_slice(&sum);
        true
    }

    /// Synchronised over two ranks that each hold half the batch, batch norm computes what
    /// one process computes on the whole batch: outputs, input gradients and running
    /// statistics, with γ and β getting each rank's share (their sum is the whole gradient).
    #[test]
    fn synchronised_over_two_ranks_is_one_pass_over_the_whole_batch() {
        for groups in [1, 2] {
            let (n, c, h, w) = (8, 3, 5, 4);
            let half = n / 2 * c * h * w;
            let init = Init::new(5);
            let setup = |bn: &mut BnRelu| {
                bn.weight.value = vec![0.7, 1.3, -0.4];
                bn.bias.value = vec![0.1, -0.2, 0.3];
                bn.groups = groups;
            };
            let mut x = random(&[n, c, h, w], 10);
            x.data[half..].iter_mut().for_each(|v| *v = 2.0 * *v + 1.0);
            let dy = random(&[n, c, h, w], 11);
            let mut whole = BnRelu::new(&init, c, true);
            setup(&mut whole);
            // the whole batch, in the layout the ranks see: each rank's half of every group
            let per = n / groups;
            let rank_rows = |r: usize| -> Vec<usize> {
                (0..groups)
                    .flat_map(|g| g * per + r * per / 2..g * per + (r + 1) * per / 2)
                    .collect()
            };
            let take = |t: &Tensor, rows: &[usize]| {
                let p = c * h * w;
                let data = rows.iter().flat_map(|&i| t.data[i * p..(i + 1) * p].to_vec()).collect();
                Tensor::new(vec![rows.len(), c, h, w], data)
            };
            let y = whole.forward(x.clone(), true);
            let dx = whole.backward(dy.clone());
            let coll = Collective { rank: 0, world: 2, all_reduce_sum: two_rank_sum };
            let ranks: Vec<_> = (0..2)
                .map(|r| {
                    let (xr, dyr) = (take(&x, &rank_rows(r)), take(&dy, &rank_rows(r)));
                    let mut bn = BnRelu::new(&init, c, true);
                    setup(&mut bn);
                    bn.sync = Some(Collective { rank: r as u32, ..coll });
                    std::thread::spawn(move || {
                        RANK.with(|k| k.set(r));
                        let y = bn.forward(xr, true);
                        let dx = bn.backward(dyr);
                        (y, dx, bn)
                    })
                })
                .collect();
            let ranks: Vec<_> = ranks.into_iter().map(|t| t.join().unwrap()).collect();
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                for (u, v) in a.iter().zip(b) {
                    assert!(
                        (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                        "groups {groups}, {what}: {u} vs {v}"
                    );
                }
            };
            for (r, (yr, dxr, bn)) in ranks.iter().enumerate() {
                close(&yr.data, &take(&y, &rank_rows(r)).data, "output");
                close(&dxr.data, &take(&dx, &rank_rows(r)).data, "dx");
                close(&bn.running_mean.value, &whole.running_mean.value, "running mean");
                close(&bn.running_var.value, &whole.running_var.value, "running var");
            }
            let sum = |f: fn(&BnRelu) -> &Vec<f32>| -> Vec<f32> {
                (0..c).map(|k| ranks.iter().map(|(_, _, bn)| f(bn)[k]).sum()).collect()
            };
            close(&sum(|b| &b.weight.grad), &whole.weight.grad, "dγ summed over ranks");
            close(&sum(|b| &b.bias.grad), &whole.bias.grad, "dβ summed over ranks");
        }
    }
}
