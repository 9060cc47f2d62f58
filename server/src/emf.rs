//! CloudWatch Embedded Metric Format: with `--cloudwatch-emf`, one JSON line per finished
//! generation request on stdout. SageMaker and ECS ship container stdout to CloudWatch Logs,
//! which turns these lines into metrics (no agent needed): requests, latency, time to first
//! token, inter-token latency and tokens in and out, by model and API route.

use lantern_engine::Completion;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The metrics' CloudWatch namespace.
pub const NAMESPACE: &str = "Lantern";

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    pub model: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub request_id: &'a str,
    pub latency: Duration,
    /// What the engine reported, for requests that generated.
    pub completion: Option<&'a Completion>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The record as one EMF document: the `_aws` metadata naming each metric and its unit, the
/// dimension values, the metric values, and the status, id and finish reason as properties
/// (searchable in Logs Insights, not metrics).
pub fn document(record: &RequestRecord, timestamp_ms: u64) -> Value {
    let mut metrics: Vec<(&str, &str, f64)> = vec![
        ("Requests", "Count", 1.0),
        ("Latency", "Milliseconds", ms(record.latency)),
    ];
    if let Some(c) = record.completion {
        metrics.push((
            "TimeToFirstToken",
            "Milliseconds",
            ms(c.time_to_first_token),
        ));
        metrics.push(("InputTokens", "Count", c.prompt_tokens as f64));
        metrics.push(("OutputTokens", "Count", c.generated_tokens as f64));
        if c.generated_tokens > 1 {
            let decoding = c.total_time.saturating_sub(c.time_to_first_token);
            metrics.push((
                "InterTokenLatency",
                "Milliseconds",
                ms(decoding) / (c.generated_tokens - 1) as f64,
            ));
        }
    }
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Model", "Api"]],
                "Metrics": metrics
                    .iter()
                    .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
                    .collect::<Vec<_>>(),
            }],
        }),
    );
    doc.insert("Model".into(), record.model.into());
    doc.insert("Api".into(), record.route.into());
    for (name, _, value) in &metrics {
        doc.insert((*name).into(), json!(value));
    }
    doc.insert("Status".into(), record.status.into());
    doc.insert("RequestId".into(), record.request_id.into());
    if let Some(c) = record.completion {
        doc.insert("FinishReason".into(), c.finish_reason.as_str().into());
    }
    Value::Object(doc)
}

/// Writes the record as one line on stdout.
pub fn emit(record: &RequestRecord) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let line = document(record, now).to_string();
    let mut stdout = std::io::stdout().lock();
    // A closed stdout must not fail the request: the record is lost, nothing else.
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use lantern_engine::FinishReason;

    /// The structure CloudWatch requires of an EMF document: a root `_aws` with an integer
    /// millisecond `Timestamp` and `CloudWatchMetrics` directives (a namespace of 1-255
    /// characters, at most 30 dimensions per set, each a root string member, at most 100
    /// metrics, each a root number with a unit CloudWatch knows).
    fn check_emf(doc: &Value) -> Result<(), String> {
        const UNITS: [&str; 3] = ["Count", "Milliseconds", "Seconds"];
        let aws = doc.get("_aws").ok_or("no _aws")?;
        aws["Timestamp"]
            .as_u64()
            .ok_or("Timestamp is not an integer")?;
        let directives = aws["CloudWatchMetrics"].as_array().ok_or("no directives")?;
        for directive in directives {
            let namespace = directive["Namespace"].as_str().ok_or("no namespace")?;
            if namespace.is_empty() || namespace.len() > 255 {
                return Err("namespace length".into());
            }
            for set in directive["Dimensions"].as_array().ok_or("no dimensions")? {
                let set = set.as_array().ok_or("a dimension set is not an array")?;
                if set.len() > 30 {
                    return Err("too many dimensions".into());
                }
                for name in set {
                    let name = name.as_str().ok_or("a dimension name is not a string")?;
                    doc[name]
                        .as_str()
                        .ok_or(format!("dimension {name} has no string value"))?;
                }
            }
            let metrics = directive["Metrics"].as_array().ok_or("no metrics")?;
            if metrics.len() > 100 {
                return Err("too many metrics".into());
            }
            for metric in metrics {
                let name = metric["Name"].as_str().ok_or("a metric has no name")?;
                let unit = metric["Unit"].as_str().ok_or("a metric has no unit")?;
                if !UNITS.contains(&unit) {
                    return Err(format!("unit {unit}"));
                }
                doc[name]
                    .as_f64()
                    .ok_or(format!("metric {name} has no number"))?;
            }
        }
        Ok(())
    }

    #[test]
    fn records_follow_the_embedded_metric_format() {
        let completion = Completion {
            finish_reason: FinishReason::Length,
            trailing_text: String::new(),
            prompt_tokens: 12,
            cached_tokens: 0,
            generated_tokens: 5,
            queue_time: Duration::from_millis(2),
            time_to_first_token: Duration::from_millis(30),
            total_time: Duration::from_millis(70),
            seed: 0,
            prompt_logprobs: Vec::new(),
        };
        let record = RequestRecord {
            model: "tiny",
            route: "/generate",
            status: 200,
            request_id: "abc",
            latency: Duration::from_millis(71),
            completion: Some(&completion),
        };
        let doc = document(&record, 1_764_000_000_000);
        assert_eq!(check_emf(&doc), Ok(()));
        assert_eq!(doc["InterTokenLatency"], json!(10.0));
        assert_eq!(doc["OutputTokens"], json!(5.0));
        // A refused request: no token metrics, still valid.
        let refused = RequestRecord {
            status: 422,
            completion: None,
            ..record
        };
        let doc = document(&refused, 1);
        assert_eq!(check_emf(&doc), Ok(()));
        assert!(doc.get("TimeToFirstToken").is_none());
        assert_eq!(doc["Status"], json!(422));
    }
}
