//! Winograd's F(2×2, 3×3) for the 3 × 3, stride-1, padding-1 convolutions of one group: 16
//! multiplications per 2 × 2 outputs and input channel instead of 36 (Lavin & Gray, Fast
//! Algorithms for Convolutional Neural Networks, 2015, arXiv:1509.09308).
//!
//! ```text
//! per 4 × 4 input tile d (rows 2·ty − 1 .., columns 2·tx − 1 .., zeros outside the image):
//! V = Bᵀ d B,  U = G g Gᵀ,  Y[2 × 2] = Aᵀ (Σ_c U ⊙ V) A
//! Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1],  G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1],
//! Aᵀ = [1 1 1 0; 0 1 −1 −1]
//! ```
//! The sum over input channels is 16 matrix products, one per tile position ξ:
//! `M_ξ [O, tiles] = U_ξ [O, C] · V_ξ [C, tiles]`, by [`super::simd_gemm`]. A convolution's
//! input gradient is the same convolution of `dY` with the kernel flipped and its channels
//! swapped ([`weights`] with `flip`), so both the forward and `dX` take this path. The kernel
//! gradient ([`weight_grad`]) is the adjoint: `dU_ξ [C, O] = Σ_tiles V_ξ · (A dY Aᵀ)_ξᵀ`, 16
//! products over the tiles, then `dW = Gᵀ dU G`. The transforms run over rows of tiles, so
//! that the compiler vectorises them: each input row is split into its even and odd columns
//! first.
//!
//! The products are the same sums in another basis, rounded differently: results agree with
//! the direct sums to about 1e-6 of their scale, and are bitwise the same from run to run.
//!
//! Planes 25 to 32 wide, and narrow ones such as 7 × 7, 8 × 8 and 16 × 16, take F(4×4, 3×3)
//! for the forward, `dX` and `dW` instead ([`super::winograd4`]); [`Kernel`] holds the
//! transformed kernel of either.

#[cfg(target_arch = "x86_64")]
use super::lanes::{on_lanes, Lanes, Y, Z};

/// The fewest input and output channels for which this path is taken. The transforms cost the
/// same per channel whatever the channel count, the products grow with it. At 32 channels of
/// 28 × 28 (64 images, one thread) the forward takes 8.0–8.8 ms against 12.9–13.8 for the
/// implicit product, the backward (its dW still implicit then) 17.4–18.9 against 21.2–21.9
/// (Zen 4, with the blocks of [`block_tiles`]; with blocks of 64 tiles the two paths were
/// level on Zen 5). At 64 of
/// 14 × 14 (128 images) 13.5–14.0 against 21.7–23.0, at 128 of 7 × 7 (256 images) 36.6–40.8
/// against 46.8–48.4 (Zen 4); on Zen 5, at 64 of 32 × 32 (16 images) 4.6–4.9 against 6.3, at
/// 256 of 8 × 8 (64 images) 18.3 against 32.6.
pub(crate) const MIN_CHANNELS: usize = 32;

/// True when a convolution of `c` channels into `o` with this geometry takes this path (and
/// AVX-512 is here).
pub(crate) fn fits(
    c: usize,
    o: usize,
    (kh, kw): (usize, usize),
    (s, pad, groups): (usize, usize, usize),
) -> bool {
    #[allow(unused_mut)]
    let mut min = MIN_CHANNELS;
    #[cfg(test)]
    if ANY_CHANNELS.load(std::sync::atomic::Ordering::SeqCst) {
        min = 1;
    }
    let fits = (kh, kw, s, pad, groups) == (3, 3, 1, 1, 1)
        && c.min(o) >= min
        && super::simd_gemm::available();
    #[cfg(test)]
    let fits = fits && !DISABLED.load(std::sync::atomic::Ordering::SeqCst);
    fits
}

/// True when a layer that [`fits`] also takes [`weight_grad`] for its kernel gradient (where
/// F(4×4)'s does not take it first, `winograd4::dw_fits`): planes of even sides, at least 8
/// wide, and on CPUs of full-width AVX-512 units at least [`DW_MIN_CHANNELS`] channels in and
/// out. On odd sides the tiles' padding is a large share (at 7 × 7,
/// 64 outputs per 49): 256 × 128 × 7 × 7 on one Zen 4 thread took 77.5–80.4 ms for the
/// backward with the implicit product's dW, 84.2–85.6 with this one. At 4 × 4 a row of tiles
/// fills an eighth of a vector: 128 × 512 × 4 × 4, 229–235 against 233–245. Where it is taken
/// (`time_winograd_layers`, the same build, dW alone switched): 28 × 28 at 32 channels 2 %
/// faster, 14 × 14 at 64 7 %, 32 × 32 at 64 3 %, 16 × 16 at 128 10 %, 8 × 8 at 256 13–16 %
/// (Zen 4, whose AVX-512 products take two passes of 256-bit units).
///
/// On an Intel Xeon of full-width units (Sapphire Rapids class, one thread) this path was
/// the slower on 2026-12-03 (128 images of 64 × 14 × 14: 26.9–28.0 ms for the backward
/// against 24.1–24.3) and was taken on Zen 4 only. Measured again after the kernels' later
/// changes (the products' slabs apart, [`slab`], among them) it is the faster from 64
/// channels on (2026-12-05, `SHAPE=n,c,h time_winograd_layers`, the layer's backward with
/// this dW against the implicit product's): 128 × 64 ×
/// 14 × 14 21.9 against 24.3 ms (27.7–28.5 against 33.1–33.6 in a second run), 16 × 64 × 56 ×
/// 56 41.7 against 47.9, 64 × 128 × 20 × 20 90.9 against 100.7, 32 × 256 × 14 × 14 88.5
/// against 96.7; at 32 channels still the slower (128 × 32 × 14 × 14: 8.1 against 7.7). The
/// choice depends on the CPU and the layer's shape alone, so a run on one machine stays
/// bitwise reproducible. On AVX2 without AVX-512 (a 2-core Zen 3 EPYC, 2026-12-05) it is taken
/// from 64 channels as here: from 32 the step was level (`bench/ab-dirs`, 0.9992).
pub(crate) fn dw_fits(h: usize, w: usize, channels: usize) -> bool {
    #[allow(unused_mut)]
    let mut cpu = half_rate_avx512() || channels >= DW_MIN_CHANNELS;
    #[cfg(test)]
    if DW_ALWAYS.load(std::sync::atomic::Ordering::SeqCst) {
        cpu = true;
    }
    #[allow(unused_mut)]
    let mut fits = h.is_multiple_of(2) && w.is_multiple_of(2) && w >= 8 && cpu;
    #[cfg(test)]
    if DW_DISABLED.load(std::sync::atomic::Ordering::SeqCst) {
        fits = false;
    }
    fits
}

/// The fewest of a layer's input and output channels for which [`dw_fits`] takes Winograd's
/// dW on a CPU of full-width AVX-512 units (on Zen 4 it takes it from [`MIN_CHANNELS`]).
pub(crate) const DW_MIN_CHANNELS: usize = 64;

/// True on an AMD Zen 4 (family 19h with AVX-512), whose 512-bit multiply-adds run on
/// 256-bit units, so that Winograd's fewer products pay for its transforms in the weight
/// gradient too.
pub(crate) fn half_rate_avx512() -> bool {
    static ZEN4: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ZEN4.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid;
            #[allow(unused_unsafe)]
            // SAFETY: cpuid exists on every x86-64 CPU; leaves 0 and 1 always do.
            let (v, f) = unsafe { (__cpuid(0), __cpuid(1)) };
            let vendor = [v.ebx, v.edx, v.ecx].map(u32::to_le_bytes).concat();
            let family = ((f.eax >> 8) & 0xf) + ((f.eax >> 20) & 0xff);
            vendor == b"AuthenticAMD" && family == 0x19 && super::simd_gemm::avx512()
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Tests take Winograd's dW wherever the planes allow, whatever the CPU.
#[cfg(test)]
pub(crate) static DW_ALWAYS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Tests turn this path off to compare it with the others.
#[cfg(test)]
pub(crate) static DISABLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Tests take this path whatever the channel count.
#[cfg(test)]
pub(crate) static ANY_CHANNELS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Calls of [`conv`], so that tests can tell that they took this path.
#[cfg(test)]
pub(crate) static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Tests turn Winograd's dW off (the implicit product's instead) to time the two.
#[cfg(test)]
pub(crate) static DW_DISABLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Calls of [`weight_grad`], likewise.
#[cfg(test)]
pub(crate) static DW_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The kernel transform `G` (`U = G g Gᵀ`); its transpose takes the kernel gradient back
/// (`dW = Gᵀ dU G`).
const G: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// `U [16][O][C]` of a kernel `w [O, C, 3, 3]`; with `flip`, the kernel of the input gradient,
/// `w'[c, o, p, q] = w[o, c, 2 − p, 2 − q]`, as `[16][C][O]`.
pub(crate) fn weights(w: &[f32], o: usize, c: usize, flip: bool) -> Vec<f32> {
    transform_kernel(&G, w, (o, c), flip)
}

/// `U = G g Gᵀ` of every 3 × 3 kernel of `w [O, C, 3, 3]` for a transform `G` of `T` rows,
/// as `[T·T][O][C]` (with `flip`, of the input gradient's kernel `w'[c, o, p, q] = w[o, c,
/// 2 − p, 2 − q]`, as `[T·T][C][O]`), in f64 and rounded once.
pub(super) fn transform_kernel<const T: usize>(
    gm: &[[f32; 3]; T],
    w: &[f32],
    (o, c): (usize, usize),
    flip: bool,
) -> Vec<f32> {
    use rayon::prelude::*;
    let (rows, cols) = if flip { (c, o) } else { (o, c) };
    // row by row of U in parallel, as [rows][T·T][cols] (this ran on one thread while the
    // others waited, 2 ms of a resnet-mini step), then laid out as [T·T][rows][cols] in
    // parallel over the T·T planes; neither buffer is zeroed first (every value is written
    // once: the zeros and the copy on one thread were 1.6 ms of the step's serial time)
    let len = rows * T * T * cols;
    let mut by_row: Vec<f32> = Vec::with_capacity(len);
    by_row.spare_capacity_mut()[..len].par_chunks_mut(T * T * cols).enumerate().for_each(
        |(r, ur)| {
            for k in 0..cols {
                let (oi, ci) = if flip { (k, r) } else { (r, k) };
                let g = &w[(oi * c + ci) * 9..][..9];
                let at =
                    |p: usize, q: usize| if flip { g[(2 - p) * 3 + 2 - q] } else { g[p * 3 + q] };
                // G g, then (G g) Gᵀ
                let mut gg = [[0.0f64; 3]; T];
                for (i, row) in gg.iter_mut().enumerate() {
                    for (q, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|p| gm[i][p] as f64 * at(p, q) as f64).sum();
                    }
                }
                for (i, ggi) in gg.iter().enumerate() {
                    for (j, gj) in gm.iter().enumerate() {
                        let v: f64 = (0..3).map(|q| ggi[q] * gj[q] as f64).sum();
                        ur[(i * T + j) * cols + k].write(v as f32);
                    }
                }
            }
        },
    );
    // SAFETY: row r's chunk holds (i·T + j)·cols + k for every i, j < T and k < cols, each
    // written above: all `len` values
    unsafe { by_row.set_len(len) };
    let mut u: Vec<f32> = Vec::with_capacity(len);
    u.spare_capacity_mut()[..len].par_chunks_mut(rows * cols).enumerate().for_each(
        |(xi, plane)| {
            for (r, dst) in plane.chunks_exact_mut(cols).enumerate() {
                let src = &by_row[(r * T * T + xi) * cols..][..cols];
                dst.iter_mut().zip(src).for_each(|(d, &s)| {
                    d.write(s);
                });
            }
        },
    );
    // SAFETY: plane xi's rows r < rows, each `cols` values, all written above
    unsafe { u.set_len(len) };
    u
}

/// A kernel transformed for the forward or the input gradient of a layer that [`fits`]: by
/// F(4×4, 3×3) on the planes where [`super::winograd4::fits`] says so, else by F(2×2, 3×3).
pub(crate) enum Kernel {
    /// `U [16][rows][cols]` ([`weights`]).
    F2(Vec<f32>),
    /// `U [36][rows][cols]` ([`super::winograd4::weights`]).
    F4(Vec<f32>),
    /// The same, for [`super::winograd4::conv_narrow`].
    F4Narrow(Vec<f32>),
}

impl Kernel {
    /// The kernel `w [o, c, 3, 3]` (with `flip`, that of the input gradient) for planes of
    /// `h × w`.
    pub(crate) fn new(
        k: &[f32],
        (o, c): (usize, usize),
        flip: bool,
        (h, w): (usize, usize),
    ) -> Kernel {
        if super::winograd4::fits(h, w) {
            Kernel::F4(super::winograd4::weights(k, o, c, flip))
        } else if super::winograd4::narrow_fits(h, w) {
            Kernel::F4Narrow(super::winograd4::weights(k, o, c, flip))
        } else {
            Kernel::F2(weights(k, o, c, flip))
        }
    }

    /// [`conv`] or [`super::winograd4::conv`] with this kernel.
    pub(crate) fn conv(
        &self,
        x: &[f32],
        dims: (usize, usize, usize, usize),
        cout: usize,
        y: &mut [f32],
        s: &mut Scratch,
    ) {
        match self {
            Kernel::F2(u) => conv(x, dims, u, cout, y, s),
            Kernel::F4(u) => super::winograd4::conv(x, dims, u, cout, y, s),
            Kernel::F4Narrow(u) => super::winograd4::conv_narrow(x, dims, u, cout, y, s),
        }
    }
}

/// Tiles per block of the transforms and products: a block's transformed input and its
/// products, `16 · tiles · (cin + cout)` floats, about 1 MiB, so that they stay in a core's
/// cache between the passes. Larger blocks make each of the 16 products wider and re-read
/// fewer input rows (a block of `r` tile rows reads `2r + 2` input rows). At 32 channels of
/// 28 × 28 (one thread, Zen 4), 64-tile blocks took 11.6–12.4 ms for the forward, 128 tiles
/// 8.7–11.7 (two sweeps), 256 tiles (this rule) 8.0–8.8; at 64 and 128 channels the rule's
/// 128 and 64 tiles were level with 64-tile blocks. At least 32 tiles, the product kernel's
/// width: at 512 channels the rule gives 16, and the 12 × 32 register tiles ran with half
/// their columns masked off (128 images of 512 × 4 × 4, one thread, Intel Xeon: forward
/// 92–101 ms with 16-tile blocks, 71–81 with 32, 2 MiB).
fn block_tiles(cin: usize, cout: usize) -> usize {
    (16384 / (cin + cout)).max(32)
}

/// Scratch of one thread, kept across calls.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(super) v: Vec<f32>,
    pub(super) m: Vec<f32>,
    pub(super) rt: Vec<f32>,
    pub(super) mt: Vec<f32>,
}

/// The first `n` values of scratch `v` (stale values: every caller writes what it reads),
/// grown with zeros if it is shorter but never shrunk (Winograd's and `conv`'s scratch): the
/// last block of a chunk is the smallest, and the backward's phases take products of
/// different widths in turn; a buffer cut to the shorter length was zeroed again up to the
/// longer one each time.
pub(super) fn resize(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// A block of tile rows: its tile count, and its segments `(image, that image's tile rows
/// ty0..ty1, their first tile in the block)`.
pub(super) struct Block {
    pub(super) nt: usize,
    pub(super) segments: Vec<(usize, usize, usize, usize)>,
}

/// The tile rows of `nb` images of `h × w` in blocks of about [`block_tiles`] tiles (whole
/// rows, across images), for tiles of `tile × tile` outputs (2, or 4 for `winograd4`), whose
/// transforms hold `(tile + 2)²` values.
pub(super) fn blocks(
    tile: usize,
    nb: usize,
    (h, w): (usize, usize),
    (cin, cout): (usize, usize),
) -> impl Iterator<Item = Block> {
    // F(4×4)'s blocks hold twice the floats of F(2×2)'s: at 64 channels of 32 × 32 (16
    // images, one thread, Zen 4) its forward took 6.8–6.9 ms against 7.7–7.8 with the same
    // budget, the backward 15.9–16.0 against 17.6–17.7; F(2×2) 7.9–8.2 and 17.1–18.0
    let budget = if tile == 4 { 2 * block_tiles(cin, cout) } else { block_tiles(cin, cout) };
    blocks_of(tile, nb, (h, w), budget * 16 / (tile + 2).pow(2))
}

/// As [`blocks`], in blocks of about `tiles` tiles (whole rows of tiles, at least one).
pub(super) fn blocks_of(
    tile: usize,
    nb: usize,
    (h, w): (usize, usize),
    tiles: usize,
) -> impl Iterator<Item = Block> {
    let (ty_n, tx_n) = (h.div_ceil(tile), w.div_ceil(tile));
    let per_block = (tiles / tx_n).max(1);
    let total = nb * ty_n;
    (0..total).step_by(per_block).map(move |r0| {
        let r1 = (r0 + per_block).min(total);
        let segments = (r0 / ty_n..=(r1 - 1) / ty_n)
            .map(|img| {
                let ty0 = r0.max(img * ty_n) - img * ty_n;
                let ty1 = r1.min((img + 1) * ty_n) - img * ty_n;
                (img, ty0, ty1, (img * ty_n + ty0 - r0) * tx_n)
            })
            .collect();
        Block { nt: (r1 - r0) * tx_n, segments }
    })
}

/// One block's input tiles, `V [16][cin][nt]` into `v` (positions `vs` floats apart), from
/// `x [.., cin, h, w]`.
fn input_block(
    x: &[f32],
    (cin, h, w): (usize, usize, usize),
    (segments, nt): (&[(usize, usize, usize, usize)], usize),
    rt: &mut Vec<f32>,
    (v, vs): (&mut [f32], usize),
) {
    let tx_n = w.div_ceil(2);
    for &(img, ty0, ty1, off) in segments {
        for c in 0..cin {
            let plane = &x[(img * cin + c) * h * w..][..h * w];
            // SAFETY: the callers asserted AVX-512; the function asserts its bounds.
            unsafe { input_tiles(plane, (h, w), (ty0, ty1, tx_n), rt, v, c * nt + off, vs) };
        }
    }
}

/// `y [nb, cout, h, w]` = the 3 × 3, padding-1 convolution of `x [nb, cin, h, w]` with the
/// transformed kernel `u [16][cout][cin]` ([`weights`]). Panics without AVX-512 or AVX2 +
/// FMA, or on slices of the wrong length.
pub(crate) fn conv(
    x: &[f32],
    dims: (usize, usize, usize, usize),
    u: &[f32],
    cout: usize,
    y: &mut [f32],
    s: &mut Scratch,
) {
    #[cfg(test)]
    CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let f2 = Transforms { tile: 2, input: input_tiles, output: output_tiles };
    conv_with(&f2, x, dims, u, cout, y, s);
}

/// (plane, (h, w), (ty0, ty1, tx_n), row scratch, tiles, at, stride)
pub(super) type InputTiles = unsafe fn(
    &[f32],
    (usize, usize),
    (usize, usize, usize),
    &mut Vec<f32>,
    &mut [f32],
    usize,
    usize,
);
/// (products, at, stride, (ty0, ty1, tx_n), (h, w), plane)
pub(super) type OutputTiles =
    unsafe fn(&[f32], usize, usize, (usize, usize, usize), (usize, usize), &mut [f32]);

/// The tile transforms of one of Winograd's algorithms (F(2×2) here, F(4×4) in
/// [`super::winograd4`]), with the signatures of this module's [`input_tiles`] and
/// [`output_tiles`].
pub(super) struct Transforms {
    /// Outputs per side of a tile; its transforms hold `(tile + 2)²` values.
    pub(super) tile: usize,
    /// `input_tiles`: tile rows of one plane into the transformed tiles.
    pub(super) input: InputTiles,
    /// `output_tiles`: tile rows of one output plane from their products.
    pub(super) output: OutputTiles,
}

/// [`conv`] with the transforms `t` (and a kernel `u [(tile + 2)²][cout][cin]`): per block of
/// tile rows, the input's tiles, one product per tile position, the outputs.
pub(super) fn conv_with(
    t: &Transforms,
    x: &[f32],
    (nb, cin, h, w): (usize, usize, usize, usize),
    u: &[f32],
    cout: usize,
    y: &mut [f32],
    s: &mut Scratch,
) {
    assert!(
        super::simd_gemm::cpu_has_kernel(),
        "winograd convolution without AVX-512 or AVX2 + FMA"
    );
    let positions = (t.tile + 2) * (t.tile + 2);
    assert_eq!(x.len(), nb * cin * h * w, "winograd convolution: input length");
    assert_eq!(y.len(), nb * cout * h * w, "winograd convolution: output length");
    assert_eq!(u.len(), positions * cout * cin, "winograd convolution: kernel length");
    let tx_n = w.div_ceil(t.tile);
    for Block { nt, segments } in blocks(t.tile, nb, (h, w), (cin, cout)) {
        let (vs, ms) = (slab(cin, nt), slab(cout, nt));
        let v = resize(&mut s.v, positions * vs);
        for &(img, ty0, ty1, off) in &segments {
            for c in 0..cin {
                let plane = &x[(img * cin + c) * h * w..][..h * w];
                let (dims, rows) = ((h, w), (ty0, ty1, tx_n));
                // SAFETY: AVX-512 is present (asserted above); the function asserts its bounds.
                unsafe { (t.input)(plane, dims, rows, &mut s.rt, v, c * nt + off, vs) };
            }
        }
        let m = resize(&mut s.m, positions * ms);
        products(positions, u, (v, vs), (m, ms), (cin, cout, nt));
        for &(img, ty0, ty1, off) in &segments {
            for o in 0..cout {
                let plane = &mut y[(img * cout + o) * h * w..][..h * w];
                let rows = (ty0, ty1, tx_n);
                // SAFETY: AVX-512 is present (asserted above); the function asserts its bounds.
                unsafe { (t.output)(m, o * nt + off, ms, rows, (h, w), plane) };
            }
        }
    }
}

/// `du [16][cin][cout] +=` the kernel gradient in Winograd's basis of the 3 × 3, padding-1
/// convolution of `x [nb, cin, h, w]` whose output gradient is `dy [nb, cout, h, w]`: with
/// `V = Bᵀ d B` the input's tiles as in the forward and `Ŷ = A dY Aᵀ` the output gradient's
/// (the adjoint of `Aᵀ M A`), `dU_ξ [C, O] += Σ_tiles V_ξ · Ŷ_ξᵀ` (16 products over the
/// tiles). [`kernel_grad_into`] takes the sum of several calls back to `dW = Gᵀ dU G` once.
/// Panics without AVX-512 or AVX2 + FMA or on slices of the wrong length.
pub(crate) fn weight_grad(
    x: &[f32],
    (nb, cin, h, w): (usize, usize, usize, usize),
    dy: &[f32],
    cout: usize,
    du: &mut [f32],
    s: &mut Scratch,
) {
    assert!(
        super::simd_gemm::cpu_has_kernel(),
        "winograd weight gradient without AVX-512 or AVX2 + FMA"
    );
    #[cfg(test)]
    DW_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(x.len(), nb * cin * h * w, "winograd weight gradient: input length");
    assert_eq!(dy.len(), nb * cout * h * w, "winograd weight gradient: gradient length");
    assert_eq!(du.len(), 16 * cout * cin, "winograd weight gradient: accumulator length");
    let tx_n = w.div_ceil(2);
    for Block { nt, segments } in blocks(2, nb, (h, w), (cin, cout)) {
        let (vs, ms) = (slab(cin, nt), slab(cout, nt));
        let v = resize(&mut s.v, 16 * vs);
        input_block(x, (cin, h, w), (&segments, nt), &mut s.rt, (v, vs));
        let m = resize(&mut s.m, 16 * ms);
        for &(img, ty0, ty1, off) in &segments {
            for o in 0..cout {
                let plane = &dy[(img * cout + o) * h * w..][..h * w];
                // SAFETY: AVX-512 is present (asserted above); the function asserts its bounds.
                unsafe { grad_tiles(plane, (h, w), (ty0, ty1, tx_n), m, o * nt + off, ms) };
            }
        }
        accumulate_du(16, ((v, vs), (m, ms), &mut s.mt), (cin, cout, nt), du);
    }
}

/// The floats between two positions' `[rows][nt]` slabs of a block's transformed values, so
/// that the 16 or 36 values of one tile (and lane) fall in different cache sets: an odd
/// number of 64-byte lines. With `rows · nt` floats, a multiple of 1,024 for most layers,
/// every position's value of a tile sat in the same set (one thread, F(4×4) on 256 images of
/// 128 × 7 × 7: forward 20.5–21.1 → 19.3–20.1 ms).
pub(super) fn slab(rows: usize, nt: usize) -> usize {
    #[cfg(test)]
    if UNPADDED.load(std::sync::atomic::Ordering::SeqCst) {
        return rows * nt;
    }
    (rows * nt).div_ceil(32) * 32 + 16
}

/// Tests lay the slabs end to end, to time the padding.
#[cfg(test)]
pub(crate) static UNPADDED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `m [P][cout][nt] = U_ξ · V_ξ` for the `P` positions of a tile's transform: the kernel
/// `u [P][cout][cin]` times a block's transformed input `v [P][cin][nt]` (the forward's and
/// dX's products, F(2×2)'s and F(4×4)'s), the positions' slabs of `v` and `m` `vs` and `ms`
/// floats apart ([`slab`]).
pub(super) fn products(
    positions: usize,
    u: &[f32],
    (v, vs): (&[f32], usize),
    (m, ms): (&mut [f32], usize),
    (cin, cout, nt): (usize, usize, usize),
) {
    use super::simd_gemm::{gemm_rows, Rows};
    for xi in 0..positions {
        let a = (&u[xi * cout * cin..(xi + 1) * cout * cin], Rows::Step(cin), 1);
        let b = (&v[xi * vs..][..cin * nt], Rows::Step(nt));
        gemm_rows(cout, nt, cin, a, b, &mut m[xi * ms..][..cout * nt], nt, false);
    }
}

/// `du [P][cin][cout] += V_ξ · Ŷ_ξᵀ` for the `P` positions of a tile's transform, summed over a
/// block's `nt` tiles: `v` holds `V [P][cin][nt]`, `m` holds `Ŷ [P][cout][nt]`, transposed into
/// `mt` first (as `[tiles, O]`, the rows the product's right-hand side reads). The products of
/// F(2×2)'s and F(4×4)'s weight gradients; the positions' slabs of `v` and `m` `vs` and
/// `ms` floats apart ([`slab`]).
#[allow(clippy::type_complexity)]
pub(super) fn accumulate_du(
    positions: usize,
    ((v, vs), (m, ms), mt): ((&[f32], usize), (&[f32], usize), &mut Vec<f32>),
    (cin, cout, nt): (usize, usize, usize),
    du: &mut [f32],
) {
    use super::simd_gemm::{gemm_rows, transpose, Rows};
    let mt = resize(mt, positions * nt * cout);
    for xi in 0..positions {
        let (src, dst) = (&m[xi * ms..][..cout * nt], &mut mt[xi * nt * cout..][..nt * cout]);
        transpose(cout, nt, src, nt, dst, cout);
    }
    for xi in 0..positions {
        let a = (&v[xi * vs..][..cin * nt], Rows::Step(nt), 1);
        let b = (&mt[xi * nt * cout..(xi + 1) * nt * cout], Rows::Step(cout));
        gemm_rows(cin, cout, nt, a, b, &mut du[xi * cin * cout..][..cin * cout], cout, true);
    }
}

/// `dwt [cin·9, cout] +=` the kernel gradient (transposed, as the implicit product's
/// accumulators in `conv.rs` hold it) whose transform [`weight_grad`] summed into `du`. Panics
/// without AVX-512 or AVX2 + FMA or on slices of the wrong length.
pub(crate) fn kernel_grad_into(du: &[f32], (cin, cout): (usize, usize), dwt: &mut [f32]) {
    kernel_grad_with(&G, du, (cin, cout), dwt);
}

/// [`kernel_grad_into`] for tiles of `T × T` transformed values and their kernel transform
/// `gm` (F(4×4)'s too).
pub(super) fn kernel_grad_with<const T: usize>(
    gm: &[[f32; 3]; T],
    du: &[f32],
    (cin, cout): (usize, usize),
    dwt: &mut [f32],
) {
    assert!(
        super::simd_gemm::cpu_has_kernel(),
        "winograd weight gradient without AVX-512 or AVX2 + FMA"
    );
    assert_eq!(du.len(), T * T * cout * cin, "winograd weight gradient: accumulator length");
    assert_eq!(dwt.len(), cout * cin * 9, "winograd weight gradient: kernel length");
    // SAFETY: AVX-512 is present (asserted above); the function indexes its slices.
    unsafe { kernel_grad(gm, du, (cin, cout), dwt) };
}

/// `dW[o, c] += Gᵀ dU[c, o] G`, written as `dWᵀ[c·9 + 3p + q, o]`, 16 output channels at a
/// time in vectors (scalar and once per chunk of images, it was 3 % of a resnet-mini step;
/// written generically over the tile, LLVM left F(4×4)'s scalar: 20 % of its backward). Each
/// sum is a multiply then an add, in the order of the scalar loops before. On AVX-512, else
/// on AVX2 ([`super::lanes`]): the same bits.
#[cfg(target_arch = "x86_64")]
unsafe fn kernel_grad<const T: usize>(
    gm: &[[f32; 3]; T],
    du: &[f32],
    (cin, cout): (usize, usize),
    dwt: &mut [f32],
) {
    #[target_feature(enable = "avx512f")]
    unsafe fn z<const T: usize>(g: &[[f32; 3]; T], du: &[f32], d: (usize, usize), w: &mut [f32]) {
        kernel_grad_v::<T, Z>(g, du, d, w)
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn y<const T: usize>(g: &[[f32; 3]; T], du: &[f32], d: (usize, usize), w: &mut [f32]) {
        kernel_grad_v::<T, Y>(g, du, d, w)
    }
    if super::simd_gemm::avx512() {
        z(gm, du, (cin, cout), dwt)
    } else {
        y(gm, du, (cin, cout), dwt)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel_grad_v<const T: usize, V: Lanes>(
    gm: &[[f32; 3]; T],
    du: &[f32],
    (cin, cout): (usize, usize),
    dwt: &mut [f32],
) {
    const L: usize = 16;
    for c in 0..cin {
        for o0 in (0..cout).step_by(L) {
            let mask = first(cout - o0);
            // T × T ≤ 36 (F(4×4))
            let mut d = [V::zero(); 36];
            for (xi, v) in d[..T * T].iter_mut().enumerate() {
                *v = V::load(mask, du[xi * cin * cout + c * cout + o0..].as_ptr());
            }
            // (dU G)[i][q], then Gᵀ (dU G)
            let mut ug = [[V::zero(); 3]; T];
            for (i, row) in ug.iter_mut().enumerate() {
                for (q, v) in row.iter_mut().enumerate() {
                    for j in 0..T {
                        *v = v.add(d[i * T + j].mul(V::splat(gm[j][q])));
                    }
                }
            }
            for p in 0..3 {
                for q in 0..3 {
                    let mut s = V::zero();
                    for (i, u) in ug.iter().enumerate() {
                        s = s.add(V::splat(gm[i][p]).mul(u[q]));
                    }
                    let out = dwt[(c * 9 + p * 3 + q) * cout + o0..].as_mut_ptr();
                    V::load(mask, out).add(s).store(out, mask);
                }
            }
        }
    }
}

/// Whether `len` floats hold the 16 strided copies of tile rows `ty0..ty1` at `at`, the bound
/// the unsafe transforms rely on: checked arithmetic, so that no overflow can pass it.
pub(super) fn holds(
    len: usize,
    stride: usize,
    at: usize,
    (ty0, ty1, tx_n): (usize, usize, usize),
) -> bool {
    holds_copies(16, len, stride, at, (ty0, ty1, tx_n))
}

/// [`holds`] for `copies` strided copies.
pub(super) fn holds_copies(
    copies: usize,
    len: usize,
    stride: usize,
    at: usize,
    (ty0, ty1, tx_n): (usize, usize, usize),
) -> bool {
    let need = (|| {
        let rows = ty1.checked_sub(ty0)?;
        copies
            .checked_sub(1)?
            .checked_mul(stride)?
            .checked_add(at)?
            .checked_add(rows.checked_mul(tx_n)?)
    })();
    need.is_some_and(|n| n <= len)
}

/// The first `n` of 16 lanes (all 16 for `n` ≥ 16).
#[cfg(target_arch = "x86_64")]
pub(super) fn first(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// `Bᵀ (d0, d1, d2, d3)`, lane by lane: `(d0 − d2, d1 + d2, d2 − d1, d1 − d3)`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bt<V: Lanes>(d0: V, d1: V, d2: V, d3: V) -> [V; 4] {
    [d0.sub(d2), d1.add(d2), d2.sub(d1), d1.sub(d3)]
}

on_lanes! {
    /// Tile rows `ty0..ty1` of one plane, `Bᵀ d B`, into `v[ξ·stride + at + (ty − ty0)·tx_n +
    /// tx]`, 16 tiles of a row per step: first `d·B` for each input row they read (`rt`, row
    /// `k` holding input row `2·ty0 + k − 1`), then `Bᵀ` down the rows of each row of tiles.
    /// Needs AVX-512 or AVX2 + FMA; asserts its bounds.
    fn input_tiles = input_tiles_v(
        plane: &[f32],
        hw: (usize, usize),
        rows: (usize, usize, usize),
        rt: &mut Vec<f32>,
        v: &mut [f32],
        at: usize,
        stride: usize,
    )
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn input_tiles_v<V: Lanes>(
    plane: &[f32],
    (h, w): (usize, usize),
    (ty0, ty1, tx_n): (usize, usize, usize),
    rt: &mut Vec<f32>,
    v: &mut [f32],
    at: usize,
    stride: usize,
) {
    use std::arch::x86_64::*;
    assert!(plane.len() >= h * w, "winograd: input plane too short");
    assert!(holds(v.len(), stride, at, (ty0, ty1, tx_n)), "winograd: tiles too short");
    let rows = 2 * (ty1 - ty0) + 2;
    let rt = resize(rt, rows * 4 * tx_n);
    for k in 0..rows {
        let out = rt.as_mut_ptr().add(k * 4 * tx_n);
        let y = (2 * ty0 + k) as isize - 1;
        if y < 0 || y as usize >= h {
            std::ptr::write_bytes(out, 0, 4 * tx_n);
            continue;
        }
        let src = &plane[y as usize * w..(y as usize + 1) * w];
        // the lanes of a 16-column load at column `c` that lie inside the row
        let inside = |c: isize| -> u16 {
            let lo = (-c).clamp(0, 16) as u32;
            let hi = (w as isize - c).clamp(0, 16) as u32;
            if hi <= lo {
                0
            } else {
                (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16
            }
        };
        // (x[c + 2l], x[c + 2l + 1]) for 16 lanes l; masked-off lanes are not read, so the
        // pointers may lie outside the row
        // (a macro, not a closure: see `super::lanes`)
        macro_rules! pair {
            ($c:expr) => {{
                let c: isize = $c;
                let p = src.as_ptr().wrapping_offset(c);
                let lo = V::load(inside(c), p);
                let hi = V::load(inside(c + 16), p.wrapping_add(16));
                V::even_odd(lo, hi)
            }};
        }
        let mut q0 = 0;
        while q0 < tx_n {
            let m = first(tx_n - q0);
            // tile tx reads columns 2tx − 1 ..= 2tx + 2: d0, d1 from one pair, d2, d3 from the
            // next
            let (d0, d1) = pair!(2 * q0 as isize - 1);
            let (d2, d3) = pair!(2 * q0 as isize + 1);
            // (by reference: moving the array into an iterator put its vectors through the
            // stack at odd offsets, and each load of them waited on two stores)
            let t = bt(d0, d1, d2, d3);
            for (j, tj) in t.iter().enumerate() {
                tj.store(out.add(j * tx_n + q0), m);
            }
            q0 += 16;
        }
    }
    // the rows the next block of tile rows will read, fetched while this block's products run:
    // a block reads a few rows of each of its channels' planes, too many streams at once for
    // the hardware's prefetcher (without this, half of this function waited on those loads)
    let next = ((2 * ty1 + 1).min(h) * w, (4 * ty1 - 2 * ty0 + 1).min(h) * w);
    let mut at_line = next.0;
    while at_line < next.1 {
        _mm_prefetch::<_MM_HINT_T1>(plane.as_ptr().add(at_line) as *const i8);
        at_line += 16;
    }
    let (rtp, vp) = (rt.as_ptr(), v.as_mut_ptr());
    for ty in 0..ty1 - ty0 {
        let base = at + ty * tx_n;
        let mut q0 = 0;
        while q0 < tx_n {
            let m = first(tx_n - q0);
            for j in 0..4 {
                macro_rules! r {
                    ($i:expr) => {
                        V::load(m, rtp.add(((2 * ty + $i) * 4 + j) * tx_n + q0))
                    };
                }
                let t = bt(r!(0), r!(1), r!(2), r!(3));
                for (i, c) in t.iter().enumerate() {
                    c.store(vp.add((i * 4 + j) * stride + base + q0), m);
                }
            }
            q0 += 16;
        }
    }
}

on_lanes! {
    /// Tile rows `ty0..ty1` of one output plane from their products `m[ξ·stride + at + (ty −
    /// ty0)·tx_n + tx]`: `Aᵀ M A`, 16 tiles of a row per step, their 2 × 2 outputs interleaved
    /// into two rows of 32 columns. Needs AVX-512 or AVX2 + FMA; asserts its bounds.
    fn output_tiles = output_tiles_v(
        m: &[f32],
        at: usize,
        stride: usize,
        rows: (usize, usize, usize),
        hw: (usize, usize),
        plane: &mut [f32],
    )
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn output_tiles_v<V: Lanes>(
    m: &[f32],
    at: usize,
    stride: usize,
    (ty0, ty1, tx_n): (usize, usize, usize),
    (h, w): (usize, usize),
    plane: &mut [f32],
) {
    assert!(holds(m.len(), stride, at, (ty0, ty1, tx_n)), "winograd: products too short");
    assert!(plane.len() >= h * w, "winograd: output plane too short");
    for ty in ty0..ty1 {
        let base = at + (ty - ty0) * tx_n;
        let mut tx0 = 0;
        while tx0 < tx_n {
            let mask = first(tx_n - tx0);
            macro_rules! mv {
                ($i:expr, $j:expr) => {
                    V::load(mask, m.as_ptr().add(($i * 4 + $j) * stride + base + tx0))
                };
            }
            let (mut s0, mut s1) = ([V::zero(); 4], [V::zero(); 4]);
            for j in 0..4 {
                let (a, b, c, d) = (mv!(0, j), mv!(1, j), mv!(2, j), mv!(3, j));
                s0[j] = a.add(b).add(c);
                s1[j] = b.sub(c).sub(d);
            }
            for (di, sr) in [s0, s1].iter().enumerate() {
                let yy = 2 * ty + di;
                if yy >= h {
                    continue;
                }
                let ya = sr[0].add(sr[1]).add(sr[2]);
                let yb = sr[1].sub(sr[2]).sub(sr[3]);
                let x0 = 2 * tx0;
                let left = w - x0;
                let row = plane.as_mut_ptr().add(yy * w + x0);
                let (lo, hi) = V::interleave(ya, yb);
                lo.store(row, first(left));
                if left > 16 {
                    hi.store(row.add(16), first(left - 16));
                }
            }
            tx0 += 16;
        }
    }
}

on_lanes! {
    /// Tile rows `ty0..ty1` of one output-gradient plane, `A dY Aᵀ` (`A = [1 0; 1 1; 1 −1; 0
    /// −1]`, the adjoint of [`output_tiles`]' `Aᵀ M A`), into `m[ξ·stride + at + (ty −
    /// ty0)·tx_n + tx]`, 16 tiles of a row per step; the outputs of a tile past the plane's
    /// edge count as zeros. Needs AVX-512 or AVX2 + FMA; asserts its bounds.
    fn grad_tiles = grad_tiles_v(
        plane: &[f32],
        hw: (usize, usize),
        rows: (usize, usize, usize),
        m: &mut [f32],
        at: usize,
        stride: usize,
    )
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn grad_tiles_v<V: Lanes>(
    plane: &[f32],
    (h, w): (usize, usize),
    (ty0, ty1, tx_n): (usize, usize, usize),
    m: &mut [f32],
    at: usize,
    stride: usize,
) {
    assert!(plane.len() >= h * w, "winograd: gradient plane too short");
    assert!(holds(m.len(), stride, at, (ty0, ty1, tx_n)), "winograd: gradient tiles too short");
    let mp = m.as_mut_ptr();
    for ty in ty0..ty1 {
        let base = at + (ty - ty0) * tx_n;
        let mut q0 = 0;
        while q0 < tx_n {
            let mask = first(tx_n - q0);
            // (a, a + b, a − b, −b) of each row's (even, odd) columns, for rows 2ty and 2ty + 1
            macro_rules! cols {
                ($yy:expr) => {{
                    let yy: usize = $yy;
                    if yy >= h {
                        [V::zero(); 4]
                    } else {
                        let x0 = 2 * q0;
                        let left = w - x0;
                        let p = plane.as_ptr().add(yy * w + x0);
                        let lo = V::load(first(left), p);
                        let hi = if left > 16 {
                            V::load(first(left - 16), p.add(16))
                        } else {
                            V::zero()
                        };
                        let (a, b) = V::even_odd(lo, hi);
                        [a, a.add(b), a.sub(b), V::zero().sub(b)]
                    }
                }};
            }
            let (r0, r1) = (cols!(2 * ty), cols!(2 * ty + 1));
            for j in 0..4 {
                let (p, q) = (r0[j], r1[j]);
                let rows = [p, p.add(q), p.sub(q), V::zero().sub(q)];
                for (i, v) in rows.iter().enumerate() {
                    v.store(mp.add((i * 4 + j) * stride + base + q0), mask);
                }
            }
            q0 += 16;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn input_tiles(
    _: &[f32],
    _: (usize, usize),
    _: (usize, usize, usize),
    _: &mut Vec<f32>,
    _: &mut [f32],
    _: usize,
    _: usize,
) {
    unreachable!("winograd convolution without AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn output_tiles(
    _: &[f32],
    _: usize,
    _: usize,
    _: (usize, usize, usize),
    _: (usize, usize),
    _: &mut [f32],
) {
    unreachable!("winograd convolution without AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_grad<const T: usize>(
    _: &[[f32; 3]; T],
    _: &[f32],
    _: (usize, usize),
    _: &mut [f32],
) {
    unreachable!("winograd weight gradient without AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn grad_tiles(
    _: &[f32],
    _: (usize, usize),
    _: (usize, usize, usize),
    _: &mut [f32],
    _: usize,
    _: usize,
) {
    unreachable!("winograd weight gradient without AVX-512")
}

/// The kernel gradient of a 3 × 3, padding-1 convolution by its defining sum in f64, as
/// `dWᵀ [c·9 + 3p + q][o]` (the layout [`kernel_grad_into`] writes): the tests' reference.
#[cfg(test)]
pub(crate) fn direct_weight_grad(
    x: &[f32],
    dy: &[f32],
    (nb, c, o, h, w): (usize, usize, usize, usize, usize),
) -> Vec<f64> {
    let mut dwt = vec![0.0f64; c * 9 * o];
    for (n, oi, ci) in
        (0..nb).flat_map(|n| (0..o).flat_map(move |oi| (0..c).map(move |ci| (n, oi, ci))))
    {
        for (p, q) in (0..3).flat_map(|p| (0..3).map(move |q| (p, q))) {
            let mut s = 0.0f64;
            for r in 0..h {
                for t in 0..w {
                    let (yy, xx) = (r as isize + p as isize - 1, t as isize + q as isize - 1);
                    if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                        continue;
                    }
                    s += dy[((n * o + oi) * h + r) * w + t] as f64
                        * x[((n * c + ci) * h + yy as usize) * w + xx as usize] as f64;
                }
            }
            dwt[(ci * 9 + p * 3 + q) * o + oi] += s;
        }
    }
    dwt
}

#[cfg(test)]
mod tests {
    use super::holds;

    /// Every F(2×2) transform's output as bits, on lanes `V`: input, output and gradient tiles
    /// of one `h × w` plane (all its tile rows) and the kernel gradient's basis change.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn f2_bits<V: super::Lanes>((h, w): (usize, usize), seed: u64) -> Vec<u32> {
        use crate::kit::gradcheck::random;
        let (tx_n, ty_n) = (w.div_ceil(2), h.div_ceil(2));
        let stride = ty_n * tx_n + 5;
        let plane = random(&[h * w], seed).data;
        let mut v = vec![0.0f32; 16 * stride];
        super::input_tiles_v::<V>(
            &plane,
            (h, w),
            (0, ty_n, tx_n),
            &mut Vec::new(),
            &mut v,
            0,
            stride,
        );
        let m = random(&[16 * stride], seed + 1).data;
        let mut y = vec![0.0f32; h * w];
        super::output_tiles_v::<V>(&m, 0, stride, (0, ty_n, tx_n), (h, w), &mut y);
        let mut g = vec![0.0f32; 16 * stride];
        super::grad_tiles_v::<V>(&plane, (h, w), (0, ty_n, tx_n), &mut g, 0, stride);
        let (cin, cout) = (3, 19);
        let du = random(&[16 * cin * cout], seed + 2).data;
        let mut dwt = random(&[cin * 9 * cout], seed + 3).data;
        super::kernel_grad_v::<4, V>(&super::G, &du, (cin, cout), &mut dwt);
        [v, y, g, dwt].concat().iter().map(|x| x.to_bits()).collect()
    }

    /// The AVX2 bodies of the transforms give the AVX-512 bodies' bits, where the CPU has both
    /// (the other tests check whichever this CPU takes against the direct sums): ragged
    /// widths, more than 16 tiles in a row, half tiles at the edges.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_transforms_give_the_avx512_bits() {
        #[target_feature(enable = "avx512f")]
        unsafe fn z(hw: (usize, usize), seed: u64) -> Vec<u32> {
            f2_bits::<super::Z>(hw, seed)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn y(hw: (usize, usize), seed: u64) -> Vec<u32> {
            f2_bits::<super::Y>(hw, seed)
        }
        crate::kit::lanes::assert_same_bits_on_both(
            &[(5, 7), (6, 33), (9, 28), (2, 2), (14, 14)],
            z,
            y,
        );
    }

    #[test]
    fn the_transforms_bound_refuses_what_would_overflow_or_not_fit() {
        // 16 copies of 2 rows of 7 tiles, 100 apart, from 3: the last tile is at 1516
        assert!(holds(1517, 100, 3, (4, 6, 7)));
        assert!(!holds(1516, 100, 3, (4, 6, 7)));
        // rows the wrong way round, and sizes whose bound wraps around usize
        assert!(!holds(usize::MAX, 100, 3, (6, 4, 7)));
        assert!(!holds(usize::MAX, usize::MAX / 8, 0, (0, 1, 1)));
        assert!(!holds(usize::MAX, 1, usize::MAX - 8, (0, 1, 16)));
    }

    /// Small planes (a half tile at the right and bottom edges, more than 16 tiles in a row)
    /// against the direct sum, in f64.
    #[test]
    fn weight_grad_is_the_direct_sum() {
        if !crate::kit::simd_gemm::available() {
            return;
        }
        for (nb, c, o, h, w) in
            [(1, 1, 1, 2, 2), (1, 1, 1, 5, 5), (2, 3, 2, 5, 7), (1, 2, 3, 4, 33)]
        {
            let x: Vec<f32> =
                (0..nb * c * h * w).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 50.0).collect();
            let dy: Vec<f32> =
                (0..nb * o * h * w).map(|i| ((i * 104729 % 97) as f32 - 48.0) / 48.0).collect();
            let (mut du, mut dw) = (vec![0.0f32; 16 * o * c], vec![0.0f32; o * c * 9]);
            super::weight_grad(&x, (nb, c, h, w), &dy, o, &mut du, &mut Default::default());
            super::kernel_grad_into(&du, (c, o), &mut dw);
            let want = super::direct_weight_grad(&x, &dy, (nb, c, o, h, w));
            for (i, (&got, &s)) in dw.iter().zip(&want).enumerate() {
                assert!(
                    (got as f64 - s).abs() < 1e-4,
                    "{nb} {c} {o} {h} {w}: dwt[{i}] {got} vs {s}"
                );
            }
        }
    }
}
