//! Kept episodes packed as one training batch, and the clipped policy loss computed on the
//! batch's log-probs with its gradient scattered back onto the batch's rows: what a trainer does
//! between its forward pass and its backward pass (the CLI's micro-batches and the page's one
//! batch per step).

use std::ops::Range;

use rstar2_grpo::loss::{LossConfig, LossOutput, RolloutTokens, policy_loss};
use rstar2_model::Batch;

use crate::Episode;

/// Episodes, each with its advantage, as one batch of sequences.
pub struct Packed<'a> {
    episodes: &'a [(&'a Episode, f32)],
    /// The episodes' token ids, packed.
    pub batch: Batch,
    /// Per row, the next token (0 past a sequence's end, whose row trains nothing).
    pub targets: Vec<u32>,
    /// Per episode, the rows predicting its response: response token i at row prompt_len - 1 + i.
    pub rows: Vec<Range<usize>>,
}

impl<'a> Packed<'a> {
    /// Packs `episodes` (with their advantages) in order.
    pub fn new(episodes: &'a [(&'a Episode, f32)]) -> Self {
        let seqs: Vec<Vec<u32>> = episodes.iter().map(|(e, _)| e.ids.clone()).collect();
        let batch = Batch::new(&seqs);
        let targets: Vec<u32> = seqs.iter().flat_map(|s| s[1..].iter().copied().chain(std::iter::once(0))).collect();
        let rows = episodes.iter().zip(&batch.offsets).map(|((e, _), &off)| off + e.prompt_ids.len() - 1..off + e.ids.len() - 1).collect();
        Packed { episodes, batch, targets, rows }
    }

    /// The clipped policy loss of the episodes given `logprobs` of `targets` over the batch (the
    /// policy's now, which is also the old policy's: one update per batch), and its gradient
    /// with respect to each row's log-prob times `scale` (zero on rows outside the responses).
    pub fn policy_loss(&self, logprobs: &[f32], config: &LossConfig, scale: f32) -> (LossOutput, Vec<f32>) {
        assert_eq!(logprobs.len(), self.batch.len(), "one log-prob per row of the batch");
        let rollouts: Vec<RolloutTokens<'_>> = self
            .episodes
            .iter()
            .zip(&self.rows)
            .map(|((e, advantage), r)| RolloutTokens { logprobs: &logprobs[r.clone()], old_logprobs: &logprobs[r.clone()], rollout_logprobs: &e.logprobs, mask: &e.loss_mask, advantage: *advantage })
            .collect();
        let out = policy_loss(&rollouts, config);
        let mut dlogprob = vec![0.0f32; self.batch.len()];
        for (r, g) in self.rows.iter().zip(&out.grads) {
            for (d, &x) in dlogprob[r.clone()].iter_mut().zip(g) {
                *d = x * scale;
            }
        }
        (out, dlogprob)
    }

    /// Model tokens (loss mask 1) of the episodes.
    pub fn model_tokens(&self) -> usize {
        self.episodes.iter().map(|(e, _)| e.model_tokens()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FinishReason;

    fn episode(prompt: &[u32], response: &[u32], mask: &[u8], logprobs: &[f32]) -> Episode {
        Episode {
            id: "p".into(),
            sample: 0,
            engine: 0,
            prompt_ids: prompt.to_vec(),
            ids: prompt.iter().chain(response).copied().collect(),
            loss_mask: mask.to_vec(),
            logprobs: logprobs.to_vec(),
            turns: 1,
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Answered,
            text: String::new(),
            reward: Some(1.0),
            extracted: None,
        }
    }

    #[test]
    fn rows_targets_and_gradient_land_on_each_response() {
        // Sequence a: prompt [1 2], response [3 4 5] (4 is the tool's); b: prompt [6], response [7 8].
        let a = episode(&[1, 2], &[3, 4, 5], &[1, 0, 1], &[-1.0, 0.0, -2.0]);
        let b = episode(&[6], &[7, 8], &[1, 1], &[-0.5, -0.25]);
        let kept = [(&a, 1.0f32), (&b, -2.0f32)];
        let packed = Packed::new(&kept);
        assert_eq!(packed.batch.tokens, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(packed.targets, [2, 3, 4, 5, 0, 7, 8, 0]);
        assert_eq!(packed.rows, [1..4, 5..7]);
        assert_eq!(packed.model_tokens(), 4);
        // The policy's log-probs equal the sampler's on every response token: ratio 1, nothing
        // clipped, so with the token-mean loss d loss / d logprob = -advantage / 4 on each
        // model token, 0 on the tool's token and outside the responses.
        let logprobs = [9.0, -1.0, 0.0, -2.0, 9.0, -0.5, -0.25, 9.0];
        let (out, d) = packed.policy_loss(&logprobs, &LossConfig::default(), 2.0);
        let expected = [0.0, -0.5, 0.0, -0.5, 0.0, 1.0, 1.0, 0.0];
        for (i, (x, y)) in d.iter().zip(expected).enumerate() {
            assert!((x - y).abs() < 1e-6, "row {i}: {x} against {y} (all: {d:?})");
        }
        assert!((out.loss - (-(1.0 + 1.0 - 2.0 - 2.0) / 4.0)).abs() < 1e-6, "{}", out.loss);
    }
}
