//! Training the byte-level BPE tokenizer of the tiny preset on task text with the `tokenizers`
//! trainer. Digits are split one by one (as in Qwen and Llama 3), which makes copying numbers
//! between the question, the code and the answer a per-token job a small model can learn.

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, TokenizerBuilder, TokenizerImpl};

use crate::TaskError;

/// Special tokens (never split, never produced by merges).
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Tags of the chat format, kept whole.
pub const TAG_TOKENS: [&str; 8] = ["<reason>", "</reason>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"];

/// Trains a byte-level BPE of `vocab_size` tokens (added tokens included) on `corpus` and
/// returns its `tokenizer.json` text.
pub fn train_bpe(corpus: &[String], vocab_size: usize) -> Result<String, TaskError> {
    let err = |e: tokenizers::Error| TaskError::Tokenizer(e.to_string());
    let pre = PreTokenizerWrapper::Sequence(Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))]));
    let mut tokenizer: TokenizerImpl<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper> = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(pre))
        .with_post_processor(None)
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())))
        .build()
        .map_err(err)?;
    let added = SPECIAL_TOKENS.len() + TAG_TOKENS.len();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size - TAG_TOKENS.len())
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(SPECIAL_TOKENS.iter().map(|t| AddedToken::from(t.to_string(), true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    assert!(vocab_size > 256 + added, "vocabulary of {vocab_size} is smaller than the byte alphabet plus added tokens");
    tokenizer.train(&mut trainer, corpus.iter()).map_err(err)?;
    tokenizer.add_tokens(&TAG_TOKENS.iter().map(|t| AddedToken::from(t.to_string(), false)).collect::<Vec<_>>());
    tokenizer.to_string(true).map_err(err)
}
