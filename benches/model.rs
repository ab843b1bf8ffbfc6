//! CPU model throughput with criterion: matmul at a training and a decode shape, one training
//! step (forward + backward + AdamW) and one batched decode step of the tiny preset with random
//! weights. `cargo xtask bench model` prints the same work beside PyTorch as one table.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rstar2::model::ops::matmul::matmul_nt;
use rstar2::model::{AdamW, AdamWConfig, Batch, Config, KvCache, Model, Params};

fn tiny() -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/config.json");
    let config = Config::from_file(&path).expect("tiny preset");
    Model::new(config.clone(), Params::random(&config, 0))
}

fn model(c: &mut Criterion) {
    let mut group = c.benchmark_group("model_cpu");
    group.sample_size(10);
    for (m, k, n) in [(512usize, 576usize, 1536usize), (8, 576, 1536)] {
        let (a, b) = (vec![0.5f32; m * k], vec![0.25f32; n * k]);
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_function(format!("matmul_{m}x{k}x{n}_flops"), |bch| bch.iter(|| matmul_nt(&mut out, &a, &b, m, n, k, false)));
    }
    let mut net = tiny();
    let v = net.config.vocab_size as u32;
    let seqs: Vec<Vec<u32>> = (0..4).map(|s| (0..256).map(|i| ((s * 7919 + i * 104_729) as u32) % v).collect()).collect();
    let batch = Batch::new(&seqs);
    let mut opt = AdamW::new(AdamWConfig::default(), &net.params);
    let mut grads = Params::zeros(&net.config);
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("tiny_train_step_tokens", |bch| {
        bch.iter(|| {
            grads.fill_zero();
            net.next_token_loss_backward(&batch, &mut grads);
            opt.update(&mut net.params, &grads, 1e-4);
        })
    });
    let seq_ids: Vec<u64> = (0..8).collect();
    let mut cache = KvCache::new(8 * 4096);
    let prompts: Vec<Vec<u32>> = (0..8).map(|b| (0..32).map(|i| ((b * 31 + i * 17) as u32) % v).collect()).collect();
    let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    net.extend(&mut cache, &seq_ids, &chunks).expect("prefill fits");
    group.throughput(Throughput::Elements(8));
    group.bench_function("tiny_decode_step_batch8_tokens", |bch| {
        bch.iter(|| {
            // Contexts of 32 to 96 tokens, as in `cargo xtask bench model`.
            if cache.len(0) >= 96 {
                for s in &seq_ids {
                    cache.release(*s);
                }
                net.extend(&mut cache, &seq_ids, &chunks).expect("prefill fits");
            }
            let next: Vec<[u32; 1]> = (0..8).map(|b| [(b * 5) as u32 % v]).collect();
            let step: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
            net.extend(&mut cache, &seq_ids, &step).expect("cache has room")
        })
    });
    group.finish();
}

criterion_group!(benches, model);
criterion_main!(benches);
