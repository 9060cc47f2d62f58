//! What one load level measured, summarised: percentiles of TTFT, inter-token latency and
//! end-to-end latency, throughput, errors by kind and goodput under SLOs. Pure functions over
//! the per-request records, so the arithmetic is tested without a server.

use super::client::{Outcome, RequestRecord};
use serde::Serialize;
use std::collections::BTreeMap;

/// p50/p90/p99 and mean of one latency, in milliseconds. `None` fields when nothing was
/// measured (e.g. ITL when every request produced one token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Distribution {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub mean: Option<f64>,
}

impl Distribution {
    pub fn of(values: &[f64]) -> Self {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            mean: (!sorted.is_empty()).then(|| sorted.iter().sum::<f64>() / sorted.len() as f64),
        }
    }
}

/// The `p`th percentile of ascending `sorted` values, interpolating linearly between the two
/// nearest ranks (numpy's default, which vLLM's and GenAI-Perf's reports use too).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = p.clamp(0.0, 100.0) / 100.0 * last as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    let weight = rank - below as f64;
    Some(sorted[below] + (sorted[above] - sorted[below]) * weight)
}

/// Latency objectives a request must meet to count towards goodput.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slos {
    pub ttft_ms: Option<f64>,
    /// Bound on a request's mean inter-token latency (its time per output token after the
    /// first), the way vLLM's goodput defines it.
    pub itl_ms: Option<f64>,
}

impl Slos {
    fn any(&self) -> bool {
        self.ttft_ms.is_some() || self.itl_ms.is_some()
    }

    fn met_by(&self, record: &RequestRecord) -> bool {
        if !matches!(record.outcome, Outcome::Completed) {
            return false;
        }
        let ttft_ok = match (self.ttft_ms, record.ttft_ms) {
            (Some(bound), Some(ttft)) => ttft <= bound,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let itl_ok = match (self.itl_ms, mean(&record.itl_ms)) {
            (Some(bound), Some(itl)) => itl <= bound,
            _ => true,
        };
        ttft_ok && itl_ok
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// One level's figures, as written to `--json` (the schema is documented in
/// `benches/BENCHMARK.md`).
#[derive(Debug, Clone, Serialize)]
pub struct LevelSummary {
    /// The server's label (`--label`, `--compare-label`).
    pub server: String,
    pub concurrency: Option<usize>,
    pub request_rate: Option<f64>,
    /// Requests sent; always `completed + errors`.
    pub requests: usize,
    pub completed: usize,
    pub errors: usize,
    /// Errors by kind: an HTTP status (`"429"`), `"stream_error"`, `"transport"`, `"timeout"`,
    /// `"cancelled"` (in flight at Ctrl-C).
    pub errors_by_kind: BTreeMap<String, usize>,
    /// From the first request sent to the last answer received.
    pub duration_s: f64,
    pub request_throughput: f64,
    /// Prompt tokens as the server reported them (usage), summed over completed requests.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub output_tokens_per_s: f64,
    pub ttft_ms: Distribution,
    /// Every gap between consecutive streamed chunks, pooled over the level's requests.
    pub itl_ms: Distribution,
    pub e2e_ms: Distribution,
    /// Completed requests per second that met every SLO given; `None` without SLOs.
    pub goodput_rps: Option<f64>,
    /// The level was cut short by Ctrl-C.
    pub interrupted: bool,
}

/// How a level was loaded, for its summary.
#[derive(Debug, Clone, Copy)]
pub enum LoadShape {
    Concurrency(usize),
    RequestRate(f64),
}

pub struct LevelRun<'a> {
    pub server: &'a str,
    pub shape: LoadShape,
    pub records: &'a [RequestRecord],
    pub duration_s: f64,
    pub interrupted: bool,
}

pub fn summarise(run: &LevelRun, slos: Slos) -> LevelSummary {
    let completed: Vec<&RequestRecord> = run
        .records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Completed))
        .collect();
    let mut errors_by_kind = BTreeMap::new();
    for record in run.records {
        if let Some(kind) = record.outcome.error_kind() {
            *errors_by_kind.entry(kind).or_insert(0) += 1;
        }
    }
    let ttft: Vec<f64> = completed.iter().filter_map(|r| r.ttft_ms).collect();
    let itl: Vec<f64> = completed
        .iter()
        .flat_map(|r| r.itl_ms.iter().copied())
        .collect();
    let e2e: Vec<f64> = completed.iter().map(|r| r.e2e_ms).collect();
    let output_tokens: u64 = completed.iter().map(|r| r.output_tokens).sum();
    let per_second = |count: f64| {
        if run.duration_s > 0.0 {
            count / run.duration_s
        } else {
            0.0
        }
    };
    let good = run.records.iter().filter(|r| slos.met_by(r)).count();
    let (concurrency, request_rate) = match run.shape {
        LoadShape::Concurrency(c) => (Some(c), None),
        LoadShape::RequestRate(r) => (None, Some(r)),
    };
    LevelSummary {
        server: run.server.to_string(),
        concurrency,
        request_rate,
        requests: run.records.len(),
        completed: completed.len(),
        errors: run.records.len() - completed.len(),
        errors_by_kind,
        duration_s: run.duration_s,
        request_throughput: per_second(completed.len() as f64),
        input_tokens: completed.iter().filter_map(|r| r.input_tokens).sum(),
        output_tokens,
        output_tokens_per_s: per_second(output_tokens as f64),
        ttft_ms: Distribution::of(&ttft),
        itl_ms: Distribution::of(&itl),
        e2e_ms: Distribution::of(&e2e),
        goodput_rps: slos.any().then(|| per_second(good as f64)),
        interrupted: run.interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn percentiles_of_a_known_set_match_numpy() {
        // numpy.percentile(range(1, 101), [50, 90, 99]) == [50.5, 90.1, 99.01], in any order.
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        values.swap(3, 71);
        let d = Distribution::of(&values);
        assert!(
            close(d.p50, 50.5) && close(d.p90, 90.1) && close(d.p99, 99.01),
            "{d:?}"
        );
        assert!(close(d.mean, 50.5));
        // numpy.percentile([10, 20, 40, 80], [50, 90, 99]) == [30, 68, 78.8].
        let d = Distribution::of(&[80.0, 10.0, 40.0, 20.0]);
        assert!(
            close(d.p50, 30.0) && close(d.p90, 68.0) && close(d.p99, 78.8),
            "{d:?}"
        );
        let one = Distribution::of(&[7.0]);
        assert!(close(one.p50, 7.0) && close(one.p99, 7.0));
        assert_eq!(Distribution::of(&[]), Distribution::default());
    }

    fn record(outcome: Outcome, ttft: f64, itl: &[f64], tokens: u64) -> RequestRecord {
        RequestRecord {
            outcome,
            ttft_ms: Some(ttft),
            itl_ms: itl.to_vec(),
            e2e_ms: ttft + itl.iter().sum::<f64>(),
            output_tokens: tokens,
            usage_output_tokens: Some(tokens),
            chunks: tokens,
            input_tokens: Some(10),
            ..RequestRecord::default()
        }
    }

    #[test]
    fn a_summary_counts_errors_by_kind_and_goodput_by_slo() {
        let records = vec![
            record(Outcome::Completed, 100.0, &[10.0, 10.0], 3),
            record(Outcome::Completed, 300.0, &[10.0, 30.0], 3),
            record(Outcome::Completed, 100.0, &[50.0, 50.0], 3),
            record(Outcome::Http(429), 0.0, &[], 0),
            record(Outcome::Cancelled, 0.0, &[], 0),
        ];
        let run = LevelRun {
            server: "s",
            shape: LoadShape::Concurrency(2),
            records: &records,
            duration_s: 2.0,
            interrupted: false,
        };
        let slos = Slos {
            ttft_ms: Some(200.0),
            itl_ms: Some(20.0),
        };
        let s = summarise(&run, slos);
        assert_eq!((s.requests, s.completed, s.errors), (5, 3, 2));
        assert_eq!(s.errors_by_kind.get("429"), Some(&1));
        assert_eq!(s.errors_by_kind.get("cancelled"), Some(&1));
        assert_eq!(s.output_tokens, 9);
        assert_eq!(s.input_tokens, 30);
        assert!((s.output_tokens_per_s - 4.5).abs() < 1e-12);
        assert!((s.request_throughput - 1.5).abs() < 1e-12);
        // Only the first request meets both: the second misses TTFT, the third ITL.
        assert_eq!(s.goodput_rps, Some(0.5));
        assert!(close(s.ttft_ms.p50, 100.0));
        assert!(close(s.itl_ms.mean, 160.0 / 6.0));
        assert_eq!(summarise(&run, Slos::default()).goodput_rps, None);
    }
}
