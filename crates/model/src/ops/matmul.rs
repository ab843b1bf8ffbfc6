//! Linear layer `out = x W^T + b`, through the `gemm` crate.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// `c[m,n] (+)= A @ B` where element (i, p) of A is `a[i * a_rs + p * a_cs]` and element
/// (p, j) of B is `b[p * b_rs + j * b_cs]`: transposes are just strides. `c` is row-major.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(c: &mut [f32], a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, m: usize, n: usize, k: usize, accumulate: bool) {
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
    if threads < 2 || m * n * k < 1 << 18 {
        // SAFETY: the asserts above keep every strided access inside the slices.
        unsafe { gemm_raw(c.as_mut_ptr(), n, a.as_ptr(), a_rs, a_cs, b.as_ptr(), b_rs, b_cs, m, n, k, accumulate) };
        return;
    }
    // Split the output between threads ourselves, each part single-threaded: on this project's
    // 2-vCPU machines gemm's own Rayon split scaled 1.3x, whole-block splits scale better.
    if m >= threads * 16 {
        let rows = m.div_ceil(threads);
        c[..m * n].par_chunks_mut(rows * n).enumerate().for_each(|(i, chunk)| {
            let r0 = i * rows;
            let mr = chunk.len() / n;
            // SAFETY: rows r0..r0+mr of A and of C are inside the checked ranges.
            unsafe { gemm_raw(chunk.as_mut_ptr(), n, a.as_ptr().add(r0 * a_rs), a_rs, a_cs, b.as_ptr(), b_rs, b_cs, mr, n, k, accumulate) };
        });
    } else {
        let cols = n.div_ceil(threads);
        let base = SendPtr(c.as_mut_ptr());
        (0..threads).into_par_iter().for_each(|i| {
            let j0 = i * cols;
            if j0 >= n {
                return;
            }
            let nc = cols.min(n - j0);
            let base = &base;
            // SAFETY: each task writes only columns j0..j0+nc of C; B columns are in range.
            unsafe { gemm_raw(base.0.add(j0), n, a.as_ptr(), a_rs, a_cs, b.as_ptr().add(j0 * b_cs), b_rs, b_cs, m, nc, k, accumulate) };
        });
    }
}

/// A pointer shared by tasks that write disjoint parts of one buffer.
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes, see `gemm_strided`.
unsafe impl Sync for SendPtr {}

/// Single-threaded gemm on raw strided operands; `c` has row stride `c_rs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(c: *mut f32, c_rs: usize, a: *const f32, a_rs: usize, a_cs: usize, b: *const f32, b_rs: usize, b_cs: usize, m: usize, n: usize, k: usize, accumulate: bool) {
    // SAFETY: the caller guarantees the strided ranges are valid.
    unsafe {
        gemm(
            m, n, k,
            c, 1, c_rs as isize,
            accumulate,
            a, a_cs as isize, a_rs as isize,
            b, b_cs as isize, b_rs as isize,
            1.0, 1.0, false, false, false,
            Parallelism::None,
        );
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
    matmul_nt(out, x, w, n, o, i, false);
    if let Some(b) = b {
        for row in out[..n * o].chunks_exact_mut(o) {
            for (y, bias) in row.iter_mut().zip(b) {
                *y += bias;
            }
        }
    }
}

/// dx[N,I] = dout @ w (overwrite); dw[O,I] += dout^T @ x; db[O] += sum_n dout.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    i: usize,
    o: usize,
) {
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

    /// The per-thread split (rows for tall outputs, columns for skinny ones) against a plain
    /// triple loop, for all three layouts, overwriting and accumulating.
    #[test]
    fn threaded_splits_match_a_naive_product() {
        let fill = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * s).collect() };
        // m*n*k above the threading threshold: 70x50x300 splits rows, 8x200x300 splits columns.
        for (m, n, k) in [(70usize, 50usize, 300usize), (8, 200, 300), (3, 5, 7)] {
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
            // a [m,k] @ b given as [n,k]
            let want = reference(&|i, p| a[i * k + p], &|p, j| b[j * k + p]);
            let mut c = vec![1.0f32; m * n];
            matmul_nt(&mut c, &a, &b, m, n, k, false);
            assert!(close(&c, &want), "nt {m}x{n}x{k}");
            matmul_nt(&mut c, &a, &b, m, n, k, true);
            assert!(close(&c, &want.iter().map(|x| 2.0 * x).collect::<Vec<_>>()), "nt accumulate {m}x{n}x{k}");
            // a [m,k] @ b [k,n]
            let want = reference(&|i, p| a[i * k + p], &|p, j| b[p * n + j]);
            matmul_nn(&mut c, &a, &b, m, n, k, false);
            assert!(close(&c, &want), "nn {m}x{n}x{k}");
            // a given as [k,m], transposed, @ b [k,n]
            let want = reference(&|i, p| a[p * m + i], &|p, j| b[p * n + j]);
            matmul_tn(&mut c, &a, &b, m, n, k, false);
            assert!(close(&c, &want), "tn {m}x{n}x{k}");
        }
    }
}
