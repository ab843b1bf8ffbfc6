//! Group filtering and Resample-on-Correct (RoC) down-sampling (paper §2.2; release
//! `down_sample/`).
//!
//! From a group of rollouts of one prompt (2G when oversampling), groups whose rewards are all
//! equal carry no signal and are dropped. The rest keep G rollouts: each class (correct,
//! incorrect) keeps its share of G, rounded half-to-even, with a floor of 2 per class; incorrect
//! rollouts are kept uniformly at random; correct ones favour low p_err + p_format.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

/// How correct rollouts are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum PositiveSelection {
    /// Paper: sample without replacement with weight `1 / (penalty + smoothing)`, so a rollout
    /// with penalty 0 has the largest finite weight (1/smoothing) rather than an infinite one.
    Sample {
        /// Added to the penalty before inverting; smaller favours clean rollouts more sharply.
        smoothing: f64,
    },
    /// Release: stable sort by penalty, keep the lowest.
    TopK,
}

impl Default for PositiveSelection {
    fn default() -> Self {
        PositiveSelection::Sample { smoothing: 0.1 }
    }
}

/// How incorrect rollouts are chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NegativeSelection {
    /// Paper: a uniform random subset.
    #[default]
    Uniform,
    /// Release: the first ones in generation order (i.i.d. rollouts make this uniform too).
    First,
}

/// Which algorithm keeps which rollouts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "algo")]
pub enum Selection {
    /// GRPO-RoC: keep `keep` of each group (G of 2G).
    GrpoRoc {
        /// Rollouts kept per group (G).
        keep: usize,
        /// Floor per class (2 in the paper and release).
        min_per_class: usize,
        /// Correct rollouts.
        positives: PositiveSelection,
        /// Incorrect rollouts.
        negatives: NegativeSelection,
    },
    /// Plain GRPO (the ablation): every rollout of a group with mixed rewards is kept.
    Grpo,
}

impl Selection {
    /// GRPO-RoC with the paper's choices, keeping `keep` per group.
    pub fn roc(keep: usize) -> Self {
        Selection::GrpoRoc { keep, min_per_class: 2, positives: PositiveSelection::default(), negatives: NegativeSelection::Uniform }
    }
}

/// One rollout as selection sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// 1 for correct, 0 for incorrect.
    pub reward: f32,
    /// p_err + p_format.
    pub penalty: f64,
    /// p_err alone (for the metric "tool-error ratio among kept positives").
    pub p_err: f64,
}

/// What happened to one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOutcome {
    /// All rewards equal: no learning signal.
    AllEqual,
    /// Fewer rollouts than `keep`.
    TooSmall,
    /// Indices (into the group, ascending) of the kept rollouts.
    Kept(Vec<usize>),
}

/// `round(num / den)` with ties to even, exactly (Python's `round`).
pub fn div_round_half_even(num: usize, den: usize) -> usize {
    let (q, r) = (num / den, num % den);
    match (2 * r).cmp(&den) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q % 2),
    }
}

/// How many positives and negatives to keep: `(k_pos, k_neg)`, or `None` when the floors cannot
/// both be met within `keep` (then everything is kept).
pub fn allocate(n_pos: usize, n_neg: usize, keep: usize, min_per_class: usize) -> Option<(usize, usize)> {
    let n = n_pos + n_neg;
    let (floor_pos, floor_neg) = (min_per_class.min(n_pos), min_per_class.min(n_neg));
    if floor_pos + floor_neg > keep {
        return None;
    }
    // The release rounds both shares half-to-even, which sums to `keep` when G is even (2G -> G);
    // deriving k_pos from k_neg gives the same numbers there and stays exact for odd G.
    let mut k_neg = div_round_half_even(n_neg * keep, n);
    let mut k_pos = keep - k_neg;
    if k_neg <= floor_neg {
        k_neg = floor_neg;
        k_pos = keep - k_neg;
    }
    if k_pos <= floor_pos {
        k_pos = floor_pos;
        k_neg = keep - k_pos;
    }
    // A class cannot give more than it has; the other makes up the difference.
    if k_pos > n_pos {
        k_neg += k_pos - n_pos;
        k_pos = n_pos;
    }
    if k_neg > n_neg {
        k_pos += k_neg - n_neg;
        k_neg = n_neg;
    }
    Some((k_pos, k_neg))
}

/// Selects the rollouts of one group. Seeded: the same `seed` gives the same choice.
pub fn select_group(group: &[Candidate], selection: &Selection, seed: u64) -> GroupOutcome {
    let Some(first) = group.first() else { return GroupOutcome::AllEqual };
    if group.iter().all(|c| c.reward == first.reward) {
        return GroupOutcome::AllEqual;
    }
    let Selection::GrpoRoc { keep, min_per_class, positives, negatives } = *selection else {
        return GroupOutcome::Kept((0..group.len()).collect());
    };
    if group.len() < keep {
        return GroupOutcome::TooSmall;
    }
    let pos: Vec<usize> = (0..group.len()).filter(|&i| group[i].reward > 0.0).collect();
    let neg: Vec<usize> = (0..group.len()).filter(|&i| group[i].reward <= 0.0).collect();
    let Some((k_pos, k_neg)) = allocate(pos.len(), neg.len(), keep, min_per_class) else {
        return GroupOutcome::Kept((0..group.len()).collect());
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut kept = match positives {
        PositiveSelection::TopK => {
            let mut sorted = pos.clone();
            sorted.sort_by(|&a, &b| group[a].penalty.total_cmp(&group[b].penalty));
            sorted.truncate(k_pos);
            sorted
        }
        PositiveSelection::Sample { smoothing } => weighted_sample(&pos, |i| 1.0 / (group[i].penalty.max(0.0) + smoothing), k_pos, &mut rng),
    };
    match negatives {
        NegativeSelection::First => kept.extend(neg.iter().take(k_neg)),
        NegativeSelection::Uniform => {
            let mut shuffled = neg.clone();
            shuffled.shuffle(&mut rng);
            kept.extend(shuffled.into_iter().take(k_neg));
        }
    }
    kept.sort_unstable();
    GroupOutcome::Kept(kept)
}

/// `k` distinct items drawn with probability proportional to `weight` at each draw
/// (Efraimidis-Spirakis: the `k` largest keys `ln(u) / w`).
fn weighted_sample(items: &[usize], weight: impl Fn(usize) -> f64, k: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut keyed: Vec<(f64, usize)> = items
        .iter()
        .map(|&i| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            (u.ln() / weight(i), i)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().take(k).map(|(_, i)| i).collect()
}

/// Advantages `(r - mean) / (std + 1e-6)` over a kept group; `std` is unbiased (N - 1) unless
/// `population_std`. A group of one gets mean 0 and std 1, as verl does.
pub fn advantages(rewards: &[f32], population_std: bool) -> Vec<f32> {
    let n = rewards.len();
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![rewards[0]];
    }
    let mean = rewards.iter().map(|&r| f64::from(r)).sum::<f64>() / n as f64;
    let ss = rewards.iter().map(|&r| (f64::from(r) - mean).powi(2)).sum::<f64>();
    let std = (ss / if population_std { n as f64 } else { (n - 1) as f64 }).sqrt();
    rewards.iter().map(|&r| ((f64::from(r) - mean) / (std + 1e-6)) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_round_half_even() {
        assert_eq!(div_round_half_even(3, 2), 2); // 1.5 -> 2
        assert_eq!(div_round_half_even(5, 2), 2); // 2.5 -> 2
        assert_eq!(div_round_half_even(29, 2), 14); // 14.5 -> 14
        assert_eq!(div_round_half_even(31, 2), 16); // 15.5 -> 16
        assert_eq!(div_round_half_even(1, 2), 0); // 0.5 -> 0
        assert_eq!(div_round_half_even(7, 3), 2);
        assert_eq!(div_round_half_even(8, 3), 3);
    }

    /// The worked examples of the reference: 32 rollouts down to 16.
    #[test]
    fn reference_allocations() {
        assert_eq!(allocate(2, 30, 16, 2), Some((2, 14)));
        assert_eq!(allocate(3, 29, 16, 2), Some((2, 14)));
        assert_eq!(allocate(30, 2, 16, 2), Some((14, 2)));
        assert_eq!(allocate(31, 1, 16, 2), Some((15, 1)));
        assert_eq!(allocate(16, 16, 16, 2), Some((8, 8)));
        assert_eq!(allocate(1, 31, 16, 2), Some((1, 15)));
    }

    #[test]
    fn advantages_by_hand() {
        // mean 0.5, unbiased std sqrt(1/3) for [1, 0, 1, 0].
        let a = advantages(&[1.0, 0.0, 1.0, 0.0], false);
        let s = (1.0f64 / 3.0).sqrt();
        for (got, want) in a.iter().zip([0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 0.5 / (s + 1e-6), -0.5 / (s + 1e-6)]) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        let p = advantages(&[1.0, 0.0], true);
        assert!((p[0] - 1.0).abs() < 1e-5 && (p[1] + 1.0).abs() < 1e-5);
        assert_eq!(advantages(&[1.0], false), vec![1.0]);
    }

    fn cand(reward: f32, penalty: f64) -> Candidate {
        Candidate { reward, penalty, p_err: penalty }
    }

    #[test]
    fn release_topk_keeps_lowest_penalty_positives_and_first_negatives() {
        let mut group: Vec<Candidate> = (0..8).map(|i| cand(0.0, i as f64)).collect();
        group.extend([cand(1.0, 0.9), cand(1.0, 0.1), cand(1.0, 0.5), cand(1.0, 0.0)]);
        let sel = Selection::GrpoRoc { keep: 6, min_per_class: 2, positives: PositiveSelection::TopK, negatives: NegativeSelection::First };
        // n=12, keep 6: k_pos = round(4*6/12) = 2, k_neg = round(8*6/12) = 4.
        assert_eq!(select_group(&group, &sel, 0), GroupOutcome::Kept(vec![0, 1, 2, 3, 9, 11]));
    }

    #[test]
    fn filtering_and_plain_grpo() {
        let same = vec![cand(1.0, 0.0); 4];
        assert_eq!(select_group(&same, &Selection::roc(2), 1), GroupOutcome::AllEqual);
        assert_eq!(select_group(&same, &Selection::Grpo, 1), GroupOutcome::AllEqual);
        let mixed = vec![cand(1.0, 0.0), cand(0.0, 0.0), cand(0.0, 0.0)];
        assert_eq!(select_group(&mixed, &Selection::Grpo, 1), GroupOutcome::Kept(vec![0, 1, 2]));
        assert_eq!(select_group(&mixed, &Selection::roc(4), 1), GroupOutcome::TooSmall);
    }

    #[test]
    fn paper_sampling_prefers_clean_positives() {
        // 2 clean and 2 dirty positives (penalty 1.5), 4 negatives, keep 4 -> 2 positives.
        let group = vec![cand(1.0, 1.5), cand(1.0, 0.0), cand(1.0, 1.5), cand(1.0, 0.0), cand(0.0, 0.0), cand(0.0, 0.0), cand(0.0, 0.0), cand(0.0, 0.0)];
        let mut clean = 0;
        let trials = 2000;
        for seed in 0..trials {
            let GroupOutcome::Kept(kept) = select_group(&group, &Selection::roc(4), seed) else { panic!() };
            assert_eq!(kept.len(), 4);
            assert_eq!(kept.iter().filter(|&&i| i < 4).count(), 2);
            clean += kept.iter().filter(|&&i| i == 1 || i == 3).count();
        }
        // Weights 10 (clean) vs 0.625 (dirty), two draws without replacement:
        // P(first clean) = 20/21.25; then P(clean) = 10/11.25, or 20/20.625 after a dirty one.
        let p1 = 20.0 / 21.25;
        let expected = (p1 * (1.0 + 10.0 / 11.25) + (1.0 - p1) * (20.0 / 20.625)) / 2.0;
        let share = clean as f64 / (2 * trials) as f64;
        assert!((share - expected).abs() < 0.02, "{share} vs {expected}");
        assert_eq!(select_group(&group, &Selection::roc(4), 7), select_group(&group, &Selection::roc(4), 7));
    }
}
