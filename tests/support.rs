//! Golden fixtures written by `scripts/gen_fixtures.py` with HF transformers, shared by the
//! CPU (`tests/model.rs`) and GPU (`tests/gpu.rs`) model tests.

use std::path::PathBuf;

use rstar2::model::{Config, Model, Params};
use safetensors::SafeTensors;

pub(crate) fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub(crate) struct Expected {
    pub tensors: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub seqs: Vec<Vec<u32>>,
    pub lr: f32,
    pub steps: usize,
}

pub(crate) fn expected(name: &str) -> Expected {
    let dir = fixture_dir(name);
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st.tensors().into_iter().map(|(n, v)| (n, (v.shape().to_vec(), v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))).collect();
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let seqs = meta["seqs"].as_array().unwrap().iter().map(|s| s.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()).collect();
    Expected { tensors, seqs, lr: meta["lr"].as_f64().unwrap() as f32, steps: meta["steps"].as_u64().unwrap() as usize }
}

/// A fixture's folder, config and parameters.
pub(crate) fn load_parts(name: &str) -> (PathBuf, Config, Params) {
    let dir = fixture_dir(name);
    let config = Config::from_file(&dir.join("config.json")).unwrap();
    let params = Params::load(&dir, &config).unwrap();
    (dir, config, params)
}

pub(crate) fn load(name: &str) -> Model {
    let (_, config, params) = load_parts(name);
    Model::new(config, params)
}

/// max |a - b| / max(1, max |b|)
pub(crate) fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
