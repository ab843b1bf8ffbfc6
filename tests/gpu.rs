//! The whole model on the WGSL backend against Hugging Face transformers' fixtures and the CPU
//! backend: logits, loss, every gradient, AdamW steps with clipping, and KV-cache decoding. Runs
//! on whatever adapter wgpu finds (lavapipe in CI); see `rstar2_gpu::test_gpu`.

use rstar2::gpu::{GpuAdamW, GpuKvCache, GpuModel, test_gpu};
use rstar2::model::{AdamW, AdamWConfig, Batch, KvCache, clip_grad_norm};

use crate::support::{expected, load, rel_err};

fn golden_on_gpu(name: &str) {
    let Some(gpu) = test_gpu() else { return };
    golden_on(gpu, name);
}

fn golden_on(gpu: std::sync::Arc<rstar2::gpu::Gpu>, name: &str) {
    let cpu = load(name);
    let exp = expected(name);
    let v = cpu.config.vocab_size;
    let mut model = GpuModel::new(gpu, &cpu);
    let batch = Batch::new(&exp.seqs);
    let logits = model.logits(&batch);
    let mut row = 0;
    for (i, s) in exp.seqs.iter().enumerate() {
        let want = &exp.tensors[&format!("logits.{i}")].1;
        let err = rel_err(&logits[row * v..(row + s.len()) * v], want);
        assert!(err < 1e-5, "{name}: GPU logits of sequence {i} differ from transformers' by {err}");
        row += s.len();
    }
    let grads = model.zero_grads();
    let loss = model.next_token_loss_backward(&batch, &grads);
    let want_loss = exp.tensors["loss"].1[0];
    assert!((loss - want_loss).abs() < 1e-5, "{name}: GPU loss {loss} vs {want_loss}");
    let grads_cpu = model.download(&grads);
    for (i, (pname, _)) in grads_cpu.specs.iter().enumerate() {
        let err = rel_err(&grads_cpu.data[i], &exp.tensors[&format!("grad.{pname}")].1);
        assert!(err < 1e-4, "{name}: GPU gradient of {pname} differs from transformers' by {err}");
    }
    // Global-norm clipping on the device (max norm 0.5, so it bites) against the CPU's.
    let mut clipped = model.download(&grads);
    let cpu_norm = clip_grad_norm(&mut clipped, 0.5);
    let norm = model.clip_grad_norm(&grads, 0.5);
    assert!(cpu_norm > 0.5 && (norm - cpu_norm).abs() < 1e-4 * cpu_norm, "{name}: gradient norm {norm} vs CPU {cpu_norm}");
    let got = model.download(&grads);
    for (i, (pname, _)) in got.specs.iter().enumerate() {
        let err = rel_err(&got.data[i], &clipped.data[i]);
        assert!(err < 1e-5, "{name}: clipped gradient of {pname} differs from the CPU's by {err}");
    }
    // AdamW steps on the device: losses against transformers, parameters against the CPU
    // backend's AdamW.
    let config = AdamWConfig { weight_decay: 0.01, ..Default::default() };
    let mut opt = GpuAdamW::new(config, &model);
    let mut cpu_params = cpu.params.clone();
    let mut cpu_opt = AdamW::new(config, &cpu_params);
    for (step, want) in exp.tensors["adamw_losses"].1.iter().enumerate() {
        let grads = model.zero_grads();
        let loss = model.next_token_loss_backward(&batch, &grads);
        assert!((loss - want).abs() < 2e-4 * want.abs().max(1.0), "{name}: GPU loss before AdamW step {step}: {loss} vs {want}");
        if step < exp.steps {
            let g = model.download(&grads);
            opt.update(&mut model, &grads, exp.lr);
            cpu_opt.update(&mut cpu_params, &g, exp.lr);
        }
    }
    let got = model.download_params();
    for (i, (pname, _)) in got.specs.iter().enumerate() {
        let err = rel_err(&got.data[i], &cpu_params.data[i]);
        assert!(err < 1e-5, "{name}: {pname} after {} GPU AdamW steps differs from the CPU backend by {err}", exp.steps);
    }
}

#[test]
fn gpu_golden_qwen2_tied_embeddings_with_qkv_bias() {
    golden_on_gpu("qwen2-tied");
}

#[test]
fn gpu_golden_qwen3_qk_norm_untied() {
    golden_on_gpu("qwen3-untied");
}

#[test]
fn gpu_golden_llama_untied() {
    golden_on_gpu("llama-untied");
}

/// The golden checks again on a device that binds at most 8 KiB at a time: the 12 KiB token
/// embedding and output projection (and their gradients and AdamW moments) go through the
/// windowed paths that real vocabularies take on real adapters.
#[test]
fn gpu_golden_with_windowed_bindings() {
    if test_gpu().is_none() {
        return;
    }
    let mut gpu = rstar2::gpu::Gpu::open(rstar2::gpu::AdapterChoice::Any).unwrap().expect("an adapter");
    gpu.limit_bindings(8 * 1024);
    let gpu = std::sync::Arc::new(gpu);
    golden_on(gpu.clone(), "qwen2-tied");
    golden_on(gpu, "qwen3-untied");
}

/// Paged-cache decoding on the device gives the CPU cache's logits: prefill of different
/// lengths, one decode step each, a chunk appended to one sequence (a tool response), blocks
/// crossed, capacity enforced and released.
#[test]
fn gpu_kv_cache_matches_cpu() {
    let Some(shared) = test_gpu() else { return };
    // The decode kernels as the adapter runs them, and with 16 threads per output column as real
    // GPUs run them (partial sums reduced in workgroup memory).
    let split = std::sync::Arc::new(rstar2_gpu::Gpu::open(rstar2_gpu::AdapterChoice::Any).unwrap().expect("an adapter"));
    split.set_decode_split(16);
    // qwen3: per-head q/k norms; qwen2: q/k/v biases, tied output layer; llama: neither.
    for (gpu, name) in ["qwen3-untied", "qwen2-tied", "llama-untied"].into_iter().flat_map(|n| [(shared.clone(), n), (split.clone(), n)]) {
        let cpu = load(name);
        let model = GpuModel::new(gpu.clone(), &cpu);
        let full: Vec<Vec<u32>> = vec![(0..60).map(|i| (i * 7 + 3) % 90).collect(), vec![33, 8, 71, 20, 95, 1]];
        let (mut gc, mut cc) = (GpuKvCache::new(&model, 128), KvCache::new(128));
        // A 39-row prefill (the unfused path), then decoding and a 15-token chunk (the fused
        // decode kernels, up to 32 rows).
        let steps: [(&[u64], Vec<&[u32]>); 3] = [(&[0, 1], vec![&full[0][..36], &full[1][..3]]), (&[0, 1], vec![&full[0][36..37], &full[1][3..4]]), (&[0], vec![&full[0][37..52]])];
        for (seqs, chunks) in &steps {
            let got = model.extend(&mut gc, seqs, chunks).unwrap();
            let want = cpu.extend(&mut cc, seqs, chunks).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(rel_err(g, w) < 1e-5, "{name}: GPU cache logits differ by {}", rel_err(g, w));
            }
        }
        assert_eq!((gc.len(0), gc.len(1), gc.used()), (52, 4, 56));
        assert!(model.extend(&mut gc, &[2], &[&[1u32; 80]]).is_err(), "over capacity");
        gc.release(0);
        assert_eq!(gc.used(), 4);
        let got = model.extend(&mut gc, &[2], &[&[1u32; 30]]).unwrap();
        let want = cpu.forward(&Batch::new(&[vec![1u32; 30]]));
        let v = cpu.config.vocab_size;
        assert!(rel_err(&got[0], &want.logits[29 * v..]) < 1e-5, "{name}: reused blocks hold stale keys");
    }
}

/// Two engines of different kinds in one rollout (the CPU backend and a GPU adapter): the
/// scheduler spreads the work over both, and every token either engine chose greedily is the
/// arg-max of the CPU model's logits (within float noise) at that position.
#[test]
fn rollout_over_a_cpu_and_a_gpu_engine() {
    use rstar2::model::{Config, Model, Params, Tokenizer};
    use rstar2::rollout::engine::{CpuEngine, GpuEngine};
    use rstar2::rollout::{Request, RolloutConfig, SamplingConfig, ToolDispatch, generate};
    use rstar2::sandbox::{Sandbox, SandboxConfig};
    let Some(gpu) = test_gpu() else { return };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let config = Config::from_file(&dir.join("config.json")).unwrap();
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let cpu = Model::new(config.clone(), Params::random(&config, 3));
    let gpu_model = GpuModel::new(gpu, &cpu);
    let sandbox = Sandbox::new(SandboxConfig::in_process()).unwrap();
    let requests: Vec<Request> = (0..6).map(|i| Request { id: format!("q{i}"), question: format!("What is {i} plus {}?", i * 7), answer: Some((i * 8).to_string()) }).collect();
    let rollout = RolloutConfig {
        sampling: SamplingConfig { temperature: 0.0, top_p: 1.0, top_k: 0 },
        samples: 1,
        max_response_tokens: 24,
        max_turns: 2,
        dispatch: ToolDispatch::Lockstep,
        ..RolloutConfig::default()
    };
    // Room for two trajectories each, so both engines must take some.
    let per = 900;
    let (mut ce, mut ge) = (CpuEngine::new(&cpu, 2 * per), GpuEngine::new(&gpu_model, 2 * per));
    let out = generate(vec![&mut ce, &mut ge], &tokenizer, &sandbox, &requests, &rollout, None).unwrap();
    assert_eq!(out.episodes.len(), 6);
    assert!(out.metrics.engine_episodes.iter().all(|&n| n > 0), "work per engine: {:?}", out.metrics.engine_episodes);
    let v = config.vocab_size;
    for e in &out.episodes {
        let logits = cpu.forward(&Batch::new(std::slice::from_ref(&e.ids))).logits;
        let p = e.prompt_ids.len();
        for i in p..e.ids.len() {
            if e.loss_mask[i - p] == 0 {
                continue;
            }
            let row = &logits[(i - 1) * v..i * v];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!(row[e.ids[i] as usize] >= max - 1e-4, "episode {} engine {}: token {i} is not the greedy choice", e.id, e.engine);
        }
    }
}

/// Cached inference with f16 projection weights (prefill and decoding): its logits against f32,
/// error measured and bounded.
#[test]
fn gpu_f16_decoding_error_against_f32() {
    let Some(gpu) = test_gpu() else { return };
    if !gpu.has_f16() {
        eprintln!("!!! {} has no SHADER_F16: f16 decoding not tested", gpu.describe());
        return;
    }
    let cpu = load("qwen3-untied");
    let f32_model = GpuModel::new(gpu.clone(), &cpu);
    let mut f16_model = GpuModel::new(gpu, &cpu);
    f16_model.enable_f16_decode().unwrap();
    let (mut c32, mut c16) = (GpuKvCache::new(&f32_model, 128), GpuKvCache::new(&f16_model, 128));
    let prompts: [&[u32]; 2] = [&[5, 17, 3, 90, 44, 12, 7, 61, 2, 8], &[33, 8, 71, 20, 95, 1, 4, 4, 9, 10, 11]];
    let a = f32_model.extend(&mut c32, &[0, 1], &prompts).unwrap();
    let b = f16_model.extend(&mut c16, &[0, 1], &prompts).unwrap();
    let mut worst = a.iter().zip(&b).fold(0.0f32, |w, (x, y)| w.max(rel_err(y, x)));
    for step in 0..8u32 {
        let next = [[step * 3 % 90], [step * 7 % 90]];
        let chunks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
        let a = f32_model.extend(&mut c32, &[0, 1], &chunks).unwrap();
        let b = f16_model.extend(&mut c16, &[0, 1], &chunks).unwrap();
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max(rel_err(y, x));
        }
    }
    eprintln!("f16 decoding: largest logit error {worst:.2e} (relative to the largest logit) over 8 steps");
    assert!(worst > 0.0 && worst < 1e-2, "f16 decoding error {worst}");
}

/// The device sampler against the host's (`rstar2_rollout::sample`) with the same uniform draw
/// from the same seeded generator: greedy picks the arg-max; with a temperature the token is
/// the host's (or, where f32 and f64 sums disagree, one whose CDF interval holds the draw
/// within 1e-5) and its log-probability matches.
#[test]
fn gpu_sampler_matches_the_host_sampler() {
    use rand::{Rng, SeedableRng};
    use rstar2::gpu::ops;
    use rstar2::rollout::SamplingConfig;
    use rstar2::rollout::sample::sample;
    let Some(gpu) = test_gpu() else { return };
    let (rows, v) = (24, 1000);
    let mut seeded = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let logits: Vec<f32> = (0..rows * v).map(|_| seeded.random_range(-4.0f32..4.0)).collect();
    let tl = gpu.upload(&logits);
    for temperature in [0.0f32, 0.6, 1.0] {
        let config = SamplingConfig { temperature, top_p: 1.0, top_k: 0 };
        let (mut host_rng, mut draw_rng) = (rand_chacha::ChaCha8Rng::seed_from_u64(9), rand_chacha::ChaCha8Rng::seed_from_u64(9));
        let mut uniforms = Vec::new();
        let mut want = Vec::new();
        for r in 0..rows {
            want.push(sample(&logits[r * v..(r + 1) * v], &config, &mut host_rng));
            uniforms.push(if temperature > 0.0 { draw_rng.random::<f64>() } else { 0.0 });
        }
        let out = gpu.alloc(2 * rows);
        ops::sample(&gpu, &out, &tl, &gpu.upload(&uniforms.iter().map(|&x| x as f32).collect::<Vec<_>>()), rows, v, temperature);
        let got: Vec<(u32, f32)> = gpu.read_u32(&out).chunks_exact(2).map(|p| (p[0], f32::from_bits(p[1]))).collect();
        for r in 0..rows {
            let row = &logits[r * v..(r + 1) * v];
            let (gt, glp) = got[r];
            if temperature == 0.0 {
                assert_eq!((gt, glp), want[r], "greedy row {r}");
                continue;
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let p: Vec<f64> = row.iter().map(|&l| f64::from((l - max) / temperature).exp()).collect();
            let total: f64 = p.iter().sum();
            let before: f64 = p[..gt as usize].iter().sum::<f64>() / total;
            let after = before + p[gt as usize] / total;
            assert!(gt == want[r].0 || (before - 1e-5 <= uniforms[r] && uniforms[r] <= after + 1e-5), "T {temperature} row {r}: device drew {gt}, host {}", want[r].0);
            let lp = (p[gt as usize] / total).ln() as f32;
            assert!((glp - lp).abs() < 1e-4, "T {temperature} row {r}: log-prob {glp} vs {lp}");
        }
    }
}

/// After warm-up a decoding step and a training step create no buffer and no bind group: the
/// pool, the rings and the bind group cache serve them. On a device of its own, so no other
/// test's work moves its counters.
#[test]
fn warm_steps_create_no_buffers_or_bind_groups() {
    use rstar2::gpu::{AdapterChoice, Gpu};
    if test_gpu().is_none() {
        return;
    }
    let gpu = std::sync::Arc::new(Gpu::open(AdapterChoice::Any).unwrap().expect("an adapter"));
    let cpu = load("qwen2-tied");
    let mut model = GpuModel::new(gpu.clone(), &cpu);
    // Decoding three sequences of different lengths, sampled on the device; 20 steps cross a
    // 16-position block of the paged cache.
    let mut cache = GpuKvCache::new(&model, 256);
    let prompts: [&[u32]; 3] = [&[5, 17, 3, 90, 44], &[33, 8], &[7, 61, 2, 9]];
    model.extend(&mut cache, &[0, 1, 2], &prompts).unwrap();
    let mut next = [[1u32]; 3];
    for step in 0..20 {
        let before = gpu.stats();
        let chunks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
        let drawn = model.extend_sample(&mut cache, &[0, 1, 2], &chunks, 0.0, &[0.0; 3]).unwrap();
        let after = gpu.stats();
        for (n, (t, _)) in next.iter_mut().zip(drawn) {
            n[0] = t;
        }
        assert!(after.dispatches > before.dispatches);
        if step >= 2 {
            assert_eq!((after.buffers_created, after.bind_groups_created), (before.buffers_created, before.bind_groups_created), "decode step {step} created buffers or bind groups");
        }
    }
    // Training steps of one batch shape: forward, backward, clipping, AdamW.
    let batch = Batch::new(&[vec![5, 17, 3, 90, 44, 12, 7, 61], vec![33, 8, 71, 20, 95]]);
    let mut opt = GpuAdamW::new(AdamWConfig::default(), &model);
    for step in 0..4 {
        let before = gpu.stats();
        let grads = model.zero_grads();
        model.next_token_loss_backward(&batch, &grads);
        model.clip_grad_norm(&grads, 1.0);
        opt.update(&mut model, &grads, 1e-3);
        drop(grads);
        gpu.sync();
        let after = gpu.stats();
        if step >= 2 {
            assert_eq!((after.buffers_created, after.bind_groups_created), (before.buffers_created, before.bind_groups_created), "training step {step} created buffers or bind groups");
        }
    }
}

/// Decoding several steps per read-back (the sampled tokens fed back on the device) gives the
/// episodes of one step at a time: the same tokens, and with sampling the same seeded draws and
/// log-probs; sequences that stop inside a look-ahead window drop the positions past their stop.
#[test]
fn decoding_ahead_on_the_device_gives_the_step_by_step_episodes() {
    use rstar2::model::{Config, Model, Params, Tokenizer};
    use rstar2::rollout::engine::GpuEngine;
    use rstar2::rollout::{ChatFormat, Request, RolloutConfig, SamplingConfig, ToolDispatch, generate};
    use rstar2::sandbox::{Sandbox, SandboxConfig};
    let Some(gpu) = test_gpu() else { return };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let config = Config::from_file(&dir.join("config.json")).unwrap();
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let gpu_model = GpuModel::new(gpu, &Model::new(config.clone(), Params::random(&config, 5)));
    // Short prompts (no system prompt): the prefill on a software adapter stays quick.
    let chat = ChatFormat { system: String::new(), ..ChatFormat::rstar2() };
    let sandbox = Sandbox::new(SandboxConfig::in_process()).unwrap();
    let requests: Vec<Request> = (0..5).map(|i| Request { id: format!("q{i}"), question: format!("What is {i} times {}?", i + 3), answer: Some((i * (i + 3)).to_string()) }).collect();
    for temperature in [0.0, 1.0] {
        let rollout = RolloutConfig {
            chat: chat.clone(),
            sampling: SamplingConfig { temperature, top_p: 1.0, top_k: 0 },
            samples: 2,
            max_response_tokens: 45,
            max_turns: 3,
            seed: 11,
            dispatch: ToolDispatch::Lockstep,
            ..RolloutConfig::default()
        };
        let run = |lookahead: usize| {
            let mut engine = GpuEngine::new(&gpu_model, 4096).with_lookahead(lookahead);
            generate(vec![&mut engine], &tokenizer, &sandbox, &requests, &rollout, None).unwrap().episodes
        };
        let (one, ahead) = (run(1), run(8));
        assert_eq!(one.len(), ahead.len());
        let mut stopped_inside = 0;
        for (a, b) in one.iter().zip(&ahead) {
            assert_eq!(a.ids, b.ids, "temperature {temperature}: episode {} {}", a.id, a.sample);
            assert_eq!(a.finish_reason, b.finish_reason);
            let gap = a.logprobs.iter().zip(&b.logprobs).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(gap < 1e-5, "temperature {temperature}: log-probs differ by {gap}");
            stopped_inside += usize::from(a.loss_mask.len() % 8 != 0);
        }
        assert!(stopped_inside > 0, "no episode stopped inside a look-ahead window");
    }
}
