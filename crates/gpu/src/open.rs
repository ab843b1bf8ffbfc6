//! Opening a device: choosing the adapter, connecting, then checking on the device what needs
//! kernels to check (cooperative matrices against the tiled matmul). It sits above both the
//! context and the ops, so neither imports the other.

use crate::GpuError;
use crate::context::{AdapterChoice, Gpu, adapters, is_real_gpu};

impl Gpu {
    /// Opens an adapter. `Ok(None)` only for [`AdapterChoice::Auto`] when there is no real GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(choice: AdapterChoice) -> Result<Option<Gpu>, GpuError> {
        crate::block_on(Self::open_async(choice))
    }

    /// [`Gpu::open`], asynchronously (how a page opens WebGPU).
    pub async fn open_async(choice: AdapterChoice) -> Result<Option<Gpu>, GpuError> {
        let all = adapters().await;
        let adapter = match choice {
            AdapterChoice::Auto => match all.into_iter().find(|a| is_real_gpu(&a.get_info())) {
                Some(a) => a,
                None => return Ok(None),
            },
            AdapterChoice::Any => all.into_iter().next().ok_or(GpuError::NoAdapter)?,
            AdapterChoice::Index(i) => {
                let n = all.len();
                all.into_iter().nth(i).ok_or(GpuError::NoSuchAdapter { index: i, count: n })?
            }
        };
        let gpu = Gpu::connect(adapter).await?;
        if gpu.has_coop_matrix() {
            // An experimental feature: a driver or wgpu that rejects the kernel must not take
            // the device down, so the check runs inside error scopes.
            let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let internal = gpu.device.push_error_scope(wgpu::ErrorFilter::Internal);
            let err = crate::ops::coop_matrix_error(&gpu).await;
            let failure = match internal.pop().await {
                Some(e) => Some(e),
                None => validation.pop().await,
            };
            if let Some(e) = failure {
                eprintln!("rstar2-gpu: {}: the cooperative-matrix kernel failed ({e}); not used", gpu.describe());
                gpu.disable_coop_matrix();
            } else if err.is_nan() || err >= 1e-4 {
                eprintln!("rstar2-gpu: {}: cooperative-matrix matmul differs from the tiled kernel by {err:.2e} of the largest output; not used", gpu.describe());
                gpu.disable_coop_matrix();
            }
        }
        if std::env::var_os("RSTAR2_GPU_PROFILE").is_some_and(|v| v != "0") {
            gpu.enable_profiling();
        }
        Ok(Some(gpu))
    }
}
