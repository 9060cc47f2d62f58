//! Constrained decoding on the tiny dummy model, whose random weights would never write JSON
//! on their own: every output under a JSON schema parses and validates against it (checked
//! by the `jsonschema` crate, not by the grammar engine), greedy and sampled, alone and
//! batched; every output under a regex matches it; and unconstrained requests batched with
//! constrained ones give bitwise the tokens they give alone.

mod common;

use common::{collect, config, run, tiny_engine, Outcome, TestResult};
use lantern_engine::constraint::Grammar;
use lantern_engine::{EngineHandle, FinishReason, GenerateRequest, SamplingParams};
use serde_json::{json, Value};

/// Schemas that bound every string and array and use bounded integers, so that their
/// longest compact rendering fits in `MAX_NEW` tokens.
fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 8},
                "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"], "additionalProperties": false}),
        json!({"type": "array", "items": {"enum": ["red", "green", "blue"]},
            "minItems": 1, "maxItems": 4}),
        json!({"type": "object", "properties": {
                "point": {"type": "object", "properties": {
                    "x": {"type": "integer", "minimum": -50, "maximum": 50},
                    "y": {"type": "integer", "minimum": -50, "maximum": 50}},
                    "required": ["x", "y"], "additionalProperties": false},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 5},
                    "maxItems": 3}},
            "required": ["point", "tags"], "additionalProperties": false}),
        json!({"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 1, "maximum": 9},
            {"type": "null"}]}),
        json!({"type": "object", "properties": {
                "ok": {"type": "boolean"},
                "level": {"enum": ["low", "high"]},
                "score": {"type": "integer", "minimum": 0, "maximum": 10}},
            "required": ["ok", "level"], "additionalProperties": false}),
    ]
}

/// Every string may be written with escapes (`\u0001` takes six characters): room for that.
const MAX_NEW: usize = 400;

fn request(
    handle: &EngineHandle,
    grammar: Grammar,
    seed: Option<u64>,
) -> TestResult<GenerateRequest> {
    let mut request = GenerateRequest::greedy((3..40).collect(), MAX_NEW);
    if let Some(seed) = seed {
        request.sampling = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        };
    }
    request.constraint = Some(handle.constraints()?.compile(grammar)?);
    Ok(request)
}

fn check_json(schema: &Value, outcome: &Outcome) -> TestResult {
    assert_ne!(
        outcome.finish,
        FinishReason::Length,
        "ran out of tokens: {outcome:?}"
    );
    let value: Value = serde_json::from_str(&outcome.text)
        .map_err(|e| format!("{e} in {:?} for {schema}", outcome.text))?;
    let validator = jsonschema::validator_for(schema)?;
    assert!(
        validator.is_valid(&value),
        "{value} does not match {schema}"
    );
    Ok(())
}

#[tokio::test]
async fn json_outputs_parse_and_validate_greedy_and_sampled() -> TestResult {
    let engine = tiny_engine(&config(256, 512))?;
    for schema in schemas() {
        for seed in [None, Some(1), Some(2)] {
            let grammar = Grammar::JsonSchema(schema.clone());
            let outcome = run(&engine.handle, request(&engine.handle, grammar, seed)?).await?;
            check_json(&schema, &outcome)?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn regex_outputs_match() -> TestResult {
    let engine = tiny_engine(&config(256, 512))?;
    for pattern in [
        r"[a-z]{3,8}@[a-z]{2,5}\.(com|org)",
        r"[0-9]{3}-[0-9]{4}",
        r"(yes|no|maybe)",
        r"\([A-Z][a-z]{0,4}\) [0-9]+\.[0-9]{2}",
    ] {
        let whole = regex::Regex::new(&format!("^(?:{pattern})$"))?;
        for seed in [None, Some(3)] {
            let grammar = Grammar::Regex(pattern.to_string());
            let outcome = run(&engine.handle, request(&engine.handle, grammar, seed)?).await?;
            assert!(
                whole.is_match(&outcome.text),
                "{:?} does not match {pattern}",
                outcome.text
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn constrained_and_unconstrained_requests_batch_without_changing_each_other() -> TestResult {
    let settings = config(256, 512);
    let engine = tiny_engine(&settings)?;
    let plain: Vec<GenerateRequest> = (0..6u32)
        .map(|i| {
            let mut request = GenerateRequest::greedy((5 + i..30 + 3 * i).collect(), 24);
            request.ignore_eos = true;
            request
        })
        .collect();
    let mut alone = Vec::new();
    for request in &plain {
        alone.push(run(&engine.handle, request.clone()).await?);
    }
    // The same requests again, each next to a constrained one, all queued before any runs.
    let mut streams = Vec::new();
    let schemas = schemas();
    for (i, request) in plain.iter().enumerate() {
        let schema = schemas[i % schemas.len()].clone();
        let constrained = request_for(&engine.handle, schema.clone(), i as u64)?;
        streams.push((None, engine.handle.submit(request.clone())?));
        streams.push((Some(schema), engine.handle.submit(constrained)?));
    }
    let mut together = Vec::new();
    for (schema, stream) in streams {
        let outcome = collect(stream).await?;
        match schema {
            Some(schema) => check_json(&schema, &outcome)?,
            None => together.push(outcome),
        }
    }
    assert_eq!(together, alone);
    Ok(())
}

fn request_for(handle: &EngineHandle, schema: Value, seed: u64) -> TestResult<GenerateRequest> {
    request(handle, Grammar::JsonSchema(schema), Some(seed))
}

#[test]
fn a_grammar_compiled_once_is_reused_in_its_initial_state() -> TestResult {
    let engine = tiny_engine(&config(64, 64))?;
    let constraints = engine.handle.constraints()?;
    let schema = schemas()[0].clone();
    let before = constraints.compilations();
    let mut first = constraints.compile(Grammar::JsonSchema(schema.clone()))?;
    // Advancing one copy leaves the kept one at the start: `{` is the only first token.
    let mut row = vec![0.0f32; 512];
    first.mask(&mut row)?;
    let opening = row
        .iter()
        .position(|v| v.is_finite())
        .ok_or("no token allowed")? as u32;
    first.advance(opening)?;
    let mut second = constraints.compile(Grammar::JsonSchema(schema))?;
    assert_eq!(constraints.compilations(), before + 1);
    let mut again = vec![0.0f32; 512];
    second.mask(&mut again)?;
    assert_eq!(
        again, row,
        "the reused grammar starts where a fresh one does"
    );
    Ok(())
}

#[test]
fn invalid_grammars_are_refused_with_the_reason() -> TestResult {
    let engine = tiny_engine(&config(64, 64))?;
    let constraints = engine.handle.constraints()?;
    for (grammar, says) in [
        (Grammar::Regex("(unclosed".into()), ""),
        (
            Grammar::JsonSchema(json!({"type": "array", "uniqueItems": true})),
            "uniqueItems",
        ),
        (Grammar::JsonSchema(json!({"type": "no such type"})), ""),
    ] {
        let refused = constraints.compile(grammar.clone());
        let Err(message) = refused else {
            panic!("{grammar:?} compiled");
        };
        assert!(message.contains(says), "{message}");
    }
    Ok(())
}

/// Opting into free whitespace widens what JSON may contain, never narrows it: at the start
/// and after `{`, every token compact JSON allows is allowed, and after `{` whitespace beside.
/// Outputs still validate.
#[tokio::test]
async fn flexible_whitespace_allows_more_and_still_validates() -> TestResult {
    let engine = tiny_engine(&config(256, 512))?;
    let constraints = engine.handle.constraints()?;
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
                        "required": ["a"], "additionalProperties": false});
    let mut compact = constraints.compile(Grammar::json(schema.clone(), false))?;
    let mut flexible = constraints.compile(Grammar::json(schema.clone(), true))?;
    for step in 0..2 {
        let (mut c, mut f) = (vec![0.0f32; 512], vec![0.0f32; 512]);
        compact.mask(&mut c)?;
        flexible.mask(&mut f)?;
        let allowed = |row: &[f32]| row.iter().filter(|v| v.is_finite()).count();
        assert!(c
            .iter()
            .zip(&f)
            .all(|(c, f)| !c.is_finite() || f.is_finite()));
        if step == 1 {
            assert!(
                allowed(&f) > allowed(&c),
                "{} vs {}",
                allowed(&f),
                allowed(&c)
            );
        }
        // Advance both past the same token (the one compact JSON allows: `{`).
        let token = c
            .iter()
            .position(|v| v.is_finite())
            .ok_or("nothing allowed")? as u32;
        compact.advance(token)?;
        flexible.advance(token)?;
    }
    let mut validated = 0;
    for seed in 0..4 {
        let req = request(
            &engine.handle,
            Grammar::json(schema.clone(), true),
            Some(seed),
        )?;
        let outcome = run(&engine.handle, req).await?;
        // Free whitespace may run out of tokens (what the compact default prevents).
        if outcome.finish != FinishReason::Length {
            check_json(&schema, &outcome)?;
            validated += 1;
        }
    }
    assert!(validated > 0, "every sample ran out of tokens");
    Ok(())
}
