//! Linear layer `out = x W^T + b`. Products with many rows take this crate's AVX-512 kernel
//! (`sgemm`: packed operands, an 8 x 48 register tile) where the CPU has AVX-512, else the `gemm`
//! crate's AVX2 kernels with a measured thread split; decoding takes the small-m kernel of
//! [`super::gemv`] (weights repacked once, f32 or half precision).

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::gemv::{PackedWeight, matmul_packed};

/// Rows up to which cached inference takes the packed small-m kernel; from here on the product
/// is compute-bound and gemm (on the f32 weights) is as fast or faster.
pub const SMALL_M: usize = 64;

/// `c[m,n] (+)= A @ B` where element (i, p) of A is `a[i * a_rs + p * a_cs]` and element
/// (p, j) of B is `b[p * b_rs + j * b_cs]`: transposes are just strides. `c` is row-major.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(c: &mut [f32], a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, m: usize, n: usize, k: usize, accumulate: bool) {
    gemm_strided_with(true, c, a, a_rs, a_cs, b, b_rs, b_cs, m, n, k, accumulate);
}

/// [`gemm_strided`] on the calling thread alone: for products that are themselves items of a
/// parallel loop (attention's per-head products).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided_serial(c: &mut [f32], a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, m: usize, n: usize, k: usize, accumulate: bool) {
    gemm_strided_with(false, c, a, a_rs, a_cs, b, b_rs, b_cs, m, n, k, accumulate);
}

#[allow(clippy::too_many_arguments)]
fn gemm_strided_with(parallel: bool, c: &mut [f32], a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, m: usize, n: usize, k: usize, accumulate: bool) {
    assert!(c.len() >= m * n, "matmul: output has {} elements, needs {m}x{n}", c.len());
    if m == 0 || n == 0 || k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs, "matmul: lhs too small for {m}x{k}");
    assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs, "matmul: rhs too small for {k}x{n}");
    let threads = rayon::current_num_threads();
    // Small products run on the calling thread (so do products inside a parallel loop).
    let serial = !parallel || threads < 2 || m * n * k < 1 << 18;
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() {
        // SAFETY: AVX-512 is available; the asserts above keep every strided access inside the
        // slices; `c` is a distinct mutable slice.
        unsafe { super::sgemm::sgemm(if serial { 1 } else { threads }, c.as_mut_ptr(), n, a.as_ptr(), a_rs, a_cs, b.as_ptr(), b_rs, b_cs, m, n, k, accumulate) };
        return;
    }
    if serial {
        // SAFETY: the asserts above keep every strided access inside the slices.
        unsafe { gemm_raw(c.as_mut_ptr(), n, a.as_ptr(), a_rs, a_cs, b.as_ptr(), b_rs, b_cs, m, n, k, accumulate, Parallelism::None) };
        return;
    }
    let key = TuneKey { layout: (a_rs == 1, b_rs == 1), m: m.ilog2() as u8, n: n.ilog2() as u8, k: k.ilog2() as u8 };
    let split = SPLITS.choose(key);
    let start = std::time::Instant::now();
    // SAFETY: the asserts above keep every strided access inside the slices.
    unsafe { gemm_split(split, threads, c, a, a_rs, a_cs, b, b_rs, b_cs, m, n, k, accumulate) };
    SPLITS.record(key, split, start.elapsed().as_secs_f64() / (m * n * k) as f64);
}

/// The product on `threads` threads shared as `split` says.
///
/// # Safety
/// The strided operands must hold every element the shapes imply (see `gemm_strided`).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_split(split: Split, threads: usize, c: &mut [f32], a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, m: usize, n: usize, k: usize, accumulate: bool) {
    match split {
        Split::Gemm => {
            // SAFETY: the caller's guarantee.
            unsafe { gemm_raw(c.as_mut_ptr(), n, a.as_ptr(), a_rs, a_cs, b.as_ptr(), b_rs, b_cs, m, n, k, accumulate, Parallelism::Rayon(threads)) };
        }
        Split::Rows => {
            let rows = m.div_ceil(threads);
            c[..m * n].par_chunks_mut(rows * n).enumerate().for_each(|(i, chunk)| {
                let r0 = i * rows;
                let mr = chunk.len() / n;
                // SAFETY: rows r0..r0+mr of A and of C are inside the caller's ranges.
                unsafe { gemm_raw(chunk.as_mut_ptr(), n, a.as_ptr().add(r0 * a_rs), a_rs, a_cs, b.as_ptr(), b_rs, b_cs, mr, n, k, accumulate, Parallelism::None) };
            });
        }
        Split::Cols => {
            // Column blocks a multiple of 16 wide, so no thread gets a ragged microkernel edge.
            let cols = n.div_ceil(threads).next_multiple_of(16);
            let base = SendPtr(c.as_mut_ptr());
            (0..threads).into_par_iter().for_each(|i| {
                let j0 = i * cols;
                if j0 >= n {
                    return;
                }
                let nc = cols.min(n - j0);
                let base = &base;
                // SAFETY: each task writes only columns j0..j0+nc of C; B columns are in range.
                unsafe { gemm_raw(base.0.add(j0), n, a.as_ptr(), a_rs, a_cs, b.as_ptr().add(j0 * b_cs), b_rs, b_cs, m, nc, k, accumulate, Parallelism::None) };
            });
        }
    }
}

/// How a product on the `gemm` crate (CPUs without AVX-512) is shared between threads: gemm's
/// own Rayon split (one packing of the operands, finer tasks), or one block of output rows or
/// columns per thread (no synchronization inside). Which is faster depends on the CPU and the
/// shape, so it is measured, not assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `gemm`'s `Parallelism::Rayon`.
    Gemm,
    /// One block of output rows per thread.
    Rows,
    /// One block of output columns per thread.
    Cols,
}

impl Split {
    const ALL: [Split; 3] = [Split::Gemm, Split::Rows, Split::Cols];
}

/// Shapes that share a split: the operand layout and each dimension's power of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TuneKey {
    layout: (bool, bool),
    m: u8,
    n: u8,
    k: u8,
}

/// Trials per split before one is chosen for a shape class.
const TRIALS: usize = 3;

/// The split autotuner: the first calls of each shape class go round the splits (each computing
/// the real product, so tuning costs nothing but the slower splits' extra time), timing each;
/// after [`TRIALS`] rounds the fastest (least time per flop, best of its trials) is kept.
struct SplitTuner {
    classes: std::sync::Mutex<std::collections::HashMap<TuneKey, Trials>>,
}

/// Per split its trial times (seconds per flop), and the choice once made.
type Trials = ([Vec<f64>; 3], Option<Split>);

static SPLITS: std::sync::LazyLock<SplitTuner> = std::sync::LazyLock::new(|| SplitTuner { classes: Default::default() });

impl SplitTuner {
    fn choose(&self, key: TuneKey) -> Split {
        if let Some(forced) = forced_split() {
            return forced;
        }
        let classes = self.classes.lock().expect("split tuner");
        match classes.get(&key) {
            Some((_, Some(chosen))) => *chosen,
            Some((trials, None)) => *Split::ALL.iter().min_by_key(|s| trials[**s as usize].len()).expect("three splits"),
            None => Split::Gemm,
        }
    }

    fn record(&self, key: TuneKey, split: Split, secs_per_flop: f64) {
        let mut classes = self.classes.lock().expect("split tuner");
        let (trials, chosen) = classes.entry(key).or_default();
        if chosen.is_some() {
            return;
        }
        // Best of each split's trials: interference from other work only ever slows a trial.
        trials[split as usize].push(secs_per_flop);
        if trials.iter().all(|t| t.len() >= TRIALS) {
            let best = |s: &Split| trials[*s as usize].iter().copied().fold(f64::INFINITY, f64::min);
            *chosen = Split::ALL.iter().copied().min_by(|a, b| best(a).total_cmp(&best(b)));
        }
    }
}

/// `RSTAR2_MATMUL_SPLIT=gemm|rows|cols` fixes the split (benchmarks compare them this way).
fn forced_split() -> Option<Split> {
    static FORCED: std::sync::OnceLock<Option<Split>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var("RSTAR2_MATMUL_SPLIT").as_deref() {
        Ok("gemm") => Some(Split::Gemm),
        Ok("rows") => Some(Split::Rows),
        Ok("cols") => Some(Split::Cols),
        _ => None,
    })
}

/// Which kernel runs the f32 products on this CPU, for reports.
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() {
        return "rstar2 AVX-512 kernel (8 x 48 tile, packed operands)";
    }
    "gemm crate (thread split measured per shape class)"
}

/// The splits the tuner has settled on so far: (m, n, k as powers of two, split), for reports.
pub fn chosen_splits() -> Vec<((u32, u32, u32), Split)> {
    let classes = SPLITS.classes.lock().expect("split tuner");
    let mut out: Vec<_> = classes.iter().filter_map(|(k, (_, c))| c.map(|c| ((u32::from(k.m), u32::from(k.n), u32::from(k.k)), c))).collect();
    out.sort_by_key(|x| x.0);
    out
}

/// A pointer shared by tasks that write disjoint parts of one buffer.
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes, see `gemm_strided`.
unsafe impl Sync for SendPtr {}

/// Single-threaded gemm on raw strided operands; `c` has row stride `c_rs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    c: *mut f32,
    c_rs: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    parallelism: Parallelism,
) {
    // SAFETY: the caller guarantees the strided ranges are valid.
    unsafe {
        gemm(m, n, k, c, 1, c_rs as isize, accumulate, a, a_cs as isize, a_rs as isize, b, b_cs as isize, b_rs as isize, 1.0, 1.0, false, false, false, parallelism);
    }
}

/// `c[m,n] (+)= a[m,k] @ b^T` with `b` given as `[n,k]` row-major.
pub fn matmul_nt(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, accumulate: bool) {
    gemm_strided(c, a, k, 1, b, 1, k, m, n, k, accumulate);
}

/// `c[m,n] (+)= a[m,k] @ b[k,n]`, all row-major.
pub fn matmul_nn(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, accumulate: bool) {
    gemm_strided(c, a, k, 1, b, n, 1, m, n, k, accumulate);
}

/// `c[m,n] (+)= a^T @ b` where `a` is `[k,m]` and `b` is `[k,n]`, row-major.
pub fn matmul_tn(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, accumulate: bool) {
    gemm_strided(c, a, 1, m, b, n, 1, m, n, k, accumulate);
}

/// out[N,O] = x[N,I] @ w[O,I]^T + b[O]
pub fn linear_forward(out: &mut [f32], x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize, i: usize, o: usize) {
    linear_forward_packed(out, x, w, None, b, n, i, o);
}

/// [`linear_forward`] where a packed copy of `w` (f32 or f16) is read instead when N is small
/// (decoding), where reading the weight is the cost. Larger N are compute-bound and use gemm on
/// the f32 weight.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_packed(out: &mut [f32], x: &[f32], w: &[f32], packed: Option<&PackedWeight>, b: Option<&[f32]>, n: usize, i: usize, o: usize) {
    match packed {
        Some(p) if n <= SMALL_M => {
            assert_eq!((p.n(), p.k()), (o, i), "linear: packed weight is {}x{}, layer is {o}x{i}", p.n(), p.k());
            matmul_packed(out, x, p, n);
        }
        _ => matmul_nt(out, x, w, n, o, i, false),
    }
    if let Some(b) = b {
        for row in out[..n * o].chunks_exact_mut(o) {
            for (y, bias) in row.iter_mut().zip(b) {
                *y += bias;
            }
        }
    }
}

/// Linear layers that read the same input (a layer's q, k and v; its gate and up):
/// `outs[j][N, O_j] = x[N,I] @ ws[j][O_j,I]^T + bs[j]`. With N small and `packed` holding the
/// weights stacked as one (rows of `ws[0]`, then `ws[1]`, ...), one product into `scratch` and a
/// copy out per layer; otherwise [`linear_forward`] each.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_stacked(outs: &mut [&mut [f32]], x: &[f32], ws: &[&[f32]], packed: Option<&PackedWeight>, bs: &[Option<&[f32]>], n: usize, i: usize, scratch: &mut Vec<f32>) {
    let widths: Vec<usize> = ws.iter().map(|w| w.len() / i).collect();
    let total: usize = widths.iter().sum();
    match packed {
        Some(p) if n <= SMALL_M => {
            assert_eq!((p.n(), p.k()), (total, i), "linear: packed weight is {}x{}, layers are {total}x{i}", p.n(), p.k());
            scratch.resize(n * total, 0.0);
            matmul_packed(scratch, x, p, n);
            let mut col = 0;
            for ((out, &o), b) in outs.iter_mut().zip(&widths).zip(bs) {
                for (dst, src) in out[..n * o].chunks_exact_mut(o).zip(scratch.chunks_exact(total)) {
                    let src = &src[col..col + o];
                    match b {
                        Some(b) => dst.iter_mut().zip(src).zip(b.iter()).for_each(|((y, s), b)| *y = s + b),
                        None => dst.copy_from_slice(src),
                    }
                }
                col += o;
            }
        }
        _ => {
            for ((out, w), (&o, b)) in outs.iter_mut().zip(ws).zip(widths.iter().zip(bs)) {
                linear_forward(out, x, w, *b, n, i, o);
            }
        }
    }
}

/// dx[N,I] = dout @ w (overwrite); dw[O,I] += dout^T @ x; db[O] += sum_n dout.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(dx: Option<&mut [f32]>, dw: &mut [f32], db: Option<&mut [f32]>, dout: &[f32], x: &[f32], w: &[f32], n: usize, i: usize, o: usize) {
    if let Some(dx) = dx {
        matmul_nn(dx, dout, w, n, i, o, false);
    }
    matmul_tn(dw, dout, x, o, i, n, true);
    if let Some(db) = db {
        for row in dout[..n * o].chunks_exact(o) {
            for (g, d) in db.iter_mut().zip(row) {
                *g += d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every thread split (gemm's, rows per thread, columns per thread) and the tuned entry
    /// points against a plain triple loop, for all three layouts, overwriting and accumulating.
    #[test]
    fn every_split_matches_a_naive_product() {
        let fill = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * s).collect() };
        // Above the threading threshold: tall, skinny and ragged shapes; and one below it.
        for (m, n, k) in [(70usize, 50usize, 300usize), (8, 200, 300), (33, 131, 97), (3, 5, 7)] {
            let a = fill(m * k, 0.01);
            let b = fill(k * n, 0.02);
            let reference = |at: &dyn Fn(usize, usize) -> f32, bt: &dyn Fn(usize, usize) -> f32| -> Vec<f32> {
                let mut c = vec![0.0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        c[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
                    }
                }
                c
            };
            let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(a, b)| (a - b).abs() <= 1e-3 * (1.0 + b.abs()));
            let twice = |v: &[f32]| v.iter().map(|x| 2.0 * x).collect::<Vec<_>>();
            // (strides of A, strides of B, reference): a [m,k] @ b given as [n,k]; a [m,k] @ b
            // [k,n]; a given as [k,m], transposed, @ b [k,n].
            type Layout = ((usize, usize), (usize, usize), Vec<f32>);
            let layouts: [Layout; 3] = [
                ((k, 1), (1, k), reference(&|i, p| a[i * k + p], &|p, j| b[j * k + p])),
                ((k, 1), (n, 1), reference(&|i, p| a[i * k + p], &|p, j| b[p * n + j])),
                ((1, m), (n, 1), reference(&|i, p| a[p * m + i], &|p, j| b[p * n + j])),
            ];
            for ((a_rs, a_cs), (b_rs, b_cs), want) in &layouts {
                for split in Split::ALL {
                    let mut c = vec![1.0f32; m * n];
                    // SAFETY: a and b hold m*k and k*n elements in these layouts.
                    unsafe { gemm_split(split, 2, &mut c, &a, *a_rs, *a_cs, &b, *b_rs, *b_cs, m, n, k, false) };
                    assert!(close(&c, want), "{split:?} {m}x{n}x{k} strides {a_rs},{a_cs} {b_rs},{b_cs}");
                    // SAFETY: as above.
                    unsafe { gemm_split(split, 2, &mut c, &a, *a_rs, *a_cs, &b, *b_rs, *b_cs, m, n, k, true) };
                    assert!(close(&c, &twice(want)), "{split:?} accumulate {m}x{n}x{k}");
                }
            }
            // The entry points, several times so the tuner runs its trials and then its choice.
            for _ in 0..3 * TRIALS + 1 {
                let mut c = vec![1.0f32; m * n];
                matmul_nt(&mut c, &a, &b, m, n, k, false);
                assert!(close(&c, &layouts[0].2), "nt {m}x{n}x{k}");
                matmul_nt(&mut c, &a, &b, m, n, k, true);
                assert!(close(&c, &twice(&layouts[0].2)), "nt accumulate {m}x{n}x{k}");
                matmul_nn(&mut c, &a, &b, m, n, k, false);
                assert!(close(&c, &layouts[1].2), "nn {m}x{n}x{k}");
                matmul_tn(&mut c, &a, &b, m, n, k, false);
                assert!(close(&c, &layouts[2].2), "tn {m}x{n}x{k}");
            }
        }
    }
}
