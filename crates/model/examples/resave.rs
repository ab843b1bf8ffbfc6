//! Loads a model folder (any supported dtype, single or sharded) and writes it back as one f32
//! `model.safetensors` plus `config.json`: `cargo run --release -p rstar2-model --example resave -- IN_DIR OUT_DIR`

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (src, dst) = (std::path::Path::new(&args[1]), std::path::Path::new(&args[2]));
    let config = rstar2_model::Config::from_file(&src.join("config.json")).expect("config");
    let params = rstar2_model::Params::load(src, &config).expect("weights");
    params.save(dst).expect("save");
    std::fs::write(dst.join("config.json"), serde_json::to_string_pretty(&config).expect("json")).expect("write config");
}
