//! `cargo xtask bench model`: the CPU backend against the machine's own limits (FMA peak of its
//! widest vectors, memory copy bandwidth) and against PyTorch on the same machine, all measured
//! in this run.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use rstar2_model::cpu::{Isa, isa};
use rstar2_model::ops::gemv::{PackedWeight, matmul_packed};
use rstar2_model::ops::matmul::{chosen_splits, kernel_name, matmul_nt};
use rstar2_model::peak::{amx_peak_gflops, bf16_dot_peak_gflops, fma_peak_gflops, read_bandwidth_gbs};
use rstar2_model::{AdamW, AdamWConfig, Batch, Config, DecodeWeights, KvCache, Model, Params};

use rstar2_model::timing::{median_secs, show, show_ratio};

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

/// The PyTorch process of the whole benchmark (`scripts/bench_torch.py serve`), kept warm between
/// rounds and asked for one figure at a time, so each of its figures is taken right beside ours.
struct Baseline {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Baseline {
    /// `None` (and a note saying why) where `python` has no torch and transformers.
    fn start(python: &str, threads: usize) -> Option<Baseline> {
        let usable = Command::new(python).args(["-c", "import torch, transformers"]).output().is_ok_and(|o| o.status.success());
        if !usable {
            println!("(PyTorch columns empty: `{python} -c 'import torch, transformers'` failed; pass --python)\n");
            return None;
        }
        let mut child = Command::new(python)
            .arg(workspace_root().join("scripts/bench_torch.py"))
            .args(["serve", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| println!("(PyTorch columns empty: starting {python}: {e})"))
            .ok()?;
        let (stdin, stdout) = (child.stdin.take()?, BufReader::new(child.stdout.take()?));
        Some(Baseline { child, stdin, stdout })
    }

    /// One figure, or `None` (said on stderr) if PyTorch could not produce it.
    fn ask(&mut self, request: serde_json::Value) -> Option<f64> {
        let mut line = String::new();
        let asked = writeln!(self.stdin, "{request}").and_then(|()| self.stdin.flush()).and_then(|()| self.stdout.read_line(&mut line));
        let reply: serde_json::Value = match asked {
            Ok(n) if n > 0 => serde_json::from_str(&line).ok()?,
            _ => {
                eprintln!("PyTorch baseline: the process went away ({request})");
                return None;
            }
        };
        if let Some(e) = reply["error"].as_str() {
            eprintln!("PyTorch baseline: {request}: {e}");
        }
        reply["value"].as_f64()
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A figure per round, ours and the baseline's (where it has one), and ours as a share of the
/// round's peak.
#[derive(Default)]
struct Row {
    ours: Vec<f64>,
    theirs: Vec<f64>,
    shares: Vec<f64>,
}

impl Row {
    fn record(&mut self, ours: f64, theirs: Option<f64>, peak: Option<f64>) {
        self.ours.push(ours);
        self.theirs.extend(theirs);
        self.shares.extend(peak.map(|p| 100.0 * ours / p));
    }

    /// The ratio over rounds where the baseline answered every round.
    fn ratio(&self) -> String {
        if self.theirs.len() == self.ours.len() { show_ratio(&self.ours, &self.theirs) } else { "-".into() }
    }
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

/// Figures of one round of the benchmark, beside the baseline's where it has them.
struct Round<'a> {
    baseline: Option<&'a mut Baseline>,
    /// This round's order: ours first on even rounds, the baseline's first on odd ones.
    ours_first: bool,
}

impl Round<'_> {
    /// Measures `ours` and asks the baseline for `request`, in this round's order.
    fn both(&mut self, ours: impl FnOnce() -> f64, request: Option<serde_json::Value>) -> (f64, Option<f64>) {
        let ask = |baseline: &mut Option<&mut Baseline>| baseline.as_deref_mut().zip(request).and_then(|(b, r)| b.ask(r));
        if self.ours_first {
            let o = ours();
            (o, ask(&mut self.baseline))
        } else {
            let t = ask(&mut self.baseline);
            (ours(), t)
        }
    }
}

const SHAPES: [(usize, usize, usize); 7] = [(2048, 2048, 2048), (1024, 1024, 1024), (512, 576, 1536), (512, 1536, 576), (256, 576, 49152), (8, 576, 1536), (8, 576, 49152)];
const PACKED_SHAPES: [(usize, usize, usize); 4] = [(8, 576, 1536), (32, 576, 1536), (8, 576, 49152), (32, 576, 49152)];
const TRAINING: [(&str, usize, usize); 2] = [("tiny", 4, 256), ("smollm2-135m", 2, 128)];
const DECODE_BATCHES: [usize; 4] = [1, 8, 32, 64];
const PROMPT: usize = 32;
const STEPS: usize = 32;

/// GFLOP/s of `x[m,k] @ w[n,k]^T` through the f32 product kernel: the median of `reps` calls
/// after enough for the thread-split tuner to settle.
fn matmul_gflops(m: usize, k: usize, n: usize) -> f64 {
    let (a, b) = (vec![0.5f32; m * k], vec![0.25f32; n * k]);
    let mut c = vec![0.0f32; m * n];
    let reps = if m * n * k > 1 << 28 { 5 } else { 30 };
    for _ in 0..10 {
        matmul_nt(&mut c, &a, &b, m, n, k, false);
    }
    2.0 * (m * n * k) as f64 / median_secs(reps, || matmul_nt(&mut c, &a, &b, m, n, k, false)) / 1e9
}

/// (GFLOP/s, GB/s of weights) of the packed small-m kernel at a decode shape, weights read from
/// memory: one copy per layer of SmolLM2-135M (30), cycled.
fn packed_rates(m: usize, k: usize, n: usize, dtype: DecodeWeights) -> (f64, f64) {
    let copies = if n > 4096 { 2 } else { 30 };
    let packed: Vec<PackedWeight> = (0..copies).map(|l| PackedWeight::pack(&vec![0.25 + l as f32 * 1e-3; n * k], n, k, dtype)).collect();
    let (x, mut c) = (vec![0.5f32; m * k], vec![0.0f32; m * n]);
    let secs = median_secs(9, || packed.iter().for_each(|w| matmul_packed(&mut c, &x, w, m))) / copies as f64;
    (2.0 * (m * n * k) as f64 / secs / 1e9, packed[0].bytes() as f64 / secs / 1e9)
}

/// `cargo xtask bench model`: `rounds` rounds, each measuring the machine's peaks again and then
/// every row on both sides, one right after the other; figures print as the median with the
/// min-max over rounds, and a ratio is taken within each round.
pub fn run(python: &str, rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
    let threads = rayon::current_num_threads();
    let widest = Isa::detected();
    println!("CPU: {} ({threads} threads); widest vectors: {} ({} bits), kernels use {}", rstar2_model::cpu::cpu_name(), widest.name(), widest.vector_bits(), isa().name());
    println!("{rounds} rounds; each measures the peaks, then every row on both sides one after the other (ours first in odd rounds, PyTorch first in even ones).");
    println!("Figures: median (min-max) over rounds; a ratio is taken within each round; \"noisy\": the rounds differ by more than 20% of the median.\n");
    let mut baseline = Baseline::start(python, threads);
    let isas: Vec<Isa> = Isa::available().into_iter().filter(|&i| i != Isa::Generic).collect();
    let bf16_unit = if amx_peak_gflops(0.01).is_some() {
        Some("AMX bf16 tile")
    } else if bf16_dot_peak_gflops(0.01).is_some() {
        Some("AVX-512 BF16 dot-product")
    } else {
        None
    };
    let mut decode_types = vec![DecodeWeights::F32, DecodeWeights::F16];
    if bf16_unit.is_some() {
        decode_types.push(DecodeWeights::Bf16);
    }
    let mut training: Vec<(Model, std::path::PathBuf, bool)> = TRAINING.iter().map(|(name, _, _)| preset(name)).collect::<anyhow::Result<_>>()?;
    let (mut decoder, decoder_config, decoder_pretrained) = preset("smollm2-135m")?;

    let mut peaks: Vec<Vec<f64>> = vec![Vec::new(); isas.len()];
    let (mut bf16_peaks, mut copies, mut reads) = (Vec::new(), Vec::new(), Vec::new());
    let mut matmuls: Vec<Row> = SHAPES.iter().map(|_| Row::default()).collect();
    let mut packed: Vec<Row> = (0..decode_types.len() * PACKED_SHAPES.len()).map(|_| Row::default()).collect();
    let mut packed_gbs: Vec<Vec<f64>> = vec![Vec::new(); packed.len()];
    let mut trains: Vec<Row> = TRAINING.iter().map(|_| Row::default()).collect();
    let mut decodes: Vec<Row> = (0..decode_types.len() * DECODE_BATCHES.len()).map(|_| Row::default()).collect();
    let mut bounds: Vec<Vec<f64>> = vec![Vec::new(); decodes.len()];
    for r in 0..rounds {
        eprintln!("round {} of {rounds}", r + 1);
        for (i, &isa) in isas.iter().enumerate() {
            peaks[i].push(fma_peak_gflops(isa, 0.5));
        }
        let peak = isas.iter().enumerate().map(|(i, _)| *peaks[i].last().expect("measured")).fold(f64::NAN, f64::max);
        // The vector bf16 kernel runs only where AMX does not.
        let bf16_peak = amx_peak_gflops(0.5).or_else(|| bf16_dot_peak_gflops(0.5));
        bf16_peaks.extend(bf16_peak);
        copies.push(copy_bandwidth());
        let bandwidth = read_bandwidth_gbs(512 << 20);
        reads.push(bandwidth);
        let mut round = Round { baseline: baseline.as_mut(), ours_first: r % 2 == 0 };

        for (row, &(m, k, n)) in matmuls.iter_mut().zip(&SHAPES) {
            let (ours, theirs) = round.both(|| matmul_gflops(m, k, n), Some(serde_json::json!({"op": "matmul", "m": m, "k": k, "n": n})));
            row.record(ours, theirs, Some(peak));
        }
        for (t, &dtype) in decode_types.iter().enumerate() {
            // bf16 rows as a share of the bf16 products' peak, the others of the FMA peak.
            let peak = if dtype == DecodeWeights::Bf16 { bf16_peak.unwrap_or(peak) } else { peak };
            for (j, &(m, k, n)) in PACKED_SHAPES.iter().enumerate() {
                let (gflops, gbs) = packed_rates(m, k, n, dtype);
                packed[t * PACKED_SHAPES.len() + j].record(gflops, None, Some(peak));
                packed_gbs[t * PACKED_SHAPES.len() + j].push(gbs);
            }
        }
        for ((row, (model, config_path, pretrained)), &(_, batch, len)) in trains.iter_mut().zip(&mut training).zip(&TRAINING) {
            let request = serde_json::json!({"op": "train", "config": config_path, "batch": batch, "len": len, "pretrained": *pretrained});
            let (ours, theirs) = round.both(|| train_tokens_per_s(model, batch, len), Some(request));
            row.record(ours, theirs, None);
        }
        for (b, &batch) in DECODE_BATCHES.iter().enumerate() {
            let request = serde_json::json!({"op": "decode", "config": decoder_config, "batch": batch, "prompt": PROMPT, "steps": STEPS, "pretrained": decoder_pretrained});
            let mut ours = Vec::new();
            let (_, theirs) = round.both(
                || {
                    for &dtype in &decode_types {
                        decoder.set_decode_weights(dtype);
                        ours.push(decode_tokens_per_s(&decoder, batch, PROMPT, STEPS));
                    }
                    0.0
                },
                Some(request),
            );
            for (t, tok_s) in ours.into_iter().enumerate() {
                let i = t * DECODE_BATCHES.len() + b;
                decoder.set_decode_weights(decode_types[t]);
                // The bound: the bytes one step reads (packed weights plus the KV cache at the mean
                // context) over this round's read bandwidth.
                let bytes = decoder.decode_bytes() + batch * (PROMPT + STEPS / 2) * KvCache::bytes_per_token(&decoder);
                let bound = batch as f64 / (bytes as f64 / (bandwidth * 1e9));
                decodes[i].record(tok_s, theirs, Some(bound));
                bounds[i].push(bound);
            }
        }
    }

    for (i, isa) in isas.iter().enumerate() {
        println!("FMA-loop peak, {} ({} bits), all threads: {}", isa.name(), isa.vector_bits(), show(&peaks[i], 1, " GFLOP/s"));
    }
    match bf16_unit {
        Some(unit) => println!("{unit} peak, all threads: {} (bf16 decode weights multiply on it)", show(&bf16_peaks, 1, " GFLOP/s")),
        None => println!("AMX and AVX-512 BF16: not usable on this CPU (bf16 decode weights are packed as f16)"),
    }
    println!("memory bandwidth, all threads: copy {} (bytes read + written), read {} (the decode bound below uses each round's read figure)\n", show(&copies, 1, " GB/s"), show(&reads, 1, " GB/s"));

    println!("f32 products: {}", kernel_name());
    println!("{:<32} {:>28} {:>20} {:>28} {:>26}", "matmul x[m,k] @ w[n,k]^T", "GFLOP/s", "% of peak", "PyTorch GFLOP/s", "ratio");
    for (row, &(m, k, n)) in matmuls.iter().zip(&SHAPES) {
        println!("{:<32} {:>28} {:>20} {:>28} {:>26}", format!("[{m} x {k}] @ [{n} x {k}]^T"), show(&row.ours, 1, ""), show(&row.shares, 0, "%"), show(&row.theirs, 1, ""), row.ratio());
    }
    for (t, dtype) in decode_types.iter().enumerate() {
        for (j, &(m, k, n)) in PACKED_SHAPES.iter().enumerate() {
            let i = t * PACKED_SHAPES.len() + j;
            let label = format!("[{m} x {k}] @ packed {} [{n} x {k}]^T", dtype.name());
            println!("{label:<32} {:>28} {:>20}   {} of weights", show(&packed[i].ours, 1, ""), show(&packed[i].shares, 0, "%"), show(&packed_gbs[i], 1, " GB/s"));
        }
    }
    let splits: Vec<String> = chosen_splits().iter().map(|((m, n, k), s)| format!("2^{m}x2^{n}x2^{k}: {s:?}")).collect();
    if !splits.is_empty() {
        println!("gemm thread splits chosen by measurement (m x n x k classes): {}", splits.join(", "));
    }

    println!("\n{:<44} {:>28} {:>28} {:>26}", "training step (fwd + bwd + AdamW), tok/s", "rstar2", "PyTorch", "ratio");
    for ((row, (_, _, pretrained)), &(name, batch, len)) in trains.iter().zip(&training).zip(&TRAINING) {
        let label = format!("{name} ({}) {batch}x{len}", if *pretrained { "imported weights" } else { "random weights" });
        println!("{label:<44} {:>28} {:>28} {:>26}", show(&row.ours, 1, ""), show(&row.theirs, 1, ""), row.ratio());
    }

    println!(
        "\nsmollm2-135m ({}) greedy decoding, prompt {PROMPT}, {STEPS} steps (each figure the best of 3 runs, both sides)",
        if decoder_pretrained { "imported weights" } else { "random weights" }
    );
    println!("{:<6} {:<8} {:>26} {:>14} {:>20} {:>26} {:>26}", "batch", "weights", "tok/s", "bound tok/s", "of bound", "PyTorch f32 tok/s", "ratio");
    for (t, dtype) in decode_types.iter().enumerate() {
        for (b, batch) in DECODE_BATCHES.iter().enumerate() {
            let i = t * DECODE_BATCHES.len() + b;
            let row = &decodes[i];
            println!(
                "{batch:<6} {:<8} {:>26} {:>14} {:>20} {:>26} {:>26}",
                dtype.name(),
                show(&row.ours, 1, ""),
                show(&bounds[i], 0, ""),
                show(&row.shares, 0, "%"),
                show(&row.theirs, 1, ""),
                row.ratio()
            );
        }
    }
    println!("peak RSS {:.0} MiB", peak_rss_mib());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The baseline's protocol against a stand-in for `python3 bench_torch.py serve`: a figure
    /// comes back, an error reply is no figure, and a process that went away is no figure.
    #[test]
    fn the_baseline_answers_one_figure_per_request() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rstar2-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let python = dir.join("python");
        let script = "#!/bin/sh\n[ \"$1\" = -c ] && exit 0\nn=0\nwhile IFS= read -r line; do\n  n=$((n + 1))\n  case \"$line\" in\n    *fail*) echo '{\"error\": \"ValueError: no such op\"}' ;;\n    *quit*) exit 0 ;;\n    *) echo \"{\\\"value\\\": $n.5}\" ;;\n  esac\ndone\n";
        std::fs::write(&python, script).unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut baseline = Baseline::start(python.to_str().unwrap(), 2).expect("the stand-in starts");
        assert_eq!(baseline.ask(serde_json::json!({"op": "matmul", "m": 1, "k": 1, "n": 1})), Some(1.5));
        assert_eq!(baseline.ask(serde_json::json!({"op": "fail"})), None);
        assert_eq!(baseline.ask(serde_json::json!({"op": "matmul"})), Some(3.5), "one process kept warm: it counts every request");
        let mut round = Round { baseline: Some(&mut baseline), ours_first: false };
        assert_eq!(round.both(|| 7.0, Some(serde_json::json!({"op": "train"}))), (7.0, Some(4.5)));
        assert_eq!(round.both(|| 8.0, None), (8.0, None));
        assert_eq!(baseline.ask(serde_json::json!({"op": "quit"})), None);
        assert_eq!(baseline.ask(serde_json::json!({"op": "matmul"})), None);
        drop(baseline);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_row_has_a_ratio_only_where_the_baseline_answered_every_round() {
        let mut row = Row::default();
        row.record(10.0, Some(8.0), Some(20.0));
        row.record(12.0, Some(8.0), Some(20.0));
        assert_eq!(row.shares, [50.0, 60.0]);
        assert_eq!(row.ratio(), "1.38x (1.25-1.50)");
        row.record(11.0, None, None);
        assert_eq!(row.ratio(), "-");
    }
}
