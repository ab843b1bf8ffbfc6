//! Parameters by Hugging Face name, loaded from and saved to safetensors (f32, f16 or bf16 in;
//! f32 master weights kept; f32 out).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::{Config, ModelError};

/// Every parameter of a model as f32, in [`Config::parameter_shapes`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// (HF name, shape) per tensor.
    pub specs: Vec<(String, Vec<usize>)>,
    /// Values per tensor, row-major.
    pub data: Vec<Vec<f32>>,
    index: HashMap<String, usize>,
}

impl Params {
    /// All zeros with the shapes `config` implies (gradients, optimizer moments).
    pub fn zeros(config: &Config) -> Self {
        let specs = config.parameter_shapes();
        let data = specs.iter().map(|(_, s)| vec![0.0; s.iter().product()]).collect();
        Self::from_parts(specs, data)
    }

    fn from_parts(specs: Vec<(String, Vec<usize>)>, data: Vec<Vec<f32>>) -> Self {
        let index = specs.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        Params { specs, data, index }
    }

    /// Zeros with the same shapes as `self`.
    pub fn zeros_like(&self) -> Self {
        Self::from_parts(self.specs.clone(), self.data.iter().map(|d| vec![0.0; d.len()]).collect())
    }

    /// Position of `name` in `specs`/`data`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.index_of(name).map(|i| self.data[i].as_slice())
    }

    /// Random normal weights (std 0.02, norms at 1), seeded: models for tests and benchmarks.
    pub fn random(config: &Config, seed: u64) -> Self {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
        let mut p = Self::zeros(config);
        for (i, (name, _)) in p.specs.iter().enumerate() {
            let norm = name.ends_with("norm.weight") || name.ends_with("layernorm.weight");
            for x in p.data[i].iter_mut() {
                *x = if norm { 1.0 } else { normal.sample(&mut rng) };
            }
        }
        p
    }

    /// Zeroes every tensor.
    pub fn fill_zero(&mut self) {
        for d in &mut self.data {
            d.fill(0.0);
        }
    }

    /// Loads `model.safetensors` or the shards listed in `model.safetensors.index.json` from
    /// `dir`, checking every tensor `config` needs by name and shape.
    pub fn load(dir: &Path, config: &Config) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Weights { file: index.display().to_string(), message: e.to_string() })?;
            let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Weights { file: index.display().to_string(), message: "no weight_map object".into() })?;
            let mut shards: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
            shards.sort();
            shards.dedup();
            shards
        } else {
            return Err(ModelError::Weights { file: dir.display().to_string(), message: "neither model.safetensors nor model.safetensors.index.json found".into() });
        };
        let mut contents = Vec::with_capacity(files.len());
        for file in &files {
            contents.push((file.display().to_string(), std::fs::read(file).map_err(|e| ModelError::io(file, e))?));
        }
        let shards: Vec<(&str, &[u8])> = contents.iter().map(|(name, bytes)| (name.as_str(), bytes.as_slice())).collect();
        Self::from_safetensors(&shards, config)
    }

    /// The parameters `config` needs from safetensors files already in memory, (name for
    /// errors, bytes) each, checked by name and shape as [`Params::load`] checks them.
    pub fn from_safetensors(shards: &[(&str, &[u8])], config: &Config) -> Result<Self, ModelError> {
        let specs = config.parameter_shapes();
        let wanted: HashMap<&str, &Vec<usize>> = specs.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let mut found: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for &(file, bytes) in shards {
            let tensors = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Weights { file: file.to_string(), message: format!("not a valid safetensors file (truncated or corrupt?): {e}") })?;
            // Sorted, so the first error reported is the same on every run.
            let mut all = tensors.tensors();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, view) in all {
                // Buffers some checkpoints carry; they are recomputed here.
                if name.ends_with("rotary_emb.inv_freq") {
                    continue;
                }
                if config.tie_word_embeddings && name == "lm_head.weight" {
                    continue;
                }
                let Some(shape) = wanted.get(name.as_str()) else {
                    return Err(ModelError::Weights { file: file.to_string(), message: format!("unexpected tensor {name} (shape {:?}) for this config", view.shape()) });
                };
                if view.shape() != shape.as_slice() {
                    return Err(ModelError::Weights { file: file.to_string(), message: format!("tensor {name} has shape {:?}, config needs {:?}", view.shape(), shape) });
                }
                let values = to_f32(view.dtype(), view.data()).map_err(|m| ModelError::Weights { file: file.to_string(), message: format!("tensor {name}: {m}") })?;
                found.insert(name, values);
            }
        }
        let mut data = Vec::with_capacity(specs.len());
        for (name, _) in &specs {
            let values = found.remove(name).ok_or_else(|| ModelError::Weights { file: shards.first().map_or("(no file)", |s| s.0).to_string(), message: format!("missing tensor {name}") })?;
            data.push(values);
        }
        Ok(Self::from_parts(specs, data))
    }

    /// Writes `model.safetensors` (f32, HF names) into `dir`, through a temporary file renamed
    /// into place so a crash never leaves a half-written model.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let bytes = self.to_safetensors().map_err(|message| ModelError::Weights { file: dir.display().to_string(), message })?;
        crate::write_atomic(&dir.join("model.safetensors"), &bytes)
    }

    /// The bytes of a `model.safetensors` holding these parameters (f32, HF names).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, String> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .specs
            .iter()
            .zip(&self.data)
            .map(|((name, shape), data)| {
                let bytes: &[u8] = bytemuck::cast_slice(data);
                (name.clone(), safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).expect("shape matches data"))
            })
            .collect();
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
    }
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    match dtype {
        Dtype::F32 => Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
        Dtype::F16 => Ok(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
        Dtype::BF16 => Ok(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
        other => Err(format!("dtype {other:?} is not supported (f32, f16, bf16)")),
    }
}
