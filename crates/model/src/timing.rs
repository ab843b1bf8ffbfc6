//! Timing for the benchmarks (`cargo xtask bench`): one way to take a median, and one way to
//! report a figure measured over several rounds. On a shared machine a busy spell can slow one
//! side of a comparison 10x, so a ratio is taken per round (both sides measured in that round,
//! one after the other) and printed as the median with its min-max over rounds.

use std::time::Instant;

/// Median seconds of `reps` runs after one warm-up.
pub fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// `a()` and `b()` (each a round's figure) in each of `rounds` rounds, one right after the other
/// and the order alternating, so a busy spell of a shared machine falls on both sides of a
/// round's ratio.
pub fn in_rounds(rounds: usize, mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> (Vec<f64>, Vec<f64>) {
    let (mut xs, mut ys) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for r in 0..rounds {
        if r % 2 == 0 {
            xs.push(a());
            ys.push(b());
        } else {
            ys.push(b());
            xs.push(a());
        }
    }
    (xs, ys)
}

/// Spread above which a figure is marked noisy: (max - min) / median.
pub const NOISY: f64 = 0.2;

/// One figure over rounds: its median and range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median over rounds (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest round.
    pub min: f64,
    /// The largest round.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, or `None` if there are none (or any is not finite).
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1] })
    }

    /// Per round, `ours[i] / theirs[i]` (both measured in round i): what a comparison is.
    pub fn of_ratios(ours: &[f64], theirs: &[f64]) -> Option<Spread> {
        if ours.len() != theirs.len() {
            return None;
        }
        Spread::of(&ours.iter().zip(theirs).map(|(a, b)| a / b).collect::<Vec<_>>())
    }

    /// Whether the rounds disagree by more than [`NOISY`] of the median.
    pub fn noisy(&self) -> bool {
        (self.max - self.min) > NOISY * self.median.abs()
    }

    /// "median (min-max)" with `decimals`, and " noisy" where [`Spread::noisy`].
    pub fn show(&self, decimals: usize, unit: &str) -> String {
        format!("{:.*}{unit} ({:.*}-{:.*}){}", decimals, self.median, decimals, self.min, decimals, self.max, if self.noisy() { " noisy" } else { "" })
    }
}

/// "median (min-max)" of `values`, "-" when there are none.
pub fn show(values: &[f64], decimals: usize, unit: &str) -> String {
    Spread::of(values).map_or("-".to_string(), |s| s.show(decimals, unit))
}

/// The per-round ratio of `ours` to `theirs` as "1.24x (1.10-1.31)", "-" without a baseline.
pub fn show_ratio(ours: &[f64], theirs: &[f64]) -> String {
    Spread::of_ratios(ours, theirs).map_or("-".to_string(), |s| s.show(2, "x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_which_side_goes_first() {
        let order = std::cell::RefCell::new(Vec::new());
        let (a, b) = in_rounds(
            3,
            || {
                order.borrow_mut().push('a');
                1.0
            },
            || {
                order.borrow_mut().push('b');
                2.0
            },
        );
        assert_eq!((a, b), (vec![1.0; 3], vec![2.0; 3]));
        assert_eq!(order.into_inner(), ['a', 'b', 'b', 'a', 'a', 'b']);
    }

    #[test]
    fn median_and_range_by_hand() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 10.0]).unwrap().median, 3.0);
        assert!(Spread::of(&[]).is_none() && Spread::of(&[1.0, f64::NAN]).is_none());
    }

    /// A ratio is taken within each round: a round where both sides ran slow is no outlier.
    #[test]
    fn ratios_pair_rounds() {
        let ours = [100.0, 50.0, 99.0];
        let theirs = [80.0, 40.0, 80.0];
        let r = Spread::of_ratios(&ours, &theirs).unwrap();
        assert_eq!((r.median, r.min, r.max), (1.25, 1.2375, 1.25));
        assert!(!r.noisy(), "2% apart");
        assert_eq!(show_ratio(&ours, &theirs), "1.25x (1.24-1.25)");
        assert!(Spread::of_ratios(&ours, &theirs[..2]).is_none());
    }

    #[test]
    fn a_spread_over_a_fifth_of_the_median_is_noisy() {
        assert!(Spread::of(&[1.0, 1.1, 1.25]).unwrap().noisy());
        assert!(!Spread::of(&[1.0, 1.1, 1.19]).unwrap().noisy());
        assert_eq!(show(&[1.0, 1.1, 1.3], 1, " GB/s"), "1.1 GB/s (1.0-1.3) noisy");
        assert_eq!(show(&[], 1, ""), "-");
    }
}
