//! Data parallelism: one replica of the policy per device (`--device gpu:0,gpu:1,cpu`), and with
//! MPI the replicas of every rank.
//!
//! - Rollouts: a step's prompts are sharded over the ranks by whole GRPO groups, in proportion
//!   to each rank's measured rollout throughput; inside a rank every replica's engine pulls
//!   trajectories from one queue. Trajectories keep the seeds they would have in one batch
//!   ([`RolloutConfig::first_trajectory`]), and every rank receives every episode, so rewards,
//!   selection and advantages are the same on all of them.
//! - Updates: the work (kept rollouts, SFT sequences) is split over all replicas in proportion
//!   to their measured training throughput; each accumulates its share's gradient with the
//!   global normalization (token-mean over the whole step), the host sums them (then MPI
//!   all-reduces them in buckets), and every replica takes the same optimizer step with the
//!   same gradient.
//! - Every [`Replicas::check_every`] updates the replicas' parameters are compared by checksum;
//!   a drift beyond [`DRIFT_TOLERANCE`] (a CPU and a GPU round AdamW differently) re-broadcasts
//!   rank 0's first replica and is logged.

use std::ops::Range;
use std::time::Instant;

use rstar2_backend::{Grads, Policy};
use rstar2_model::{Params, Tokenizer};
use rstar2_rollout::engine::{Engine, policy_engine};
use rstar2_rollout::{ChatFormat, Episode, Generated, ProgressFn, Request, RolloutConfig, RolloutMetrics, generate};
use rstar2_sandbox::Sandbox;
use serde::{Deserialize, Serialize};

use crate::collective::{BUCKET_FLOATS, Collective};

/// Relative difference of parameter checksums beyond which replicas are re-synchronized.
pub const DRIFT_TOLERANCE: f64 = 1e-5;

/// Sums (and maxima) a replica's share of an update reports; added over replicas and ranks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub sums: Vec<f64>,
    pub maxima: Vec<f64>,
}

/// The policy's replicas in this process, and the job's other ranks.
pub struct Replicas {
    policies: Vec<Policy>,
    comm: Box<dyn Collective>,
    /// Training tokens per second of each local replica in its last update (shares follow it).
    train_speed: Vec<f64>,
    /// Rollout tokens per second of each rank in the last rollout.
    rollout_speed: Vec<f64>,
    updates: usize,
    /// Compare replicas every this many updates (0: never).
    pub check_every: usize,
    /// Re-synchronizations so far.
    pub resyncs: usize,
}

/// What a rank sends the others after its share of a rollout.
#[derive(Serialize, Deserialize)]
struct RolloutShare {
    episodes: Vec<Episode>,
    metrics: RolloutMetrics,
}

impl Replicas {
    /// `policies`: this process's replicas, built from the same parameters.
    pub fn new(policies: Vec<Policy>, comm: Box<dyn Collective>) -> Replicas {
        assert!(!policies.is_empty(), "at least one replica");
        let (local, ranks) = (policies.len(), comm.size());
        Replicas { policies, comm, train_speed: vec![1.0; local], rollout_speed: vec![1.0; ranks], updates: 0, check_every: 10, resyncs: 0 }
    }

    /// The replicas of this process.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The first replica: the one checkpoints and evaluations read.
    pub fn first(&self) -> &Policy {
        &self.policies[0]
    }

    /// The job's collective operations.
    pub fn comm(&self) -> &dyn Collective {
        &*self.comm
    }

    /// Whether this process writes the run's files (rank 0).
    pub fn is_leader(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Replicas in the whole job.
    pub fn total(&self) -> usize {
        let mut n = [self.policies.len() as f64];
        self.comm.all_reduce_sum_f64(&mut n);
        n[0] as usize
    }

    /// Makes every replica's decode copies fresh.
    pub fn refresh_decode_weights(&mut self) -> anyhow::Result<()> {
        for p in &mut self.policies {
            p.refresh_decode_weights()?;
        }
        Ok(())
    }

    /// Frees pooled device memory between phases.
    pub fn end_phase(&self) {
        self.policies.iter().for_each(Policy::end_phase);
    }

    /// Fresh optimizer moments everywhere (a new phase or stage).
    pub fn reset_optimizer(&mut self) {
        self.policies.iter_mut().for_each(Policy::reset_optimizer);
    }

    /// `config.samples` episodes per request, over every replica of the job; every rank gets
    /// all of them, in request order.
    pub fn rollout(
        &mut self,
        tokenizer: &Tokenizer,
        sandbox: &Sandbox,
        chat: &ChatFormat,
        requests: &[Request],
        config: &RolloutConfig,
        progress: Option<ProgressFn<'_>>,
    ) -> anyhow::Result<Generated> {
        self.refresh_decode_weights()?;
        let ones = vec![1usize; requests.len()];
        let mine = shares(&ones, &self.rollout_speed)[self.comm.rank()].clone();
        let local = &requests[mine.clone()];
        let config = RolloutConfig { first_trajectory: config.first_trajectory + (mine.start * config.samples) as u64, ..config.clone() };
        let out = if local.is_empty() {
            Generated { episodes: Vec::new(), metrics: RolloutMetrics::default() }
        } else {
            let mut engines: Vec<Box<dyn Engine + '_>> = self.policies.iter().map(|p| policy_engine(p, kv_capacity(p, local, tokenizer, chat, config.max_response_tokens, config.samples))).collect();
            let refs: Vec<&mut dyn Engine> = engines.iter_mut().map(|e| -> &mut dyn Engine { &mut **e }).collect();
            generate(refs, tokenizer, sandbox, local, &config, progress)?
        };
        self.end_phase();
        if self.comm.size() == 1 {
            return Ok(out);
        }
        let share = serde_json::to_vec(&RolloutShare { episodes: out.episodes, metrics: out.metrics }).expect("episodes serialize");
        let shares: Vec<RolloutShare> = self.comm.all_gather_bytes(&share).iter().map(|b| serde_json::from_slice(b).expect("episodes from a rank of this job")).collect();
        for (speed, s) in self.rollout_speed.iter_mut().zip(&shares) {
            if s.metrics.tokens_per_second > 0.0 {
                *speed = s.metrics.tokens_per_second;
            }
        }
        Ok(merge(shares))
    }

    /// One optimizer step over `items`: `work` accumulates a replica's share (it must apply the
    /// step's global normalization) into the gradients and reports its totals; `cost` (tokens)
    /// sizes the shares. Returns the job's totals and the gradient norm before clipping.
    pub fn step<T: Sync>(&mut self, items: &[T], cost: impl Fn(&T) -> usize, work: impl Fn(&Policy, &[T], &mut Grads) -> Totals + Sync, max_norm: f32, lr: f32) -> (Totals, f32) {
        let costs: Vec<usize> = items.iter().map(&cost).collect();
        // Every rank computes the same split from the same (all-reduced) speeds.
        let mut rank_speed = vec![0.0; self.comm.size()];
        rank_speed[self.comm.rank()] = self.train_speed.iter().sum();
        self.comm.all_reduce_sum_f64(&mut rank_speed);
        let ranks = shares(&costs, &rank_speed);
        let mine = ranks[self.comm.rank()].clone();
        let local = shares(&costs[mine.clone()], &self.train_speed);
        // One replica's share: its gradients, totals and seconds.
        let share = |policy: &Policy, range: &Range<usize>| {
            let t0 = Instant::now();
            let mut grads = policy.zero_grads();
            let totals = work(policy, &items[mine.start + range.start..mine.start + range.end], &mut grads);
            (grads, totals, t0.elapsed().as_secs_f64())
        };
        let results: Vec<(Grads, Totals, f64)> = if self.policies.len() == 1 {
            vec![share(&self.policies[0], &local[0])]
        } else {
            std::thread::scope(|scope| {
                let share = &share;
                let handles: Vec<_> = self.policies.iter().zip(&local).map(|(policy, range)| scope.spawn(move || share(policy, range))).collect();
                handles.into_iter().map(|h| h.join().expect("a replica's update panicked")).collect()
            })
        };
        for ((speed, range), (_, _, secs)) in self.train_speed.iter_mut().zip(&local).zip(&results) {
            let tokens: usize = costs[mine.start + range.start..mine.start + range.end].iter().sum();
            if tokens > 0 && *secs > 0.0 {
                *speed = tokens as f64 / secs;
            }
        }
        let mut totals = Totals::default();
        let mut grads = Vec::with_capacity(results.len());
        for (g, t, _) in results {
            add_totals(&mut totals, &t);
            grads.push(g);
        }
        self.comm.all_reduce_sum_f64(&mut totals.sums);
        self.comm.all_reduce_max_f64(&mut totals.maxima);
        let norm = if self.policies.len() == 1 && self.comm.size() == 1 {
            let mut g = grads.pop().expect("one replica's gradients");
            self.policies[0].clip_and_step(&mut g, max_norm, lr)
        } else {
            let mut sum: Option<Params> = None;
            for (policy, g) in self.policies.iter().zip(grads) {
                let host = policy.grads_to_host(g);
                match &mut sum {
                    None => sum = Some(host),
                    Some(s) => add_params(s, &host),
                }
            }
            if let Some(s) = &mut sum {
                all_reduce_params(&*self.comm, s);
            }
            let mut norm = 0.0;
            let n = self.policies.len();
            for (i, policy) in self.policies.iter_mut().enumerate() {
                let host = if i + 1 == n { sum.take() } else { sum.clone() }.expect("the summed gradients");
                let mut g = policy.grads_from_host(host);
                norm = policy.clip_and_step(&mut g, max_norm, lr);
            }
            norm
        };
        self.updates += 1;
        if self.check_every > 0 && self.updates.is_multiple_of(self.check_every) {
            self.check_drift();
        }
        (totals, norm)
    }

    /// Compares every replica's parameter checksum with rank 0's first; beyond the tolerance,
    /// rank 0's first replica's parameters replace all others. Returns the largest relative
    /// difference seen.
    pub fn check_drift(&mut self) -> f64 {
        if self.policies.len() == 1 && self.comm.size() == 1 {
            return 0.0;
        }
        let mine: Vec<Vec<f64>> = self.policies.iter().map(|p| checksum(&p.params())).collect();
        let gathered = self.comm.all_gather_bytes(&serde_json::to_vec(&mine).expect("checksums serialize"));
        let all: Vec<Vec<Vec<f64>>> = gathered.iter().map(|b| serde_json::from_slice(b).expect("checksums from a rank")).collect();
        let reference = &all[0][0];
        let drift = all.iter().flatten().map(|c| relative_difference(c, reference)).fold(0.0, f64::max);
        if drift > DRIFT_TOLERANCE {
            self.resyncs += 1;
            if self.is_leader() {
                eprintln!("replicas drifted apart (largest relative checksum difference {drift:.2e} > {DRIFT_TOLERANCE:.0e}): re-broadcasting rank 0's first replica");
            }
            let mut params = self.first().params().into_owned();
            self.broadcast_params(&mut params);
            for p in &mut self.policies {
                p.set_params(&params);
            }
        }
        drift
    }

    /// Rank 0's `params` on every rank (shapes must already agree).
    pub fn broadcast_params(&self, params: &mut Params) {
        broadcast_params(&*self.comm, params);
    }
}

/// Rank 0's `params` on every rank of `comm` (shapes must already agree).
pub fn broadcast_params(comm: &dyn Collective, params: &mut Params) {
    if comm.size() == 1 {
        return;
    }
    for t in &mut params.data {
        let mut bytes: Vec<u8> = if comm.rank() == 0 { t.iter().flat_map(|x| x.to_le_bytes()).collect() } else { Vec::new() };
        comm.broadcast_bytes(&mut bytes);
        assert_eq!(bytes.len(), t.len() * 4, "broadcast_params: rank 0 sent a tensor of another size");
        for (x, b) in t.iter_mut().zip(bytes.chunks_exact(4)) {
            *x = f32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
    }
}

/// Sums `params` over the ranks of `comm`, in buckets of up to [`BUCKET_FLOATS`]: small tensors
/// travel together, so a step costs a few large messages rather than one per tensor.
pub fn all_reduce_params(comm: &dyn Collective, params: &mut Params) {
    if comm.size() == 1 {
        return;
    }
    let mut bucket: Vec<f32> = Vec::with_capacity(BUCKET_FLOATS);
    let mut members: Vec<usize> = Vec::new();
    let flush = |bucket: &mut Vec<f32>, members: &mut Vec<usize>, data: &mut [Vec<f32>]| {
        comm.all_reduce_sum_f32(bucket);
        let mut at = 0;
        for &i in members.iter() {
            let n = data[i].len();
            data[i].copy_from_slice(&bucket[at..at + n]);
            at += n;
        }
        bucket.clear();
        members.clear();
    };
    for i in 0..params.data.len() {
        let n = params.data[i].len();
        if n >= BUCKET_FLOATS {
            comm.all_reduce_sum_f32(&mut params.data[i]);
            continue;
        }
        if bucket.len() + n > BUCKET_FLOATS {
            flush(&mut bucket, &mut members, &mut params.data);
        }
        bucket.extend_from_slice(&params.data[i]);
        members.push(i);
    }
    if !members.is_empty() {
        flush(&mut bucket, &mut members, &mut params.data);
    }
}

/// Splits items with these costs into one contiguous range per weight, each range's cost in
/// proportion to its weight (ranges may be empty).
pub fn shares(costs: &[usize], weights: &[f64]) -> Vec<Range<usize>> {
    let total_cost: usize = costs.iter().sum();
    let total_weight: f64 = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    let mut out = Vec::with_capacity(weights.len());
    let (mut start, mut cum_cost, mut cum_weight) = (0usize, 0usize, 0.0f64);
    for (i, w) in weights.iter().enumerate() {
        cum_weight += w;
        let mut end = start;
        if i + 1 == weights.len() {
            end = costs.len();
        } else {
            let target = total_cost as f64 * cum_weight / total_weight;
            // Take items while that brings the cost closer to the target.
            while end < costs.len() && ((cum_cost + costs[end]) as f64 - target).abs() <= (cum_cost as f64 - target).abs() {
                cum_cost += costs[end];
                end += 1;
            }
        }
        out.push(start..end);
        start = end;
    }
    out
}

fn add_totals(into: &mut Totals, t: &Totals) {
    if into.sums.len() < t.sums.len() {
        into.sums.resize(t.sums.len(), 0.0);
    }
    if into.maxima.len() < t.maxima.len() {
        into.maxima.resize(t.maxima.len(), f64::NEG_INFINITY);
    }
    into.sums.iter_mut().zip(&t.sums).for_each(|(a, b)| *a += b);
    into.maxima.iter_mut().zip(&t.maxima).for_each(|(a, b)| *a = a.max(*b));
}

fn add_params(into: &mut Params, g: &Params) {
    for (a, b) in into.data.iter_mut().zip(&g.data) {
        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    }
}

/// Per tensor: the sum and the sum of squares, in f64.
fn checksum(p: &Params) -> Vec<f64> {
    p.data.iter().flat_map(|t| [t.iter().map(|&x| f64::from(x)).sum::<f64>(), t.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()]).collect()
}

fn relative_difference(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let scale = b.iter().map(|x| x.abs()).fold(0.0, f64::max).max(1e-12);
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / scale).fold(0.0, f64::max)
}

/// The episodes of every rank in rank order, with metrics over all of them (tokens per second
/// over the slowest rank's wall time).
fn merge(shares: Vec<RolloutShare>) -> Generated {
    let mut m = RolloutMetrics::default();
    let mut episodes = Vec::new();
    for s in shares {
        let sm = s.metrics;
        m.wall_seconds = m.wall_seconds.max(sm.wall_seconds);
        m.tool_tokens += sm.tool_tokens;
        m.tool_wait_seconds += sm.tool_wait_seconds;
        m.engine_occupancy.extend(sm.engine_occupancy);
        m.engine_episodes.extend(sm.engine_episodes);
        episodes.extend(s.episodes);
    }
    m.episodes = episodes.len();
    m.generated_tokens = episodes.iter().map(Episode::model_tokens).sum();
    m.tool_calls = episodes.iter().map(|e| e.tool_calls.len()).sum();
    m.tokens_per_second = m.generated_tokens as f64 / m.wall_seconds.max(1e-9);
    m.tool_calls_per_second = m.tool_calls as f64 / m.wall_seconds.max(1e-9);
    for reason in rstar2_rollout::FinishReason::ALL {
        m.finish_reasons.insert(reason.as_str().into(), episodes.iter().filter(|e| e.finish_reason == reason).count());
    }
    let n = episodes.len().max(1) as f64;
    m.calls_per_episode = m.tool_calls as f64 / n;
    m.errors_per_episode = episodes.iter().map(|e| e.tool_usage().failed_tool_calls as f64).sum::<f64>() / n;
    Generated { episodes, metrics: m }
}

/// KV capacity for every trajectory at once where the device has room for it; otherwise as
/// many as its KV budget holds (trajectories then queue for room), and at least one.
pub fn kv_capacity(policy: &Policy, requests: &[rstar2_rollout::Request], tokenizer: &Tokenizer, chat: &ChatFormat, max_response: usize, samples: usize) -> usize {
    let longest_prompt = requests.iter().map(|r| tokenizer.encode(&chat.prompt(&r.question)).len()).max().unwrap_or(0);
    let per = longest_prompt + max_response;
    (per * requests.len() * samples).min(policy.kv_token_budget()).max(per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_weights_and_cover_everything() {
        // Equal weights over equal costs: halves.
        assert_eq!(shares(&[1; 6], &[1.0, 1.0]), vec![0..3, 3..6]);
        // A device three times as fast takes three quarters of the tokens.
        assert_eq!(shares(&[10; 8], &[3.0, 1.0]), vec![0..6, 6..8]);
        // Uneven costs: the split lands on the item boundary nearest the target (60 of 120).
        assert_eq!(shares(&[50, 20, 30, 20], &[1.0, 1.0]), vec![0..2, 2..4]);
        // More weights than items: some shares are empty, none lost.
        let s = shares(&[5], &[1.0, 1.0, 1.0]);
        assert_eq!(s.iter().map(|r| r.len()).sum::<usize>(), 1);
        assert_eq!(s.last().unwrap().end, 1);
        assert_eq!(shares(&[], &[1.0, 2.0]), vec![0..0, 0..0]);
    }

    #[test]
    fn drift_is_relative_to_the_largest_checksum() {
        assert_eq!(relative_difference(&[1.0, 100.0], &[1.0, 100.0]), 0.0);
        assert!((relative_difference(&[1.0, 100.001], &[1.0, 100.0]) - 1e-5).abs() < 1e-9);
        assert_eq!(relative_difference(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }

    /// A replica pushed off (as a GPU's rounding would, much further) is found by the checksum
    /// comparison and given the first replica's parameters again; replicas in step are left
    /// alone.
    #[test]
    fn drifted_replicas_are_resynchronized() {
        let config = rstar2_model::Config::from_file(&crate::paths::workspace_root().join("models/tiny/config.json")).unwrap();
        let params = Params::random(&config, 3);
        let policies = (0..2)
            .map(|_| {
                crate::run::training_policy(
                    &rstar2_backend::Device::Cpu,
                    rstar2_model::Model::new(config.clone(), params.clone()),
                    rstar2_model::AdamW::new(rstar2_model::AdamWConfig::default(), &params),
                )
                .unwrap()
            })
            .collect();
        let mut r = Replicas::new(policies, Box::new(crate::collective::Alone));
        assert_eq!(r.check_drift(), 0.0);
        assert_eq!(r.resyncs, 0);
        let mut pushed = params.clone();
        pushed.data[0][0] += 0.5;
        r.policies[1].set_params(&pushed);
        let drift = r.check_drift();
        assert!(drift > crate::replicas::DRIFT_TOLERANCE, "drift {drift}");
        assert_eq!(r.resyncs, 1);
        assert_eq!(r.policies()[1].params().data, params.data);
    }
}
