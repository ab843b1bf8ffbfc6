//! The transformer against Hugging Face transformers (fixtures written by
//! `scripts/gen_fixtures.py`): logits, loss, every parameter gradient, and AdamW steps; and the
//! KV-cache path against the training forward.

use std::path::PathBuf;

use rstar2::model::ops::logprob::cross_entropy;
use rstar2::model::{AdamW, AdamWConfig, Batch, Config, DecodeWeights, KvCache, Model, Params};

use crate::support::{expected, fixture_dir, load, load_parts, rel_err};

fn loss_and_grads(model: &Model, seqs: &[Vec<u32>]) -> (f32, Params, Vec<f32>) {
    let batch = Batch::new(seqs);
    let mut fwd = model.forward(&batch);
    let (targets, mask) = batch.next_token_targets();
    let lp = fwd.logprobs(&targets, model.config.vocab_size);
    let (loss, dlp) = cross_entropy(&lp, &mask);
    let mut grads = Params::zeros(&model.config);
    model.backward(&fwd, &dlp, &mut grads);
    (loss, grads, fwd.logits.clone())
}

fn golden(name: &str) {
    // Runs on a narrower instruction set (see `narrower_instruction_sets_pass_the_numeric_tests`)
    // check that they got it.
    if let Ok(want) = std::env::var("RSTAR2_EXPECT_ISA") {
        assert_eq!(rstar2::model::cpu::Isa::detected().name(), want, "the CPU this runs on");
    }
    if let Ok(want) = std::env::var("RSTAR2_CPU_ISA") {
        assert_eq!(rstar2::model::cpu::isa().name(), want, "the kernels this run uses");
    }
    let mut model = load(name);
    let exp = expected(name);
    let v = model.config.vocab_size;
    let (loss, grads, logits) = loss_and_grads(&model, &exp.seqs);
    let mut row = 0;
    for (i, s) in exp.seqs.iter().enumerate() {
        let want = &exp.tensors[&format!("logits.{i}")].1;
        let got = &logits[row * v..(row + s.len()) * v];
        assert!(rel_err(got, want) < 1e-5, "{name}: logits of sequence {i} differ by {}", rel_err(got, want));
        row += s.len();
    }
    let want_loss = exp.tensors["loss"].1[0];
    assert!((loss - want_loss).abs() < 1e-5, "{name}: loss {loss} vs {want_loss}");
    for (i, (pname, _)) in grads.specs.iter().enumerate() {
        let want = &exp.tensors[&format!("grad.{pname}")].1;
        let err = rel_err(&grads.data[i], want);
        assert!(err < 1e-4, "{name}: gradient of {pname} differs by {err}");
    }
    // AdamW steps: losses before each step and after the last.
    let want_losses = &exp.tensors["adamw_losses"].1;
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.01, ..Default::default() }, &model.params);
    for (step, want) in want_losses.iter().enumerate() {
        let (loss, grads, _) = loss_and_grads(&model, &exp.seqs);
        assert!((loss - want).abs() < 2e-4 * want.abs().max(1.0), "{name}: loss before AdamW step {step}: {loss} vs {want}");
        if step < exp.steps {
            opt.update(&mut model.params, &grads, exp.lr);
        }
    }
}

#[test]
fn golden_qwen2_tied_embeddings_with_qkv_bias() {
    golden("qwen2-tied");
}

#[test]
fn golden_qwen3_qk_norm_untied() {
    golden("qwen3-untied");
}

#[test]
fn golden_llama_untied() {
    golden("llama-untied");
}

/// Prefill, decode and appending a chunk give the same last-token logits as the training
/// forward over the whole sequence, for a batch of sequences of different lengths; with the
/// f32 weights through gemm, packed f32 weights and packed f16 weights (error measured).
#[test]
fn kv_cache_matches_full_forward() {
    for name in ["qwen3-untied", "qwen2-tied", "llama-untied"] {
        let mut model = load(name);
        for weights in [None, Some(DecodeWeights::F32), Some(DecodeWeights::F16), Some(DecodeWeights::Bf16)] {
            if let Some(w) = weights {
                model.set_decode_weights(w);
            }
            let err = kv_cache_against_forward(&model);
            // f16 weights: 11 significant bits, so about 5e-4 of the largest logit per product;
            // bf16 (AMX tiles or AVX-512 BF16 where usable, else f16): 8 bits in weights and
            // activations.
            let budget = match weights.map(DecodeWeights::on_this_cpu) {
                Some(DecodeWeights::F16) => 5e-3,
                Some(DecodeWeights::Bf16) => 5e-2,
                _ => 1e-5,
            };
            eprintln!("{name}, decode weights {weights:?}: largest logit error {err:.2e} of the largest logit");
            assert!(err < budget, "{name} {weights:?}: {err}");
        }
    }
}

/// Prefills, decodes and appends to two sequences; returns the largest logit error against the
/// training forward, relative to the largest logit.
fn kv_cache_against_forward(model: &Model) -> f32 {
    let v = model.config.vocab_size;
    let full: Vec<Vec<u32>> = vec![vec![5, 17, 3, 90, 44, 12, 7, 61, 2, 9, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41], vec![33, 8, 71, 20, 95, 1]];
    let mut cache = KvCache::new(64);
    // Prefill different lengths, then decode one token each, then append chunks to one, past a
    // 16-position key block.
    let l0 = model.extend(&mut cache, &[0, 1], &[&full[0][..4], &full[1][..3]]).unwrap();
    // bf16 decoding keeps its cache in bf16, every other type in f32.
    assert_eq!(cache.is_bf16(), model.decode_weights().map(DecodeWeights::on_this_cpu) == Some(DecodeWeights::Bf16));
    let l1 = model.extend(&mut cache, &[0, 1], &[&full[0][4..5], &full[1][3..4]]).unwrap();
    let l2 = model.extend(&mut cache, &[0], &[&full[0][5..7]]).unwrap();
    let l3 = model.extend(&mut cache, &[0], &[&full[0][7..22]]).unwrap();
    assert_eq!((cache.len(0), cache.len(1), cache.used()), (22, 4, 26));
    let err = |seq: &[u32], got: &[f32]| {
        let fwd = model.forward(&Batch::new(&[seq.to_vec()]));
        let want = &fwd.logits[(seq.len() - 1) * v..seq.len() * v];
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / scale
    };
    let errors = [err(&full[0][..4], &l0[0]), err(&full[1][..3], &l0[1]), err(&full[0][..5], &l1[0]), err(&full[1][..4], &l1[1]), err(&full[0][..7], &l2[0]), err(&full[0][..22], &l3[0])];
    // Capacity is enforced and released.
    assert!(model.extend(&mut cache, &[2], &[&[1u32; 60]]).is_err());
    cache.release(0);
    assert_eq!(cache.used(), 4);
    assert!(model.extend(&mut cache, &[2], &[&[1u32; 60]]).is_ok());
    errors.into_iter().fold(0.0, f32::max)
}

/// The imported SmolLM2-135M (`cargo xtask fetch-model smollm2-135m`; not in CI): a chat
/// prompt's greedy continuation with f16 and bf16 decode weights against f32, and their logit
/// error.
#[test]
fn smollm2_f16_decoding_follows_f32() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m");
    if !dir.join("model.safetensors").exists() {
        eprintln!("smollm2_f16_decoding_follows_f32: no imported SmolLM2 (cargo xtask fetch-model smollm2-135m); not run");
        return;
    }
    let config = Config::from_file(&dir.join("config.json")).unwrap();
    let tokenizer = rstar2::model::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let prompt = tokenizer.encode("<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n");
    let mut model = Model::new(config.clone(), Params::load(&dir, &config).unwrap());
    let mut runs = Vec::new();
    for weights in [DecodeWeights::F32, DecodeWeights::F16, DecodeWeights::Bf16] {
        model.set_decode_weights(weights);
        let mut cache = KvCache::new(1024);
        let mut logits = model.extend(&mut cache, &[0], &[&prompt]).unwrap().remove(0);
        let (mut tokens, mut all) = (Vec::new(), Vec::new());
        for _ in 0..128 {
            let t = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
            tokens.push(t);
            all.push(logits.clone());
            logits = model.extend(&mut cache, &[0], &[&[t]]).unwrap().remove(0);
        }
        runs.push((tokens, all));
    }
    for (half, name) in [(&runs[1], "f16"), (&runs[2], DecodeWeights::Bf16.on_this_cpu().name())] {
        let same = runs[0].0.iter().zip(&half.0).take_while(|(a, b)| a == b).count();
        // Logit error while the two decodes see the same tokens.
        let err = runs[0].1[..same]
            .iter()
            .zip(&half.1[..same])
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / a.iter().fold(0.0f32, |m, x| m.max(x.abs())))
            .fold(0.0f32, f32::max);
        eprintln!("SmolLM2-135M greedy decoding, {name} against f32 weights: first {same} of 128 tokens equal, largest logit error {err:.2e} of the largest logit over them");
        assert!(same >= 64, "{name} decoding left the f32 tokens after {same}");
        assert!(err < 2e-2, "{name}: logit error {err}");
    }
}

#[test]
fn weights_round_trip_and_bad_files_give_clear_errors() {
    let (dir, config, params) = load_parts("llama-untied");
    let tmp = std::env::temp_dir().join(format!("rstar2-weights-{}", std::process::id()));
    params.save(&tmp).unwrap();
    assert_eq!(Params::load(&tmp, &config).unwrap(), params);
    // What we write back must load in transformers, which reads `"head_dim": null` as None and
    // fails: absent optional fields are omitted (checked by hand with transformers 5.24).
    let qwen2 = Config::from_file(&fixture_dir("qwen2-tied").join("config.json")).unwrap();
    let written = serde_json::to_value(&qwen2).unwrap();
    assert!(written.get("head_dim").is_none() && written["num_key_value_heads"] == 2, "{written}");
    // Truncated file.
    let bytes = std::fs::read(tmp.join("model.safetensors")).unwrap();
    std::fs::write(tmp.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = Params::load(&tmp, &config).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
    // A config whose shapes disagree with the file.
    let mut wrong = config.clone();
    wrong.intermediate_size += 1;
    let err = Params::load(&dir, &wrong).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("tensor model.layers.0.mlp.down_proj.weight has shape [32, 48], config needs [32, 49]"), "{err}");
    // Unsupported rope scaling.
    std::fs::write(
        tmp.join("config.json"),
        r#"{"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#,
    )
    .unwrap();
    let err = Config::from_file(&tmp.join("config.json")).unwrap_err().to_string();
    assert!(err.contains("yarn"), "{err}");
    // A missing tensor: the tied Qwen2 file has no lm_head, which an untied config needs.
    let qwen = fixture_dir("qwen2-tied");
    let mut untied = Config::from_file(&qwen.join("config.json")).unwrap();
    untied.tie_word_embeddings = false;
    let err = Params::load(&qwen, &untied).unwrap_err().to_string();
    assert!(err.contains("missing tensor lm_head.weight"), "{err}");
    std::fs::write(tmp.join("config.json"), "{ not json").unwrap();
    assert!(Config::from_file(&tmp.join("config.json")).unwrap_err().to_string().contains("config.json"));
    // A missing file: named with the OS's reason, which the error's chain of causes (what
    // anyhow prints on the command line) gives once.
    let err = Config::from_file(&tmp.join("absent.json")).unwrap_err();
    let chain: Vec<String> = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source()).map(|e| e.to_string()).collect();
    let chain = chain.join(": ");
    assert!(chain.contains("absent.json") && chain.matches("No such file").count() == 1, "{chain}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// The presets' parameter counts equal the published sizes of those models (tiny, by hand:
/// 4 layers x 197 120 + final norm 128 + embedding 761 x 128 = 886 016).
#[test]
fn preset_configs_have_the_published_parameter_counts() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    for (preset, want) in [("smollm2-135m", 134_515_008usize), ("qwen2.5-0.5b", 494_032_768), ("qwen3-0.6b", 596_049_920), ("tiny", 886_016)] {
        let config = Config::from_file(&root.join(preset).join("config.json")).unwrap();
        let count: usize = config.parameter_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(count, want, "{preset}");
    }
}

/// Encodings of code, digits, unicode and chat markers equal HF tokenizers' with the same file.
#[test]
fn tokenizer_matches_hf_tokenizers() {
    let dir = fixture_dir("tokenizer");
    let tok = rstar2::model::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    for case in expected.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let ids = tok.encode(text);
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(tok.decode(&ids), case["decoded"].as_str().unwrap());
    }
    assert_eq!(tok.token_id("<|im_end|>"), Some(1));
    let err = rstar2::model::Tokenizer::from_file(&dir.join("missing.json")).err().unwrap().to_string();
    assert!(err.contains("missing.json"), "{err}");
}

/// Gradient accumulation: backward of two micro-batches into one buffer equals the sum of their
/// separate gradients, and clipping scales to the requested global norm.
#[test]
fn gradients_accumulate_and_clip() {
    let model = load("llama-untied");
    let grads_of = |seqs: &[Vec<u32>], into: &mut Params| {
        model.next_token_loss_backward(&Batch::new(seqs), into);
    };
    let (a, b) = (vec![vec![5u32, 17, 3, 90]], vec![vec![33u32, 8, 71]]);
    let mut both = Params::zeros(&model.config);
    grads_of(&a, &mut both);
    grads_of(&b, &mut both);
    let (mut ga, mut gb) = (Params::zeros(&model.config), Params::zeros(&model.config));
    grads_of(&a, &mut ga);
    grads_of(&b, &mut gb);
    for i in 0..both.data.len() {
        let sum: Vec<f32> = ga.data[i].iter().zip(&gb.data[i]).map(|(x, y)| x + y).collect();
        assert!(rel_err(&both.data[i], &sum) < 1e-6, "{}", both.specs[i].0);
    }
    let norm = rstar2::model::clip_grad_norm(&mut both, 0.5);
    assert!(norm > 0.5, "the test needs a norm above the cap, got {norm}");
    let after: f64 = both.data.iter().flatten().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    assert!((after - 0.5).abs() < 1e-4, "{after}");
}

/// A checkpoint split into shards with `model.safetensors.index.json` loads like the single file.
#[test]
fn sharded_checkpoints_load() {
    let (_, config, single) = load_parts("qwen2-tied");
    let tmp = std::env::temp_dir().join(format!("rstar2-shards-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut weight_map = serde_json::Map::new();
    let half = single.specs.len() / 2;
    for (shard, range) in [(1, 0..half), (2, half..single.specs.len())] {
        let file = format!("model-0000{shard}-of-00002.safetensors");
        let bytes: Vec<Vec<u8>> = range.clone().map(|i| single.data[i].iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
            range.clone().zip(&bytes).map(|(i, b)| (single.specs[i].0.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, single.specs[i].1.clone(), b).unwrap())).collect();
        for i in range {
            weight_map.insert(single.specs[i].0.clone(), serde_json::Value::from(file.clone()));
        }
        std::fs::write(tmp.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
    }
    std::fs::write(tmp.join("model.safetensors.index.json"), serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string()).unwrap();
    assert_eq!(Params::load(&tmp, &config).unwrap(), single);
    // A shard that goes missing is named in the error.
    std::fs::remove_file(tmp.join("model-00002-of-00002.safetensors")).unwrap();
    let err = Params::load(&tmp, &config).unwrap_err().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Tests of this binary that check the model's numbers (golden fixtures, cache, f16 decoding),
/// for running again on a narrower instruction set.
const NUMERIC_TESTS: [&str; 5] = [
    "model::golden_qwen2_tied_embeddings_with_qkv_bias",
    "model::golden_qwen3_qk_norm_untied",
    "model::golden_llama_untied",
    "model::kv_cache_matches_full_forward",
    "model::gradients_accumulate_and_clip",
];

/// Runs NUMERIC_TESTS in a child process of this test binary, optionally under a wrapper
/// command; returns whether they all passed, and the child's output.
fn run_numeric_tests(wrapper: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = std::process::Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        None => std::process::Command::new(&exe),
    };
    cmd.args(NUMERIC_TESTS).args(["--exact", "--test-threads=1"]).envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let ran = text.contains(&format!("{} passed", NUMERIC_TESTS.len()));
    (out.status.success() && ran, text)
}

/// The AVX2 and portable kernels (RSTAR2_CPU_ISA narrows this crate's choice) pass the same
/// numeric tests as the widest ones, on any machine; on a CPU with AMX, so does AVX-512 alone
/// (RSTAR2_CPU_AMX=0: bf16 decode weights then run on AVX-512 BF16 dot products where the CPU
/// has them, as on AMD Zen 4, else they are stored as f16).
#[test]
fn narrower_instruction_sets_pass_the_numeric_tests() {
    if rstar2::model::cpu::amx() {
        let (ok, text) = run_numeric_tests(&[], &[("RSTAR2_CPU_AMX", "0")]);
        assert!(ok, "RSTAR2_CPU_AMX=0:\n{text}");
    }
    for isa in ["avx2", "generic"] {
        if isa == "avx2" && !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            eprintln!("!!! no AVX2 on this CPU: the AVX2 run is left to the qemu test");
            continue;
        }
        let (ok, text) = run_numeric_tests(&[], &[("RSTAR2_CPU_ISA", isa)]);
        assert!(ok, "RSTAR2_CPU_ISA={isa}:\n{text}");
    }
}

/// The same binary on a CPU without AVX-512 (QEMU emulating a Haswell: AVX2, FMA, F16C), so gemm
/// and this crate both take their AVX2 kernels at run time. `.ci/run` installs qemu-user.
#[test]
fn an_avx2_only_cpu_runs_the_same_binary() {
    if std::process::Command::new("qemu-x86_64").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "qemu-x86_64 not found (apt-get install qemu-user)");
        eprintln!("!!! qemu-x86_64 not found: the AVX2-only CPU test did not run (apt-get install qemu-user)");
        return;
    }
    let (ok, text) = run_numeric_tests(&["qemu-x86_64", "-cpu", "Haswell"], &[("RSTAR2_EXPECT_ISA", "avx2")]);
    assert!(ok, "under qemu -cpu Haswell:\n{text}");
}
