//! Setting values that need more than clap's parsers: sizes with units, and the
//! `--lora-adapters` list.

use anyhow::bail;

/// `2G`, `512Mi`, `1000000`.
pub(super) fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}`")),
    };
    Ok(number * scale)
}

/// `--lora-adapters`: `NAME=PATH` pairs or bare hub ids (named by themselves).
pub(super) fn parse_lora_adapters(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut adapters: Vec<(String, String)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, source) = match entry.split_once('=') {
            Some((name, source)) => (name.trim(), source.trim()),
            None => (entry, entry),
        };
        if name.is_empty() || source.is_empty() {
            bail!("--lora-adapters: `{entry}` is not NAME=PATH or a hub id");
        }
        if adapters.iter().any(|(n, _)| n == name) {
            bail!("--lora-adapters: `{name}` is given twice");
        }
        adapters.push((name.to_string(), source.to_string()));
    }
    Ok(adapters)
}
