//! The policy loss: PPO's clipped surrogate with Clip-Higher, no KL and no entropy term, and
//! its gradient with respect to each token's log-prob (the model turns that into parameter
//! gradients).
//!
//! Per token t of rollout i with advantage A_i: `r = exp(clamp(lp - lp_old, -20, 20))`,
//! `l = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))`, and with dual-clip (A < 0)
//! `l = min(l, -A c)`. Optionally each token is weighted by the truncated importance ratio
//! `min(exp(lp_old - lp_rollout), cap)` (a constant), correcting for the rollout engine's
//! numerics. Tokens with mask 0 (tool output, prompt) contribute nothing.

use serde::{Deserialize, Serialize};

/// How token losses are averaged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Aggregation {
    /// Sum over all kept tokens of all rollouts / their count (DAPO, the paper).
    #[default]
    TokenMean,
    /// Mean over rollouts of each rollout's token mean (original GRPO).
    SequenceMean,
    /// Dr. GRPO: sum over all tokens / (rollouts x a fixed length).
    DrGrpo {
        /// The constant length normalizer (the max response length).
        norm_len: usize,
    },
}

/// Loss settings. Defaults are the paper's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossConfig {
    /// Lower clip range (0.2).
    pub clip_low: f32,
    /// Upper clip range (0.28, Clip-Higher).
    pub clip_high: f32,
    /// Dual-clip constant for negative advantages (release/verl: 3.0; paper: none).
    pub dual_clip: Option<f32>,
    /// Averaging.
    pub aggregation: Aggregation,
    /// Truncated importance sampling against the rollout log-probs, capped at this ratio.
    pub tis_cap: Option<f32>,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig { clip_low: 0.2, clip_high: 0.28, dual_clip: None, aggregation: Aggregation::TokenMean, tis_cap: None }
    }
}

/// One kept rollout's tokens (response tokens only; all slices the same length).
#[derive(Debug, Clone, Copy)]
pub struct RolloutTokens<'a> {
    /// Log-probs under the policy being trained.
    pub logprobs: &'a [f32],
    /// Log-probs under the policy that is the PPO anchor (the trainer's, before this update).
    pub old_logprobs: &'a [f32],
    /// Log-probs the rollout engine recorded when sampling.
    pub rollout_logprobs: &'a [f32],
    /// 1 for model tokens, 0 for tool output.
    pub mask: &'a [u8],
    /// The rollout's advantage.
    pub advantage: f32,
}

/// Statistics of one loss evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossMetrics {
    /// Kept tokens.
    pub tokens: usize,
    /// Share of tokens whose lower clip is active (A < 0, r < 1 - eps_low).
    pub clip_frac_low: f64,
    /// Share of tokens whose upper clip is active (A > 0, r > 1 + eps_high).
    pub clip_frac_high: f64,
    /// Share of tokens stopped by the dual clip.
    pub dual_clip_frac: f64,
    /// Mean, min and max of the ratio r.
    pub ratio_mean: f64,
    /// Minimum ratio.
    pub ratio_min: f64,
    /// Maximum ratio.
    pub ratio_max: f64,
    /// Mean |lp_old - lp_rollout|: how far the trainer's numbers drift from the rollout engine's.
    pub logprob_gap_mean: f64,
    /// Max |lp_old - lp_rollout|.
    pub logprob_gap_max: f64,
}

/// The loss, its gradient per token (`grads[i][t]` = d loss / d logprobs of rollout i, token t),
/// and metrics.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The scalar loss.
    pub loss: f64,
    /// d loss / d log-prob, per rollout and token; zero where the mask is 0.
    pub grads: Vec<Vec<f32>>,
    /// Statistics.
    pub metrics: LossMetrics,
}

/// Evaluates the loss over the kept rollouts of a step.
pub fn policy_loss(rollouts: &[RolloutTokens<'_>], config: &LossConfig) -> LossOutput {
    let total_tokens: usize = rollouts.iter().map(|r| r.mask.iter().filter(|&&m| m != 0).count()).sum();
    let n = rollouts.len().max(1) as f64;
    let mut loss = 0.0f64;
    let mut grads = Vec::with_capacity(rollouts.len());
    let mut m = LossMetrics { ratio_min: f64::INFINITY, ratio_max: f64::NEG_INFINITY, ..Default::default() };
    let (mut clip_low, mut clip_high, mut dual, mut ratio_sum, mut gap_sum) = (0usize, 0usize, 0usize, 0.0f64, 0.0f64);
    for r in rollouts {
        assert!(
            r.logprobs.len() == r.mask.len() && r.old_logprobs.len() == r.mask.len() && r.rollout_logprobs.len() == r.mask.len(),
            "policy_loss: logprobs {}, old {}, rollout {}, mask {} differ in length",
            r.logprobs.len(),
            r.old_logprobs.len(),
            r.rollout_logprobs.len(),
            r.mask.len()
        );
        let kept = r.mask.iter().filter(|&&m| m != 0).count();
        // The weight of one token's loss in the aggregate.
        let scale = match config.aggregation {
            Aggregation::TokenMean => 1.0 / total_tokens.max(1) as f64,
            Aggregation::SequenceMean => 1.0 / (n * kept.max(1) as f64),
            Aggregation::DrGrpo { norm_len } => 1.0 / (n * norm_len.max(1) as f64),
        };
        let a = f64::from(r.advantage);
        let mut g = vec![0.0f32; r.mask.len()];
        #[allow(clippy::needless_range_loop)] // t indexes four per-token arrays in step
        for t in 0..r.mask.len() {
            if r.mask[t] == 0 {
                continue;
            }
            let log_ratio = f64::from(r.logprobs[t] - r.old_logprobs[t]);
            let clamped = log_ratio.clamp(-20.0, 20.0);
            let ratio = clamped.exp();
            let clipped = ratio.clamp(1.0 - f64::from(config.clip_low), 1.0 + f64::from(config.clip_high));
            let unclipped_loss = -a * ratio;
            let clipped_loss = -a * clipped;
            let (mut token_loss, mut grad) = if unclipped_loss >= clipped_loss {
                (unclipped_loss, if clamped == log_ratio { -a * ratio } else { 0.0 })
            } else {
                if a < 0.0 {
                    clip_low += 1
                } else {
                    clip_high += 1
                }
                (clipped_loss, 0.0)
            };
            if let Some(c) = config.dual_clip
                && a < 0.0
                && -a * f64::from(c) < token_loss
            {
                token_loss = -a * f64::from(c);
                grad = 0.0;
                dual += 1;
            }
            let gap = f64::from(r.old_logprobs[t] - r.rollout_logprobs[t]);
            let weight = config.tis_cap.map_or(1.0, |cap| gap.exp().min(f64::from(cap)));
            loss += scale * weight * token_loss;
            g[t] = (scale * weight * grad) as f32;
            ratio_sum += ratio;
            m.ratio_min = m.ratio_min.min(ratio);
            m.ratio_max = m.ratio_max.max(ratio);
            gap_sum += gap.abs();
            m.logprob_gap_max = m.logprob_gap_max.max(gap.abs());
        }
        grads.push(g);
    }
    let tokens = total_tokens.max(1) as f64;
    m.tokens = total_tokens;
    m.clip_frac_low = clip_low as f64 / tokens;
    m.clip_frac_high = clip_high as f64 / tokens;
    m.dual_clip_frac = dual as f64 / tokens;
    m.ratio_mean = ratio_sum / tokens;
    m.logprob_gap_mean = gap_sum / tokens;
    if total_tokens == 0 {
        m.ratio_min = 0.0;
        m.ratio_max = 0.0;
    }
    LossOutput { loss, grads, metrics: m }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(lp: &[f32], old: &[f32], mask: &[u8], a: f32, config: &LossConfig) -> LossOutput {
        policy_loss(&[RolloutTokens { logprobs: lp, old_logprobs: old, rollout_logprobs: old, mask, advantage: a }], config)
    }

    #[test]
    fn on_policy_loss_is_minus_mean_advantage_and_grad_is_minus_a_over_n() {
        let c = LossConfig::default();
        let out = one(&[-1.0, -2.0, -0.5], &[-1.0, -2.0, -0.5], &[1, 0, 1], 2.0, &c);
        assert!((out.loss + 2.0).abs() < 1e-12);
        assert_eq!(out.grads[0], vec![-1.0, 0.0, -1.0]);
        assert_eq!((out.metrics.tokens, out.metrics.ratio_mean), (2, 1.0));
    }

    #[test]
    fn clip_higher_by_hand() {
        let c = LossConfig::default();
        // A > 0, r = e^0.5 = 1.6487 > 1.28: clipped, loss -A * 1.28, no gradient.
        let out = one(&[0.5], &[0.0], &[1], 1.0, &c);
        assert!((out.loss + 1.28).abs() < 1e-6);
        assert_eq!(out.grads[0][0], 0.0);
        assert_eq!(out.metrics.clip_frac_high, 1.0);
        // A < 0, r = e^-0.5 = 0.6065 < 0.8: clipped at 0.8: loss = 0.8 * 1.
        let out = one(&[-0.5], &[0.0], &[1], -1.0, &c);
        assert!((out.loss - 0.8).abs() < 1e-6);
        assert_eq!(out.metrics.clip_frac_low, 1.0);
        // A < 0, r = e^1 = 2.718: unclipped branch is larger: loss = 2.718, grad = -A r = 2.718.
        let out = one(&[1.0], &[0.0], &[1], -1.0, &c);
        assert!((out.loss - std::f64::consts::E).abs() < 1e-6);
        assert!((f64::from(out.grads[0][0]) - std::f64::consts::E).abs() < 1e-5);
        // The same with dual-clip c = 2: loss capped at 2, no gradient.
        let dual = LossConfig { dual_clip: Some(2.0), ..c };
        let out = one(&[1.0], &[0.0], &[1], -1.0, &dual);
        assert!((out.loss - 2.0).abs() < 1e-9);
        assert_eq!(out.grads[0][0], 0.0);
        assert_eq!(out.metrics.dual_clip_frac, 1.0);
    }

    #[test]
    fn aggregations_by_hand() {
        // Rollout 1: 1 token, A = 1. Rollout 2: 3 tokens, A = -1. On policy: token loss = -A.
        let (lp1, lp2) = ([0.0f32], [0.0f32; 3]);
        let rs = [
            RolloutTokens { logprobs: &lp1, old_logprobs: &lp1, rollout_logprobs: &lp1, mask: &[1], advantage: 1.0 },
            RolloutTokens { logprobs: &lp2, old_logprobs: &lp2, rollout_logprobs: &lp2, mask: &[1, 1, 1], advantage: -1.0 },
        ];
        let token_mean = policy_loss(&rs, &LossConfig::default());
        assert!((token_mean.loss - (-1.0 + 3.0) / 4.0).abs() < 1e-12);
        let seq_mean = policy_loss(&rs, &LossConfig { aggregation: Aggregation::SequenceMean, ..Default::default() });
        assert!((seq_mean.loss - (-1.0 + 1.0) / 2.0).abs() < 1e-12);
        let dr = policy_loss(&rs, &LossConfig { aggregation: Aggregation::DrGrpo { norm_len: 10 }, ..Default::default() });
        assert!((dr.loss - (-1.0 + 3.0) / 20.0).abs() < 1e-12);
        assert!((f64::from(dr.grads[1][0]) - 1.0 / 20.0).abs() < 1e-9);
    }

    #[test]
    fn truncated_importance_sampling_weights_and_gap() {
        let c = LossConfig { tis_cap: Some(2.0), ..Default::default() };
        let (lp, rollout) = ([0.0f32, 0.0], [-0.1f32, -3.0]);
        let out = policy_loss(&[RolloutTokens { logprobs: &lp, old_logprobs: &lp, rollout_logprobs: &rollout, mask: &[1, 1], advantage: 1.0 }], &c);
        // Weights min(e^0.1, 2) = 1.10517 and min(e^3, 2) = 2; token loss -1 each, token-mean /2.
        let want = -(0.1f64.exp() + 2.0) / 2.0;
        assert!((out.loss - want).abs() < 1e-6, "{}", out.loss);
        assert!((out.metrics.logprob_gap_mean - 1.55).abs() < 1e-6);
        assert!((out.metrics.logprob_gap_max - 3.0).abs() < 1e-9);
    }
}
