//! rstar2: an all-Rust reproduction of rStar2-Agent (agentic reinforcement learning with a
//! Python tool, trained with GRPO-RoC).
//!
//! This facade re-exports the workspace crates:
//! - [`sandbox`]: the RustPython tool environment.
//! - [`grpo`]: GRPO-RoC (reward, selection, advantages, policy loss).
//! - [`model`]: the transformer (HF checkpoints, forward, backward, AdamW, KV cache, GGUF import).
//! - [`gpu`]: the same model as WGSL kernels through wgpu.
//! - [`backend`]: the device choice and one enum per role over the CPU and GPU backends.
//! - [`rollout`]: multi-turn tool-integrated generation and its scheduler.
//! - [`tasks`]: synthetic problems, JSONL data sets, SFT traces.
//! - [`train`]: the recipe (SFT, GRPO-RoC stages, evaluation, checkpoints), data parallel.
//!
//! ```no_run
//! use rstar2::sandbox::{Sandbox, SandboxConfig, ToolCall};
//! let sandbox = Sandbox::new(SandboxConfig::in_process()).unwrap();
//! assert_eq!(sandbox.run_blocking(ToolCall::new("print(2**10)")).stdout, "1024\n");
//! ```
#![deny(missing_docs)]

pub use rstar2_backend as backend;
pub use rstar2_gpu as gpu;
pub use rstar2_grpo as grpo;
pub use rstar2_model as model;
pub use rstar2_rollout as rollout;
pub use rstar2_sandbox as sandbox;
pub use rstar2_tasks as tasks;
pub use rstar2_train as train;
