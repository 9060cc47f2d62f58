//! The tokenizer a GGUF file describes in its metadata, built as transformers builds it from
//! the same file: byte-level BPE (`tokenizer.ggml.model = gpt2`) with the split its `pre` names,
//! and sentencepiece vocabularies (`llama`: Llama 2, Mistral 7B, Gemma, Phi-3) as BPE with byte
//! fallback and merges recovered from the token scores (or, for Gemma, the token order).

use crate::chat::ChatTemplate;
use crate::config::gguf::Metadata;
use crate::error::{ModelError, Result};
use crate::tokenizer::TokenizerBundle;
use candle_core::quantized::gguf_file::Content;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, SplitDelimiterBehavior, Tokenizer};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex a vocabulary's merges were learned with, by `tokenizer.ggml.pre`; `None` is GPT-2's.
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3" => {
            Some(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// GGUF `token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Builds the tokenizer, EOS ids and chat template from GGUF metadata.
pub fn tokenizer(content: &Content, path: &Path) -> Result<TokenizerBundle> {
    let meta = Metadata::new(content, path);
    let model = meta.string("tokenizer.ggml.model")?;
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let mut tokenizer = match model {
        "gpt2" => byte_level(&meta, &tokens, path)?,
        "llama" => {
            let flavour = match meta.string("general.architecture")? {
                "gemma" | "gemma2" | "gemma3" => Sentencepiece::Gemma,
                "phi3" => Sentencepiece::Phi3,
                _ => Sentencepiece::Llama,
            };
            let scores = meta.floats("tokenizer.ggml.scores")?;
            sentencepiece(&tokens, &scores, flavour, path)?
        }
        other => {
            return Err(ModelError::file(
                path,
                format!("GGUF tokenizer model `{other}` is not supported (supported: gpt2 byte-level BPE, llama sentencepiece); put the model's tokenizer.json beside the GGUF file"),
            ))
        }
    };
    let token_types = meta.integers("tokenizer.ggml.token_type")?;
    let added = |wanted: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, &kind)| kind == wanted)
            .map(|(t, _)| AddedToken::from(t.to_string(), special).normalized(false))
            .collect()
    };
    let tokenizer_error = |e: tokenizers::Error| ModelError::Tokenizer(e.to_string());
    tokenizer
        .add_special_tokens(added(TOKEN_TYPE_CONTROL, true))
        .map_err(tokenizer_error)?;
    tokenizer
        .add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))
        .map_err(tokenizer_error)?;
    // BOS before every prompt tokenized with its special tokens, when the file says so
    // (llama.cpp and transformers assume it for sentencepiece files that do not say).
    let add_bos = meta
        .bool_opt("tokenizer.ggml.add_bos_token")?
        .unwrap_or(model == "llama");
    let bos = meta
        .usize_opt("tokenizer.ggml.bos_token_id")?
        .and_then(|id| tokens.get(id).map(|t| (t.to_string(), id as u32)));
    if let (true, Some((text, id))) = (add_bos, bos) {
        let processor = TemplateProcessing::builder()
            .try_single(format!("{text}:0 $A:0"))
            .and_then(|b| b.try_pair(format!("{text}:0 $A:0 {text}:1 $B:1")))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?
            .special_tokens(vec![(text, id)])
            .build()
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        tokenizer.with_post_processor(Some(processor));
    }
    bundle(&meta, &tokens, tokenizer)
}

/// Byte-level BPE with the file's merges and the split its `tokenizer.ggml.pre` names.
fn byte_level(meta: &Metadata<'_>, tokens: &[&str], path: &Path) -> Result<Tokenizer> {
    let merges = meta
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| ModelError::file(path, format!("malformed merge `{m}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), id as u32))
        .collect();
    let pre = meta.string_opt("tokenizer.ggml.pre")?.unwrap_or("default");
    let split = pre_tokenizer_split(pre);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(split == Some(LLAMA3_SPLIT))
        .build()
        .map_err(|e| ModelError::file(path, format!("GGUF vocabulary is inconsistent: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    match split {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])));
        }
        None => {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// The EOS ids, BOS and chat template the metadata names, around `tokenizer`.
fn bundle(meta: &Metadata<'_>, tokens: &[&str], tokenizer: Tokenizer) -> Result<TokenizerBundle> {
    let token_text = |key: &str| -> Result<Option<(u32, String)>> {
        Ok(meta
            .usize_opt(key)?
            .and_then(|id| tokens.get(id).map(|t| (id as u32, t.to_string()))))
    };
    let bos = token_text("tokenizer.ggml.bos_token_id")?;
    let eos = token_text("tokenizer.ggml.eos_token_id")?;
    let mut eos_token_ids: Vec<u32> = eos.iter().map(|(id, _)| *id).collect();
    eos_token_ids.extend(
        meta.usize_opt("tokenizer.ggml.eot_token_id")?
            .map(|id| id as u32),
    );
    eos_token_ids.sort_unstable();
    eos_token_ids.dedup();
    let chat_template = meta
        .string_opt("tokenizer.chat_template")?
        .map(|source| {
            ChatTemplate::new(
                source.to_string(),
                bos.as_ref().map(|(_, t)| t.clone()).unwrap_or_default(),
                eos.as_ref().map(|(_, t)| t.clone()).unwrap_or_default(),
            )
        })
        .transpose()?;
    Ok(TokenizerBundle {
        tokenizer,
        chat_template,
        eos_token_ids,
        bos_token_id: bos.map(|(id, _)| id),
    })
}

/// How transformers shapes a sentencepiece vocabulary from a GGUF file, by architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sentencepiece {
    /// `LlamaTokenizer`: `▁` prepended to the first word and for every space (Metaspace); the
    /// decoder drops the one leading space that adds.
    Llama,
    /// `GemmaTokenizer`: spaces become `▁`, nothing prepended; whitespace-only tokens the file
    /// spells with spaces are spelled with `▁`; merges follow the file's token order (Gemma's
    /// scores do not).
    Gemma,
    /// Phi-3: `▁` prepended to the whole text and for every space (a normalizer).
    Phi3,
}

/// A sentencepiece vocabulary as BPE with byte fallback, merges recovered from the vocabulary.
fn sentencepiece(
    tokens: &[&str],
    scores: &[f64],
    flavour: Sentencepiece,
    path: &Path,
) -> Result<Tokenizer> {
    let tokens: Vec<String> = tokens
        .iter()
        .map(|t| match flavour {
            Sentencepiece::Gemma if t.contains(' ') && t.trim().is_empty() => {
                "\u{2581}".repeat(t.chars().count())
            }
            _ => t.to_string(),
        })
        .collect();
    // Later duplicates win, at the place of the first (as a Python dict built from the list).
    let mut vocab = Vocab::default();
    let mut order: Vec<&str> = Vec::new();
    let mut priority: HashMap<&str, f64> = HashMap::new();
    for (id, token) in tokens.iter().enumerate() {
        if vocab.insert(token.clone(), id as u32).is_none() {
            order.push(token);
        }
        let score = match flavour {
            Sentencepiece::Gemma => -(id as f64),
            _ => scores.get(id).copied().unwrap_or(0.0),
        };
        priority.insert(token, score);
    }
    let merges = recovered_merges(&vocab, &order, &priority);
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if flavour == Sentencepiece::Gemma {
        bpe = bpe.unk_token("<unk>".into());
    }
    let bpe = bpe
        .build()
        .map_err(|e| ModelError::file(path, format!("GGUF vocabulary is inconsistent: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| ModelError::Tokenizer(e.to_string()))
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        replace("\u{2581}", " ")?.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    match flavour {
        Sentencepiece::Llama => {
            tokenizer.with_pre_tokenizer(Some(Metaspace::new(
                '\u{2581}',
                PrependScheme::First,
                false,
            )));
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        Sentencepiece::Gemma => {
            tokenizer
                .with_normalizer(Some(replace(" ", "\u{2581}")?))
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            tokenizer.with_pre_tokenizer(Some(
                Split::new(
                    SplitPattern::String(" ".into()),
                    SplitDelimiterBehavior::MergedWithPrevious,
                    false,
                )
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?,
            ));
        }
        Sentencepiece::Phi3 => {
            tokenizer
                .with_normalizer(Some(NormalizerSequence::new(vec![
                    Prepend::new("\u{2581}".into()).into(),
                    replace(" ", "\u{2581}")?.into(),
                ])))
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            decoders.push(Strip::new(' ', 1, 0).into());
        }
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// The merges a BPE vocabulary implies: every split of a token into two tokens, best first by
/// the token's priority (its score), ties to the longer left then right part; splits of one
/// token in id order. (transformers' `generate_merges`, so the same merges.)
fn recovered_merges(vocab: &Vocab, order: &[&str], priority: &HashMap<&str, f64>) -> Merges {
    struct Candidate {
        left: String,
        right: String,
        priority: f64,
        left_len: usize,
        right_len: usize,
    }
    let mut candidates: Vec<Candidate> = Vec::new();
    for token in order {
        let score = priority.get(token).copied().unwrap_or(0.0);
        let bounds: Vec<usize> = token.char_indices().map(|(i, _)| i).skip(1).collect();
        let mut local: Vec<Candidate> = bounds
            .iter()
            .filter_map(|&at| {
                let (left, right) = token.split_at(at);
                (vocab.contains_key(left) && vocab.contains_key(right)).then(|| Candidate {
                    left: left.to_string(),
                    right: right.to_string(),
                    priority: score,
                    left_len: left.chars().count(),
                    right_len: right.chars().count(),
                })
            })
            .collect();
        local.sort_by_key(|c| (vocab[&c.left], vocab[&c.right]));
        candidates.extend(local);
    }
    // Stable, descending: equal keys keep their order, as Python's `sorted(reverse=True)`.
    candidates.sort_by(|a, b| {
        b.priority
            .total_cmp(&a.priority)
            .then(b.left_len.cmp(&a.left_len))
            .then(b.right_len.cmp(&a.right_len))
    });
    candidates.into_iter().map(|c| (c.left, c.right)).collect()
}
