//! Winograd's F(4×4, 3×3) for the forward and the input gradient of 3 × 3, stride-1,
//! padding-1 convolutions on planes 25 to 32 wide: 36 multiplications per 4 × 4 outputs and
//! input channel, against 64 for [`super::winograd`]'s F(2×2, 3×3) and 144 for the direct sum
//! (Lavin & Gray, arXiv:1509.09308, section 4).
//!
//! ```text
//! per 6 × 6 input tile d (rows 4·ty − 1 .., columns 4·tx − 1 .., zeros outside the image):
//! V = Bᵀ d B,  U = G g Gᵀ,  Y[4 × 4] = Aᵀ (Σ_c U ⊙ V) A
//! Bᵀ = [4 0 −5 0 1 0; 0 −4 −4 1 1 0; 0 4 −4 −1 1 0; 0 −2 −1 2 1 0; 0 2 −1 −2 1 0; 0 4 0 −5 0 1]
//! G = [¼ 0 0; −⅙ −⅙ −⅙; −⅙ ⅙ −⅙; 1⁄24 1⁄12 ⅙; 1⁄24 −1⁄12 ⅙; 0 0 1]
//! Aᵀ = [1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1]
//! ```
//! The sum over input channels is 36 matrix products, `M_ξ [O, tiles] = U_ξ [O, C] · V_ξ [C,
//! tiles]`, as in F(2×2). A row of at most 8 tiles fills half a vector: each input row is
//! split into the 6 columns of its tiles by two permutations of 32 values, and an output row
//! of 32 columns is interleaved back from the 4 outputs of its tiles.
//!
//! Narrower planes of sides 7 to 16 whose F(4×4) tiles cover no more padding than F(2×2)'s
//! (7 × 7, 8 × 8, 16 × 16) take [`conv_narrow`]: a row of 2 to 4 tiles would fill a quarter of
//! a vector or less, so its transforms run over 16 tiles of any row or image at a time, their
//! inputs gathered from zero-padded copies of the block's rows and their outputs scattered.
//!
//! The kernel gradient ([`weight_grad`]) is the adjoint: with `Ŷ = A dY Aᵀ` the output
//! gradient's 4 × 4 blocks taken to 6 × 6, `dU_ξ [C, O] += Σ_tiles V_ξ · Ŷ_ξᵀ` (36 products
//! whose inner dimension is the block's tiles), then `dW = Gᵀ dU G` once per task; on narrow
//! planes both tiles' transforms are gathered, as in [`conv_narrow`].
//!
//! The larger tile rounds more: results agree with the direct sums to about 1e-5 of their
//! scale (F(2×2): 1e-6; the kernel gradient, a sum over every tile, 3e-5), and are bitwise
//! the same from run to run.

#[cfg(target_arch = "x86_64")]
use super::lanes::{on_lanes, Lanes};
use super::winograd::{blocks, blocks_of, conv_with, resize, slab, Block, Scratch, Transforms};

/// True when a layer that [`super::winograd::fits`] takes this path: planes 25 to 32 wide,
/// whose row of 7 or 8 tiles fills half a vector (on AVX-512, or on AVX2 + FMA through
/// [`super::lanes`]).
pub(crate) fn fits(_h: usize, w: usize) -> bool {
    #[allow(unused_mut)]
    let mut fits = (25..=32).contains(&w) && super::simd_gemm::available();
    #[cfg(test)]
    if DISABLED.load(std::sync::atomic::Ordering::SeqCst) {
        fits = false;
    }
    fits
}

/// True when a layer that [`super::winograd::fits`] takes [`weight_grad`] for its kernel
/// gradient: planes that [`fits`] or [`narrow_fits`] (unless a test turned Winograd's dW
/// off). One thread, Intel Xeon, a layer's backward against the implicit product's dW
/// (`time_winograd_layers`): 256 × 128 × 7 × 7 50 → 41–42.5 ms, 64 × 256 × 8 × 8 68–69 → 44–46,
/// 32 × 128 × 16 × 16 28–29 → 22–22.6.
pub(crate) fn dw_fits(h: usize, w: usize) -> bool {
    #[allow(unused_mut)]
    let mut on = true;
    #[cfg(test)]
    if super::winograd::DW_DISABLED.load(std::sync::atomic::Ordering::SeqCst) {
        on = false;
    }
    on && (fits(h, w) || narrow_fits(h, w))
}

/// Tests turn this path off (F(2×2) instead) to compare the two.
#[cfg(test)]
pub(crate) static DISABLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Calls of [`conv`], so that tests can tell that they took this path.
#[cfg(test)]
pub(crate) static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The kernel transform `G` (`U = G g Gᵀ`).
const G: [[f32; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `U [36][O][C]` of a kernel `w [O, C, 3, 3]`; with `flip`, the kernel of the input gradient,
/// `w'[c, o, p, q] = w[o, c, 2 − p, 2 − q]`, as `[36][C][O]`.
pub(crate) fn weights(w: &[f32], o: usize, c: usize, flip: bool) -> Vec<f32> {
    super::winograd::transform_kernel(&G, w, (o, c), flip)
}

/// `y [nb, cout, h, w]` = the 3 × 3, padding-1 convolution of `x [nb, cin, h, w]` with the
/// transformed kernel `u [36][cout][cin]` ([`weights`]). Panics without AVX-512 or AVX2 +
/// FMA, on planes that
/// do not [`fits`], or on slices of the wrong length.
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
    assert!(dims.3 <= 32, "winograd F(4×4): planes {} wide", dims.3);
    let f4 = Transforms { tile: 4, input: input_tiles, output: output_tiles };
    conv_with(&f4, x, dims, u, cout, y, s);
}

/// True when a layer that [`super::winograd::fits`] takes [`conv_narrow`]: planes 7 to 16 on
/// a side whose F(4×4) tiles cover no more padding than F(2×2)'s (sides of 4k or 4k + 3: 7, 8,
/// 11, 12, 15, 16), where F(4×4) does 36 products per 16 outputs against 64, and 14 × 14.
/// One thread, Intel Xeon (`time_winograd_layers`): 256 × 128 × 7 × 7 forward 34.2 → 22.4 ms,
/// backward 69.6 → 56.9; 64 × 256 × 8 × 8 29.7 → 24.8, 82.6 → 77.5; 32 × 128 × 16 × 16
/// 15.4–15.8 → 14.0, 38 → 35.6; at 4 × 4 (one tile per image, blocks of 28 tiles) 96 ms
/// against 66. At 14 × 14 (a third of F(4×4)'s tiles padding) it was level with F(2×2) on
/// that Xeon, and ahead on AMD Zen 3 (AVX2) once the AVX2 kernel copied B's panels:
/// 256 × 64 × 14 × 14 forward 38.2–38.7 → 28.8 ms, backward 78–79 → 64.3–64.7 (at a load
/// of about 1.5; resnet-mini's step 0.961× side by side at load < 1). Sides of
/// 4k + 1 and 10 stay on F(2×2) (unmeasured at 10: nearly half of F(4×4)'s tiles padding).
pub(crate) fn narrow_fits(h: usize, w: usize) -> bool {
    let covers = |n: usize| (7..=NARROW_MAX).contains(&n) && (matches!(n % 4, 0 | 3) || n == 14);
    #[allow(unused_mut)]
    let mut fits = covers(h) && covers(w) && super::simd_gemm::available();
    #[cfg(test)]
    if DISABLED.load(std::sync::atomic::Ordering::SeqCst) {
        fits = false;
    }
    fits
}

/// The widest plane [`conv_narrow`] takes.
const NARROW_MAX: usize = 16;

/// Tiles per block of [`weight_grad`] on narrow planes.
const NARROW_DW_TILES: usize = 256;

/// F(4×4) on planes at most [`NARROW_MAX`] wide: as [`conv`], with the transforms vectorised
/// over the block's tiles whatever their row and image (a row of 2 tiles would fill an eighth
/// of a vector). Each block's planes of a channel are copied into zero-padded rows first, so
/// that every tile's 6 × 6 inputs are one gather each from fixed offsets; the outputs are
/// scattered back (on AVX2, which cannot scatter, one store per output). Panics without AVX-512
/// or AVX2 + FMA, on wider planes, or on slices of the wrong length.
pub(crate) fn conv_narrow(
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
    #[cfg(test)]
    NARROW_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    assert!(w <= NARROW_MAX, "winograd F(4×4), narrow: planes {w} wide");
    assert_eq!(x.len(), nb * cin * h * w, "winograd convolution: input length");
    assert_eq!(y.len(), nb * cout * h * w, "winograd convolution: output length");
    assert_eq!(u.len(), 36 * cout * cin, "winograd convolution: kernel length");
    assert!(y.len() < i32::MAX as usize, "winograd convolution: output too large to index");
    for block in blocks(4, nb, (h, w), (cin, cout)) {
        let lay = Narrow::new(&block, (h, w), cout);
        let nt = block.nt;
        let (vs, ms) = (slab(cin, nt), slab(cout, nt));
        let v = resize(&mut s.v, 36 * vs);
        lay.inputs(x, (cin, h, w), &block, &mut s.rt, (v, vs));
        let m = resize(&mut s.m, 36 * ms);
        super::winograd::products(36, u, (v, vs), (m, ms), (cin, cout, nt));
        for o in 0..cout {
            // SAFETY: AVX-512 or AVX2 is present; each scatter writes a tile's output inside its
            // image's plane of channel o (`valid` masks off what lies past the plane's edge)
            unsafe {
                let outs = (&lay.out[..], &lay.valid[..], lay.out_reach);
                output_scattered(m, (o * nt, ms, nt), outs, w, o * h * w, y)
            };
        }
    }
}

/// Where a block's narrow tiles lie: each tile's first input in the block's zero-padded rows
/// (segment k's rows `4·ty0 − 1 .. 4·ty1 + 1`, `wp` wide, from `starts[k]`), its first output
/// in the planes of channel 0 of `[nb, cout, h, w]` (lanes past `nt` read tile 0 and are not
/// stored), and which of its 16 outputs lie inside the plane (`valid[t / 16][4r + c]`, bit
/// `t % 16`).
struct Narrow {
    rows: usize,
    wp: usize,
    starts: Vec<usize>,
    inp: Vec<i32>,
    out: Vec<i32>,
    valid: Vec<[u16; 16]>,
    /// The farthest input a gather reads, and output a scatter (or gather of `dY`) touches
    /// in channel 0's planes: checked once per block by the transforms.
    inp_reach: usize,
    out_reach: usize,
}

impl Narrow {
    fn new(block: &Block, (h, w): (usize, usize), cout: usize) -> Narrow {
        let (ty_n, tx_n) = (h.div_ceil(4), w.div_ceil(4));
        let wp = 4 * tx_n + 2;
        let Block { nt, segments } = block;
        let nt = *nt;
        let mut starts = Vec::with_capacity(segments.len());
        let mut rows = 0;
        for &(_, ty0, ty1, _) in segments {
            starts.push(rows * wp);
            rows += 4 * (ty1 - ty0) + 2;
        }
        let groups = nt.div_ceil(16);
        let (mut inp, mut out) = (vec![0i32; groups * 16], vec![0i32; groups * 16]);
        let mut valid = vec![[0u16; 16]; groups];
        for (k, &(img, ty0, ty1, off)) in segments.iter().enumerate() {
            for ty in ty0..ty1 {
                for tx in 0..tx_n {
                    let t = off + (ty - ty0) * tx_n + tx;
                    inp[t] = (starts[k] + 4 * (ty - ty0) * wp + 4 * tx) as i32;
                    out[t] = (img * cout * h * w + 4 * ty * w + 4 * tx) as i32;
                    for (rc, m) in valid[t / 16].iter_mut().enumerate() {
                        let (r, c) = (rc / 4, rc % 4);
                        if 4 * ty + r < h && 4 * tx + c < w {
                            *m |= 1 << (t % 16);
                        }
                    }
                }
            }
        }
        debug_assert!(segments.iter().all(|&(_, ty0, ty1, _)| ty1 <= ty_n && ty0 < ty1));
        let inp_reach = inp[..nt].iter().map(|&i| i as usize + 5 * wp + 5).max().unwrap_or(0);
        let out_reach = (0..nt)
            .flat_map(|t| (0..16).map(move |rc| (t, rc)))
            .filter(|&(t, rc)| valid[t / 16][rc] & (1 << (t % 16)) != 0)
            .map(|(t, rc)| out[t] as usize + (rc / 4) * w + rc % 4)
            .max()
            .unwrap_or(0);
        Narrow { rows, wp, starts, inp, out, valid, inp_reach, out_reach }
    }

    /// The block's input tiles `V [36][cin][nt]` into `v` (positions `vs` floats apart), from
    /// `x [.., cin, h, w]`: each channel's planes copied into the zero-padded rows, then one
    /// gather per tile input.
    fn inputs(
        &self,
        x: &[f32],
        (cin, h, w): (usize, usize, usize),
        block: &Block,
        rt: &mut Vec<f32>,
        (v, vs): (&mut [f32], usize),
    ) {
        let (wp, nt) = (self.wp, block.nt);
        // zeros once: every channel writes the same positions, so the padding stays zero
        let pad = resize(rt, self.rows * wp);
        pad.fill(0.0);
        for c in 0..cin {
            for (k, &(img, ty0, ty1, _)) in block.segments.iter().enumerate() {
                let plane = &x[(img * cin + c) * h * w..][..h * w];
                for r in 0..4 * (ty1 - ty0) + 2 {
                    let yy = (4 * ty0 + r) as isize - 1;
                    if yy >= 0 && (yy as usize) < h {
                        let at = self.starts[k] + r * wp + 1;
                        pad[at..at + w].copy_from_slice(&plane[yy as usize * w..][..w]);
                    }
                }
            }
            // SAFETY: AVX-512 or AVX2 is present (the callers asserted it); every gather reads `pad`
            // at a tile's start plus less than 5 rows and 6 columns, inside its segment's
            // rows, and the stores stay below `v`'s length (36 copies of `nt` at `vs` apart;
            // the function asserts it)
            unsafe { input_gathered(pad, (wp, self.inp_reach), &self.inp, nt, v, c * nt, vs) };
        }
    }
}

/// Calls of [`conv_narrow`], so that tests can tell that they took this path.
#[cfg(test)]
pub(crate) static NARROW_CALLS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

on_lanes! {
    /// `V = Bᵀ d B` of `nt` tiles whose 6 × 6 inputs start at `pad[inp[t]]` (rows `wp` apart),
    /// into `v[ξ·stride + at + t]`, 16 tiles per step. Needs AVX-512 or AVX2 + FMA; asserts
    /// its bounds.
    fn input_gathered = input_gathered_v(
        pad: &[f32],
        wr: (usize, usize),
        inp: &[i32],
        nt: usize,
        v: &mut [f32],
        at: usize,
        stride: usize,
    )
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn input_gathered_v<V: Lanes>(
    pad: &[f32],
    (wp, reach): (usize, usize),
    inp: &[i32],
    nt: usize,
    v: &mut [f32],
    at: usize,
    stride: usize,
) {
    assert!(inp.len() >= nt.div_ceil(16) * 16, "winograd: tile offsets too short");
    // `reach`: the largest `inp[t] + 5·wp + 5` (the caller's, once per block)
    assert!(reach < pad.len() && inp[..nt].iter().all(|&i| i >= 0), "winograd: inputs outside");
    assert!(35 * stride + at + nt <= v.len(), "winograd: tiles too short");
    let (pp, vp) = (pad.as_ptr(), v.as_mut_ptr());
    let mut t0 = 0;
    while t0 < nt {
        let mask = super::winograd::first(nt - t0);
        let idx = V::index(inp.as_ptr().add(t0));
        // d·B, row by row: rows[r][j]
        let mut rows = [[V::zero(); 6]; 6];
        for (r, row) in rows.iter_mut().enumerate() {
            let mut d = [V::zero(); 6];
            for (c, dc) in d.iter_mut().enumerate() {
                *dc = V::gather(mask, pp.add(r * wp + c), idx);
            }
            *row = bt(d);
        }
        for j in 0..6 {
            let mut col = [V::zero(); 6];
            for (c, row) in col.iter_mut().zip(rows.iter()) {
                *c = row[j];
            }
            let col = bt(col);
            for (i, c) in col.iter().enumerate() {
                c.store(vp.add((i * 6 + j) * stride + at + t0), mask);
            }
        }
        t0 += 16;
    }
}

on_lanes! {
    /// `Aᵀ M A` of `nt` tiles' products `m[ξ·stride + first + t]`, each tile's 4 × 4 outputs
    /// scattered to `y[base + out[t] + r·w + c]` where `valid[t / 16][4r + c]` has the tile's
    /// lane (on AVX2, whose vectors cannot scatter, one store per output). Needs AVX-512 or
    /// AVX2 + FMA; asserts its bounds.
    fn output_scattered = output_scattered_v(
        m: &[f32],
        fsn: (usize, usize, usize),
        ovr: (&[i32], &[[u16; 16]], usize),
        w: usize,
        base: usize,
        y: &mut [f32],
    )
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn output_scattered_v<V: Lanes>(
    m: &[f32],
    (first, stride, nt): (usize, usize, usize),
    (out, valid, reach): (&[i32], &[[u16; 16]], usize),
    w: usize,
    base: usize,
    y: &mut [f32],
) {
    assert!(35 * stride + first + nt <= m.len(), "winograd: products too short");
    assert!(out.len() >= nt.div_ceil(16) * 16 && valid.len() >= nt.div_ceil(16));
    // `reach`: the farthest output of a valid lane (the caller's, once per block)
    assert!(base + reach < y.len(), "winograd: outputs outside y");
    let (mp, yp) = (m.as_ptr(), y.as_mut_ptr().add(base));
    let mut t0 = 0;
    while t0 < nt {
        let mask = super::winograd::first(nt - t0);
        let idx = V::index(out.as_ptr().add(t0));
        macro_rules! mv {
            ($xi:expr) => {
                V::load(mask, mp.add($xi * stride + first + t0))
            };
        }
        // Aᵀ down each column j: s[r][j], then along each row
        let mut sr = [[V::zero(); 6]; 4];
        for j in 0..6 {
            let col = at([mv!(j), mv!(6 + j), mv!(12 + j), mv!(18 + j), mv!(24 + j), mv!(30 + j)]);
            for (row, v) in sr.iter_mut().zip(col.iter()) {
                row[j] = *v;
            }
        }
        for (r, row) in sr.iter().enumerate() {
            let y4 = at(*row);
            for (c, v) in y4.iter().enumerate() {
                let k = valid[t0 / 16][r * 4 + c] & mask;
                v.scatter(k, yp, V::index_add(idx, (r * w + c) as i32));
            }
        }
        t0 += 16;
    }
}

on_lanes! {
    /// `Ŷ = A dY Aᵀ` of `nt` tiles whose 4 × 4 outputs start at `dy[base + out[t]]` (rows `w`
    /// apart; outputs outside the plane, where `valid[t / 16]` lacks the tile's lane, count as
    /// zeros), into `m[ξ·stride + first + t]`, 16 tiles per step: the adjoint of
    /// [`output_scattered`]. Needs AVX-512 or AVX2 + FMA; asserts its bounds.
    fn grad_gathered = grad_gathered_v(
        dy: &[f32],
        lwb: (&Narrow, usize, usize),
        m: &mut [f32],
        fsn: (usize, usize, usize),
    )
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn grad_gathered_v<V: Lanes>(
    dy: &[f32],
    (lay, w, base): (&Narrow, usize, usize),
    m: &mut [f32],
    (first, stride, nt): (usize, usize, usize),
) {
    let (out, valid) = (&lay.out, &lay.valid);
    assert!(35 * stride + first + nt <= m.len(), "winograd: gradient tiles too short");
    assert!(out.len() >= nt.div_ceil(16) * 16 && valid.len() >= nt.div_ceil(16));
    assert!(base + lay.out_reach < dy.len(), "winograd: gradient tiles outside dY");
    let (dp, mp) = (dy.as_ptr().add(base), m.as_mut_ptr());
    let mut t0 = 0;
    while t0 < nt {
        let mask = super::winograd::first(nt - t0);
        let idx = V::index(out.as_ptr().add(t0));
        // dY Aᵀ along each row r: p[r][j], then A down each column j
        let mut p = [[V::zero(); 6]; 4];
        for (r, pr) in p.iter_mut().enumerate() {
            let mut d = [V::zero(); 4];
            for (c, dc) in d.iter_mut().enumerate() {
                let k = valid[t0 / 16][r * 4 + c] & mask;
                *dc = V::gather(k, dp, V::index_add(idx, (r * w + c) as i32));
            }
            *pr = a6(d);
        }
        for j in 0..6 {
            let mut col = [V::zero(); 4];
            for (c, row) in col.iter_mut().zip(p.iter()) {
                *c = row[j];
            }
            let col = a6(col);
            for (i, c) in col.iter().enumerate() {
                c.store(mp.add((i * 6 + j) * stride + first + t0), mask);
            }
        }
        t0 += 16;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn grad_gathered(
    _: &[f32],
    _: (&Narrow, usize, usize),
    _: &mut [f32],
    _: (usize, usize, usize),
) {
    unreachable!("winograd weight gradient without AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn input_gathered(
    _: &[f32],
    _: (usize, usize),
    _: &[i32],
    _: usize,
    _: &mut [f32],
    _: usize,
    _: usize,
) {
    unreachable!("winograd convolution without AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn output_scattered(
    _: &[f32],
    _: (usize, usize, usize),
    _: (&[i32], &[[u16; 16]], usize),
    _: usize,
    _: usize,
    _: &mut [f32],
) {
    unreachable!("winograd convolution without AVX-512")
}

/// `dU [36][cin][cout] +=` the kernel gradient in Winograd's basis of the 3 × 3, padding-1
/// convolution of `x [nb, cin, h, w]` whose output gradient is `dy [nb, cout, h, w]`, on
/// planes that [`fits`] or [`narrow_fits`]; [`kernel_grad_into`] takes the sum of several
/// calls back to `dW`.
/// Panics without AVX-512 or AVX2 + FMA, or on slices of the wrong length.
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
    assert!(w <= 32, "winograd F(4×4): planes {w} wide");
    assert_eq!(x.len(), nb * cin * h * w, "winograd weight gradient: input length");
    assert_eq!(dy.len(), nb * cout * h * w, "winograd weight gradient: gradient length");
    assert_eq!(du.len(), 36 * cout * cin, "winograd weight gradient: accumulator length");
    if w <= NARROW_MAX {
        assert!(dy.len() < i32::MAX as usize, "winograd weight gradient: too large to index");
        // narrow planes: the tiles gathered as `conv_narrow` gathers them, in blocks of up
        // to 256 tiles (a convolution's chunk of images is one block): each block's products
        // add onto all of dU, and their inner dimension is the block's tiles. One thread,
        // Intel Xeon, a layer's backward: 256 × 128 × 7 × 7 46 → 42 ms with blocks of the
        // forward's size (56 tiles) and of 256; 64 × 256 × 8 × 8 54–58 → 41–42.
        for block in blocks_of(4, nb, (h, w), NARROW_DW_TILES) {
            let lay = Narrow::new(&block, (h, w), cout);
            let nt = block.nt;
            let (vs, ms) = (slab(cin, nt), slab(cout, nt));
            let v = resize(&mut s.v, 36 * vs);
            lay.inputs(x, (cin, h, w), &block, &mut s.rt, (v, vs));
            let m = resize(&mut s.m, 36 * ms);
            for o in 0..cout {
                // SAFETY: AVX-512 or AVX2 is present (asserted above); each gather reads a tile's
                // outputs inside its image's plane of channel o (`valid` masks the rest off),
                // and the function asserts the rest of its bounds
                unsafe { grad_gathered(dy, (&lay, w, o * h * w), m, (o * nt, ms, nt)) };
            }
            let (vv, mv) = ((&v[..], vs), (&m[..], ms));
            super::winograd::accumulate_du(36, (vv, mv, &mut s.mt), (cin, cout, nt), du);
        }
        return;
    }
    let tx_n = w.div_ceil(4);
    for Block { nt, segments } in blocks(4, nb, (h, w), (cin, cout)) {
        let (vs, ms) = (slab(cin, nt), slab(cout, nt));
        let v = resize(&mut s.v, 36 * vs);
        for &(img, ty0, ty1, off) in &segments {
            for c in 0..cin {
                let plane = &x[(img * cin + c) * h * w..][..h * w];
                let (dims, rows) = ((h, w), (ty0, ty1, tx_n));
                // SAFETY: AVX-512 or AVX2 is present (asserted above); it asserts its bounds.
                unsafe { input_tiles(plane, dims, rows, &mut s.rt, v, c * nt + off, vs) };
            }
        }
        let m = resize(&mut s.m, 36 * ms);
        for &(img, ty0, ty1, off) in &segments {
            for o in 0..cout {
                let plane = &dy[(img * cout + o) * h * w..][..h * w];
                let (dims, rows) = ((h, w), (ty0, ty1, tx_n));
                // SAFETY: AVX-512 or AVX2 is present (asserted above); it asserts its bounds.
                unsafe { grad_tiles(plane, dims, rows, &mut s.rt, m, o * nt + off, ms) };
            }
        }
        let (vv, mv) = ((&v[..], vs), (&m[..], ms));
        super::winograd::accumulate_du(36, (vv, mv, &mut s.mt), (cin, cout, nt), du);
    }
}

/// `dwt [cin·9, cout] +=` the kernel gradient whose transform [`weight_grad`] summed into
/// `du`. Panics without AVX-512 or AVX2 + FMA or on slices of the wrong length.
pub(crate) fn kernel_grad_into(du: &[f32], (cin, cout): (usize, usize), dwt: &mut [f32]) {
    super::winograd::kernel_grad_with(&G, du, (cin, cout), dwt);
}

/// Calls of [`weight_grad`], so that tests can tell that they took this path.
#[cfg(test)]
pub(crate) static DW_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `A (d0 .. d3)`, lane by lane (`A = (Aᵀ)ᵀ`, 6 × 4): the adjoint of [`at`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn a6<V: Lanes>(d: [V; 4]) -> [V; 6] {
    let (s02, s13) = (d[0].add(d[2]), d[1].add(d[3]));
    // d0 + 4 d2 and d1 + 4 d3: rows 3 and 4 are (d0 + 4 d2) ± 2 (d1 + 4 d3)
    let (p, q) = (V::splat(4.0).fma(d[2], d[0]), V::splat(4.0).fma(d[3], d[1]));
    [d[0], s02.add(s13), s02.sub(s13), V::splat(2.0).fma(q, p), V::splat(2.0).fnma(q, p), d[3]]
}

on_lanes! {
    /// Tile rows `ty0..ty1` of one output-gradient plane, `A dY Aᵀ` (the adjoint of
    /// [`output_tiles`]' `Aᵀ M A`), into `m[ξ·stride + at + (ty − ty0)·tx_n + tx]`: first `dY
    /// Aᵀ` along each row (`rt`, 6 vectors of a row's tiles), then `A` down the 4 rows of each
    /// row of tiles. The outputs of a tile past the plane's edge count as zeros. Needs
    /// AVX-512 or AVX2 + FMA; asserts its bounds.
    fn grad_tiles = grad_tiles_v(
        plane: &[f32],
        hw: (usize, usize),
        rows: (usize, usize, usize),
        rt: &mut Vec<f32>,
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
    rt: &mut Vec<f32>,
    m: &mut [f32],
    at: usize,
    stride: usize,
) {
    assert!(w <= 32 && tx_n == w.div_ceil(4), "winograd F(4×4): planes {w} wide");
    assert!(plane.len() >= h * w, "winograd: gradient plane too short");
    assert!(
        super::winograd::holds_copies(36, m.len(), stride, at, (ty0, ty1, tx_n)),
        "winograd: gradient tiles too short"
    );
    let rows = 4 * (ty1 - ty0);
    let rt = resize(rt, rows * 6 * 16);
    let (m0, m1) = (super::winograd::first(w), super::winograd::first(w.saturating_sub(16)));
    for k in 0..rows {
        let out = rt.as_mut_ptr().add(k * 6 * 16);
        let y = 4 * ty0 + k;
        if y >= h {
            std::ptr::write_bytes(out, 0, 6 * 16);
            continue;
        }
        let src = plane.as_ptr().add(y * w);
        let (a0, a1) = (V::load(m0, src), V::load(m1, src.wrapping_add(16)));
        // lane l of phase j is column 4l + j of the row
        let t = a6(V::phases(a0, a1));
        for (j, t) in t.iter().enumerate() {
            t.store(out.add(j * 16), u16::MAX);
        }
    }
    let mask = super::winograd::first(tx_n);
    let (rtp, mp) = (rt.as_ptr(), m.as_mut_ptr());
    for ty in 0..ty1 - ty0 {
        let base = at + ty * tx_n;
        for j in 0..6 {
            macro_rules! r {
                ($i:expr) => {
                    V::load(u16::MAX, rtp.add(((4 * ty + $i) * 6 + j) * 16))
                };
            }
            let col = a6([r!(0), r!(1), r!(2), r!(3)]);
            for (i, c) in col.iter().enumerate() {
                c.store(mp.add((i * 6 + j) * stride + base), mask);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn grad_tiles(
    _: &[f32],
    _: (usize, usize),
    _: (usize, usize, usize),
    _: &mut Vec<f32>,
    _: &mut [f32],
    _: usize,
    _: usize,
) {
    unreachable!("winograd weight gradient without AVX-512")
}

/// `Bᵀ (d0 .. d5)`, lane by lane.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bt<V: Lanes>(d: [V; 6]) -> [V; 6] {
    let (s12, d12) = (d[1].add(d[2]), d[1].sub(d[2]));
    let (s34, d43) = (d[3].add(d[4]), d[4].sub(d[3]));
    let (d42, d31) = (d[4].sub(d[2]), d[3].sub(d[1]));
    [
        V::splat(4.0).fma(d[0], V::splat(-5.0).fma(d[2], d[4])),
        V::splat(-4.0).fma(s12, s34),
        V::splat(4.0).fma(d12, d43),
        V::splat(2.0).fma(d31, d42),
        V::splat(-2.0).fma(d31, d42),
        V::splat(4.0).fma(d[1], V::splat(-5.0).fma(d[3], d[5])),
    ]
}

/// `Aᵀ (m0 .. m5)`, lane by lane.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn at<V: Lanes>(m: [V; 6]) -> [V; 4] {
    let (a, b) = (m[1].add(m[2]), m[1].sub(m[2]));
    let (c, d) = (m[3].add(m[4]), m[3].sub(m[4]));
    [
        m[0].add(a).add(c),
        V::splat(2.0).fma(d, b),
        V::splat(4.0).fma(c, a),
        V::splat(8.0).fma(d, b).add(m[5]),
    ]
}

on_lanes! {
    /// Tile rows `ty0..ty1` of one plane, `Bᵀ d B`, into `v[ξ·stride + at + (ty −
    /// ty0)·tx_n + tx]`: first `d·B` for each input row they read (`rt`, row `k` holding input
    /// row `4·ty0 + k − 1`, 6 vectors of a row's tiles), then `Bᵀ` down the rows of each row
    /// of tiles. Needs AVX-512 or AVX2 + FMA; asserts its bounds.
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
    assert!(w <= 32 && tx_n == w.div_ceil(4), "winograd F(4×4): planes {w} wide");
    assert!(plane.len() >= h * w, "winograd: input plane too short");
    assert!(
        super::winograd::holds_copies(36, v.len(), stride, at, (ty0, ty1, tx_n)),
        "winograd: tiles too short"
    );
    let rows = 4 * (ty1 - ty0) + 2;
    let rt = resize(rt, rows * 6 * 16);
    let inside = |c: isize| -> u16 {
        let lo = (-c).clamp(0, 16) as u32;
        let hi = (w as isize - c).clamp(0, 16) as u32;
        if hi <= lo {
            0
        } else {
            (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16
        }
    };
    for k in 0..rows {
        let out = rt.as_mut_ptr().add(k * 6 * 16);
        let y = (4 * ty0 + k) as isize - 1;
        if y < 0 || y as usize >= h {
            std::ptr::write_bytes(out, 0, 6 * 16);
            continue;
        }
        let src = plane.as_ptr().add(y as usize * w);
        // columns c .. c + 31, zeros outside the row (masked-off lanes are not read), as its
        // four phases: lane l of phase j is column c + 4l + j (a macro, not a closure: see
        // `super::lanes`)
        macro_rules! window {
            ($c:expr) => {{
                let c: isize = $c;
                let p = src.wrapping_offset(c);
                V::phases(V::load(inside(c), p), V::load(inside(c + 16), p.wrapping_add(16)))
            }};
        }
        // tile tx reads columns 4tx − 1 ..= 4tx + 4: d0..d3 from the window at −1, d4, d5 from
        // the one at 3
        let a = window!(-1);
        let b = window!(3);
        let t = bt([a[0], a[1], a[2], a[3], b[0], b[1]]);
        for (j, t) in t.iter().enumerate() {
            t.store(out.add(j * 16), u16::MAX);
        }
    }
    let m = super::winograd::first(tx_n);
    let (rtp, vp) = (rt.as_ptr(), v.as_mut_ptr());
    for ty in 0..ty1 - ty0 {
        let base = at + ty * tx_n;
        for j in 0..6 {
            macro_rules! r {
                ($i:expr) => {
                    V::load(u16::MAX, rtp.add(((4 * ty + $i) * 6 + j) * 16))
                };
            }
            let col = bt([r!(0), r!(1), r!(2), r!(3), r!(4), r!(5)]);
            for (i, c) in col.iter().enumerate() {
                c.store(vp.add((i * 6 + j) * stride + base), m);
            }
        }
    }
}

on_lanes! {
    /// Tile rows `ty0..ty1` of one output plane from their products `m[ξ·stride + at + (ty −
    /// ty0)·tx_n + tx]`: `Aᵀ M A`, a row of tiles at a time, their 4 × 4 outputs interleaved
    /// into four rows of up to 32 columns. Needs AVX-512 or AVX2 + FMA; asserts its bounds.
    fn output_tiles = output_tiles_v(
        m: &[f32],
        at_: usize,
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
    at_: usize,
    stride: usize,
    (ty0, ty1, tx_n): (usize, usize, usize),
    (h, w): (usize, usize),
    plane: &mut [f32],
) {
    assert!(w <= 32 && tx_n == w.div_ceil(4), "winograd F(4×4): planes {w} wide");
    assert!(
        super::winograd::holds_copies(36, m.len(), stride, at_, (ty0, ty1, tx_n)),
        "winograd: products too short"
    );
    assert!(plane.len() >= h * w, "winograd: output plane too short");
    let mask = super::winograd::first(tx_n);
    for ty in ty0..ty1 {
        let base = at_ + (ty - ty0) * tx_n;
        macro_rules! mv {
            ($xi:expr) => {
                V::load(mask, m.as_ptr().add($xi * stride + base))
            };
        }
        // Aᵀ down each column j: s[r][j]
        let mut s = [[V::zero(); 6]; 4];
        for j in 0..6 {
            let col = at([mv!(j), mv!(6 + j), mv!(12 + j), mv!(18 + j), mv!(24 + j), mv!(30 + j)]);
            for (row, v) in s.iter_mut().zip(col.iter()) {
                row[j] = *v;
            }
        }
        for (r, sr) in s.iter().enumerate() {
            let yy = 4 * ty + r;
            if yy >= h {
                break;
            }
            let (lo, hi) = V::quads(at(*sr));
            let row = plane.as_mut_ptr().add(yy * w);
            lo.store(row, super::winograd::first(w));
            if w > 16 {
                hi.store(row.add(16), super::winograd::first(w - 16));
            }
        }
    }
}

// without AVX-512 (where `conv` panics first), the other module's stubs
#[cfg(not(target_arch = "x86_64"))]
use super::winograd::{input_tiles, output_tiles};

#[cfg(test)]
mod tests {
    /// F(4×4)'s transforms on a plane 25 to 32 wide, as bits, on lanes `V`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn f4_bits<V: super::Lanes>((h, w): (usize, usize), seed: u64) -> Vec<u32> {
        use crate::kit::gradcheck::random;
        let (tx_n, ty_n) = (w.div_ceil(4), h.div_ceil(4));
        let stride = ty_n * tx_n + 3;
        let plane = random(&[h * w], seed).data;
        let mut v = vec![0.0f32; 36 * stride];
        let rows = (0, ty_n, tx_n);
        super::input_tiles_v::<V>(&plane, (h, w), rows, &mut Vec::new(), &mut v, 0, stride);
        let m = random(&[36 * stride], seed + 1).data;
        let mut y = vec![0.0f32; h * w];
        super::output_tiles_v::<V>(&m, 0, stride, rows, (h, w), &mut y);
        let mut g = vec![0.0f32; 36 * stride];
        super::grad_tiles_v::<V>(&plane, (h, w), rows, &mut Vec::new(), &mut g, 0, stride);
        [v, y, g].concat().iter().map(|x| x.to_bits()).collect()
    }

    /// The AVX2 bodies give the AVX-512 bodies' bits where the CPU has both.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_transforms_give_the_avx512_bits() {
        #[target_feature(enable = "avx512f")]
        unsafe fn z(hw: (usize, usize), seed: u64) -> Vec<u32> {
            f4_bits::<crate::kit::lanes::Z>(hw, seed)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn y(hw: (usize, usize), seed: u64) -> Vec<u32> {
            f4_bits::<crate::kit::lanes::Y>(hw, seed)
        }
        crate::kit::lanes::assert_same_bits_on_both(
            &[(1, 25), (5, 28), (7, 32), (9, 27), (28, 28)],
            z,
            y,
        );
    }

    /// The kernel gradient on planes of 25 to 32 columns (partial tiles at the right and bottom
    /// edges, one row of tiles, several images), against the direct sum in f64. The larger
    /// tile rounds more here too: at 2 images of 16 → 17 channels of 28 × 28 the worst error was
    /// 2.2e-4 at a scale of 8.1 (2.8e-5 of it), F(2×2)'s 1.8e-5.
    #[test]
    fn weight_grad_is_the_direct_sum() {
        if !crate::kit::simd_gemm::available() {
            return;
        }
        for (nb, c, o, h, w) in [
            (1, 1, 1, 1, 25),
            (2, 3, 2, 5, 28),
            (1, 2, 3, 7, 32),
            (3, 4, 5, 9, 27),
            (2, 16, 17, 28, 28),
            // narrow planes: the tiles gathered
            (1, 1, 1, 1, 1),
            (2, 3, 2, 5, 7),
            (3, 4, 5, 7, 7),
            (2, 5, 4, 13, 11),
            (5, 8, 8, 4, 4),
            (2, 16, 17, 16, 16),
        ] {
            let x: Vec<f32> =
                (0..nb * c * h * w).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 50.0).collect();
            let dy: Vec<f32> =
                (0..nb * o * h * w).map(|i| ((i * 104729 % 97) as f32 - 48.0) / 48.0).collect();
            let (mut du, mut dw) = (vec![0.0f32; 36 * o * c], vec![0.0f32; o * c * 9]);
            super::weight_grad(&x, (nb, c, h, w), &dy, o, &mut du, &mut Default::default());
            super::kernel_grad_into(&du, (c, o), &mut dw);
            let want = crate::kit::winograd::direct_weight_grad(&x, &dy, (nb, c, o, h, w));
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let worst =
                dw.iter().zip(&want).fold(0.0f64, |m, (&g, &s)| m.max((g as f64 - s).abs()));
            assert!(
                worst <= 1e-4 * scale.max(1.0),
                "{nb} {c} {o} {h} {w}: worst error {worst} at scale {scale}"
            );
        }
    }

    /// Planes of 25 to 32 columns and a few rows (a partial tile at the bottom and the right
    /// edge), the forward and the flipped kernel, against the direct sum in f64.
    #[test]
    fn conv_is_the_direct_sum() {
        if !crate::kit::simd_gemm::available() {
            return;
        }
        for (nb, c, o, h, w, flip) in [
            (1, 1, 1, 1, 25, false),
            (2, 3, 2, 5, 28, false),
            (1, 2, 3, 7, 32, true),
            (3, 4, 5, 9, 27, true),
            (2, 16, 17, 28, 28, false),
            // narrow planes: conv_narrow
            (1, 1, 1, 1, 1, false),
            (2, 3, 2, 5, 7, true),
            (1, 2, 3, 7, 7, false),
            (3, 4, 5, 9, 16, true),
            (2, 16, 17, 14, 14, false),
            (5, 8, 8, 4, 4, false),
            (3, 3, 3, 8, 8, true),
            (2, 5, 4, 13, 11, false),
        ] {
            let x: Vec<f32> = (0..nb * c.max(o) * h * w)
                .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let k: Vec<f32> =
                (0..o * c * 9).map(|i| ((i * 104729 % 97) as f32 - 48.0) / 48.0).collect();
            // with `flip`, the kernel of the input gradient: c and o swapped
            let (cin, cout) = if flip { (o, c) } else { (c, o) };
            let x = &x[..nb * cin * h * w];
            let u = super::weights(&k, o, c, flip);
            // NaN where a path would leave an output unwritten
            let mut y = vec![f32::NAN; nb * cout * h * w];
            if w <= super::NARROW_MAX {
                super::conv_narrow(x, (nb, cin, h, w), &u, cout, &mut y, &mut Default::default());
            } else {
                super::conv(x, (nb, cin, h, w), &u, cout, &mut y, &mut Default::default());
            }
            let tap = |oo: usize, ci: usize, p: usize, q: usize| {
                if flip {
                    k[(ci * c + oo) * 9 + (2 - p) * 3 + 2 - q]
                } else {
                    k[(oo * c + ci) * 9 + p * 3 + q]
                }
            };
            let mut scale = 0.0f64;
            let mut worst = 0.0f64;
            for n in 0..nb {
                for oo in 0..cout {
                    for r in 0..h {
                        for t in 0..w {
                            let mut s = 0.0f64;
                            for ci in 0..cin {
                                for p in 0..3 {
                                    for q in 0..3 {
                                        let (yy, xx) = (
                                            r as isize + p as isize - 1,
                                            t as isize + q as isize - 1,
                                        );
                                        if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize
                                        {
                                            continue;
                                        }
                                        s += tap(oo, ci, p, q) as f64
                                            * x[((n * cin + ci) * h + yy as usize) * w
                                                + xx as usize]
                                                as f64;
                                    }
                                }
                            }
                            let got = y[((n * cout + oo) * h + r) * w + t] as f64;
                            scale = scale.max(s.abs());
                            worst = worst.max((got - s).abs());
                        }
                    }
                }
            }
            assert!(
                worst <= 1e-5 * scale.max(1.0),
                "{nb} {c} {o} {h} {w} {flip}: worst error {worst} at scale {scale}"
            );
        }
    }
}
