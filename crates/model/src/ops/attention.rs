//! Causal self-attention with grouped-query heads.
//!
//! Training runs over packed sequences: rows of q/k/v are tokens of several sequences back to
//! back, and token i attends to tokens `seg_start[i] ..= i` of its own sequence (the packing
//! mask). Forward saves only the log-sum-exp per (token, head); backward recomputes the
//! probabilities. Decoding attends one new query per sequence to that sequence's KV cache.

use rayon::prelude::*;

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

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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

/// out[N, Hq*dim], lse[N, Hq] from q[N, Hq*dim], k[N, Hkv*dim], v[N, Hkv*dim]; `seg_start[i]`
/// is the first row of token i's sequence.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], v: &[f32], seg_start: &[usize], heads: Heads) {
    let qrow = heads.q * heads.dim;
    out.par_chunks_exact_mut(qrow)
        .zip(lse.par_chunks_exact_mut(heads.q))
        .enumerate()
        .for_each_init(Vec::new, |scores, (i, (out_row, lse_row))| {
            let start = seg_start[i];
            let n = i + 1 - start;
            let row = heads.kv * heads.dim;
            let (ks, vs) = (&k[start * row..(i + 1) * row], &v[start * row..(i + 1) * row]);
            for h in 0..heads.q {
                let qh = &q[i * qrow + h * heads.dim..i * qrow + (h + 1) * heads.dim];
                let oh = &mut out_row[h * heads.dim..(h + 1) * heads.dim];
                lse_row[h] = attend(oh, qh, ks, vs, n, h / heads.group(), heads, scores);
            }
        });
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
    let prob = |i: usize, h: usize, j: usize| -> f32 {
        let kvh = h / g;
        let s = scale * dot(&q[i * qrow + h * d..i * qrow + h * d + d], &k[j * kvrow + kvh * d..j * kvrow + kvh * d + d]);
        (s - lse[i * heads.q + h]).exp()
    };
    // dq: rows i in parallel.
    dq.par_chunks_exact_mut(qrow).enumerate().for_each(|(i, dq_row)| {
        dq_row.fill(0.0);
        for h in 0..heads.q {
            let kvh = h / g;
            let do_ih = &dout[i * qrow + h * d..i * qrow + h * d + d];
            for j in seg_start[i]..=i {
                let p = prob(i, h, j);
                let ds = p * (dot(do_ih, &v[j * kvrow + kvh * d..j * kvrow + kvh * d + d]) - delta[i * heads.q + h]);
                for (x, kk) in dq_row[h * d..(h + 1) * d].iter_mut().zip(&k[j * kvrow + kvh * d..j * kvrow + kvh * d + d]) {
                    *x += scale * ds * kk;
                }
            }
        }
    });
    // dk, dv: rows j in parallel, over the queries i >= j of the same sequence.
    dk.par_chunks_exact_mut(kvrow).zip(dv.par_chunks_exact_mut(kvrow)).enumerate().for_each(|(j, (dk_row, dv_row))| {
        dk_row.fill(0.0);
        dv_row.fill(0.0);
        let start = seg_start[j];
        let mut i = j;
        while i < n_tok && seg_start[i] == start {
            for h in 0..heads.q {
                let kvh = h / g;
                let p = prob(i, h, j);
                let do_ih = &dout[i * qrow + h * d..i * qrow + h * d + d];
                let ds = p * (dot(do_ih, &v[j * kvrow + kvh * d..j * kvrow + kvh * d + d]) - delta[i * heads.q + h]);
                let qh = &q[i * qrow + h * d..i * qrow + h * d + d];
                for t in 0..d {
                    dk_row[kvh * d + t] += scale * ds * qh[t];
                    dv_row[kvh * d + t] += p * do_ih[t];
                }
            }
            i += 1;
        }
    });
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
