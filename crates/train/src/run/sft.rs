//! Stage 0: non-reasoning tool-format SFT, and one replica's share of an SFT step's gradient.

use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rstar2_backend::Policy;
use rstar2_model::{Batch, LrSchedule};
use rstar2_tasks::Task;
use rstar2_tasks::synth::{Split, SynthConfig};

use super::Trainer;
use super::setup::mix_seed;

use crate::progress;
use crate::replicas::Totals;

impl Trainer {
    pub(super) fn sft(&mut self) -> anyhow::Result<()> {
        let c = self.config.sft.clone();
        if c.epochs == 0 || c.examples == 0 {
            return Ok(());
        }
        let mut tasks: Vec<Task> = self.train.iter().filter(|t| t.code.is_some() && c.levels.contains(&t.level)).take(c.examples).cloned().collect();
        if tasks.is_empty() {
            // A real data set has no code solutions to build traces from: the format SFT (the
            // tool-call and answer format, not math) uses synthetic problems of sft.levels.
            let synth = SynthConfig { levels: c.levels.clone(), ..Default::default() };
            tasks = rstar2_tasks::synth::generate(&synth, Split::Train, c.examples, mix_seed(self.config.seed, 0x5f7, 1))?;
            self.say(&format!("SFT on {} synthetic problems' tool-format traces (the RL data has no code solutions)", tasks.len()));
        }
        let traces = rstar2_tasks::sft::build_traces(&tasks, &self.sandbox, &self.config.chat, &c.mix, mix_seed(self.config.seed, 0x5f7, 0))?;
        let examples: Vec<_> = traces.iter().map(|t| t.tokenize(&self.tokenizer)).collect();
        let steps_per_epoch = examples.len().div_ceil(c.batch_size);
        let total = (steps_per_epoch * c.epochs) as u64;
        let schedule = LrSchedule { lr: c.lr, warmup_steps: ((total as f32 * c.warmup_fraction).ceil() as u64).max(1), cosine_total_steps: Some(total), min_ratio: 0.0 };
        let bar = progress::bar(total, "SFT");
        let mut step = 0u64;
        for epoch in 0..c.epochs {
            let mut order: Vec<usize> = (0..examples.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(self.config.seed, 0x5f7, epoch as u64 + 1)));
            for chunk in order.chunks(c.batch_size) {
                let t0 = Instant::now();
                let part: Vec<&rstar2_tasks::sft::SftExample> = chunk.iter().map(|&i| &examples[i]).collect();
                // Mean cross-entropy over the batch's trained tokens: each replica's share
                // divides by the whole batch's count.
                let count: f64 = part.iter().map(|e| e.mask[1..].iter().map(|&m| f64::from(m)).sum::<f64>()).sum();
                let lr = schedule.at(step);
                let (totals, norm) = self.replicas.step(&part, |e| e.tokens.len(), |policy, share, grads| sft_share(policy, share, count, grads), 1.0, lr);
                let loss = if count > 0.0 { totals.sums[0] / count } else { 0.0 };
                let tokens: usize = part.iter().map(|e| e.tokens.len()).sum();
                let secs = t0.elapsed().as_secs_f64();
                bar.inc(1);
                bar.set_message(format!("epoch {} loss {loss:.3} {:.0} tok/s", epoch + 1, tokens as f64 / secs));
                self.append_metrics(&serde_json::json!({"phase": "sft", "step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": tokens, "tokens_per_second": tokens as f64 / secs, "step_seconds": secs}))?;
                step += 1;
            }
        }
        bar.finish_and_clear();
        self.say(&format!("SFT: {} traces x {} epochs, {} steps in {:.0}s", examples.len(), c.epochs, step, bar.elapsed().as_secs_f64()));
        Ok(())
    }
}

/// One replica's share of an SFT batch: sums of -logprob over trained tokens, gradients of the
/// batch mean (`count` trained tokens in the whole batch). Sums: [loss * count].
pub fn sft_share(policy: &Policy, share: &[&rstar2_tasks::sft::SftExample], count: f64, grads: &mut rstar2_backend::Grads) -> Totals {
    if share.is_empty() || count == 0.0 {
        return Totals { sums: vec![0.0], maxima: Vec::new() };
    }
    let seqs: Vec<Vec<u32>> = share.iter().map(|e| e.tokens.clone()).collect();
    let batch = Batch::new(&seqs);
    let (targets, mask) = rstar2_tasks::sft::next_token_targets(share);
    let (acts, lp) = policy.forward_logprobs(&batch, &targets);
    let loss_sum: f64 = -lp.iter().zip(&mask).map(|(&l, &m)| f64::from(l * m)).sum::<f64>();
    let dlogprob: Vec<f32> = mask.iter().map(|&m| -m / count as f32).collect();
    policy.backward(&acts, &dlogprob, grads);
    Totals { sums: vec![loss_sum], maxima: Vec::new() }
}
