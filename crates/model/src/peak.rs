//! What this CPU measurably does: its FMA, bf16 dot-product and AMX tile peaks, its memory read
//! bandwidth (what `bench model` prints shares of), and whether bf16 products pay (what
//! inference picks its default decode weights by). Measured with the kernels of `ops`, on
//! [`crate::cpu`]'s detection.

use std::sync::OnceLock;

// `avx512_bf16` is read by the x86-64 probes only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use crate::cpu::{Isa, amx, avx512_bf16, isa};

/// Whether bf16 products are the faster half-precision arithmetic here: AMX is usable, or AVX-512
/// BF16 dot products run at least 1.5x the flops of f32 FMAs on this CPU (about 2x on Zen 4,
/// about half on Sapphire Rapids), timed once on one thread (a few milliseconds). What
/// inference picks its default decode weights by.
pub fn bf16_products_pay() -> bool {
    static PAYS: OnceLock<bool> = OnceLock::new();
    *PAYS.get_or_init(|| {
        if amx() {
            return true;
        }
        #[cfg(target_arch = "x86_64")]
        if avx512_bf16() {
            use crate::simd::dispatch;
            // Flops per second of `run` on this thread; each run's count is opaque, so the
            // compiler cannot run a loop once for all three timed runs.
            let rate = |flops_per_step: u64, run: &dyn Fn(u64)| {
                let (iters, best) = best_of_three(0.003, run, run);
                (iters * flops_per_step) as f64 / best
            };
            let fma = rate(12 * 16 * 2, &|iters| {
                std::hint::black_box(dispatch(Isa::Avx512, FmaChains(std::hint::black_box(iters))));
            });
            let dot = rate(crate::ops::bf16::FLOPS_PER_STEP, &|iters| {
                std::hint::black_box(crate::ops::bf16::peak_loop(std::hint::black_box(iters)));
            });
            return dot >= 1.5 * fma;
        }
        false
    })
}

/// Measured AVX-512 BF16 dot-product throughput in GFLOP/s, every rayon thread running twelve
/// independent `vdpbf16ps` chains (the best of three runs), or None without [`avx512_bf16`].
/// Takes about `seconds`.
#[cfg(target_arch = "x86_64")]
pub fn bf16_dot_peak_gflops(seconds: f64) -> Option<f64> {
    avx512_bf16().then(|| {
        all_threads_gflops(seconds, crate::ops::bf16::FLOPS_PER_STEP, |iters| {
            std::hint::black_box(crate::ops::bf16::peak_loop(iters));
        })
    })
}

/// No AVX-512 BF16 off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub fn bf16_dot_peak_gflops(_seconds: f64) -> Option<f64> {
    None
}

/// Measured bf16 tile throughput in GFLOP/s with every rayon thread running independent tile
/// products (no memory traffic; the best of three runs), or None without [`amx`]. Takes about
/// `seconds`.
#[cfg(target_arch = "x86_64")]
pub fn amx_peak_gflops(seconds: f64) -> Option<f64> {
    amx().then(|| all_threads_gflops(seconds, crate::ops::amx::FLOPS_PER_STEP, crate::ops::amx::peak_loop))
}

/// No AMX off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub fn amx_peak_gflops(_seconds: f64) -> Option<f64> {
    None
}

/// Measured fp32 FMA throughput of `isa`'s vectors in GFLOP/s, every rayon thread running twelve
/// independent fused multiply-add chains (enough to cover FMA latency) with no memory traffic:
/// the peak a kernel on that instruction set can reach (the best of three runs). Takes about
/// `seconds`.
pub fn fma_peak_gflops(isa: Isa, seconds: f64) -> f64 {
    use crate::simd::dispatch;
    let lanes = if isa == Isa::Generic { 1 } else { isa.vector_bits() / 32 };
    all_threads_gflops(seconds, 12 * lanes as u64 * 2, |iters| {
        std::hint::black_box(dispatch(isa, FmaChains(iters)));
    })
}

/// GFLOP/s of `step(iters)` (`flops_per_step` each iteration) on every rayon thread at once: the
/// best of three runs of about a third of `seconds` each ([`best_of_three`]).
fn all_threads_gflops(seconds: f64, flops_per_step: u64, step: impl Fn(u64) + Sync) -> f64 {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let (iters, best) = best_of_three(seconds, &step, |iters| (0..threads).into_par_iter().for_each(|_| step(iters)));
    (threads as u64 * iters * flops_per_step) as f64 / best / 1e9
}

/// Times a peak loop: calibrates the iteration count on one thread (`probe(iters)`), then runs
/// `all(iters)` (every thread) three times for a third of `seconds` each. Returns the
/// iterations and the best time: a peak is what the unit can do, and a shared machine's
/// neighbours only ever take from it.
fn best_of_three(seconds: f64, probe: impl Fn(u64), all: impl Fn(u64)) -> (u64, f64) {
    let probe_iters = 100_000u64;
    let t = std::time::Instant::now();
    probe(probe_iters);
    let per_iter = t.elapsed().as_secs_f64() / probe_iters as f64;
    let iters = ((seconds / 3.0 / per_iter.max(1e-12)) as u64).max(probe_iters);
    let best = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            all(iters);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (iters, best)
}

/// Memory read bandwidth in GB/s: every rayon thread summing its part of a `bytes`-long buffer
/// with the widest vectors (what streaming weights from memory can reach); median of 5.
pub fn read_bandwidth_gbs(bytes: usize) -> f64 {
    use crate::simd::dispatch;
    use rayon::prelude::*;
    let n = bytes / 4;
    let data = vec![1.0f32; n];
    let chunk = n.div_ceil(rayon::current_num_threads()).next_multiple_of(64);
    let isa = isa();
    let mut times: Vec<f64> = (0..6)
        .map(|_| {
            let t = std::time::Instant::now();
            let s: f32 = data.par_chunks(chunk).map(|c| dispatch(isa, SumAll(c))).sum();
            std::hint::black_box(s);
            t.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    times.sort_by(f64::total_cmp);
    (n * 4) as f64 / times[times.len() / 2] / 1e9
}

/// The sum of a slice, four vector accumulators (loads in flight, no FMA chain bound).
struct SumAll<'a>(&'a [f32]);

impl crate::simd::Kernel for SumAll<'_> {
    type Output = f32;
    #[inline(always)]
    fn run<S: crate::simd::Simd>(self) -> f32 {
        let x = self.0;
        let step = 4 * S::LANES;
        let full = x.len() / step * step;
        // SAFETY: every load is inside x; the set was checked by dispatch.
        unsafe {
            let mut acc = [S::zero(); 4];
            for i in (0..full).step_by(step) {
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = S::add(*a, S::load(x.as_ptr().add(i + j * S::LANES)));
                }
            }
            let v = S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3]));
            x[full..].iter().fold(S::reduce_add(v), |s, &y| s + y)
        }
    }
}

/// Twelve independent FMA chains, `self.0` steps each.
struct FmaChains(u64);

impl crate::simd::Kernel for FmaChains {
    type Output = f32;
    #[inline(always)]
    fn run<S: crate::simd::Simd>(self) -> f32 {
        // SAFETY: register-only vector arithmetic; the set was checked by dispatch.
        unsafe {
            let (a, b) = (S::splat(0.999_999), S::splat(1e-7));
            let mut acc = [S::splat(1.0); 12];
            for _ in 0..self.0 {
                for x in acc.iter_mut() {
                    *x = S::fmadd(*x, a, b);
                }
            }
            let mut sum = S::zero();
            for x in acc {
                sum = S::add(sum, x);
            }
            S::reduce_add(sum)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each peak is measured exactly where its unit is usable, and bf16 decoding is preferred
    /// only where a bf16 unit exists.
    #[test]
    fn peaks_follow_the_detected_units() {
        assert_eq!(amx_peak_gflops(0.01).is_some(), amx());
        assert_eq!(bf16_dot_peak_gflops(0.01).is_some(), avx512_bf16());
        assert!(!bf16_products_pay() || amx() || avx512_bf16());
        let fma = fma_peak_gflops(isa(), 0.01);
        assert!(fma.is_finite() && fma > 0.1, "{fma} GFLOP/s");
    }
}
