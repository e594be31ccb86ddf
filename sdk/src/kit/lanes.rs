//! Sixteen f32 lanes, on AVX-512 (one `__m512`) or on AVX2 (two `__m256`): the operations
//! Winograd's transforms take (`kit/winograd.rs`, `kit/winograd4.rs`: F(4×4)'s on wide planes,
//! and on narrow ones with gathers and a scatter, which AVX2 does one lane at a time), so that
//! one body of each transform compiles for both ([`on_lanes`]). Every operation is lane by
//! lane or a fixed permutation, so the two give the same bits.
//!
//! The bodies are `#[inline(always)]` and generic over [`Lanes`]; each is called from a thin
//! `#[target_feature]` wrapper per instruction set, into which the intrinsics inline. No
//! closure may call these methods: a closure does not take its function's target features,
//! so the intrinsics inside it stay calls (a resnet-mini step took 2.0 s instead of 1.2 on
//! AVX2 so); the bodies use local macros instead.
//! Masks are `u16`, bit `l` for lane `l`, as AVX-512's; masked-off lanes are neither read nor
//! written (loads give zero there), so their addresses may lie outside the slice.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `$name`, an `unsafe fn` of the arguments `$arg: $ty`, on AVX-512 where the CPU has it, else
/// on AVX2 + FMA: the generic body `$body::<Z or Y>` compiled for each, in a `#[target_feature]`
/// function of its own.
macro_rules! on_lanes {
    ($(#[$doc:meta])* $vis:vis fn $name:ident = $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name($($arg: $ty),*) {
            #[target_feature(enable = "avx512f")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn lanes_z($($arg: $ty),*) {
                $body::<$crate::kit::lanes::Z>($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn lanes_y($($arg: $ty),*) {
                $body::<$crate::kit::lanes::Y>($($arg),*)
            }
            if $crate::kit::simd_gemm::avx512() {
                lanes_z($($arg),*)
            } else {
                lanes_y($($arg),*)
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use on_lanes;

/// Sixteen f32 lanes. Unsafe: every method needs its instruction set (see the impls), and the
/// loads and stores read and write through raw pointers at the lanes of their masks.
#[cfg(target_arch = "x86_64")]
pub(super) trait Lanes: Copy {
    /// All zeros.
    unsafe fn zero() -> Self;
    /// `x` in every lane.
    unsafe fn splat(x: f32) -> Self;
    /// `self + o`.
    unsafe fn add(self, o: Self) -> Self;
    /// `self − o`.
    unsafe fn sub(self, o: Self) -> Self;
    /// `self · o`.
    unsafe fn mul(self, o: Self) -> Self;
    /// The lanes of `mask` from `p` (`p[l]` for lane `l`), zero elsewhere.
    unsafe fn load(mask: u16, p: *const f32) -> Self;
    /// The lanes of `mask` to `p[l]`.
    unsafe fn store(self, p: *mut f32, mask: u16);
    /// The even and the odd elements of the 32 in `(lo, hi)`, 16 each.
    unsafe fn even_odd(lo: Self, hi: Self) -> (Self, Self);
    /// `(a₀ b₀ a₁ b₁ … a₇ b₇, a₈ b₈ … a₁₅ b₁₅)`: the lanes of `a` and `b` interleaved.
    unsafe fn interleave(a: Self, b: Self) -> (Self, Self);
    /// `self · b + c`, fused (one rounding).
    unsafe fn fma(self, b: Self, c: Self) -> Self;
    /// `c − self · b`, fused.
    unsafe fn fnma(self, b: Self, c: Self) -> Self;
    /// The four phases of the 32 elements `e` in `(lo, hi)`: lane `l` of phase `j` holds
    /// `e[4l + j]` for `l < 8`; lanes 8–15 are unspecified (F(4×4)'s rows of 8 tiles).
    unsafe fn phases(lo: Self, hi: Self) -> [Self; 4];
    /// The inverse for 8 lanes: element `4l + r` of the 32 in the result is lane `l` of
    /// `y[r]`, for `l < 8` (lanes 8–15 of `y` are not read).
    unsafe fn quads(y: [Self; 4]) -> (Self, Self);
    /// Sixteen i32 offsets, for [`Lanes::gather`] and [`Lanes::scatter`].
    type Index: Copy;
    /// The 16 offsets at `p`.
    unsafe fn index(p: *const i32) -> Self::Index;
    /// Each offset plus `k`.
    unsafe fn index_add(i: Self::Index, k: i32) -> Self::Index;
    /// `base[i[l]]` in the lanes of `mask`, zero elsewhere (the others are not read).
    unsafe fn gather(mask: u16, base: *const f32, i: Self::Index) -> Self;
    /// `base[i[l]] = self[l]` in the lanes of `mask` (offsets distinct where written).
    unsafe fn scatter(self, mask: u16, base: *mut f32, i: Self::Index);
}

/// AVX-512 Foundation.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Z(__m512);

#[cfg(target_arch = "x86_64")]
impl Lanes for Z {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Z(_mm512_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Z(_mm512_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Z(_mm512_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        Z(_mm512_sub_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        Z(_mm512_mul_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn load(mask: u16, p: *const f32) -> Self {
        Z(_mm512_maskz_loadu_ps(mask, p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, mask: u16) {
        _mm512_mask_storeu_ps(p, mask, self.0)
    }
    #[inline(always)]
    unsafe fn even_odd(lo: Self, hi: Self) -> (Self, Self) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        (Z(_mm512_permutex2var_ps(lo.0, even, hi.0)), Z(_mm512_permutex2var_ps(lo.0, odd, hi.0)))
    }
    #[inline(always)]
    unsafe fn interleave(a: Self, b: Self) -> (Self, Self) {
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        (Z(_mm512_permutex2var_ps(a.0, lo, b.0)), Z(_mm512_permutex2var_ps(a.0, hi, b.0)))
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        Z(_mm512_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn fnma(self, b: Self, c: Self) -> Self {
        Z(_mm512_fnmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn phases(lo: Self, hi: Self) -> [Self; 4] {
        macro_rules! phase {
            ($j:expr) => {
                Z(_mm512_permutex2var_ps(
                    lo.0,
                    _mm512_setr_epi32(
                        $j,
                        4 + $j,
                        8 + $j,
                        12 + $j,
                        16 + $j,
                        20 + $j,
                        24 + $j,
                        28 + $j,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ),
                    hi.0,
                ))
            };
        }
        [phase!(0), phase!(1), phase!(2), phase!(3)]
    }
    #[inline(always)]
    unsafe fn quads(y: [Self; 4]) -> (Self, Self) {
        // (y0[l], y1[l]) pairs, then (y0, y1, y2, y3) of tiles 0..3 and 4..7
        let pairs = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let lo_idx = _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
        let hi_idx =
            _mm512_setr_epi32(8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
        let p01 = _mm512_permutex2var_ps(y[0].0, pairs, y[1].0);
        let p23 = _mm512_permutex2var_ps(y[2].0, pairs, y[3].0);
        (Z(_mm512_permutex2var_ps(p01, lo_idx, p23)), Z(_mm512_permutex2var_ps(p01, hi_idx, p23)))
    }
    type Index = __m512i;
    #[inline(always)]
    unsafe fn index(p: *const i32) -> __m512i {
        _mm512_loadu_si512(p as *const _)
    }
    #[inline(always)]
    unsafe fn index_add(i: __m512i, k: i32) -> __m512i {
        _mm512_add_epi32(i, _mm512_set1_epi32(k))
    }
    #[inline(always)]
    unsafe fn gather(mask: u16, base: *const f32, i: __m512i) -> Self {
        Z(_mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, i, base))
    }
    #[inline(always)]
    unsafe fn scatter(self, mask: u16, base: *mut f32, i: __m512i) {
        _mm512_mask_i32scatter_ps::<4>(base, mask, i, self.0)
    }
}

/// AVX2: lanes 0–7 in the first register, 8–15 in the second.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Y(__m256, __m256);

/// The AVX2 load/store masks of lanes 0–7 and 8–15 of `mask` (all bits of a lane set where
/// its bit is).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn halves(mask: u16) -> (__m256i, __m256i) {
    let m = _mm256_set1_epi32(mask as i32);
    let lo = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let hi = _mm256_slli_epi32::<8>(lo);
    (
        _mm256_cmpeq_epi32(_mm256_and_si256(m, lo), lo),
        _mm256_cmpeq_epi32(_mm256_and_si256(m, hi), hi),
    )
}

/// Lanes `0..n` of `v` (`n` < 8) to `p`, without a masked store.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_first(v: __m256, p: *mut f32, n: usize) {
    let (mut q, mut p, mut n) = (_mm256_castps256_ps128(v), p, n);
    if n >= 4 {
        _mm_storeu_ps(p, q);
        q = _mm256_extractf128_ps::<1>(v);
        (p, n) = (p.add(4), n - 4);
    }
    if n >= 2 {
        _mm_storel_pd(p as *mut f64, _mm_castps_pd(q));
        q = _mm_movehl_ps(q, q);
        (p, n) = (p.add(2), n - 2);
    }
    if n == 1 {
        _mm_store_ss(p, q);
    }
}

/// Even and odd elements of the 16 in `(a, b)`: `(a₀ a₂ a₄ a₆ b₀ b₂ b₄ b₆, a₁ a₃ … b₇)`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn even_odd8(a: __m256, b: __m256) -> (__m256, __m256) {
    // within each 128-bit half: (a0 a2 b0 b2 | a4 a6 b4 b6), then the 64-bit pairs in order
    let e = _mm256_castps_pd(_mm256_shuffle_ps::<0x88>(a, b));
    let o = _mm256_castps_pd(_mm256_shuffle_ps::<0xdd>(a, b));
    (
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(e)),
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(o)),
    )
}

/// `(a₀ b₀ … a₃ b₃, a₄ b₄ … a₇ b₇)`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn interleave8(a: __m256, b: __m256) -> (__m256, __m256) {
    let (u, v) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    (_mm256_permute2f128_ps::<0x20>(u, v), _mm256_permute2f128_ps::<0x31>(u, v))
}

#[cfg(target_arch = "x86_64")]
impl Lanes for Y {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Y(_mm256_setzero_ps(), _mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Y(_mm256_set1_ps(x), _mm256_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Y(_mm256_add_ps(self.0, o.0), _mm256_add_ps(self.1, o.1))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        Y(_mm256_sub_ps(self.0, o.0), _mm256_sub_ps(self.1, o.1))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        Y(_mm256_mul_ps(self.0, o.0), _mm256_mul_ps(self.1, o.1))
    }
    #[inline(always)]
    unsafe fn load(mask: u16, p: *const f32) -> Self {
        if mask == u16::MAX {
            return Y(_mm256_loadu_ps(p), _mm256_loadu_ps(p.wrapping_add(8)));
        }
        let (lo, hi) = halves(mask);
        Y(_mm256_maskload_ps(p, lo), _mm256_maskload_ps(p.wrapping_add(8), hi))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, mask: u16) {
        // unmasked where whole: AMD's masked stores are slow
        if mask == u16::MAX {
            _mm256_storeu_ps(p, self.0);
            _mm256_storeu_ps(p.wrapping_add(8), self.1);
            return;
        }
        // the first n lanes (the transforms' stores): whole registers, then 4, 2 and 1 lanes;
        // on Zen 3 a masked store is microcode, and with them F(2×2)'s input transform took as
        // long as its products
        if mask & mask.wrapping_add(1) == 0 {
            let n = mask.count_ones() as usize;
            let (v, p, n) = if n >= 8 {
                _mm256_storeu_ps(p, self.0);
                (self.1, p.add(8), n - 8)
            } else {
                (self.0, p, n)
            };
            store_first(v, p, n);
            return;
        }
        let (lo, hi) = halves(mask);
        _mm256_maskstore_ps(p, lo, self.0);
        _mm256_maskstore_ps(p.wrapping_add(8), hi, self.1);
    }
    #[inline(always)]
    unsafe fn even_odd(lo: Self, hi: Self) -> (Self, Self) {
        let (e0, o0) = even_odd8(lo.0, lo.1);
        let (e1, o1) = even_odd8(hi.0, hi.1);
        (Y(e0, e1), Y(o0, o1))
    }
    #[inline(always)]
    unsafe fn interleave(a: Self, b: Self) -> (Self, Self) {
        let (l0, l1) = interleave8(a.0, b.0);
        let (h0, h1) = interleave8(a.1, b.1);
        (Y(l0, l1), Y(h0, h1))
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        Y(_mm256_fmadd_ps(self.0, b.0, c.0), _mm256_fmadd_ps(self.1, b.1, c.1))
    }
    #[inline(always)]
    unsafe fn fnma(self, b: Self, c: Self) -> Self {
        Y(_mm256_fnmadd_ps(self.0, b.0, c.0), _mm256_fnmadd_ps(self.1, b.1, c.1))
    }
    #[inline(always)]
    unsafe fn phases(lo: Self, hi: Self) -> [Self; 4] {
        // registers r0..r3 hold elements 8q..8q + 7, groups of 4 (2q, 2q + 1) in their
        // halves: a 4 × 4 transpose within the halves gives (r0[j], r1[j], r2[j], r3[j] |
        // r0[4 + j], ..), phase j's lanes in the order 0, 2, 4, 6, 1, 3, 5, 7
        let (r0, r1, r2, r3) = (lo.0, lo.1, hi.0, hi.1);
        let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
        let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let zero = _mm256_setzero_ps();
        [
            Y(_mm256_permutevar8x32_ps(_mm256_shuffle_ps::<0x44>(t0, t2), order), zero),
            Y(_mm256_permutevar8x32_ps(_mm256_shuffle_ps::<0xee>(t0, t2), order), zero),
            Y(_mm256_permutevar8x32_ps(_mm256_shuffle_ps::<0x44>(t1, t3), order), zero),
            Y(_mm256_permutevar8x32_ps(_mm256_shuffle_ps::<0xee>(t1, t3), order), zero),
        ]
    }
    #[inline(always)]
    unsafe fn quads(y: [Self; 4]) -> (Self, Self) {
        // (y0[l], y1[l], y2[l], y3[l]) of tiles l | l + 4 per register, then tiles in order
        let (a, b, c, d) = (y[0].0, y[1].0, y[2].0, y[3].0);
        let (u0, u1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        let (v0, v1) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
        let w0 = _mm256_shuffle_ps::<0x44>(u0, v0); // tiles 0 | 4
        let w1 = _mm256_shuffle_ps::<0xee>(u0, v0); // 1 | 5
        let w2 = _mm256_shuffle_ps::<0x44>(u1, v1); // 2 | 6
        let w3 = _mm256_shuffle_ps::<0xee>(u1, v1); // 3 | 7
        (
            Y(_mm256_permute2f128_ps::<0x20>(w0, w1), _mm256_permute2f128_ps::<0x20>(w2, w3)),
            Y(_mm256_permute2f128_ps::<0x31>(w0, w1), _mm256_permute2f128_ps::<0x31>(w2, w3)),
        )
    }
    type Index = (__m256i, __m256i);
    #[inline(always)]
    unsafe fn index(p: *const i32) -> Self::Index {
        (_mm256_loadu_si256(p as *const _), _mm256_loadu_si256(p.add(8) as *const _))
    }
    #[inline(always)]
    unsafe fn index_add(i: Self::Index, k: i32) -> Self::Index {
        let k = _mm256_set1_epi32(k);
        (_mm256_add_epi32(i.0, k), _mm256_add_epi32(i.1, k))
    }
    #[inline(always)]
    unsafe fn gather(mask: u16, base: *const f32, i: Self::Index) -> Self {
        let (lo, hi) = halves(mask);
        let z = _mm256_setzero_ps();
        Y(
            _mm256_mask_i32gather_ps::<4>(z, base, i.0, _mm256_castsi256_ps(lo)),
            _mm256_mask_i32gather_ps::<4>(z, base, i.1, _mm256_castsi256_ps(hi)),
        )
    }
    #[inline(always)]
    unsafe fn scatter(self, mask: u16, base: *mut f32, i: Self::Index) {
        // AVX2 has no scatter: the lanes through memory, one store each
        let (mut v, mut at) = ([0.0f32; 16], [0i32; 16]);
        _mm256_storeu_ps(v.as_mut_ptr(), self.0);
        _mm256_storeu_ps(v.as_mut_ptr().add(8), self.1);
        _mm256_storeu_si256(at.as_mut_ptr() as *mut _, i.0);
        _mm256_storeu_si256(at.as_mut_ptr().add(8) as *mut _, i.1);
        let mut m = mask;
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            *base.offset(at[l] as isize) = v[l];
            m &= m - 1;
        }
    }
}

/// The bits of `bits::<Z>` (compiled for AVX-512, in the caller's `z`) against those of
/// `bits::<Y>` (for AVX2 + FMA, in `y`) on each plane size (seeded by its index), asserted
/// equal; returns early, saying so, where the CPU has no AVX-512. The tests of the transforms
/// that compare the two bodies call this with their own `#[target_feature]` wrappers.
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) fn assert_same_bits_on_both(
    planes: &[(usize, usize)],
    z: unsafe fn((usize, usize), u64) -> Vec<u32>,
    y: unsafe fn((usize, usize), u64) -> Vec<u32>,
) {
    if !super::simd_gemm::cpu_has_avx512() {
        eprintln!("no AVX-512 here: nothing to compare");
        return;
    }
    for (k, &hw) in planes.iter().enumerate() {
        // SAFETY: AVX-512 is present (checked above), and with it AVX2 and FMA
        let (a, b) = unsafe { (z(hw, k as u64), y(hw, k as u64)) };
        assert!(a == b, "{hw:?}: the AVX2 transforms differ from the AVX-512 ones");
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The lanes of `v` as an array.
    unsafe fn out<V: Lanes>(v: V) -> [f32; 16] {
        let mut a = [0.0f32; 16];
        v.store(a.as_mut_ptr(), u16::MAX);
        a
    }

    /// Every operation against its definition, on each instruction set this CPU has.
    unsafe fn check<V: Lanes>() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 * 1.5 - 7.0).collect();
        let (a, b) = (V::load(u16::MAX, x.as_ptr()), V::load(u16::MAX, x.as_ptr().add(16)));
        let (e, o) = V::even_odd(a, b);
        assert_eq!(out(e), std::array::from_fn(|l| x[2 * l]));
        assert_eq!(out(o), std::array::from_fn(|l| x[2 * l + 1]));
        let (lo, hi) = V::interleave(a, b);
        let mixed: [f32; 16] =
            std::array::from_fn(|l| x[if l % 2 == 0 { l / 2 } else { 16 + l / 2 }]);
        assert_eq!(out(lo), mixed);
        // eight lanes on: 8 · 1.5 more
        assert_eq!(out(hi), std::array::from_fn(|l| mixed[l] + 12.0));
        assert_eq!(out(a.add(b)), std::array::from_fn(|l| x[l] + x[16 + l]));
        assert_eq!(out(a.sub(b)), std::array::from_fn(|l| x[l] - x[16 + l]));
        assert_eq!(out(a.mul(V::splat(3.0))), std::array::from_fn(|l| x[l] * 3.0));
        // masks: a ragged middle range, loaded and stored
        let mask = 0b0011_1111_1100_0110u16;
        let m = V::load(mask, x.as_ptr());
        let want: [f32; 16] = std::array::from_fn(|l| if mask >> l & 1 == 1 { x[l] } else { 0.0 });
        assert_eq!(out(m), want);
        // a ragged mask and every prefix (stored piecewise on AVX2)
        for mask in [mask].into_iter().chain((0..=16).map(|n| ((1u32 << n) - 1) as u16)) {
            let mut dst = [9.0f32; 16];
            a.store(dst.as_mut_ptr(), mask);
            let want: [f32; 16] =
                std::array::from_fn(|l| if mask >> l & 1 == 1 { x[l] } else { 9.0 });
            assert_eq!(dst, want, "mask {mask:#06x}");
        }
        assert_eq!(out(V::zero()), [0.0; 16]);
        let ph = V::phases(a, b);
        for (j, p) in ph.iter().enumerate() {
            assert_eq!(
                out(*p)[..8],
                std::array::from_fn::<f32, 8, _>(|l| x[4 * l + j]),
                "phase {j}"
            );
        }
        let (q0, q1) = V::quads(ph);
        let mut all = out(q0).to_vec();
        all.extend(out(q1));
        assert_eq!(all, x, "quads undo phases");
        // gathers and scatters at scattered offsets, a ragged mask
        let offs: [i32; 16] = std::array::from_fn(|l| (l as i32 * 7) % 32);
        let idx = V::index_add(V::index(offs.as_ptr()), 0);
        let got = out(V::gather(mask, x.as_ptr(), idx));
        assert_eq!(
            got,
            std::array::from_fn(|l| if mask >> l & 1 == 1 { x[offs[l] as usize] } else { 0.0 })
        );
        let shifted = out(V::gather(u16::MAX, x.as_ptr().add(2), V::index_add(idx, -2)));
        assert_eq!(shifted, std::array::from_fn(|l| x[offs[l] as usize]));
        let mut dst = [9.0f32; 40];
        a.scatter(mask, dst.as_mut_ptr().add(3), V::index_add(idx, 0));
        for (k, d) in dst.iter().enumerate() {
            let l = (0..16).find(|&l| mask >> l & 1 == 1 && offs[l] as usize + 3 == k);
            assert_eq!(*d, l.map_or(9.0, |l| x[l]), "scatter at {k}");
        }
        let c = V::splat(0.1);
        let fused: [f32; 16] = std::array::from_fn(|l| x[l].mul_add(x[16 + l], 0.1));
        assert_eq!(out(a.fma(b, c)), fused);
        let fused: [f32; 16] = std::array::from_fn(|l| (-x[l]).mul_add(x[16 + l], 0.1));
        assert_eq!(out(a.fnma(b, c)), fused);
    }

    #[test]
    fn both_instruction_sets_do_what_the_definitions_say() {
        if super::super::simd_gemm::cpu_has_avx512() {
            #[target_feature(enable = "avx512f")]
            unsafe fn z() {
                check::<Z>()
            }
            unsafe { z() };
        }
        if super::super::simd_gemm::cpu_has_kernel() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn y() {
                check::<Y>()
            }
            unsafe { y() };
        }
    }
}
