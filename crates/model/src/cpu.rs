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
        }
    }

    /// AVX-512 BF16 dot products are used exactly where CPUID lists them (with AVX-512 BW) and
    /// the kernels are AVX-512; bf16 decoding is preferred only where a bf16 unit exists.
    #[test]
    fn bf16_dot_products_follow_cpuid() {
        #[cfg(target_arch = "x86_64")]
        {
            let listed = std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512bw");
            eprintln!("CPUID lists AVX512-BF16: {listed}; usable: {}", avx512_bf16());
            assert_eq!(avx512_bf16(), listed && isa() == Isa::Avx512);
        }
    }
}
