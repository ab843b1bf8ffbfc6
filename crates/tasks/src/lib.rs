//! Data for rstar2: synthetic tool-requiring math problems with disjoint train and test splits,
//! a JSONL loader for real data sets, non-reasoning SFT traces in the exact chat format (with
//! real sandbox output), and the BPE tokenizer training of the tiny preset.
//!
//! ```
//! use rstar2_tasks::synth::{generate, Split, SynthConfig};
//! let tasks = generate(&SynthConfig::default(), Split::Test, 24, 7).unwrap();
//! assert_eq!(tasks.len(), 24);
//! assert!(tasks.iter().all(|t| t.answer.parse::<u64>().is_ok()));
//! ```
#![deny(missing_docs)]

pub mod bpe;
pub mod jsonl;
pub mod real;
pub mod sft;
pub mod synth;

use serde::{Deserialize, Serialize};

/// One problem with its ground truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Stable id.
    pub id: String,
    /// Problem type (`product`, `modpow`, ... or the data set's `data_source`).
    pub kind: String,
    /// Difficulty: 1..=3 for synthetic problems, a data set's own `level` (MATH: 1..=5), else 0.
    pub level: u8,
    /// The question.
    pub question: String,
    /// The ground-truth answer.
    pub answer: String,
    /// A correct Python solution, for synthetic problems.
    pub code: Option<String>,
    /// A plausible but wrong solution (synthetic problems of kinds that have one), for SFT data
    /// that teaches the tool format but not always the right program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flawed: Option<Flawed>,
}

/// A plausible but wrong program for a problem: an off-by-one range, `^` read as a power, a
/// permutation for a combination. Its answer is computed independently in Rust and differs from
/// the true answer (problems where the bug happens to give the right answer have none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flawed {
    /// The wrong program.
    pub code: String,
    /// What it prints.
    pub answer: String,
    /// The bug, in a few words.
    pub bug: String,
}

impl Task {
    /// The rollout request for this problem.
    pub fn request(&self) -> rstar2_rollout::Request {
        rstar2_rollout::Request { id: self.id.clone(), question: self.question.clone(), answer: Some(self.answer.clone()) }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// Why (in the message, not `source()`, so anyhow's `{:#}` prints it once).
        cause: std::io::Error,
    },
    /// A named data set whose file has not been fetched yet.
    #[error("{path} is not there yet: run `{command}`")]
    NotFetched {
        /// The file the name stands for.
        path: String,
        /// The command that writes it.
        command: String,
    },
    /// A line of a data set is not a JSON object.
    #[error("{path}: line {line}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Tokenizer training failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A synthetic task's solution did not produce its answer in the sandbox.
    #[error("task {id}: the sandbox printed {got:?}, expected {expected:?}")]
    WrongSolution {
        /// The task.
        id: String,
        /// What the sandbox printed.
        got: String,
        /// The answer.
        expected: String,
    },
}
