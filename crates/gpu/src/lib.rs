//! The GPU backend of rstar2: hand-written WGSL compute kernels (one file each in `shaders/`)
//! dispatched through wgpu, so the model trains and decodes on any Vulkan, Metal, DX12 or GL
//! adapter. The CPU ops of `rstar2_model::ops` are the reference every kernel is tested against.
//!
//! ```no_run
//! use rstar2_gpu::{AdapterChoice, Gpu, GpuModel};
//! use rstar2_model::{Batch, Config, Model, Params};
//! let dir = std::path::Path::new("models/tiny");
//! let config = Config::from_file(&dir.join("config.json")).unwrap();
//! let model = Model::new(config.clone(), Params::random(&config, 0));
//! let gpu = std::sync::Arc::new(Gpu::open(AdapterChoice::Any).unwrap().expect("an adapter"));
//! let gpu_model = GpuModel::new(gpu, &model);
//! let logits = gpu_model.logits(&Batch::new(&[vec![5, 17, 300]]));
//! assert_eq!(logits.len(), 3 * config.vocab_size);
//! ```
#![deny(missing_docs)]

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod context;
pub mod kernels;
pub mod kv;
pub mod model;
mod open;
pub mod ops;
pub mod tensor;
pub mod tile;

pub use context::{AdapterChoice, AdapterSummary, Gpu};
#[cfg(not(target_arch = "wasm32"))]
pub use context::{list_adapters, test_gpu};
pub use kv::GpuKvCache;
pub use model::{Flat, GpuAdamW, GpuForward, GpuGrads, GpuModel};
pub use tensor::Tensor;

/// Drives one of this crate's futures (device creation, read-backs) to its end on the calling
/// thread. Native only: a browser cannot block, so a page awaits the `_async` forms instead.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    pollster::block_on(future)
}

/// Errors opening a device.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// wgpu found no adapter at all.
    #[error("no GPU adapter found (wgpu saw none; on Linux without a GPU install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)")]
    NoAdapter,
    /// `gpu:N` out of range.
    #[error("no adapter gpu:{index}: {count} found (list them with `cargo xtask devices`)")]
    NoSuchAdapter {
        /// Asked for.
        index: usize,
        /// Found.
        count: usize,
    },
    /// f16 asked of an adapter without `SHADER_F16`.
    #[error("{adapter} has no SHADER_F16: f16 decoding needs it (use f32)")]
    NoF16 {
        /// Adapter name.
        adapter: String,
    },
    /// The adapter refused to open a device.
    #[error("opening {adapter}: {message}")]
    Device {
        /// Adapter name.
        adapter: String,
        /// wgpu's reason.
        message: String,
    },
}
