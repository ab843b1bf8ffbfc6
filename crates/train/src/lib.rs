//! The rStar2-Agent recipe as a library: non-reasoning tool-format SFT, then multi-stage
//! GRPO-RoC, with evaluation before SFT, after SFT and after each RL stage; checkpoints and
//! resume, metrics, plots and a report in `runs/<name>/`.
//!
//! The data flow is one way: tasks -> rollout -> reward -> selection -> loss -> backward ->
//! optimizer. A run holds one replica of the policy per device it was given
//! (`device = "gpu:0,gpu:1,cpu"`); each step's prompt groups are sharded over them and their
//! gradients summed ([`replicas`]). With the `mpi` feature the same holds across processes
//! and machines, one rank per device or group of devices ([`collective`]).
//!
//! The tool environment's worker processes are this program started again, so `main` hands
//! them over first:
//!
//! ```no_run
//! use rstar2_train::{TrainOptions, Trainer};
//!
//! rstar2_sandbox::worker::dispatch_worker();
//! // The tiny default (configs/tiny.toml) on the CPU, into runs/tiny/.
//! let options = TrainOptions { device: Some("cpu".into()), ..TrainOptions::default() };
//! let mut trainer = Trainer::start(&options)?;
//! trainer.run(None)?;
//! println!("report: {}", trainer.dir().join("report.md").display());
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod collective;
pub mod compare;
pub mod config;
pub mod eval;
pub mod paths;
pub mod plot;
pub mod progress;
pub mod replicas;
pub mod report;
mod run;
pub mod study;

pub use collective::Collective;
pub use config::TrainConfig;
pub use replicas::Replicas;
pub use run::{TrainOptions, Trainer, is_real_data, open_device, open_devices, run_tools, sandbox, sft_share, training_policy};
