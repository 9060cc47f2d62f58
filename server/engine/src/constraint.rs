//! Constrained decoding: a sequence's output held to a grammar (a JSON schema, a regex, a Lark
//! grammar) by llguidance. Each step the sequence's matcher gives the tokens that keep the
//! output inside the grammar; the sampler sees every other token at minus infinity; the chosen
//! token advances the matcher. End-of-sequence tokens are allowed only where the grammar may
//! end, and a grammar that cannot be extended ends the sequence.
//!
//! The token trie is built from our own tokenizer's vocabulary (its JSON form), not through
//! `toktrie_hf_tokenizers`, which pins an older `tokenizers`.

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokenizers::Tokenizer;

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON schema; the output is compact JSON (no free whitespace), so a model cannot spend
    /// its tokens on spaces.
    JsonSchema(serde_json::Value),
    /// A regular expression (Rust `regex` syntax) the whole output matches.
    Regex(String),
    /// A Lark grammar (llguidance's dialect).
    Lark(String),
}

/// A compiled grammar's state for one sequence.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    grammar: Grammar,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Constraint({:?})", self.grammar)
    }
}

/// Two constraints are equal when they hold to the same grammar (their states may differ).
impl PartialEq for Constraint {
    fn eq(&self, other: &Self) -> bool {
        self.grammar == other.grammar
    }
}

/// The tokens a grammar allows next: one bit per token of the vocabulary (the form a GPU
/// sampler takes in one upload).
#[derive(Debug, Clone)]
pub struct AllowedTokens(llguidance::toktrie::SimpleVob);

impl AllowedTokens {
    /// The mask as bit words: token `t` is allowed when bit `t % 32` of word `t / 32` is set.
    pub fn words(&self) -> &[u32] {
        self.0.as_slice()
    }

    /// Sets every token not allowed to minus infinity in `logits`.
    pub fn apply(&self, logits: &mut [f32]) {
        for (token, logit) in logits.iter_mut().enumerate() {
            if !self.0.is_allowed(token as TokenId) {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
}

impl Constraint {
    /// The tokens the grammar allows next. It depends only on the tokens consumed so far, so
    /// it can be computed while the model computes the logits.
    pub fn allowed(&mut self) -> Result<AllowedTokens, String> {
        self.matcher
            .compute_mask()
            .map(AllowedTokens)
            .map_err(|e| e.to_string())
    }

    /// Sets every token the grammar does not allow next to minus infinity in `logits`.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        self.allowed()?.apply(logits);
        Ok(())
    }

    /// Advances past the chosen `token`; true when the grammar is finished (it accepted an
    /// end-of-sequence token, or nothing can follow).
    pub fn advance(&mut self, token: u32) -> Result<bool, String> {
        self.matcher
            .consume_token(token as TokenId)
            .map_err(|e| e.to_string())?;
        Ok(self.matcher.is_stopped())
    }
}

/// Our tokenizer as llguidance sees it: each token's bytes, and how text becomes tokens.
struct TokenBytes {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for TokenBytes {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(bytes, |text| {
            self.tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

/// Compiles grammars for one model's vocabulary, keeping the most recently used compiled
/// (clients send the same schema request after request).
pub struct Constraints {
    factory: ParserFactory,
    compiled: Mutex<Compiled>,
}

/// Compiled grammars in their initial state, by their text, with when each was last used.
#[derive(Default)]
struct Compiled {
    by_text: HashMap<String, (u64, Matcher)>,
    clock: u64,
    /// Grammars actually compiled (not found here).
    compilations: u64,
}

/// Compiled grammars kept for reuse.
const KEPT_GRAMMARS: usize = 64;

impl Grammar {
    /// A JSON schema grammar: compact JSON, or with `flexible_whitespace` whitespace allowed
    /// between tokens (where the schema does not set llguidance's own options).
    pub fn json(schema: serde_json::Value, flexible_whitespace: bool) -> Self {
        let mut schema = schema;
        if let Some(object) = schema.as_object_mut() {
            object
                .entry("x-guidance")
                .or_insert_with(|| serde_json::json!({"whitespace_flexible": flexible_whitespace}));
        }
        Self::JsonSchema(schema)
    }

    /// The grammar as text, naming it in the cache.
    fn text(&self) -> String {
        match self {
            Self::JsonSchema(schema) => format!("json:{schema}"),
            Self::Regex(regex) => format!("regex:{regex}"),
            Self::Lark(lark) => format!("lark:{lark}"),
        }
    }
}

impl std::fmt::Debug for Constraints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraints")
    }
}

impl Constraints {
    /// For a model whose logits have `vocab_size` entries (the tokenizer may know fewer
    /// tokens: the rest can never be chosen under a grammar) and these end-of-sequence tokens.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        eos_token_ids: &[u32],
        vocab_size: usize,
    ) -> Result<Self, String> {
        let json: serde_json::Value = serde_json::from_str(
            &tokenizer
                .to_string(false)
                .map_err(|e| format!("the tokenizer cannot be read: {e}"))?,
        )
        .map_err(|e| format!("the tokenizer cannot be read: {e}"))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| format!("the tokenizer's vocabulary cannot be used for grammars: {e}"))?;
        words.truncate(vocab_size);
        // Ids the tokenizer does not know: special tokens matching no text.
        while words.len() < vocab_size {
            let mut special = vec![TokTrie::SPECIAL_TOKEN_MARKER];
            special.extend(format!("<[{}]>", words.len()).bytes());
            words.push(special);
        }
        let eos = eos_token_ids
            .iter()
            .copied()
            .filter(|&t| (t as usize) < vocab_size)
            .collect::<Vec<_>>();
        let first_eos = *eos
            .first()
            .ok_or("the model has no end-of-sequence token, which grammars need")?;
        let info = TokRxInfo::new(vocab_size as u32, first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        let env: TokEnv = Arc::new(TokenBytes { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Self {
            factory,
            compiled: Mutex::default(),
        })
    }

    /// Grammars compiled so far (those found already compiled do not count).
    pub fn compilations(&self) -> u64 {
        self.lock().compilations
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Compiled> {
        // The cache holds no invariant a panic could break halfway.
        self.compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `grammar` compiled into a fresh constraint, or why it cannot be (an invalid schema,
    /// regex or grammar, or a schema feature llguidance does not implement).
    pub fn compile(&self, grammar: Grammar) -> Result<Constraint, String> {
        let text = grammar.text();
        {
            let mut compiled = self.lock();
            compiled.clock += 1;
            let now = compiled.clock;
            if let Some((used, matcher)) = compiled.by_text.get_mut(&text) {
                *used = now;
                let matcher = matcher.clone();
                return Ok(Constraint { matcher, grammar });
            }
        }
        let top = match &grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema)),
            Grammar::Regex(regex) => TopLevelGrammar::from_regex(regex),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let parser = self.factory.create_parser(top).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(error);
        }
        let mut compiled = self.lock();
        compiled.compilations += 1;
        if compiled.by_text.len() >= KEPT_GRAMMARS {
            let oldest = compiled
                .by_text
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(text, _)| text.clone());
            if let Some(oldest) = oldest {
                compiled.by_text.remove(&oldest);
            }
        }
        let now = compiled.clock;
        compiled.by_text.insert(text, (now, matcher.clone()));
        Ok(Constraint { matcher, grammar })
    }
}

/// The schema with llguidance's option for JSON without free whitespace (unless the schema
/// sets its own options).
fn compact(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object
            .entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
    }
    schema
}
