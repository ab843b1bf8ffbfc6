//! The matmul kernel's speed in this browser: the WGSL kernel on the WebGPU adapter beside the
//! CPU backend compiled into the same module (one thread), in alternating rounds, so that a busy
//! spell on the machine slows both sides alike.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// What [`bench_matmul`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulBench {
    /// The adapter, as the browser names it.
    pub adapter: String,
    /// C = A·Bᵀ with A [m x k], B [n x k].
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The inner dimension.
    pub k: usize,
    /// GFLOP/s of the WGSL kernel in each round (products queued back to back, then one read-back).
    pub gpu_gflops: Vec<f64>,
    /// GFLOP/s of the CPU backend's product in each round.
    pub cpu_gflops: Vec<f64>,
    /// Largest |C_gpu - C_cpu|: both sides computed the same product.
    pub max_abs_diff: f32,
}

/// Times `reps` products per round on each side over `rounds` rounds (GPU first in odd rounds,
/// CPU first in even ones); `None` where the browser has no WebGPU.
pub async fn bench_matmul(m: usize, n: usize, k: usize, reps: usize, rounds: usize) -> Option<MatmulBench> {
    let gpu = crate::webgpu().await?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-0.5..0.5)).collect();
    let b: Vec<f32> = (0..n * k).map(|_| rng.random_range(-0.5..0.5)).collect();
    let (ta, tb, tc) = (gpu.upload(&a), gpu.upload(&b), gpu.alloc(m * n));
    let mut c = vec![0.0f32; m * n];
    // Warm-up: the pipeline is built on first use.
    rstar2_gpu::ops::matmul_nt(&gpu, &tc, &ta, &tb, m, n, k, false);
    let from_gpu = gpu.read_async(&tc).await;
    rstar2_model::ops::matmul::matmul_nt(&mut c, &a, &b, m, n, k, false);
    assert_eq!(from_gpu.len(), c.len(), "the read-back holds the whole product");
    let max_abs_diff = from_gpu.iter().zip(&c).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let gflop = 2.0 * (m * n * k * reps.max(1)) as f64 / 1e9;
    let (mut gpu_gflops, mut cpu_gflops) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let start = web_time::Instant::now();
            if side == 0 {
                for _ in 0..reps.max(1) {
                    rstar2_gpu::ops::matmul_nt(&gpu, &tc, &ta, &tb, m, n, k, false);
                }
                gpu.read_async(&tc).await;
                gpu_gflops.push(gflop / start.elapsed().as_secs_f64());
            } else {
                for _ in 0..reps.max(1) {
                    rstar2_model::ops::matmul::matmul_nt(&mut c, &a, &b, m, n, k, false);
                }
                cpu_gflops.push(gflop / start.elapsed().as_secs_f64());
            }
        }
    }
    Some(MatmulBench { adapter: gpu.describe(), m, n, k, gpu_gflops, cpu_gflops, max_abs_diff })
}
