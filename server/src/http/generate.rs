//! The generation service every wire schema shares: validated parameters in, tokens out, either
//! collected into one result or streamed. Schemas only translate to and from these types.

use super::drive::{drive, Driven};
use super::error::ApiError;
use super::ranges::{in_range, Bounds};
use super::sagemaker::ADAPTER_HEADER;
use super::state::{AppState, ServingModel};
use crate::adapters::AdapterUse;
use lantern_engine::constraint::{Constraint, Grammar};
use lantern_engine::{
    Completion, EventStream, FieldNames, FinishReason, GenerateRequest, Limits, RequestSize,
    SamplingParams, TokenEvent,
};
use lantern_models::ChatMessage;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// Generation settings as the schemas express them, before validation.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f64>,
    /// TGI's `do_sample`: `Some(false)` forces greedy.
    pub do_sample: Option<bool>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub typical_p: Option<f64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub top_n_tokens: Option<usize>,
    /// Keep only the last this many prompt tokens.
    pub truncate: Option<usize>,
    pub ignore_eos: bool,
    /// Sequences to sample from the prompt (OpenAI's `n` or `best_of`, TGI's `best_of`).
    pub samples: usize,
    /// Each prompt token's log-probability (TGI's `decoder_input_details`, OpenAI's `echo`
    /// with `logprobs`).
    pub prompt_logprobs: bool,
    /// The grammar the output must match, and the request field that gave it (for errors).
    pub grammar: Option<(Grammar, &'static str)>,
    /// OpenAI's `logit_bias`, one entry per token (ids not yet checked against the vocabulary).
    pub logit_bias: Vec<(u32, f32)>,
    /// How the request's API names the fields a limit refers to.
    pub fields: FieldNames,
    /// The LoRA adapter to run under.
    pub adapter: AdapterChoice,
}

/// Whitespace between the tokens of JSON under a JSON grammar (a Lantern extension of TGI's
/// `grammar` and OpenAI's `response_format`): `compact`, the default, so that a model cannot
/// spend its tokens on spaces, or `flexible`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JsonWhitespace {
    #[default]
    Compact,
    Flexible,
}

impl JsonWhitespace {
    /// The JSON grammar of `schema` with this whitespace.
    pub fn grammar(self, schema: serde_json::Value) -> Grammar {
        Grammar::json(schema, self == Self::Flexible)
    }
}

/// A prompt as text, or as token ids already (OpenAI completions accept both), or as a chat
/// template's output.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Raw text: special-token text in it is parsed, and the tokenizer adds its BOS token.
    Text(String),
    Tokens(Vec<u32>),
    /// A rendered chat template, which wrote any BOS token itself; its message content was
    /// marked by the model's content guard, if it has one (see [`render_chat`]).
    Chat(String),
}

/// A request ready for the engine.
pub struct Prepared {
    pub model: Arc<ServingModel>,
    pub prompt_tokens: Vec<u32>,
    pub request: GenerateRequest,
    /// Sequences sampled from the prompt (at least 1).
    pub samples: usize,
    /// Held until the response is complete.
    pub permit: Admission,
}

/// What a request holds until its response is complete: its in-flight slot, and its adapter
/// (which cannot be unregistered while a request runs under it).
pub struct Admission {
    _slot: OwnedSemaphorePermit,
    adapter: Option<AdapterUse>,
}

/// Which LoRA adapter a request asked for, and how.
#[derive(Debug, Clone, Default)]
pub enum AdapterChoice {
    /// None named: the base model (or SageMaker's adapter header, on `/invocations`).
    #[default]
    Base,
    /// An adapter by name (TGI's `parameters.adapter_id`); the base's own name means the base.
    Named { name: String, field: &'static str },
    /// OpenAI's `model`: the base's served name or an adapter's. Any name while no adapter
    /// is registered (clients send all sorts); once one is, an unknown name is a 404, so
    /// that a typo never reaches the base silently.
    Model(String),
}

/// The adapter `choice` (or SageMaker's header, which `/invocations` passes down) names,
/// held for the request; counted in `lantern_lora_requests_total`.
fn choose_adapter(
    state: &AppState,
    model: &ServingModel,
    choice: AdapterChoice,
) -> Result<Option<AdapterUse>, ApiError> {
    let registry = &model.adapters;
    let known = || {
        let names = registry.names();
        if names.is_empty() {
            "no adapter is registered".to_string()
        } else {
            format!("the adapters are {}", names.join(", "))
        }
    };
    let header = super::sagemaker::adapter_header();
    // The adapter named, and how its absence is answered in the request's terms.
    type Unknown = Box<dyn FnOnce(String) -> ApiError>;
    let (name, unknown): (String, Unknown) = match (choice, header) {
        (AdapterChoice::Named { name, field }, Some(header)) if name != header => {
            return Err(ApiError::validation(
                format!("`{field}` names adapter `{name}`, the {ADAPTER_HEADER} header `{header}`: name one"),
                field,
            ))
        }
        (_, Some(header)) => {
            let message = format!("the adapter {header} was not found ({ADAPTER_HEADER})");
            (header, Box::new(move |known| ApiError::NotFound(format!("{message}: {known}"))))
        }
        (AdapterChoice::Base, None) => return Ok(None),
        (AdapterChoice::Named { name, .. } | AdapterChoice::Model(name), None)
            if name == model.name =>
        {
            return Ok(None)
        }
        (AdapterChoice::Model(_), None) if !registry.any() => return Ok(None),
        (AdapterChoice::Named { name, field }, None) => {
            let message = format!("unknown adapter `{name}`");
            (name, Box::new(move |known| ApiError::validation(format!("{message}: {known}"), field)))
        }
        (AdapterChoice::Model(name), None) => {
            let message = format!(
                "the model `{name}` does not exist: this server serves `{}`",
                model.name
            );
            (name, Box::new(move |known| ApiError::NotFound(format!("{message}, and {known}"))))
        }
    };
    let held = registry.acquire(&name).ok_or_else(|| unknown(known()))?;
    state.metrics.lora_request(&name);
    Ok(Some(held))
}

/// Runs CPU-heavy request preparation (tokenizing, rendering chat templates) on the blocking
/// pool, at most one fewer at a time than the CPU has cores: the async workers that answer
/// `/ping` must keep a core (four 2.5 MB prompts on 2 cores held `/ping` at 180 ms p99 when
/// all four ran at once).
pub async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(tokio::sync::Semaphore::new(cores.saturating_sub(1).max(1)))
    });
    let _slot = slots.acquire().await.map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| e.to_string())
}

/// The model's chat template applied to `messages`, with the assistant's turn opened; on the
/// blocking pool like tokenization (long conversations take a while to render). Special-token
/// text in message content is marked as content first (`--content-special-tokens text`), so
/// that it is tokenized as text.
pub async fn render_chat(
    model: &Arc<ServingModel>,
    mut messages: Vec<ChatMessage>,
    tools: Vec<serde_json::Value>,
    no_template: &'static str,
) -> Result<Prompt, ApiError> {
    if model.tokenizer.chat_template.is_none() {
        return Err(ApiError::validation(no_template, "messages"));
    }
    let rendering = model.clone();
    off_the_runtime(move || {
        if let Some(guard) = &rendering.content_guard {
            for message in &mut messages {
                message.content = guard.mark(&message.content);
            }
        }
        match &rendering.tokenizer.chat_template {
            Some(template) => template
                .render_with_tools(&messages, &tools, true)
                .map(Prompt::Chat)
                .map_err(|e| e.to_string()),
            None => Err(no_template.to_string()),
        }
    })
    .await
    .and_then(|rendered| rendered)
    .map_err(|e| ApiError::validation(e, "messages"))
}

/// `grammar` compiled for the model's vocabulary, on the blocking pool (a large schema takes
/// a while), within `limit`; an invalid one is the client's error, naming `field`. Past the
/// limit the compilation finishes in the background (it cannot be interrupted) and is kept
/// for the next request with the same grammar.
async fn compile(
    model: &Arc<ServingModel>,
    grammar: Grammar,
    field: &'static str,
    limit: Duration,
) -> Result<Constraint, ApiError> {
    let constraints = model.engine.constraints().map_err(|e| {
        ApiError::validation(
            format!("structured output is unavailable for this model: {e}"),
            field,
        )
    })?;
    // The compilation's own time counts too, not only the wait: a compile that finished just
    // as the timer fired is refused the same way, whichever the scheduler ran first.
    let compiling = off_the_runtime(move || {
        let started = Instant::now();
        (constraints.compile(grammar), started.elapsed())
    });
    let too_slow = || {
        ApiError::validation(
            format!(
                "`{field}` took longer than {} ms to compile (--max-grammar-compile-ms): simplify it",
                limit.as_millis()
            ),
            field,
        )
    };
    let (compiled, took) = tokio::time::timeout(limit, compiling)
        .await
        .map_err(|_| too_slow())?
        .map_err(ApiError::Generation)?;
    if took > limit {
        return Err(too_slow());
    }
    compiled.map_err(|e| ApiError::validation(format!("`{field}` cannot be used: {e}"), field))
}

/// A rendered chat prompt's ids, on the blocking pool: content marked by the model's content
/// guard as text, the template's own special-token text as control tokens; no BOS added (the
/// template writes its own).
async fn encode_chat(model: &Arc<ServingModel>, rendered: String) -> Result<Vec<u32>, String> {
    let model = model.clone();
    off_the_runtime(move || {
        let tokenizer = &model.tokenizer.tokenizer;
        match &model.content_guard {
            Some(guard) => guard.encode(tokenizer, &rendered),
            None => tokenizer
                .encode(rendered, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string()),
        }
    })
    .await
    .and_then(|ids| ids)
}

/// `text` tokenized by the model's tokenizer on the blocking pool (see [`off_the_runtime`]).
pub async fn encode(
    model: &Arc<ServingModel>,
    text: String,
    add_special_tokens: bool,
) -> Result<tokenizers::Encoding, String> {
    let model = model.clone();
    off_the_runtime(move || {
        model
            .tokenizer
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| e.to_string())
    })
    .await
    .and_then(|encoded| encoded)
}

/// Validates `params`, tokenizes `prompt` and takes an in-flight slot. Tokenizing a prompt of
/// megabytes takes a second of CPU: it runs on the blocking pool, so the async workers keep
/// answering (`/ping` above all: SageMaker's ping timeout is 2 s).
pub async fn prepare(
    state: &AppState,
    prompt: Prompt,
    params: Params,
) -> Result<Prepared, ApiError> {
    let model = state.model()?;
    let config = &state.config;
    let temperature = in_range(params.temperature, "temperature", Bounds::NON_NEGATIVE)?;
    let top_p = in_range(params.top_p, "top_p", Bounds::POSITIVE_PROBABILITY)?;
    let typical_p = in_range(params.typical_p, "typical_p", Bounds::POSITIVE_PROBABILITY)?;
    let min_p = in_range(params.min_p, "min_p", Bounds::PROBABILITY)?;
    let repetition_penalty = in_range(
        params.repetition_penalty,
        "repetition_penalty",
        Bounds::POSITIVE,
    )?;
    let frequency_penalty = in_range(
        params.frequency_penalty,
        "frequency_penalty",
        Bounds::PENALTY,
    )?;
    let presence_penalty = in_range(params.presence_penalty, "presence_penalty", Bounds::PENALTY)?;
    if params.top_k == Some(0) {
        return Err(ApiError::validation("`top_k` must be positive", "top_k"));
    }
    if params.stop.len() > config.max_stop_sequences {
        return Err(ApiError::validation(
            format!(
                "{} stop sequences given, at most {} allowed (MAX_STOP_SEQUENCES)",
                params.stop.len(),
                config.max_stop_sequences
            ),
            "stop",
        ));
    }
    // Everything the limits can say before the prompt is tokenized, in the API's own names.
    let limits = Limits {
        max_input_tokens: Some(config.max_input_tokens),
        ..model.engine.limits().limits()
    };
    let top_n_tokens = params.top_n_tokens.unwrap_or(0);
    let mut size = RequestSize {
        prompt_tokens: None,
        max_new_tokens: params.max_new_tokens,
        top_n_tokens,
    };
    limits.check(size, params.fields)?;
    let vocab_size = model.engine.vocab_size();
    let outside = |token: u32, field: &str| {
        ApiError::validation(
            format!(
                "token id {token} in `{field}` is outside the vocabulary (ids 0 to {})",
                vocab_size.saturating_sub(1)
            ),
            field,
        )
    };
    if let Some(&(token, _)) = params
        .logit_bias
        .iter()
        .find(|(t, _)| *t as usize >= vocab_size)
    {
        return Err(outside(token, "logit_bias"));
    }
    if let Prompt::Tokens(tokens) = &prompt {
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(outside(token, "prompt"));
        }
    }
    let untokenizable =
        |e: String| ApiError::validation(format!("the prompt cannot be tokenized: {e}"), "inputs");
    let mut prompt_tokens = match prompt {
        Prompt::Text(text) => encode(&model, text, true)
            .await
            .map_err(untokenizable)?
            .get_ids()
            .to_vec(),
        Prompt::Chat(rendered) => encode_chat(&model, rendered).await.map_err(untokenizable)?,
        Prompt::Tokens(tokens) => tokens,
    };
    if let Some(keep) = params
        .truncate
        .filter(|&k| k > 0 && k < prompt_tokens.len())
    {
        prompt_tokens.drain(..prompt_tokens.len() - keep);
    }
    size.prompt_tokens = Some(prompt_tokens.len());
    limits.check(size, params.fields)?;
    let room = limits.max_total_tokens.saturating_sub(prompt_tokens.len());
    let max_new_tokens = params
        .max_new_tokens
        .unwrap_or(config.default_max_new_tokens.min(room));
    size.max_new_tokens = Some(max_new_tokens);
    limits.check(size, params.fields)?;
    let greedy = params.do_sample == Some(false) || temperature.is_some_and(|t| t == 0.0);
    let sampling = SamplingParams {
        temperature: if greedy {
            0.0
        } else {
            temperature.unwrap_or(1.0)
        },
        top_k: params.top_k,
        top_p,
        typical_p,
        min_p,
        repetition_penalty,
        frequency_penalty: frequency_penalty.unwrap_or(0.0),
        presence_penalty: presence_penalty.unwrap_or(0.0),
        seed: params.seed,
        top_n_tokens,
        logit_bias: params.logit_bias,
    };
    let constraint = match params.grammar {
        None => None,
        Some((grammar, field)) => {
            Some(compile(&model, grammar, field, config.max_grammar_compile).await?)
        }
    };
    let adapter = choose_adapter(state, &model, params.adapter)?;
    let permit = Admission {
        _slot: state.admit()?,
        adapter,
    };
    Ok(Prepared {
        samples: params.samples.max(1),
        request: GenerateRequest {
            prompt: prompt_tokens.clone(),
            max_new_tokens,
            sampling,
            stop: params.stop,
            ignore_eos: params.ignore_eos,
            prompt_logprobs: params.prompt_logprobs,
            constraint,
            adapter: permit.adapter.as_ref().map(|held| held.adapter().clone()),
            span: tracing::Span::current(),
        },
        prompt_tokens,
        model,
        permit,
    })
}

/// A finished generation.
pub struct Generated {
    pub model: Arc<ServingModel>,
    pub prompt_tokens: Vec<u32>,
    pub text: String,
    pub tokens: Vec<TokenEvent>,
    pub completion: Completion,
}

/// Queues a prepared request with the engine: one stream per sample.
pub fn submit(state: &AppState, prepared: &Prepared) -> Result<Vec<EventStream>, ApiError> {
    state.metrics.requests_started.inc();
    let engines = &prepared.model.engine;
    let streams = engines.submit_samples(prepared.request.clone(), prepared.samples)?;
    if let Some(stream) = streams.first() {
        state
            .metrics
            .submitted(stream.engine(), prepared.prompt_tokens.len());
    }
    Ok(streams)
}

/// The completion of a request cut by the deadline: what it has so far, honestly labelled.
pub fn cut_by_deadline(
    prompt_tokens: usize,
    generated_tokens: usize,
    started: Instant,
    seed: Option<u64>,
) -> Completion {
    let elapsed = started.elapsed();
    Completion {
        finish_reason: FinishReason::TimeLimit,
        trailing_text: String::new(),
        prompt_tokens,
        cached_tokens: 0,
        generated_tokens,
        queue_time: Duration::ZERO,
        time_to_first_token: elapsed,
        total_time: elapsed,
        seed: seed.unwrap_or_default(),
        prompt_logprobs: Vec::new(),
    }
}

/// Runs requests to their ends, or to `--request-timeout`, and collects them: each
/// request's samples in order, requests in order. Every request is queued before any is
/// awaited, so they run together; the response's driver (`drive.rs`) does the rest.
pub async fn complete(
    state: &AppState,
    prepared: Vec<Prepared>,
) -> Result<Vec<Generated>, ApiError> {
    let mut streams = Vec::new();
    for request in &prepared {
        streams.push(submit(state, request)?);
    }
    // The request each choice belongs to, in the driver's order.
    let owners: Vec<&Prepared> = prepared
        .iter()
        .zip(&streams)
        .flat_map(|(request, streams)| std::iter::repeat_n(request, streams.len()))
        .collect();
    let mut texts = vec![String::new(); owners.len()];
    let mut tokens: Vec<Vec<TokenEvent>> = vec![Vec::new(); owners.len()];
    let mut ends: Vec<Option<Completion>> = vec![None; owners.len()];
    let mut driven = drive(state, &prepared, streams);
    while let Some(item) = driven.recv().await {
        match item {
            Driven::Token { choice, token } => {
                if let (Some(text), Some(list)) = (texts.get_mut(choice), tokens.get_mut(choice)) {
                    text.push_str(&token.text);
                    list.push(token);
                }
            }
            Driven::End { choice, completion } => {
                if let (Some(text), Some(end)) = (texts.get_mut(choice), ends.get_mut(choice)) {
                    text.push_str(&completion.trailing_text);
                    *end = Some(completion);
                }
            }
            Driven::Done(_) => break,
            Driven::Failed(error) => return Err(error),
        }
    }
    owners
        .into_iter()
        .zip(texts.into_iter().zip(tokens).zip(ends))
        .map(|(request, ((text, tokens), end))| {
            let completion =
                end.ok_or_else(|| ApiError::Generation("the engine dropped the request".into()))?;
            Ok(Generated {
                model: request.model.clone(),
                prompt_tokens: request.prompt_tokens.clone(),
                text,
                tokens,
                completion,
            })
        })
        .collect()
}

impl Generated {
    /// The sum of the token log-probabilities: how TGI and OpenAI rank `best_of` samples.
    pub fn cumulative_logprob(&self) -> f64 {
        self.tokens.iter().map(|t| f64::from(t.logprob)).sum()
    }
}

/// One completion standing for several (a request's samples, a list of prompts; each
/// prompt's `samples` in a row): tokens summed, each prompt counted once, times of the
/// slowest, the first's finish reason and seed.
pub fn combined<'a>(
    completions: impl IntoIterator<Item = &'a Completion>,
    samples: usize,
) -> Option<Completion> {
    let all: Vec<&Completion> = completions.into_iter().collect();
    let mut total = (*all.first()?).clone();
    total.generated_tokens = all.iter().map(|c| c.generated_tokens).sum();
    let per_prompt = all.iter().step_by(samples.max(1));
    (total.prompt_tokens, total.cached_tokens) = per_prompt.fold((0, 0), |(p, cached), c| {
        (p + c.prompt_tokens, cached + c.cached_tokens)
    });
    for c in &all {
        total.queue_time = total.queue_time.max(c.queue_time);
        total.time_to_first_token = total.time_to_first_token.max(c.time_to_first_token);
        total.total_time = total.total_time.max(c.total_time);
    }
    total.prompt_logprobs = Vec::new();
    Some(total)
}
