//! The GPU benchmark behind `cargo xtask bench kernels` and the standalone `rstar2-gpu-bench`
//! binary (no Python tool environment inside, for machines with a GPU and no Rust toolchain):
//! every WGSL kernel family on one adapter beside the CPU backend's op on the same shapes, a
//! whole training step and batched decoding on both backends, then what the host path costs
//! per decoding and training step.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rstar2_model::timing::{self, Spread, median_secs, show, show_ratio};

use rstar2_model::ops as cpu;
use rstar2_model::ops::attention::Heads;
use rstar2_model::{AdamW, AdamWConfig, Batch, Config, KvCache, Model, Params};

use crate::{AdapterChoice, Gpu, GpuAdamW, GpuKvCache, GpuModel, ops};

/// Errors of the benchmark, as messages.
pub type BenchResult = Result<(), Box<dyn std::error::Error>>;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct BenchArgs {
    /// Adapter index (`cargo xtask devices`); default: the first real GPU, else the first
    /// adapter (a software one gives CPU-emulation figures, useful only as a smoke test).
    pub adapter: Option<usize>,
    /// The card's fp32 peak in GFLOP/s, to print compute-bound kernels as a share of it;
    /// default: the known-adapter table's figure, if the adapter is in it.
    pub peak_gflops: Option<f64>,
    /// The card's memory bandwidth in GB/s, for memory-bound kernels and the decode bound;
    /// default: the known-adapter table's figure.
    pub peak_gbs: Option<f64>,
    /// Shapes: `small` (what a software adapter finishes in a minute) or `full`; default: full
    /// on a real GPU, small otherwise.
    pub size: Option<String>,
    /// GPU time per kernel family from timestamp queries (where the adapter has them; host
    /// times otherwise), printed after the tables.
    pub profile: bool,
    /// Rounds, each measuring every row on both sides one after the other; default 3.
    pub rounds: Option<usize>,
}

fn preset_config(root: &Path, preset: &str) -> Result<Config, Box<dyn std::error::Error>> {
    let path = root.join("models").join(preset).join("config.json");
    Config::from_file(&path).map_err(|e| format!("{e} (run from the repository root, where models/{preset}/config.json is)").into())
}

/// What one step cost on the host and the device, after warm-up (medians over `steps`).
struct StepCost {
    dispatches: u64,
    buffers: u64,
    bind_groups: u64,
    encode_ms: f64,
    host_ms: f64,
    gpu_ms: Option<f64>,
    wall_ms: f64,
}

/// Runs `step` (which records work and may read back) `warm + steps` times; per measured step:
/// dispatches, buffers and bind groups created, host time (wall time minus time blocked on the
/// device), GPU time (timestamp queries, when profiling on such an adapter) and wall time.
fn step_cost(gpu: &Gpu, warm: usize, steps: usize, mut step: impl FnMut()) -> StepCost {
    for _ in 0..warm {
        step();
        gpu.sync();
    }
    let gpu_total = |g: &Gpu| -> f64 { g.profile().iter().map(|k| k.gpu_seconds).sum() };
    let (mut host, mut wall, mut gpu_t, mut encode) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let before = gpu.stats();
    for _ in 0..steps {
        let (s0, g0, t) = (gpu.stats(), gpu_total(gpu), Instant::now());
        step();
        gpu.sync();
        let w = t.elapsed().as_secs_f64();
        let s1 = gpu.stats();
        wall.push(w);
        host.push(w - (s1.wait_seconds - s0.wait_seconds));
        encode.push(s1.encode_seconds - s0.encode_seconds);
        gpu_t.push(gpu_total(gpu) - g0);
    }
    let after = gpu.stats();
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let per = |a: u64, b: u64| (a - b) / steps as u64;
    StepCost {
        dispatches: per(after.dispatches, before.dispatches),
        buffers: per(after.buffers_created, before.buffers_created),
        bind_groups: per(after.bind_groups_created, before.bind_groups_created),
        encode_ms: median(encode) * 1e3,
        host_ms: median(host) * 1e3,
        gpu_ms: gpu.has_gpu_timestamps().then(|| median(gpu_t) * 1e3),
        wall_ms: median(wall) * 1e3,
    }
}

/// A decoding benchmark's sequences: ids, seeded prompts, and the one token each step feeds.
fn decode_inputs(batch: usize, prompt_len: usize, vocab: usize) -> (Vec<u64>, Vec<Vec<u32>>, Vec<[u32; 1]>) {
    let ids = (0..batch as u64).collect();
    let prompts = (0..batch).map(|s| (0..prompt_len).map(|i| ((s * 31 + i * 17) % vocab) as u32).collect()).collect();
    let next = (0..batch).map(|s| [(s % vocab) as u32]).collect();
    (ids, prompts, next)
}

/// Decode and training steps of a preset's shapes on the device: what the host path costs.
fn host_path(root: &Path, gpu: &Arc<Gpu>, preset: &str, decode_batch: usize, train: Option<(usize, usize)>) -> BenchResult {
    let config = preset_config(root, preset)?;
    let model = Model::new(config.clone(), Params::random(&config, 0));
    let mut gm = GpuModel::new(gpu.clone(), &model);
    let layers = config.num_hidden_layers as f64;
    // A decode step is the layers plus 4 dispatches: embedding, final norm, output layer, sampling.
    let row = |what: String, c: &StepCost, outside_layers: Option<u64>| {
        let gpu_ms = c.gpu_ms.map_or("-".into(), |g| format!("{g:.2}"));
        let per_layer = outside_layers.map_or("-".into(), |o| format!("{:.1}", (c.dispatches - o) as f64 / layers));
        println!("{what:<46} {:>10} {:>8} {:>8} {:>6} {:>10.3} {:>10.3} {:>10} {:>10.2}", c.dispatches, per_layer, c.buffers, c.bind_groups, c.encode_ms, c.host_ms, gpu_ms, c.wall_ms);
    };
    let prompt_len = 16;
    let (ids, prompts, next) = decode_inputs(decode_batch, prompt_len, config.vocab_size);
    let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let next_chunks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
    let steps = 4;
    for f16 in [false, true] {
        if f16 {
            if !gpu.has_f16() {
                continue;
            }
            gm.enable_f16_decode()?;
        }
        let mut cache = GpuKvCache::new(&gm, decode_batch * (prompt_len + 2 * steps + 4));
        gm.extend(&mut cache, &ids, &chunks).expect("sized");
        let uniforms = vec![0.0f32; decode_batch];
        let c = step_cost(gpu, 2, steps, || {
            gm.extend_sample(&mut cache, &ids, &next_chunks, 0.0, &uniforms).expect("sized");
        });
        row(format!("{preset}: decode step, batch {decode_batch}, {} weights", if f16 { "f16" } else { "f32" }), &c, Some(4));
    }
    gm.disable_f16_decode();
    if let Some((batch, len)) = train {
        let seqs: Vec<Vec<u32>> = (0..batch).map(|b| (0..len).map(|i| ((b * 7919 + i * 104_729) % config.vocab_size) as u32).collect()).collect();
        let b = Batch::new(&seqs);
        let mut opt = GpuAdamW::new(AdamWConfig::default(), &gm);
        let c = step_cost(gpu, 2, 2, || {
            let grads = gm.zero_grads();
            gm.next_token_loss_backward(&b, &grads);
            gm.clip_grad_norm(&grads, 1.0);
            opt.update(&mut gm, &grads, 1e-4);
        });
        row(format!("{preset}: train step {batch}x{len} (fwd+bwd+clip+AdamW)"), &c, None);
    }
    Ok(())
}

/// Seconds of `steps` greedy decode steps (sampled on the device) after a prefill, on a fresh
/// cache; the second of two runs, so pipelines are compiled before the clock starts.
fn gpu_decode_seconds(gm: &GpuModel, capacity: usize, ids: &[u64], prompts: &[&[u32]], next: &[&[u32]], steps: usize) -> f64 {
    let run = || {
        let mut cache = GpuKvCache::new(gm, capacity);
        gm.extend_on_device(&mut cache, ids, prompts).expect("sized");
        gm.gpu.sync();
        let uniforms = vec![0.0f32; ids.len()];
        let t = Instant::now();
        for _ in 0..steps {
            // Only the tokens come back.
            gm.extend_sample(&mut cache, ids, next, 0.0, &uniforms).expect("sized");
        }
        t.elapsed().as_secs_f64()
    };
    run();
    run()
}

fn seeded(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Published fp32 (non-tensor-core) peaks and memory bandwidths of common cards, by a piece of
/// the adapter name, most specific first: (name contains, GFLOP/s, GB/s).
const KNOWN_ADAPTERS: &[(&str, f64, f64)] = &[
    ("H100 PCIe", 51_200.0, 2_000.0),
    ("H100 NVL", 60_000.0, 3_900.0),
    ("H100", 66_900.0, 3_350.0),
    ("H200", 66_900.0, 4_800.0),
    ("A100", 19_500.0, 2_039.0),
    ("L40S", 91_600.0, 864.0),
    ("L4", 30_300.0, 300.0),
    ("RTX 4090", 82_600.0, 1_008.0),
    ("RTX 3090", 35_600.0, 936.0),
    ("Radeon RX 7900 XTX", 61_400.0, 960.0),
];

/// The adapter's peaks: given ones first, else the table's.
fn peaks(name: &str, args: &BenchArgs) -> (Option<f64>, Option<f64>, &'static str) {
    let known = KNOWN_ADAPTERS.iter().find(|(n, _, _)| name.contains(n));
    let flops = args.peak_gflops.or(known.map(|k| k.1));
    let gbs = args.peak_gbs.or(known.map(|k| k.2));
    let from = match (args.peak_gflops.is_some() || args.peak_gbs.is_some(), known) {
        (true, _) => "given",
        (false, Some(_)) => "known-adapter table",
        (false, None) => "unknown: pass --peak-gflops and --peak-gbs",
    };
    (flops, gbs, from)
}

/// " (N% of peak)" when the peak is known.
fn share(value: f64, peak: Option<f64>) -> String {
    peak.map_or(String::new(), |p| format!(" ({:.0}% of peak)", 100.0 * value / p))
}

/// A kernel's rate on both sides, one figure per round.
struct Row {
    what: String,
    unit: &'static str,
    gpu: Vec<f64>,
    cpu: Vec<f64>,
}

impl Row {
    /// `work` (GFLOP, GB or tokens) done in each round's seconds per call on either side.
    fn new(what: String, unit: &'static str, work: f64, gpu_secs: &[f64], cpu_secs: &[f64]) -> Row {
        Row { what, unit, gpu: gpu_secs.iter().map(|s| work / s).collect(), cpu: cpu_secs.iter().map(|s| work / s).collect() }
    }
}

fn print(rows: &[Row]) {
    println!("rates per round: median (min-max); GPU/CPU taken within each round");
    println!("{:<84} {:>30} {:>30} {:>26}", "kernel / work", "GPU", "CPU backend", "GPU/CPU");
    for r in rows {
        println!("{:<84} {:>30} {:>30} {:>26}", r.what, show(&r.gpu, 2, &format!(" {}", r.unit)), show(&r.cpu, 2, &format!(" {}", r.unit)), show_ratio(&r.gpu, &r.cpu));
    }
}

/// Seconds per call of the GPU side and of the CPU side in each of `rounds` rounds (see
/// [`rstar2_model::timing::in_rounds`]), each round's figure the median of its `reps` calls.
fn in_rounds(rounds: usize, gpu_reps: usize, cpu_reps: usize, mut gpu_side: impl FnMut(), mut cpu_side: impl FnMut()) -> (Vec<f64>, Vec<f64>) {
    timing::in_rounds(rounds, || median_secs(gpu_reps, &mut gpu_side), || median_secs(cpu_reps, &mut cpu_side))
}

/// The middle of per-round seconds.
fn mid(secs: &[f64]) -> f64 {
    Spread::of(secs).map_or(f64::NAN, |s| s.median)
}

/// Runs the benchmark, model presets read from `root/models`.
pub fn run(args: &BenchArgs, root: &Path) -> BenchResult {
    let gpu = match args.adapter {
        Some(i) => Gpu::open(AdapterChoice::Index(i))?,
        None => match Gpu::open(AdapterChoice::Auto)? {
            Some(g) => Some(g),
            None => Gpu::open(AdapterChoice::Any)?,
        },
    }
    .ok_or("no adapter")?;
    let real = !gpu.is_software();
    let full = match args.size.as_deref() {
        Some("full") => true,
        Some("small") => false,
        None => real,
        Some(other) => return Err(format!("--size {other}: expected small or full").into()),
    };
    let gpu = Arc::new(gpu);
    if args.profile {
        gpu.enable_profiling();
    }
    println!("adapter: {}; CPU backend: {} threads; shapes: {}", gpu.describe(), rayon::current_num_threads(), if full { "full" } else { "small" });
    if !real {
        println!("(a software adapter: these are CPU-emulation figures, not GPU figures)");
    }
    println!();
    let reps = if full { 10 } else { 3 };
    let rounds = args.rounds.unwrap_or(3).max(1);
    let mut rows = Vec::new();

    let (peak_flops, peak_gbs, from) = peaks(&gpu.info.name, args);
    let fmt_peak = |p: Option<f64>, unit: &str| p.map_or("?".to_string(), |p| format!("{p:.0} {unit}"));
    println!(
        "peaks: {} fp32, {} ({from}); matmul tiles {}",
        fmt_peak(peak_flops, "GFLOP/s"),
        fmt_peak(peak_gbs, "GB/s"),
        if gpu.autotunes() { "autotuned per shape" } else { "by heuristic (RSTAR2_GPU_AUTOTUNE=1 to tune)" }
    );
    println!(
        "subgroup reductions: {}; cooperative matrices: {}; decode kernels: {} threads per output column",
        if gpu.uses_subgroups() { "yes" } else { "no" },
        if gpu.has_coop_matrix() { "yes (8x8 f32, checked on the device)" } else { "no" },
        gpu.decode_split()
    );
    println!();

    // Matmul at x·Wᵀ: square, SmolLM2-135M and Qwen2.5-0.5B training shapes (2,048 tokens:
    // q/o, k/v, gate/up, down, output layer), decode shapes (M <= 8 takes the matvec kernel).
    let shapes: Vec<(usize, usize, usize)> = if full {
        vec![
            (4096, 4096, 4096),
            (2048, 576, 576),
            (2048, 576, 192),
            (2048, 576, 1536),
            (2048, 1536, 576),
            (2048, 576, 49152),
            (2048, 896, 4864),
            (2048, 4864, 896),
            (2048, 896, 128),
            (8, 576, 1536),
            (32, 576, 1536),
            (8, 576, 49152),
        ]
    } else {
        vec![(256, 256, 256), (128, 576, 192), (8, 576, 1536)]
    };
    for (m, k, n) in shapes {
        let (a, b) = (seeded(m * k, 1), seeded(n * k, 2));
        let (ta, tb, tc) = (gpu.upload(&a), gpu.upload(&b), gpu.alloc(m * n));
        let gpu_side = || {
            ops::matmul_nt(&gpu, &tc, &ta, &tb, m, n, k, false);
            gpu.sync();
        };
        let mut c = vec![0.0; m * n];
        let (g, cs) = in_rounds(rounds, reps, reps.min(5), gpu_side, || cpu::matmul::matmul_nt(&mut c, &a, &b, m, n, k, false));
        let flop = 2.0 * (m * n * k) as f64 / 1e9;
        let tile = if m <= 8 { "matvec".to_string() } else { ops::matmul_tile(&gpu, m, n, k).to_string() };
        rows.push(Row::new(format!("matmul [{m} x {k}] @ [{k} x {n}], {tile}{}", share(flop / mid(&g), peak_flops)), "GF/s", flop, &g, &cs));
    }

    // Memory-bound kernels: GB/s of their essential reads and writes.
    let (rows_n, d) = if full { (4096, 4096) } else { (256, 576) };
    let (x, w) = (seeded(rows_n * d, 3), seeded(d, 4));
    let (tx, tw, tout, trstd) = (gpu.upload(&x), gpu.upload(&w), gpu.alloc(rows_n * d), gpu.alloc(rows_n));
    let gpu_side = || {
        ops::rmsnorm_forward(&gpu, &tout, &trstd, &tx, &tw, rows_n, d, 1e-6);
        gpu.sync();
    };
    let (mut out, mut rstd) = (vec![0.0; rows_n * d], vec![0.0; rows_n]);
    let (g, cs) = in_rounds(rounds, reps, reps, gpu_side, || cpu::rmsnorm::rmsnorm_forward(&mut out, &mut rstd, &x, &w, d, 1e-6));
    let gb = (2 * rows_n * d * 4) as f64 / 1e9;
    rows.push(Row::new(format!("rmsnorm_forward [{rows_n} x {d}]{}", share(gb / mid(&g), peak_gbs)), "GB/s", gb, &g, &cs));

    let n = rows_n * d;
    let (gate, up) = (seeded(n, 5), seeded(n, 6));
    let (tg, tu) = (gpu.upload(&gate), gpu.upload(&up));
    let gpu_side = || {
        ops::swiglu_forward(&gpu, &tout, &tg, &tu, n);
        gpu.sync();
    };
    let (g, cs) = in_rounds(rounds, reps, reps, gpu_side, || cpu::swiglu::swiglu_forward(&mut out, &gate, &up));
    let gb = (3 * n * 4) as f64 / 1e9;
    rows.push(Row::new(format!("swiglu_forward [{n}]{}", share(gb / mid(&g), peak_gbs)), "GB/s", gb, &g, &cs));

    // AdamW over every parameter of a model (one dispatch per window of its flat buffers).
    let preset = if full { "smollm2-135m" } else { "tiny" };
    let config = preset_config(root, preset)?;
    let mut params = Params::random(&config, 0);
    let grads = Params::random(&config, 1);
    let n: usize = params.data.iter().map(Vec::len).sum();
    let gm = GpuModel::new(gpu.clone(), &Model::new(config.clone(), params.clone()));
    let mut gopt = GpuAdamW::new(AdamWConfig::default(), &gm);
    let tgrads = crate::Flat::upload(&gpu, &grads.data);
    let mut gm = gm;
    let gpu_side = || {
        gopt.update(&mut gm, &tgrads, 1e-4);
        gpu.sync();
    };
    let mut opt = AdamW::new(AdamWConfig::default(), &params);
    let (g, cs) = in_rounds(rounds, reps, reps, gpu_side, || opt.update(&mut params, &grads, 1e-4));
    let gb = (7 * n * 4) as f64 / 1e9;
    rows.push(Row::new(format!("adamw, all {n} parameters of {preset}"), "GB/s", gb, &g, &cs));

    let (lrows, vocab) = if full { (512, 49152) } else { (16, 49152) };
    let logits = seeded(lrows * vocab, 7);
    let targets: Vec<u32> = (0..lrows as u32).map(|i| i * 97 % vocab as u32).collect();
    let (tl, tt, tlp, tlse) = (gpu.upload(&logits), gpu.upload_u32(&targets), gpu.alloc(lrows), gpu.alloc(lrows));
    let gpu_side = || {
        ops::logprob_forward(&gpu, &tlp, &tlse, &tl, &tt, lrows, vocab);
        gpu.sync();
    };
    let (mut lp, mut lse) = (vec![0.0; lrows], vec![0.0; lrows]);
    let (g, cs) = in_rounds(rounds, reps, reps, gpu_side, || cpu::logprob::logprob_forward(&mut lp, &mut lse, &logits, &targets, vocab));
    let gb = (lrows * vocab * 4) as f64 / 1e9;
    rows.push(Row::new(format!("logprob_forward [{lrows} x {vocab}]"), "GB/s", gb, &g, &cs));

    // Attention over one packed batch of causal sequences (SmolLM2 heads), forward and backward.
    let heads = Heads { q: 9, kv: 3, dim: 64 };
    let (seqs, len) = if full { (4, 2048) } else { (2, 64) };
    let rows_a = seqs * len;
    let (qd, kd) = (heads.q * heads.dim, heads.kv * heads.dim);
    let (q, k, v, dout) = (seeded(rows_a * qd, 8), seeded(rows_a * kd, 9), seeded(rows_a * kd, 10), seeded(rows_a * qd, 11));
    let starts: Vec<usize> = (0..rows_a).map(|r| r / len * len).collect();
    let (tq, tk, tv, tdout) = (gpu.upload(&q), gpu.upload(&k), gpu.upload(&v), gpu.upload(&dout));
    let tstart = gpu.upload_u32(&starts.iter().map(|&s| s as u32).collect::<Vec<_>>());
    let tend = gpu.upload_u32(&starts.iter().map(|&s| (s + len) as u32).collect::<Vec<_>>());
    let (tatt, talse) = (gpu.alloc(rows_a * qd), gpu.alloc(rows_a * heads.q));
    let gpu_side = || {
        ops::attention_forward(&gpu, &tatt, &talse, &tq, &tk, &tv, &tstart, rows_a, heads);
        gpu.sync();
    };
    let (mut att, mut alse) = (vec![0.0; rows_a * qd], vec![0.0; rows_a * heads.q]);
    let (g, cs) = in_rounds(rounds, reps, reps.min(3), gpu_side, || cpu::attention::attention_forward(&mut att, &mut alse, &q, &k, &v, &starts, heads));
    // Causal: half of the len x len scores per head, 2 matmuls of head_dim.
    let flop = (seqs * heads.q * len * (len + 1) / 2 * heads.dim * 4) as f64 / 1e9;
    rows.push(Row::new(format!("attention_forward {seqs} x {len} tokens, 9/3 heads{}", share(flop / mid(&g), peak_flops)), "GF/s", flop, &g, &cs));
    let (tdq, tdk, tdv) = (gpu.alloc(rows_a * qd), gpu.alloc(rows_a * kd), gpu.alloc(rows_a * kd));
    let gpu_side = || {
        ops::attention_backward(&gpu, &tdq, &tdk, &tdv, &tdout, &tq, &tk, &tv, &tatt, &talse, &tstart, &tend, rows_a, heads);
        gpu.sync();
    };
    let (mut dq, mut dk, mut dv) = (vec![0.0; rows_a * qd], vec![0.0; rows_a * kd], vec![0.0; rows_a * kd]);
    let (g, cs) = in_rounds(rounds, reps, reps.min(3), gpu_side, || cpu::attention::attention_backward(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &att, &alse, &starts, heads));
    // Recomputed scores, dP, dQ, dK, dV: 5 products of head_dim per visible score (2.5x forward).
    let flop = flop * 2.5;
    rows.push(Row::new(format!("attention_backward {seqs} x {len} tokens, 9/3 heads{}", share(flop / mid(&g), peak_flops)), "GF/s", flop, &g, &cs));

    // Whole model: a training step and batched decoding.
    let presets: Vec<(&str, usize, usize, &[usize], usize)> = if full { vec![("tiny", 4, 256, &[32], 64), ("smollm2-135m", 4, 512, &[8, 32], 64)] } else { vec![("tiny", 2, 64, &[8], 16)] };
    for (preset, batch, len, decode_batches, steps) in presets {
        let config = preset_config(root, preset)?;
        let mut model = Model::new(config.clone(), Params::random(&config, 0));
        let seqs: Vec<Vec<u32>> = (0..batch).map(|b| (0..len).map(|i| ((b * 7919 + i * 104_729) % config.vocab_size) as u32).collect()).collect();
        let b = Batch::new(&seqs);
        let mut gm = GpuModel::new(gpu.clone(), &model);
        let mut gopt = GpuAdamW::new(AdamWConfig::default(), &gm);
        let gpu_side = || {
            let grads = gm.zero_grads();
            gm.next_token_loss_backward(&b, &grads);
            gm.clip_grad_norm(&grads, 1.0);
            gopt.update(&mut gm, &grads, 1e-4);
            gpu.sync();
        };
        let mut opt = AdamW::new(AdamWConfig::default(), &model.params);
        let mut grads = Params::zeros(&config);
        let (g, cs) = in_rounds(rounds, reps.min(5), reps.min(5), gpu_side, || {
            grads.fill_zero();
            model.next_token_loss_backward(&b, &mut grads);
            rstar2_model::clip_grad_norm(&mut grads, 1.0);
            opt.update(&mut model.params, &grads, 1e-4);
        });
        let tokens = (batch * len) as f64;
        rows.push(Row::new(format!("{preset}: train step {batch}x{len} (fwd+bwd+clip+AdamW)"), "tok/s", tokens, &g, &cs));

        // Decoding beside its bandwidth bound: the projection and output weights plus the KV
        // cache at the mean context, read once per step.
        let weight_values: usize = model.linear_weights().iter().map(|&i| model.params.data[i].len()).sum();
        let kv_values_per_position = 2 * config.num_hidden_layers * config.kv_heads() * config.head_dim();
        for &decode_batch in decode_batches {
            let prompt_len = 32;
            let (ids, prompts, next) = decode_inputs(decode_batch, prompt_len, config.vocab_size);
            let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
            let next_chunks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
            let capacity = decode_batch * (prompt_len + steps + 1);
            let cpu_decode = || {
                let mut cache = KvCache::new(capacity);
                model.extend(&mut cache, &ids, &chunks).expect("sized");
                let t = Instant::now();
                for _ in 0..steps {
                    model.extend(&mut cache, &ids, &next_chunks).expect("sized");
                }
                t.elapsed().as_secs_f64()
            };
            cpu_decode();
            let variants: Vec<bool> = [false, true].into_iter().filter(|&f16| !f16 || gpu.has_f16()).collect();
            let (mut cs, mut gs) = (Vec::new(), vec![Vec::new(); variants.len()]);
            for r in 0..rounds {
                if r % 2 == 0 {
                    cs.push(cpu_decode());
                }
                for (v, &f16) in variants.iter().enumerate() {
                    if f16 {
                        gm.enable_f16_decode()?;
                    } else {
                        gm.disable_f16_decode();
                    }
                    gs[v].push(gpu_decode_seconds(&gm, capacity, &ids, &chunks, &next_chunks, steps));
                }
                if r % 2 == 1 {
                    cs.push(cpu_decode());
                }
            }
            let tokens = (decode_batch * steps) as f64;
            let kv_bytes = decode_batch * (prompt_len + steps / 2) * kv_values_per_position * 4;
            for (v, &f16) in variants.iter().enumerate() {
                let bytes = weight_values * if f16 { 2 } else { 4 } + kv_bytes;
                let bound = peak_gbs.map_or(String::new(), |bw| {
                    let bound = decode_batch as f64 * bw * 1e9 / bytes as f64;
                    format!(" ({:.0}% of the {bound:.0} tok/s bound)", 100.0 * tokens / mid(&gs[v]) / bound)
                });
                rows.push(Row::new(format!("{preset}: decode, batch {decode_batch}, {} weights{bound}", if f16 { "f16" } else { "f32" }), "tok/s", tokens, &gs[v], &cs));
            }
            gm.disable_f16_decode();
        }
    }
    print(&rows);

    // The host path: what a decode step and a training step cost besides the arithmetic.
    println!("\nper step after warm-up (encode = recording and submitting; host = wall time minus time blocked on the device; GPU from timestamp queries with --profile)");
    println!("{:<46} {:>10} {:>8} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10}", "step", "dispatches", "/layer", "buffers", "bind", "encode ms", "host ms", "GPU ms", "wall ms");
    if full {
        host_path(root, &gpu, "smollm2-135m", 8, Some((2, 128)))?;
        host_path(root, &gpu, "smollm2-135m", 32, None)?;
    } else {
        host_path(root, &gpu, "tiny", 8, Some((2, 64)))?;
        host_path(root, &gpu, "smollm2-135m", 1, None)?;
    }
    let stats = gpu.stats();
    println!(
        "\n{} dispatches, {} submissions, {} buffers and {} bind groups created in all; device memory {:.1} MiB now ({:.1} MiB pooled), peak {:.1} MiB",
        stats.dispatches,
        stats.submits,
        stats.buffers_created,
        stats.bind_groups_created,
        stats.device_bytes as f64 / 1048576.0,
        stats.pooled_bytes as f64 / 1048576.0,
        stats.peak_device_bytes as f64 / 1048576.0
    );
    if let Some(report) = gpu.profile_report() {
        println!("\n{report}");
    }
    Ok(())
}
