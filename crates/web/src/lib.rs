//! rstar2 in a browser tab: the model's WGSL kernels run on WebGPU through wgpu's `webgpu`
//! backend, with every read-back awaited (a page cannot block), the CPU backend single
//! threaded as the fallback where a browser has no WebGPU, and the Python tool on RustPython
//! ([`PythonTool`]), its deadline and memory budget checked by the running call. The page runs
//! the recipe and the tool each in a Web Worker (`page/`), and ends the tool's worker when a call
//! outlives its deadline anyway.
//!
//! A native build of this crate is empty; build it for `wasm32-unknown-unknown`. Its tests run
//! in headless Chromium (`cargo xtask test` runs them through `wasm-bindgen-test-runner`):
//!
//! ```text
//! cargo test -p rstar2-web --target wasm32-unknown-unknown
//! ```
#![cfg(target_arch = "wasm32")]
#![deny(missing_docs)]

use wasm_bindgen::prelude::*;

pub mod bench;
pub mod recipe;

pub use recipe::{Recipe, Settings, StepReport};

/// A device on the WebGPU adapter this browser offers, shared as `rstar2_gpu::GpuModel` wants
/// it, or `None` where the browser has no WebGPU (the page then trains on the CPU backend).
pub async fn webgpu() -> Option<std::sync::Arc<rstar2_gpu::Gpu>> {
    let gpu = rstar2_gpu::Gpu::open_async(rstar2_gpu::AdapterChoice::Any).await.ok().flatten()?;
    // wgpu's browser handles are not Send: an Arc shared on the page's one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    Some(std::sync::Arc::new(gpu))
}

/// Where a run trains: `"auto"` (WebGPU on a hardware adapter, else the CPU backend: a software
/// adapter such as SwiftShader is slower than the CPU backend in the same module), `"webgpu"` or
/// `"cpu"`. Returns the device (`None`: the CPU backend) and what to tell the user.
pub async fn choose_device(device: &str) -> Result<(Option<std::sync::Arc<rstar2_gpu::Gpu>>, String), String> {
    const CPU: &str = "CPU (WebAssembly, one thread)";
    let auto = match device {
        "cpu" => return Ok((None, CPU.to_string())),
        "auto" | "" => true,
        "webgpu" => false,
        other => return Err(format!("device {other:?}: auto, webgpu or cpu")),
    };
    match webgpu().await {
        None if auto => Ok((None, format!("{CPU}: no WebGPU in this browser"))),
        None => Err("no WebGPU in this browser".to_string()),
        Some(gpu) if auto && gpu.is_software() => Ok((None, format!("{CPU}: the WebGPU adapter here, {}, is software and slower", gpu.describe()))),
        Some(gpu) => {
            let said = format!("WebGPU: {}", gpu.describe());
            Ok((Some(gpu), said))
        }
    }
}

/// For the page: which backend a run with `"auto"` would use, and the WebGPU adapter if any,
/// e.g. "WebGPU: SwiftShader Device (...)" or "CPU (WebAssembly, one thread): no WebGPU in this
/// browser".
#[wasm_bindgen]
pub async fn backend_description() -> String {
    choose_device("auto").await.map_or_else(|e| e, |(_, said)| said)
}

/// Times the matmul kernel against the CPU backend in this module (see [`bench::bench_matmul`]);
/// resolves to JSON of [`bench::MatmulBench`], rejects where the browser has no WebGPU.
#[wasm_bindgen]
pub async fn bench_matmul(m: usize, n: usize, k: usize, reps: usize, rounds: usize) -> Result<String, JsError> {
    let bench = bench::bench_matmul(m, n, k, reps, rounds).await.ok_or_else(|| JsError::new("no WebGPU in this browser"))?;
    Ok(serde_json::to_string(&bench).expect("a bench serializes"))
}

/// The Python tool in the page: one warm RustPython interpreter, built without host access, with
/// the sandbox's limits (see `rstar2_sandbox`; in a browser its deadlines are checked inside the
/// interpreter, see `rstar2_sandbox::Watchdog`).
#[wasm_bindgen]
pub struct PythonTool {
    config: rstar2_sandbox::InterpreterConfig,
    runner: rstar2_sandbox::Runner,
    watchdog: rstar2_sandbox::Watchdog,
}

#[wasm_bindgen]
impl PythonTool {
    /// An interpreter whose calls stop after `timeout_ms` and past `memory_mib` of allocation
    /// (the latter where the module's allocator is `rstar2_sandbox::BudgetAllocator`, as this
    /// crate's is).
    #[wasm_bindgen(constructor)]
    pub fn new(timeout_ms: u32, memory_mib: u32) -> Result<PythonTool, JsError> {
        let mut config = rstar2_sandbox::InterpreterConfig::default();
        config.limits.timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
        config.limits.memory_bytes = u64::from(memory_mib) << 20;
        let runner = rstar2_sandbox::Runner::new(&config).map_err(|e| JsError::new(&e.to_string()))?;
        Ok(PythonTool { config, runner, watchdog: rstar2_sandbox::Watchdog::new() })
    }

    /// Runs one call (JSON as the sandbox's HTTP service takes it: `{"code", "stdin"}`) in fresh
    /// globals; the result as the sandbox's JSON (`status`, `stdout`, `stderr`, `elapsed_us`).
    pub fn run(&mut self, call_json: &str) -> String {
        let result = match serde_json::from_str::<rstar2_sandbox::ToolCall>(call_json) {
            Ok(call) => self.call(&call),
            Err(e) => rstar2_sandbox::ToolResult { status: rstar2_sandbox::Status::InvalidInput, stdout: String::new(), stderr: format!("not a tool call ({{\"code\": ...}}): {e}"), elapsed_us: 0 },
        };
        serde_json::to_string(&result).expect("a tool result serializes")
    }
}

impl PythonTool {
    /// Runs one call; an interpreter that must not serve the next independent call (its shared
    /// state may have changed, or it was interrupted) is replaced first, as the native pools do.
    pub fn call(&mut self, call: &rstar2_sandbox::ToolCall) -> rstar2_sandbox::ToolResult {
        let (result, replace) = self.runner.run(call, &self.watchdog);
        if replace && let Ok(fresh) = rstar2_sandbox::Runner::new(&self.config) {
            self.runner = fresh;
        }
        result
    }
}

/// Runs `call` through a page's tool function (see [`Recipe::use_tool_function`]). A function
/// that throws, rejects or answers something other than a tool result gives a `crashed` result
/// that says so: the rollout goes on, as after a native worker's death.
pub async fn call_tool_function(function: &js_sys::Function, call: &rstar2_sandbox::ToolCall) -> rstar2_sandbox::ToolResult {
    let start = web_time::Instant::now();
    let failed = |why: String| rstar2_sandbox::ToolResult { status: rstar2_sandbox::Status::Crashed, stdout: String::new(), stderr: why, elapsed_us: start.elapsed().as_micros() as u64 };
    let json = serde_json::to_string(call).expect("a tool call serializes");
    let answer = match function.call1(&JsValue::NULL, &JsValue::from_str(&json)) {
        Ok(promise) => wasm_bindgen_futures::JsFuture::from(js_sys::Promise::resolve(&promise)).await,
        Err(thrown) => Err(thrown),
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => return failed(format!("the page's tool function failed: {}", js_text(&e))),
    };
    let Some(text) = answer.as_string() else { return failed(format!("the page's tool function answered {} instead of a JSON string", js_text(&answer))) };
    serde_json::from_str(&text).unwrap_or_else(|e| failed(format!("the page's tool function answered no tool result ({e}): {}", text.chars().take(200).collect::<String>())))
}

/// A JavaScript value as text: a string as itself, an error as its message.
fn js_text(value: &JsValue) -> String {
    if let Some(text) = value.as_string() {
        return text;
    }
    match value.dyn_ref::<js_sys::Error>() {
        Some(error) => String::from(error.message()),
        None => format!("{value:?}"),
    }
}

/// A run of the recipe for the page: each call of `step` takes one step and resolves to its
/// report (JSON of [`StepReport`]).
#[wasm_bindgen]
pub struct WebRecipe {
    run: std::rc::Rc<std::cell::RefCell<Recipe>>,
    backend: String,
    config_json: String,
    tokenizer_json: String,
}

#[wasm_bindgen]
impl WebRecipe {
    /// Starts a run on the model folder's `config.json` and `tokenizer.json` (text) with
    /// `settings_json` (JSON of [`Settings`]; missing fields take their defaults) on `device`
    /// (`"auto"`, `"webgpu"` or `"cpu"`; see [`choose_device`]).
    pub async fn start(config_json: String, tokenizer_json: String, settings_json: String, device: String) -> Result<WebRecipe, JsError> {
        let settings: Settings = serde_json::from_str(if settings_json.trim().is_empty() { "{}" } else { &settings_json }).map_err(|e| JsError::new(&format!("settings: {e}")))?;
        let (gpu, backend) = choose_device(&device).await.map_err(|e| JsError::new(&e))?;
        let run = Recipe::new(&config_json, &tokenizer_json, settings, gpu).map_err(|e| JsError::new(&e.to_string()))?;
        Ok(WebRecipe { run: std::rc::Rc::new(std::cell::RefCell::new(run)), backend, config_json, tokenizer_json })
    }

    /// Sends the model's tool calls to `function` (see [`Recipe::use_tool_function`]): the page
    /// passes its Web Worker's `call`.
    pub fn use_tool_function(&self, function: js_sys::Function) -> Result<(), JsError> {
        self.run.try_borrow_mut().map_err(|_| JsError::new("a step is running"))?.use_tool_function(function);
        Ok(())
    }

    /// A tool call's deadline in this run, in milliseconds.
    pub fn tool_timeout_ms(&self) -> u32 {
        self.run.borrow().settings().tool_timeout_ms
    }

    /// A tool call's memory budget in this run, in MiB.
    pub fn tool_memory_mib(&self) -> u32 {
        self.run.borrow().settings().tool_memory_mib
    }

    /// The backend the run trains on, with its adapter.
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// Steps in the whole run.
    pub fn total_steps(&self) -> usize {
        self.run.borrow().total_steps()
    }

    /// Whether every step has been taken.
    pub fn done(&self) -> bool {
        self.run.borrow().done()
    }

    /// Takes the next step; resolves to its report as JSON (rejects while a step is running).
    // The run stays borrowed across the step's read-backs on purpose: the page's one thread may
    // call in meanwhile, and the failed `try_borrow_mut` is what refuses it.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn step(&self) -> js_sys::Promise {
        let run = self.run.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut run = run.try_borrow_mut().map_err(|_| JsError::new("a step is already running"))?;
            let report = run.step().await;
            Ok(JsValue::from_str(&serde_json::to_string(&report).expect("a report serializes")))
        })
    }

    /// The trained model as an HF folder: resolves to an array of [file name, bytes] pairs.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn model_files(&self) -> js_sys::Promise {
        let (run, config, tokenizer) = (self.run.clone(), self.config_json.clone(), self.tokenizer_json.clone());
        wasm_bindgen_futures::future_to_promise(async move {
            let run = run.try_borrow().map_err(|_| JsError::new("a step is running"))?;
            let files = run.model_files(&config, &tokenizer).await.map_err(|e| JsError::new(&e))?;
            let out = js_sys::Array::new();
            for (name, bytes) in files {
                out.push(&js_sys::Array::of2(&JsValue::from_str(&name), &js_sys::Uint8Array::from(bytes.as_slice())));
            }
            Ok(out.into())
        })
    }
}

/// Calls are held to their memory budget only where the module allocates through the sandbox's
/// allocator.
#[global_allocator]
static ALLOCATOR: rstar2_sandbox::BudgetAllocator = rstar2_sandbox::BudgetAllocator;
