//! The tokenizer side of a model: `tokenizer.json`, the special tokens and chat template of
//! `tokenizer_config.json` (or `chat_template.jinja`), and the EOS ids and sampling defaults of
//! `generation_config.json`. GGUF files carry the same facts in metadata (`config/gguf.rs`).

use crate::chat::ChatTemplate;
use crate::error::{ModelError, Result};
use serde::Deserialize;
use std::path::Path;
use tokenizers::Tokenizer;

/// Everything needed to turn requests into tokens and tokens back into text.
#[derive(Debug)]
pub struct TokenizerBundle {
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Every id that ends generation: generation config, model config and tokenizer together.
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

/// Sampling defaults a model ships in `generation_config.json`; `None` where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GenerationDefaults {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f64>,
    pub do_sample: Option<bool>,
    pub max_new_tokens: Option<usize>,
}

/// An id or a list of ids, as `eos_token_id` appears in configs.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![id],
            Self::Many(ids) => ids,
        }
    }
}

#[derive(Debug, Deserialize)]
struct GenerationConfigFile {
    eos_token_id: Option<OneOrMany>,
    bos_token_id: Option<u32>,
    #[serde(flatten)]
    defaults: GenerationDefaults,
}

/// A special token as `tokenizer_config.json` writes it: a string or an `AddedToken` object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    fn text(&self) -> &str {
        match self {
            Self::Text(text) | Self::Added { content: text } => text,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TemplateField {
    Single(String),
    /// `[{"name": "default", "template": ...}, {"name": "tool_use", ...}]`
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Debug, Default, Deserialize)]
struct TokenizerConfigFile {
    chat_template: Option<TemplateField>,
    bos_token: Option<SpecialToken>,
    eos_token: Option<SpecialToken>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::file(path, format!("invalid JSON: {e}")))
}

/// Reads the tokenizer files of a Hugging Face model directory. `config_eos` is `config.json`'s
/// `eos_token_id`, which some models set only there.
pub fn load_hf_tokenizer(
    dir: &Path,
    config_eos: &[u32],
) -> Result<(TokenizerBundle, GenerationDefaults)> {
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.exists() {
        return Err(ModelError::file(
            &tokenizer_path,
            "missing: Lantern needs the fast tokenizer file",
        ));
    }
    let tokenizer = Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| ModelError::file(&tokenizer_path, format!("cannot be parsed: {e}")))?;
    let config: TokenizerConfigFile =
        read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
    let generation: Option<GenerationConfigFile> = read_json(&dir.join("generation_config.json"))?;

    let bos_text = config.bos_token.as_ref().map(|t| t.text().to_string());
    let eos_text = config.eos_token.as_ref().map(|t| t.text().to_string());
    let mut eos_token_ids: Vec<u32> = config_eos.to_vec();
    let mut bos_token_id = bos_text.as_deref().and_then(|t| tokenizer.token_to_id(t));
    let mut defaults = GenerationDefaults::default();
    if let Some(generation) = generation {
        eos_token_ids.extend(
            generation
                .eos_token_id
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
        );
        bos_token_id = generation.bos_token_id.or(bos_token_id);
        defaults = generation.defaults;
    }
    eos_token_ids.extend(eos_text.as_deref().and_then(|t| tokenizer.token_to_id(t)));
    eos_token_ids.sort_unstable();
    eos_token_ids.dedup();

    let template_source = match config.chat_template {
        Some(TemplateField::Single(source)) => Some(source),
        Some(TemplateField::Named(named)) => named
            .into_iter()
            .find(|t| t.name == "default")
            .map(|t| t.template),
        // transformers 4.43+ may save the template as its own file.
        None => {
            let path = dir.join("chat_template.jinja");
            path.exists()
                .then(|| std::fs::read_to_string(&path).map_err(|e| ModelError::file(&path, e)))
                .transpose()?
        }
    };
    let chat_template = template_source
        .map(|source| {
            ChatTemplate::new(
                source,
                bos_text.unwrap_or_default(),
                eos_text.unwrap_or_default(),
            )
        })
        .transpose()?;
    Ok((
        TokenizerBundle {
            tokenizer,
            chat_template,
            eos_token_ids,
            bos_token_id,
        },
        defaults,
    ))
}

/// `eos_token_id` of `config.json`, which may be one id or a list.
pub fn config_eos_ids(config_text: &str) -> Vec<u32> {
    #[derive(Deserialize)]
    struct Eos {
        eos_token_id: Option<OneOrMany>,
    }
    serde_json::from_str::<Eos>(config_text)
        .ok()
        .and_then(|e| e.eos_token_id)
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
}
