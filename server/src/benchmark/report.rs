//! What a run leaves behind: the markdown table (printed, and in `--markdown`), the JSON list
//! of level summaries (`--json`), one line per request (`--requests-jsonl`) and a
//! self-contained HTML report with SVG charts (`--report DIR`).

use super::client::{Outcome, RequestRecord};
use super::plots;
use super::stats::{Distribution, LevelSummary};
use anyhow::Context;
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;

/// One level against one server: its summary and the records it came from.
pub struct LevelReport {
    pub summary: LevelSummary,
    pub records: Vec<RequestRecord>,
}

impl LevelReport {
    pub fn load_label(&self) -> String {
        match (self.summary.concurrency, self.summary.request_rate) {
            (Some(c), _) => format!("c={c}"),
            (None, Some(r)) => format!("{r} req/s"),
            (None, None) => String::new(),
        }
    }

    pub fn completed_e2e_ms(&self) -> Vec<f64> {
        self.records
            .iter()
            .filter(|r| r.outcome == Outcome::Completed)
            .map(|r| r.e2e_ms)
            .collect()
    }
}

fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn percentiles(d: &Distribution) -> String {
    format!("{} / {} / {}", cell(d.p50), cell(d.p90), cell(d.p99))
}

pub fn markdown(levels: &[LevelReport]) -> String {
    let goodput = levels.iter().any(|l| l.summary.goodput_rps.is_some());
    let mut table = String::from(
        "| server | load | requests | ok | errors | req/s | output tok/s | TTFT ms p50 / p90 / p99 | ITL ms p50 / p90 / p99 | E2E ms p50 / p90 / p99 |",
    );
    table.push_str(if goodput { " goodput req/s |\n" } else { "\n" });
    table.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    table.push_str(if goodput { "---:|\n" } else { "\n" });
    for level in levels {
        let s = &level.summary;
        let errors = if s.errors_by_kind.is_empty() {
            "0".to_string()
        } else {
            let kinds: Vec<String> = s
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{n}x {k}"))
                .collect();
            format!("{} ({})", s.errors, kinds.join(", "))
        };
        let interrupted = if s.interrupted { " (interrupted)" } else { "" };
        let _ = write!(
            table,
            "| {} | {}{} | {} | {} | {} | {:.2} | {:.1} | {} | {} | {} |",
            s.server,
            level.load_label(),
            interrupted,
            s.requests,
            s.completed,
            errors,
            s.request_throughput,
            s.output_tokens_per_s,
            percentiles(&s.ttft_ms),
            percentiles(&s.itl_ms),
            percentiles(&s.e2e_ms),
        );
        if goodput {
            let _ = write!(table, " {} |", cell(s.goodput_rps));
        }
        table.push('\n');
    }
    table
}

pub fn write_json(path: &Path, levels: &[LevelReport]) -> anyhow::Result<()> {
    let summaries: Vec<&LevelSummary> = levels.iter().map(|l| &l.summary).collect();
    let text = serde_json::to_string_pretty(&summaries)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

pub fn write_requests(path: &Path, levels: &[LevelReport]) -> anyhow::Result<()> {
    let mut text = String::new();
    for level in levels {
        for record in &level.records {
            let mut line = serde_json::to_value(record)?;
            line["server"] = json!(level.summary.server);
            line["concurrency"] = json!(level.summary.concurrency);
            line["request_rate"] = json!(level.summary.request_rate);
            text.push_str(&line.to_string());
            text.push('\n');
        }
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `DIR/report.html` (the table and every chart inline: one file to open or send),
/// `DIR/<chart>.svg`, `DIR/results.json` and `DIR/results.md`.
pub fn write_report(dir: &Path, levels: &[LevelReport], command: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let charts = plots::charts(levels)?;
    let table = markdown(levels);
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>lantern benchmark</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} \
         td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}} pre{{background:#f4f4f4;padding:1em;white-space:pre-wrap}}</style>\n\
         </head><body>\n<h1>lantern benchmark</h1>\n<pre>{}</pre>\n{}\n",
        escape(command),
        html_table(&table)
    );
    for (name, svg) in &charts {
        let path = dir.join(format!("{name}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        html.push_str("<div>");
        html.push_str(svg);
        html.push_str("</div>\n");
    }
    html.push_str("</body></html>\n");
    std::fs::write(dir.join("report.html"), html).context("writing report.html")?;
    std::fs::write(
        dir.join("results.md"),
        format!("```\n{command}\n```\n\n{table}"),
    )
    .context("writing results.md")?;
    write_json(&dir.join("results.json"), levels)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The markdown table as HTML (it has no markup inside cells).
fn html_table(markdown: &str) -> String {
    let mut html = String::from("<table>\n");
    for (index, line) in markdown.lines().enumerate() {
        if index == 1 {
            continue;
        }
        let tag = if index == 0 { "th" } else { "td" };
        html.push_str("<tr>");
        for cell in line.trim().trim_matches('|').split('|') {
            let _ = write!(html, "<{tag}>{}</{tag}>", escape(cell.trim()));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>");
    html
}
