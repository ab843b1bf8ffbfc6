//! Causal self-attention with grouped-query heads.
//!
//! Training runs over packed sequences: rows of q/k/v are tokens of several sequences back to
//! back, and token i attends to tokens `seg_start[i] ..= i` of its own sequence (the packing
//! mask). Forward saves only the log-sum-exp per (token, head); backward recomputes the
//! probabilities. Decoding attends one new query per sequence to that sequence's KV cache.

use rayon::prelude::*;

use super::matmul::gemm_strided;

/// Head layout.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub q: usize,
    /// Key/value heads (divides `q`).
    pub kv: usize,
    /// Width of one head.
    pub dim: usize,
}

impl Heads {
    fn group(&self) -> usize {
        self.q / self.kv
    }
    fn scale(&self) -> f32 {
        1.0 / (self.dim as f32).sqrt()
    }
}

/// Dot product with eight independent partial sums, so it vectorizes (a single running f32 sum
/// is one long dependency chain the compiler may not reorder).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One query head against keys/values rows `keys[j]`, `values[j]` (each `[kv, dim]` row-major
/// per token, `n` tokens); writes `out` (`dim`) and returns the log-sum-exp of the scaled scores.
fn attend(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], n: usize, kvh: usize, heads: Heads, scores: &mut Vec<f32>) -> f32 {
    let (d, row) = (heads.dim, heads.kv * heads.dim);
    let scale = heads.scale();
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for j in 0..n {
        let s = scale * dot(q, &k[j * row + kvh * d..j * row + kvh * d + d]);
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (j, p) in scores.iter().enumerate() {
        let w = p / sum;
        for (o, x) in out.iter_mut().zip(&v[j * row + kvh * d..j * row + kvh * d + d]) {
            *o += w * x;
        }
    }
    max + sum.ln()
}

/// The (first row, length) of each packed sequence.
fn segments(seg_start: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < seg_start.len() {
        let start = seg_start[i];
        let mut end = i;
        while end < seg_start.len() && seg_start[end] == start {
            end += 1;
        }
        out.push((start, end - start));
        i = end;
    }
    out
}

/// out[N, Hq*dim], lse[N, Hq] from q[N, Hq*dim], k[N, Hkv*dim], v[N, Hkv*dim]; `seg_start[i]`
/// is the first row of token i's sequence. Per (sequence, head) with gemm: S = Q K^T, causal
/// softmax, O = P V.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], v: &[f32], seg_start: &[usize], heads: Heads) {
    let (d, qrow, kvrow, g) = (heads.dim, heads.q * heads.dim, heads.kv * heads.dim, heads.group());
    let scale = heads.scale();
    let items: Vec<(usize, usize, usize)> = segments(seg_start).into_iter().flat_map(|(s, len)| (0..heads.q).map(move |h| (s, len, h))).collect();
    let partials: Vec<(Vec<f32>, Vec<f32>)> = items
        .par_iter()
        .map(|&(s, len, h)| {
            let kvh = h / g;
            let (qo, ko) = (s * qrow + h * d, s * kvrow + kvh * d);
            let mut p = vec![0.0f32; len * len];
            gemm_strided(&mut p, &q[qo..], qrow, 1, &k[ko..], 1, kvrow, len, len, d, false);
            let mut lse_l = vec![0.0f32; len];
            for i in 0..len {
                let row = &mut p[i * len..(i + 1) * len];
                let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(scale * x));
                let mut sum = 0.0f32;
                for x in row[..=i].iter_mut() {
                    *x = (scale * *x - max).exp();
                    sum += *x;
                }
                for x in row[..=i].iter_mut() {
                    *x /= sum;
                }
                row[i + 1..].fill(0.0);
                lse_l[i] = max + sum.ln();
            }
            let mut o = vec![0.0f32; len * d];
            gemm_strided(&mut o, &p, len, 1, &v[ko..], kvrow, 1, len, d, len, false);
            (o, lse_l)
        })
        .collect();
    for (&(s, len, h), (o, lse_l)) in items.iter().zip(&partials) {
        for i in 0..len {
            let row = s + i;
            out[row * qrow + h * d..row * qrow + (h + 1) * d].copy_from_slice(&o[i * d..(i + 1) * d]);
            lse[row * heads.q + h] = lse_l[i];
        }
    }
}

/// dq, dk, dv (overwrite) from dout and the forward's inputs, output and lse.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    seg_start: &[usize],
    heads: Heads,
) {
    let (d, qrow, kvrow, g) = (heads.dim, heads.q * heads.dim, heads.kv * heads.dim, heads.group());
    let scale = heads.scale();
    let n_tok = seg_start.len();
    // D[i,h] = dout[i,h] . out[i,h]
    let delta: Vec<f32> = (0..n_tok * heads.q)
        .into_par_iter()
        .map(|ih| dot(&dout[ih * d..(ih + 1) * d], &out[ih * d..(ih + 1) * d]))
        .collect();
    // One pass per (sequence, query head): probabilities are recomputed once from the saved
    // log-sum-exp, and each item accumulates its own dq, dk, dv rows; results are scattered after.
    let segments = segments(seg_start);
    let items: Vec<(usize, usize, usize)> = segments.iter().flat_map(|&(s, len)| (0..heads.q).map(move |h| (s, len, h))).collect();
    let partials: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = items
        .par_iter()
        .map(|&(s, len, h)| {
            // Per (sequence, head) with gemm: S = Q K^T, P = exp(scale S - lse) (causal),
            // dP = dO V^T, dS = P (dP - D), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO.
            let kvh = h / g;
            let (qo, ko) = (s * qrow + h * d, s * kvrow + kvh * d);
            let mut p = vec![0.0f32; len * len];
            let mut dp = vec![0.0f32; len * len];
            gemm_strided(&mut p, &q[qo..], qrow, 1, &k[ko..], 1, kvrow, len, len, d, false);
            gemm_strided(&mut dp, &dout[qo..], qrow, 1, &v[ko..], 1, kvrow, len, len, d, false);
            for i in 0..len {
                let row = s + i;
                let (di, lse_i) = (delta[row * heads.q + h], lse[row * heads.q + h]);
                for j in 0..len {
                    let idx = i * len + j;
                    if j <= i {
                        let pij = (scale * p[idx] - lse_i).exp();
                        p[idx] = pij;
                        dp[idx] = scale * pij * (dp[idx] - di);
                    } else {
                        p[idx] = 0.0;
                        dp[idx] = 0.0;
                    }
                }
            }
            // dp now holds scale * dS.
            let (mut dq_l, mut dk_l, mut dv_l) = (vec![0.0f32; len * d], vec![0.0f32; len * d], vec![0.0f32; len * d]);
            gemm_strided(&mut dq_l, &dp, len, 1, &k[ko..], kvrow, 1, len, d, len, false);
            gemm_strided(&mut dk_l, &dp, 1, len, &q[qo..], qrow, 1, len, d, len, false);
            gemm_strided(&mut dv_l, &p, 1, len, &dout[qo..], qrow, 1, len, d, len, false);
            (dq_l, dk_l, dv_l)
        })
        .collect();
    dk.fill(0.0);
    dv.fill(0.0);
    for (&(s, len, h), (dq_l, dk_l, dv_l)) in items.iter().zip(&partials) {
        let kvh = h / g;
        for i in 0..len {
            let row = s + i;
            dq[row * qrow + h * d..row * qrow + (h + 1) * d].copy_from_slice(&dq_l[i * d..(i + 1) * d]);
            for t in 0..d {
                dk[row * kvrow + kvh * d + t] += dk_l[i * d + t];
                dv[row * kvrow + kvh * d + t] += dv_l[i * d + t];
            }
        }
    }
}

/// Decoding: for each sequence b, query row q[b] (`Hq*dim`) attends to its cached keys and
/// values `caches[b] = (k, v, len)` with rows of `Hkv*dim`; writes out[b].
pub fn attention_decode(out: &mut [f32], q: &[f32], caches: &[(&[f32], &[f32], usize)], heads: Heads) {
    let qrow = heads.q * heads.dim;
    out.par_chunks_exact_mut(qrow).enumerate().for_each_init(Vec::new, |scores, (b, out_row)| {
        let (k, v, n) = caches[b];
        for h in 0..heads.q {
            let qh = &q[b * qrow + h * heads.dim..b * qrow + (h + 1) * heads.dim];
            attend(&mut out_row[h * heads.dim..(h + 1) * heads.dim], qh, k, v, n, h / heads.group(), heads, scores);
        }
    });
}
