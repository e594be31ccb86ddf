//! A single-threaded matrix multiply for the convolution's products, on AVX-512 where the
//! CPU has it and on AVX2 + FMA elsewhere (the `gemm` crate uses AVX-512 only on nightly Rust,
//! and its AVX2 path packs both operands, which the implicit convolutions cannot hand it).
//!
//! ```text
//! C[m, n] (+)= A[m, k] · B[k, n]
//! A: any strides (element (i, p) at a[i·a_rs + p·a_cs]);  B, C: row-major, row strides ldb, ldc
//! ```
//! AVX-512: tiles of 12 rows x 32 columns: per step of k, two 16-lane loads of B's row and
//! twelve broadcasts of A's column feed 24 fused multiply-adds into 24 accumulator registers
//! (8 rows and 16 accumulators left half the registers idle: 205 GFLOP/s on one Zen 5 core
//! against 245 with 12, whose peak is 260). AVX2: tiles of 6 x 16, two 8-lane loads and six
//! broadcasts into 12 of the 16 registers. A tile's columns of B are contiguous in each row
//! (conv's `cols` and `dY`), so the AVX-512 kernel reads B in place. The AVX2 kernel copies a
//! block's panel of B (256 rows × 16 columns) into a contiguous buffer on its stack when more
//! than one row tile passes over it: rows of B a power of two apart fall into a few of L1's
//! sets and evict each other (on Zen 3, 81 → 94 GFLOP/s on a 256³ product, the step 0.92×).
//! Column tails use masked loads and stores.
//!
//! Both kernels give the same bits: each element of C is summed over k in order, one fused
//! multiply-add per step from zero, in blocks of [`KC`] steps added onto C, so a run on an
//! AVX2 machine and one on an AVX-512 machine agree wherever they take the same paths.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Tests turn the kernel off to check the portable path on AVX-512 machines too.
#[cfg(test)]
pub(crate) static DISABLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Rows of k per block: the block of B's panel (KC x 32 floats, 32 KiB) stays in L1 while
/// every row tile of A passes over it; blocks after the first add onto C.
const KC: usize = 256;

/// True when [`gemm()`] can run here: the CPU has AVX-512, or AVX2 with FMA.
pub fn available() -> bool {
    #[cfg(test)]
    if DISABLED.load(std::sync::atomic::Ordering::SeqCst) {
        return false;
    }
    cpu_has_kernel()
}

/// True when the CPU has AVX-512 (Foundation): the kit's AVX-512-only paths (the 12 × 32
/// kernel, the 16 × 16 transpose, batch norm's masks by compare) run here.
pub fn avx512() -> bool {
    #[cfg(test)]
    if DISABLED.load(std::sync::atomic::Ordering::SeqCst) {
        return false;
    }
    cpu_has_avx512()
}

/// [`available`] as the CPU answers it, whatever a test switched off: the kernels' asserts
/// ask this, so that a test turning the paths off ([`DISABLED`]) cannot fail a product that
/// another test, running beside it, had already started on them.
pub(crate) fn cpu_has_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        cpu_has_avx512()
            || *AVX2.get_or_init(|| {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`avx512`] as the CPU answers it (see [`cpu_has_kernel`]).
pub(crate) fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `f()`, compiled for AVX-512 where the CPU has it, else for AVX2 + FMA where it has those.
/// The crates build for baseline x86-64 (SSE2), and a loop that LLVM vectorises inside `f`
/// (inlined here) gets 16 or 8 lanes instead of 4. For element-wise passes over activations
/// (batch norm, ReLU, plane sums); the results are the same either way (Rust lets LLVM fuse no
/// multiply and add that the source keeps apart), as long as `f` fixes the order of its sums,
/// as [`super::conv::dot_sums`] does.
#[inline]
pub fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        #[target_feature(enable = "avx512f")]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: AVX-512 is present (checked above).
        return unsafe { wide(f) };
    } else if available() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: AVX2 and FMA are present (`available` without `avx512`).
        return unsafe { wide(f) };
    }
    f()
}

/// Strided view of `A`.
#[derive(Clone, Copy)]
pub struct StridedA<'a> {
    /// Values.
    pub data: &'a [f32],
    /// Step between rows.
    pub rs: usize,
    /// Step between columns.
    pub cs: usize,
}

/// How the rows of an operand are found: at a fixed step, or at the offsets of a table (the
/// rows of an implicit convolution's patch matrix are shifted views of one padded plane).
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// Row `r` starts at `r · step`.
    Step(usize),
    /// Row `r` starts at `table[r]`.
    Table(&'a [usize]),
}

impl Rows<'_> {
    /// The largest start among the first `count` rows (`count` > 0); panics if the table is
    /// shorter.
    fn last_start(&self, count: usize) -> usize {
        match self {
            Rows::Step(s) => (count - 1) * s,
            Rows::Table(t) => {
                assert!(t.len() >= count, "simd gemm: {} row offsets for {count} rows", t.len());
                t[..count].iter().copied().max().unwrap_or(0)
            }
        }
    }
}

/// `C = A · B` (or `C += A · B`) for `A [m, k]`, `B [k, n]` (row stride `ldb`), `C [m, n]` (row
/// stride `ldc`). Panics if a view is out of bounds or the CPU has neither AVX-512 nor AVX2 +
/// FMA ([`available`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: StridedA,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(ldb >= n, "simd gemm: row stride {ldb} of B shorter than {n} columns");
    gemm_rows(m, n, k, (a.data, Rows::Step(a.rs), a.cs), (b, Rows::Step(ldb)), c, ldc, accumulate);
}

/// As [`gemm()`], with the rows of A (element (i, p) at `a[rows(i) + p·cs]`) and of B (element
/// (p, j) at `b[rows(p) + j]`) found by [`Rows`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows(
    m: usize,
    n: usize,
    k: usize,
    (a, a_rows, a_cs): (&[f32], Rows, usize),
    (b, b_rows): (&[f32], Rows),
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    gemm_rows_on(avx512(), m, n, k, (a, a_rows, a_cs), (b, b_rows), c, ldc, accumulate)
}

/// [`gemm_rows`] on the AVX-512 kernel (`wide`) or the AVX2 one.
#[allow(clippy::too_many_arguments)]
fn gemm_rows_on(
    wide: bool,
    m: usize,
    n: usize,
    k: usize,
    (a, a_rows, a_cs): (&[f32], Rows, usize),
    (b, b_rows): (&[f32], Rows),
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(cpu_has_kernel(), "simd gemm without AVX-512 or AVX2 + FMA");
    assert!(!wide || cpu_has_avx512(), "simd gemm: the AVX-512 kernel without AVX-512");
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n, "simd gemm: row stride {ldc} of C shorter than {n} columns");
    assert!(c.len() > (m - 1) * ldc + n - 1, "simd gemm: C too short");
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| c[i * ldc..i * ldc + n].fill(0.0));
        }
        return;
    }
    assert!(a.len() > a_rows.last_start(m) + (k - 1) * a_cs, "simd gemm: A too short");
    assert!(b.len() > b_rows.last_start(k) + n - 1, "simd gemm: B too short");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512, or AVX2 and FMA, are present (asserted, `wide` only with AVX-512); the
    // asserts above bound every element read or written (every row start of A and B, and the
    // tables' lengths, are checked); masked loads and stores touch only the columns below n.
    unsafe {
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        macro_rules! go {
            ($ra:expr, $rb:expr) => {
                if wide {
                    gemm_avx512(m, n, k, (a, $ra, a_cs), (b, $rb), c, ldc, accumulate)
                } else {
                    gemm_avx2(m, n, k, (a, $ra, a_cs), (b, $rb), c, ldc, accumulate)
                }
            };
        }
        match (a_rows, b_rows) {
            (Rows::Step(ar), Rows::Step(br)) => go!(Step(ar), Step(br)),
            (Rows::Step(ar), Rows::Table(bt)) => go!(Step(ar), Table(bt.as_ptr())),
            (Rows::Table(at), Rows::Step(br)) => go!(Table(at.as_ptr()), Step(br)),
            (Rows::Table(at), Rows::Table(bt)) => go!(Table(at.as_ptr()), Table(bt.as_ptr())),
        }
    }
}

/// [`Rows`] inside the kernel, one type each so that the stepped case compiles as it always did.
trait RowAt: Copy {
    /// Offset of row `r` from the view's base.
    unsafe fn at(self, r: usize) -> usize;
    /// The view from row `r` on: its base moves by the returned offset.
    unsafe fn from(self, r: usize) -> (Self, usize);
}

#[derive(Clone, Copy)]
struct Step(usize);

#[derive(Clone, Copy)]
struct Table(*const usize);

impl RowAt for Step {
    #[inline(always)]
    unsafe fn at(self, r: usize) -> usize {
        r * self.0
    }
    #[inline(always)]
    unsafe fn from(self, r: usize) -> (Self, usize) {
        (self, r * self.0)
    }
}

impl RowAt for Table {
    #[inline(always)]
    unsafe fn at(self, r: usize) -> usize {
        *self.0.add(r)
    }
    #[inline(always)]
    unsafe fn from(self, r: usize) -> (Self, usize) {
        (Table(self.0.add(r)), 0)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx512<RA: RowAt, RB: RowAt>(
    m: usize,
    n: usize,
    k: usize,
    (a, a_rows, a_cs): (*const f32, RA, usize),
    (b, b_rows): (*const f32, RB),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const MR: usize = 12;
    const NR: usize = 32;
    let mut j = 0;
    while j < n {
        let w = (n - j).min(NR);
        let m0: __mmask16 = if w >= 16 { 0xffff } else { (1u32 << w) as u16 - 1 };
        let m1: __mmask16 = if w >= 32 {
            0xffff
        } else if w > 16 {
            (1u32 << (w - 16)) as u16 - 1
        } else {
            0
        };
        // k in blocks of KC rows (see KC)
        let mut p0 = 0;
        while p0 < k {
            let kc = (k - p0).min(KC);
            let acc = accumulate || p0 > 0;
            let (bv, boff) = b_rows.from(p0);
            let bj = b.add(boff + j);
            let mut i = 0;
            while i < m {
                let (av, aoff) = a_rows.from(i);
                let ai = a.add(aoff + p0 * a_cs);
                let ci = c.add(i * ldc + j);
                let (a_, b_) = ((ai, av, a_cs), (bj, bv));
                match (m - i).min(MR) {
                    12 => tile::<12, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    11 => tile::<11, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    10 => tile::<10, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    9 => tile::<9, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    8 => tile::<8, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    7 => tile::<7, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    6 => tile::<6, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    5 => tile::<5, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    4 => tile::<4, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    3 => tile::<3, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    2 => tile::<2, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                    _ => tile::<1, _, _>(kc, a_, b_, ci, ldc, m0, m1, acc),
                }
                i += MR;
            }
            p0 += kc;
        }
        j += NR;
    }
}

/// One `R x 32` tile of C over `k` rows of B.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, RA: RowAt, RB: RowAt>(
    k: usize,
    (a, a_rows, a_cs): (*const f32, RA, usize),
    (b, b_rows): (*const f32, RB),
    c: *mut f32,
    ldc: usize,
    m0: __mmask16,
    m1: __mmask16,
    accumulate: bool,
) {
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    for p in 0..k {
        let bp = b.add(b_rows.at(p));
        let b0 = _mm512_maskz_loadu_ps(m0, bp);
        let b1 = _mm512_maskz_loadu_ps(m1, bp.add(16));
        let ap = a.add(p * a_cs);
        for r in 0..R {
            let av = _mm512_set1_ps(*ap.add(a_rows.at(r)));
            acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
            acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
        }
    }
    for r in 0..R {
        let cp = c.add(r * ldc);
        let (mut u, mut v) = (acc0[r], acc1[r]);
        if accumulate {
            u = _mm512_add_ps(u, _mm512_maskz_loadu_ps(m0, cp));
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m1, cp.add(16)));
        }
        _mm512_mask_storeu_ps(cp, m0, u);
        _mm512_mask_storeu_ps(cp.add(16), m1, v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx2<RA: RowAt, RB: RowAt>(
    m: usize,
    n: usize,
    k: usize,
    (a, a_rows, a_cs): (*const f32, RA, usize),
    (b, b_rows): (*const f32, RB),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const MR: usize = 6;
    const NR: usize = 16;
    // B's panel copied into contiguous rows of 16 when more than one row tile passes over it:
    // rows of B a power of two apart fall into a few of L1's sets and evict each other
    #[repr(align(64))]
    struct Panel([f32; KC * NR]);
    let mut panel = std::mem::MaybeUninit::<Panel>::uninit();
    let pp = std::ptr::addr_of_mut!((*panel.as_mut_ptr()).0) as *mut f32;
    let pack = m > MR;
    // rows of the next tile when `left` rows remain: 6, but a last 7 to 9 as two tiles of 3
    // to 5 rather than 6 and 1 to 3 (under 4 rows, too few accumulators to cover the fused
    // multiply-add's latency); each element's sum is the same either way
    let rows_at =
        |left: usize| if left > MR && left < MR + 4 { left.div_ceil(2) } else { left.min(MR) };
    let mut j = 0;
    while j < n {
        let w = (n - j).min(NR);
        // the first w of the tile's 16 columns
        let masks = super::lanes::halves(super::winograd::first(w));
        let mut p0 = 0;
        while p0 < k {
            let kc = (k - p0).min(KC);
            let acc = accumulate || p0 > 0;
            let (bv, boff) = b_rows.from(p0);
            let bj = b.add(boff + j);
            // the panel's kc rows of 16, zeros past column w (masked-off lanes load as zero)
            if pack {
                for p in 0..kc {
                    let src = bj.add(bv.at(p));
                    let dst = pp.add(p * NR);
                    if w == NR {
                        _mm256_store_ps(dst, _mm256_loadu_ps(src));
                        _mm256_store_ps(dst.add(8), _mm256_loadu_ps(src.add(8)));
                    } else {
                        _mm256_store_ps(dst, _mm256_maskload_ps(src, masks.0));
                        _mm256_store_ps(dst.add(8), _mm256_maskload_ps(src.add(8), masks.1));
                    }
                }
            }
            let mut i = 0;
            while i < m {
                let (av, aoff) = a_rows.from(i);
                let a_ = (a.add(aoff + p0 * a_cs), av, a_cs);
                let ci = c.add(i * ldc + j);
                // full-width tiles load and store unmasked (AMD's masked stores are slow); the
                // copied panel is whole (zeros past column w), so its loads are unmasked too
                macro_rules! rows {
                    ($full:literal, $bfull:literal, $b:expr) => {
                        match rows_at(m - i) {
                            6 => {
                                tile_avx2::<6, $full, $bfull, _, _>(kc, a_, $b, ci, ldc, masks, acc)
                            }
                            5 => {
                                tile_avx2::<5, $full, $bfull, _, _>(kc, a_, $b, ci, ldc, masks, acc)
                            }
                            4 => {
                                tile_avx2::<4, $full, $bfull, _, _>(kc, a_, $b, ci, ldc, masks, acc)
                            }
                            3 => {
                                tile_avx2::<3, $full, $bfull, _, _>(kc, a_, $b, ci, ldc, masks, acc)
                            }
                            2 => {
                                tile_avx2::<2, $full, $bfull, _, _>(kc, a_, $b, ci, ldc, masks, acc)
                            }
                            _ => {
                                tile_avx2::<1, $full, $bfull, _, _>(kc, a_, $b, ci, ldc, masks, acc)
                            }
                        }
                    };
                }
                let copied = (pp as *const f32, Step(NR));
                match (pack, w == NR) {
                    (true, true) => rows!(true, true, copied),
                    (true, false) => rows!(false, true, copied),
                    (false, true) => rows!(true, true, (bj, bv)),
                    (false, false) => rows!(false, false, (bj, bv)),
                }
                i += rows_at(m - i);
            }
            p0 += kc;
        }
        j += NR;
    }
}

/// One `R x 16` tile of C over `k` rows of B, on AVX2: as [`tile`], the same sums in the same
/// order. `FULL`: all 16 columns are C's (stores unmasked); `BFULL`: all 16 of each row of B
/// may be read (a whole tile, or the copied panel; loads unmasked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2<const R: usize, const FULL: bool, const BFULL: bool, RA: RowAt, RB: RowAt>(
    k: usize,
    (a, a_rows, a_cs): (*const f32, RA, usize),
    (b, b_rows): (*const f32, RB),
    c: *mut f32,
    ldc: usize,
    (m0, m1): (__m256i, __m256i),
    accumulate: bool,
) {
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    let mut rows = [0usize; R];
    for (r, o) in rows.iter_mut().enumerate() {
        *o = a_rows.at(r);
    }
    for p in 0..k {
        let bp = b.add(b_rows.at(p));
        let (b0, b1) = if BFULL {
            (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)))
        } else {
            (_mm256_maskload_ps(bp, m0), _mm256_maskload_ps(bp.add(8), m1))
        };
        let ap = a.add(p * a_cs);
        for r in 0..R {
            let av = _mm256_broadcast_ss(&*ap.add(rows[r]));
            acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
        }
    }
    for r in 0..R {
        let cp = c.add(r * ldc);
        let (mut u, mut v) = (acc0[r], acc1[r]);
        if FULL {
            if accumulate {
                u = _mm256_add_ps(u, _mm256_loadu_ps(cp));
                v = _mm256_add_ps(v, _mm256_loadu_ps(cp.add(8)));
            }
            _mm256_storeu_ps(cp, u);
            _mm256_storeu_ps(cp.add(8), v);
        } else {
            if accumulate {
                u = _mm256_add_ps(u, _mm256_maskload_ps(cp, m0));
                v = _mm256_add_ps(v, _mm256_maskload_ps(cp.add(8), m1));
            }
            _mm256_maskstore_ps(cp, m0, u);
            _mm256_maskstore_ps(cp.add(8), m1, v);
        }
    }
}

/// `dst[j·ld_dst + i] = src[i·ld_src + j]` for `i < rows`, `j < cols`: a transpose, in 16 × 16
/// blocks of AVX-512 shuffles where the CPU has them (a quarter of the instructions of the
/// scalar loop), else in 8 × 8 blocks of AVX2's, scalar at the edges and elsewhere.
pub fn transpose(
    rows: usize,
    cols: usize,
    src: &[f32],
    ld_src: usize,
    dst: &mut [f32],
    ld_dst: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(ld_src >= cols && ld_dst >= rows, "transpose: row strides shorter than the rows");
    assert!(src.len() >= (rows - 1) * ld_src + cols, "transpose: source too short");
    assert!(dst.len() >= (cols - 1) * ld_dst + rows, "transpose: destination too short");
    // asked once: a test may switch the paths off meanwhile (`DISABLED`)
    let wide = avx512();
    let (full_r, full_c) = if wide {
        (rows / 16 * 16, cols / 16 * 16)
    } else if available() {
        (rows / 8 * 8, cols / 8 * 8)
    } else {
        (0, 0)
    };
    #[cfg(target_arch = "x86_64")]
    if wide {
        for i in (0..full_r).step_by(16) {
            for j in (0..full_c).step_by(16) {
                // SAFETY: AVX-512 is present (avx512()); the block's 16 rows of 16 floats lie
                // inside src and dst by the asserts above (i + 16 <= rows, j + 16 <= cols).
                unsafe {
                    block16(
                        src.as_ptr().add(i * ld_src + j),
                        ld_src,
                        dst.as_mut_ptr().add(j * ld_dst + i),
                        ld_dst,
                    )
                }
            }
        }
    } else {
        for i in (0..full_r).step_by(8) {
            for j in (0..full_c).step_by(8) {
                // SAFETY: AVX2 is present (available() without avx512()); the block's 8 rows
                // of 8 floats lie inside src and dst (i + 8 <= rows, j + 8 <= cols).
                unsafe {
                    block8(
                        src.as_ptr().add(i * ld_src + j),
                        ld_src,
                        dst.as_mut_ptr().add(j * ld_dst + i),
                        ld_dst,
                    )
                }
            }
        }
    }
    // the right-hand columns of the full rows, then the bottom rows
    for i in 0..full_r {
        for j in full_c..cols {
            dst[j * ld_dst + i] = src[i * ld_src + j];
        }
    }
    for i in full_r..rows {
        for j in 0..cols {
            dst[j * ld_dst + i] = src[i * ld_src + j];
        }
    }
}

/// One 8 × 8 transpose on AVX2: unpacks of row pairs, 64-bit shuffles, then 128-bit lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block8(src: *const f32, ld_src: usize, dst: *mut f32, ld_dst: usize) {
    let mut r = [_mm256_setzero_ps(); 8];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm256_loadu_ps(src.add(i * ld_src));
    }
    let mut t = [_mm256_setzero_ps(); 8];
    for k in 0..4 {
        t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for q in 0..2 {
        let b = 4 * q;
        r[b] = _mm256_shuffle_ps::<0x44>(t[b], t[b + 2]);
        r[b + 1] = _mm256_shuffle_ps::<0xee>(t[b], t[b + 2]);
        r[b + 2] = _mm256_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        r[b + 3] = _mm256_shuffle_ps::<0xee>(t[b + 1], t[b + 3]);
    }
    for k in 0..4 {
        t[k] = _mm256_permute2f128_ps::<0x20>(r[k], r[k + 4]);
        t[k + 4] = _mm256_permute2f128_ps::<0x31>(r[k], r[k + 4]);
    }
    for (j, v) in t.iter().enumerate() {
        _mm256_storeu_ps(dst.add(j * ld_dst), *v);
    }
}

/// One 16 × 16 transpose: unpacks of row pairs, then shuffles of 64-bit and 128-bit lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block16(src: *const f32, ld_src: usize, dst: *mut f32, ld_dst: usize) {
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(src.add(i * ld_src));
    }
    let mut t = [_mm512_setzero_ps(); 16];
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    // t[4q + 0..4] come from rows 4q..4q+4: combine 64-bit pairs so that each register holds
    // one column of 4 rows per 128-bit lane
    for q in 0..4 {
        let b = 4 * q;
        r[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
        r[b + 1] = _mm512_shuffle_ps::<0xee>(t[b], t[b + 2]);
        r[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        r[b + 3] = _mm512_shuffle_ps::<0xee>(t[b + 1], t[b + 3]);
    }
    // 128-bit lanes: even lanes of rows 0-7 / 8-15, then odd
    for k in 0..4 {
        t[k] = _mm512_shuffle_f32x4::<0x88>(r[k], r[k + 4]);
        t[k + 4] = _mm512_shuffle_f32x4::<0xdd>(r[k], r[k + 4]);
        t[k + 8] = _mm512_shuffle_f32x4::<0x88>(r[k + 8], r[k + 12]);
        t[k + 12] = _mm512_shuffle_f32x4::<0xdd>(r[k + 8], r[k + 12]);
    }
    for k in 0..8 {
        r[k] = _mm512_shuffle_f32x4::<0x88>(t[k], t[k + 8]);
        r[k + 8] = _mm512_shuffle_f32x4::<0xdd>(t[k], t[k + 8]);
    }
    for (j, v) in r.iter().enumerate() {
        _mm512_storeu_ps(dst.add(j * ld_dst), *v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::gradcheck::random;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn matches_naive_product_with_tails_strides_and_accumulate() {
        if !cpu_has_kernel() {
            eprintln!("neither AVX-512 nor AVX2 + FMA here: nothing to test");
            return;
        }
        for (m, n, k) in [
            (8, 32, 5),
            (13, 47, 9),
            (1, 1, 1),
            (32, 784, 288),
            (3, 17, 64),
            (9, 33, 0),
            (35, 20, 11),
            (24, 64, 300),
        ] {
            let a = random(&[m * k], 1).data;
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect(); // [k, m]
            let ldb = n + 3;
            let b = random(&[k.max(1) * ldb], 2).data;
            let ldc = n + 1;
            let mut want = vec![0.0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] =
                        (0..k).map(|p| a[i * k + p] as f64 * b[p * ldb + j] as f64).sum();
                }
            }
            for (view, acc) in [
                (StridedA { data: &a, rs: k, cs: 1 }, false),
                (StridedA { data: &at, rs: 1, cs: m }, true),
            ] {
                // every kernel this CPU has: AVX2's always, AVX-512's where present
                let mut outs = Vec::new();
                for wide in [false, true].into_iter().filter(|&w| !w || cpu_has_avx512()) {
                    let mut c = vec![0.5f32; m * ldc];
                    let (ar, ac) = (Rows::Step(view.rs), view.cs);
                    gemm_rows_on(
                        wide,
                        m,
                        n,
                        k,
                        (view.data, ar, ac),
                        (&b, Rows::Step(ldb)),
                        &mut c,
                        ldc,
                        acc,
                    );
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j] as f64;
                            let exp = if j < n {
                                want[i * n + j] + if acc { 0.5 } else { 0.0 }
                            } else {
                                0.5
                            };
                            assert!(
                                (got - exp).abs() < 1e-4 * (1.0 + exp.abs()),
                                "{m}x{n}x{k} acc {acc} wide {wide} at ({i}, {j}): {got} vs {exp}"
                            );
                        }
                    }
                    outs.push(c.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
                }
                // AVX2 copies B's panel only when more than one row tile passes over it: the
                // same product six rows at a time (never copied) gives the same bits
                if m > 6 && k > 0 {
                    let mut c = vec![0.5f32; m * ldc];
                    for i0 in (0..m).step_by(6) {
                        let rows = (m - i0).min(6);
                        let (ar, ac) = (Rows::Step(view.rs), view.cs);
                        let a0 = i0 * view.rs;
                        gemm_rows_on(
                            false,
                            rows,
                            n,
                            k,
                            (&view.data[a0..], ar, ac),
                            (&b, Rows::Step(ldb)),
                            &mut c[i0 * ldc..],
                            ldc,
                            acc,
                        );
                    }
                    outs.push(c.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
                }
                // the kernels sum in the same order: the same bits
                assert!(
                    outs.windows(2).all(|w| w[0] == w[1]),
                    "{m}x{n}x{k}: the kernels or B's copied and direct panels differ"
                );
            }
        }
    }
    /// The kernel's rate on products of the step's shapes whose operands stay in L1/L2, one
    /// thread, best of many: (M, N, K) of F(4×4)'s products at 32 channels, F(2×2)'s at 64,
    /// the stride-2 forward's, the implicit dW's, and a large square one.
    #[test]
    #[ignore]
    fn time_kernel_shapes() {
        if !available() {
            return;
        }
        for (m, n, k) in
            [(32, 256, 32), (64, 128, 64), (64, 209, 288), (288, 32, 812), (256, 256, 256)]
        {
            let (a, b) = (random(&[m * k], 1).data, random(&[k * n], 2).data);
            let mut c = vec![0.0f32; m * n];
            let reps = (2e9 / (2.0 * (m * n * k) as f64)).max(10.0) as usize;
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    gemm(m, n, k, StridedA { data: &a, rs: k, cs: 1 }, &b, n, &mut c, n, false);
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            let gf = 2.0 * (m * n * k) as f64 / best * 1e-9;
            eprintln!("{m} x {n} x {k}: {:.1} us, {gf:.0} GFLOP/s", best * 1e6);
        }
    }

    #[test]
    fn transpose_matches_the_definition_at_whole_and_partial_blocks() {
        for (rows, cols) in [(16, 16), (32, 48), (17, 33), (5, 40), (40, 5), (1, 1), (64, 784)] {
            let src = random(&[rows * (cols + 2)], 3).data;
            let mut dst = vec![7.0f32; cols * (rows + 1)];
            transpose(rows, cols, &src, cols + 2, &mut dst, rows + 1);
            for j in 0..cols {
                for i in 0..rows + 1 {
                    let want = if i < rows { src[i * (cols + 2) + j] } else { 7.0 };
                    assert_eq!(dst[j * (rows + 1) + i], want, "{rows}x{cols} at ({i}, {j})");
                }
            }
        }
    }
}
