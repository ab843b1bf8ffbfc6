//! What the CPU's vector unit can do, decided once at run time, so one binary runs at the
//! speed of whichever x86-64 CPU it lands on: AVX-512 where present, AVX2 + FMA + F16C
//! elsewhere, portable Rust below that.
//!
//! `RSTAR2_CPU_ISA=avx2` (or `generic`) narrows the choice for this crate's own kernels (the f32
//! matrix products, the small-m matmul, half-precision weights, vectorized `exp`), so the
//! narrower paths can be run and tested on a wider machine. Below AVX-512 the f32 products run
//! on the `gemm` crate's AVX2 kernels (built without its AVX-512 ones), which it picks by its own
//! detection; a test runs the suite's CPU checks under `qemu-x86_64 -cpu Haswell` (no AVX-512)
//! as well.
//!
//! Intel's AMX tile unit (Sapphire Rapids and later) is a matrix engine beside the vector unit:
//! [`amx`] says whether this process may use it for bf16 products (`RSTAR2_CPU_AMX=0`, or a
//! narrower `RSTAR2_CPU_ISA`, turns it off). Elsewhere bf16 products run on the vector unit's
//! AVX-512 BF16 dot products where the CPU has them ([`avx512_bf16`]: AMD Zen 4 and later).

use std::sync::OnceLock;

/// A vector instruction set this crate has kernels for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust (whatever the compiler vectorizes for the build target).
    Generic,
    /// AVX2 with FMA and F16C: 256-bit vectors.
    Avx2,
    /// AVX-512 F: 512-bit vectors.
    Avx512,
}

impl Isa {
    /// The widest set this CPU supports.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            if avx2 && is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Generic
    }

    /// Width of its vectors in bits (128 for the portable path: what baseline x86-64 has).
    pub fn vector_bits(self) -> usize {
        match self {
            Isa::Generic => 128,
            Isa::Avx2 => 256,
            Isa::Avx512 => 512,
        }
    }

    /// "avx512", "avx2" or "generic" (the values `RSTAR2_CPU_ISA` takes).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Every set this CPU can run, narrowest first (for tests that compare the paths).
    pub fn available() -> Vec<Isa> {
        [Isa::Generic, Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| i <= Isa::detected()).collect()
    }

    fn parse(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "generic" => Some(Isa::Generic),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

/// Runs `work` on a thread of Rayon's pool and waits for it. A model step issues hundreds of
/// parallel loops; issued from a thread outside the pool, each one hands its work over and puts
/// the caller to sleep until it is done (a futex wake-up per loop, and three threads on two
/// cores), where from inside the pool the issuing thread takes a share itself. Measured on a
/// 2-vCPU Xeon: SmolLM2-135M batch-32 decoding steps 15-20% shorter.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() { work() } else { rayon::scope(|_| work()) }
}

/// The CPU's model name (`/proc/cpuinfo`), for reports that name the machine behind a figure.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The set this crate's kernels use: [`Isa::detected`], narrowed by `RSTAR2_CPU_ISA` when set
/// (a wider set than the CPU has, or an unknown name, is refused with a message and ignored).
pub fn isa() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let detected = Isa::detected();
        match std::env::var("RSTAR2_CPU_ISA") {
            Err(_) => detected,
            Ok(v) => match Isa::parse(&v) {
                Some(asked) if asked <= detected => asked,
                Some(asked) => {
                    eprintln!("RSTAR2_CPU_ISA={v}: this CPU has no {}, using {}", asked.name(), detected.name());
                    detected
                }
                None => {
                    eprintln!("RSTAR2_CPU_ISA={v}: expected avx512, avx2 or generic; using {}", detected.name());
                    detected
                }
            },
        }
    })
}

/// Whether bf16 tile products (AMX-TILE + AMX-BF16) are usable: the CPU has them, Linux granted
/// this process the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), [`isa`] is AVX-512, and
/// `RSTAR2_CPU_AMX` is not `0`. Decided once.
pub fn amx() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        let off = std::env::var("RSTAR2_CPU_AMX").is_ok_and(|v| v.trim() == "0");
        !off && isa() == Isa::Avx512 && amx_detected()
    })
}

/// Whether AVX-512 BF16 dot products (`vdpbf16ps`) are usable: the CPU lists AVX512-BF16 and
/// AVX-512 BW, and [`isa`] is AVX-512. The kernel for bf16 decode weights where AMX is not
/// usable ([`crate::ops::bf16`]). Decided once.
pub fn avx512_bf16() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            isa() == Isa::Avx512 && is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

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

/// CPUID leaf 7 (AMX-BF16 is EDX bit 22, AMX-TILE bit 24), AVX-512 BW, and the kernel's
/// permission for the 8 KiB of tile registers (XFEATURE_XTILEDATA, number 18), which Linux
/// hands out per process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_detected() -> bool {
    // CPUID leaf 7 exists on every x86-64 CPU that reaches here (AVX-512 was detected).
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    // The kernels convert activations with AVX-512 BW (every AMX CPU has it; checked anyway).
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 || !is_x86_feature_detected!("avx512bw") {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_detected() -> bool {
    false
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

    #[test]
    fn names_round_trip_and_order_by_width() {
        for isa in [Isa::Generic, Isa::Avx2, Isa::Avx512] {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert!(Isa::Generic.vector_bits() < Isa::Avx2.vector_bits() && Isa::Avx2.vector_bits() < Isa::Avx512.vector_bits());
        assert!(Isa::available().contains(&Isa::detected()) && Isa::available()[0] == Isa::Generic);
        assert!(isa() <= Isa::detected());
    }

    /// AMX is used exactly where CPUID lists AMX-TILE and AMX-BF16 (Linux grants the tile state
    /// to any process that asks), unless switched off.
    #[test]
    fn amx_follows_cpuid() {
        #[cfg(target_arch = "x86_64")]
        {
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            let listed = edx & (1 << 22) != 0 && edx & (1 << 24) != 0 && std::is_x86_feature_detected!("avx512bw") && cfg!(target_os = "linux");
            let off = std::env::var("RSTAR2_CPU_AMX").is_ok_and(|v| v.trim() == "0") || isa() != Isa::Avx512;
            eprintln!("CPUID lists AMX: {listed}; usable: {}", amx());
            assert_eq!(amx(), listed && !off);
            assert_eq!(amx_peak_gflops(0.01).is_some(), amx());
        }
    }

    /// AVX-512 BF16 dot products are used exactly where CPUID lists them (with AVX-512 BW) and
    /// the kernels are AVX-512; bf16 decoding is preferred only where a bf16 unit exists.
    #[test]
    fn bf16_dot_products_follow_cpuid() {
        #[cfg(target_arch = "x86_64")]
        {
            let listed = std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512bw");
            eprintln!("CPUID lists AVX512-BF16: {listed}; usable: {}; bf16 products pay: {}", avx512_bf16(), bf16_products_pay());
            assert_eq!(avx512_bf16(), listed && isa() == Isa::Avx512);
            assert_eq!(bf16_dot_peak_gflops(0.01).is_some(), avx512_bf16());
        }
        assert!(!bf16_products_pay() || amx() || avx512_bf16());
    }
}
