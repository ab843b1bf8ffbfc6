//! The recipe end to end in a real browser, on a toy model with the tiny preset's tokenizer and
//! chat format: SFT on tool-format traces whose tool calls ran in the page's interpreter, then
//! GRPO-RoC steps whose rollouts call the tool, on WebGPU and on the CPU fallback.
#![cfg(target_arch = "wasm32")]

use rstar2_web::{Recipe, Settings};
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const TOKENIZER: &str = include_str!("../../../models/tiny/tokenizer.json");

/// The tiny preset's vocabulary on a model small enough for SwiftShader (about 40k parameters).
const TOY: &str = r#"{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "num_hidden_layers": 1, "rms_norm_eps": 1e-6,
"rope_theta": 10000.0, "tie_word_embeddings": true, "vocab_size": 761, "max_position_embeddings": 512}"#;

fn settings() -> Settings {
    Settings {
        seed: 3,
        sft_examples: 48,
        sft_epochs: 1,
        sft_batch: 4,
        sft_lr: 1e-2,
        rl_steps: 2,
        prompts_per_step: 2,
        group_size: 2,
        oversample: 2,
        max_response_tokens: 48,
        max_turns: 2,
        levels: vec![1],
        ..Settings::default()
    }
}

async fn run(gpu: Option<std::sync::Arc<rstar2_gpu::Gpu>>) -> Vec<rstar2_web::StepReport> {
    let mut recipe = Recipe::new(TOY, TOKENIZER, settings(), gpu).unwrap();
    assert_eq!(recipe.total_steps(), 12 + 2);
    let mut reports = Vec::new();
    while !recipe.done() {
        reports.push(recipe.step().await);
    }
    let files = recipe.model_files(TOY, TOKENIZER).await.unwrap();
    let weights = &files.iter().find(|(name, _)| name == "model.safetensors").unwrap().1;
    let config = rstar2_model::Config::from_json(TOY, "toy").unwrap();
    rstar2_model::Params::from_safetensors(&[("downloaded", weights)], &config).expect("the download is a loadable HF folder");
    reports
}

fn check(reports: &[rstar2_web::StepReport], backend: &str) {
    let sft: Vec<f64> = reports.iter().filter(|r| r.phase == "sft").map(|r| r.loss).collect();
    assert_eq!(sft.len(), 12, "{backend}");
    // From about ln(761) = 6.6 at random init.
    let (first, last) = (sft[..3].iter().sum::<f64>() / 3.0, sft[9..].iter().sum::<f64>() / 3.0);
    assert!(first > 5.0 && last < first - 1.0, "{backend}: SFT loss did not fall: {sft:?}");
    let rl: Vec<_> = reports.iter().filter(|r| r.phase == "rl").collect();
    assert_eq!(rl.len(), 2, "{backend}");
    for r in rl {
        assert!(r.loss.is_finite() && (0.0..=1.0).contains(&r.reward) && r.tokens > 0 && r.samples.len() == 2, "{backend}: {r:?}");
        assert!(r.samples.iter().all(|s| s.starts_with("<|im_start|>user\n")), "{backend}: {:?}", r.samples);
    }
}

#[wasm_bindgen_test]
async fn sft_then_grpo_roc_on_webgpu_with_the_tool_in_the_page() {
    let gpu = rstar2_web::webgpu().await.expect("no WebGPU adapter");
    check(&run(Some(gpu)).await, "WebGPU");
}

#[wasm_bindgen_test]
async fn sft_then_grpo_roc_on_the_cpu_fallback() {
    check(&run(None).await, "CPU");
}
