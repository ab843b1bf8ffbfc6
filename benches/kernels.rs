//! WGSL kernels with criterion, each beside the CPU backend's op on the same shape: matmul at a
//! training and a decode shape, a tiny-preset training step and a batched decode step. Runs on
//! the first real GPU, else the first adapter wgpu finds (a software one gives CPU-emulation
//! figures). `cargo xtask bench kernels` prints the fuller table.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rstar2::gpu::{AdapterChoice, Gpu, GpuAdamW, GpuKvCache, GpuModel, ops};
use rstar2::model::ops::matmul::matmul_nt;
use rstar2::model::{AdamW, AdamWConfig, Batch, Config, KvCache, Model, Params};

fn kernels(c: &mut Criterion) {
    let gpu = match Gpu::open(AdapterChoice::Auto).expect("wgpu") {
        Some(g) => g,
        None => Gpu::open(AdapterChoice::Any).expect("wgpu").expect("an adapter"),
    };
    eprintln!("adapter: {}", gpu.describe());
    let gpu = Arc::new(gpu);
    let mut group = c.benchmark_group("kernels");
    group.sample_size(10);
    let shapes = if gpu.is_software() { [(128usize, 576usize, 192usize), (8, 576, 192)] } else { [(2048, 2048, 2048), (8, 576, 49152)] };
    for (m, k, n) in shapes {
        let (a, b) = (vec![0.5f32; m * k], vec![0.25f32; n * k]);
        let (ta, tb, tc) = (gpu.upload(&a), gpu.upload(&b), gpu.alloc(m * n));
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_function(format!("gpu_matmul_{m}x{k}x{n}_flops"), |bch| {
            bch.iter(|| {
                ops::matmul_nt(&gpu, &tc, &ta, &tb, m, n, k, false);
                gpu.sync();
            })
        });
        group.bench_function(format!("cpu_matmul_{m}x{k}x{n}_flops"), |bch| bch.iter(|| matmul_nt(&mut out, &a, &b, m, n, k, false)));
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/config.json");
    let config = Config::from_file(&path).expect("tiny preset");
    let mut net = Model::new(config.clone(), Params::random(&config, 0));
    let mut gnet = GpuModel::new(gpu.clone(), &net);
    let v = config.vocab_size as u32;
    let seqs: Vec<Vec<u32>> = (0..2).map(|s| (0..64).map(|i| ((s * 7919 + i * 104_729) as u32) % v).collect()).collect();
    let batch = Batch::new(&seqs);
    group.throughput(Throughput::Elements(batch.len() as u64));
    let mut gopt = GpuAdamW::new(AdamWConfig::default(), &gnet);
    group.bench_function("gpu_tiny_train_step_tokens", |bch| {
        bch.iter(|| {
            let grads = gnet.zero_grads();
            gnet.next_token_loss_backward(&batch, &grads);
            gopt.update(&mut gnet, &grads, 1e-4);
            gpu.sync();
        })
    });
    let mut opt = AdamW::new(AdamWConfig::default(), &net.params);
    let mut grads = Params::zeros(&config);
    group.bench_function("cpu_tiny_train_step_tokens", |bch| {
        bch.iter(|| {
            grads.fill_zero();
            net.next_token_loss_backward(&batch, &mut grads);
            opt.update(&mut net.params, &grads, 1e-4);
        })
    });
    let ids: Vec<u64> = (0..8).collect();
    let prompts: Vec<Vec<u32>> = (0..8).map(|b| (0..32).map(|i| ((b * 31 + i * 17) as u32) % v).collect()).collect();
    let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let next: Vec<[u32; 1]> = (0..8).map(|b| [(b * 5) as u32 % v]).collect();
    let step: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
    group.throughput(Throughput::Elements(8));
    let mut gcache = GpuKvCache::new(&gnet, 8 * 128);
    let mut ccache = KvCache::new(8 * 128);
    // Contexts of 32 to 96 tokens; the GPU samples greedily on the device, the CPU on the host.
    group.bench_function("gpu_tiny_decode_step_batch8_tokens", |bch| {
        bch.iter(|| {
            if gcache.len(0) == 0 || gcache.len(0) >= 96 {
                ids.iter().for_each(|s| gcache.release(*s));
                gnet.extend(&mut gcache, &ids, &chunks).expect("prefill fits");
            }
            gnet.extend_sample(&mut gcache, &ids, &step, 0.0, &[0.0; 8]).expect("cache has room")
        })
    });
    group.bench_function("cpu_tiny_decode_step_batch8_tokens", |bch| {
        bch.iter(|| {
            if ccache.len(0) == 0 || ccache.len(0) >= 96 {
                ids.iter().for_each(|s| ccache.release(*s));
                net.extend(&mut ccache, &ids, &chunks).expect("prefill fits");
            }
            net.extend(&mut ccache, &ids, &step).expect("cache has room")
        })
    });
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
