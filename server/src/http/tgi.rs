//! TGI's API (`/generate`, `/generate_stream`, `/info`, `/tokenize`) and the Hugging Face
//! `{"inputs", "parameters"}` schema of SageMaker's `/invocations` (response
//! `[{"generated_text": ...}]`, the HF inference toolkit's shape).

use super::error::{ApiError, Flavor};
use super::generate::{
    encode, prepare, AdapterChoice, Generated, JsonWhitespace, Params, Prepared, Prompt,
};
use super::pipeline::{answer, Answer, Api};
use super::sse::{json_event, StreamFormat};
use super::state::AppState;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lantern_engine::constraint::Grammar;
use lantern_engine::{Completion, TokenEvent};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TgiRequest {
    #[schemars(length(min = 1))]
    pub inputs: String,
    #[serde(default)]
    pub parameters: TgiParameters,
    #[serde(default)]
    pub stream: bool,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct TgiParameters {
    /// A LoRA adapter to generate with, by the name it was registered under (the base
    /// model's name, or none, for the base).
    #[serde(default)]
    pub adapter_id: Option<String>,
    #[schemars(range(min = 1))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub max_new_tokens: Option<usize>,
    #[schemars(range(min = 0.0))]
    #[serde(default)]
    pub temperature: Option<f64>,
    pub do_sample: Option<bool>,
    #[schemars(range(min = 1))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub top_k: Option<usize>,
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    #[serde(default)]
    pub top_p: Option<f64>,
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0.0))]
    #[serde(default)]
    pub typical_p: Option<f64>,
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[schemars(range(min = -2.0, max = 2.0))]
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub details: bool,
    #[serde(default)]
    pub decoder_input_details: bool,
    #[schemars(range(max = 5))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub top_n_tokens: Option<usize>,
    pub return_full_text: Option<bool>,
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub truncate: Option<usize>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// Output held to a JSON schema (`{"type": "json", "value": <schema>}`) or a regular
    /// expression (`{"type": "regex", "value": "..."}`); compact JSON.
    pub grammar: Option<TgiGrammar>,
    /// Samples to draw; the one with the highest cumulative log-probability is returned
    /// (with `details`, the others in `best_of_sequences`). Needs sampling, no streaming.
    #[schemars(range(min = 1, max = 8))]
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    pub best_of: Option<usize>,
}

/// TGI's `parameters.grammar`: `{"type": "json", "value": <schema, as an object or JSON
/// text>}` or `{"type": "regex", "value": "..."}`. (A struct rather than a tagged enum: serde
/// would take `"type": 0` for the first variant.)
#[derive(Debug, Deserialize, JsonSchema)]
pub struct TgiGrammar {
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["json", "regex"]))]
    pub kind: String,
    pub value: Value,
    /// With `"type": "json"`: `compact` (default) or `flexible` whitespace between tokens.
    #[serde(default)]
    pub whitespace: Option<JsonWhitespace>,
}

impl TgiGrammar {
    fn grammar(&self) -> Result<Grammar, ApiError> {
        let invalid = |message: String| ApiError::validation(message, "parameters.grammar");
        let whitespace = self.whitespace.unwrap_or_default();
        match (self.kind.as_str(), &self.value) {
            ("json", Value::String(text)) => serde_json::from_str(text)
                .map(|schema| whitespace.grammar(schema))
                .map_err(|e| invalid(format!("`parameters.grammar.value` is not JSON: {e}"))),
            ("json", schema) => Ok(whitespace.grammar(schema.clone())),
            ("regex", _) if self.whitespace.is_some() => Err(invalid(
                "`parameters.grammar.whitespace` applies to JSON grammars, not regexes".into(),
            )),
            ("regex", Value::String(regex)) => Ok(Grammar::Regex(regex.clone())),
            ("regex", _) => Err(invalid(
                "`parameters.grammar.value` must be a string for a regex".into(),
            )),
            (other, _) => Err(invalid(format!(
                "`parameters.grammar.type` `{other}` is not one of json, regex"
            ))),
        }
    }
}

impl TgiParameters {
    fn to_params(&self, stream: bool) -> Result<Params, ApiError> {
        // TGI samples only when asked to (do_sample, or a sampling setting given).
        let sampling = self.do_sample.unwrap_or(
            self.temperature.is_some_and(|t| t > 0.0)
                || self.top_k.is_some()
                || self.top_p.is_some()
                || self.typical_p.is_some(),
        );
        let best_of = self.best_of.unwrap_or(1);
        if best_of == 0 || best_of > 8 {
            return Err(ApiError::validation(
                format!("`best_of` must be between 1 and 8, got {best_of}"),
                "best_of",
            ));
        }
        if best_of > 1 && stream {
            return Err(ApiError::validation(
                "`best_of` picks among finished samples, so it cannot be streamed",
                "best_of",
            ));
        }
        if best_of > 1 && !sampling {
            return Err(ApiError::validation(
                "`best_of` > 1 draws samples: set `do_sample` (or a sampling parameter)",
                "best_of",
            ));
        }
        Ok(Params {
            samples: best_of,
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            do_sample: Some(sampling),
            top_k: self.top_k,
            top_p: self.top_p,
            typical_p: self.typical_p,
            repetition_penalty: self.repetition_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            stop: self.stop.clone(),
            top_n_tokens: self.top_n_tokens,
            truncate: self.truncate,
            ignore_eos: self.ignore_eos,
            prompt_logprobs: self.decoder_input_details,
            grammar: self
                .grammar
                .as_ref()
                .map(|g| g.grammar().map(|g| (g, "parameters.grammar")))
                .transpose()?,
            adapter: match &self.adapter_id {
                Some(name) => AdapterChoice::Named {
                    name: name.clone(),
                    field: "parameters.adapter_id",
                },
                None => AdapterChoice::Base,
            },
            ..Params::default()
        })
    }
}

fn token_json(token: &TokenEvent) -> Value {
    json!({"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special})
}

fn top_tokens_json(token: &TokenEvent, model: &super::state::ServingModel) -> Value {
    Value::Array(
        token
            .top
            .iter()
            .map(|(id, logprob)| {
                let text = model.token_text(*id);
                json!({"id": id, "text": text, "logprob": logprob, "special": model.tokenizer.eos_token_ids.contains(id)})
            })
            .collect(),
    )
}

fn details_json(generated: &Generated, parameters: &TgiParameters) -> Value {
    let c = &generated.completion;
    let model = &generated.model;
    let prefill: Vec<Value> = if parameters.decoder_input_details {
        let logprobs = &c.prompt_logprobs;
        generated
            .prompt_tokens
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let logprob = logprobs.get(i).cloned().flatten().map(|p| p.logprob);
                json!({"id": id, "text": model.token_text(*id), "logprob": logprob})
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut details = json!({
        "finish_reason": c.finish_reason.as_str(),
        "generated_tokens": c.generated_tokens,
        "cached_tokens": c.cached_tokens,
        "seed": parameters.seed.map(|_| c.seed),
        "prefill": prefill,
        "tokens": generated.tokens.iter().map(token_json).collect::<Vec<_>>(),
    });
    if parameters.top_n_tokens.is_some_and(|n| n > 0) {
        details["top_tokens"] = Value::Array(
            generated
                .tokens
                .iter()
                .map(|t| top_tokens_json(t, model))
                .collect(),
        );
    }
    details
}

/// Runs a TGI request; `toolkit_shape` wraps the answer in a list, as SageMaker's HF containers do.
async fn run_tgi(
    state: &AppState,
    request: TgiRequest,
    toolkit_shape: bool,
) -> Result<Response, ApiError> {
    let parameters = request.parameters;
    let prefix = if parameters.return_full_text.unwrap_or(false) {
        request.inputs.clone()
    } else {
        String::new()
    };
    let prepared = prepare(
        state,
        Prompt::Text(request.inputs),
        parameters.to_params(request.stream)?,
    )
    .await?;
    let spelling = TgiAnswer {
        prefix,
        parameters,
        toolkit_shape,
    };
    answer(state, vec![prepared], request.stream, spelling).await
}

/// TGI's answers: `{"generated_text", "details"}` (in a list for the toolkit's shape), or its
/// token stream.
struct TgiAnswer {
    /// The prompt when `return_full_text`, else empty.
    prefix: String,
    parameters: TgiParameters,
    toolkit_shape: bool,
}

impl Answer for TgiAnswer {
    type Stream = TgiStream;

    fn streamed(self, _: &Prepared) -> TgiStream {
        TgiStream {
            pending: None,
            text: self.prefix,
            index: 0,
            details: self.parameters.details,
            seed: self.parameters.seed,
        }
    }

    fn collected(self, generated: &[Generated]) -> Value {
        // best_of: the sample with the highest cumulative log-probability (the first on ties).
        let best = (0..generated.len()).fold(0, |best, i| {
            if generated[i].cumulative_logprob() > generated[best].cumulative_logprob() {
                i
            } else {
                best
            }
        });
        let Some(chosen) = generated.get(best) else {
            return json!({"generated_text": self.prefix});
        };
        let mut body = json!({"generated_text": format!("{}{}", self.prefix, chosen.text)});
        if self.parameters.details || self.parameters.decoder_input_details {
            let mut details = details_json(chosen, &self.parameters);
            if generated.len() > 1 {
                let others: Vec<Value> = generated
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != best)
                    .map(|(_, other)| {
                        let mut sequence = details_json(other, &self.parameters);
                        sequence["generated_text"] =
                            json!(format!("{}{}", self.prefix, other.text));
                        sequence
                    })
                    .collect();
                details["best_of_sequences"] = Value::Array(others);
            }
            body["details"] = details;
        }
        if self.toolkit_shape {
            json!([body])
        } else {
            body
        }
    }
}

/// TGI's stream: one event per token; the last one also carries `generated_text` and `details`,
/// so each token waits for the next before it is sent.
struct TgiStream {
    pending: Option<TokenEvent>,
    text: String,
    index: usize,
    details: bool,
    seed: Option<u64>,
}

impl TgiStream {
    fn event(&mut self, token: &TokenEvent, last: Option<&Completion>) -> SseEvent {
        self.index += 1;
        let mut body = json!({"index": self.index, "token": token_json(token), "generated_text": null, "details": null});
        if let Some(c) = last {
            body["generated_text"] = json!(self.text);
            if self.details {
                body["details"] = json!({"finish_reason": c.finish_reason.as_str(), "generated_tokens": c.generated_tokens, "seed": self.seed.map(|_| c.seed)});
            }
        }
        json_event(&body)
    }
}

impl StreamFormat for TgiStream {
    fn token(&mut self, _: usize, token: &TokenEvent) -> Vec<SseEvent> {
        self.text.push_str(&token.text);
        match self.pending.replace(token.clone()) {
            Some(previous) => vec![self.event(&previous, None)],
            None => Vec::new(),
        }
    }

    fn end(&mut self, _: usize, completion: &Completion) -> Vec<SseEvent> {
        self.text.push_str(&completion.trailing_text);
        let mut last = self.pending.take().unwrap_or(TokenEvent {
            id: 0,
            text: String::new(),
            logprob: 0.0,
            top: Vec::new(),
            special: true,
        });
        last.text.push_str(&completion.trailing_text);
        vec![self.event(&last, Some(completion))]
    }

    fn flavor(&self) -> Flavor {
        Flavor::Tgi
    }
}

/// `POST /generate` and `POST /`: streamed when the body says `"stream": true`.
pub struct Generate;

impl Api for Generate {
    const FLAVOR: Flavor = Flavor::Tgi;
    type Request = TgiRequest;

    async fn run(state: &AppState, request: TgiRequest) -> Result<Response, ApiError> {
        run_tgi(state, request, false).await
    }
}

/// `POST /generate_stream`: always streamed.
pub struct GenerateStream;

impl Api for GenerateStream {
    const FLAVOR: Flavor = Flavor::Tgi;
    type Request = TgiRequest;

    async fn run(state: &AppState, mut request: TgiRequest) -> Result<Response, ApiError> {
        request.stream = true;
        run_tgi(state, request, false).await
    }
}

/// A TGI body on SageMaker's `/invocations`: answered `[{"generated_text": ...}]`.
pub struct Toolkit;

impl Api for Toolkit {
    const FLAVOR: Flavor = Flavor::Tgi;
    type Request = TgiRequest;

    async fn run(state: &AppState, request: TgiRequest) -> Result<Response, ApiError> {
        run_tgi(state, request, true).await
    }
}

pub async fn info(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let model = state.model()?;
    let c = &state.config;
    let devices = model.engine.devices();
    let adapters = model.engine.adapter_stats();
    Ok(Json(json!({
        "model_id": model.name,
        "model_dtype": model.dtype,
        "weight_formats": model.weight_formats,
        "weight_bytes": model.weight_bytes,
        "model_family": model.family,
        "model_toggles": model.toggles,
        "model_device_type": if devices.first() == Some(&"cpu") { "cpu" } else { "cuda" },
        "device": devices.first(),
        "data_parallel": devices.len(),
        "engine_devices": devices,
        "attention": model.engine.attention(),
        "kv_cache_tokens": model.engine.kv_cache_tokens(),
        "kv_cache_dtype": model.engine.kv_cache_dtype(),
        "kv_block_size": model.engine.limits().block_size,
        "max_concurrent_requests": c.max_concurrent_requests,
        "max_stop_sequences": c.max_stop_sequences,
        "max_input_tokens": c.max_input_tokens,
        "max_total_tokens": c.max_total_tokens,
        "max_batch_prefill_tokens": c.engine.max_batch_prefill_tokens,
        "max_batch_total_tokens": c.engine.max_batch_total_tokens,
        "router": "lantern",
        "version": env!("CARGO_PKG_VERSION"),
        "lora_adapters": model.adapters.names(),
        "max_loras": c.engine.max_loras,
        "max_lora_rank": c.engine.max_lora_rank,
        "lora_adapters_loaded": adapters.loaded.len(),
        "lora_adapter_bytes": adapters.bytes,
    })))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TokenizeRequest {
    pub inputs: String,
}

/// `POST /tokenize`: the prompt's tokens with their text and byte offsets, tokenized as
/// `/generate` tokenizes `inputs`: a raw prompt, special-token text parsed as control tokens.
pub struct Tokenize;

impl Api for Tokenize {
    const FLAVOR: Flavor = Flavor::Tgi;
    type Request = TokenizeRequest;

    async fn run(state: &AppState, request: TokenizeRequest) -> Result<Response, ApiError> {
        let model = state.model()?;
        let encoding = encode(&model, request.inputs.clone(), true)
            .await
            .map_err(|e| ApiError::validation(e, "inputs"))?;
        let tokens: Vec<Value> = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .map(|(id, (start, stop))| json!({"id": id, "text": request.inputs.get(*start..*stop).unwrap_or_default(), "start": start, "stop": stop}))
            .collect();
        Ok(Json(Value::Array(tokens)).into_response())
    }
}
