//! Linear layer `out = x W^T + b`, through the `gemm` crate.

use gemm::{Parallelism, gemm};

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

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
    // SAFETY: the asserts above keep every strided access inside the slices.
    unsafe {
        gemm(
            m, n, k,
            c.as_mut_ptr(), 1, n as isize,
            accumulate,
            a.as_ptr(), a_cs as isize, a_rs as isize,
            b.as_ptr(), b_cs as isize, b_rs as isize,
            1.0, 1.0, false, false, false,
            parallelism(),
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
