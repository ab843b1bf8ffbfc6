//! RMSNorm: `out = x / sqrt(mean(x^2) + eps) * w`, per row (HF computes in f32 too).

use rayon::prelude::*;

/// out[N,D], rstd[N] (saved for backward) from x[N,D], w[D].
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], d: usize, eps: f32) {
    out.par_chunks_exact_mut(d).zip(rstd.par_iter_mut()).zip(x.par_chunks_exact(d)).for_each(|((o, r), x)| {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let s = 1.0 / (ms + eps).sqrt();
        *r = s;
        for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
            *o = x * s * w;
        }
    });
}

/// dx[N,D] (overwrite), dw[D] (accumulate) from dout[N,D], x, w, rstd.
pub fn rmsnorm_backward(dx: &mut [f32], dw: &mut [f32], dout: &[f32], x: &[f32], w: &[f32], rstd: &[f32], d: usize) {
    dx.par_chunks_exact_mut(d).zip(dout.par_chunks_exact(d)).zip(x.par_chunks_exact(d)).zip(rstd.par_iter()).for_each(|(((dx, dout), x), &s)| {
        // y = x s w; dL/dx = s (g - x s^2 mean(g x)), with g = dout * w.
        let dot = dout.iter().zip(x).zip(w).map(|((g, x), w)| g * w * x).sum::<f32>() / d as f32;
        for (((dx, g), x), w) in dx.iter_mut().zip(dout).zip(x).zip(w) {
            *dx = s * (g * w - x * s * s * dot);
        }
    });
    // Parameter gradient: a reduction over rows, done per column block in parallel.
    let rows = x.len() / d;
    dw.par_iter_mut().enumerate().for_each(|(j, dwj)| {
        let mut acc = 0.0f32;
        for r in 0..rows {
            acc += dout[r * d + j] * x[r * d + j] * rstd[r];
        }
        *dwj += acc;
    });
}
