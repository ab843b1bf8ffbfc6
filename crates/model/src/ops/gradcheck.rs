//! Finite-difference checks of every op's backward: for a random projection `w`, the scalar
//! `L = sum(out * w)` is differentiated numerically (central differences) and compared with the
//! backward given `dout = w`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::attention::{Heads, attention_backward, attention_forward};
use super::logprob::{logprob_backward, logprob_forward};
use super::matmul::{linear_backward, linear_forward};
use super::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use super::rope::{RopeTable, rope_backward, rope_forward};
use super::swiglu::{swiglu_backward, swiglu_forward};

fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

/// Compares `analytic` with central differences of `f` at `x`, on every coordinate.
fn check(name: &str, x: &[f32], analytic: &[f32], f: impl Fn(&[f32]) -> f64) {
    let h = 1e-2f32;
    for i in 0..x.len() {
        let mut up = x.to_vec();
        up[i] += h;
        let mut down = x.to_vec();
        down[i] -= h;
        let numeric = (f(&up) - f(&down)) / (2.0 * f64::from(h));
        let a = f64::from(analytic[i]);
        assert!((numeric - a).abs() < 2e-3 + 2e-2 * a.abs(), "{name}[{i}]: numeric {numeric} analytic {a}");
    }
}

#[test]
fn linear() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (n, i, o) = (3, 5, 4);
    let (x, w, b, proj) = (random(n * i, &mut rng), random(o * i, &mut rng), random(o, &mut rng), random(n * o, &mut rng));
    let f = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut out = vec![0.0; n * o];
        linear_forward(&mut out, x, w, Some(b), n, i, o);
        dot(&out, &proj)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; n * i], vec![0.0; o * i], vec![0.0; o]);
    linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &proj, &x, &w, n, i, o);
    check("linear dx", &x, &dx, |x| f(x, &w, &b));
    check("linear dw", &w, &dw, |w| f(&x, w, &b));
    check("linear db", &b, &db, |b| f(&x, &w, b));
}

#[test]
fn rmsnorm() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (n, d) = (3, 8);
    let (x, w, proj) = (random(n * d, &mut rng), random(d, &mut rng), random(n * d, &mut rng));
    let f = |x: &[f32], w: &[f32]| {
        let (mut out, mut r) = (vec![0.0; n * d], vec![0.0; n]);
        rmsnorm_forward(&mut out, &mut r, x, w, d, 1e-6);
        dot(&out, &proj)
    };
    let (mut out, mut rstd) = (vec![0.0; n * d], vec![0.0; n]);
    rmsnorm_forward(&mut out, &mut rstd, &x, &w, d, 1e-6);
    let (mut dx, mut dw) = (vec![0.0; n * d], vec![0.0; d]);
    rmsnorm_backward(&mut dx, &mut dw, &proj, &x, &w, &rstd, d);
    check("rmsnorm dx", &x, &dx, |x| f(x, &w));
    check("rmsnorm dw", &w, &dw, |w| f(&x, w));
}

#[test]
fn rope() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (n, heads, hd) = (4, 2, 8);
    let table = RopeTable::new(hd, 10_000.0, 16);
    let positions = [0, 3, 7, 15];
    let (x, proj) = (random(n * heads * hd, &mut rng), random(n * heads * hd, &mut rng));
    let f = |x: &[f32]| {
        let mut y = x.to_vec();
        rope_forward(&mut y, &positions, &table, heads);
        dot(&y, &proj)
    };
    let mut dx = proj.clone();
    rope_backward(&mut dx, &positions, &table, heads);
    check("rope dx", &x, &dx, f);
}

#[test]
fn swiglu() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let n = 12;
    let (g, u, proj) = (random(n, &mut rng), random(n, &mut rng), random(n, &mut rng));
    let f = |g: &[f32], u: &[f32]| {
        let mut out = vec![0.0; n];
        swiglu_forward(&mut out, g, u);
        dot(&out, &proj)
    };
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    swiglu_backward(&mut dg, &mut du, &proj, &g, &u);
    check("swiglu dgate", &g, &dg, |g| f(g, &u));
    check("swiglu dup", &u, &du, |u| f(&g, u));
}

#[test]
fn attention_with_gqa_and_packing() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let heads = Heads { q: 4, kv: 2, dim: 4 };
    // Two packed sequences of lengths 3 and 2.
    let seg_start = [0, 0, 0, 3, 3];
    let n = seg_start.len();
    let (q, k, v) = (random(n * 16, &mut rng), random(n * 8, &mut rng), random(n * 8, &mut rng));
    let proj = random(n * 16, &mut rng);
    let f = |q: &[f32], k: &[f32], v: &[f32]| {
        let (mut out, mut lse) = (vec![0.0; n * 16], vec![0.0; n * 4]);
        attention_forward(&mut out, &mut lse, q, k, v, &seg_start, heads);
        dot(&out, &proj)
    };
    let (mut out, mut lse) = (vec![0.0; n * 16], vec![0.0; n * 4]);
    attention_forward(&mut out, &mut lse, &q, &k, &v, &seg_start, heads);
    let (mut dq, mut dk, mut dv) = (vec![0.0; n * 16], vec![0.0; n * 8], vec![0.0; n * 8]);
    attention_backward(&mut dq, &mut dk, &mut dv, &proj, &q, &k, &v, &out, &lse, &seg_start, heads);
    check("attention dq", &q, &dq, |q| f(q, &k, &v));
    check("attention dk", &k, &dk, |k| f(&q, k, &v));
    check("attention dv", &v, &dv, |v| f(&q, &k, v));
    // Packing: the second sequence's first token sees only itself.
    let mut only = vec![0.0; 4];
    only.copy_from_slice(&v[3 * 8..3 * 8 + 4]);
    assert_eq!(&out[3 * 16..3 * 16 + 4], only.as_slice());
}

#[test]
fn logprob_gather() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (n, v) = (3, 7);
    let logits = random(n * v, &mut rng);
    let targets = [2u32, 6, 0];
    let dlp = random(n, &mut rng);
    let f = |logits: &[f32]| {
        let (mut lp, mut lse) = (vec![0.0; n], vec![0.0; n]);
        logprob_forward(&mut lp, &mut lse, logits, &targets, v);
        dot(&lp, &dlp)
    };
    let (mut lp, mut lse) = (vec![0.0; n], vec![0.0; n]);
    logprob_forward(&mut lp, &mut lse, &logits, &targets, v);
    // By hand: log softmax of row 0 at target 2.
    let row = &logits[..v];
    let want = row[2] - row.iter().map(|x| x.exp()).sum::<f32>().ln();
    assert!((lp[0] - want).abs() < 1e-6);
    let mut dlogits = vec![0.0; n * v];
    logprob_backward(&mut dlogits, &dlp, &logits, &lse, &targets, v);
    check("logprob dlogits", &logits, &dlogits, f);
}
