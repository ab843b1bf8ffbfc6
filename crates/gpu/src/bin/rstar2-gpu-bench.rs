//! `rstar2-gpu-bench`: the GPU benchmark of `cargo xtask bench kernels` as a binary of its own
//! (wgpu and the model, no Python tool environment), to copy to a machine with a GPU and no
//! Rust toolchain. Run it from the repository root (it reads `models/<preset>/config.json`).
//!
//! ```sh
//! rstar2-gpu-bench [--adapter N] [--size small|full] [--profile] [--peak-gflops P] [--peak-gbs B] [--devices]
//! ```

use rstar2_gpu::bench::{BenchArgs, run};

const HELP: &str = "rstar2-gpu-bench: WGSL kernels, training and decoding on one wgpu adapter beside the CPU backend, and the host path per step.\n\nOptions:\n  --adapter N        adapter index (see --devices); default: the first real GPU, else the first adapter\n  --size small|full  shapes; default: full on a real GPU, small otherwise\n  --profile          GPU time per kernel family from timestamp queries\n  --rounds N         rounds of every row on both sides, one after the other (default 3)\n  --peak-gflops P    the card's fp32 peak in GFLOP/s (default: a table of known cards)\n  --peak-gbs B       the card's memory bandwidth in GB/s, for memory-bound kernels and the decode bound\n  --devices          list the adapters and exit\n  --root DIR         the repository root (default: the current directory)\n";

fn main() {
    let mut args = BenchArgs::default();
    let mut root = std::path::PathBuf::from(".");
    let mut it = std::env::args().skip(1);
    let fail = |m: String| -> ! {
        eprintln!("rstar2-gpu-bench: {m}\n\n{HELP}");
        std::process::exit(2)
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| fail(format!("{name} needs a value")));
        match a.as_str() {
            "--rounds" => args.rounds = Some(value("--rounds").parse().unwrap_or_else(|e| fail(format!("--rounds: {e}")))),
            "--adapter" => args.adapter = Some(value("--adapter").parse().unwrap_or_else(|e| fail(format!("--adapter: {e}")))),
            "--size" => args.size = Some(value("--size")),
            "--peak-gflops" => args.peak_gflops = Some(value("--peak-gflops").parse().unwrap_or_else(|e| fail(format!("--peak-gflops: {e}")))),
            "--peak-gbs" => args.peak_gbs = Some(value("--peak-gbs").parse().unwrap_or_else(|e| fail(format!("--peak-gbs: {e}")))),
            "--root" => root = value("--root").into(),
            "--profile" => args.profile = true,
            "--devices" => {
                for a in rstar2_gpu::list_adapters() {
                    println!(
                        "gpu:{} {} ({}, {}) f16 {} subgroups {:?} cooperative matrices {} driver {}",
                        a.index, a.name, a.backend, a.device_type, a.shader_f16, a.subgroups, a.coop_matrix, a.driver
                    );
                }
                return;
            }
            "-h" | "--help" => {
                print!("{HELP}");
                return;
            }
            other => fail(format!("unknown argument {other}")),
        }
    }
    if let Err(e) = run(&args, &root) {
        eprintln!("rstar2-gpu-bench: {e}");
        std::process::exit(1);
    }
}
