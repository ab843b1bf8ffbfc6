//! The recipe end to end in a real browser, on a toy model with the tiny preset's tokenizer and
//! chat format: SFT on tool-format traces whose tool calls ran in the page's interpreter, then
//! GRPO-RoC steps, on WebGPU and on the CPU fallback; and a larger toy, overfit on one trace,
//! whose rollouts' tool calls go through a page's tool function.
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
        let report = recipe.step().await;
        // Seen with `-- --nocapture`: the toy's step times in docs/gpu.md.
        wasm_bindgen_test::console_log!("{} step {}: loss {:.3}, {:.3} s", report.phase, report.step, report.loss, report.seconds);
        reports.push(report);
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

#[wasm_bindgen_test]
async fn auto_trains_on_the_cpu_beside_a_software_adapter() {
    // SwiftShader, the headless browser's adapter, is software.
    let (gpu, said) = rstar2_web::choose_device("auto").await.unwrap();
    assert!(gpu.is_none() && said.starts_with("CPU (WebAssembly, one thread): the WebGPU adapter here"), "{said}");
    let (gpu, said) = rstar2_web::choose_device("webgpu").await.unwrap();
    assert!(gpu.is_some_and(|g| g.is_software()) && said.starts_with("WebGPU: "), "{said}");
    let (gpu, said) = rstar2_web::choose_device("cpu").await.unwrap();
    assert!(gpu.is_none() && said == "CPU (WebAssembly, one thread)", "{said}");
    let refused = rstar2_web::choose_device("gpu:0").await.err().unwrap();
    assert!(refused.contains("auto, webgpu or cpu"), "{refused}");
}

/// A larger toy overfit on one tool-format trace, so that its RL rollouts write tool calls: they
/// reach the page's tool function (as the page's Web Worker takes them), on the CPU backend.
#[wasm_bindgen_test]
async fn rl_rollouts_call_the_tool_through_the_page_function() {
    use wasm_bindgen::JsCast;
    use wasm_bindgen::prelude::Closure;
    let toy = TOY
        .replace("\"max_position_embeddings\": 512", "\"max_position_embeddings\": 1024")
        .replace("\"hidden_size\": 32, \"intermediate_size\": 64", "\"hidden_size\": 128, \"intermediate_size\": 256")
        .replace(
            "\"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 16, \"num_hidden_layers\": 1",
            "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 32, \"num_hidden_layers\": 2",
        );
    let settings =
        Settings { sft_examples: 1, sft_epochs: 150, sft_batch: 1, sft_lr: 3e-3, rl_steps: 1, prompts_per_step: 1, group_size: 2, oversample: 2, max_response_tokens: 400, max_turns: 2, ..settings() };
    let mut recipe = Recipe::new(&toy, TOKENIZER, settings, None).unwrap();
    let calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let mut tool = rstar2_web::PythonTool::new(4000, 256).unwrap();
    let seen = calls.clone();
    let function = Closure::<dyn FnMut(String) -> js_sys::Promise>::new(move |call: String| {
        let result = tool.run(&call);
        seen.borrow_mut().push(call);
        js_sys::Promise::resolve(&wasm_bindgen::JsValue::from_str(&result))
    });
    recipe.use_tool_function(function.as_ref().unchecked_ref::<js_sys::Function>().clone());
    let mut last = None;
    while !recipe.done() {
        last = Some(recipe.step().await);
        // CPU steps never wait on anything: give the event loop (and the test runner polling
        // the page) its turn, as the page's worker does between steps.
        next_task().await;
    }
    let rl = last.unwrap();
    assert_eq!(rl.phase, "rl");
    // Every call the function saw is one the rollouts counted (a call whose JSON does not
    // decode is counted, and answered, without reaching the tool).
    let calls = calls.borrow();
    assert!(!calls.is_empty() && calls.len() <= rl.tool_calls, "{} calls reached the function: {rl:?}", calls.len());
    for call in calls.iter() {
        let call: rstar2_sandbox::ToolCall = serde_json::from_str(call).unwrap();
        assert!(call.code.contains("print("), "{call:?}");
    }
}

/// Resolves in a later task of the event loop (`setTimeout(resolve, 0)`).
async fn next_task() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let set_timeout: js_sys::Function = js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into()).unwrap().into();
        set_timeout.call2(&wasm_bindgen::JsValue::NULL, &resolve, &0.into()).unwrap();
    });
    wasm_bindgen_futures::JsFuture::from(promise).await.unwrap();
}
