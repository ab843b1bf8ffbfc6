//! The GRPO-RoC stages: a stage's start (filtering, optimizer reset), one RL step (rollouts,
//! RoC selection, advantages, the update), and one replica's share of the update's gradient.

use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rstar2_backend::Policy;
use rstar2_grpo::loss::{Aggregation, LossConfig};
use rstar2_grpo::select::{Candidate, NegativeSelection, PositiveSelection, Selection};
use rstar2_model::LrSchedule;
use rstar2_rollout::packed::Packed;
use rstar2_rollout::{RolloutConfig, SamplingConfig};
use rstar2_tasks::Task;

use super::Trainer;
use super::setup::mix_seed;

use crate::config::{self, Algo, Positives};
use crate::eval::tool_error_ratio;
use crate::replicas::Totals;
use crate::{progress, report};

impl Trainer {
    /// Chooses the stage's problems (stage-3 filtering when configured) and resets the optimizer.
    pub(super) fn begin_stage(&mut self) -> anyhow::Result<()> {
        let stage = self.config.rl.stages[self.state.stage].clone();
        let mut pool: Vec<usize> = (0..self.train.len()).collect();
        pool.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(self.config.seed, 0x9001, self.state.stage as u64)));
        if self.state.stage > 0 {
            self.replicas.reset_optimizer();
        }
        if let Some(f) = stage.filter_solved {
            pool.truncate(f.problems.max(1));
            let tasks: Vec<Task> = pool.iter().map(|&i| self.train[i].clone()).collect();
            let seed = mix_seed(self.config.seed, 0xf117, self.state.stage as u64);
            let rollout = self.rollout_config(&stage, f.samples, seed);
            let requests: Vec<_> = tasks.iter().map(Task::request).collect();
            let bar = progress::bar((requests.len() * f.samples) as u64, "filter solved");
            let on = |_: &rstar2_rollout::Episode, _: usize| bar.inc(1);
            let out = self.replicas.rollout(&self.tokenizer, &self.sandbox, &self.config.chat, &requests, &rollout, Some(&on))?;
            bar.finish_and_clear();
            let before = pool.len();
            let solved: Vec<bool> = out.episodes.chunks(f.samples).map(|c| c.iter().all(|e| e.reward == Some(1.0))).collect();
            let kept: Vec<usize> = pool.iter().zip(&solved).filter(|(_, s)| !**s).map(|(&i, _)| i).collect();
            self.say(&format!("stage {}: removed {} of {} problems the policy solves {}/{} times", self.state.stage + 1, before - kept.len(), before, f.samples, f.samples));
            if !kept.is_empty() {
                pool = kept;
            }
        }
        self.state.pool = pool;
        Ok(())
    }

    pub(super) fn rollout_config(&self, stage: &config::StageConfig, samples: usize, seed: u64) -> RolloutConfig {
        RolloutConfig {
            chat: self.config.chat.clone(),
            sampling: SamplingConfig { temperature: self.config.rl.temperature, top_p: self.config.rl.top_p, top_k: 0 },
            samples,
            max_response_tokens: stage.max_response_tokens,
            max_turns: stage.max_turns,
            seed,
            dispatch: self.config.rl.dispatch,
            ..RolloutConfig::default()
        }
    }

    pub(super) fn selection(&self) -> Selection {
        match self.config.algo {
            Algo::Grpo => Selection::Grpo,
            Algo::GrpoRoc => Selection::GrpoRoc {
                keep: self.config.rl.group_size,
                min_per_class: 2,
                positives: match self.config.rl.positives {
                    Positives::Sample => PositiveSelection::default(),
                    Positives::TopK => PositiveSelection::TopK,
                },
                negatives: NegativeSelection::Uniform,
            },
        }
    }

    pub(super) fn rl_step(&mut self, stage: &config::StageConfig) -> anyhow::Result<report::StepMetrics> {
        let t0 = Instant::now();
        let rl = self.config.rl.clone();
        let pool = &self.state.pool;
        let first = self.state.stage_step * rl.prompts_per_step;
        let tasks: Vec<Task> = (0..rl.prompts_per_step).map(|i| self.train[pool[(first + i) % pool.len()]].clone()).collect();
        let requests: Vec<_> = tasks.iter().map(Task::request).collect();
        let samples = self.config.samples_per_prompt();
        let rollout = self.rollout_config(stage, samples, mix_seed(self.config.seed, 0x7011, self.state.rl_step as u64));
        let out = self.replicas.rollout(&self.tokenizer, &self.sandbox, &self.config.chat, &requests, &rollout, None)?;
        let gen_seconds = t0.elapsed().as_secs_f64();
        let episodes = out.episodes;
        let groups: Vec<Vec<Candidate>> = episodes.chunks(samples).map(|g| g.iter().map(rstar2_rollout::Episode::candidate).collect()).collect();
        let selection = rstar2_grpo::prepare_step(&groups, &self.selection(), mix_seed(self.config.seed, 0x5e1, self.state.rl_step as u64), false);
        let kept: Vec<(&rstar2_rollout::Episode, f32)> = selection.kept.iter().map(|k| (&episodes[k.group * samples + k.index], k.advantage)).collect();
        let loss_config = LossConfig { clip_low: rl.clip_low, clip_high: rl.clip_high, ..Default::default() };
        let lr = LrSchedule::constant(rl.lr, rl.warmup_steps).at(self.state.stage_step as u64 + if self.state.stage == 0 { 0 } else { rl.warmup_steps });
        let (loss, grad_norm, loss_metrics) = if kept.is_empty() { (0.0, 0.0, Default::default()) } else { self.policy_update(&kept, &loss_config, lr)? };
        self.replicas.end_phase();
        let positives: Vec<&rstar2_rollout::Episode> = episodes.iter().filter(|e| e.reward == Some(1.0)).collect();
        let kept_pos: Vec<&rstar2_rollout::Episode> = kept.iter().filter(|(e, _)| e.reward == Some(1.0)).map(|(e, _)| *e).collect();
        let (abandoned, held_back) = self.sandbox.abandoned_threads();
        let m = report::StepMetrics {
            phase: "rl".into(),
            stage: self.state.stage + 1,
            stage_step: self.state.stage_step,
            rl_step: self.state.rl_step,
            reward_mean: episodes.iter().map(|e| f64::from(e.reward.unwrap_or(0.0))).sum::<f64>() / episodes.len().max(1) as f64,
            groups: selection.metrics.groups,
            kept_groups: selection.metrics.kept_groups,
            all_correct_groups: selection.metrics.all_correct_groups,
            all_wrong_groups: selection.metrics.all_wrong_groups,
            kept_rollouts: selection.metrics.kept_rollouts,
            positive_tool_error_ratio: tool_error_ratio(positives.iter().copied()),
            kept_positive_tool_error_ratio: tool_error_ratio(kept_pos.iter().copied()),
            kept_positive_p_err: selection.metrics.kept_positive_p_err,
            tool_calls_per_episode: out.metrics.calls_per_episode,
            response_length: episodes.iter().map(|e| e.loss_mask.len() as f64).sum::<f64>() / episodes.len().max(1) as f64,
            finish_reasons: out.metrics.finish_reasons.clone(),
            loss,
            grad_norm,
            lr,
            clip_frac_low: loss_metrics.clip_frac_low,
            clip_frac_high: loss_metrics.clip_frac_high,
            logprob_gap_mean: loss_metrics.logprob_gap_mean,
            logprob_gap_max: loss_metrics.logprob_gap_max,
            tokens_per_second: out.metrics.tokens_per_second,
            generation_seconds: gen_seconds,
            step_seconds: t0.elapsed().as_secs_f64(),
            tool_threads_abandoned: abandoned,
            tool_threads_held_back: held_back,
            tool_interpreters_lost: self.sandbox.lost_interpreters(),
        };
        self.append_metrics(&serde_json::to_value(&m)?)?;
        Ok(m)
    }

    /// One policy-gradient update over the kept rollouts, shared over the replicas; the loss
    /// normalization is global, as if it were one batch.
    pub(super) fn policy_update(&mut self, kept: &[(&rstar2_rollout::Episode, f32)], loss_config: &LossConfig, lr: f32) -> anyhow::Result<(f64, f32, rstar2_grpo::loss::LossMetrics)> {
        let norms = Normalization { tokens: kept.iter().map(|(e, _)| e.model_tokens()).sum::<usize>().max(1), rollouts: kept.len() };
        let micro_batch_tokens = self.config.rl.micro_batch_tokens;
        let (totals, norm) =
            self.replicas.step(kept, |(e, _)| e.ids.len(), |policy, share, grads| rl_share(policy, share, loss_config, norms, micro_batch_tokens, grads), self.config.rl.max_grad_norm, lr);
        let [loss, low, high, gap, weight] = totals.sums[..] else { unreachable!("rl_share reports five sums") };
        let w = weight.max(1.0);
        let metrics = rstar2_grpo::loss::LossMetrics { clip_frac_low: low / w, clip_frac_high: high / w, logprob_gap_mean: gap / w, logprob_gap_max: totals.maxima[0].max(0.0), ..Default::default() };
        Ok((loss, norm, metrics))
    }
}

/// What the loss of a step divides by: all kept rollouts' model tokens (token-mean) or their
/// count (sequence-mean), over the whole step.
#[derive(Clone, Copy)]
pub(super) struct Normalization {
    tokens: usize,
    rollouts: usize,
}

/// One replica's share of a policy-gradient update: micro-batches of packed sequences, each
/// forward + backward, scaled by the step's global normalization. Sums: [loss, clip_frac_low,
/// clip_frac_high and logprob_gap_mean each times the micro-batch's tokens, those tokens];
/// maxima: [logprob_gap_max].
pub(super) fn rl_share(
    policy: &Policy,
    kept: &[(&rstar2_rollout::Episode, f32)],
    loss_config: &LossConfig,
    norms: Normalization,
    micro_batch_tokens: usize,
    grads: &mut rstar2_backend::Grads,
) -> Totals {
    let mut sums = [0.0f64; 5];
    let mut gap_max = f64::NEG_INFINITY;
    let mut start = 0;
    while start < kept.len() {
        let mut end = start + 1;
        let mut tokens = kept[start].0.ids.len();
        while end < kept.len() && tokens + kept[end].0.ids.len() <= micro_batch_tokens {
            tokens += kept[end].0.ids.len();
            end += 1;
        }
        let mb = &kept[start..end];
        let packed = Packed::new(mb);
        let (acts, lp) = policy.forward_logprobs(&packed.batch, &packed.targets);
        let mb_tokens = packed.model_tokens();
        let scale = match loss_config.aggregation {
            Aggregation::TokenMean => mb_tokens as f64 / norms.tokens as f64,
            _ => mb.len() as f64 / norms.rollouts as f64,
        };
        let (out, dlogprob) = packed.policy_loss(&lp, loss_config, scale as f32);
        policy.backward(&acts, &dlogprob, grads);
        let w = mb_tokens as f64;
        sums[0] += out.loss * scale;
        sums[1] += out.metrics.clip_frac_low * w;
        sums[2] += out.metrics.clip_frac_high * w;
        sums[3] += out.metrics.logprob_gap_mean * w;
        sums[4] += w;
        gap_max = gap_max.max(out.metrics.logprob_gap_max);
        start = end;
    }
    Totals { sums: sums.to_vec(), maxima: vec![gap_max] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective;
    use crate::replicas::Replicas;
    use crate::run::setup::training_policy;
    use rand::Rng;
    use rstar2_backend::Device;
    use rstar2_model::{AdamW, AdamWConfig, Config, Model, Params};
    use rstar2_rollout::{Episode, FinishReason};

    /// Random episodes for the tiny model: prompt, response (some tokens the tool's), sampler
    /// log-probs near the policy's, advantages of both signs.
    fn episodes(vocab: usize, n: usize) -> Vec<(Episode, f32)> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        (0..n)
            .map(|i| {
                let (prompt, response) = (rng.random_range(3..9), rng.random_range(4..20));
                let ids: Vec<u32> = (0..prompt + response).map(|_| rng.random_range(0..vocab as u32)).collect();
                let loss_mask: Vec<u8> = (0..response).map(|t| u8::from(t % 5 != 3)).collect();
                let logprobs = loss_mask.iter().map(|&m| if m == 1 { -rng.random_range(4.0..8.0f32) } else { 0.0 }).collect();
                let episode = Episode {
                    id: format!("p{i}"),
                    sample: 0,
                    engine: 0,
                    prompt_ids: ids[..prompt].to_vec(),
                    ids,
                    loss_mask,
                    logprobs,
                    turns: 1,
                    tool_calls: Vec::new(),
                    finish_reason: FinishReason::ALL[0],
                    text: String::new(),
                    reward: None,
                    extracted: None,
                };
                (episode, if i % 2 == 0 { 1.0 } else { -0.5 - i as f32 / 10.0 })
            })
            .collect()
    }

    /// Two CPU replicas take the same policy-gradient step as one: the same loss and gradient
    /// norm, and parameters equal up to the order of the float sums.
    #[test]
    fn rl_update_over_two_replicas_equals_one() {
        let config = Config::from_file(&crate::paths::workspace_root().join("models/tiny/config.json")).unwrap();
        let params = Params::random(&config, 3);
        let data = episodes(config.vocab_size, 7);
        let kept: Vec<(&Episode, f32)> = data.iter().map(|(e, a)| (e, *a)).collect();
        let norms = Normalization { tokens: kept.iter().map(|(e, _)| e.model_tokens()).sum(), rollouts: kept.len() };
        let loss_config = LossConfig::default();
        // AdamW's first step is lr * g / (|g| + eps): with the default eps (1e-8) a gradient
        // element near eps turns the summation-order noise of two replicas (1e-9) into a few
        // percent of lr (seen once in CI: 6.8%). A larger eps keeps the step a real AdamW step
        // and the comparison about the replicas.
        let adamw = AdamWConfig { eps: 1e-4, ..AdamWConfig::default() };
        let mut results = Vec::new();
        for replicas in [1, 2] {
            let policies = (0..replicas).map(|_| training_policy(&Device::Cpu, Model::new(config.clone(), params.clone()), AdamW::new(adamw, &params)).unwrap()).collect();
            let mut r = Replicas::new(policies, Box::new(collective::Alone));
            // Micro-batches of about two sequences, so shares hold several.
            let (totals, norm) = r.step(&kept, |(e, _)| e.ids.len(), |p, share, g| rl_share(p, share, &loss_config, norms, 40, g), 1.0, 1e-3);
            let after: Vec<Params> = r.policies().iter().map(|p| p.params().into_owned()).collect();
            results.push((totals, norm, after));
        }
        let (one, two) = (&results[0], &results[1]);
        assert!(one.1 > 0.0);
        assert!((one.1 - two.1).abs() <= 1e-5 * one.1, "gradient norms {} vs {}", one.1, two.1);
        let (l1, l2) = (one.0.sums[0], two.0.sums[0]);
        assert!(l1 != 0.0 && (l1 - l2).abs() <= 1e-6 * l1.abs(), "losses {l1} vs {l2}");
        assert_eq!(one.0.sums[4], two.0.sums[4], "trained tokens");
        // Both replicas took the same step, and it is the single replica's.
        assert_eq!(two.2[0].data, two.2[1].data);
        let moved = one.2[0].data.iter().flatten().zip(params.data.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let diff = one.2[0].data.iter().flatten().zip(two.2[0].data.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(moved > 1e-4, "the step moved the parameters by {moved}");
        assert!(diff <= 0.02 * moved, "one replica vs two differ by {diff}; the step moved them by {moved}");
    }
}
