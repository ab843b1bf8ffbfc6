//! Causal self-attention with grouped-query heads.
//!
//! Training runs over packed sequences: rows of q/k/v are tokens of several sequences back to
//! back, and token i attends to tokens `seg_start[i] ..= i` of its own sequence (the packing
//! mask). Forward saves only the log-sum-exp per (token, head); backward recomputes the
//! probabilities. Decoding attends one new query per sequence to that sequence's KV cache.

// Kernels index their register arrays by lane and row on purpose.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use super::matmul::gemm_strided_serial;
use crate::simd::{self, Kernel, Simd, dispatch};

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
    let isa = crate::cpu::isa();
    let items: Vec<(usize, usize, usize)> = segments(seg_start).into_iter().flat_map(|(s, len)| (0..heads.q).map(move |h| (s, len, h))).collect();
    let partials: Vec<(Vec<f32>, Vec<f32>)> = items
        .par_iter()
        .map(|&(s, len, h)| {
            let kvh = h / g;
            let (qo, ko) = (s * qrow + h * d, s * kvrow + kvh * d);
            let mut p = vec![0.0f32; len * len];
            gemm_strided_serial(&mut p, &q[qo..], qrow, 1, &k[ko..], 1, kvrow, len, len, d, false);
            let mut lse_l = vec![0.0f32; len];
            dispatch(isa, CausalSoftmax { p: &mut p, lse: &mut lse_l, len, scale });
            let mut o = vec![0.0f32; len * d];
            gemm_strided_serial(&mut o, &p, len, 1, &v[ko..], kvrow, 1, len, d, len, false);
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

/// Row i of the `len x len` scores `p` becomes softmax(scale * p[i][..=i]) followed by zeros;
/// `lse[i]` its log-sum-exp.
struct CausalSoftmax<'a> {
    p: &'a mut [f32],
    lse: &'a mut [f32],
    len: usize,
    scale: f32,
}

impl Kernel for CausalSoftmax<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let CausalSoftmax { p, lse, len, scale } = self;
        for (i, row) in p.chunks_exact_mut(len).enumerate() {
            let (seen, future) = row.split_at_mut(i + 1);
            let max = scale * simd::max_of::<S>(seen);
            let sum = simd::exp_in_place::<S>(seen, scale, max);
            simd::scale::<S>(seen, (1.0 / sum) as f32);
            future.fill(0.0);
            lse[i] = max + sum.ln() as f32;
        }
    }
}

/// From scores `p` and `dp = dO V^T` (`len x len`), with `rows[i] = (D_i, lse_i)`: the causal
/// probabilities `p = e^(scale p - lse_i)` and `dp = scale p (dp - D_i)`, zero above the
/// diagonal.
struct CausalSoftmaxGrad<'a> {
    p: &'a mut [f32],
    dp: &'a mut [f32],
    rows: &'a [(f32, f32)],
    scale: f32,
}

impl Kernel for CausalSoftmaxGrad<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let CausalSoftmaxGrad { p, dp, rows, scale } = self;
        let len = rows.len();
        for (i, (prow, dprow)) in p.chunks_exact_mut(len).zip(dp.chunks_exact_mut(len)).enumerate() {
            let (di, lse_i) = rows[i];
            simd::exp_in_place::<S>(&mut prow[..=i], scale, lse_i);
            let full = (i + 1) / S::LANES * S::LANES;
            // SAFETY: j + LANES <= i + 1 <= len for both rows.
            unsafe {
                let (sv, dv) = (S::splat(scale), S::splat(di));
                for j in (0..full).step_by(S::LANES) {
                    let pj = S::load(prow.as_ptr().add(j));
                    let d = S::sub(S::load(dprow.as_ptr().add(j)), dv);
                    S::store(dprow.as_mut_ptr().add(j), S::mul(S::mul(sv, pj), d));
                }
            }
            for j in full..=i {
                dprow[j] = scale * prow[j] * (dprow[j] - di);
            }
            prow[i + 1..].fill(0.0);
            dprow[i + 1..].fill(0.0);
        }
    }
}

/// dq, dk, dv (overwrite) from dout and the forward's inputs, output and lse.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(dq: &mut [f32], dk: &mut [f32], dv: &mut [f32], dout: &[f32], q: &[f32], k: &[f32], v: &[f32], out: &[f32], lse: &[f32], seg_start: &[usize], heads: Heads) {
    let (d, qrow, kvrow, g) = (heads.dim, heads.q * heads.dim, heads.kv * heads.dim, heads.group());
    let scale = heads.scale();
    let isa = crate::cpu::isa();
    let n_tok = seg_start.len();
    // D[i,h] = dout[i,h] . out[i,h]
    let delta: Vec<f32> = (0..n_tok * heads.q).into_par_iter().map(|ih| dot(&dout[ih * d..(ih + 1) * d], &out[ih * d..(ih + 1) * d])).collect();
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
            gemm_strided_serial(&mut p, &q[qo..], qrow, 1, &k[ko..], 1, kvrow, len, len, d, false);
            gemm_strided_serial(&mut dp, &dout[qo..], qrow, 1, &v[ko..], 1, kvrow, len, len, d, false);
            let rows: Vec<(f32, f32)> = (s..s + len).map(|row| (delta[row * heads.q + h], lse[row * heads.q + h])).collect();
            dispatch(isa, CausalSoftmaxGrad { p: &mut p, dp: &mut dp, rows: &rows, scale });
            // dp now holds scale * dS.
            let (mut dq_l, mut dk_l, mut dv_l) = (vec![0.0f32; len * d], vec![0.0f32; len * d], vec![0.0f32; len * d]);
            gemm_strided_serial(&mut dq_l, &dp, len, 1, &k[ko..], kvrow, 1, len, d, len, false);
            gemm_strided_serial(&mut dk_l, &dp, 1, len, &q[qo..], qrow, 1, len, d, len, false);
            gemm_strided_serial(&mut dv_l, &p, 1, len, &dout[qo..], qrow, 1, len, d, len, false);
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

/// Positions per block of a decoding cache's keys (see [`write_key`]).
pub const KEY_BLOCK: usize = 16;

/// Appends the key row `key` (`[Hkv * dim]`) of position `pos` to a sequence's keys, stored in
/// blocks of [`KEY_BLOCK`] positions transposed within the block: element (position p, e) sits
/// at `(p / 16) * 16 * Hkv * dim + e * 16 + p % 16`, so the scores of 16 positions are one vector
/// product per dimension, with no horizontal sums.
pub fn write_key<T: KvElem>(keys: &mut Vec<T>, key: &[f32], pos: usize) {
    let width = key.len();
    let (block, slot) = (pos / KEY_BLOCK, pos % KEY_BLOCK);
    if keys.len() < (block + 1) * KEY_BLOCK * width {
        keys.resize((block + 1) * KEY_BLOCK * width, T::from_f32(0.0));
    }
    let base = block * KEY_BLOCK * width + slot;
    for (e, &x) in key.iter().enumerate() {
        keys[base + e * KEY_BLOCK] = T::from_f32(x);
    }
}

/// Appends the value row `value` (`[Hkv * dim]`) to a sequence's values.
pub fn write_value<T: KvElem>(values: &mut Vec<T>, value: &[f32]) {
    values.extend(value.iter().map(|&x| T::from_f32(x)));
}

/// The element type of a decoding cache's keys and values: f32, or bf16 (half the bytes each
/// decoding step reads; rounded to nearest even when written, widened exactly in registers).
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Whether this is bf16 (else f32).
    const BF16: bool;
    /// Rounds an f32 to this type.
    fn from_f32(x: f32) -> Self;
    /// Widens to f32.
    fn to_f32(self) -> f32;
}

impl KvElem for f32 {
    const BF16: bool = false;
    fn from_f32(x: f32) -> f32 {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl KvElem for half::bf16 {
    const BF16: bool = true;
    fn from_f32(x: f32) -> half::bf16 {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// LANES cached elements widened to f32.
#[inline(always)]
unsafe fn load_kv<S: Simd, T: KvElem>(p: *const T) -> S::V {
    // SAFETY: the caller's; T is f32 or bf16 as BF16 says.
    unsafe { if T::BF16 { S::load_bf16(p.cast()) } else { S::load(p.cast()) } }
}

/// Decoding: for each sequence b, query row q[b] (`Hq*dim`) attends to its cache
/// `caches[b] = (keys, values, len)`: keys in the blocked layout of [`write_key`], values as
/// rows of `Hkv*dim`; writes out[b]. Parallel over (sequence, KV head); the query heads of a
/// group share each key and value as it is read; scores, softmax and the weighted sum of values
/// are vector code without horizontal sums.
pub fn attention_decode<T: KvElem>(out: &mut [f32], q: &[f32], caches: &[(&[T], &[T], usize)], heads: Heads) {
    attention_decode_on(crate::cpu::isa(), out, q, caches, heads);
}

/// [`attention_decode`] on a given instruction set (tests compare them).
pub(crate) fn attention_decode_on<T: KvElem>(isa: crate::cpu::Isa, out: &mut [f32], q: &[f32], caches: &[(&[T], &[T], usize)], heads: Heads) {
    let (d, g) = (heads.dim, heads.group());
    // One item per (sequence, KV head): its g query heads are consecutive in the rows.
    out.par_chunks_exact_mut(g * d).zip(q.par_chunks_exact(g * d)).enumerate().for_each_init(Vec::new, |scores, (item, (out, q))| {
        let (b, kvh) = (item / heads.kv, item % heads.kv);
        let (keys, values, n) = caches[b];
        dispatch(isa, DecodeGroup { out, q, keys, values, n, kvh, heads, scores });
    });
}

/// One KV head of one sequence against its group of query heads, for [`attention_decode`].
struct DecodeGroup<'a, T> {
    out: &'a mut [f32],
    q: &'a [f32],
    keys: &'a [T],
    values: &'a [T],
    n: usize,
    kvh: usize,
    heads: Heads,
    scores: &'a mut Vec<f32>,
}

/// Query heads per pass of the decode kernel: `HP x 16` score lanes, or `HP x 4` vectors of
/// output, stay in registers.
const fn heads_per_pass<S: Simd>() -> usize {
    if S::LANES >= 16 { 4 } else { 2 }
}

impl<T: KvElem> Kernel for DecodeGroup<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let DecodeGroup { out, q, keys, values, n, kvh, heads, scores } = self;
        let (d, g) = (heads.dim, heads.group());
        let padded = n.next_multiple_of(KEY_BLOCK);
        scores.clear();
        scores.resize(g * padded, 0.0);
        let hp = heads_per_pass::<S>();
        for h0 in (0..g).step_by(hp) {
            // SAFETY: heads h0..h0+count < g; keys hold `padded` positions; scores g * padded.
            unsafe { decode_scores::<S, T>(&q[h0 * d..], keys, kvh, heads, padded, &mut scores[h0 * padded..], (g - h0).min(hp)) };
        }
        let scale = heads.scale();
        for h in 0..g {
            let s = &mut scores[h * padded..h * padded + n];
            let max = scale * simd::max_of::<S>(s);
            let inv = (1.0 / simd::exp_in_place::<S>(s, scale, max)) as f32;
            for x in s.iter_mut() {
                *x *= inv;
            }
        }
        for h0 in (0..g).step_by(hp) {
            // SAFETY: as above; values hold n rows of Hkv * d; out holds g * d.
            unsafe { decode_values::<S, T>(&mut out[h0 * d..], &scores[h0 * padded..], padded, values, n, kvh, heads, (g - h0).min(hp)) };
        }
    }
}

/// Scores of `count` heads (queries `q[h * d..]`) against every block of keys.
#[inline(always)]
unsafe fn decode_scores<S: Simd, T: KvElem>(q: &[f32], keys: &[T], kvh: usize, heads: Heads, padded: usize, scores: &mut [f32], count: usize) {
    // SAFETY (all arms): the caller's guarantee.
    unsafe {
        match count {
            1 => decode_scores_h::<S, T, 1>(q, keys, kvh, heads, padded, scores),
            2 => decode_scores_h::<S, T, 2>(q, keys, kvh, heads, padded, scores),
            3 => decode_scores_h::<S, T, 3>(q, keys, kvh, heads, padded, scores),
            _ => decode_scores_h::<S, T, 4>(q, keys, kvh, heads, padded, scores),
        }
    }
}

/// Independent partial sums per head in [`decode_scores_h`] (4 FMAs in flight per head).
const CHAINS: usize = 4;

#[inline(always)]
unsafe fn decode_scores_h<S: Simd, T: KvElem, const H: usize>(q: &[f32], keys: &[T], kvh: usize, heads: Heads, padded: usize, scores: &mut [f32]) {
    let (d, width) = (heads.dim, heads.kv * heads.dim);
    let vectors = KEY_BLOCK / S::LANES;
    for block in 0..padded / KEY_BLOCK {
        let base = block * KEY_BLOCK * width + kvh * d * KEY_BLOCK;
        for v in 0..vectors {
            // SAFETY: block < padded / 16, so base + (d - 1) * 16 + 16 <= keys.len(); q holds
            // H heads of d; scores H rows of `padded`.
            unsafe {
                // CHAINS sums per head over interleaved dimensions: one sum per head would be a
                // chain of d dependent FMAs, bound by their latency rather than throughput.
                let mut acc = [[S::zero(); CHAINS]; H];
                let key = |c: usize| load_kv::<S, T>(keys.as_ptr().add(base + c * KEY_BLOCK + v * S::LANES));
                let mut c0 = 0;
                while c0 + CHAINS <= d {
                    for j in 0..CHAINS {
                        let kv = key(c0 + j);
                        for h in 0..H {
                            acc[h][j] = S::fmadd(S::splat(*q.get_unchecked(h * d + c0 + j)), kv, acc[h][j]);
                        }
                    }
                    c0 += CHAINS;
                }
                for c in c0..d {
                    let kv = key(c);
                    for h in 0..H {
                        acc[h][0] = S::fmadd(S::splat(*q.get_unchecked(h * d + c)), kv, acc[h][0]);
                    }
                }
                for h in 0..H {
                    let sum = acc[h][1..].iter().fold(acc[h][0], |sum, &a| S::add(sum, a));
                    S::store(scores.as_mut_ptr().add(h * padded + block * KEY_BLOCK + v * S::LANES), sum);
                }
            }
        }
    }
}

/// `out[h] = Σ_j p[h][j] v_j` for `count` heads, 4 vectors of the head's width at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn decode_values<S: Simd, T: KvElem>(out: &mut [f32], p: &[f32], padded: usize, values: &[T], n: usize, kvh: usize, heads: Heads, count: usize) {
    // SAFETY (all arms): the caller's guarantee.
    unsafe {
        match count {
            1 => decode_values_h::<S, T, 1>(out, p, padded, values, n, kvh, heads),
            2 => decode_values_h::<S, T, 2>(out, p, padded, values, n, kvh, heads),
            3 => decode_values_h::<S, T, 3>(out, p, padded, values, n, kvh, heads),
            _ => decode_values_h::<S, T, 4>(out, p, padded, values, n, kvh, heads),
        }
    }
}

#[inline(always)]
unsafe fn decode_values_h<S: Simd, T: KvElem, const H: usize>(out: &mut [f32], p: &[f32], padded: usize, values: &[T], n: usize, kvh: usize, heads: Heads) {
    let (d, width) = (heads.dim, heads.kv * heads.dim);
    let chunk = 4 * S::LANES;
    let mut c0 = 0;
    while c0 + chunk <= d {
        // SAFETY: rows j < n of `width` values, columns kvh*d + c0 .. + chunk inside the head;
        // p holds H rows of `padded`; out H heads of d.
        unsafe {
            let mut acc = [[S::zero(); 4]; H];
            for j in 0..n {
                let row = values.as_ptr().add(j * width + kvh * d + c0);
                let vv = [load_kv::<S, T>(row), load_kv::<S, T>(row.add(S::LANES)), load_kv::<S, T>(row.add(2 * S::LANES)), load_kv::<S, T>(row.add(3 * S::LANES))];
                for h in 0..H {
                    let pb = S::splat(*p.get_unchecked(h * padded + j));
                    for c in 0..4 {
                        acc[h][c] = S::fmadd(pb, vv[c], acc[h][c]);
                    }
                }
            }
            for h in 0..H {
                for c in 0..4 {
                    S::store(out.as_mut_ptr().add(h * d + c0 + c * S::LANES), acc[h][c]);
                }
            }
        }
        c0 += chunk;
    }
    // A head width that is not a multiple of 4 vectors: the rest one element at a time.
    for h in 0..H {
        for c in c0..d {
            out[h * d + c] = (0..n).map(|j| p[h * padded + j] * values[j * width + kvh * d + c].to_f32()).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;

    /// Decoding against the training attention's last row (its own reference, checked by finite
    /// differences), for group sizes 1 to 7, head widths with and without a remainder past the
    /// 4-vector chunks, and lengths on both sides of the 16-position key blocks; with f32 caches,
    /// and with bf16 caches against the training attention of the same keys and values rounded
    /// to bf16 (so the one difference allowed is the order of f32 sums).
    #[test]
    fn decode_equals_the_last_row_of_training_attention() {
        decode_against_training_attention::<f32>();
        decode_against_training_attention::<half::bf16>();
    }

    fn decode_against_training_attention<T: KvElem>() {
        let mut seed = 7u64;
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 33) % 2001) as f32 / 1000.0 - 1.0
                })
                .collect()
        };
        for heads in [Heads { q: 2, kv: 2, dim: 4 }, Heads { q: 9, kv: 3, dim: 64 }, Heads { q: 7, kv: 1, dim: 72 }, Heads { q: 8, kv: 2, dim: 128 }] {
            let (qd, kd) = (heads.q * heads.dim, heads.kv * heads.dim);
            let lens = [1usize, 15, 16, 17, 40];
            let rounded = |x: Vec<f32>| -> Vec<f32> { x.into_iter().map(|x| T::from_f32(x).to_f32()).collect() };
            let rows: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = lens.iter().map(|&n| (random(n * qd), rounded(random(n * kd)), rounded(random(n * kd)))).collect();
            let mut want = Vec::new();
            for ((q, k, v), &n) in rows.iter().zip(&lens) {
                let (mut out, mut lse) = (vec![0.0; n * qd], vec![0.0; n * heads.q]);
                attention_forward(&mut out, &mut lse, q, k, v, &vec![0; n], heads);
                want.extend_from_slice(&out[(n - 1) * qd..]);
            }
            let keys: Vec<Vec<T>> = rows
                .iter()
                .zip(&lens)
                .map(|((_, k, _), &n)| {
                    let mut blocked = Vec::new();
                    for p in 0..n {
                        write_key(&mut blocked, &k[p * kd..(p + 1) * kd], p);
                    }
                    blocked
                })
                .collect();
            let values: Vec<Vec<T>> = rows
                .iter()
                .map(|(_, _, v)| {
                    let mut cached = Vec::new();
                    write_value(&mut cached, v);
                    cached
                })
                .collect();
            let caches: Vec<(&[T], &[T], usize)> = keys.iter().zip(&values).zip(&lens).map(|((k, v), &n)| (k.as_slice(), v.as_slice(), n)).collect();
            let last_q: Vec<f32> = rows.iter().zip(&lens).flat_map(|((q, _, _), &n)| q[(n - 1) * qd..].to_vec()).collect();
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; lens.len() * qd];
                attention_decode_on(isa, &mut got, &last_q, &caches, heads);
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(err < 1e-5, "{isa:?} {heads:?} bf16 {}: largest difference {err}", T::BF16);
            }
        }
    }
}
