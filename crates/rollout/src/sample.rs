//! Token sampling: temperature, top-k, top-p, greedy; the log-prob of the sampled token under
//! the distribution it was actually drawn from.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Sampling settings. `temperature == 0` is greedy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 takes the arg-max.
    pub temperature: f32,
    /// Nucleus: keep the smallest set of tokens whose probability reaches this (1 keeps all).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 keeps all).
    pub top_k: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { temperature: 1.0, top_p: 1.0, top_k: 0 }
    }
}

/// Draws one token from `logits` and returns it with its log-probability under the sampling
/// distribution (after temperature, top-k and top-p; 0 for greedy).
pub fn sample(logits: &[f32], config: &SamplingConfig, rng: &mut impl Rng) -> (u32, f32) {
    assert!(!logits.is_empty(), "sample: empty logits");
    if config.temperature <= 0.0 {
        let (best, _) = logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |acc, (i, &l)| if l > acc.1 { (i, l) } else { acc });
        return (best as u32, 0.0);
    }
    let inv_t = 1.0 / config.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Probabilities in f64 so long vocabularies do not lose the tail.
    let mut probs: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, (((l - max) * inv_t) as f64).exp())).collect();
    let restrict = (config.top_k > 0 && config.top_k < probs.len()) || config.top_p < 1.0;
    if restrict {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if config.top_k > 0 {
            probs.truncate(config.top_k);
        }
        if config.top_p < 1.0 {
            let total: f64 = probs.iter().map(|p| p.1).sum();
            let mut cumulative = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                cumulative += p.1 / total;
                if cumulative >= config.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * total;
    let mut chosen = probs[probs.len() - 1];
    for &p in &probs {
        if u < p.1 {
            chosen = p;
            break;
        }
        u -= p.1;
    }
    (chosen.0, (chosen.1 / total).ln() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn greedy_takes_the_argmax() {
        let c = SamplingConfig { temperature: 0.0, ..Default::default() };
        assert_eq!(sample(&[0.1, 3.0, -1.0, 2.9], &c, &mut ChaCha8Rng::seed_from_u64(0)), (1, 0.0));
    }

    #[test]
    fn frequencies_and_logprobs_follow_the_distribution() {
        // logits ln(1), ln(2), ln(3), ln(4): probabilities 0.1, 0.2, 0.3, 0.4.
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let c = SamplingConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            let (t, lp) = sample(&logits, &c, &mut rng);
            counts[t as usize] += 1;
            assert!((lp - (0.1 * (t as f32 + 1.0)).ln()).abs() < 1e-5);
        }
        for (i, &n) in counts.iter().enumerate() {
            let p = n as f64 / 40_000.0;
            assert!((p - 0.1 * (i as f64 + 1.0)).abs() < 0.01, "token {i}: {p}");
        }
    }

    #[test]
    fn top_k_and_top_p_renormalize() {
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // top-k 2 keeps {0.3, 0.4} -> 3/7 and 4/7.
        let k2 = SamplingConfig { top_k: 2, ..Default::default() };
        // top-p 0.65 keeps 0.4 + 0.3 (reaches 0.7).
        let p65 = SamplingConfig { top_p: 0.65, ..Default::default() };
        for c in [k2, p65] {
            for _ in 0..200 {
                let (t, lp) = sample(&logits, &c, &mut rng);
                assert!(t >= 2, "{c:?} sampled {t}");
                let expected = if t == 3 { (4.0f32 / 7.0).ln() } else { (3.0f32 / 7.0).ln() };
                assert!((lp - expected).abs() < 1e-5);
            }
        }
        // Temperature 0.5 squares the probabilities: 1,4,9,16 over 30.
        let t = SamplingConfig { temperature: 0.5, ..Default::default() };
        let (tok, lp) = sample(&logits, &t, &mut rng);
        assert!((lp - (((tok + 1) * (tok + 1)) as f32 / 30.0).ln()).abs() < 1e-5);
    }
}
