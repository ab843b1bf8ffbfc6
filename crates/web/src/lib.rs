//! rstar2 in a browser tab: the model's WGSL kernels run on WebGPU through wgpu's `webgpu`
//! backend, with every read-back awaited (a page cannot block), and the CPU backend single
//! threaded as the fallback where a browser has no WebGPU.
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
