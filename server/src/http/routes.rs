//! The route table: every path, each of its methods with its handler, and what the OpenAPI
//! document says of it. The router and `/openapi.json` are both built from this one list, so
//! neither can have a route the other lacks.

use super::pipeline::serve;
use super::{adapters, metrics, openai, openapi, sagemaker, tgi, ui, AppState};
use axum::extract::State;
use axum::handler::Handler;
use axum::routing::{on, MethodFilter, MethodRouter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Delete,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Delete => "delete",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Delete => MethodFilter::DELETE,
        }
    }
}

/// The request body a route reads, by its schema in the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySchema {
    Tgi,
    Tokenize,
    Chat,
    Completion,
    /// Any of TGI, OpenAI chat, OpenAI completion or Bedrock Messages (`/invocations`).
    Invocations,
    /// SageMaker's adapter registration.
    RegisterAdapter,
    /// vLLM's adapter load and unload.
    LoadLoraAdapter,
    UnloadLoraAdapter,
}

/// One method of one path.
pub struct Operation {
    pub path: &'static str,
    pub verb: Verb,
    pub summary: &'static str,
    pub body: Option<BodySchema>,
    /// What a success answers when it is not JSON: a page or one of its files (its media
    /// type), or a redirect.
    pub answers: Answers,
    pub handler: MethodRouter<AppState>,
}

/// What an operation's success looks like, for the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// JSON, or Server-Sent Events for streams (the API routes).
    Json,
    /// A file of the chat page, of this media type (404 with `--ui false`).
    File(&'static str),
    /// `GET /`: a redirect to the chat page (404 with `--ui false`).
    RedirectToPage,
    /// The adapter routes: a text message on success; refusals as 400, 403 (outside the
    /// adapter roots), 404, 409 (a name taken) or 424 (an adapter that cannot be served).
    AdapterMessage,
}

impl Operation {
    /// The same operation, documented as answering `answers`.
    fn answering(self, answers: Answers) -> Self {
        Self { answers, ..self }
    }
}

fn op<H, T>(
    path: &'static str,
    verb: Verb,
    summary: &'static str,
    body: Option<BodySchema>,
    handler: H,
) -> Operation
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Operation {
        path,
        verb,
        summary,
        body,
        answers: Answers::Json,
        handler: on(verb.filter(), handler),
    }
}

/// A `GET` of one of the chat page's files.
fn file(asset: &'static ui::Asset, summary: &'static str) -> Operation {
    let handler = move |State(state): State<AppState>| async move { asset.response(&state) };
    op(asset.path, Verb::Get, summary, None, handler).answering(Answers::File(asset.media_type))
}

/// Every operation the server serves.
pub fn operations() -> Vec<Operation> {
    use BodySchema::*;
    use Verb::*;
    vec![
        op("/ping", Get, "SageMaker health check: 200 once the model serves, else 503", None, sagemaker::ping),
        op("/ping", Post, "The health check, as some load balancers send it", None, sagemaker::ping),
        op("/invocations", Post, "SageMaker inference: TGI, OpenAI chat, OpenAI completion or Bedrock Messages body; application/jsonlines for Batch Transform", Some(Invocations), sagemaker::invocations),
        op("/execution-parameters", Get, "SageMaker Batch Transform parameters", None, sagemaker::execution_parameters),
        // TGI serves generation at its root too (its clients, e.g. huggingface_hub's
        // InferenceClient, post there), streaming when the body says `"stream": true`.
        op("/", Post, "TGI generate at the root (streamed as Server-Sent Events with \"stream\": true)", Some(Tgi), serve::<tgi::Generate>),
        op("/generate", Post, "TGI generate", Some(Tgi), serve::<tgi::Generate>),
        op("/generate_stream", Post, "TGI generate, streamed as Server-Sent Events", Some(Tgi), serve::<tgi::GenerateStream>),
        op("/info", Get, "TGI model and limits", None, tgi::info),
        op("/tokenize", Post, "TGI tokenize: `inputs` as a raw prompt (special-token text in it is parsed as control tokens and the BOS token added, as /generate does; chat message content is tokenized as text, see --content-special-tokens)", Some(Tokenize), serve::<tgi::Tokenize>),
        op("/health", Get, "Liveness: 200 while the engine is healthy (the same answer as /ping)", None, sagemaker::ping),
        op("/metrics", Get, "Prometheus metrics (text format)", None, metrics),
        op("/v1/chat/completions", Post, "OpenAI chat completions (stream with \"stream\": true)", Some(Chat), serve::<openai::ChatCompletions>),
        op("/v1/completions", Post, "OpenAI completions", Some(Completion), serve::<openai::Completions>),
        op("/v1/models", Get, "OpenAI model list", None, openai::models),
        op("/openapi.json", Get, "This document", None, openapi::openapi_json),
        op("/adapters", Post, "Register a LoRA adapter (SageMaker adapter inference components): a local directory under the adapter roots, checked against the model", Some(RegisterAdapter), adapters::register_sagemaker).answering(Answers::AdapterMessage),
        op("/adapters", Get, "The registered LoRA adapters", None, adapters::list),
        op("/adapters/{adapter_name}", Delete, "Unregister a LoRA adapter once its running requests finish", None, adapters::unregister_sagemaker).answering(Answers::AdapterMessage),
        op("/v1/load_lora_adapter", Post, "vLLM: register and load a LoRA adapter", Some(LoadLoraAdapter), adapters::load_vllm).answering(Answers::AdapterMessage),
        op("/v1/unload_lora_adapter", Post, "vLLM: unregister a LoRA adapter once its running requests finish", Some(UnloadLoraAdapter), adapters::unload_vllm).answering(Answers::AdapterMessage),
        op("/", Get, "Sent on to the chat page, /ui (generation at the root is POST /)", None, ui::root)
            .answering(Answers::RedirectToPage),
        file(&ui::PAGE, "The chat page (HTML; --ui false turns it off)"),
        file(&ui::SCRIPT, "The chat page's script"),
        file(&ui::STYLE, "The chat page's style"),
        file(&ui::MARKED, "Vendored Markdown renderer (marked, MIT)"),
        file(&ui::PURIFY, "Vendored HTML sanitizer (DOMPurify, Apache-2.0)"),
    ]
}
