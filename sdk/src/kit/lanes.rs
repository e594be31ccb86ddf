//! Sixteen f32 lanes, on AVX-512 (one `__m512`) or on AVX2 (two `__m256`): the operations
//! Winograd's F(2×2) transforms take (`kit/winograd.rs`), so that one body of each transform
//! compiles for both. Every operation is lane by lane or a fixed permutation, so the two give
//! the same bits.
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
}

/// AVX-512 Foundation.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Z(pub(super) __m512);

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
}

/// AVX2: lanes 0–7 in the first register, 8–15 in the second.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Y(__m256, __m256);

/// The AVX2 load/store masks of lanes 0–7 and 8–15 of `mask` (all bits of a lane set where
/// its bit is).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn halves(mask: u16) -> (__m256i, __m256i) {
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
    }

    #[test]
    fn both_instruction_sets_do_what_the_definitions_say() {
        if super::super::simd_gemm::avx512() {
            #[target_feature(enable = "avx512f")]
            unsafe fn z() {
                check::<Z>()
            }
            unsafe { z() };
        }
        if super::super::simd_gemm::available() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn y() {
                check::<Y>()
            }
            unsafe { y() };
        }
    }
}
