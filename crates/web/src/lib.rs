//! rstar2 in a browser tab: the model's WGSL kernels run on WebGPU through wgpu's `webgpu`
//! backend, with every read-back awaited (a page cannot block), the CPU backend single
//! threaded as the fallback where a browser has no WebGPU, and the Python tool on RustPython
//! inside the page ([`PythonTool`]), its deadline and memory budget checked by the running call.
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

/// A device on the WebGPU adapter this browser offers, shared as `rstar2_gpu::GpuModel` wants
/// it, or `None` where the browser has no WebGPU (the page then trains on the CPU backend).
pub async fn webgpu() -> Option<std::sync::Arc<rstar2_gpu::Gpu>> {
    let gpu = rstar2_gpu::Gpu::open_async(rstar2_gpu::AdapterChoice::Any).await.ok().flatten()?;
    // wgpu's browser handles are not Send: an Arc shared on the page's one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    Some(std::sync::Arc::new(gpu))
}

/// For the page: which backend a run would use, e.g. "WebGPU: SwiftShader Device (...)" or
/// "CPU (no WebGPU in this browser)".
#[wasm_bindgen]
pub async fn backend_description() -> String {
    match webgpu().await {
        Some(gpu) => format!("WebGPU: {}", gpu.describe()),
        None => "CPU (no WebGPU in this browser)".to_string(),
    }
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

    /// Runs one call in fresh globals; the result as the sandbox's JSON (`status`, `stdout`,
    /// `stderr`, `elapsed_us`).
    pub fn run(&mut self, code: &str) -> String {
        let result = self.call(&rstar2_sandbox::ToolCall::new(code));
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

/// Calls are held to their memory budget only where the module allocates through the sandbox's
/// allocator.
#[global_allocator]
static ALLOCATOR: rstar2_sandbox::BudgetAllocator = rstar2_sandbox::BudgetAllocator;
