//! Constrained decoding: a sequence's output held to a grammar (a JSON schema, a regex, a Lark
//! grammar) by llguidance. Each step the sequence's matcher gives the tokens that keep the
//! output inside the grammar; the sampler sees every other token at minus infinity; the chosen
//! token advances the matcher. End-of-sequence tokens are allowed only where the grammar may
//! end, and a grammar that cannot be extended ends the sequence.
//!
//! The token trie is built from our own tokenizer's vocabulary (its JSON form), not through
//! `toktrie_hf_tokenizers`, which pins an older `tokenizers`.

use lantern_models::output_schema::{prepare_output_schema, Whitespace};
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
    /// A Lark grammar (llguidance's dialect), with the JSON schemas it embeds through `%json`:
    /// each is compiled and dry-run on its own, since a dead one would only show once
    /// generation reached it.
    Lark {
        grammar: String,
        json_schemas: Vec<serde_json::Value>,
    },
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
    /// between tokens (where the schema does not set llguidance's own options); objects that
    /// list their properties are closed (see [`prepare_output_schema`]).
    pub fn json(schema: serde_json::Value, flexible_whitespace: bool) -> Self {
        let whitespace = if flexible_whitespace {
            Whitespace::Flexible
        } else {
            Whitespace::Compact
        };
        Self::JsonSchema(prepare_output_schema(&schema, whitespace))
    }

    /// The grammar as text, naming it in the cache.
    fn text(&self) -> String {
        match self {
            Self::JsonSchema(schema) => format!("json:{schema}"),
            Self::Regex(regex) => format!("regex:{regex}"),
            Self::Lark { grammar, .. } => format!("lark:{grammar}"),
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
    /// regex or grammar, a schema feature llguidance does not implement, a grammar too large
    /// for its lexer, one that allows no token). Compilation is complete: the lexer is built,
    /// and a copy is walked through its first tokens ([`dry_run`]), so what fails there fails
    /// here and not in a running request.
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
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(
                prepare_output_schema(schema, Whitespace::Compact),
            ),
            Grammar::Regex(regex) => TopLevelGrammar::from_regex(regex),
            Grammar::Lark {
                grammar,
                json_schemas,
            } => {
                for schema in json_schemas {
                    self.compile(Grammar::json(schema.clone(), false))?;
                }
                TopLevelGrammar::from_lark(grammar.clone())
            }
        };
        let parser = self.factory.create_parser(top).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        dry_run(&matcher)?;
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

/// Tokens a fresh grammar is walked through at compile time (see [`dry_run`]).
const DRY_RUN_TOKENS: usize = 4;

/// Walks a copy of a fresh matcher through its first masks, consuming the lowest allowed token
/// each time. llguidance builds its lexer lazily, and the errors of a grammar too large for it
/// (`a{1000000}` runs out of lexer fuel at the first token it consumes), of a schema that only
/// refers to itself, or of one that allows no token surface only there. Found at admission
/// they are the client's error; found at a step they would fail a running request.
fn dry_run(matcher: &Matcher) -> Result<(), String> {
    if let Some(error) = matcher.get_error() {
        return Err(short_error(&error));
    }
    let mut probe = matcher.deep_clone();
    for step in 0..DRY_RUN_TOKENS {
        if probe.is_stopped() {
            break;
        }
        let mask = probe
            .compute_mask()
            .map_err(|e| short_error(&e.to_string()))?;
        let Some(token) = mask.first_bit_set() else {
            if step == 0 && !probe.is_accepting().unwrap_or(false) {
                return Err("the grammar allows no output at all".into());
            }
            break;
        };
        probe
            .consume_token(token as TokenId)
            .map_err(|e| short_error(&e.to_string()))?;
    }
    Ok(())
}

/// llguidance's error without the parser state it appends (many lines of internals), and
/// said plainly where it is terse.
fn short_error(error: &str) -> String {
    let first = error.lines().next().unwrap_or(error).trim();
    match first {
        "NoExtensionBias" => {
            "the grammar allows no output at all (does a `$ref` only refer to itself?)".into()
        }
        "" => "the grammar failed".into(),
        _ => first.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{Constraints, Grammar};
    use std::sync::Arc;

    /// The grammar compiler of the tiny Llama dummy's vocabulary (shared by the engine's tests).
    pub(crate) fn constraints() -> Constraints {
        fixture().0
    }

    fn fixture() -> (Constraints, tokenizers::Tokenizer) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spec = lantern_models::dummy::DummySpec {
            architecture: lantern_models::Architecture::Llama,
            size: lantern_models::dummy::DummySize::Tiny,
            seed: 1,
        };
        lantern_models::dummy::write_dummy_model(spec, dir.path())
            .unwrap_or_else(|e| panic!("{e}"));
        let tokenizer = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json"))
            .unwrap_or_else(|e| panic!("{e}"));
        let constraints = Constraints::new(Arc::new(tokenizer.clone()), &[0, 2], 512)
            .unwrap_or_else(|e| panic!("{e}"));
        (constraints, tokenizer)
    }

    /// Whether `grammar` lets the output be `text` (tokenized as the model would write it).
    fn allows(
        fixture: &(Constraints, tokenizers::Tokenizer),
        grammar: Grammar,
        text: &str,
    ) -> bool {
        let (constraints, tokenizer) = fixture;
        let mut constraint = constraints
            .compile(grammar)
            .unwrap_or_else(|e| panic!("{e}"));
        let ids = tokenizer
            .encode(text, false)
            .unwrap_or_else(|e| panic!("{e}"))
            .get_ids()
            .to_vec();
        ids.iter().all(|&id| {
            let allowed = constraint.allowed().is_ok_and(|a| {
                a.words()
                    .get(id as usize / 32)
                    .is_some_and(|w| w & (1 << (id % 32)) != 0)
            });
            allowed && constraint.advance(id).is_ok()
        })
    }

    /// Objects that list their properties are closed unless the schema opens them itself.
    #[test]
    fn undeclared_keys_need_the_schema_s_own_additional_properties() {
        let fixture = fixture();
        let declared = serde_json::json!({"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let mut open = declared.clone();
        open["additionalProperties"] = serde_json::json!(true);
        let extra = r#"{"city":"Paris","x":1}"#;
        let plain = r#"{"city":"Paris"}"#;
        assert!(allows(
            &fixture,
            Grammar::json(declared.clone(), false),
            plain
        ));
        assert!(!allows(&fixture, Grammar::json(declared, false), extra));
        assert!(allows(&fixture, Grammar::json(open, false), extra));
        // `json_object`'s schema lists no properties: any object.
        let any = serde_json::json!({"type": "object"});
        assert!(allows(&fixture, Grammar::json(any, false), extra));
    }

    /// Grammars that compile to a parser but fail when their lexer is built or their first
    /// mask computed are refused by `compile`, so they never reach a running request.
    #[test]
    fn grammars_that_fail_at_their_first_mask_are_refused_at_compile() {
        let constraints = constraints();
        let bad = [
            Grammar::Regex("a{1000000}".into()),
            Grammar::Regex("((a{100}){100}){100}".into()),
            Grammar::json(
                serde_json::json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}),
                false,
            ),
            Grammar::json(serde_json::json!({"$ref": "#"}), false),
        ];
        for grammar in bad {
            let outcome = constraints.compile(grammar.clone());
            assert!(outcome.is_err(), "{grammar:?} was accepted");
        }
        // Good grammars still compile, and give a mask.
        for good in [
            Grammar::Regex("[0-9]{2}".into()),
            Grammar::json(serde_json::json!({"type": "object"}), false),
        ] {
            let mut constraint = constraints.compile(good).unwrap_or_else(|e| panic!("{e}"));
            assert!(constraint.allowed().is_ok());
        }
    }
}
