//! `Config`: a serde mirror of Hugging Face `config.json` for the Qwen2, Qwen3 and Llama
//! families, tolerant of the fields current transformers writes.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ModelError;

/// The architecture family, from `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama, SmolLM2: no biases, no q/k norms.
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k, v.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k, no biases.
    Qwen3,
}

/// A token id field that may be null, a number or a list (`eos_token_id: [1, 2]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// `null` or absent.
    #[default]
    None,
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// All ids.
    pub fn ids(&self) -> Vec<u32> {
        match self {
            TokenIds::None => Vec::new(),
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The fields of `config.json` this crate reads; unknown fields are kept in `extra` and
/// written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// `llama`, `qwen2` or `qwen3`.
    pub model_type: Family,
    /// e.g. `["Qwen2ForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width D.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); defaults to the query heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to hidden_size / heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (transformers < 5); see [`Config::rope_theta`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Only `null` or `{"rope_type": "default"}` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// transformers >= 5: `{"rope_type": "default", "rope_theta": ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// Whether `lm_head` shares the embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama: biases on q, k, v, o (rare). Qwen2 always has q, k, v biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: biases in the MLP (rare; unsupported when true).
    #[serde(default)]
    pub mlp_bias: bool,
    /// `silu` is the only supported activation.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Longest position the model was trained for.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence id(s).
    #[serde(default)]
    pub bos_token_id: TokenIds,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: TokenIds,
    /// Everything else (`dtype`/`torch_dtype`, `layer_types`, `use_cache`, ...), kept verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_max_pos() -> usize {
    32_768
}

impl Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses and validates the text of a `config.json`; `origin` names it in errors (a path,
    /// or what a page was handed).
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ModelError> {
        let config: Config = serde_json::from_str(text).map_err(|e| ModelError::Config { path: origin.to_string(), message: e.to_string() })?;
        config.validate().map_err(|message| ModelError::Config { path: origin.to_string(), message })?;
        Ok(config)
    }

    /// Checks what this crate can run.
    pub fn validate(&self) -> Result<(), String> {
        for scaling in [&self.rope_scaling, &self.rope_parameters].into_iter().flatten() {
            if scaling.is_null() {
                continue;
            }
            let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str).unwrap_or("default");
            if kind != "default" {
                return Err(format!("rope scaling of type {kind:?} is not supported (only plain RoPE with rope_theta)"));
            }
        }
        if self.extra.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err("sliding-window attention (use_sliding_window = true) is not supported".into());
        }
        if let Some(types) = self.extra.get("layer_types").and_then(Value::as_array)
            && let Some(other) = types.iter().filter_map(Value::as_str).find(|t| *t != "full_attention")
        {
            return Err(format!("layer type {other:?} is not supported (only full_attention)"));
        }
        if self.hidden_act != "silu" {
            return Err(format!("hidden_act {:?} is not supported (only silu)", self.hidden_act));
        }
        if self.mlp_bias {
            return Err("mlp_bias = true is not supported".into());
        }
        if self.num_attention_heads == 0 || !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!("num_attention_heads {} is not a multiple of num_key_value_heads {}", self.num_attention_heads, self.kv_heads()));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim()));
        }
        for (name, v) in [("vocab_size", self.vocab_size), ("hidden_size", self.hidden_size), ("intermediate_size", self.intermediate_size), ("num_hidden_layers", self.num_hidden_layers)] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        Ok(())
    }

    /// The RoPE base: `rope_parameters.rope_theta`, else `rope_theta`, else 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or(self.rope_theta).unwrap_or(10_000.0)
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q, k, v projections carry biases.
    pub fn qkv_bias(&self) -> bool {
        self.model_type == Family::Qwen2 || self.attention_bias
    }

    /// Whether the output projection carries a bias.
    pub fn o_bias(&self) -> bool {
        self.model_type == Family::Llama && self.attention_bias
    }

    /// Whether q and k get per-head RMSNorm (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.model_type == Family::Qwen3
    }

    /// Every parameter as (HF name, shape), in a fixed order.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (hq, hk, hd) = (self.num_attention_heads, self.kv_heads(), self.head_dim());
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
        for l in 0..self.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            out.push((p("input_layernorm.weight"), vec![d]));
            out.push((p("self_attn.q_proj.weight"), vec![hq * hd, d]));
            out.push((p("self_attn.k_proj.weight"), vec![hk * hd, d]));
            out.push((p("self_attn.v_proj.weight"), vec![hk * hd, d]));
            if self.qkv_bias() {
                out.push((p("self_attn.q_proj.bias"), vec![hq * hd]));
                out.push((p("self_attn.k_proj.bias"), vec![hk * hd]));
                out.push((p("self_attn.v_proj.bias"), vec![hk * hd]));
            }
            if self.qk_norm() {
                out.push((p("self_attn.q_norm.weight"), vec![hd]));
                out.push((p("self_attn.k_norm.weight"), vec![hd]));
            }
            out.push((p("self_attn.o_proj.weight"), vec![d, hq * hd]));
            if self.o_bias() {
                out.push((p("self_attn.o_proj.bias"), vec![d]));
            }
            out.push((p("post_attention_layernorm.weight"), vec![d]));
            out.push((p("mlp.gate_proj.weight"), vec![f, d]));
            out.push((p("mlp.up_proj.weight"), vec![f, d]));
            out.push((p("mlp.down_proj.weight"), vec![d, f]));
        }
        out.push(("model.norm.weight".to_string(), vec![d]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, d]));
        }
        out
    }
}
