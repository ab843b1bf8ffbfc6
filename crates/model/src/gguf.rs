//! GGUF v3 (llama.cpp) import: the reader (metadata, tensor infos, alignment), dequantization
//! of F32, F16, BF16, Q8_0, Q4_0 and Q4_1 to f32, and the conversion of a Llama-architecture
//! file into an HF folder: `config.json`, `model.safetensors` (llama.cpp names mapped to HF
//! names, the Q/K row permutation of llama.cpp's converter undone), `tokenizer.json` rebuilt
//! from the GGUF vocabulary and merges, and the chat template.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{Config, ModelError, Params};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// string.
    Str(String),
    /// array of any of these.
    Array(Vec<Value>),
}

impl Value {
    fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// ggml tensor types this reader dequantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: f16 scale, 32 x i8.
    Q8_0,
    /// Blocks of 32: f16 scale, 16 bytes of 4-bit values offset by 8.
    Q4_0,
    /// Blocks of 32: f16 scale, f16 minimum, 16 bytes of 4-bit values.
    Q4_1,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }

    /// Bytes taken by `n` elements.
    fn bytes(self, n: usize) -> usize {
        match self {
            GgmlType::F32 => 4 * n,
            GgmlType::F16 | GgmlType::Bf16 => 2 * n,
            GgmlType::Q8_0 => n / 32 * 34,
            GgmlType::Q4_0 => n / 32 * 18,
            GgmlType::Q4_1 => n / 32 * 20,
        }
    }
}

fn type_name(id: u32) -> String {
    let names = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
        "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    names.get(id as usize).map_or(format!("type {id}"), |n| n.to_string())
}

/// One tensor's header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// llama.cpp name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, fastest-varying first (ggml order: `[in, out]` for a torch `[out, in]`).
    pub dims: Vec<u64>,
    /// Raw ggml type id.
    pub type_id: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Elements.
    pub fn elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
    /// The shape in torch order (slowest first).
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A GGUF file held in memory.
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor headers in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    bytes: Vec<u8>,
    path: String,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ModelError> {
        if self.pos + n > self.bytes.len() {
            return Err(ModelError::Weights { file: self.path.into(), message: format!("truncated GGUF header: need {n} bytes at offset {}, file has {}", self.pos, self.bytes.len()) });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, ModelError> {
        let n = self.u64()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| ModelError::Weights { file: self.path.into(), message: format!("GGUF string at offset {} is not UTF-8", self.pos - n) })
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, ModelError> {
        Ok(match ty {
            0 => Value::U64(u64::from(self.take(1)?[0])),
            1 => Value::I64(i64::from(self.take(1)?[0] as i8)),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.take(2)?.try_into().unwrap()))),
            4 => Value::U64(u64::from(self.u32()?)),
            5 => Value::I64(i64::from(self.u32()? as i32)),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.take(4)?.try_into().unwrap()))),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 if depth == 0 => {
                let elem = self.u32()?;
                let n = self.u64()? as usize;
                if n > self.bytes.len() {
                    return Err(ModelError::Weights { file: self.path.into(), message: format!("GGUF array of {n} elements cannot fit the file") });
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            other => return Err(ModelError::Weights { file: self.path.into(), message: format!("unknown GGUF metadata type {other}") }),
        })
    }
}

impl GgufFile {
    /// Reads and checks a GGUF file: header, metadata, tensor infos, and that every tensor's
    /// data lies inside the file.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::parse(bytes, &path.display().to_string())
    }

    /// Parses GGUF bytes (`name` labels errors).
    pub fn parse(bytes: Vec<u8>, name: &str) -> Result<Self, ModelError> {
        let err = |message: String| ModelError::Weights { file: name.into(), message };
        let mut c = Cursor { bytes: &bytes, pos: 0, path: name };
        if c.take(4)? != b"GGUF" {
            return Err(err("not a GGUF file (bad magic)".into()));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(err(format!("GGUF version {version} is not supported (2 or 3)")));
        }
        let tensor_count = c.u64()? as usize;
        let kv_count = c.u64()? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string()?;
            let ty = c.u32()?;
            metadata.insert(key, c.value(ty, 0)?);
        }
        let mut tensors = Vec::with_capacity(tensor_count.min(1 << 20));
        for _ in 0..tensor_count {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > 4 {
                return Err(err(format!("tensor {name} has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| c.u64()).collect::<Result<Vec<_>, _>>()?;
            let type_id = c.u32()?;
            let offset = c.u64()?;
            tensors.push(TensorInfo { name, dims, type_id, offset });
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32) as usize;
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(err(format!("general.alignment {alignment} is not a power of two")));
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        for t in &tensors {
            if let Some(ty) = GgmlType::from_id(t.type_id) {
                let end = data_start + t.offset as usize + ty.bytes(t.elements());
                if end > bytes.len() {
                    return Err(err(format!("truncated: tensor {} ends at byte {end}, the file has {}", t.name, bytes.len())));
                }
            }
        }
        Ok(GgufFile { version, metadata, tensors, data_start, bytes, path: name.into() })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor's values as f32, in torch order (slowest dimension first).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, ModelError> {
        let ty = GgmlType::from_id(t.type_id).ok_or_else(|| ModelError::Weights {
            file: self.path.clone(),
            message: format!("tensor {}: quantization {} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1)", t.name, type_name(t.type_id)),
        })?;
        let n = t.elements();
        if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16) && !n.is_multiple_of(32) {
            return Err(ModelError::Weights { file: self.path.clone(), message: format!("tensor {}: {n} elements is not a whole number of 32-element blocks", t.name) });
        }
        let start = self.data_start + t.offset as usize;
        Ok(dequantize(ty, &self.bytes[start..start + ty.bytes(n)], n))
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantizes `n` elements of type `ty` (ggml's reference formulas).
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(f16)),
        GgmlType::Bf16 => out.extend(data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Q8_0 => {
            for block in data.chunks_exact(34) {
                let d = f16(&block[..2]);
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (header, offset) = if ty == GgmlType::Q4_0 { (2, -8.0f32) } else { (4, 0.0) };
            for block in data.chunks_exact(header + 16) {
                let d = f16(&block[..2]);
                let m = if ty == GgmlType::Q4_1 { f16(&block[2..4]) } else { 0.0 };
                let qs = &block[header..];
                // Low nibbles are elements 0..16, high nibbles 16..32.
                let value = |q: u8| if ty == GgmlType::Q4_0 { (f32::from(q) + offset) * d } else { f32::from(q) * d + m };
                out.extend(qs.iter().map(|&b| value(b & 0x0f)));
                out.extend(qs.iter().map(|&b| value(b >> 4)));
            }
        }
    }
    out
}

/// Undoes llama.cpp's `permute` of Q/K projection rows. Its converter stores, per head, HF's
/// rotate-half row order (`[2, half]`: first halves, then second halves) as interleaved pairs
/// (`[half, 2]`): HF row `j * half + i` of a head sits at row `i * 2 + j`. This moves them back.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                // HF row h*per_head + j*half + i was stored at h*per_head + i*2 + j.
                let hf = h * per_head + j * half + i;
                let gg = h * per_head + i * 2 + j;
                out[hf * cols..(hf + 1) * cols].copy_from_slice(&w[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    out
}

fn hf_name(gguf: &str) -> Option<String> {
    if let Some(rest) = gguf.strip_prefix("blk.") {
        let (layer, part) = rest.split_once('.')?;
        let mapped = match part {
            "attn_norm.weight" => "input_layernorm.weight",
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_k.weight" => "self_attn.k_proj.weight",
            "attn_v.weight" => "self_attn.v_proj.weight",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            _ => return None,
        };
        return Some(format!("model.layers.{layer}.{mapped}"));
    }
    Some(
        match gguf {
            "token_embd.weight" => "model.embed_tokens.weight",
            "output_norm.weight" => "model.norm.weight",
            "output.weight" => "lm_head.weight",
            _ => return None,
        }
        .to_string(),
    )
}

/// The HF config of a Llama-architecture GGUF.
pub fn config_of(file: &GgufFile) -> Result<Config, ModelError> {
    let err = |message: String| ModelError::Config { path: file.path.clone(), message };
    let arch = file.get("general.architecture").and_then(Value::as_str).unwrap_or("?");
    if arch != "llama" {
        return Err(err(format!("architecture {arch:?} is not supported (llama)")));
    }
    let u = |k: &str| file.get(&format!("llama.{k}")).and_then(Value::as_u64).ok_or_else(|| err(format!("metadata llama.{k} is missing")));
    let f = |k: &str| file.get(&format!("llama.{k}")).and_then(Value::as_f64).ok_or_else(|| err(format!("metadata llama.{k} is missing")));
    let vocab = match file.get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) => t.len(),
        _ => u("vocab_size")? as usize,
    };
    let heads = u("attention.head_count")?;
    let hidden = u("embedding_length")?;
    let tied = !file.tensors.iter().any(|t| t.name == "output.weight");
    let token = |k: &str| file.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64);
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": u("feed_forward_length")?,
        "num_hidden_layers": u("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": file.get("llama.attention.head_count_kv").and_then(Value::as_u64).unwrap_or(heads),
        "head_dim": file.get("llama.rope.dimension_count").and_then(Value::as_u64).unwrap_or(hidden / heads),
        "hidden_act": "silu",
        // Stored as f32; written back as its shortest decimal (1e-5, not 9.99999974e-6).
        "rms_norm_eps": format!("{}", f("attention.layer_norm_rms_epsilon")? as f32).parse::<f64>().unwrap_or(1e-5),
        "rope_theta": file.get("llama.rope.freq_base").and_then(Value::as_f64).unwrap_or(10000.0),
        "max_position_embeddings": u("context_length")?,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": token("bos_token_id"),
        "eos_token_id": token("eos_token_id"),
        "torch_dtype": "float32",
    });
    let config: Config = serde_json::from_value(json).map_err(|e| err(e.to_string()))?;
    config.validate().map_err(err)?;
    Ok(config)
}

/// Every tensor dequantized, renamed and un-permuted into HF parameters.
pub fn params_of(file: &GgufFile, config: &Config) -> Result<Params, ModelError> {
    let mut params = Params::zeros(config);
    let mut seen = vec![false; params.data.len()];
    for t in &file.tensors {
        let name = hf_name(&t.name).ok_or_else(|| ModelError::Weights { file: file.path.clone(), message: format!("tensor {} has no Llama counterpart", t.name) })?;
        let index = params.index_of(&name).ok_or_else(|| ModelError::Weights { file: file.path.clone(), message: format!("tensor {} ({name}) is not part of this config", t.name) })?;
        let expected = &params.specs[index].1;
        if &t.torch_shape() != expected {
            return Err(ModelError::Weights { file: file.path.clone(), message: format!("tensor {}: shape {:?}, the config needs {expected:?}", t.name, t.torch_shape()) });
        }
        let mut values = file.dequantize(t)?;
        let (rows, cols) = (expected[0], expected.get(1).copied().unwrap_or(1));
        if name.ends_with("q_proj.weight") {
            values = unpermute_rows(&values, rows, cols, config.num_attention_heads);
        } else if name.ends_with("k_proj.weight") {
            values = unpermute_rows(&values, rows, cols, config.kv_heads());
        }
        params.data[index] = values;
        seen[index] = true;
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(ModelError::Weights { file: file.path.clone(), message: format!("no tensor for {}", params.specs[i].0) });
    }
    Ok(params)
}

/// `tokenizer.json` text for the file's GPT-2-style BPE vocabulary (tokens, merges, token
/// types; control tokens become special added tokens, user-defined ones plain added tokens).
pub fn tokenizer_json(file: &GgufFile) -> Result<String, ModelError> {
    let err = |message: String| ModelError::Tokenizer { path: file.path.clone(), message };
    let model = file.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("?");
    if model != "gpt2" {
        return Err(err(format!("tokenizer model {model:?} is not supported (gpt2 byte-level BPE)")));
    }
    let strings = |key: &str| -> Result<Vec<String>, ModelError> {
        match file.get(key) {
            Some(Value::Array(items)) => items.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| err(format!("{key} holds a non-string")))).collect(),
            _ => Err(err(format!("metadata {key} is missing"))),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) => items.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let pre = file.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("gpt2");
    // llama.cpp's "smollm" pre-tokenizer splits digits one by one before the GPT-2 regex;
    // "gpt2" does not.
    if !matches!(pre, "smollm" | "gpt2" | "default") {
        return Err(err(format!("pre-tokenizer {pre:?} is not supported (smollm, gpt2)")));
    }
    let digits = pre == "smollm";
    let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i.into())).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": types[i] == 4, "special": types[i] == 3}))
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = if digits { serde_json::json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]}) } else { byte_level.clone() };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    Ok(serde_json::to_string(&json).expect("json"))
}

/// Converts a GGUF file into an HF folder `out`: config.json, model.safetensors (f32),
/// tokenizer.json, and chat_template.jinja when the file has one.
pub fn import(gguf: &Path, out: &Path) -> Result<Config, ModelError> {
    let file = GgufFile::open(gguf)?;
    let config = config_of(&file)?;
    let params = params_of(&file, &config)?;
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    params.save(out)?;
    crate::write_atomic(&out.join("tokenizer.json"), tokenizer_json(&file)?.as_bytes())?;
    if let Some(template) = file.get("tokenizer.chat_template").and_then(Value::as_str) {
        crate::write_atomic(&out.join("chat_template.jinja"), template.as_bytes())?;
    }
    let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Config { path: out.display().to_string(), message: e.to_string() })?;
    crate::write_atomic(&out.join("config.json"), text.as_bytes())?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, half, cols).swapaxes(1, 2).reshape(rows, cols).
        let (heads, per_head, cols) = (3, 4, 2);
        let rows = heads * per_head;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0.0; hf.len()];
        for h in 0..heads {
            for a in 0..2 {
                for i in 0..per_head / 2 {
                    let src = h * per_head + a * (per_head / 2) + i;
                    let dst = h * per_head + i * 2 + a;
                    permuted[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, rows, cols, heads), hf);
    }

    #[test]
    fn q4_1_and_q8_0_blocks_by_hand() {
        // Q4_1: d = 0.5, m = -1, nibbles: byte k = (k % 16) | ((15 - k % 16) << 4).
        let mut block = Vec::new();
        block.extend(half::f16::from_f32(0.5).to_le_bytes());
        block.extend(half::f16::from_f32(-1.0).to_le_bytes());
        block.extend((0..16u8).map(|k| k | ((15 - k) << 4)));
        let v = dequantize(GgmlType::Q4_1, &block, 32);
        assert_eq!(v[0], -1.0);
        assert_eq!(v[15], 15.0 * 0.5 - 1.0);
        assert_eq!(v[16], 15.0 * 0.5 - 1.0);
        assert_eq!(v[31], -1.0);
        let mut q8 = half::f16::from_f32(0.25).to_le_bytes().to_vec();
        q8.extend((0..32).map(|k| (k as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &q8, 32);
        assert_eq!((v[0], v[16], v[31]), (-4.0, 0.0, 3.75));
    }

    #[test]
    fn truncated_and_foreign_files_are_named() {
        assert!(GgufFile::parse(b"GGML....".to_vec(), "x.gguf").err().unwrap().to_string().contains("bad magic"));
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        let e = GgufFile::parse(b, "t.gguf").err().unwrap().to_string();
        assert!(e.contains("t.gguf") && e.contains("truncated"), "{e}");
    }
}
