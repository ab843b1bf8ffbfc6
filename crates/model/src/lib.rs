//! The transformer of rstar2: Hugging Face Qwen2 / Qwen3 / Llama checkpoints on the CPU, with
//! training forward and backward to every parameter, AdamW, and KV-cache decoding.
//!
//! ```no_run
//! use rstar2_model::{Batch, Config, Model, Params};
//! let dir = std::path::Path::new("models/tiny");
//! let config = Config::from_file(&dir.join("config.json")).unwrap();
//! let params = Params::load(dir, &config).unwrap();
//! let model = Model::new(config, params);
//! let fwd = model.forward(&Batch::new(&[vec![5, 17, 300]]));
//! assert_eq!(fwd.logits.len(), 3 * model.config.vocab_size);
//! ```
#![deny(missing_docs)]

pub mod aligned;
pub mod config;
pub mod cpu;
pub mod gguf;
pub mod kv;
pub mod model;
pub mod ops;
pub mod optim;
pub mod peak;
mod simd;
pub mod timing;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

pub use config::{Config, Family};
pub use kv::{KvCache, KvError, SeqId};
pub use model::{Batch, Forward, LayerIdx, Model};
pub use ops::gemv::DecodeWeights;
pub use optim::{AdamW, AdamWConfig, LrSchedule, clip_grad_norm};
pub use tokenizer::Tokenizer;
pub use weights::Params;

/// Errors of this crate, each naming the file or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing a file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// Why (in the message, not `source()`, so anyhow's `{:#}` prints it once).
        cause: std::io::Error,
    },
    /// `config.json` is malformed or describes an unsupported model.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// `tokenizer.json` is missing or malformed.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A weight file is missing, truncated, or has a missing, extra or misshapen tensor.
    #[error("{file}: {message}")]
    Weights {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl ModelError {
    pub(crate) fn io(path: &Path, cause: std::io::Error) -> Self {
        ModelError::Io { path: path.display().to_string(), cause }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}
