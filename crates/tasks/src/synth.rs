//! Procedurally generated integer-answer problems that a small model cannot solve in its head
//! but can with a line or two of Python. Answers are computed here in Rust, independently of
//! the Python solution each task carries (a test runs every kind's code in the sandbox and
//! compares).

use num_bigint::BigUint;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Flawed, Task};

/// The kinds with a plausible wrong program ([`Flawed`]): every kind but `product` and `gcd`.
pub const FLAWED_KINDS: [&str; 10] = ["modpow", "digit_sum", "prime_count", "divisor_count", "divisor_sum", "lcm", "binomial", "fib_mod", "series", "word"];

/// The problem kinds.
pub const KINDS: [&str; 12] = ["product", "modpow", "digit_sum", "prime_count", "divisor_count", "divisor_sum", "gcd", "lcm", "binomial", "fib_mod", "series", "word"];

/// The seed of the held-out problems in training runs and `eval --data synthetic`: one fixed
/// set, as a benchmark is, so runs of different seeds are scored on the same problems.
pub const HELD_OUT_SEED: u64 = 1;

/// Which split a question belongs to (decided by a hash of its text, so the splits are
/// disjoint whatever seeds generate them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Four fifths of all questions.
    Train,
    /// The held-out fifth.
    Test,
}

/// FNV-1a, stable across platforms and versions.
fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The split of a question.
pub fn split_of(question: &str) -> Split {
    if fnv1a(question).is_multiple_of(5) { Split::Test } else { Split::Train }
}

/// Settings of the generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SynthConfig {
    /// Kinds to draw from (all of [`KINDS`] by default).
    pub kinds: Vec<String>,
    /// Difficulty levels 1..=3 to draw from (bigger numbers at higher levels).
    pub levels: Vec<u8>,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { kinds: KINDS.iter().map(|k| k.to_string()).collect(), levels: vec![1, 2, 3] }
    }
}

/// Errors in the generator's settings.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A kind that does not exist.
    #[error("unknown problem kind {0:?}; the kinds are {KINDS:?}")]
    UnknownKind(String),
    /// A level outside 1..=3.
    #[error("difficulty level {0} is outside 1..=3")]
    BadLevel(u8),
    /// Fewer distinct problems exist than asked for.
    #[error("only {found} distinct problems exist for these kinds and levels, {wanted} were asked for")]
    Exhausted {
        /// Asked for.
        wanted: usize,
        /// Found.
        found: usize,
    },
    /// Nothing to draw from.
    #[error("no kinds or no levels selected")]
    Empty,
}

/// `count` distinct problems of `split`, reproducible from `seed`.
pub fn generate(config: &SynthConfig, split: Split, count: usize, seed: u64) -> Result<Vec<Task>, SynthError> {
    for k in &config.kinds {
        if !KINDS.contains(&k.as_str()) {
            return Err(SynthError::UnknownKind(k.clone()));
        }
    }
    if let Some(&l) = config.levels.iter().find(|&&l| !(1..=3).contains(&l)) {
        return Err(SynthError::BadLevel(l));
    }
    if config.kinds.is_empty() || config.levels.is_empty() {
        return Err(SynthError::Empty);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ if split == Split::Test { 0x7e57 } else { 0x7a1e });
    let mut seen = std::collections::HashSet::new();
    let mut tasks = Vec::with_capacity(count);
    // Kinds whose small levels hold few distinct problems run dry; they leave the rotation
    // after many misses in a row and the others fill the set.
    let mut live: Vec<&String> = config.kinds.iter().collect();
    let mut misses = vec![0usize; live.len()];
    let mut turn = 0usize;
    while tasks.len() < count {
        if live.is_empty() {
            return Err(SynthError::Exhausted { wanted: count, found: tasks.len() });
        }
        // Kinds come in rotation; a draw that lands in the other split or repeats a question
        // also moves the rotation on, so counts per kind are even only on average.
        let slot = turn % live.len();
        turn += 1;
        let kind = live[slot];
        let level = config.levels[rng.random_range(0..config.levels.len())];
        let Made { question, answer, code, flawed } = make(kind, level, &mut rng);
        if split_of(&question) != split || !seen.insert(question.clone()) {
            misses[slot] += 1;
            if misses[slot] > 2000 {
                live.remove(slot);
                misses.remove(slot);
            }
            continue;
        }
        misses[slot] = 0;
        let id = format!("{}-{:?}-{}", kind, split, tasks.len()).to_lowercase();
        // A bug that happens to print the right answer is no wrong program.
        let flawed = flawed.filter(|f| f.answer != answer);
        tasks.push(Task { id, kind: kind.clone(), level, question, answer, code: Some(code), flawed });
    }
    Ok(tasks)
}

fn pick<'a>(rng: &mut impl Rng, options: &[&'a str]) -> &'a str {
    options[rng.random_range(0..options.len())]
}

fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut s = template.to_string();
    for (k, v) in values {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn divisors(n: u64) -> Vec<u64> {
    (1..=n).filter(|d| n.is_multiple_of(*d)).collect()
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

fn binomial(n: u64, k: u64) -> BigUint {
    let mut r = BigUint::from(1u32);
    for i in 0..k {
        r = r * BigUint::from(n - i) / BigUint::from(i + 1);
    }
    r
}

/// One generated problem: question, answer, a correct Python solution, and for the kinds of
/// [`FLAWED_KINDS`] a plausible wrong one with the answer it prints.
struct Made {
    question: String,
    answer: String,
    code: String,
    flawed: Option<Flawed>,
}

fn made(question: String, answer: impl ToString, code: String, flawed: Option<(String, String, &str)>) -> Made {
    Made { question, answer: answer.to_string(), code, flawed: flawed.map(|(code, answer, bug)| Flawed { code, answer, bug: bug.to_string() }) }
}

fn make(kind: &str, level: u8, rng: &mut impl Rng) -> Made {
    let l = u32::from(level);
    match kind {
        "product" => {
            let (lo, hi) = (10u64.pow(l + 1), 10u64.pow(l + 2));
            let (a, b) = (rng.random_range(lo..hi), rng.random_range(lo..hi));
            let q = pick(rng, &["What is {a} times {b}?", "Compute {a} * {b}.", "Multiply {a} by {b}. What is the product?"]);
            made(fill(q, &[("a", a.to_string()), ("b", b.to_string())]), a * b, format!("print({a}*{b})"), None)
        }
        "modpow" => {
            let a = rng.random_range(2u64..100);
            let b = rng.random_range(10u64..10u64.pow(l + 1));
            let m = rng.random_range(10u64..10u64.pow(l + 1));
            let q = pick(rng, &["What is {a}^{b} mod {m}?", "Find the remainder when {a}^{b} is divided by {m}."]);
            let r = BigUint::from(a).modpow(&BigUint::from(b), &BigUint::from(m));
            // `^` is XOR in Python, and `%` binds tighter: a ^ (b % m).
            let wrong = (format!("print({a}^{b}%{m})"), (a ^ (b % m)).to_string(), "^ for a power");
            made(fill(q, &[("a", a.to_string()), ("b", b.to_string()), ("m", m.to_string())]), r, format!("print(pow({a},{b},{m}))"), Some(wrong))
        }
        "digit_sum" => {
            let a = rng.random_range(2u64..30);
            let b = rng.random_range(5u64..(10 + 15 * u64::from(l)));
            let q = pick(rng, &["What is the sum of the digits of {a}^{b}?", "Find the digit sum of {a}^{b}."]);
            let digit_sum = |n: String| n.bytes().map(|c| u32::from(c - b'0')).sum::<u32>();
            let s = digit_sum(BigUint::from(a).pow(b as u32).to_string());
            let wrong = (format!("print(sum(int(c) for c in str({a}^{b})))"), digit_sum((a ^ b).to_string()).to_string(), "^ for a power");
            made(fill(q, &[("a", a.to_string()), ("b", b.to_string())]), s, format!("print(sum(int(c) for c in str({a}**{b})))"), Some(wrong))
        }
        "prime_count" => {
            let n = rng.random_range(30u64..(300 * u64::from(l * l)));
            let q = pick(rng, &["How many primes are less than {n}?", "Count the prime numbers below {n}."]);
            let c = (2..n).filter(|&k| is_prime(k)).count();
            // From 1, which has no divisor in range(2, 2) and so counts as prime.
            let wrong = (format!("print(sum(1 for k in range(1,{n}) if all(k%d for d in range(2,int(k**0.5)+1))))"), (c + 1).to_string(), "counts 1 as a prime");
            made(fill(q, &[("n", n.to_string())]), c, format!("print(sum(1 for k in range(2,{n}) if all(k%d for d in range(2,int(k**0.5)+1))))"), Some(wrong))
        }
        "divisor_count" => {
            let n = rng.random_range(100u64..(1000 * u64::from(l * l * 4)));
            let q = pick(rng, &["How many positive divisors does {n} have?", "Count the divisors of {n}."]);
            let c = divisors(n).len();
            let wrong = (format!("print(sum(1 for d in range(1,{n}) if {n}%d==0))"), (c - 1).to_string(), "off-by-one range misses n");
            made(fill(q, &[("n", n.to_string())]), c, format!("print(sum(1 for d in range(1,{n}+1) if {n}%d==0))"), Some(wrong))
        }
        "divisor_sum" => {
            let n = rng.random_range(100u64..(1000 * u64::from(l * l * 4)));
            let q = pick(rng, &["What is the sum of all positive divisors of {n}?", "Find the sum of the divisors of {n}."]);
            let s: u64 = divisors(n).iter().sum();
            let wrong = (format!("print(sum(d for d in range(1,{n}) if {n}%d==0))"), (s - n).to_string(), "off-by-one range misses n");
            made(fill(q, &[("n", n.to_string())]), s, format!("print(sum(d for d in range(1,{n}+1) if {n}%d==0))"), Some(wrong))
        }
        "gcd" | "lcm" => {
            let common = rng.random_range(2u64..(20 * u64::from(l)));
            let (a, b) = (common * rng.random_range(2u64..10u64.pow(l + 1)), common * rng.random_range(2u64..10u64.pow(l + 1)));
            if kind == "gcd" {
                let q = pick(rng, &["What is the greatest common divisor of {a} and {b}?", "Find gcd({a}, {b})."]);
                made(fill(q, &[("a", a.to_string()), ("b", b.to_string())]), gcd(a, b), format!("import math\nprint(math.gcd({a},{b}))"), None)
            } else {
                let q = pick(rng, &["What is the least common multiple of {a} and {b}?", "Find lcm({a}, {b})."]);
                let wrong = (format!("print({a}*{b})"), (a * b).to_string(), "the product for the lcm");
                made(fill(q, &[("a", a.to_string()), ("b", b.to_string())]), a / gcd(a, b) * b, format!("import math\nprint(math.lcm({a},{b}))"), Some(wrong))
            }
        }
        "binomial" => {
            let n = rng.random_range(10u64..(20 * u64::from(l) + 10));
            let k = rng.random_range(2u64..n.min(12));
            let q = pick(rng, &["How many ways are there to choose {k} items from {n}?", "What is the binomial coefficient C({n}, {k})?"]);
            let perm = binomial(n, k) * (1..=k).map(BigUint::from).product::<BigUint>();
            let wrong = (format!("import math\nprint(math.perm({n},{k}))"), perm.to_string(), "permutations for combinations");
            made(fill(q, &[("n", n.to_string()), ("k", k.to_string())]), binomial(n, k), format!("import math\nprint(math.comb({n},{k}))"), Some(wrong))
        }
        "fib_mod" => {
            let n = rng.random_range(20u64..10u64.pow(l + 1));
            let m = rng.random_range(10u64..10u64.pow(l + 1));
            let q = pick(rng, &["What is the {n}-th Fibonacci number modulo {m}?", "Find F({n}) mod {m}, where F(0)=0 and F(1)=1."]);
            let fib = |steps: u64| {
                let (mut a, mut b) = (0u64, 1u64);
                for _ in 0..steps {
                    (a, b) = (b, (a + b) % m);
                }
                a % m
            };
            let wrong = (format!("a,b=0,1\nfor _ in range({n}-1):\n    a,b=b,(a+b)%{m}\nprint(a%{m})"), fib(n - 1).to_string(), "off-by-one loop gives F(n-1)");
            made(fill(q, &[("n", n.to_string()), ("m", m.to_string())]), fib(n), format!("a,b=0,1\nfor _ in range({n}):\n    a,b=b,(a+b)%{m}\nprint(a%{m})"), Some(wrong))
        }
        "series" => {
            let n = rng.random_range(10u64..(100 * u64::from(l)));
            let power = rng.random_range(2u32..4);
            let name = if power == 2 { "squares" } else { "cubes" };
            let q = pick(rng, &["What is the sum of the {p} of the integers from 1 to {n}?", "Compute the sum of the {p} of 1, 2, ..., {n}."]);
            let s: u64 = (1..=n).map(|i| i.pow(power)).sum();
            let wrong = (format!("print(sum(i**{power} for i in range(1,{n})))"), (s - n.pow(power)).to_string(), "off-by-one range misses n");
            made(fill(q, &[("p", name.to_string()), ("n", n.to_string())]), s, format!("print(sum(i**{power} for i in range(1,{n}+1)))"), Some(wrong))
        }
        "word" => {
            let a = rng.random_range(10u64..10u64.pow(l + 1));
            let b = rng.random_range(10u64..10u64.pow(l + 1));
            let c = rng.random_range(1..a * b);
            let q = pick(
                rng,
                &[
                    "A warehouse has {a} boxes with {b} items in each box. After {c} items are shipped, how many items remain?",
                    "A school orders {a} packs of {b} pencils and hands out {c} pencils. How many pencils are left?",
                ],
            );
            let wrong = (format!("print({a}*{b}+{c})"), (a * b + c).to_string(), "adds what was taken away");
            made(fill(q, &[("a", a.to_string()), ("b", b.to_string()), ("c", c.to_string())]), a * b - c, format!("print({a}*{b}-{c})"), Some(wrong))
        }
        other => unreachable!("kind {other} checked by generate"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_disjoint_and_reproducible() {
        let c = SynthConfig::default();
        let train = generate(&c, Split::Train, 600, 1).unwrap();
        let test = generate(&c, Split::Test, 150, 1).unwrap();
        let train_q: std::collections::HashSet<_> = train.iter().map(|t| &t.question).collect();
        assert!(test.iter().all(|t| !train_q.contains(&t.question)));
        assert_eq!(train, generate(&c, Split::Train, 600, 1).unwrap());
        assert_ne!(train, generate(&c, Split::Train, 600, 2).unwrap());
        // 150 problems over 12 kinds: every kind present in a reasonable share.
        for kind in KINDS {
            assert!(test.iter().filter(|t| t.kind == kind).count() >= 5, "{kind}");
        }
    }

    #[test]
    fn hand_checked_answers() {
        assert_eq!(binomial(10, 3).to_string(), "120");
        assert_eq!(divisors(28), vec![1, 2, 4, 7, 14, 28]);
        assert_eq!((2..30).filter(|&k| is_prime(k)).count(), 10);
        assert_eq!(gcd(84, 36), 12);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = SynthConfig { kinds: vec!["calculus".into()], ..Default::default() };
        assert!(generate(&bad, Split::Train, 1, 0).unwrap_err().to_string().contains("calculus"));
        let bad = SynthConfig { levels: vec![7], ..Default::default() };
        assert!(generate(&bad, Split::Train, 1, 0).unwrap_err().to_string().contains("level 7"));
    }
}
