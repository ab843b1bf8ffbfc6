//! `cargo xtask bench model`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rstar2_model::ops::matmul::matmul_nt;
use rstar2_model::{AdamW, AdamWConfig, Batch, Config, KvCache, Model, Params};

use crate::test_cmd::workspace_root;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Median seconds of `reps` runs after one warm-up.
pub(crate) fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
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

struct Shapes {
    preset: &'static str,
    train_batch: usize,
    train_len: usize,
    decode_batch: usize,
    prompt_len: usize,
    decode_steps: usize,
}

fn train_tokens_per_s(model: &mut Model, s: &Shapes) -> f64 {
    let v = model.config.vocab_size as u32;
    let seqs: Vec<Vec<u32>> = (0..s.train_batch).map(|b| (0..s.train_len).map(|i| ((b * 7919 + i * 104_729) as u32) % v).collect()).collect();
    let batch = Batch::new(&seqs);
    let mut opt = AdamW::new(AdamWConfig::default(), &model.params);
    let mut grads = Params::zeros(&model.config);
    let secs = median_secs(3, || {
        grads.fill_zero();
        model.next_token_loss_backward(&batch, &mut grads);
        opt.update(&mut model.params, &grads, 1e-4);
    });
    (s.train_batch * s.train_len) as f64 / secs
}

fn decode_tokens_per_s(model: &Model, s: &Shapes) -> f64 {
    let v = model.config.vocab_size as u32;
    let seqs: Vec<u64> = (0..s.decode_batch as u64).collect();
    let run = || {
        let mut cache = KvCache::new(s.decode_batch * (s.prompt_len + s.decode_steps));
        let prompts: Vec<Vec<u32>> = (0..s.decode_batch).map(|b| (0..s.prompt_len).map(|i| ((b * 31 + i * 17) as u32) % v).collect()).collect();
        let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let mut logits = model.extend(&mut cache, &seqs, &chunks).expect("cache sized for the run");
        let start = Instant::now();
        for _ in 0..s.decode_steps {
            let next: Vec<[u32; 1]> = logits.iter().map(|l| [argmax(l)]).collect();
            let chunks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
            logits = model.extend(&mut cache, &seqs, &chunks).expect("cache sized for the run");
        }
        start.elapsed().as_secs_f64()
    };
    run();
    (s.decode_batch * s.decode_steps) as f64 / run()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

fn torch_baseline(python: &str, config: &Path, s: &Shapes, threads: usize, pretrained: bool) -> Option<(f64, f64)> {
    let script = workspace_root().join("scripts/bench_torch.py");
    let out = Command::new(python)
        .arg(script)
        .arg(config)
        .args([s.train_batch, s.train_len, s.decode_batch, s.prompt_len, s.decode_steps, threads, usize::from(pretrained)].map(|x| x.to_string()))
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("PyTorch baseline skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("python failed"));
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(out.stdout.split(|&b| b == b'\n').find(|l| l.starts_with(b"{"))?).ok()?;
    Some((v["train_tokens_per_s"].as_f64()?, v["decode_tokens_per_s"].as_f64()?))
}

/// FMA throughput of one thread, in GFLOP/s: twelve independent 8-lane fused multiply-add
/// chains (enough to cover FMA latency on current x86 cores), no memory traffic.
#[cfg(target_arch = "x86_64")]
fn fma_loop_gflops() -> Option<f64> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run(iters: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0.0f32; 8];
        let mut sum = _mm256_setzero_ps();
        for x in acc {
            sum = _mm256_add_ps(sum, x);
        }
        // SAFETY: `out` holds the 8 floats written.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return None;
    }
    let iters = 50_000_000u64;
    let start = Instant::now();
    // SAFETY: the features were detected above.
    let r = unsafe { run(iters) };
    std::hint::black_box(r);
    Some((iters * 12 * 8 * 2) as f64 / start.elapsed().as_secs_f64() / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_loop_gflops() -> Option<f64> {
    None
}

pub fn run(peak_gflops: f64, python: &str) -> anyhow::Result<()> {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    println!("CPU backend, {threads} threads; fp32 peak taken as {peak_gflops:.0} GFLOP/s (nominal)");
    let measured: Option<f64> = (0..threads).into_par_iter().map(|_| fma_loop_gflops()).sum();
    match measured {
        Some(m) => println!("measured FMA-loop peak on all {threads} threads at once: {m:.1} GFLOP/s\n"),
        None => println!("(no AVX2+FMA: FMA-loop peak not measured)\n"),
    }
    println!("{:<34} {:>12} {:>10} {:>12}", "matmul [m x k] @ [k x n]", "GFLOP/s", "% nominal", "% measured");
    for (m, k, n) in [(2048, 2048, 2048), (1024, 1024, 1024), (512, 576, 1536), (512, 1536, 576), (8, 576, 1536), (8, 576, 49152)] {
        let (a, b) = (vec![0.5f32; m * k], vec![0.25f32; n * k]);
        let mut c = vec![0.0f32; m * n];
        let reps = if m * n * k > 1 << 28 { 3 } else { 20 };
        let secs = median_secs(reps, || matmul_nt(&mut c, &a, &b, m, n, k, false));
        let gflops = 2.0 * (m * n * k) as f64 / secs / 1e9;
        let of_measured = measured.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * gflops / p));
        println!("{:<34} {gflops:>12.1} {:>9.0}% {of_measured:>12}", format!("[{m} x {k}] @ [{k} x {n}]"), 100.0 * gflops / peak_gflops);
    }
    let torch_ok = Command::new(python).args(["-c", "import torch, transformers"]).output().is_ok_and(|o| o.status.success());
    if !torch_ok {
        println!("\n(PyTorch baseline skipped: `{python} -c 'import torch, transformers'` failed; pass --python)");
    }
    println!("\n{:<48} {:>12} {:>12} {:>8} {:>12}", "model", "rstar2 tok/s", "torch tok/s", "ratio", "peak RSS MiB");
    for s in [
        Shapes { preset: "tiny", train_batch: 4, train_len: 256, decode_batch: 8, prompt_len: 32, decode_steps: 64 },
        Shapes { preset: "smollm2-135m", train_batch: 2, train_len: 128, decode_batch: 8, prompt_len: 32, decode_steps: 16 },
    ] {
        let config_path = workspace_root().join("models").join(s.preset).join("config.json");
        let config = Config::from_file(&config_path)?;
        // The imported checkpoint when it is there (`cargo xtask fetch-model smollm2-135m`), for
        // both sides; else random weights of the same shape (the speed is the same).
        let dir = config_path.parent().expect("a model folder");
        let pretrained = dir.join("model.safetensors").exists();
        let params = if pretrained { Params::load(dir, &config)? } else { Params::random(&config, 0) };
        let mut model = Model::new(config.clone(), params);
        let weights = if pretrained { "imported weights" } else { "random weights" };
        let train = train_tokens_per_s(&mut model, &s);
        let rss_train = peak_rss_mib();
        let decode = decode_tokens_per_s(&model, &s);
        let rss_decode = peak_rss_mib();
        let torch = if torch_ok { torch_baseline(python, &config_path, &s, threads, pretrained) } else { None };
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
        let ratio = |ours: f64, theirs: Option<f64>| theirs.map_or("-".to_string(), |t| format!("{:.2}x", ours / t));
        let label = format!("{} ({weights}) train ({}x{}, fwd+bwd+AdamW)", s.preset, s.train_batch, s.train_len);
        println!("{label:<48} {train:>12.1} {:>12} {:>8} {rss_train:>12.0}", fmt(torch.map(|t| t.0)), ratio(train, torch.map(|t| t.0)));
        let label = format!("{} ({weights}) decode (batch {}, KV cache)", s.preset, s.decode_batch);
        println!("{label:<48} {decode:>12.1} {:>12} {:>8} {rss_decode:>12.0}", fmt(torch.map(|t| t.1)), ratio(decode, torch.map(|t| t.1)));
    }
    Ok(())
}
