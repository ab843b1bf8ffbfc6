//! bf16 decode weights: the packed layout, and the small-m matmul `out[m, n] = x[m, k] · w[n, k]ᵀ`
//! on AVX-512 BF16 dot products (`vdpbf16ps`: AMD Zen 4 and later, Intel Cooper Lake and
//! Sapphire Rapids). Where AMX is usable the same packed weights are multiplied on its tiles
//! instead ([`crate::ops::amx`]).
//!
//! Layout ([`pack`]): panels of 32 output columns; a panel is its columns 0..16, then its
//! columns 16..32 (each half contiguous: one stream from memory), each half `kp / 32` tiles (k
//! rounded up to 32, zero-padded) of 16 pair rows. Pair row r of a tile holds, for each of the
//! half's 16 columns c, `w[c][2r]` and `w[c][2r + 1]` of that k-block: the pairs one 32-bit lane
//! of `vdpbf16ps` multiplies, and the second operand of AMX's `tdpbf16ps` as it is.
//!
//! The kernel takes one half at a time in passes of up to 24 activation rows; a half is 18 KiB at
//! k = 576, so passes after the first read it from L1 (a whole panel does not fit a 32 KiB L1).
//! Measured on a 2-vCPU Zen 4 (a scratch loop over SmolLM2-135M shapes, 30 weights cycled from
//! memory, two runs): 8 rows 1.3-2.0x the f16 kernel (21-26 GB/s of weights, about the memory's
//! read rate), 32 rows 1.1-1.9x; one row 1.1x (both memory-bound).
//!
//! One `vdpbf16ps` does two multiply-adds per f32 lane, so a core does twice the flops of its f32
//! FMAs (measured 2.0-2.2x on a Zen 4 core; Sapphire Rapids runs it at about half its FMA rate, which
//! is why AMX is preferred there). Activations are rounded to bf16 as on AMX, sums stay f32.

use half::bf16;

use crate::aligned::AlignedVec;

/// Output columns per panel.
pub const PANEL: usize = 32;
/// Inputs per k-block (16 pairs).
pub(crate) const KBLOCK: usize = 32;
/// bf16 values in one tile: 16 pair rows of one half's 16 columns (one AMX tile).
pub(crate) const TILE: usize = 16 * KBLOCK;
/// How far ahead of the pair row being read the first pass over a half prefetches, in bytes
/// (measured better than 8 and 16 KiB on a Zen 4).
const PREFETCH: usize = 32768;
/// Activation rows per pass: 24 accumulators, the weight vector and a broadcast of the 32 vector
/// registers.
const ROWS: usize = 24;

/// Padded input width.
pub fn padded_k(k: usize) -> usize {
    k.next_multiple_of(KBLOCK)
}

/// Packs `w` (`[n, k]` row-major) as bf16 (round to nearest even) in the layout above.
pub fn pack(w: &[f32], n: usize, k: usize) -> AlignedVec<u16> {
    use rayon::prelude::*;
    let kp = padded_k(k);
    let panels = n.div_ceil(PANEL);
    let mut out = AlignedVec::zeroed(panels * kp * PANEL);
    out.par_chunks_mut(kp * PANEL).enumerate().for_each(|(p, panel)| {
        let blocks = kp / KBLOCK;
        for (half, halfdata) in panel.chunks_mut(blocks * TILE).enumerate() {
            for (b, tile) in halfdata.chunks_mut(TILE).enumerate() {
                for r in 0..16 {
                    for c in 0..16 {
                        let col = p * PANEL + half * 16 + c;
                        for e in 0..2 {
                            let t = b * KBLOCK + 2 * r + e;
                            if col < n && t < k {
                                tile[r * KBLOCK + 2 * c + e] = bf16::from_f32(w[col * k + t]).to_bits();
                            }
                        }
                    }
                }
            }
        }
    });
    out
}

/// Rounds to bf16 (nearest even) as integer arithmetic the compiler vectorizes (a scalar
/// `bf16::from_f32` per value cost as much as the tile products at decode shapes). Finite
/// inputs: activations.
///
/// # Safety
/// The CPU has AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn round_row(x: &[f32], out: &mut [u16]) {
    for (&v, o) in x.iter().zip(out.iter_mut()) {
        let b = v.to_bits();
        *o = ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    }
}

/// Rows of each pass of [`panels`]: `m` split into near-equal passes of at most 24 rows (25 as
/// 13 + 12, not 24 + 1).
fn passes(m: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = m.div_ceil(ROWS);
    (0..count).map(move |p| (p * m / count, (p + 1) * m / count))
}

/// The activations for [`panels`]: x rounded to bf16 (k zero-padded to `kp`) as 32-bit pairs
/// (element 2j in the low half, as the weights' pairs), pass by pass, each pass's rows
/// interleaved (`[kp / 2][rows]`), so the kernel finds all rows' pairs for one pair row at one
/// address plus constant offsets (a pointer per row would not fit the registers).
///
/// # Safety
/// [`crate::cpu::avx512_bf16`] is true (AVX-512 F and BW).
pub unsafe fn activation_pairs(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let kp = padded_k(k);
    let mut row = vec![0u16; kp];
    let mut pairs = vec![0u32; m * kp / 2];
    for (i0, i1) in passes(m) {
        let rows = i1 - i0;
        for i in i0..i1 {
            // SAFETY: the caller's guarantee.
            unsafe { round_row(&x[i * k..(i + 1) * k], &mut row[..k]) };
            for j in 0..kp / 2 {
                pairs[i0 * kp / 2 + j * rows + (i - i0)] = u32::from(row[2 * j]) | u32::from(row[2 * j + 1]) << 16;
            }
        }
    }
    pairs
}

/// Panels `p0..p1` of `out[m, n]` from the pairs of [`activation_pairs`] and the weights of
/// [`pack`]. Each 16-column half of a panel (18 KiB at k = 576) is taken on its own, in passes of
/// up to 24 rows: the first pass streams it from memory, later ones find it in L1.
///
/// # Safety
/// [`crate::cpu::avx512_bf16`] is true; `x` and `w` come from [`activation_pairs`] (for these m,
/// k) and [`pack`] (for these n, k); `out` points at `m x n` values of which this call alone
/// writes columns `32 p0 .. min(32 p1, n)`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn panels(out: *mut f32, x: &[u32], w: &[u16], m: usize, n: usize, k: usize, p0: usize, p1: usize) {
    let kp = padded_k(k);
    debug_assert!(x.len() >= m * kp / 2 && w.len() >= p1 * kp * PANEL);
    let mut sums = [0.0f32; ROWS * 16];
    for p in p0..p1 {
        for half in 0..2 {
            let first_col = p * PANEL + half * 16;
            if first_col >= n {
                break;
            }
            let cols = 16.min(n - first_col);
            let weights = w[p * kp * PANEL + half * (kp / KBLOCK) * TILE..].as_ptr();
            for (pass, (i0, i1)) in passes(m).enumerate() {
                let rows = x[i0 * kp / 2..].as_ptr();
                // Up to 12 rows, two sets of sums (even and odd pair rows) so that consecutive
                // dot products into one sum are never back to back (the instruction's latency).
                macro_rules! by_rows {
                    ($($mb:literal $two:literal)*) => {
                        match i1 - i0 {
                            // SAFETY: the half holds kp / 2 pair rows of 16 columns; the pass
                            // holds kp / 2 pairs of each of its rows, interleaved.
                            $($mb => unsafe { half_pass::<$mb, $two>(weights, rows, kp, pass == 0, &mut sums) },)*
                            rows => unreachable!("{rows} rows in one pass"),
                        }
                    };
                }
                by_rows!(1 true 2 true 3 true 4 true 5 true 6 true 7 true 8 true 9 true 10 true 11 true 12 true
                    13 false 14 false 15 false 16 false 17 false 18 false 19 false 20 false 21 false 22 false 23 false 24 false);
                for i in 0..i1 - i0 {
                    // SAFETY: row i0 + i < m and columns first_col .. first_col + cols < n: this
                    // call's columns.
                    unsafe { std::ptr::copy_nonoverlapping(sums[i * 16..].as_ptr(), out.add((i0 + i) * n + first_col), cols) };
                }
            }
        }
    }
}

/// One pass of M rows over one half of a panel: per pair row, one weight vector (16 columns) is
/// loaded and each row's pair broadcast against it. With TWO, even and odd pair rows add into
/// two sets of M sums (added at the end), so that consecutive products into one sum are never
/// back to back (the instruction's latency). `x` is the pass's interleaved pairs
/// ([`activation_pairs`]). The first pass prefetches the half ahead into L1, and what follows it
/// in memory (the other half, or the next panel's first) into L2.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn half_pass<const M: usize, const TWO: bool>(half: *const u16, x: *const u32, kp: usize, first: bool, sums: &mut [f32; ROWS * 16]) {
    use std::arch::x86_64::*;
    /// One pair row: `sums[i] += w[t] · x[i][t]` for the M rows.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn step<const M: usize>(sums: &mut [__m512; M], row: *const u16, x: *const u32, other_half: usize, first: bool) {
        // SAFETY: the caller's bounds; __m512i and __m512bh are both 64 bytes of lanes; the
        // prefetches only hint (addresses past the buffer are not read).
        unsafe {
            if first {
                _mm_prefetch::<_MM_HINT_T0>(row.cast::<i8>().wrapping_add(PREFETCH));
                _mm_prefetch::<_MM_HINT_T1>(row.cast::<i8>().wrapping_add(PREFETCH + other_half));
            }
            let wv: __m512bh = std::mem::transmute(_mm512_loadu_si512(row.cast()));
            for (i, sum) in sums.iter_mut().enumerate() {
                let xb: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x.add(i) as i32));
                *sum = _mm512_dpbf16_ps(*sum, wv, xb);
            }
        }
    }
    // SAFETY: the caller's bounds: kp / 2 pair rows of 16 columns (32 values) from `half`, and
    // M pairs per pair row from `x`.
    unsafe {
        // Bytes from a pair row of this half to the same row of the next one in memory.
        let other_half = kp * 32;
        let (mut even, mut odd) = ([_mm512_setzero_ps(); M], [_mm512_setzero_ps(); M]);
        for t in (0..kp / 2).step_by(2) {
            step::<M>(&mut even, half.add(t * KBLOCK), x.add(t * M), other_half, first);
            let next = if TWO { &mut odd } else { &mut even };
            step::<M>(next, half.add((t + 1) * KBLOCK), x.add((t + 1) * M), other_half, first);
        }
        for i in 0..M {
            let total = if TWO { _mm512_add_ps(even[i], odd[i]) } else { even[i] };
            _mm512_storeu_ps(sums.as_mut_ptr().add(i * 16), total);
        }
    }
}

/// Flops of one step of [`peak_loop`]: twelve 16-lane dot products of pairs.
pub const FLOPS_PER_STEP: u64 = 12 * 16 * 4;

/// `steps` x twelve independent `vdpbf16ps` chains, no memory traffic (the bench's bf16 peak).
pub fn peak_loop(steps: u64) -> f32 {
    assert!(crate::cpu::avx512_bf16(), "peak_loop: no AVX-512 BF16");
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn chains(steps: u64) -> f32 {
        use std::arch::x86_64::*;
        // SAFETY: register-only arithmetic; the caller checked the CPU.
        unsafe {
            let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80)); // 1.0
            let b: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3380)); // 2^-24
            let mut acc = [_mm512_setzero_ps(); 12];
            for _ in 0..steps {
                for s in acc.iter_mut() {
                    *s = _mm512_dpbf16_ps(*s, a, b);
                }
            }
            let mut sum = _mm512_setzero_ps();
            for s in acc {
                sum = _mm512_add_ps(sum, s);
            }
            _mm512_reduce_add_ps(sum)
        }
    }
    // SAFETY: checked above.
    unsafe { chains(steps) }
}
