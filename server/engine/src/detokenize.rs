//! `IncrementalDecoder`: text deltas from a growing list of token ids. A delta is released
//! only when the text decoded so far ends on a whole character, so deltas never split a UTF-8
//! character (byte-level tokenizers emit the bytes of one character across several tokens);
//! the concatenation of the deltas plus [`IncrementalDecoder::finish`] equals decoding all
//! tokens at once.
//!
//! Cost: each step decodes only the tokens since the last released delta (plus a few before
//! them, for context-dependent decoders such as SentencePiece's leading space).

use tokenizers::Tokenizer;

#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    /// Start of the window decoded each step: a few tokens before `released`.
    prefix: usize,
    /// Tokens whose text has been released.
    released: usize,
    /// Text released so far (to check the final flush).
    text: String,
}

/// Tokens of context decoded before the unreleased ones.
const CONTEXT: usize = 5;

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The new text that `tokens` (all generated so far) adds, possibly empty.
    pub fn step(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> String {
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
        let before = decode(&tokens[self.prefix..self.released]);
        let now = decode(&tokens[self.prefix..]);
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') || !now.starts_with(&before) {
            return String::new();
        }
        let delta = now[before.len()..].to_string();
        self.released = tokens.len();
        self.prefix = self.released.saturating_sub(CONTEXT);
        self.text.push_str(&delta);
        delta
    }

    /// Whatever decoding all `tokens` at once adds to the released text.
    pub fn finish(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> String {
        let full = tokenizer.decode(tokens, true).unwrap_or_default();
        let rest = full
            .strip_prefix(self.text.as_str())
            .unwrap_or_default()
            .to_string();
        self.text.push_str(&rest);
        self.released = tokens.len();
        rest
    }
}
