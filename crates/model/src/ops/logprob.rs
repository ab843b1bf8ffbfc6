//! Log-softmax over the vocabulary with a gather of each target's log-prob, and its backward.
//! The RL loss hands the model d(loss)/d(logprob) per token; SFT's masked cross-entropy is the
//! same op with d(loss)/d(logprob) = -mask / (number of masked tokens).

use rayon::prelude::*;

use crate::simd::{self, Kernel, Simd, dispatch};

/// logprob[N] = log softmax(logits[n])[targets[n]]; lse[N] saved for backward.
pub fn logprob_forward(logprob: &mut [f32], lse: &mut [f32], logits: &[f32], targets: &[u32], v: usize) {
    let isa = crate::cpu::isa();
    logprob.par_iter_mut().zip(lse.par_iter_mut()).zip(logits.par_chunks_exact(v)).zip(targets.par_iter()).for_each(|(((lp, l), row), &t)| {
        *l = dispatch(isa, LogSumExp(row));
        *lp = row[t as usize] - *l;
    });
}

/// dlogits[N,V] = dlogprob[n] * (onehot(target) - softmax) (overwrite).
pub fn logprob_backward(dlogits: &mut [f32], dlogprob: &[f32], logits: &[f32], lse: &[f32], targets: &[u32], v: usize) {
    let isa = crate::cpu::isa();
    dlogits.par_chunks_exact_mut(v).zip(logits.par_chunks_exact(v)).enumerate().for_each(|(n, (drow, row))| {
        let g = dlogprob[n];
        if g == 0.0 {
            drow.fill(0.0);
            return;
        }
        dispatch(isa, SoftmaxScaled { out: drow, row, lse: lse[n], scale: -g });
        drow[targets[n] as usize] += g;
    });
}

/// The log-sum-exp of a row: its max plus the log of the f64 sum of shifted exponentials.
struct LogSumExp<'a>(&'a [f32]);

impl Kernel for LogSumExp<'_> {
    type Output = f32;
    #[inline(always)]
    fn run<S: Simd>(self) -> f32 {
        let max = simd::max_of::<S>(self.0);
        max + simd::exp_sum::<S>(self.0, 1.0, max).ln() as f32
    }
}

/// `out = scale * e^(row - lse)`.
struct SoftmaxScaled<'a> {
    out: &'a mut [f32],
    row: &'a [f32],
    lse: f32,
    scale: f32,
}

impl Kernel for SoftmaxScaled<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        simd::exp_into::<S>(self.out, self.row, 1.0, self.lse);
        simd::scale::<S>(self.out, self.scale);
    }
}

/// Masked mean cross-entropy of given log-probs, and d(loss)/d(logprob).
pub fn cross_entropy(logprob: &[f32], mask: &[f32]) -> (f32, Vec<f32>) {
    let count: f32 = mask.iter().sum();
    if count == 0.0 {
        return (0.0, vec![0.0; logprob.len()]);
    }
    let loss = -logprob.iter().zip(mask).map(|(l, m)| l * m).sum::<f32>() / count;
    (loss, mask.iter().map(|m| -m / count).collect())
}
