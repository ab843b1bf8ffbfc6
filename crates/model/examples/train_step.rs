//! Runs training steps of a preset with random weights, for profiling:
//! `cargo run --release -p rstar2-model --example train_step -- models/tiny/config.json 4 256 10`

use rstar2_model::{AdamW, AdamWConfig, Batch, Config, Model, Params};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config = Config::from_file(std::path::Path::new(&args[1])).expect("config");
    let (b, t, steps): (usize, usize, usize) = (args[2].parse().unwrap(), args[3].parse().unwrap(), args[4].parse().unwrap());
    let mut model = Model::new(config.clone(), Params::random(&config, 0));
    let v = config.vocab_size as u32;
    let seqs: Vec<Vec<u32>> = (0..b).map(|s| (0..t).map(|i| ((s * 7919 + i * 104_729) as u32) % v).collect()).collect();
    let batch = Batch::new(&seqs);
    let mut opt = AdamW::new(AdamWConfig::default(), &model.params);
    let mut grads = Params::zeros(&config);
    for _ in 0..steps {
        let start = std::time::Instant::now();
        grads.fill_zero();
        let loss = model.next_token_loss_backward(&batch, &mut grads);
        opt.update(&mut model.params, &grads, 1e-4);
        eprintln!("loss {loss:.4}  {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    }
}
