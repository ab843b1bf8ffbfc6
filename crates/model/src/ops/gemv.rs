//! The small-m matmul of decoding: `out[m, n] = x[m, k] · w[n, k]ᵀ` for a handful of rows m (one
//! per sequence of the batch). Decoding is bound by reading the weights, so they are repacked
//! once ([`PackedWeight`]): panels of 32 output columns, each panel `k` rows of 32 values,
//! stored in f32 or f16 (half the bytes, widened in registers; sums in f32). The kernel streams
//! each panel once for all m rows, keeps `32 x M` outputs in registers (no horizontal sums), and
//! the work is split over panels (the output layer's 1,536 of them included).
//!
//! Kernels per instruction set ([`crate::cpu::isa`]): AVX-512 (2 vectors of 16 columns x 12
//! rows per pass), AVX2 (4 of 8 x 2), portable Rust; bf16 weights have their own packed layout
//! ([`crate::ops::bf16`]) and are multiplied on AMX tiles ([`crate::ops::amx`]) or AVX-512 BF16
//! dot products.

// Kernels index their register arrays by lane and row on purpose.
#![allow(clippy::needless_range_loop)]

use half::f16;
use rayon::prelude::*;

/// The type cached inference ([`crate::Model::extend`]: decoding, and prefill chunks of up to
/// [`crate::ops::matmul::SMALL_M`] tokens) reads the projection and output weights in, from
/// copies repacked for the small-m kernel. Training always uses the f32 master weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeWeights {
    /// The f32 master weights.
    #[default]
    F32,
    /// f16 copies (half the bytes per decoded token; sums stay f32).
    F16,
    /// bf16 copies multiplied on the CPU's AMX tiles ([`crate::cpu::amx`]: Intel Sapphire
    /// Rapids and later) or, without AMX, its AVX-512 BF16 dot products
    /// ([`crate::cpu::avx512_bf16`]: AMD Zen 4 and later); activations rounded to bf16 too, sums
    /// f32: as many bytes as f16 with 3 fewer significant bits, and twice (vector) to ten times
    /// (AMX) the f32 arithmetic rate, which large decoding batches need. Where neither is
    /// usable the copies are f16 instead (the nearest type the vector kernels read); GPUs read
    /// f16.
    Bf16,
}

impl DecodeWeights {
    /// "f32" or "f16".
    pub fn name(self) -> &'static str {
        match self {
            DecodeWeights::F32 => "f32",
            DecodeWeights::F16 => "f16",
            DecodeWeights::Bf16 => "bf16",
        }
    }

    /// The type the CPU's kernels store it in: bf16 only where AMX or AVX-512 BF16 is usable,
    /// else f16.
    pub fn on_this_cpu(self) -> DecodeWeights {
        match self {
            DecodeWeights::Bf16 if !crate::cpu::amx() && !crate::cpu::avx512_bf16() => DecodeWeights::F16,
            other => other,
        }
    }
}

impl std::str::FromStr for DecodeWeights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(DecodeWeights::F32),
            "f16" => Ok(DecodeWeights::F16),
            "bf16" => Ok(DecodeWeights::Bf16),
            other => Err(format!("decode weights {other:?}: expected f32, f16 or bf16")),
        }
    }
}

use crate::aligned::AlignedVec;
use crate::cpu::{Isa, isa};
use crate::simd::{Kernel, Simd, dispatch};

/// Output columns per panel.
pub const PANEL: usize = 32;
/// How far ahead of the row being read the kernel prefetches, in bytes (measured best among
/// 4, 8, 12 and 16 KiB on a 2-vCPU Xeon).
const PREFETCH: usize = 8192;

/// A linear layer's weight `[n, k]` repacked for [`matmul_packed`]: panel `p` holds columns
/// `32p .. 32p + 32` as `k` rows of 32 values (the last panel zero-padded).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    data: Packed,
}

#[derive(Debug, Clone, PartialEq)]
enum Packed {
    F32(AlignedVec<f32>),
    F16(AlignedVec<f16>),
    /// Pair-interleaved bf16 panels ([`crate::ops::bf16::pack`]), only where
    /// [`crate::cpu::amx`] or [`crate::cpu::avx512_bf16`] is true (never elsewhere).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Bf16(AlignedVec<u16>),
}

impl PackedWeight {
    /// Packs `w` (`[n, k]` row-major) in the given type (f16 and bf16 round to nearest even;
    /// bf16 becomes f16 where the CPU has no bf16 products: [`DecodeWeights::on_this_cpu`]).
    pub fn pack(w: &[f32], n: usize, k: usize, dtype: DecodeWeights) -> Self {
        assert_eq!(w.len(), n * k, "PackedWeight::pack: {} values for {n}x{k}", w.len());
        #[cfg(target_arch = "x86_64")]
        if dtype.on_this_cpu() == DecodeWeights::Bf16 {
            return PackedWeight { n, k, data: Packed::Bf16(crate::ops::bf16::pack(w, n, k)) };
        }
        let panels = n.div_ceil(PANEL);
        // Panel p, row t, column c = w[(32p + c) * k + t].
        let value = |i: usize| -> f32 {
            let (p, rest) = (i / (k * PANEL), i % (k * PANEL));
            let (t, c) = (rest / PANEL, rest % PANEL);
            let col = p * PANEL + c;
            if col < n { w[col * k + t] } else { 0.0 }
        };
        let len = panels * k * PANEL;
        let data = match dtype {
            DecodeWeights::F32 => Packed::F32(AlignedVec::from_fn(len, value)),
            DecodeWeights::F16 | DecodeWeights::Bf16 => Packed::F16(AlignedVec::from_fn(len, |i| f16::from_f32(value(i)))),
        };
        PackedWeight { n, k, data }
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The type the values are stored in.
    pub fn dtype(&self) -> DecodeWeights {
        match self.data {
            Packed::F32(_) => DecodeWeights::F32,
            Packed::F16(_) => DecodeWeights::F16,
            Packed::Bf16(_) => DecodeWeights::Bf16,
        }
    }

    /// Bytes a product reads from it.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Packed::F32(d) => d.len() * 4,
            Packed::F16(d) => d.len() * 2,
            Packed::Bf16(d) => d.len() * 2,
        }
    }
}

/// `out[m, n] = x[m, k] · wᵀ` (overwrite) on the kernels of [`isa`].
pub fn matmul_packed(out: &mut [f32], x: &[f32], w: &PackedWeight, m: usize) {
    matmul_packed_on(isa(), out, x, w, m);
}

/// A pointer shared by tasks that write disjoint columns of one output.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges, see `matmul_packed_on`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the Sync wrapper, not the raw field).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// [`matmul_packed`] on a given instruction set (which the CPU must have: tests compare them).
pub fn matmul_packed_on(isa: Isa, out: &mut [f32], x: &[f32], w: &PackedWeight, m: usize) {
    let (n, k) = (w.n, w.k);
    assert!(isa <= Isa::detected(), "matmul_packed: this CPU has no {}", isa.name());
    assert!(out.len() >= m * n, "matmul_packed: output has {} elements, needs {m}x{n}", out.len());
    assert!(x.len() >= m * k, "matmul_packed: input has {} elements, needs {m}x{k}", x.len());
    if m == 0 || n == 0 {
        return;
    }
    // About four tasks per thread (the cores finish together), whole panels each.
    let panels = n.div_ceil(PANEL);
    let threads = rayon::current_num_threads();
    let per_task = panels.div_ceil(threads * 4).max(1);
    let tasks = panels.div_ceil(per_task);
    let dst = OutPtr(out.as_mut_ptr());
    // bf16 weights exist only where AMX or AVX-512 BF16 is usable; their activations are
    // rounded once per product, as AMX tiles or as pairs for the dot products.
    #[cfg(target_arch = "x86_64")]
    let amx = crate::cpu::amx();
    #[cfg(target_arch = "x86_64")]
    let (tiles, pairs) = match &w.data {
        Packed::Bf16(_) if amx => (crate::ops::amx::activation_tiles(x, m, k), Vec::new()),
        // SAFETY: bf16 weights without AMX mean AVX-512 BF16 (and BW) is usable.
        Packed::Bf16(_) => (AlignedVec::zeroed(0), unsafe { crate::ops::bf16::activation_pairs(x, m, k) }),
        _ => (AlignedVec::zeroed(0), Vec::new()),
    };
    let run = |t: usize| {
        let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(panels));
        match &w.data {
            // SAFETY: as above; `tiles`/`pairs` and the weights have the layouts for m, n, k;
            // tasks write disjoint panels of `out` (checked size above).
            #[cfg(target_arch = "x86_64")]
            Packed::Bf16(weights) if amx => unsafe { crate::ops::amx::panels(dst.get(), &tiles, weights, m, n, k, p0, p1) },
            #[cfg(target_arch = "x86_64")]
            Packed::Bf16(weights) => unsafe { crate::ops::bf16::panels(dst.get(), &pairs, weights, m, n, k, p0, p1) },
            _ => dispatch(isa, Panels { out: dst, x, w, m, p0, p1 }),
        }
    };
    if threads < 2 || tasks < 2 || m * n * k < 1 << 15 {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// Panels `p0..p1` of the output (columns `32 p0 .. 32 p1`).
struct Panels<'a> {
    out: OutPtr,
    x: &'a [f32],
    w: &'a PackedWeight,
    m: usize,
    p0: usize,
    p1: usize,
}

/// Activation rows per pass: (32 / LANES) x M accumulators plus the operands must fit the
/// registers (32 vectors with AVX-512: 2 x 12; 16 with AVX2: 4 x 2).
const fn rows_per_pass<S: Simd>() -> usize {
    match S::LANES {
        16 => 12,
        8 => 2,
        _ => 1,
    }
}

impl Kernel for Panels<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let Panels { out, x, w, m, p0, p1 } = self;
        let (n, k) = (w.n, w.k);
        let passes = m.div_ceil(rows_per_pass::<S>());
        let mut tile = [0.0f32; PANEL * 12];
        let panel_len = k * PANEL;
        // With few rows per pass (AVX2: 2) and many passes, widening f16 in every pass costs
        // about as much as the FMAs it feeds (a 256-bit `vcvtph2ps` is two µops): an f16 panel
        // is then widened once into `widened` (L2-resident) and the passes read f32. With
        // AVX-512's 12 rows per pass the passes re-read the f16 panel from L1 and widen in
        // registers, which measured faster there.
        let widen_once = matches!(w.data, Packed::F16(_)) && rows_per_pass::<S>() < 12 && passes >= WIDEN_ONCE_FROM_PASSES;
        // The buffer is the thread's, kept across calls (taken out, not borrowed, so no closure
        // runs the SIMD loop), and padded by the prefetch distance: the passes prefetch PREFETCH
        // bytes past the row they read. Without the padding, two threads under the system
        // allocator ran 2-5x slower than one on a 2-vCPU Zen 1; padding alone restored the speed,
        // so the likely cause is each core prefetching lines the other was writing just past
        // its own buffer (xtask's allocator happened to place the buffers apart).
        let mut widened = if widen_once { WIDENED.replace(AlignedVec::zeroed(0)) } else { AlignedVec::zeroed(0) };
        if widen_once && widened.len() < panel_len + PREFETCH / 4 + PANEL {
            widened = AlignedVec::zeroed(panel_len + PREFETCH / 4 + PANEL);
        }
        for p in p0..p1 {
            let src = match &w.data {
                Packed::F32(d) => Src::F32(d[p * panel_len..].as_ptr()),
                Packed::F16(d) if widen_once => {
                    widen::<S>(&d[p * panel_len..(p + 1) * panel_len], &mut widened[..panel_len]);
                    Src::F32(widened.as_ptr())
                }
                Packed::F16(d) => Src::F16(d[p * panel_len..].as_ptr()),
                Packed::Bf16(_) => unreachable!("bf16 weights run on AMX tiles or bf16 dot products"),
            };
            let cols = PANEL.min(n - p * PANEL);
            // Activation rows in near-equal passes (13 rows as 7 + 6, not 12 + 1).
            for pass in 0..passes {
                let (i0, i1) = (pass * m / passes, (pass + 1) * m / passes);
                // SAFETY: the panel holds k rows of 32; rows i0..i1 of x hold k values each.
                unsafe { panel::<S>(src, x[i0 * k..].as_ptr(), k, i1 - i0, &mut tile) };
                for i in 0..i1 - i0 {
                    // SAFETY: row i0+i < m and columns 32p .. 32p+cols < n: this task's columns.
                    unsafe { std::ptr::copy_nonoverlapping(tile[i * PANEL..].as_ptr(), out.0.add((i0 + i) * n + p * PANEL), cols) };
                }
            }
        }
        if widen_once {
            WIDENED.set(widened);
        }
    }
}

thread_local! {
    /// An f16 panel widened to f32 (see `Panels::run`).
    static WIDENED: std::cell::RefCell<AlignedVec<f32>> = std::cell::RefCell::new(AlignedVec::zeroed(0));
}

/// Passes over one panel (activation rows / rows per pass) from which an f16 panel is widened
/// to f32 once rather than in every pass, on instruction sets with fewer than 12 rows per pass
/// (measured on a 2-vCPU AMD EPYC Zen 1 with AVX2, `bench model`).
const WIDEN_ONCE_FROM_PASSES: usize = 4;

/// `dst[i] = src[i]` widened from f16 (a panel: a multiple of 32 values).
#[inline(always)]
fn widen<S: Simd>(src: &[f16], dst: &mut [f32]) {
    assert!(dst.len() >= src.len() && src.len().is_multiple_of(PANEL));
    for i in (0..src.len()).step_by(S::LANES) {
        // SAFETY: i + LANES <= len (LANES divides PANEL) on both sides.
        unsafe { S::store(dst.as_mut_ptr().add(i), S::load_f16(src.as_ptr().add(i))) };
    }
}

/// Where a panel's values are.
#[derive(Clone, Copy)]
enum Src {
    F32(*const f32),
    F16(*const f16),
}

/// `tile[i][c] = Σ_t x[i][t] · panel[t][c]` for `mb` rows of x (stride k).
#[inline(always)]
unsafe fn panel<S: Simd>(src: Src, x: *const f32, k: usize, mb: usize, tile: &mut [f32; PANEL * 12]) {
    macro_rules! by_rows {
        ($($mb:literal)*) => {
            match (mb, src) {
                $(($mb, Src::F32(w)) => panel_m::<S, $mb, false>(w.cast(), x, k, tile),
                  ($mb, Src::F16(w)) => panel_m::<S, $mb, true>(w.cast(), x, k, tile),)*
                _ => unreachable!("{mb} rows in one pass"),
            }
        };
    }
    // SAFETY: the caller's guarantee; mb <= rows_per_pass::<S>() <= 12.
    unsafe { by_rows!(1 2 3 4 5 6 7 8 9 10 11 12) }
}

/// One pass: `V = 32 / LANES` vectors of columns x M rows of accumulators; per input index t,
/// V weight vectors are loaded once and each row's x[i][t] is broadcast against them.
#[inline(always)]
unsafe fn panel_m<S: Simd, const M: usize, const F16: bool>(w: *const u8, x: *const f32, k: usize, tile: &mut [f32; PANEL * 12]) {
    #[inline(always)]
    unsafe fn load<S: Simd, const F16: bool>(w: *const u8, at: usize) -> S::V {
        // SAFETY: the caller guarantees LANES values at `at`.
        unsafe { if F16 { S::load_f16(w.cast::<f16>().add(at)) } else { S::load(w.cast::<f32>().add(at)) } }
    }
    // Column groups of 4 vectors (AVX2: 32 columns; AVX-512: 2 vectors cover the panel).
    let vectors = PANEL / S::LANES;
    let group = vectors.min(4);
    for g0 in (0..vectors).step_by(group) {
        // SAFETY: t < k rows of PANEL values; x rows of k values; tile rows of PANEL.
        unsafe {
            let mut acc = [[S::zero(); M]; 4];
            for t in 0..k {
                let row = t * PANEL + g0 * S::LANES;
                // A row of the panel is one cache line (f16) or two (f32); ask for the row
                // PREFETCH bytes ahead (the hardware prefetcher alone left a core at about
                // two-thirds of its share of the memory bandwidth).
                #[cfg(target_arch = "x86_64")]
                if S::LANES > 1 && g0 == 0 {
                    let line = w.wrapping_add(row * if F16 { 2 } else { 4 } + PREFETCH);
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast());
                    if !F16 {
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.wrapping_add(64).cast());
                    }
                }
                let wv = [
                    load::<S, F16>(w, row),
                    if group > 1 { load::<S, F16>(w, row + S::LANES) } else { S::zero() },
                    if group > 2 { load::<S, F16>(w, row + 2 * S::LANES) } else { S::zero() },
                    if group > 3 { load::<S, F16>(w, row + 3 * S::LANES) } else { S::zero() },
                ];
                for i in 0..M {
                    let xb = S::splat(*x.add(i * k + t));
                    for c in 0..group {
                        acc[c][i] = S::fmadd(wv[c], xb, acc[c][i]);
                    }
                }
            }
            for i in 0..M {
                for c in 0..group {
                    S::store(tile.as_mut_ptr().add(i * PANEL + (g0 + c) * S::LANES), acc[c][i]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every instruction set against an f64 triple loop, f32, f16 and bf16 weights (AMX tiles or
    /// AVX-512 BF16 where usable), shapes that leave remainders everywhere (a partial last panel, passes of
    /// unequal rows, k not a multiple of the tile depth, tiny k, bf16 passes of both sizes and a
    /// last half-panel of one column). The f16 widen-once shapes (m >= 8) run with a shorter k
    /// before a longer one, so the thread's widened-panel buffer is both reused and regrown.
    #[test]
    fn every_isa_matches_a_naive_product() {
        for &(m, n, k) in &[(1usize, 1usize, 1usize), (1, 7, 19), (3, 50, 33), (13, 64, 100), (8, 130, 576), (12, 32, 16), (32, 21, 47), (64, 97, 5), (17, 40, 70), (9, 33, 64), (25, 17, 40)] {
            let x = fill(m * k, 1);
            let w = fill(n * k, 2);
            let rounded: Vec<f32> = w.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            let rounded_bf16: Vec<f32> = w.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
            let x_bf16: Vec<f32> = x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
            let reference_of = |x: &[f32], w: &[f32]| -> Vec<f64> {
                let mut c = vec![0.0f64; m * n];
                for i in 0..m {
                    for j in 0..n {
                        c[i * n + j] = (0..k).map(|p| f64::from(x[i * k + p]) * f64::from(w[j * k + p])).sum();
                    }
                }
                c
            };
            let reference = |w: &[f32]| reference_of(&x, w);
            // AMX and the bf16 dot products multiply bf16 activations by bf16 weights.
            let bf16_products = crate::cpu::amx() || crate::cpu::avx512_bf16();
            let bf16 = (DecodeWeights::Bf16, if bf16_products { reference_of(&x_bf16, &rounded_bf16) } else { reference(&rounded) });
            for (dtype, want) in [(DecodeWeights::F32, reference(&w)), (DecodeWeights::F16, reference(&rounded)), bf16] {
                let packed = PackedWeight::pack(&w, n, k, dtype);
                assert_eq!(packed.dtype(), dtype.on_this_cpu());
                let padded_k = if packed.dtype() == DecodeWeights::Bf16 { k.next_multiple_of(32) } else { k };
                assert_eq!(packed.bytes(), n.div_ceil(PANEL) * PANEL * padded_k * if dtype == DecodeWeights::F32 { 4 } else { 2 });
                for isa in Isa::available() {
                    let mut out = vec![f32::NAN; m * n];
                    matmul_packed_on(isa, &mut out, &x, &packed, m);
                    for (i, (&got, &want)) in out.iter().zip(want.iter()).enumerate() {
                        // f32 sums of k products of magnitude <= 1: k * 2^-24 relative each.
                        assert!((f64::from(got) - want).abs() <= 1e-6 * k as f64 + 1e-6, "{isa:?} {dtype:?} {m}x{n}x{k} element {i}: {got} vs {want}");
                    }
                }
            }
        }
    }
}
