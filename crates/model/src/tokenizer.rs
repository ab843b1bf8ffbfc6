//! The tokenizer of a model folder, `tokenizer.json`, through the `tokenizers` crate.

use std::path::Path;

use crate::ModelError;

/// Encodes text to ids and back, exactly as HF `tokenizers` does with the same file.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer { path: path.display().to_string(), message: e.to_string() })?;
        Ok(Tokenizer { inner })
    }

    /// Parses the text of a `tokenizer.json` (`origin` names it in errors).
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ModelError> {
        let inner = text.parse::<tokenizers::Tokenizer>().map_err(|e| ModelError::Tokenizer { path: origin.to_string(), message: e.to_string() })?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) map to their ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    /// The id of a token given verbatim (e.g. `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
