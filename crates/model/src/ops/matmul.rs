//! Linear layer `out = x W^T + b`, through the `gemm` crate.

use gemm::{Parallelism, gemm};

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `c[m,n] = beta * c + a[m,k] @ b` where `b` is given as `[n,k]` row-major (i.e. `a @ b^T`).
/// `accumulate` keeps the old `c` (beta = 1), else overwrites.
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, accumulate: bool) {
    debug_assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= n * k);
    // SAFETY: shapes and strides describe the slices checked above; gemm reads `a`, `b` and
    // writes `c` within them.
    unsafe {
        gemm(
            m, n, k,
            c.as_mut_ptr(), 1, n as isize,
            accumulate,
            a.as_ptr(), 1, k as isize,
            b.as_ptr(), k as isize, 1,
            1.0, 1.0, false, false, false,
            parallelism(),
        );
    }
}

/// `c[m,n] (+)= a[m,k] @ b[k,n]`, all row-major.
pub fn matmul_nn(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, accumulate: bool) {
    debug_assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    // SAFETY: as above.
    unsafe {
        gemm(
            m, n, k,
            c.as_mut_ptr(), 1, n as isize,
            accumulate,
            a.as_ptr(), 1, k as isize,
            b.as_ptr(), 1, n as isize,
            1.0, 1.0, false, false, false,
            parallelism(),
        );
    }
}

/// `c[m,n] (+)= a^T @ b` where `a` is `[k,m]` and `b` is `[k,n]`, row-major.
pub fn matmul_tn(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, accumulate: bool) {
    debug_assert!(c.len() >= m * n && a.len() >= k * m && b.len() >= k * n);
    // SAFETY: as above.
    unsafe {
        gemm(
            m, n, k,
            c.as_mut_ptr(), 1, n as isize,
            accumulate,
            a.as_ptr(), m as isize, 1,
            b.as_ptr(), 1, n as isize,
            1.0, 1.0, false, false, false,
            parallelism(),
        );
    }
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
