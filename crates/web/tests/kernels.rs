//! The WGSL kernels on WebGPU in a real browser against the CPU backend (itself checked against
//! HF transformers in `tests/model.rs`) and transformers' own numbers: logits, the loss and
//! every gradient of one backward, and one AdamW step, on the Qwen2 fixture (tied embeddings,
//! q/k/v biases). Tolerances are the native GPU tests' (`tests/gpu.rs`).
#![cfg(target_arch = "wasm32")]

use std::collections::HashMap;

use rstar2_gpu::{GpuAdamW, GpuModel};
use rstar2_model::{AdamW, AdamWConfig, Batch, Config, Model, Params};
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const CONFIG: &str = include_str!("../../../tests/fixtures/qwen2-tied/config.json");
const WEIGHTS: &[u8] = include_bytes!("../../../tests/fixtures/qwen2-tied/model.safetensors");
const EXPECTED: &[u8] = include_bytes!("../../../tests/fixtures/qwen2-tied/expected.safetensors");
/// The sequences the fixture was computed on (`expected.json`'s `seqs`), and its AdamW step.
const META: &str = include_str!("../../../tests/fixtures/qwen2-tied/expected.json");

/// The fixture's tensors by name, as f32.
fn expected() -> HashMap<String, Vec<f32>> {
    let st = safetensors::SafeTensors::deserialize(EXPECTED).unwrap();
    st.tensors().into_iter().map(|(name, v)| (name, v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())).collect()
}

/// max |a - b| / max(1, max |b|)
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[wasm_bindgen_test]
async fn webgpu_logits_gradients_and_adamw_match_the_cpu_backend_and_transformers() {
    let gpu = rstar2_web::webgpu().await.expect("this browser offers no WebGPU adapter (start Chromium with --enable-unsafe-webgpu)");
    web_sys_log(&format!("WebGPU adapter: {}", gpu.describe()));
    let config = Config::from_json(CONFIG, "qwen2-tied/config.json").unwrap();
    let params = Params::from_safetensors(&[("qwen2-tied/model.safetensors", WEIGHTS)], &config).unwrap();
    let cpu = Model::new(config.clone(), params);
    let meta: serde_json::Value = serde_json::from_str(META).unwrap();
    let seqs: Vec<Vec<u32>> = meta["seqs"].as_array().unwrap().iter().map(|s| s.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()).collect();
    let lr = meta["lr"].as_f64().unwrap() as f32;
    let exp = expected();
    let v = config.vocab_size;
    let batch = Batch::new(&seqs);
    let mut model = GpuModel::new(gpu, &cpu);

    // Logits against transformers' and the CPU backend's.
    let logits = model.logits_async(&batch).await;
    let cpu_logits = cpu.forward(&batch).logits;
    assert!(rel_err(&logits, &cpu_logits) < 1e-5, "WebGPU logits differ from the CPU backend's by {}", rel_err(&logits, &cpu_logits));
    let mut row = 0;
    for (i, s) in seqs.iter().enumerate() {
        let err = rel_err(&logits[row * v..(row + s.len()) * v], &exp[&format!("logits.{i}")]);
        assert!(err < 1e-5, "WebGPU logits of sequence {i} differ from transformers' by {err}");
        row += s.len();
    }

    // One backward: the loss and every gradient.
    let grads = model.zero_grads();
    let loss = model.next_token_loss_backward_async(&batch, &grads).await;
    let mut cpu_grads = Params::zeros(&config);
    let cpu_loss = cpu.next_token_loss_backward(&batch, &mut cpu_grads);
    assert!((loss - exp["loss"][0]).abs() < 1e-5 && (loss - cpu_loss).abs() < 1e-5, "WebGPU loss {loss}, CPU {cpu_loss}, transformers {}", exp["loss"][0]);
    let got = model.download_async(&grads).await;
    for (i, (name, _)) in got.specs.iter().enumerate() {
        let err = rel_err(&got.data[i], &exp[&format!("grad.{name}")]);
        assert!(err < 1e-4, "WebGPU gradient of {name} differs from transformers' by {err}");
        let err = rel_err(&got.data[i], &cpu_grads.data[i]);
        assert!(err < 1e-4, "WebGPU gradient of {name} differs from the CPU backend's by {err}");
    }

    // One AdamW step on the device against the CPU backend's AdamW on the same gradients.
    let adamw = AdamWConfig { weight_decay: 0.01, ..Default::default() };
    let mut opt = GpuAdamW::new(adamw, &model);
    let mut cpu_params = cpu.params.clone();
    let mut cpu_opt = AdamW::new(adamw, &cpu_params);
    opt.update(&mut model, &grads, lr);
    cpu_opt.update(&mut cpu_params, &got, lr);
    let after = model.download_params_async().await;
    for (i, (name, _)) in after.specs.iter().enumerate() {
        let err = rel_err(&after.data[i], &cpu_params.data[i]);
        assert!(err < 1e-5, "{name} after a WebGPU AdamW step differs from the CPU backend by {err}");
        assert!(after.data[i] != cpu.params.data[i], "{name} did not change in the AdamW step");
    }
}

#[wasm_bindgen_test]
async fn next_token_training_on_webgpu_lowers_the_loss_step_by_step_as_on_the_cpu() {
    // The SFT stage's step (forward, loss, backward, clipping, AdamW) awaited in a loop, as a
    // page runs it, against the same steps on the CPU backend.
    let gpu = rstar2_web::webgpu().await.expect("no WebGPU adapter");
    let config = Config::from_json(CONFIG, "qwen2-tied/config.json").unwrap();
    let params = Params::from_safetensors(&[("qwen2-tied/model.safetensors", WEIGHTS)], &config).unwrap();
    let mut cpu_params = params.clone();
    let cpu = Model::new(config.clone(), params);
    let mut model = GpuModel::new(gpu, &cpu);
    let batch = Batch::new(&[vec![3, 14, 15, 92, 65, 35, 89, 79], vec![2, 71, 82, 81, 82, 84]]);
    let adamw = AdamWConfig::default();
    let mut opt = GpuAdamW::new(adamw, &model);
    let mut cpu_opt = AdamW::new(adamw, &cpu_params);
    let mut losses = Vec::new();
    for step in 0..8 {
        let grads = model.zero_grads();
        let loss = model.next_token_loss_backward_async(&batch, &grads).await;
        model.clip_grad_norm_async(&grads, 1.0).await;
        opt.update(&mut model, &grads, 1e-2);
        let cpu_model = Model::new(config.clone(), cpu_params.clone());
        let mut cpu_grads = Params::zeros(&config);
        let cpu_loss = cpu_model.next_token_loss_backward(&batch, &mut cpu_grads);
        rstar2_model::clip_grad_norm(&mut cpu_grads, 1.0);
        cpu_opt.update(&mut cpu_params, &cpu_grads, 1e-2);
        assert!((loss - cpu_loss).abs() < 1e-3 * cpu_loss.max(1.0), "step {step}: WebGPU loss {loss}, CPU {cpu_loss}");
        losses.push(loss);
    }
    assert!(losses.windows(2).all(|w| w[1] < w[0]) && losses[7] < 0.2 * losses[0], "the loss did not fall step by step: {losses:?}");
}

/// Writes a line to the browser console (the test runner shows it).
fn web_sys_log(line: &str) {
    wasm_bindgen_test::console_log!("{line}");
}
