//! Log-softmax over the vocabulary with a gather of each target's log-prob, and its backward.
//! The RL loss hands the model d(loss)/d(logprob) per token; SFT's masked cross-entropy is the
//! same op with d(loss)/d(logprob) = -mask / (number of masked tokens).

use rayon::prelude::*;

/// logprob[N] = log softmax(logits[n])[targets[n]]; lse[N] saved for backward.
pub fn logprob_forward(logprob: &mut [f32], lse: &mut [f32], logits: &[f32], targets: &[u32], v: usize) {
    logprob
        .par_iter_mut()
        .zip(lse.par_iter_mut())
        .zip(logits.par_chunks_exact(v))
        .zip(targets.par_iter())
        .for_each(|(((lp, l), row), &t)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&x| f64::from((x - max).exp())).sum();
            *l = max + sum.ln() as f32;
            *lp = row[t as usize] - *l;
        });
}

/// dlogits[N,V] = dlogprob[n] * (onehot(target) - softmax) (overwrite).
pub fn logprob_backward(dlogits: &mut [f32], dlogprob: &[f32], logits: &[f32], lse: &[f32], targets: &[u32], v: usize) {
    dlogits
        .par_chunks_exact_mut(v)
        .zip(logits.par_chunks_exact(v))
        .enumerate()
        .for_each(|(n, (drow, row))| {
            let g = dlogprob[n];
            if g == 0.0 {
                drow.fill(0.0);
                return;
            }
            for (d, &x) in drow.iter_mut().zip(row) {
                *d = -g * (x - lse[n]).exp();
            }
            drow[targets[n] as usize] += g;
        });
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
