//! The backend layer of rstar2: one enum per role so training and decoding code is written once
//! for both backends: the device (`auto | cpu | gpu | gpu:N`), the policy with its optimizer,
//! its gradients and a forward pass's activations. The CPU backend is `rstar2-model`; the GPU
//! one, `rstar2-gpu`'s WGSL kernels, is built with the `gpu` feature (on by default), and a
//! build without it has no wgpu at all.
//!
//! ```no_run
//! use rstar2_backend::{Device, Policy};
//! use rstar2_model::{AdamW, AdamWConfig, Batch, Config, Model, Params};
//! let config = Config::from_file(std::path::Path::new("models/tiny/config.json")).unwrap();
//! let params = Params::random(&config, 0);
//! let optimizer = AdamW::new(AdamWConfig::default(), &params);
//! let device = Device::open("auto").unwrap();
//! let mut policy = Policy::new(&device, Model::new(config, params), Some(optimizer));
//! let batch = Batch::new(&[vec![5, 17, 300]]);
//! let (acts, logprobs) = policy.forward_logprobs(&batch, &[17, 300, 2]);
//! let mut grads = policy.zero_grads();
//! policy.backward(&acts, &vec![-1.0 / 3.0; logprobs.len()], &mut grads);
//! let norm = policy.clip_and_step(&mut grads, 1.0, 1e-3);
//! assert!(norm.is_finite());
//! ```
#![deny(missing_docs)]

use std::borrow::Cow;
#[cfg(feature = "gpu")]
use std::sync::Arc;

#[cfg(feature = "gpu")]
use rstar2_gpu::{AdapterChoice, Gpu, GpuAdamW, GpuError, GpuForward, GpuGrads, GpuModel, list_adapters};
use rstar2_model::{AdamW, Batch, Config, DecodeWeights, Forward, Model, Params, clip_grad_norm};

/// Errors choosing or using a device.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A device string that is none of auto, cpu, gpu, gpu:N.
    #[error("--device {spec:?}: expected auto, cpu, gpu or gpu:N")]
    BadDevice {
        /// What was given.
        spec: String,
    },
    /// `--device gpu` on a machine without a real GPU.
    #[error("--device gpu: no real GPU found; adapters: [{}] (a software adapter only by index, e.g. gpu:0; `auto` falls back to the CPU)", adapters.join("; "))]
    NoRealGpu {
        /// What wgpu found.
        adapters: Vec<String>,
    },
    /// A GPU asked of a build without the `gpu` feature.
    #[error("--device {spec}: this build has no GPU backend (built without the `gpu` feature); use cpu or auto")]
    NotBuilt {
        /// What was given.
        spec: String,
    },
    /// The GPU backend's error.
    #[cfg(feature = "gpu")]
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Where a model runs.
#[derive(Clone)]
pub enum Device {
    /// The CPU backend (gemm + rayon).
    Cpu,
    /// A wgpu adapter.
    #[cfg(feature = "gpu")]
    Gpu(Arc<Gpu>),
}

impl Device {
    /// `auto`: a real GPU if there is one, else the CPU (a software adapter such as lavapipe is
    /// never chosen here); `cpu`; `gpu`: the first real GPU, an error if none; `gpu:N`: adapter
    /// N of `cargo xtask devices`, software ones included.
    /// Without the `gpu` feature, `auto` is the CPU and a GPU is an error.
    pub fn open(spec: &str) -> Result<Device, BackendError> {
        let index = match spec {
            "cpu" => return Ok(Device::Cpu),
            "auto" | "gpu" => None,
            other => Some(other.strip_prefix("gpu:").and_then(|n| n.parse::<usize>().ok()).ok_or_else(|| BackendError::BadDevice { spec: other.to_string() })?),
        };
        #[cfg(feature = "gpu")]
        return match (spec, index) {
            (_, Some(index)) => Ok(Device::Gpu(Arc::new(Gpu::open(AdapterChoice::Index(index))?.expect("an index never answers None")))),
            ("auto", None) => Ok(Gpu::open(AdapterChoice::Auto)?.map_or(Device::Cpu, |g| Device::Gpu(Arc::new(g)))),
            _ => match Gpu::open(AdapterChoice::Auto)? {
                Some(g) => Ok(Device::Gpu(Arc::new(g))),
                None => Err(BackendError::NoRealGpu { adapters: list_adapters().iter().map(|a| format!("gpu:{} {} ({}, {})", a.index, a.name, a.backend, a.device_type)).collect() }),
            },
        };
        #[cfg(not(feature = "gpu"))]
        match (spec, index) {
            ("auto", None) => Ok(Device::Cpu),
            _ => Err(BackendError::NotBuilt { spec: spec.to_string() }),
        }
    }

    /// "cpu" or the adapter's description.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            #[cfg(feature = "gpu")]
            Device::Gpu(g) => format!("gpu: {}", g.describe()),
        }
    }
}

/// A model being trained, with its optimizer, on one device.
#[allow(clippy::large_enum_variant)]
pub enum Policy {
    /// On the CPU.
    Cpu {
        /// The model.
        model: Model,
        /// Its optimizer (none when only decoding).
        optimizer: Option<AdamW>,
    },
    /// On a GPU; the host keeps nothing but the config.
    #[cfg(feature = "gpu")]
    Gpu {
        /// The model.
        model: GpuModel,
        /// Its optimizer (none when only decoding).
        optimizer: Option<GpuAdamW>,
    },
}

/// Activations of a forward pass, for backward.
#[allow(clippy::large_enum_variant)]
pub enum Activations {
    /// CPU.
    Cpu(Forward),
    /// GPU.
    #[cfg(feature = "gpu")]
    Gpu(GpuForward),
}

/// Gradients, where the parameters are.
pub enum Grads {
    /// CPU.
    Cpu(Params),
    /// GPU.
    #[cfg(feature = "gpu")]
    Gpu(GpuGrads),
}

impl Policy {
    /// Puts `model` and `optimizer` on `device`; without an optimizer it can only decode.
    pub fn new(device: &Device, model: Model, optimizer: Option<AdamW>) -> Policy {
        match device {
            Device::Cpu => Policy::Cpu { model, optimizer },
            #[cfg(feature = "gpu")]
            Device::Gpu(gpu) => {
                let g = GpuModel::new(gpu.clone(), &model);
                let optimizer = optimizer.map(|o| GpuAdamW::from_cpu(&g, &o));
                Policy::Gpu { model: g, optimizer }
            }
        }
    }

    /// The weights cached inference reads: on the CPU, copies repacked for the decode kernel in
    /// f32, f16 or bf16 (AMX or AVX-512 BF16); on a GPU, its f32 weights or f16 copies (SHADER_F16 needed; bf16
    /// asks for half precision, and GPUs read f16). Kept across
    /// optimizer steps: [`Policy::clip_and_step`] drops stale copies and
    /// [`Policy::refresh_decode_weights`] makes them again.
    pub fn set_decode_weights(&mut self, weights: DecodeWeights) -> Result<(), BackendError> {
        match (self, weights) {
            (Policy::Cpu { model, .. }, w) => {
                model.set_decode_weights(w);
                Ok(())
            }
            #[cfg(feature = "gpu")]
            (Policy::Gpu { model, .. }, DecodeWeights::F16 | DecodeWeights::Bf16) => Ok(model.enable_f16_decode()?),
            #[cfg(feature = "gpu")]
            (Policy::Gpu { model, .. }, DecodeWeights::F32) => {
                model.disable_f16_decode();
                Ok(())
            }
        }
    }

    /// Tokens of KV cache this device can hold: on the CPU, a quarter of the memory available
    /// now; on a GPU, what one storage binding per layer holds (the paged cache's layout).
    /// Engines size their cache with it, so decoding batches are as large as the device allows.
    pub fn kv_token_budget(&self) -> usize {
        match self {
            Policy::Cpu { model, .. } => {
                let available = available_memory_bytes().unwrap_or(8 << 30);
                available / 4 / rstar2_model::KvCache::bytes_per_token(model).max(1)
            }
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, .. } => rstar2_gpu::GpuKvCache::token_budget(model),
        }
    }

    /// Ends a phase (rollouts to training and back): a GPU frees its pooled buffers and cached
    /// bind groups, so device memory follows what the next phase needs rather than the peak of
    /// every shape seen. Nothing to do on the CPU.
    pub fn end_phase(&self) {
        #[cfg(feature = "gpu")]
        if let Some(gpu) = self.gpu() {
            gpu.trim();
        }
    }

    /// The device of a GPU policy.
    #[cfg(feature = "gpu")]
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        match self {
            Policy::Cpu { .. } => None,
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, .. } => Some(&model.gpu),
        }
    }

    /// The fastest decode weights within the error budget this device has: on the CPU, bf16
    /// where its products pay ([`rstar2_model::peak::bf16_products_pay`]: AMX tiles, a batch of
    /// 32 decoded 1.1-1.6x faster than with f16 in `bench model` runs on a Sapphire Rapids Xeon;
    /// AVX-512 BF16 dot products on Zen 4) and f16 elsewhere; on a GPU, f16 with SHADER_F16,
    /// else f32.
    pub fn default_decode_weights(&self) -> DecodeWeights {
        match self {
            Policy::Cpu { .. } if rstar2_model::peak::bf16_products_pay() => DecodeWeights::Bf16,
            Policy::Cpu { .. } => DecodeWeights::F16,
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, .. } if model.gpu.has_f16() => DecodeWeights::F16,
            #[cfg(feature = "gpu")]
            Policy::Gpu { .. } => DecodeWeights::F32,
        }
    }

    /// The type decoding actually reads when `weights` is asked for: bf16 needs AMX or AVX-512
    /// BF16 on the CPU (f16 otherwise), and GPUs read f16 for it.
    pub fn stored_decode_weights(&self, weights: DecodeWeights) -> DecodeWeights {
        match (self, weights) {
            #[cfg(feature = "gpu")]
            (Policy::Gpu { .. }, DecodeWeights::Bf16) => DecodeWeights::F16,
            #[cfg(feature = "gpu")]
            (Policy::Gpu { .. }, w) => w,
            (Policy::Cpu { .. }, w) => w.on_this_cpu(),
        }
    }

    /// Makes the decode copies again after optimizer steps (nothing to do if they are fresh).
    pub fn refresh_decode_weights(&mut self) -> Result<(), BackendError> {
        match self {
            Policy::Cpu { model, .. } => {
                model.refresh_decode_weights();
                Ok(())
            }
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, .. } => Ok(model.refresh_decode_weights()?),
        }
    }

    /// The model's config.
    pub fn config(&self) -> &Config {
        match self {
            Policy::Cpu { model, .. } => &model.config,
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, .. } => &model.config,
        }
    }

    /// Forward over a packed batch and the log-prob of `targets` per row.
    pub fn forward_logprobs(&self, batch: &Batch, targets: &[u32]) -> (Activations, Vec<f32>) {
        match self {
            Policy::Cpu { model, .. } => {
                let mut fwd = model.forward(batch);
                let lp = fwd.logprobs(targets, model.config.vocab_size);
                (Activations::Cpu(fwd), lp)
            }
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, .. } => {
                let mut fwd = model.forward(batch);
                let lp = model.logprobs(&mut fwd, targets);
                (Activations::Gpu(fwd), lp)
            }
        }
    }

    /// Zeroed gradients.
    pub fn zero_grads(&self) -> Grads {
        match self {
            Policy::Cpu { model, .. } => Grads::Cpu(model.params.zeros_like()),
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, .. } => Grads::Gpu(model.zero_grads()),
        }
    }

    /// Backward from d(loss)/d(logprob), accumulated into `grads`.
    pub fn backward(&self, acts: &Activations, dlogprob: &[f32], grads: &mut Grads) {
        match (self, acts, grads) {
            (Policy::Cpu { model, .. }, Activations::Cpu(f), Grads::Cpu(g)) => model.backward(f, dlogprob, g),
            #[cfg(feature = "gpu")]
            (Policy::Gpu { model, .. }, Activations::Gpu(f), Grads::Gpu(g)) => model.backward(f, dlogprob, g),
            #[cfg(feature = "gpu")]
            _ => panic!("backward: activations or gradients from the other backend"),
        }
    }

    /// Global-norm clipping, then one AdamW update; returns the norm before clipping.
    pub fn clip_and_step(&mut self, grads: &mut Grads, max_norm: f32, lr: f32) -> f32 {
        match (self, grads) {
            (Policy::Cpu { model, optimizer: Some(optimizer) }, Grads::Cpu(g)) => {
                let norm = clip_grad_norm(g, max_norm);
                optimizer.update(&mut model.params, g, lr);
                model.invalidate_decode_weights();
                norm
            }
            #[cfg(feature = "gpu")]
            (Policy::Gpu { model, optimizer: Some(optimizer) }, Grads::Gpu(g)) => {
                let norm = model.clip_grad_norm(g, max_norm);
                optimizer.update(model, g, lr);
                model.invalidate_decode_weights();
                norm
            }
            (Policy::Cpu { optimizer: None, .. }, _) => panic!("clip_and_step: a decode-only policy has no optimizer"),
            #[cfg(feature = "gpu")]
            (Policy::Gpu { optimizer: None, .. }, _) => panic!("clip_and_step: a decode-only policy has no optimizer"),
            #[cfg(feature = "gpu")]
            _ => panic!("clip_and_step: gradients from the other backend"),
        }
    }

    /// Gradients read back to the host (data parallel sums them there).
    pub fn grads_to_host(&self, grads: Grads) -> Params {
        match (self, grads) {
            (Policy::Cpu { .. }, Grads::Cpu(g)) => g,
            #[cfg(feature = "gpu")]
            (Policy::Gpu { model, .. }, Grads::Gpu(g)) => model.download(&g),
            #[cfg(feature = "gpu")]
            _ => panic!("grads_to_host: gradients from the other backend"),
        }
    }

    /// Host gradients (laid out like the parameters) placed where this policy's are.
    pub fn grads_from_host(&self, grads: Params) -> Grads {
        match self {
            Policy::Cpu { .. } => Grads::Cpu(grads),
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, .. } => Grads::Gpu(rstar2_gpu::Flat::upload(&model.gpu, &grads.data)),
        }
    }

    /// Replaces the parameters (same config), e.g. with another replica's after drift; the
    /// optimizer moments are kept.
    pub fn set_params(&mut self, params: &Params) {
        match self {
            Policy::Cpu { model, .. } => {
                assert!(params.specs == model.params.specs, "set_params: a different parameter set");
                model.params.data.clone_from(&params.data);
                model.invalidate_decode_weights();
            }
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, .. } => {
                model.upload_params(params);
                model.invalidate_decode_weights();
            }
        }
    }

    /// Fresh optimizer moments (a new RL stage).
    pub fn reset_optimizer(&mut self) {
        match self {
            Policy::Cpu { model, optimizer: Some(optimizer) } => *optimizer = AdamW::new(optimizer.config, &model.params),
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, optimizer: Some(optimizer) } => *optimizer = GpuAdamW::new(optimizer.config, model),
            _ => {}
        }
    }

    /// The parameters (read back from a GPU).
    pub fn params(&self) -> Cow<'_, Params> {
        match self {
            Policy::Cpu { model, .. } => Cow::Borrowed(&model.params),
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, .. } => Cow::Owned(model.download_params()),
        }
    }

    /// The optimizer as a CPU `AdamW` (moments read back from a GPU), for checkpoints.
    pub fn optimizer(&self) -> Option<Cow<'_, AdamW>> {
        match self {
            Policy::Cpu { optimizer, .. } => optimizer.as_ref().map(Cow::Borrowed),
            #[cfg(feature = "gpu")]
            Policy::Gpu { model, optimizer } => optimizer.as_ref().map(|o| Cow::Owned(o.to_cpu(model))),
        }
    }
}

/// MemAvailable of /proc/meminfo in bytes (Linux).
fn available_memory_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: usize = text.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_strings_are_checked() {
        assert!(matches!(Device::open("cpu"), Ok(Device::Cpu)));
        for bad in ["", "CPU", "gpu:", "gpu:x", "gpu0", "tpu"] {
            let err = Device::open(bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(matches!(err, BackendError::BadDevice { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("expected auto, cpu, gpu or gpu:N"), "{err}");
        }
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn without_the_gpu_feature_auto_is_the_cpu_and_a_gpu_is_refused() {
        assert!(matches!(Device::open("auto"), Ok(Device::Cpu)));
        for gpu in ["gpu", "gpu:0"] {
            let err = Device::open(gpu).err().unwrap();
            assert!(err.to_string().contains("without the `gpu` feature"), "{err}");
        }
    }

    /// A CPU policy trains: one step on a two-token target lowers the loss (and the norm it
    /// reports is the gradient's, computed again here by hand).
    #[test]
    fn a_cpu_policy_takes_a_step() {
        let config: Config = tiny_config();
        let params = Params::random(&config, 3);
        let optimizer = AdamW::new(rstar2_model::AdamWConfig::default(), &params);
        let mut policy = Policy::new(&Device::Cpu, Model::new(config, params), Some(optimizer));
        let batch = Batch::new(&[vec![1, 2, 3]]);
        let targets = [2, 3, 4];
        let loss = |p: &Policy| -p.forward_logprobs(&batch, &targets).1.iter().sum::<f32>();
        let before = loss(&policy);
        let (acts, lp) = policy.forward_logprobs(&batch, &targets);
        let mut grads = policy.zero_grads();
        policy.backward(&acts, &vec![-1.0; lp.len()], &mut grads);
        let Grads::Cpu(g) = &grads else { unreachable!() };
        let norm = g.data.iter().flatten().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt() as f32;
        let reported = policy.clip_and_step(&mut grads, 1e9, 1e-2);
        assert!((reported - norm).abs() <= 1e-4 * norm, "{reported} vs {norm}");
        assert!(loss(&policy) < before, "{} !< {before}", loss(&policy));
    }

    fn tiny_config() -> Config {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny/config.json");
        Config::from_file(&dir).unwrap()
    }
}
