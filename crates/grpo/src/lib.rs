//! GRPO-RoC, the algorithm of rStar2-Agent, without any model: reward verification, group
//! filtering, Resample-on-Correct down-sampling, advantages, and the clipped policy loss with
//! its gradient per token log-prob.
//!
//! Defaults follow the paper; the released code's variants are selectable where they differ
//! (top-k positives and first-k negatives in [`select::PositiveSelection::TopK`] /
//! [`select::NegativeSelection::First`], text-heuristic penalties in
//! [`penalty::release_penalties`], dual-clip in [`loss::LossConfig::dual_clip`]).
//!
//! ```
//! use rstar2_grpo::{prepare_step, select::{Candidate, Selection}};
//! // One prompt, four rollouts: two correct, two wrong; keep all (plain GRPO).
//! let group = vec![
//!     Candidate { reward: 1.0, penalty: 0.0, p_err: 0.0 },
//!     Candidate { reward: 0.0, penalty: 0.5, p_err: 0.5 },
//!     Candidate { reward: 1.0, penalty: 0.5, p_err: 0.5 },
//!     Candidate { reward: 0.0, penalty: 1.0, p_err: 1.0 },
//! ];
//! let step = prepare_step(&[group], &Selection::Grpo, 7, false);
//! assert_eq!(step.kept.len(), 4);
//! let sum: f32 = step.kept.iter().map(|k| k.advantage).sum();
//! assert!(sum.abs() < 1e-5);
//! ```
#![deny(missing_docs)]

pub mod loss;
pub mod math;
pub mod penalty;
pub mod reward;
pub mod select;

use serde::{Deserialize, Serialize};

use select::{Candidate, GroupOutcome, Selection, advantages, select_group};

/// A rollout that survived selection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kept {
    /// Index of its group (prompt).
    pub group: usize,
    /// Index within the group.
    pub index: usize,
    /// Its advantage, computed over the kept rollouts of its group.
    pub advantage: f32,
}

/// Counts from selection, logged per step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SelectionMetrics {
    /// Groups seen.
    pub groups: usize,
    /// Groups kept.
    pub kept_groups: usize,
    /// Groups dropped because all rewards were equal.
    pub all_correct_groups: usize,
    /// Of those, all wrong.
    pub all_wrong_groups: usize,
    /// Groups dropped for having fewer rollouts than G.
    pub too_small_groups: usize,
    /// Rollouts kept.
    pub kept_rollouts: usize,
    /// Correct rollouts kept.
    pub kept_positives: usize,
    /// Mean p_err among kept correct rollouts (the paper's Fig. 4 quantity), if any.
    pub kept_positive_p_err: Option<f64>,
}

/// The outcome of selection for one step.
#[derive(Debug, Clone, Default)]
pub struct StepSelection {
    /// Kept rollouts with their advantages.
    pub kept: Vec<Kept>,
    /// Counts.
    pub metrics: SelectionMetrics,
}

/// Filters and down-samples every group, then computes advantages over what each group kept.
/// Group `g` uses seed `seed + g`, so the step is reproducible.
pub fn prepare_step(groups: &[Vec<Candidate>], selection: &Selection, seed: u64, population_std: bool) -> StepSelection {
    let mut out = StepSelection::default();
    let mut p_err_sum = 0.0;
    out.metrics.groups = groups.len();
    for (g, group) in groups.iter().enumerate() {
        match select_group(group, selection, seed.wrapping_add(g as u64)) {
            GroupOutcome::AllEqual => {
                if group.first().is_some_and(|c| c.reward > 0.0) {
                    out.metrics.all_correct_groups += 1;
                } else {
                    out.metrics.all_wrong_groups += 1;
                }
            }
            GroupOutcome::TooSmall => out.metrics.too_small_groups += 1,
            GroupOutcome::Kept(indices) => {
                out.metrics.kept_groups += 1;
                let rewards: Vec<f32> = indices.iter().map(|&i| group[i].reward).collect();
                for (&index, advantage) in indices.iter().zip(advantages(&rewards, population_std)) {
                    if group[index].reward > 0.0 {
                        out.metrics.kept_positives += 1;
                        p_err_sum += group[index].p_err;
                    }
                    out.kept.push(Kept { group: g, index, advantage });
                }
            }
        }
    }
    out.metrics.kept_rollouts = out.kept.len();
    out.metrics.kept_positive_p_err = (out.metrics.kept_positives > 0).then(|| p_err_sum / out.metrics.kept_positives as f64);
    out
}
