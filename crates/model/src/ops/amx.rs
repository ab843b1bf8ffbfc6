//! The small-m matmul of decoding on Intel's AMX tiles (Sapphire Rapids and later), for bf16
//! decode weights: `out[m, n] = x[m, k] · w[n, k]ᵀ`. One `tdpbf16ps` multiplies a 16x32 bf16
//! tile by a 32x16 one into 16x16 f32 sums (16,384 flops, about 16 cycles): some ten times the
//! AVX-512 FMA rate, so a batch of decoding sequences is bound by reading the weights again,
//! not by arithmetic.
//!
//! Weights are the pair-interleaved panels of [`crate::ops::bf16::pack`]: a panel is its
//! columns 0..16 then its columns 16..32, each `kp / 32` tiles of 16x32 (one per k-block) in
//! exactly the layout the instruction reads as its second operand.
//!
//! Activations are rounded to bf16 too, as PyTorch's bf16 inference does (an earlier version
//! split each into bf16 `hi + lo`, 16 bits, at twice the tile loads and products; the weights'
//! own 8 bits dominate the error either way). What bounds the kernel at decode shapes is
//! bringing weight tiles in from memory: a tile load costs about 20 ns even from L1 on a
//! Sapphire Rapids VM (against 7 ns per product) and waits on memory unless prefetched.
//!
//! Tile registers are not known to the compiler: the kernels configure them (`ldtilecfg`) at the
//! start of each task and release them (`tilerelease`) at its end, and no Rust code runs between
//! an `asm!` block that writes a tile and the one that reads it that could use them.

use std::arch::asm;

use crate::aligned::AlignedVec;
use crate::ops::bf16::{KBLOCK, PANEL, TILE, padded_k, round_row};

/// How far ahead of the k-block being multiplied each half's weights are prefetched, in bytes
/// (8 k-blocks).
const PREFETCH: usize = 8 * TILE * 2;
/// Flops of one step of [`peak_loop`]: four 16x16x32 tile products.
pub const FLOPS_PER_STEP: u64 = 4 * 16 * 16 * 32 * 2;

/// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Loads the configuration every kernel here uses.
///
/// # Safety
/// The CPU must have AMX and the process the tile permission ([`crate::cpu::amx`]).
unsafe fn configure() {
    let mut config = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], bytes_per_row: [0; 16], rows: [0; 16] };
    for t in 0..8 {
        config.bytes_per_row[t] = 64;
        config.rows[t] = 16;
    }
    // SAFETY: the caller's guarantee; the configuration is 64 valid bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack, readonly)) };
}

/// Frees the tile state (the kernel need not save it on a context switch).
unsafe fn release() {
    // SAFETY: valid whenever tiles are configured.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// The activations as A tiles: x rounded to bf16 (nearest even, [`round_row`]), rows in groups of 16 (the
/// last zero-padded), each group `kp / 32` tiles of 16 rows x 32 values stored contiguously
/// (a tile load then reads 1 KiB in a row rather than 16 lines a row of x apart).
pub fn activation_tiles(x: &[f32], m: usize, k: usize) -> AlignedVec<u16> {
    let blocks = padded_k(k) / KBLOCK;
    let mut a = AlignedVec::zeroed(m.div_ceil(16) * blocks * TILE);
    for i in 0..m {
        let (g, r) = (i / 16, i % 16);
        for b in 0..blocks {
            let (t0, t1) = (b * KBLOCK, ((b + 1) * KBLOCK).min(k));
            let at = (g * blocks + b) * TILE + r * KBLOCK;
            // SAFETY: AMX implies AVX-512 F and BW (the kernels here run only where it is usable).
            unsafe { round_row(&x[i * k + t0..i * k + t1], &mut a[at..at + t1 - t0]) };
        }
    }
    a
}

/// Panels `p0..p1` of `out[m, n]` from the A tiles of [`activation_tiles`] and the weight
/// tiles of [`crate::ops::bf16::pack`].
///
/// # Safety
/// [`crate::cpu::amx`] is true; `a` and `w` come from [`activation_tiles`] (for these m, k)
/// and [`crate::ops::bf16::pack`] (for these n, k); `out` points at `m x n` values of which this call alone
/// writes columns `32 p0 .. min(32 p1, n)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn panels(out: *mut f32, a: &[u16], w: &[u16], m: usize, n: usize, k: usize, p0: usize, p1: usize) {
    let kp = padded_k(k);
    let blocks = kp / KBLOCK;
    let groups = m.div_ceil(16);
    debug_assert!(a.len() >= groups * blocks * TILE && w.len() >= p1 * kp * PANEL);
    // Sums of one pass: up to 32 rows (two A tiles) x 32 columns.
    let mut sums = Sums([0.0f32; 32 * PANEL]);
    // SAFETY: the caller's guarantees; every tile load reads 16 rows of 64 bytes inside `a` or
    // `w` (offsets from the layouts above), every store 16 rows of 64 bytes inside `sums`.
    unsafe {
        configure();
        for p in p0..p1 {
            let panel = w.as_ptr().add(p * kp * PANEL);
            let cols = PANEL.min(n - p * PANEL);
            // A tiles two at a time (each weight tile loaded feeds two products), an odd last
            // one alone.
            for g in (0..groups).step_by(2) {
                let a0 = a.as_ptr().add(g * blocks * TILE);
                let pair = g + 1 < groups;
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                for b in 0..blocks {
                    // This k-block's tiles of the panel's two halves.
                    let (w0, w1) = (panel.add(b * TILE), panel.add((blocks + b) * TILE));
                    // Tile loads from memory stall the products; the tiles 8 blocks ahead in
                    // both halves are asked for into L1 (the first pass over the panel reads
                    // it from memory). Into L2 measured best with unaligned panels; with
                    // cache-line-aligned ones L1 does better (interleaved decode runs on a
                    // 2-vCPU Xeon: batch 8 +10%, batch 32 +2-3%), 8 blocks ahead as well as
                    // 6 or 12.
                    if g == 0 {
                        for half in [w0, w1] {
                            let ahead = half.cast::<u8>().wrapping_add(PREFETCH);
                            for line in 0..TILE * 2 / 64 {
                                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ahead.wrapping_add(line * 64).cast());
                            }
                        }
                    }
                    if pair {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tileloadd tmm6, [{w0} + {sw}*1]",
                            "tileloadd tmm7, [{w1} + {sw}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(b * TILE),
                            a1 = in(reg) a0.add((blocks + b) * TILE),
                            sa = in(reg) KBLOCK * 2,
                            w0 = in(reg) w0,
                            w1 = in(reg) w1,
                            sw = in(reg) KBLOCK * 2,
                            options(nostack, readonly),
                        );
                    } else {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm6, [{w0} + {sw}*1]",
                            "tileloadd tmm7, [{w1} + {sw}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            a0 = in(reg) a0.add(b * TILE),
                            sa = in(reg) KBLOCK * 2,
                            w0 = in(reg) w0,
                            w1 = in(reg) w1,
                            sw = in(reg) KBLOCK * 2,
                            options(nostack, readonly),
                        );
                    }
                }
                let c = sums.0.as_mut_ptr();
                asm!(
                    "tilestored [{c0} + {s}*1], tmm0",
                    "tilestored [{c1} + {s}*1], tmm1",
                    "tilestored [{c2} + {s}*1], tmm2",
                    "tilestored [{c3} + {s}*1], tmm3",
                    c0 = in(reg) c,
                    c1 = in(reg) c.add(16),
                    c2 = in(reg) c.add(16 * PANEL),
                    c3 = in(reg) c.add(16 * PANEL + 16),
                    s = in(reg) PANEL * 4,
                    options(nostack),
                );
                for i in 0..32.min(m - g * 16) {
                    std::ptr::copy_nonoverlapping(sums.0.as_ptr().add(i * PANEL), out.add((g * 16 + i) * n + p * PANEL), cols);
                }
            }
        }
        release();
    }
}

/// The tile sums of one pass, each tile row a whole cache line.
#[repr(C, align(64))]
struct Sums([f32; 32 * PANEL]);

/// `steps` x four independent tile products on zeroed tiles (the bench's AMX peak).
pub fn peak_loop(steps: u64) {
    assert!(crate::cpu::amx(), "peak_loop: no usable AMX");
    // SAFETY: AMX is usable; register-only tile arithmetic.
    unsafe {
        configure();
        asm!("tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7", options(nostack, nomem));
        for _ in 0..steps {
            asm!("tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7", "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem),);
        }
        release();
    }
}
