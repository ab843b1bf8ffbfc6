//! f32 matrix products on AVX-512, written for this crate: the packing and blocking of BLIS
//! (Goto's algorithm) around an 8 x 48 register tile.
//!
//! Why not the `gemm` crate here: its AVX-512 kernels reach 63-83% of the FMA peak on this
//! project's machines and lose most where the right operand is k-contiguous (`x @ w^T`, every
//! linear layer's forward), because that operand is repacked by a strided gather. Here both
//! operands are packed with 8 x 8 register transposes, once per cache block, and the tile keeps
//! 24 accumulators in registers. `gemm` stays the path of CPUs without AVX-512.
//!
//! Blocking (mirrored BLIS: C is row-major, so vectors run along n):
//! - `MC x KC` of A is packed into `MR`-row panels (`KC x MR` each); one panel stays in L1 while
//!   the tile sweeps along n.
//! - `KC x NC` of B is packed into `NR`-column panels (`KC x NR` each) and stays in L2.
//! - Threads split the output into blocks (A's rows when it is tall, B's columns when it is
//!   wide): one fork and join per product. The operand every part reads is packed once into a
//!   shared buffer, each unit by the first part to need it; the other operand each part packs
//!   into its own buffers. Every element of C is summed by one thread in a fixed order, so
//!   results do not depend on the thread count.

use std::arch::x86_64::*;
use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::LocalKey;

use rayon::prelude::*;

/// Rows of the register tile (each one broadcast per k step).
pub const MR: usize = 8;
/// Columns of the register tile: three 16-lane vectors.
pub const NR: usize = 48;
/// Depth of a packed block: one A panel (`KC x MR`, 12 KiB) sits in L1.
const KC: usize = 384;
/// Rows of A packed at a time (`MC x KC`, 3 MiB, in L3).
const MC: usize = 2048;
/// Columns of B packed at a time (`KC x NC`, 216 KiB, in L2 beside the A panels streaming
/// through it).
const NC: usize = 3 * NR;

/// Steps before the end of a tile's k loop at which its block of C is prefetched: about 0.3 us
/// on Zen 4 (24 cycles a step), longer than a DRAM access. Fetched at the start instead, the
/// lines would be evicted by the B panel streaming through L1 before the sums are added in.
const PREFETCH_C_STEPS: usize = 48;

/// One cache line of f32, so packed panels start on a line and vector loads never straddle two.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    static PACKED_A: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    static PACKED_B: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    static SHARED: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// Runs `work` with this thread's buffer of at least `floats` values (contents unspecified).
/// The buffer is taken out of its slot for the call, so a product started on this thread while
/// `work` waits (Rayon runs stolen work there) finds the slot empty and uses its own.
fn with_buffer<R>(slot: &'static LocalKey<Cell<Vec<Line>>>, floats: usize, work: impl FnOnce(*mut f32) -> R) -> R {
    let mut buffer = slot.take();
    let lines = floats.div_ceil(16);
    if buffer.len() < lines {
        buffer = vec![Line([0.0; 16]); lines];
    }
    let out = work(buffer.as_mut_ptr().cast::<f32>());
    slot.set(buffer);
    out
}

/// Whether this CPU runs these kernels: AVX-512 F, and `RSTAR2_CPU_ISA` not narrower.
pub fn available() -> bool {
    crate::cpu::isa() == crate::cpu::Isa::Avx512
}

/// Raw operands shared by the parts of one product, which write disjoint blocks of `c`.
#[derive(Clone, Copy)]
struct Operands {
    c: *mut f32,
    c_rs: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
}
// SAFETY: the parts of one product read a and b and write disjoint blocks of c (see `sgemm`).
unsafe impl Send for Operands {}
// SAFETY: as above.
unsafe impl Sync for Operands {}

/// `c[m,n] (+)= A @ B` on up to `threads` threads (1: the calling thread alone), where element
/// (i, p) of A is `a[i * a_rs + p * a_cs]`, element (p, j) of B is `b[p * b_rs + j * b_cs]`, and
/// row i of `c` starts at `c[i * c_rs]`.
///
/// # Safety
/// [`available`] must be true; m, n and k must be positive (the caller handles empty products);
/// the strided operands must hold every element the shapes imply; `c` must not overlap `a` or
/// `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(threads: usize, c: *mut f32, c_rs: usize, a: *const f32, a_rs: usize, a_cs: usize, b: *const f32, b_rs: usize, b_cs: usize, m: usize, n: usize, k: usize, accumulate: bool) {
    debug_assert!(m > 0 && n > 0 && k > 0, "sgemm: empty product {m}x{n}x{k}");
    let ops = Operands { c, c_rs, a, a_rs, a_cs, b, b_rs, b_cs };
    let (tm, tn) = grid(threads, m, n, k);
    let (m_panels, n_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    if tm * tn == 1 {
        // SAFETY: the caller's guarantee.
        unsafe { sgemm_block(&ops, 0..m, 0..n, k, accumulate, None, None) };
        return;
    }
    // With the rows split, every part reads all of B, and with the columns split all of A:
    // that operand is packed once, whole, shared by the parts.
    let shared_lines = if tn == 1 {
        n_panels * NR
    } else if tm == 1 {
        m_panels * MR
    } else {
        0
    };
    let share = shared_lines > 0 && fits_shared(shared_lines, k);
    with_buffer(&SHARED, if share { shared_lines * k } else { 0 }, |buffer| {
        let shared = share.then(|| if tn == 1 { SharedPanels::new::<NR>(buffer, ops.b, ops.b_cs, ops.b_rs, n, k) } else { SharedPanels::new::<MR>(buffer, ops.a, ops.a_rs, ops.a_cs, m, k) });
        let (shared_a, shared_b) = if tn == 1 { (None, shared.as_ref()) } else { (shared.as_ref(), None) };
        let part = |part: usize| {
            let (pi, pj) = (part / tn, part % tn);
            let rows = (pi * m_panels / tm * MR).min(m)..((pi + 1) * m_panels / tm * MR).min(m);
            let cols = (pj * n_panels / tn * NR).min(n)..((pj + 1) * n_panels / tn * NR).min(n);
            if !rows.is_empty() && !cols.is_empty() {
                // SAFETY: the parts' blocks of c are disjoint; the caller's guarantee covers the
                // rest.
                unsafe { sgemm_block(&ops, rows, cols, k, accumulate, shared_a, shared_b) };
            }
        };
        (0..tm * tn).into_par_iter().for_each(part);
    });
}

/// Whether an operand of `lines` (padded to whole panels) by k is packed once for all parts:
/// up to 32 MiB; past it each part packs its own copy.
fn fits_shared(lines: usize, k: usize) -> bool {
    lines * k <= 8 << 20
}

/// How `threads` share the output: `(tm, tn)` with `tm * tn == threads`, ranges of A's row
/// panels by ranges of B's column panels. Chosen for the least time of the largest part: its
/// tiles' arithmetic plus its packing (about 40 flops' time per packed element; an operand every
/// part reads is packed once, a share by each), ties going to splitting rows.
fn grid(threads: usize, m: usize, n: usize, k: usize) -> (usize, usize) {
    const PACK_FLOPS_PER_ELEMENT: usize = 40;
    let (m_panels, n_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let (m_pad, n_pad) = (m_panels * MR, n_panels * NR);
    let mut best = (1, 1);
    let mut best_cost = usize::MAX;
    for tm in (1..=threads).rev() {
        if !threads.is_multiple_of(tm) {
            continue;
        }
        let tn = threads / tm;
        let (rows, cols) = (m_panels.div_ceil(tm) * MR, n_panels.div_ceil(tn) * NR);
        let share = |lines: usize| if fits_shared(lines, k) { lines / threads } else { lines };
        let packed = match (tm, tn) {
            (_, 1) => rows + share(n_pad),
            (1, _) => share(m_pad) + cols,
            _ => rows + cols,
        };
        let cost = 2 * rows * cols * k + PACK_FLOPS_PER_ELEMENT * packed * k;
        if cost < best_cost {
            best = (tm, tn);
            best_cost = cost;
        }
    }
    best
}

/// One operand (A's rows or B's columns: its "lines") packed whole for the parts of a product:
/// k-slab s (KC deep) holds every panel of W lines, panel q at `q * W * kc` within the slab.
/// Panels are packed in units of [`unit`] panels, each by the first part that needs it; a part
/// that needs a unit another part is packing waits for it (packing takes microseconds and
/// waits on nothing, so no part waits for long, and a part running alone packs everything).
struct SharedPanels {
    buffer: *mut f32,
    src: *const f32,
    line_stride: usize,
    step_stride: usize,
    lines: usize,
    k: usize,
    /// Per (slab, unit): UNPACKED, PACKING or READY.
    state: Box<[AtomicU8]>,
    units_per_slab: usize,
}
// SAFETY: parts write disjoint units of the buffer, each once, and read a unit only after its
// READY state is published with release ordering (see `slab`).
unsafe impl Sync for SharedPanels {}

const UNPACKED: u8 = 0;
const PACKING: u8 = 1;
const READY: u8 = 2;

/// Panels in one unit of shared packing: 64 lines of A (the copy path reads whole cache lines
/// of them), one panel of B.
const fn unit(w: usize) -> usize {
    if w >= 64 { 1 } else { 64 / w }
}

impl SharedPanels {
    /// `buffer` must hold `lines.next_multiple_of(W) * k` values; element (line l, step p) is
    /// `src[l * line_stride + p * step_stride]`.
    fn new<const W: usize>(buffer: *mut f32, src: *const f32, line_stride: usize, step_stride: usize, lines: usize, k: usize) -> Self {
        let units_per_slab = lines.div_ceil(W).div_ceil(unit(W));
        let state = (0..k.div_ceil(KC) * units_per_slab).map(|_| AtomicU8::new(UNPACKED)).collect();
        SharedPanels { buffer, src, line_stride, step_stride, lines, k, state, units_per_slab }
    }

    /// Panels `panels` of slab `s`, packed (by this part or another), as a pointer to the first;
    /// the rest follow at W * kc values each.
    ///
    /// # Safety
    /// W must be the width given to `new`; the operand must hold what `new` was told.
    #[target_feature(enable = "avx2,avx512f")]
    unsafe fn slab<const W: usize>(&self, s: usize, panels: Range<usize>) -> *const f32 {
        let p0 = s * KC;
        let kc = KC.min(self.k - p0);
        let panels_total = self.lines.div_ceil(W);
        // SAFETY: slab s starts after s full slabs of every panel (KC deep each).
        let slab = unsafe { self.buffer.add(p0 * panels_total * W) };
        let units = panels.start / unit(W)..panels.end.div_ceil(unit(W));
        for u in units.clone() {
            let state = &self.state[s * self.units_per_slab + u];
            if state.compare_exchange(UNPACKED, PACKING, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                let q0 = u * unit(W);
                let lines = (self.lines - q0 * W).min(unit(W) * W);
                // SAFETY: these lines and steps are inside the operand; the unit's panels are
                // inside the buffer and written by this part alone (it won the state).
                unsafe { pack::<W>(slab.add(q0 * W * kc), self.src.add(q0 * W * self.line_stride + p0 * self.step_stride), self.line_stride, self.step_stride, lines, kc) };
                state.store(READY, Ordering::Release);
            }
        }
        for u in units {
            // Spin briefly, then yield: on a machine with more runnable threads than cores the
            // packing part may be waiting for this core.
            let mut spins = 0u32;
            while self.state[s * self.units_per_slab + u].load(Ordering::Acquire) != READY {
                if spins < 1024 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        // SAFETY: inside the slab.
        unsafe { slab.add(panels.start * W * kc) }
    }
}

/// `c[rows, cols] (+)= A[rows, :] @ B[:, cols]` on this thread: the blocked product, packing
/// into this thread's buffers what is not in a shared operand.
///
/// # Safety
/// As for [`sgemm`], and no other thread writes this block of `c`; `rows` starts on a panel of
/// MR rows and `cols` on a panel of NR columns; the shared operands were made from `ops`.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_block(ops: &Operands, rows: Range<usize>, cols: Range<usize>, k: usize, accumulate: bool, shared_a: Option<&SharedPanels>, shared_b: Option<&SharedPanels>) {
    let a_floats = if shared_a.is_some() { 0 } else { MC.min(rows.len()).next_multiple_of(MR) * KC.min(k) };
    let b_floats = if shared_b.is_some() { 0 } else { KC * NC };
    with_buffer(&PACKED_A, a_floats, |packed_a| {
        with_buffer(&PACKED_B, b_floats, |packed_b| {
            for ic in rows.clone().step_by(MC) {
                let mc = MC.min(rows.end - ic);
                for (slab, pc) in (0..k).step_by(KC).enumerate() {
                    let kc = KC.min(k - pc);
                    let load_c = accumulate || pc > 0;
                    // SAFETY (both operands): rows ic..ic+mc, columns jc..jc+nc and steps
                    // pc..pc+kc are inside A and B; the local buffers hold MC x KC and KC x NC.
                    let a_panels = match shared_a {
                        Some(shared) => unsafe { shared.slab::<MR>(slab, ic / MR..(ic + mc).div_ceil(MR)) },
                        None => {
                            unsafe { pack::<MR>(packed_a, ops.a.add(ic * ops.a_rs + pc * ops.a_cs), ops.a_rs, ops.a_cs, mc, kc) };
                            packed_a.cast_const()
                        }
                    };
                    for jc in cols.clone().step_by(NC) {
                        let nc = NC.min(cols.end - jc);
                        let b_panels = match shared_b {
                            Some(shared) => unsafe { shared.slab::<NR>(slab, jc / NR..(jc + nc).div_ceil(NR)) },
                            None => {
                                unsafe { pack::<NR>(packed_b, ops.b.add(pc * ops.b_rs + jc * ops.b_cs), ops.b_cs, ops.b_rs, nc, kc) };
                                packed_b.cast_const()
                            }
                        };
                        for panel_i in 0..mc.div_ceil(MR) {
                            let i0 = ic + panel_i * MR;
                            let mr = MR.min(rows.end - i0);
                            for panel_j in 0..nc.div_ceil(NR) {
                                let j0 = jc + panel_j * NR;
                                // SAFETY: the tile (i0.., j0..) of mr x nr is inside this block
                                // of c; both panels hold kc steps.
                                unsafe { kernel(kc, a_panels.add(panel_i * MR * kc), b_panels.add(panel_j * NR * kc), ops.c.add(i0 * ops.c_rs + j0), ops.c_rs, mr, NR.min(cols.end - j0), load_c) };
                            }
                        }
                    }
                }
            }
        });
    });
}

/// Packs `lines` lines of an operand (rows of A, or columns of B) by `kc` steps along k into
/// panels of W lines: panel q holds kc steps of W values (lines q*W.., missing ones zero), at
/// `dst[q * W * kc]`. Element (line l, step p) is `src[l * line_stride + p * step_stride]`.
///
/// # Safety
/// The elements must be inside the operand; `dst` must hold `kc * lines.next_multiple_of(W)`
/// values and start on a cache line.
#[target_feature(enable = "avx2,avx512f")]
unsafe fn pack<const W: usize>(dst: *mut f32, src: *const f32, line_stride: usize, step_stride: usize, lines: usize, kc: usize) {
    const { assert!(W.is_multiple_of(16) || W == 8) };
    // SAFETY: the caller's guarantee covers every element read and written below.
    unsafe {
        let panels = lines.div_ceil(W);
        if step_stride == 1 {
            // Lines contiguous along k: each panel is a transpose.
            for q in 0..panels {
                let (panel_src, panel_dst) = (src.add(q * W * line_stride), dst.add(q * W * kc));
                let width = W.min(lines - q * W);
                if width == W {
                    transpose_panel::<W>(panel_dst, panel_src, line_stride, kc);
                } else {
                    gather_panel::<W>(panel_dst, panel_src, line_stride, 1, width, kc);
                }
            }
        } else if line_stride == 1 {
            // Steps contiguous along the lines: copies, in tiles of 8 steps by a group of
            // panels 256 values wide, so each tile reads whole cache lines of 8 source rows
            // (more would conflict in L1 where rows lie a power of two apart) and writes a run
            // of 8 steps to each panel.
            let group = (256 / W).max(1);
            for q0 in (0..panels).step_by(group) {
                for p0 in (0..kc).step_by(8) {
                    for q in q0..(q0 + group).min(panels) {
                        let width = W.min(lines - q * W);
                        for p in p0..(p0 + 8).min(kc) {
                            let (from, to) = (src.add(p * step_stride + q * W), dst.add(q * W * kc + p * W));
                            for v in (0..W).step_by(16) {
                                let valid = width.saturating_sub(v).min(16);
                                let x = _mm512_maskz_loadu_ps(((1u32 << valid) - 1) as u16, from.add(v));
                                if W - v >= 16 {
                                    _mm512_store_ps(to.add(v), x);
                                } else {
                                    _mm256_store_ps(to.add(v), _mm512_castps512_ps256(x));
                                }
                            }
                        }
                    }
                }
            }
        } else {
            for q in 0..panels {
                gather_panel::<W>(dst.add(q * W * kc), src.add(q * W * line_stride), line_stride, step_stride, W.min(lines - q * W), kc);
            }
        }
    }
}

/// `dst[p * W + r] = src[r * stride + p]` for r < W, p < kc: W rows that are contiguous along p,
/// turned into kc steps of W values with 8 x 8 register transposes.
///
/// # Safety
/// `src` must hold W rows of kc values `stride` apart; `dst` must hold `kc * W` values.
#[target_feature(enable = "avx2")]
unsafe fn transpose_panel<const W: usize>(dst: *mut f32, src: *const f32, stride: usize, kc: usize) {
    // SAFETY: the caller's guarantee covers every element read and written below.
    unsafe {
        let whole = kc / 8 * 8;
        for r in (0..W).step_by(8) {
            let rows = src.add(r * stride);
            let mut p = 0;
            while p < whole {
                let load = |i: usize| _mm256_loadu_ps(rows.add(i * stride + p));
                let t = transpose8([load(0), load(1), load(2), load(3), load(4), load(5), load(6), load(7)]);
                for (q, v) in t.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add((p + q) * W + r), v);
                }
                p += 8;
            }
            for p in whole..kc {
                for i in 0..8 {
                    *dst.add(p * W + r + i) = *rows.add(i * stride + p);
                }
            }
        }
    }
}

/// The 8 x 8 transpose of eight rows.
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// `dst[p * W + r] = src[r * r_stride + p * p_stride]` for r < rows (zero for rows..W), p < kc:
/// any layout, one element at a time.
///
/// # Safety
/// `src` must hold the elements; `dst` must hold `kc * W` values.
unsafe fn gather_panel<const W: usize>(dst: *mut f32, src: *const f32, r_stride: usize, p_stride: usize, rows: usize, kc: usize) {
    // SAFETY: the caller's guarantee covers every element read and written below.
    unsafe {
        for p in 0..kc {
            for r in 0..W {
                *dst.add(p * W + r) = if r < rows { *src.add(r * r_stride + p * p_stride) } else { 0.0 };
            }
        }
    }
}

/// The register tile: `c[0..mr, 0..nr] (+)= a_panel @ b_panel` over kc steps, where step p
/// reads MR values of A at `a[p * MR]` and NR of B at `b[p * NR]`; with `load_c` false, C is
/// overwritten. Narrow tiles (the last panel of an n that is no multiple of NR, such as a head
/// dimension of 64) take the variant with fewer vectors per row.
///
/// # Safety
/// The panels must hold kc steps and start on a cache line; the mr x nr tile must be inside C.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, c: *mut f32, c_rs: usize, mr: usize, nr: usize, load_c: bool) {
    // SAFETY: the caller's.
    unsafe {
        match nr.div_ceil(16) {
            1 => tile::<1>(kc, a, b, c, c_rs, mr, nr, load_c),
            2 => tile::<2>(kc, a, b, c, c_rs, mr, nr, load_c),
            _ => tile::<3>(kc, a, b, c, c_rs, mr, nr, load_c),
        }
    }
}

/// [`kernel`] with V vectors of 16 columns per row: MR x V accumulators in registers.
///
/// # Safety
/// As for [`kernel`], and nr <= 16 V.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const V: usize>(kc: usize, a: *const f32, b: *const f32, c: *mut f32, c_rs: usize, mr: usize, nr: usize, load_c: bool) {
    // SAFETY: the caller's guarantee covers every element read and written below.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let (mut a, mut b) = (a, b);
        for step in 0..kc {
            if step + PREFETCH_C_STEPS == kc || (step == 0 && kc < PREFETCH_C_STEPS) {
                for i in 0..mr {
                    for v in 0..V {
                        _mm_prefetch::<_MM_HINT_T0>(c.add(i * c_rs + v * 16).cast());
                    }
                    _mm_prefetch::<_MM_HINT_T0>(c.add(i * c_rs + nr - 1).cast());
                }
            }
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_load_ps(b.add(v * 16));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(i));
                for (sum, &x) in row.iter_mut().zip(&bv) {
                    *sum = _mm512_fmadd_ps(ai, x, *sum);
                }
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        if mr == MR && nr == 16 * V {
            for (i, row) in acc.iter().enumerate() {
                let c = c.add(i * c_rs);
                for (v, &sum) in row.iter().enumerate() {
                    let p = c.add(v * 16);
                    let sum = if load_c { _mm512_add_ps(_mm512_loadu_ps(p), sum) } else { sum };
                    _mm512_storeu_ps(p, sum);
                }
            }
        } else {
            for (i, row) in acc.iter().enumerate().take(mr) {
                let c = c.add(i * c_rs);
                for (v, &sum) in row.iter().enumerate() {
                    let left = nr.saturating_sub(v * 16).min(16);
                    let mask = ((1u32 << left) - 1) as u16;
                    let p = c.add(v * 16);
                    let sum = if load_c { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), sum) } else { sum };
                    _mm512_mask_storeu_ps(p, mask, sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain triple loop over the same strided operands.
    #[allow(clippy::too_many_arguments)]
    fn naive(c: &mut [f32], c_rs: usize, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, m: usize, n: usize, k: usize, accumulate: bool) {
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|p| f64::from(a[i * a_rs + p * a_cs]) * f64::from(b[p * b_rs + j * b_cs])).sum();
                let prev = if accumulate { f64::from(c[i * c_rs + j]) } else { 0.0 };
                c[i * c_rs + j] = (prev + s) as f32;
            }
        }
    }

    /// Every layout (A k- or m-contiguous or neither, B k- or n-contiguous or neither), tile,
    /// panel and block edges (m, n, k past MR, NR, KC, NC and MC and not multiples of them), a
    /// wider row stride for C, overwriting and accumulating, on one thread and on several.
    #[test]
    fn equals_a_naive_product_for_every_layout_and_edge() {
        if !available() {
            eprintln!("*** sgemm test NOT run: this CPU has no AVX-512 (the gemm crate serves it) ***");
            return;
        }
        let fill = |len: usize, s: f32| -> Vec<f32> { (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) * s).collect() };
        // The last two split B's columns (A shared between the parts, in one unit and in two)
        // where the others split A's rows (B shared) when two threads run them.
        let shapes = [(1, 1, 1), (8, 48, 8), (7, 47, 9), (9, 49, 385), (17, 5 * NR + 3, 2 * KC + 5), (MC + 9, 50, 40), (3, 300, 1000), (72, 1000, 30)];
        for (m, n, k) in shapes {
            // (a_rs, a_cs) and (b_rs, b_cs): k-contiguous, m/n-contiguous, neither (padded by 1).
            let a_layouts = [(k, 1), (1, m), (2, 2 * m + 1)];
            let b_layouts = [(1, k), (n, 1), (2 * n + 1, 2)];
            for &(a_rs, a_cs) in &a_layouts {
                for &(b_rs, b_cs) in &b_layouts {
                    let a = fill((m - 1) * a_rs + (k - 1) * a_cs + 1, 0.01);
                    let b = fill((k - 1) * b_rs + (n - 1) * b_cs + 1, 0.02);
                    let c_rs = n + 3;
                    for accumulate in [false, true] {
                        let start = fill(m * c_rs, 0.5);
                        let mut want = start.clone();
                        naive(&mut want, c_rs, &a, a_rs, a_cs, &b, b_rs, b_cs, m, n, k, accumulate);
                        let mut one_thread = Vec::new();
                        // 3 and 8 parts: prime and two-dimensional splits, as on larger machines
                        // (Rayon's pool here may have fewer threads: parts then run in turn).
                        for threads in [1, 2, 3, 8] {
                            let mut got = start.clone();
                            // SAFETY: the operands hold every element of these strides and shapes.
                            unsafe { sgemm(threads, got.as_mut_ptr(), c_rs, a.as_ptr(), a_rs, a_cs, b.as_ptr(), b_rs, b_cs, m, n, k, accumulate) };
                            for i in 0..m {
                                for j in 0..c_rs {
                                    let (g, w) = (got[i * c_rs + j], want[i * c_rs + j]);
                                    let ok = if j < n { (g - w).abs() <= 1e-4 * (1.0 + w.abs()) } else { g == start[i * c_rs + j] };
                                    assert!(ok, "{m}x{n}x{k} A({a_rs},{a_cs}) B({b_rs},{b_cs}) acc={accumulate} threads={threads}: c[{i},{j}] = {g}, want {w}");
                                }
                            }
                            // Each element is summed in the same order whatever the split.
                            if threads == 1 {
                                one_thread = got;
                            } else {
                                assert!(got.iter().zip(&one_thread).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{n}x{k}: {threads} threads differ from one");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Tall products split A's rows, wide ones B's columns.
    #[test]
    fn grid_splits_the_long_side() {
        assert_eq!(grid(2, 2048, 192, 576), (2, 1));
        assert_eq!(grid(2, 2048, 1536, 576), (2, 1));
        assert_eq!(grid(2, 1024, 1024, 1024), (2, 1));
        assert_eq!(grid(2, 256, 49152, 576), (1, 2));
        assert_eq!(grid(2, 8, 1536, 576), (1, 2));
        assert_eq!(grid(1, 2048, 2048, 2048), (1, 1));
        assert_eq!(grid(4, 4096, 96, 64), (4, 1));
        // The test above's shapes: which operand the parts share.
        assert_eq!(grid(2, MC + 9, 50, 40), (2, 1));
        assert_eq!(grid(2, 3, 300, 1000), (1, 2));
        assert_eq!(grid(2, 72, 1000, 30), (1, 2));
    }
}
