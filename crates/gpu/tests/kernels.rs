//! Every kernel against its CPU op (`rstar2_model::ops`) on seeded data, on whatever adapter
//! wgpu finds (lavapipe in CI). No adapter is a failure (see `rstar2_gpu::test_gpu`).

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rstar2_gpu::{Gpu, ops};
use rstar2_model::ops as cpu;
use rstar2_model::ops::attention::Heads;

fn gpu() -> Option<Arc<Gpu>> {
    rstar2_gpu::test_gpu()
}

fn rand_vec(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let err = (a - b).abs() / (1.0 + b.abs());
        assert!(err.is_finite(), "{what}[{i}]: {a} vs {b}");
        if err > worst.0 {
            worst = (err, i);
        }
    }
    assert!(worst.0 <= tol, "{what}: element {} is {} on the GPU, {} on the CPU (relative error {:.2e} > {tol:.0e})", worst.1, got[worst.1], want[worst.1], worst.0);
}

#[test]
fn matmul_all_layouts_and_decode_path() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (m, n, k) in [(70, 50, 37), (3, 5, 7), (5, 130, 70), (64, 64, 64), (129, 65, 17)] {
        let (a, b) = (rand_vec(&mut rng, m * k, 1.0), rand_vec(&mut rng, n * k, 1.0));
        let init = rand_vec(&mut rng, m * n, 1.0);
        let (ta, tb) = (g.upload(&a), g.upload(&b));
        for accumulate in [false, true] {
            let tc = g.upload(&init);
            ops::matmul_nt(&g, &tc, &ta, &tb, m, n, k, accumulate);
            let mut want = init.clone();
            cpu::matmul::matmul_nt(&mut want, &a, &b, m, n, k, accumulate);
            assert_close(&g.read(&tc), &want, 1e-5, &format!("matmul_nt {m}x{n}x{k} accumulate={accumulate}"));
        }
    }
}

/// Every tile configuration (64 and 128 wide and high, split-K) in the three operand layouts
/// that training uses, on ragged shapes, f32 and f16 weights, against the CPU product.
#[test]
fn matmul_every_tile_and_layout() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (m, n, k) = (150, 140, 300);
    let (a, b) = (rand_vec(&mut rng, m * k, 1.0), rand_vec(&mut rng, n * k, 1.0));
    let init = rand_vec(&mut rng, m * n, 1.0);
    let (ta, tb) = (g.upload(&a), g.upload(&b));
    let tb16 = g.has_f16().then(|| g.upload_f16(&b));
    // C = A·Bᵀ (x·Wᵀ: both K-contiguous), C = A·B with B [k, n] (dout·W: B N-contiguous),
    // C = Aᵀ·B with A [k, m] (doutᵀ·x: A M-contiguous).
    let layouts = [
        ("A·Bᵀ", ops::Strides { a_rs: k, a_cs: 1, b_rs: 1, b_cs: k, a_off: 0, b_off: 0, c_off: 0, ldc: n }),
        ("A·B", ops::Strides { a_rs: k, a_cs: 1, b_rs: n, b_cs: 1, a_off: 0, b_off: 0, c_off: 0, ldc: n }),
        ("Aᵀ·B", ops::Strides { a_rs: 1, a_cs: m, b_rs: n, b_cs: 1, a_off: 0, b_off: 0, c_off: 0, ldc: n }),
    ];
    let tiles = ops::matmul_candidates(&g, m, n, k);
    assert!(tiles.iter().any(|t| t.splits > 1) && tiles.iter().any(|t| t.tm4 == 2 && t.tn4 == 1), "candidates {tiles:?}");
    for (what, s) in layouts {
        // The reference reads the same buffers through the same strides.
        let mut want = init.clone();
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    acc += f64::from(a[i * s.a_rs + p * s.a_cs]) * f64::from(b[p * s.b_rs + j * s.b_cs]);
                }
                want[i * n + j] += acc as f32;
            }
        }
        for &tile in &tiles {
            let tc = g.upload(&init);
            ops::matmul_with_tile(&g, tile, &tc, &ta, &tb, s, m, n, k, true);
            assert_close(&g.read(&tc), &want, 1e-5, &format!("{what} tile {tile}"));
            if let Some(tb16) = &tb16 {
                let tc = g.upload(&init);
                ops::matmul_with_tile(&g, tile, &tc, &ta, tb16, s, m, n, k, true);
                let err = error_of_largest(&g.read(&tc), &want);
                assert!(err < 5e-3, "{what} tile {tile} f16 weights: error {err}");
            }
        }
    }
}

/// Autotuning times the candidates once per shape, keeps the fastest, and gives the same
/// product as the fixed choice.
#[test]
fn matmul_autotune_caches_one_tile_per_shape() {
    let Some(shared) = gpu() else { return };
    let g = Gpu::open(rstar2_gpu::AdapterChoice::Any).unwrap().expect("an adapter");
    // A cache file of this test's own, so nothing tuned elsewhere is read and nothing is left
    // in the user's cache.
    let cache = std::env::temp_dir().join(format!("rstar2-autotune-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&cache);
    g.set_autotune_cache(Some(cache.clone()));
    g.set_autotune(true);
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let (m, n, k) = (90, 200, 260);
    let (a, b) = (rand_vec(&mut rng, m * k, 1.0), rand_vec(&mut rng, n * k, 1.0));
    let mut want = vec![0.0; m * n];
    cpu::matmul::matmul_nt(&mut want, &a, &b, m, n, k, false);
    let (ta, tb, tc) = (g.upload(&a), g.upload(&b), g.alloc(m * n));
    for _ in 0..2 {
        ops::matmul_nt(&g, &tc, &ta, &tb, m, n, k, false);
        assert_close(&g.read(&tc), &want, 1e-5, "autotuned matmul");
    }
    let tuned = g.tuned_matmul_tiles();
    assert_eq!(tuned.len(), 1, "one shape tuned once: {tuned:?}");
    assert_eq!((tuned[0].0, tuned[0].1, tuned[0].2), (128, 200, 260));
    assert!(ops::matmul_candidates(&g, m, n, k).contains(&tuned[0].3));
    assert!(!shared.autotunes() || !shared.is_software(), "software adapters do not autotune by default");
    // The next run on this adapter starts with the tile (nothing timed), and a malformed cache
    // is ignored.
    let again = Gpu::open(rstar2_gpu::AdapterChoice::Any).unwrap().expect("an adapter");
    again.set_autotune_cache(Some(cache.clone()));
    assert_eq!(again.tuned_matmul_tiles(), tuned);
    std::fs::write(&cache, "not json").unwrap();
    again.set_autotune_cache(Some(cache.clone()));
    assert!(again.tuned_matmul_tiles().is_empty());
    std::fs::remove_file(&cache).unwrap();
}

#[test]
fn linear_forward_backward_with_bias() {
    if let Some(g) = gpu() {
        check_linear_with_bias(&g);
    }
}

fn check_linear_with_bias(g: &Gpu) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (n, i, o) = (19, 24, 33);
    let (x, w, b, dout) = (rand_vec(&mut rng, n * i, 1.0), rand_vec(&mut rng, o * i, 1.0), rand_vec(&mut rng, o, 1.0), rand_vec(&mut rng, n * o, 1.0));
    let (dw0, db0) = (rand_vec(&mut rng, o * i, 1.0), rand_vec(&mut rng, o, 1.0));
    let (tx, tw, tb, tdout) = (g.upload(&x), g.upload(&w), g.upload(&b), g.upload(&dout));
    let out = g.alloc(n * o);
    ops::linear_forward(g, &out, &tx, &tw, Some(&tb), n, i, o);
    let mut want = vec![0.0; n * o];
    cpu::matmul::linear_forward(&mut want, &x, &w, Some(&b), n, i, o);
    assert_close(&g.read(&out), &want, 1e-5, "linear_forward");

    let (tdx, tdw, tdb) = (g.alloc(n * i), g.upload(&dw0), g.upload(&db0));
    ops::linear_backward(g, Some(&tdx), &tdw, Some(&tdb), &tdout, &tx, &tw, n, i, o);
    let (mut dx, mut dw, mut db) = (vec![0.0; n * i], dw0.clone(), db0.clone());
    cpu::matmul::linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &dout, &x, &w, n, i, o);
    assert_close(&g.read(&tdx), &dx, 1e-5, "linear dx");
    assert_close(&g.read(&tdw), &dw, 1e-5, "linear dw (accumulated)");
    assert_close(&g.read(&tdb), &db, 1e-5, "linear db (accumulated)");
}

#[test]
fn embedding_forward_backward_with_repeated_tokens() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (vocab, d) = (11, 6);
    let ids: Vec<u32> = vec![3, 7, 3, 0, 10, 3, 7];
    let wte = rand_vec(&mut rng, vocab * d, 1.0);
    let out = g.alloc(ids.len() * d);
    ops::embedding_forward(&g, &out, &g.upload_u32(&ids), &g.upload(&wte), ids.len(), d);
    let mut want = vec![0.0; ids.len() * d];
    cpu::embedding::embedding_forward(&mut want, &ids, &wte, d);
    assert_eq!(g.read(&out), want, "embedding_forward copies rows exactly");

    let dout = rand_vec(&mut rng, ids.len() * d, 1.0);
    let dwte0 = rand_vec(&mut rng, vocab * d, 1.0);
    let tdwte = g.upload(&dwte0);
    ops::embedding_backward(&g, &tdwte, &g.upload(&dout), &ids, d);
    let mut want = dwte0.clone();
    cpu::embedding::embedding_backward(&mut want, &dout, &ids, d);
    assert_close(&g.read(&tdwte), &want, 1e-6, "embedding_backward");
}

#[test]
fn rmsnorm_forward_backward() {
    if let Some(g) = gpu() {
        check_rmsnorm(&g);
    }
}

fn check_rmsnorm(g: &Gpu) {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // d = 100 exercises the 64-wide stride with a ragged tail; 130 rows more than one pass.
    for (rows, d) in [(13, 100), (130, 8)] {
        let (x, w, dout) = (rand_vec(&mut rng, rows * d, 2.0), rand_vec(&mut rng, d, 1.0), rand_vec(&mut rng, rows * d, 1.0));
        let dw0 = rand_vec(&mut rng, d, 1.0);
        let (tx, tw) = (g.upload(&x), g.upload(&w));
        let (out, rstd) = (g.alloc(rows * d), g.alloc(rows));
        ops::rmsnorm_forward(g, &out, &rstd, &tx, &tw, rows, d, 1e-6);
        let (mut want, mut want_rstd) = (vec![0.0; rows * d], vec![0.0; rows]);
        cpu::rmsnorm::rmsnorm_forward(&mut want, &mut want_rstd, &x, &w, d, 1e-6);
        assert_close(&g.read(&out), &want, 1e-5, "rmsnorm out");
        assert_close(&g.read(&rstd), &want_rstd, 1e-5, "rmsnorm rstd");
        let (tdx, tdw) = (g.alloc(rows * d), g.upload(&dw0));
        ops::rmsnorm_backward(g, &tdx, &tdw, &g.upload(&dout), &tx, &tw, &rstd, rows, d);
        let (mut dx, mut dw) = (vec![0.0; rows * d], dw0.clone());
        cpu::rmsnorm::rmsnorm_backward(&mut dx, &mut dw, &dout, &x, &w, &want_rstd, d);
        assert_close(&g.read(&tdx), &dx, 1e-5, "rmsnorm dx");
        assert_close(&g.read(&tdw), &dw, 1e-5, "rmsnorm dw");
    }
}

#[test]
fn rope_forward_and_back() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (rows, heads, hd) = (9, 3, 16);
    let table = cpu::rope::RopeTable::new(hd, 10000.0, 64);
    let rope = ops::Rope::new(&g, &table);
    let positions: Vec<usize> = vec![0, 1, 2, 3, 0, 1, 40, 41, 63];
    let pos_t = g.upload_u32(&positions.iter().map(|&p| p as u32).collect::<Vec<_>>());
    let x = rand_vec(&mut rng, rows * heads * hd, 1.0);
    let t = g.upload(&x);
    ops::rope_forward(&g, &t, &pos_t, &rope, rows, heads);
    let mut want = x.clone();
    cpu::rope::rope_forward(&mut want, &positions, &table, heads);
    assert_close(&g.read(&t), &want, 1e-5, "rope forward");
    ops::rope_backward(&g, &t, &pos_t, &rope, rows, heads);
    cpu::rope::rope_backward(&mut want, &positions, &table, heads);
    assert_close(&g.read(&t), &want, 1e-5, "rope backward");
    assert_close(&want, &x, 1e-5, "rope backward inverts forward");
}

#[test]
fn swiglu_and_residual() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let n = 1000;
    let (gate, up, dout) = (rand_vec(&mut rng, n, 4.0), rand_vec(&mut rng, n, 2.0), rand_vec(&mut rng, n, 1.0));
    let (tg, tu, td) = (g.upload(&gate), g.upload(&up), g.upload(&dout));
    let out = g.alloc(n);
    ops::swiglu_forward(&g, &out, &tg, &tu, n);
    let mut want = vec![0.0; n];
    cpu::swiglu::swiglu_forward(&mut want, &gate, &up);
    assert_close(&g.read(&out), &want, 1e-5, "swiglu forward");
    let (dg, du) = (g.alloc(n), g.alloc(n));
    ops::swiglu_backward(&g, &dg, &du, &td, &tg, &tu, n);
    let (mut wdg, mut wdu) = (vec![0.0; n], vec![0.0; n]);
    cpu::swiglu::swiglu_backward(&mut wdg, &mut wdu, &dout, &gate, &up);
    assert_close(&g.read(&dg), &wdg, 1e-5, "swiglu dgate");
    assert_close(&g.read(&du), &wdu, 1e-5, "swiglu dup");

    ops::residual_forward(&g, &out, &tg, &tu, n);
    let mut want = vec![0.0; n];
    cpu::residual_forward(&mut want, &gate, &up);
    assert_eq!(g.read(&out), want, "residual forward");
    ops::residual_backward(&g, &tg, &td, n);
    let (mut da, mut db) = (gate.clone(), up.clone());
    cpu::residual_backward(&mut da, &mut db, &dout);
    assert_eq!(g.read(&tg), da, "residual backward");
}

#[test]
fn attention_packed_causal_gqa_forward_backward() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Query blocks that span sequences, sequences longer than a K/V tile, every tile size
    // (KV_TILE 32, 16, 4) and query heads per workgroup of 2, 3, 8 (a group of 16 split in two).
    let cases: [(Heads, &[usize]); 4] =
        [(Heads { q: 4, kv: 2, dim: 8 }, &[5, 3, 7]), (Heads { q: 9, kv: 3, dim: 64 }, &[40, 1, 23]), (Heads { q: 16, kv: 1, dim: 80 }, &[19, 6]), (Heads { q: 2, kv: 1, dim: 256 }, &[11, 9])];
    for (heads, lens) in cases {
        let what = format!("{}/{} heads of {}", heads.q, heads.kv, heads.dim);
        let rows: usize = lens.iter().sum();
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut s = 0;
        for &l in lens {
            starts.extend(std::iter::repeat_n(s, l));
            ends.extend(std::iter::repeat_n(s + l, l));
            s += l;
        }
        let (qd, kd) = (heads.q * heads.dim, heads.kv * heads.dim);
        let (q, k, v, dout) = (rand_vec(&mut rng, rows * qd, 1.0), rand_vec(&mut rng, rows * kd, 1.0), rand_vec(&mut rng, rows * kd, 1.0), rand_vec(&mut rng, rows * qd, 1.0));
        let (tq, tk, tv) = (g.upload(&q), g.upload(&k), g.upload(&v));
        let to_u32 = |x: &[usize]| x.iter().map(|&s| s as u32).collect::<Vec<u32>>();
        let (tstart, tend) = (g.upload_u32(&to_u32(&starts)), g.upload_u32(&to_u32(&ends)));
        let (out, lse) = (g.alloc(rows * qd), g.alloc(rows * heads.q));
        ops::attention_forward(&g, &out, &lse, &tq, &tk, &tv, &tstart, rows, heads);
        let (mut wout, mut wlse) = (vec![0.0; rows * qd], vec![0.0; rows * heads.q]);
        cpu::attention::attention_forward(&mut wout, &mut wlse, &q, &k, &v, &starts, heads);
        assert_close(&g.read(&out), &wout, 1e-5, &format!("attention out, {what}"));
        assert_close(&g.read(&lse), &wlse, 1e-5, &format!("attention lse, {what}"));

        let (dq, dk, dv) = (g.alloc(rows * qd), g.alloc(rows * kd), g.alloc(rows * kd));
        ops::attention_backward(&g, &dq, &dk, &dv, &g.upload(&dout), &tq, &tk, &tv, &out, &lse, &tstart, &tend, rows, heads);
        let (mut wdq, mut wdk, mut wdv) = (vec![0.0; rows * qd], vec![0.0; rows * kd], vec![0.0; rows * kd]);
        cpu::attention::attention_backward(&mut wdq, &mut wdk, &mut wdv, &dout, &q, &k, &v, &wout, &wlse, &starts, heads);
        assert_close(&g.read(&dq), &wdq, 1e-4, &format!("attention dq, {what}"));
        assert_close(&g.read(&dk), &wdk, 1e-4, &format!("attention dk, {what}"));
        assert_close(&g.read(&dv), &wdv, 1e-4, &format!("attention dv, {what}"));
    }
}

#[test]
fn logprob_forward_backward() {
    if let Some(g) = gpu() {
        check_logprob(&g);
    }
}

fn check_logprob(g: &Gpu) {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (rows, v) = (7, 1000);
    let logits = rand_vec(&mut rng, rows * v, 8.0);
    let targets: Vec<u32> = (0..rows).map(|_| rng.random_range(0..v as u32)).collect();
    let dlogprob = rand_vec(&mut rng, rows, 1.0);
    let (tl, tt) = (g.upload(&logits), g.upload_u32(&targets));
    let (lp, lse) = (g.alloc(rows), g.alloc(rows));
    ops::logprob_forward(g, &lp, &lse, &tl, &tt, rows, v);
    let (mut wlp, mut wlse) = (vec![0.0; rows], vec![0.0; rows]);
    cpu::logprob::logprob_forward(&mut wlp, &mut wlse, &logits, &targets, v);
    assert_close(&g.read(&lp), &wlp, 1e-5, "logprob");
    assert_close(&g.read(&lse), &wlse, 1e-5, "lse");
    let dl = g.alloc(rows * v);
    ops::logprob_backward(g, &dl, &g.upload(&dlogprob), &tl, &lse, &tt, rows, v);
    let mut wdl = vec![0.0; rows * v];
    cpu::logprob::logprob_backward(&mut wdl, &dlogprob, &logits, &wlse, &targets, v);
    assert_close(&g.read(&dl), &wdl, 1e-5, "dlogits");
}

#[test]
fn adamw_steps_and_global_norm_clipping() {
    if let Some(g) = gpu() {
        check_adamw_and_clipping(&g);
    }
}

fn check_adamw_and_clipping(g: &Gpu) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    // Two tensors, one longer than a norm workgroup's 4096 elements.
    let sizes = [5000usize, 37];
    let params: Vec<Vec<f32>> = sizes.iter().map(|&n| rand_vec(&mut rng, n, 1.0)).collect();
    let config = rstar2_model::AdamWConfig::default();
    let tp: Vec<_> = params.iter().map(|p| g.upload(p)).collect();
    let tm: Vec<_> = sizes.iter().map(|&n| g.zeros(n)).collect();
    let tv: Vec<_> = sizes.iter().map(|&n| g.zeros(n)).collect();
    let (mut p, mut m, mut v) = (params.clone(), vec![vec![0.0f32; 5000], vec![0.0; 37]], vec![vec![0.0f32; 5000], vec![0.0; 37]]);
    for step in 1..=4u64 {
        let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| rand_vec(&mut rng, n, 0.1)).collect();
        let tg: Vec<_> = grads.iter().map(|x| g.upload(x)).collect();
        let refs: Vec<_> = tg.iter().collect();
        let result = ops::clip_grad_norm(g, &refs, Some(1.0));
        let norm = grads.iter().flatten().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() as f32;
        let coef = (1.0 / (norm + 1e-6)).min(1.0);
        assert_close(&g.read(&result), &[norm, coef], 1e-5, "global norm and coefficient");
        let lr = 1e-2;
        for i in 0..2 {
            ops::adamw(g, &tp[i], &tm[i], &tv[i], &tg[i], &config, lr, step);
            let bc1 = 1.0 - config.beta1.powi(step as i32);
            let bc2_sqrt = (1.0 - config.beta2.powi(step as i32)).sqrt();
            for j in 0..sizes[i] {
                let gj = grads[i][j] * coef;
                p[i][j] *= 1.0 - lr * config.weight_decay;
                m[i][j] = config.beta1 * m[i][j] + (1.0 - config.beta1) * gj;
                v[i][j] = config.beta2 * v[i][j] + (1.0 - config.beta2) * gj * gj;
                p[i][j] -= lr / bc1 * m[i][j] / (v[i][j].sqrt() / bc2_sqrt + config.eps);
            }
        }
        for i in 0..2 {
            assert_close(&g.read(&tp[i]), &p[i], 1e-5, &format!("AdamW step {step} tensor {i}"));
        }
    }
}

/// The f16-weights variants against the f32 CPU product: the decode kernel (f16 weights and
/// products, f32 sums) and the tiled kernel (f16 weights, f32 tiles). The error is that of
/// rounding to f16 (2^-11 relative per term), so a loose tolerance, and not zero: the f16 path ran.
/// Largest absolute difference as a share of the largest reference value.
fn error_of_largest(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |s, x| s.max(x.abs()));
    got.iter().zip(want).fold(0.0f32, |e, (x, y)| e.max((x - y).abs())) / scale
}

#[test]
fn f16_weights_against_f32() {
    let Some(g) = gpu() else { return };
    if !g.has_f16() {
        eprintln!("!!! {} has no SHADER_F16: f16 kernel not tested", g.describe());
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (m, n, k) = (5, 300, 576);
    let (a, w) = (rand_vec(&mut rng, m * k, 1.0), rand_vec(&mut rng, n * k, 0.1));
    let (ta, tw16, c) = (g.upload(&a), g.upload_f16(&w), g.alloc(m * n));
    assert!(tw16.is_f16());
    ops::matmul_nt(&g, &c, &ta, &tw16, m, n, k, false);
    let got = g.read(&c);
    let mut want = vec![0.0; m * n];
    cpu::matmul::matmul_nt(&mut want, &a, &w, m, n, k, false);
    let err = error_of_largest(&got, &want);
    eprintln!("f16 matvec [{m} x {k}] @ [{k} x {n}]: max error {err:.2e} of the largest output");
    assert!(err < 5e-3 && err > 0.0, "f16 matvec error {err}");
    let m = 40;
    let a = rand_vec(&mut rng, m * k, 1.0);
    let c = g.alloc(m * n);
    ops::matmul_nt(&g, &c, &g.upload(&a), &tw16, m, n, k, false);
    let got = g.read(&c);
    let mut want = vec![0.0; m * n];
    cpu::matmul::matmul_nt(&mut want, &a, &w, m, n, k, false);
    let err = error_of_largest(&got, &want);
    eprintln!("f16-weights matmul [{m} x {k}] @ [{k} x {n}]: max error {err:.2e} of the largest output");
    assert!(err < 5e-3 && err > 0.0, "f16 matmul error {err}");
}

/// A device that binds at most 16 KiB at a time, so every operand below is bound in windows as
/// a large model's embedding, output projection and logits are on a real adapter.
fn windowed_gpu() -> Option<Gpu> {
    gpu()?;
    let mut g = Gpu::open(rstar2_gpu::AdapterChoice::Any).unwrap().expect("an adapter");
    g.limit_bindings(16 * 1024);
    Some(g)
}

#[test]
fn windowed_bindings_give_the_cpu_results() {
    let Some(g) = windowed_gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Matmul in all three layouts, every operand over the limit.
    let (n, i, o) = (80, 70, 90);
    let (x, w, dout) = (rand_vec(&mut rng, n * i, 1.0), rand_vec(&mut rng, o * i, 1.0), rand_vec(&mut rng, n * o, 1.0));
    let dw0 = rand_vec(&mut rng, o * i, 1.0);
    let (tx, tw, tdout) = (g.upload(&x), g.upload(&w), g.upload(&dout));
    let out = g.alloc(n * o);
    ops::linear_forward(&g, &out, &tx, &tw, None, n, i, o);
    let mut want = vec![0.0; n * o];
    cpu::matmul::linear_forward(&mut want, &x, &w, None, n, i, o);
    assert_close(&g.read(&out), &want, 1e-5, "windowed x·Wᵀ");
    let (tdx, tdw) = (g.alloc(n * i), g.upload(&dw0));
    ops::linear_backward(&g, Some(&tdx), &tdw, None, &tdout, &tx, &tw, n, i, o);
    let (mut dx, mut dw) = (vec![0.0; n * i], dw0.clone());
    cpu::matmul::linear_backward(Some(&mut dx), &mut dw, None, &dout, &x, &w, n, i, o);
    assert_close(&g.read(&tdx), &dx, 1e-5, "windowed dout·W");
    assert_close(&g.read(&tdw), &dw, 1e-5, "windowed doutᵀ·x accumulated");
    // Decode-shaped product: the weight in windows of whole rows, f32 and f16.
    let (m, nn, k) = (5, 300, 70);
    let (a, wd) = (rand_vec(&mut rng, m * k, 1.0), rand_vec(&mut rng, nn * k, 0.1));
    let c = g.alloc(m * nn);
    ops::matmul_nt(&g, &c, &g.upload(&a), &g.upload(&wd), m, nn, k, false);
    let mut want = vec![0.0; m * nn];
    cpu::matmul::matmul_nt(&mut want, &a, &wd, m, nn, k, false);
    assert_close(&g.read(&c), &want, 1e-5, "windowed matvec");
    if g.has_f16() {
        ops::matmul_nt(&g, &c, &g.upload(&a), &g.upload_f16(&wd), m, nn, k, false);
        assert_close(&g.read(&c), &want, 5e-3, "windowed f16 matvec");
    }
    // Embedding table of 32 KB.
    let (vocab, d) = (1000, 8);
    let ids: Vec<u32> = vec![3, 999, 500, 3, 0, 640, 999];
    let wte = rand_vec(&mut rng, vocab * d, 1.0);
    let (twte, tids) = (g.upload(&wte), g.upload_u32(&ids));
    let e = g.alloc(ids.len() * d);
    ops::embedding_forward(&g, &e, &tids, &twte, ids.len(), d);
    let mut want = vec![0.0; ids.len() * d];
    cpu::embedding::embedding_forward(&mut want, &ids, &wte, d);
    assert_eq!(g.read(&e), want, "windowed embedding lookup");
    let de = rand_vec(&mut rng, ids.len() * d, 1.0);
    ops::embedding_backward(&g, &twte, &g.upload(&de), &ids, d);
    let mut want = wte.clone();
    cpu::embedding::embedding_backward(&mut want, &de, &ids, d);
    assert_close(&g.read(&twte), &want, 1e-6, "windowed embedding backward");
    // Logits of 28 KB: four rows per window.
    let (rows, v) = (7, 1000);
    let logits = rand_vec(&mut rng, rows * v, 8.0);
    let targets: Vec<u32> = (0..rows as u32).map(|r| r * 131 % v as u32).collect();
    let dlp = rand_vec(&mut rng, rows, 1.0);
    let (tl, tt) = (g.upload(&logits), g.upload_u32(&targets));
    let (lp, lse, dl) = (g.alloc(rows), g.alloc(rows), g.alloc(rows * v));
    ops::logprob_forward(&g, &lp, &lse, &tl, &tt, rows, v);
    ops::logprob_backward(&g, &dl, &g.upload(&dlp), &tl, &lse, &tt, rows, v);
    let (mut wlp, mut wlse, mut wdl) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows * v]);
    cpu::logprob::logprob_forward(&mut wlp, &mut wlse, &logits, &targets, v);
    cpu::logprob::logprob_backward(&mut wdl, &dlp, &logits, &wlse, &targets, v);
    assert_close(&g.read(&lp), &wlp, 1e-5, "windowed logprob");
    assert_close(&g.read(&dl), &wdl, 1e-5, "windowed dlogits");
    // Elementwise kernels, AdamW and the global norm over 20 KB tensors.
    let nn = 5000;
    let (ga, gb) = (rand_vec(&mut rng, nn, 2.0), rand_vec(&mut rng, nn, 2.0));
    let (tga, tgb, to) = (g.upload(&ga), g.upload(&gb), g.alloc(nn));
    ops::swiglu_forward(&g, &to, &tga, &tgb, nn);
    let mut want = vec![0.0; nn];
    cpu::swiglu::swiglu_forward(&mut want, &ga, &gb);
    assert_close(&g.read(&to), &want, 1e-5, "windowed swiglu");
    let result = ops::clip_grad_norm(&g, &[&tga, &tgb], Some(1.0));
    let norm = ga.iter().chain(&gb).map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() as f32;
    assert_close(&g.read(&result)[..1], &[norm], 1e-5, "windowed global norm");
    let scaled: Vec<f32> = ga.iter().map(|x| x * (1.0 / (norm + 1e-6))).collect();
    assert_close(&g.read(&tga), &scaled, 1e-5, "windowed clipping");
}

/// The reductions again through workgroup memory, as on adapters without subgroups, where the
/// shared device reduces with subgroup operations.
#[test]
fn reductions_without_subgroups() {
    if gpu().is_none() {
        return;
    }
    let mut g = Gpu::open(rstar2_gpu::AdapterChoice::Any).unwrap().expect("an adapter");
    g.disable_subgroups();
    check_rmsnorm(&g);
    check_logprob(&g);
    check_adamw_and_clipping(&g);
    check_linear_with_bias(&g);
}

/// Decoding attention against the paged cache, whole and split into chunks (flash decoding,
/// with the combine kernel), against a float64 reference: GQA groups of 3 and 16 (two
/// workgroups of 8 query heads per KV head), head sizes 64, 80 (a ragged share per thread)
/// and 256, rows of different lengths (one shorter than a chunk, so some chunks are empty),
/// blocks scattered over the cache.
#[test]
fn attention_decode_paged_and_split() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    const BLOCK: usize = 16;
    for (hq, hkv, dim) in [(9, 3, 64), (16, 1, 80), (2, 1, 256)] {
        let heads = Heads { q: hq, kv: hkv, dim };
        let lens = [150usize, 1, 64, 97];
        let blocks_total = lens.iter().map(|l| l.div_ceil(BLOCK)).sum::<usize>() + 3;
        let slots = blocks_total * BLOCK;
        let (ck, cv) = (rand_vec(&mut rng, slots * hkv * dim, 1.0), rand_vec(&mut rng, slots * hkv * dim, 1.0));
        // Blocks handed out in a scrambled order.
        let mut free: Vec<u32> = (0..blocks_total as u32).collect();
        for i in (1..free.len()).rev() {
            free.swap(i, rng.random_range(0..=i));
        }
        let (mut table, mut table_off) = (Vec::new(), Vec::new());
        for &l in &lens {
            table_off.push(table.len() as u32);
            for _ in 0..l.div_ceil(BLOCK) {
                table.push(free.pop().unwrap());
            }
        }
        let rows = lens.len();
        let q = rand_vec(&mut rng, rows * hq * dim, 1.0);
        let mut want = vec![0.0f32; rows * hq * dim];
        let scale = 1.0 / (dim as f64).sqrt();
        for r in 0..rows {
            for h in 0..hq {
                let kvh = h / (hq / hkv);
                let at = |j: usize| ((table[table_off[r] as usize + j / BLOCK] as usize * BLOCK + j % BLOCK) * hkv + kvh) * dim;
                let s: Vec<f64> = (0..lens[r]).map(|j| (0..dim).map(|x| f64::from(q[(r * hq + h) * dim + x]) * f64::from(ck[at(j) + x])).sum::<f64>() * scale).collect();
                let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                for x in 0..dim {
                    want[(r * hq + h) * dim + x] = ((0..lens[r]).map(|j| (s[j] - mx).exp() * f64::from(cv[at(j) + x])).sum::<f64>() / z) as f32;
                }
            }
        }
        let (tq, tk, tv) = (g.upload(&q), g.upload(&ck), g.upload(&cv));
        let (tt, toff, tlen) = (g.upload_u32(&table), g.upload_u32(&table_off), g.upload_u32(&lens.iter().map(|&l| l as u32).collect::<Vec<_>>()));
        let max_len = *lens.iter().max().unwrap();
        for chunk_len in [64, 128, 256] {
            let out = g.alloc(rows * hq * dim);
            ops::attention_decode_chunked(&g, chunk_len, &out, &tq, &tk, &tv, &tt, &toff, &tlen, rows, max_len, heads);
            assert_close(&g.read(&out), &want, 1e-5, &format!("attention_decode {hq}/{hkv} heads of {dim}, chunks of {chunk_len}"));
        }
        let out = g.alloc(rows * hq * dim);
        ops::attention_decode(&g, &out, &tq, &tk, &tv, &tt, &toff, &tlen, rows, max_len, heads);
        assert_close(&g.read(&out), &want, 1e-5, &format!("attention_decode {hq}/{hkv} heads of {dim}"));
    }
}

/// On an adapter with WebGPU's minimum of 16 KiB of workgroup memory, matmul leaves out its
/// 128x128 tile and the attention kernels take shallower K/V and query tiles, with the same
/// results.
#[test]
fn tiles_fit_a_16_kib_workgroup_memory_budget() {
    if gpu().is_none() {
        return;
    }
    let mut g = Gpu::open(rstar2_gpu::AdapterChoice::Any).unwrap().expect("an adapter");
    g.limits.max_compute_workgroup_storage_size = 16 * 1024;
    let tiles = ops::matmul_candidates(&g, 512, 512, 512);
    assert!(!tiles.iter().any(|t| t.tm4 == 2 && t.tn4 == 2) && tiles.iter().any(|t| t.tm4 == 2 && t.tn4 == 1), "{tiles:?}");
    assert!(!(ops::matmul_tile(&g, 512, 512, 512).tm4 == 2 && ops::matmul_tile(&g, 512, 512, 512).tn4 == 2));
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    for (heads, backward) in [(Heads { q: 6, kv: 2, dim: 64 }, true), (Heads { q: 2, kv: 1, dim: 128 }, false)] {
        let lens = [21usize, 14];
        let rows: usize = lens.iter().sum();
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |s, &l| {
                let v = vec![*s; l];
                *s += l;
                Some(v)
            })
            .flatten()
            .collect();
        let ends: Vec<usize> = starts.iter().zip(lens.iter().flat_map(|&l| std::iter::repeat_n(l, l))).map(|(s, l)| s + l).collect();
        let (qd, kd) = (heads.q * heads.dim, heads.kv * heads.dim);
        let (q, k, v, dout) = (rand_vec(&mut rng, rows * qd, 1.0), rand_vec(&mut rng, rows * kd, 1.0), rand_vec(&mut rng, rows * kd, 1.0), rand_vec(&mut rng, rows * qd, 1.0));
        let to_u32 = |x: &[usize]| x.iter().map(|&s| s as u32).collect::<Vec<u32>>();
        let (tq, tk, tv, tstart) = (g.upload(&q), g.upload(&k), g.upload(&v), g.upload_u32(&to_u32(&starts)));
        let (out, lse) = (g.alloc(rows * qd), g.alloc(rows * heads.q));
        ops::attention_forward(&g, &out, &lse, &tq, &tk, &tv, &tstart, rows, heads);
        let (mut wout, mut wlse) = (vec![0.0; rows * qd], vec![0.0; rows * heads.q]);
        cpu::attention::attention_forward(&mut wout, &mut wlse, &q, &k, &v, &starts, heads);
        assert_close(&g.read(&out), &wout, 1e-5, &format!("attention out, heads of {} in 16 KiB", heads.dim));
        if backward {
            let (dq, dk, dv) = (g.alloc(rows * qd), g.alloc(rows * kd), g.alloc(rows * kd));
            ops::attention_backward(&g, &dq, &dk, &dv, &g.upload(&dout), &tq, &tk, &tv, &out, &lse, &tstart, &g.upload_u32(&to_u32(&ends)), rows, heads);
            let (mut wdq, mut wdk, mut wdv) = (vec![0.0; rows * qd], vec![0.0; rows * kd], vec![0.0; rows * kd]);
            cpu::attention::attention_backward(&mut wdq, &mut wdk, &mut wdv, &dout, &q, &k, &v, &wout, &wlse, &starts, heads);
            assert_close(&g.read(&dq), &wdq, 1e-4, "dq in 16 KiB");
            assert_close(&g.read(&dk), &wdk, 1e-4, "dk in 16 KiB");
            assert_close(&g.read(&dv), &wdv, 1e-4, "dv in 16 KiB");
        }
    }
}
