//! Property tests: kept sizes, class floors, zero-sum advantages, and the loss gradient against
//! finite differences of the loss.

use proptest::prelude::*;
use rstar2_grpo::loss::{Aggregation, LossConfig, RolloutTokens, policy_loss};
use rstar2_grpo::select::{Candidate, GroupOutcome, NegativeSelection, PositiveSelection, Selection, advantages, allocate, select_group};

proptest! {
    #[test]
    fn allocation_keeps_exactly_g_with_floors(n_pos in 0usize..=64, n_neg in 0usize..=64, keep in 4usize..=32) {
        prop_assume!(n_pos + n_neg >= keep);
        if let Some((k_pos, k_neg)) = allocate(n_pos, n_neg, keep, 2) {
            prop_assert_eq!(k_pos + k_neg, keep);
            prop_assert!(k_pos <= n_pos && k_neg <= n_neg);
            prop_assert!(k_pos >= 2.min(n_pos) && k_neg >= 2.min(n_neg));
        } else {
            prop_assert!(2.min(n_pos) + 2.min(n_neg) > keep);
        }
    }

    #[test]
    fn selection_keeps_g_and_both_classes(rewards in prop::collection::vec(0u8..2, 8..=32), penalties in prop::collection::vec(0.0f64..2.0, 32), seed in any::<u64>(), topk in any::<bool>()) {
        let group: Vec<Candidate> = rewards.iter().zip(&penalties).map(|(&r, &p)| Candidate { reward: f32::from(r), penalty: p, p_err: p / 2.0 }).collect();
        let keep = group.len() / 2;
        let positives = if topk { PositiveSelection::TopK } else { PositiveSelection::Sample { smoothing: 0.1 } };
        let sel = Selection::GrpoRoc { keep, min_per_class: 2, positives, negatives: NegativeSelection::Uniform };
        let n_pos = rewards.iter().filter(|&&r| r == 1).count();
        match select_group(&group, &sel, seed) {
            GroupOutcome::AllEqual => prop_assert!(n_pos == 0 || n_pos == group.len()),
            GroupOutcome::TooSmall => prop_assert!(false, "2G rollouts are never too few for G"),
            GroupOutcome::Kept(kept) => {
                let mut dedup = kept.clone();
                dedup.dedup();
                prop_assert_eq!(dedup.len(), kept.len());
                let floors = 2.min(n_pos) + 2.min(group.len() - n_pos);
                if floors <= keep {
                    prop_assert_eq!(kept.len(), keep);
                }
                let kept_pos = kept.iter().filter(|&&i| group[i].reward > 0.0).count();
                prop_assert!(kept_pos >= 1 && kept_pos < kept.len(), "both classes survive");
            }
        }
    }

    #[test]
    fn advantages_sum_to_zero(rewards in prop::collection::vec(0u8..2, 2..40)) {
        let r: Vec<f32> = rewards.iter().map(|&x| f32::from(x)).collect();
        let a = advantages(&r, false);
        prop_assert!(a.iter().sum::<f32>().abs() < 1e-3);
    }

    #[test]
    fn loss_gradient_matches_finite_differences(
        lp in prop::collection::vec(-3.0f64..0.0, 1..12),
        shift in prop::collection::vec(-0.6f64..0.6, 12),
        mask in prop::collection::vec(0u8..2, 12),
        adv in -2.0f32..2.0,
        agg in 0usize..3,
        dual in any::<bool>(),
    ) {
        let n = lp.len();
        let old: Vec<f32> = lp.iter().map(|&x| x as f32).collect();
        let cur: Vec<f32> = lp.iter().zip(&shift).map(|(&x, &s)| (x + s) as f32).collect();
        let mask = &mask[..n];
        let aggregation = [Aggregation::TokenMean, Aggregation::SequenceMean, Aggregation::DrGrpo { norm_len: 16 }][agg];
        let config = LossConfig { aggregation, dual_clip: dual.then_some(3.0), ..Default::default() };
        let eval = |cur: &[f32]| {
            let r = [RolloutTokens { logprobs: cur, old_logprobs: &old, rollout_logprobs: &old, mask, advantage: adv }];
            policy_loss(&r, &config)
        };
        let base = eval(&cur);
        let h = 1e-3f32;
        for t in 0..n {
            // Skip points within h of a clip boundary, where the loss has a kink.
            let log_ratio = f64::from(cur[t] - old[t]);
            let near_kink = [(0.8f64).ln(), (1.28f64).ln(), (3.0f64).ln()].iter().any(|k| (log_ratio - k).abs() < 5e-3);
            if near_kink { continue; }
            let mut up = cur.clone();
            up[t] += h;
            let mut down = cur.clone();
            down[t] -= h;
            let fd = (eval(&up).loss - eval(&down).loss) / (2.0 * f64::from(h));
            let analytic = f64::from(base.grads[0][t]);
            prop_assert!((fd - analytic).abs() < 1e-3 * (1.0 + analytic.abs()), "token {t}: fd {fd} analytic {analytic}");
        }
    }
}
