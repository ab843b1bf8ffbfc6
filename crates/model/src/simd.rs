//! A thin vector layer so each CPU kernel is written once and compiled per instruction set: a
//! kernel is a generic `#[inline(always)]` function over [`Simd`], instantiated inside a
//! `#[target_feature]` wrapper per set (where the intrinsics then inline), and [`dispatch!`]
//! picks the wrapper for [`crate::cpu::isa`].

use half::{bf16, f16};

/// Vector operations on f32 lanes. Every method is `unsafe`: the CPU must have the set, and
/// pointers must hold [`Simd::LANES`] elements.
pub(crate) trait Simd: Copy {
    /// A vector of f32.
    type V: Copy;
    /// Lanes per vector.
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    /// LANES f16 widened to f32.
    unsafe fn load_f16(p: *const f16) -> Self::V;
    /// LANES bf16 widened to f32 (exact: the high half of each f32).
    unsafe fn load_bf16(p: *const bf16) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sqrt(a: Self::V) -> Self::V;
    /// a * b + c, fused.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn reduce_add(v: Self::V) -> f32;
    unsafe fn reduce_max(v: Self::V) -> f32;
    /// e^x per lane (relative error within 2 ulp; -inf gives 0, large x saturate to +inf).
    unsafe fn exp(x: Self::V) -> Self::V;
}

/// Portable Rust, one lane: the reference and the fallback.
#[derive(Clone, Copy)]
pub(crate) struct Scalar;

impl Simd for Scalar {
    type V = f32;
    const LANES: usize = 1;
    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        // SAFETY: the caller's.
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> f32 {
        // SAFETY: the caller's.
        unsafe { (*p).to_f32() }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> f32 {
        // SAFETY: the caller's.
        unsafe { (*p).to_f32() }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        // SAFETY: the caller's.
        unsafe { *p = v }
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    unsafe fn sqrt(a: f32) -> f32 {
        a.sqrt()
    }
    #[inline(always)]
    unsafe fn fmadd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    #[inline(always)]
    unsafe fn max(a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    unsafe fn reduce_add(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn reduce_max(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn exp(x: f32) -> f32 {
        x.exp()
    }
}

/// Constants of the vector e^x: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 polynomial
/// (Cephes' expf coefficients), 2^n put in the exponent bits. Read by the x86-64 kernels.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod exp_consts {
    pub const HI: f32 = 88.722_9;
    pub const LO: f32 = -103.972_08;
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1];
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{Simd, exp_consts as c};

    /// AVX2 + FMA + F16C: 8 lanes.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2;

    /// AVX-512 F: 16 lanes.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512;

    // SAFETY (every method below): the caller guarantees the set is present and the pointers
    // hold LANES elements; these are single intrinsics.
    impl Simd for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> __m256 {
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const half::bf16) -> __m256 {
            unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sqrt(a: __m256) -> __m256 {
            unsafe { _mm256_sqrt_ps(a) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn reduce_add(v: __m256) -> f32 {
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
            }
        }
        #[inline(always)]
        unsafe fn reduce_max(v: __m256) -> f32 {
            unsafe {
                let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
            }
        }
        #[inline(always)]
        unsafe fn exp(x: __m256) -> __m256 {
            unsafe {
                let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(c::LO));
                // Operand order keeps a NaN input NaN (max/min return the second operand then).
                let x = _mm256_min_ps(_mm256_set1_ps(c::HI), _mm256_max_ps(_mm256_set1_ps(c::LO), x));
                let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(c::LOG2E)));
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(c::LN2_HI), x);
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(c::LN2_LO), r);
                let mut p = _mm256_set1_ps(c::P[0]);
                for &coef in &c::P[1..] {
                    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(coef));
                }
                let p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
                // 2^n in two halves so n down to -150 stays representable (subnormal results).
                let n = _mm256_cvtps_epi32(n);
                let half = _mm256_srai_epi32::<1>(n);
                let two = |e: __m256i| _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(e, _mm256_set1_epi32(127))));
                let y = _mm256_mul_ps(_mm256_mul_ps(p, two(half)), two(_mm256_sub_epi32(n, half)));
                _mm256_andnot_ps(below, y)
            }
        }
    }

    impl Simd for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> __m512 {
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const half::bf16) -> __m512 {
            unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sqrt(a: __m512) -> __m512 {
            unsafe { _mm512_sqrt_ps(a) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn reduce_add(v: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(v) }
        }
        #[inline(always)]
        unsafe fn reduce_max(v: __m512) -> f32 {
            unsafe { _mm512_reduce_max_ps(v) }
        }
        #[inline(always)]
        unsafe fn exp(x: __m512) -> __m512 {
            unsafe {
                let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(c::LO));
                // Operand order keeps a NaN input NaN (max/min return the second operand then).
                let x = _mm512_min_ps(_mm512_set1_ps(c::HI), _mm512_max_ps(_mm512_set1_ps(c::LO), x));
                let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(c::LOG2E)));
                let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(c::LN2_HI), x);
                let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(c::LN2_LO), r);
                let mut p = _mm512_set1_ps(c::P[0]);
                for &coef in &c::P[1..] {
                    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coef));
                }
                let p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
                // scalef computes p * 2^n without overflow of the exponent field.
                _mm512_maskz_mov_ps(!below, _mm512_scalef_ps(p, n))
            }
        }
    }
}

/// The largest element (-inf for an empty slice).
#[inline(always)]
pub(crate) fn max_of<S: Simd>(x: &[f32]) -> f32 {
    let full = x.len() / S::LANES * S::LANES;
    // SAFETY: every load is inside x; the set was checked by dispatch.
    unsafe {
        let mut acc = S::splat(f32::NEG_INFINITY);
        for i in (0..full).step_by(S::LANES) {
            acc = S::max(acc, S::load(x.as_ptr().add(i)));
        }
        x[full..].iter().fold(S::reduce_max(acc), |m, &v| m.max(v))
    }
}

/// The sum of `e^(scale * x[i] - shift)`, in f32 lanes over chunks of 1024 elements added in
/// f64 (a vocabulary-long sum stays exact to f32 rounding).
#[inline(always)]
pub(crate) fn exp_sum<S: Simd>(x: &[f32], scale: f32, shift: f32) -> f64 {
    // SAFETY: reads x.len() elements of x, writes nothing.
    unsafe { exp_raw::<S>(x.as_ptr(), None, x.len(), scale, shift) }
}

/// `x[i] = e^(scale * x[i] - shift)`; returns their sum as [`exp_sum`] does.
#[inline(always)]
pub(crate) fn exp_in_place<S: Simd>(x: &mut [f32], scale: f32, shift: f32) -> f64 {
    let p = x.as_mut_ptr();
    // SAFETY: reads and writes x.len() elements of x, each element read before it is written.
    unsafe { exp_raw::<S>(p, Some(p), x.len(), scale, shift) }
}

/// `out[i] = e^(scale * x[i] - shift)`; returns their sum as [`exp_sum`] does.
#[inline(always)]
pub(crate) fn exp_into<S: Simd>(out: &mut [f32], x: &[f32], scale: f32, shift: f32) -> f64 {
    assert_eq!(out.len(), x.len(), "exp_into: lengths differ");
    // SAFETY: reads x and writes out, both of x.len() elements.
    unsafe { exp_raw::<S>(x.as_ptr(), Some(out.as_mut_ptr()), x.len(), scale, shift) }
}

/// # Safety
/// `src` (and `dst` when given) hold `n` elements; `dst` may equal `src`.
#[inline(always)]
unsafe fn exp_raw<S: Simd>(src: *const f32, dst: Option<*mut f32>, n: usize, scale: f32, shift: f32) -> f64 {
    let full = n / S::LANES * S::LANES;
    let mut total = 0.0f64;
    // SAFETY: the caller's.
    unsafe {
        let (sv, hv) = (S::splat(scale), S::splat(shift));
        let mut i = 0;
        while i < full {
            let end = (i + 1024).min(full);
            let mut acc = S::zero();
            while i < end {
                let e = S::exp(S::sub(S::mul(S::load(src.add(i)), sv), hv));
                if let Some(d) = dst {
                    S::store(d.add(i), e);
                }
                acc = S::add(acc, e);
                i += S::LANES;
            }
            total += f64::from(S::reduce_add(acc));
        }
        for i in full..n {
            let e = (scale * *src.add(i) - shift).exp();
            if let Some(d) = dst {
                *d.add(i) = e;
            }
            total += f64::from(e);
        }
    }
    total
}

/// `x *= alpha`.
#[inline(always)]
pub(crate) fn scale<S: Simd>(x: &mut [f32], alpha: f32) {
    let full = x.len() / S::LANES * S::LANES;
    // SAFETY: every load and store is inside x.
    unsafe {
        let av = S::splat(alpha);
        for i in (0..full).step_by(S::LANES) {
            let p = x.as_mut_ptr().add(i);
            S::store(p, S::mul(av, S::load(p)));
        }
    }
    for v in &mut x[full..] {
        *v *= alpha;
    }
}

/// A kernel written once over [`Simd`]: its arguments are the struct's fields. Implementations
/// mark `run` `#[inline(always)]`, as everything it calls down to the intrinsics must be (no
/// closures on that path): inlined into the `#[target_feature]` function [`dispatch`] calls,
/// the intrinsics then inline too.
pub(crate) trait Kernel {
    type Output;
    fn run<S: Simd>(self) -> Self::Output;
}

/// Runs `kernel` with the vectors of `isa` (which the CPU must have).
pub(crate) fn dispatch<K: Kernel>(isa: crate::cpu::Isa, kernel: K) -> K::Output {
    assert!(isa <= crate::cpu::Isa::detected(), "this CPU has no {}", isa.name());
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
        unsafe fn avx512<K: Kernel>(kernel: K) -> K::Output {
            kernel.run::<Avx512>()
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn avx2<K: Kernel>(kernel: K) -> K::Output {
            kernel.run::<Avx2>()
        }
        match isa {
            // SAFETY: the CPU has the set (asserted above).
            crate::cpu::Isa::Avx512 => return unsafe { avx512(kernel) },
            // SAFETY: as above.
            crate::cpu::Isa::Avx2 => return unsafe { avx2(kernel) },
            crate::cpu::Isa::Generic => {}
        }
    }
    kernel.run::<Scalar>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;

    /// e^x of every lane.
    struct ExpAll<'a>(&'a [f32]);

    impl Kernel for ExpAll<'_> {
        type Output = Vec<f32>;
        #[inline(always)]
        fn run<S: Simd>(self) -> Vec<f32> {
            let mut out = vec![0.0f32; self.0.len()];
            for i in (0..self.0.len() / S::LANES * S::LANES).step_by(S::LANES) {
                // SAFETY: i + LANES is within both; the set was checked by dispatch.
                unsafe { S::store(out.as_mut_ptr().add(i), S::exp(S::load(self.0.as_ptr().add(i)))) };
            }
            out
        }
    }

    #[test]
    fn vector_exp_within_two_ulp() {
        let mut xs: Vec<f32> = (0..200_000).map(|i| -104.0 + 193.0 * i as f32 / 200_000.0).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 88.7, 89.0, -110.0, f32::NEG_INFINITY, f32::INFINITY, f32::NAN]);
        while !xs.len().is_multiple_of(16) {
            xs.push(0.5);
        }
        for isa in Isa::available() {
            for (&x, got) in xs.iter().zip(dispatch(isa, ExpAll(&xs))) {
                let want = f64::from(x).exp();
                if x.is_nan() {
                    assert!(got.is_nan(), "{isa:?} exp(NaN) = {got}");
                } else if want > f64::from(f32::MAX) {
                    assert!(got == f32::INFINITY || got >= f32::MAX * 0.999, "{isa:?} exp({x}) = {got}, want +inf");
                } else if want < 1e-38 {
                    // Subnormal and underflowing results: absolute error only.
                    assert!((f64::from(got) - want).abs() <= 1e-44, "{isa:?} exp({x}) = {got}, want {want}");
                } else {
                    let ulp = f64::from(f32::EPSILON) * want;
                    assert!((f64::from(got) - want).abs() <= 2.0 * ulp, "{isa:?} exp({x}) = {got}, want {want}");
                }
            }
        }
    }
}
