//! `cargo xtask bench model`: the CPU backend against the machine's own limits (FMA peak of its
//! widest vectors, memory copy bandwidth) and against PyTorch on the same machine, all measured
//! in this run.

use std::process::Command;
use std::time::Instant;

use rstar2_model::cpu::{Isa, isa};
use rstar2_model::ops::gemv::{PackedWeight, matmul_packed};
use rstar2_model::ops::matmul::{chosen_splits, kernel_name, matmul_nt};
use rstar2_model::peak::{amx_peak_gflops, bf16_dot_peak_gflops, fma_peak_gflops, read_bandwidth_gbs};
use rstar2_model::{AdamW, AdamWConfig, Batch, Config, DecodeWeights, KvCache, Model, Params};

use rstar2_model::timing::median_secs;

use crate::test_cmd::workspace_root;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Memory copy bandwidth in GB/s (bytes read plus bytes written, STREAM's convention) with all
/// threads copying their part of a 512 MiB buffer; median of 5.
fn copy_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = 64 << 20; // f64 elements: 512 MiB
    let src = vec![1.0f64; n];
    let mut dst = vec![0.0f64; n];
    let chunk = n.div_ceil(rayon::current_num_threads());
    let secs = median_secs(5, || dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s)));
    std::hint::black_box(&dst);
    2.0 * (n * 8) as f64 / secs / 1e9
}

fn torch(python: &str, args: &[String]) -> Option<serde_json::Value> {
    let out = Command::new(python).arg(workspace_root().join("scripts/bench_torch.py")).args(args).output().ok()?;
    if !out.status.success() {
        eprintln!("PyTorch baseline skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("python failed"));
        return None;
    }
    serde_json::from_slice(out.stdout.split(|&b| b == b'\n').find(|l| l.starts_with(b"{"))?).ok()
}

/// The model of a preset: its imported checkpoint when present (`cargo xtask fetch-model`), for
/// both sides, else random weights of its shape (the speed is the same).
fn preset(name: &str) -> anyhow::Result<(Model, std::path::PathBuf, bool)> {
    let config_path = workspace_root().join("models").join(name).join("config.json");
    let config = Config::from_file(&config_path)?;
    let dir = config_path.parent().expect("a model folder");
    let pretrained = dir.join("model.safetensors").exists();
    let params = if pretrained { Params::load(dir, &config)? } else { Params::random(&config, 0) };
    Ok((Model::new(config, params), config_path, pretrained))
}

fn train_tokens_per_s(model: &mut Model, batch: usize, len: usize) -> f64 {
    let v = model.config.vocab_size as u32;
    let seqs: Vec<Vec<u32>> = (0..batch).map(|b| (0..len).map(|i| ((b * 7919 + i * 104_729) as u32) % v).collect()).collect();
    let batch_tokens = Batch::new(&seqs);
    let mut opt = AdamW::new(AdamWConfig::default(), &model.params);
    let mut grads = Params::zeros(&model.config);
    let secs = median_secs(3, || {
        grads.fill_zero();
        model.next_token_loss_backward(&batch_tokens, &mut grads);
        opt.update(&mut model.params, &grads, 1e-4);
    });
    (batch * len) as f64 / secs
}

/// Greedy decoding of `batch` sequences after a prompt of `prompt_len`: tokens/s over `steps`
/// steps, the best of three runs after a warm-up (PyTorch's figure is taken the same way: on a
/// shared machine the best run is the one least disturbed by neighbours).
fn decode_tokens_per_s(model: &Model, batch: usize, prompt_len: usize, steps: usize) -> f64 {
    let v = model.config.vocab_size as u32;
    let seqs: Vec<u64> = (0..batch as u64).collect();
    let run = || {
        let mut cache = KvCache::new(batch * (prompt_len + steps + 1));
        let prompts: Vec<Vec<u32>> = (0..batch).map(|b| (0..prompt_len).map(|i| ((b * 31 + i * 17) as u32) % v).collect()).collect();
        let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let mut logits = model.extend(&mut cache, &seqs, &chunks).expect("cache sized for the run");
        let start = Instant::now();
        for _ in 0..steps {
            let next: Vec<[u32; 1]> = logits.iter().map(|l| [argmax(l)]).collect();
            let chunks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
            logits = model.extend(&mut cache, &seqs, &chunks).expect("cache sized for the run");
        }
        start.elapsed().as_secs_f64()
    };
    run();
    let best = (0..3).map(|_| run()).fold(f64::INFINITY, f64::min);
    (batch * steps) as f64 / best
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |x| format!("{x:.1}"))
}

fn ratio(ours: f64, theirs: Option<f64>) -> String {
    theirs.map_or("-".to_string(), |t| format!("{:.2}x", ours / t))
}

pub fn run(python: &str) -> anyhow::Result<()> {
    let threads = rayon::current_num_threads();
    let widest = Isa::detected();
    println!("CPU: {} ({threads} threads); widest vectors: {} ({} bits), kernels use {}", rstar2_model::cpu::cpu_name(), widest.name(), widest.vector_bits(), isa().name());
    let peaks: Vec<(Isa, f64)> = Isa::available().into_iter().filter(|&i| i != Isa::Generic).map(|i| (i, fma_peak_gflops(i, 0.5))).collect();
    for (i, p) in &peaks {
        println!("FMA-loop peak, {} ({} bits), all threads: {p:.1} GFLOP/s", i.name(), i.vector_bits());
    }
    let peak = peaks.iter().map(|p| p.1).fold(f64::NAN, f64::max);
    let amx_peak = amx_peak_gflops(0.5);
    // The vector bf16 kernel runs only where AMX does not.
    let dot_peak = if amx_peak.is_none() { bf16_dot_peak_gflops(0.5) } else { None };
    match (amx_peak, dot_peak) {
        (Some(p), _) => println!("AMX bf16 tile peak, all threads: {p:.1} GFLOP/s (bf16 decode weights multiply on it)"),
        (None, Some(p)) => println!("AVX-512 BF16 dot-product peak, all threads: {p:.1} GFLOP/s (no AMX: bf16 decode weights multiply on it)"),
        (None, None) => println!("AMX and AVX-512 BF16: not usable on this CPU (bf16 decode weights are packed as f16)"),
    }
    // The bf16 products' peak, where the CPU has them.
    let bf16_peak = amx_peak.or(dot_peak);
    let mut decode_types = vec![DecodeWeights::F32, DecodeWeights::F16];
    if bf16_peak.is_some() {
        decode_types.push(DecodeWeights::Bf16);
    }
    let copy = copy_bandwidth();
    let bandwidth = read_bandwidth_gbs(512 << 20);
    println!("memory bandwidth, all threads: copy {copy:.1} GB/s (bytes read + written), read {bandwidth:.1} GB/s (the decode bound below uses the read figure)\n");
    let torch_ok = Command::new(python).args(["-c", "import torch, transformers"]).output().is_ok_and(|o| o.status.success());
    if !torch_ok {
        println!("(PyTorch columns empty: `{python} -c 'import torch, transformers'` failed; pass --python)\n");
    }
    let shapes = [(2048, 2048, 2048), (1024, 1024, 1024), (512, 576, 1536), (512, 1536, 576), (256, 576, 49152), (8, 576, 1536), (8, 576, 49152)];
    let torch_mm = if torch_ok {
        let mut args = vec!["matmul".to_string(), threads.to_string()];
        args.extend(shapes.iter().map(|(m, k, n)| format!("{m},{k},{n}")));
        torch(python, &args).and_then(|v| v["gflops"].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect::<Vec<_>>()))
    } else {
        None
    };
    println!("f32 products: {}", kernel_name());
    println!("{:<32} {:>10} {:>10} {:>12} {:>8}", "matmul x[m,k] @ w[n,k]^T", "GFLOP/s", "% of peak", "PyTorch", "ratio");
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        let (a, b) = (vec![0.5f32; m * k], vec![0.25f32; n * k]);
        let mut c = vec![0.0f32; m * n];
        let reps = if m * n * k > 1 << 28 { 5 } else { 30 };
        // Enough calls for the thread-split tuner to settle before the timed ones.
        for _ in 0..10 {
            matmul_nt(&mut c, &a, &b, m, n, k, false);
        }
        let gflops = 2.0 * (m * n * k) as f64 / median_secs(reps, || matmul_nt(&mut c, &a, &b, m, n, k, false)) / 1e9;
        let theirs = torch_mm.as_ref().and_then(|t| t.get(i).copied());
        println!("{:<32} {gflops:>10.1} {:>9.0}% {:>12} {:>8}", format!("[{m} x {k}] @ [{n} x {k}]^T"), 100.0 * gflops / peak, fmt(theirs), ratio(gflops, theirs));
    }
    // Decode shapes through the packed small-m kernel (what cached inference uses), weights read
    // from memory: one copy per layer of SmolLM2-135M (30), cycled.
    for &dtype in &decode_types {
        // bf16 rows as a share of the bf16 products' peak, the others of the FMA peak.
        let peak = if dtype == DecodeWeights::Bf16 { bf16_peak.unwrap_or(peak) } else { peak };
        for (m, k, n) in [(8usize, 576usize, 1536usize), (32, 576, 1536), (8, 576, 49152), (32, 576, 49152)] {
            let copies = if n > 4096 { 2 } else { 30 };
            let packed: Vec<PackedWeight> = (0..copies).map(|l| PackedWeight::pack(&vec![0.25 + l as f32 * 1e-3; n * k], n, k, dtype)).collect();
            let (x, mut c) = (vec![0.5f32; m * k], vec![0.0f32; m * n]);
            let secs = median_secs(9, || packed.iter().for_each(|w| matmul_packed(&mut c, &x, w, m))) / copies as f64;
            let gflops = 2.0 * (m * n * k) as f64 / secs / 1e9;
            let gbs = packed[0].bytes() as f64 / secs / 1e9;
            println!("{:<32} {gflops:>10.1} {:>9.0}% {:>12} {:>8}   {gbs:.1} GB/s of weights", format!("[{m} x {k}] @ packed {} [{n} x {k}]^T", dtype.name()), 100.0 * gflops / peak, "-", "-");
        }
    }
    let splits: Vec<String> = chosen_splits().iter().map(|((m, n, k), s)| format!("2^{m}x2^{n}x2^{k}: {s:?}")).collect();
    if !splits.is_empty() {
        println!("gemm thread splits chosen by measurement (m x n x k classes): {}", splits.join(", "));
    }
    println!();

    println!("{:<52} {:>12} {:>12} {:>8} {:>12}", "training step (fwd + bwd + AdamW)", "rstar2 tok/s", "PyTorch", "ratio", "peak RSS MiB");
    for (name, batch, len) in [("tiny", 4, 256), ("smollm2-135m", 2, 128)] {
        let (mut model, config_path, pretrained) = preset(name)?;
        let ours = train_tokens_per_s(&mut model, batch, len);
        let rss = peak_rss_mib();
        let theirs = if torch_ok {
            torch(python, &["train".into(), config_path.display().to_string(), batch.to_string(), len.to_string(), threads.to_string(), u8::from(pretrained).to_string()])
                .and_then(|v| v["tokens_per_s"].as_f64())
        } else {
            None
        };
        let label = format!("{name} ({}) {batch}x{len}", if pretrained { "imported weights" } else { "random weights" });
        println!("{label:<52} {ours:>12.1} {:>12} {:>8} {rss:>12.0}", fmt(theirs), ratio(ours, theirs));
    }

    // Decoding: the bound is the bytes one step reads (packed weights plus the KV cache at the
    // mean context) over the read bandwidth.
    let (prompt_len, steps) = (32, 32);
    let batches = [1usize, 8, 32, 64];
    let (mut model, config_path, pretrained) = preset("smollm2-135m")?;
    let theirs: Option<Vec<f64>> = if torch_ok {
        let list = batches.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        torch(python, &["decode".into(), config_path.display().to_string(), list, prompt_len.to_string(), steps.to_string(), threads.to_string(), u8::from(pretrained).to_string()])
            .and_then(|v| v["tokens_per_s"].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()))
    } else {
        None
    };
    println!("\nsmollm2-135m ({}) greedy decoding, prompt {prompt_len}, {steps} steps (best of 3 runs, both sides)", if pretrained { "imported weights" } else { "random weights" });
    println!("{:<8} {:<8} {:>10} {:>12} {:>10} {:>12} {:>8}", "batch", "weights", "tok/s", "bound tok/s", "of bound", "PyTorch f32", "ratio");
    for &dtype in &decode_types {
        model.set_decode_weights(dtype);
        for (i, &b) in batches.iter().enumerate() {
            let ours = decode_tokens_per_s(&model, b, prompt_len, steps);
            let bytes = model.decode_bytes() + b * (prompt_len + steps / 2) * KvCache::bytes_per_token(&model);
            let bound = b as f64 / (bytes as f64 / (bandwidth * 1e9));
            let t = theirs.as_ref().and_then(|t| t.get(i).copied());
            println!("{b:<8} {:<8} {ours:>10.1} {bound:>12.1} {:>9.0}% {:>12} {:>8}", dtype.name(), 100.0 * ours / bound, fmt(t), ratio(ours, t));
        }
    }
    println!("peak RSS {:.0} MiB", peak_rss_mib());
    Ok(())
}
