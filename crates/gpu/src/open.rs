//! Opening a device: choosing the adapter, connecting, then checking on the device what needs
//! kernels to check (cooperative matrices against the tiled matmul). It sits above both the
//! context and the ops, so neither imports the other.

use crate::GpuError;
use crate::context::{AdapterChoice, Gpu, adapters, is_real_gpu};

impl Gpu {
    /// Opens an adapter. `Ok(None)` only for [`AdapterChoice::Auto`] when there is no real GPU.
    pub fn open(choice: AdapterChoice) -> Result<Option<Gpu>, GpuError> {
        let all = adapters();
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
        let gpu = Gpu::connect(adapter)?;
        if gpu.has_coop_matrix() {
            // An experimental feature: a driver or wgpu that rejects the kernel must not take
            // the device down, so the check runs inside error scopes.
            let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let internal = gpu.device.push_error_scope(wgpu::ErrorFilter::Internal);
            let err = crate::ops::coop_matrix_error(&gpu);
            let failure = pollster::block_on(internal.pop()).or_else(|| pollster::block_on(validation.pop()));
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
