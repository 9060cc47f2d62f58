//! Loading a whole model (decoder, tokenizer, chat template, generation defaults) from a Hugging
//! Face directory, a GGUF file (or a directory holding one), or a hub id.

use crate::config::DecoderConfig;
use crate::decoder::{Decoder, KernelPath};
use crate::error::{ModelError, Result};
use crate::hub::{self, HubModel};
use crate::tokenizer::{self, GenerationDefaults, TokenizerBundle};
use crate::weights::{GgufWeights, Naming, QuantizingWeights, Role, SafetensorsWeights};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use lantern_kernels::cpu::QuantFormat;
use std::path::{Path, PathBuf};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `config.json`, safetensors weights and tokenizer files.
    Directory(PathBuf),
    /// One GGUF file carrying weights, tokenizer and chat template.
    Gguf(PathBuf),
    Hub(HubModel),
}

impl ModelSource {
    /// A path that exists is local (a directory with a single `.gguf` and no `config.json` is a
    /// GGUF model); anything else is taken as a hub id.
    pub fn resolve(spec: &str, revision: Option<&str>) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_file() {
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        if path.is_dir() {
            if path.join("config.json").exists() {
                return Ok(Self::Directory(path.to_path_buf()));
            }
            let ggufs = gguf_files_in(path)?;
            return match ggufs.as_slice() {
                [one] => Ok(Self::Gguf(one.clone())),
                [] => Err(ModelError::file(
                    path,
                    "holds neither config.json nor a .gguf file",
                )),
                _ => Err(ModelError::file(
                    path,
                    "holds several .gguf files: name the one to serve",
                )),
            };
        }
        if spec.starts_with('/') || spec.starts_with('.') || spec.split('/').count() > 2 {
            return Err(ModelError::file(path, "no such file or directory"));
        }
        Ok(Self::Hub(HubModel {
            id: spec.to_string(),
            revision: revision.unwrap_or("main").to_string(),
        }))
    }
}

fn gguf_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::file(dir, e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "gguf"))
        .collect();
    found.sort();
    Ok(found)
}

/// Whether GGUF weights are expanded to dense at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dequantize {
    /// On CPU: files whose every matrix is in a format the CPU integer kernels take (Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) stay quantized whatever the memory; others are
    /// expanded when the dense weights take under half of the free memory (candle's quantized
    /// matmul does not gain from batching on CPU). Never on GPU.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// `None`: bf16 on GPU; on CPU, bf16 for bf16 checkpoints served by the CPU kernels (their
    /// arithmetic is f32, so bf16 storage is exact and halves the bytes read), else f32.
    pub dtype: Option<DType>,
    pub dequantize: Dequantize,
    pub kernels: KernelPath,
    /// Quantize a dense checkpoint's matrices at load into this format (CPU kernels only).
    pub quantize: Option<QuantFormat>,
}

impl LoadOptions {
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            dequantize: Dequantize::Auto,
            kernels: KernelPath::Auto,
            quantize: None,
        }
    }

    /// The dtype weights are loaded in; `checkpoint` is the dtype the files store (the
    /// embedding's), when known.
    fn dtype(&self, path: KernelPath, checkpoint: Option<DType>) -> DType {
        if let Some(dtype) = self.dtype {
            return dtype;
        }
        if !self.device.is_cpu() {
            return DType::BF16;
        }
        match (path, checkpoint) {
            (KernelPath::Cpu, Some(DType::BF16)) => DType::BF16,
            _ => DType::F32,
        }
    }

    /// The execution for weights the CPU kernels can take (dense, or quantized in one of
    /// their formats: `true`) or not.
    fn kernel_path(&self, cpu_can_take: bool) -> Result<KernelPath> {
        match self.kernels {
            KernelPath::Portable => Ok(KernelPath::Portable),
            KernelPath::Auto if self.device.is_cpu() && cpu_can_take => Ok(KernelPath::Cpu),
            KernelPath::Auto => Ok(KernelPath::Portable),
            KernelPath::Cpu if !self.device.is_cpu() => Err(ModelError::Kernels(
                "--kernels cpu needs the CPU device".into(),
            )),
            KernelPath::Cpu if !cpu_can_take => Err(ModelError::Kernels(
                "--kernels cpu has no integer kernels for this GGUF file's quantization (they take Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) and it stays quantized (--dequantize off); dequantize it or use --kernels portable".into(),
            )),
            KernelPath::Cpu => Ok(KernelPath::Cpu),
        }
    }
}

/// A model ready to serve.
#[derive(Debug)]
pub struct LoadedModel {
    pub decoder: Decoder,
    pub tokenizer: TokenizerBundle,
    pub generation: GenerationDefaults,
    /// What the model is called in responses (`/info`, OpenAI `model`).
    pub name: String,
}

pub fn load(source: &ModelSource, options: &LoadOptions) -> Result<LoadedModel> {
    match source {
        ModelSource::Directory(dir) => load_directory(dir, options, display_name(dir)),
        ModelSource::Gguf(path) => load_gguf(path, options),
        ModelSource::Hub(model) => {
            let dir = hub::fetch(model)?;
            load_directory(&dir, options, model.id.clone())
        }
    }
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Shard files named by a `model.safetensors.index.json`, each once, in first-use order.
pub fn shard_files(index_path: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index_path).map_err(|e| ModelError::file(index_path, e))?;
    let index: Index = serde_json::from_str(&text)
        .map_err(|e| ModelError::file(index_path, format!("invalid shard index: {e}")))?;
    let mut files: Vec<String> = Vec::new();
    for file in index.weight_map.into_values() {
        if !files.contains(&file) {
            files.push(file);
        }
    }
    Ok(files)
}

fn load_directory(dir: &Path, options: &LoadOptions, name: String) -> Result<LoadedModel> {
    let config_path = dir.join("config.json");
    let config_text =
        std::fs::read_to_string(&config_path).map_err(|e| ModelError::file(&config_path, e))?;
    let config = DecoderConfig::from_hf_str(&config_text, &config_path)?;
    let index = dir.join("model.safetensors.index.json");
    let weight_files = if index.exists() {
        shard_files(&index)?
            .into_iter()
            .map(|f| dir.join(f))
            .collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    let path = options.kernel_path(true)?;
    let weights = SafetensorsWeights::open(&weight_files, DType::F32, &options.device)?;
    // What the files store decides, not what config.json claims.
    let embedding = Naming::HuggingFace.weight(Role::Embedding, 0);
    let dtype = options.dtype(path, weights.stored_dtype(&embedding));
    let weights = weights.with_dtype(dtype);
    let decoder = match options.quantize {
        None => Decoder::load(config, &weights, dtype, &options.device, path)?,
        Some(format) => {
            if path != KernelPath::Cpu {
                return Err(ModelError::Kernels(format!(
                    "--quantize {} needs the CPU kernels (the CPU device, --kernels auto or cpu)",
                    format.name()
                )));
            }
            tracing::info!(
                format = format.name(),
                "quantizing the checkpoint's matrices at load"
            );
            let quantizing = QuantizingWeights {
                inner: &weights,
                format,
            };
            Decoder::load(config, &quantizing, dtype, &options.device, path)?
        }
    };
    let (tokenizer, generation) =
        tokenizer::load_hf_tokenizer(dir, &tokenizer::config_eos_ids(&config_text))?;
    Ok(LoadedModel {
        decoder,
        tokenizer,
        generation,
        name,
    })
}

fn load_gguf(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    if let Some(format) = options.quantize {
        tracing::warn!(
            format = format.name(),
            "--quantize applies to dense checkpoints: this GGUF file is served in its own formats"
        );
    }
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::file(path, e))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| ModelError::file(path, format!("not a valid GGUF file: {e}")))?;
    let config = crate::config::gguf::decoder_config(&content, &mut file, path)?;
    // A tokenizer.json beside the file wins: it is the model's own, the metadata a rebuild.
    let beside = path.parent().map(|dir| dir.join("tokenizer.json"));
    let tokenizer = match beside {
        Some(json) if json.exists() => {
            let dir = json.parent().map(Path::to_path_buf).unwrap_or_default();
            let mut bundle = tokenizer::load_hf_tokenizer(&dir, &[])?.0;
            let from_metadata = crate::config::gguf::tokenizer(&content, path).ok();
            if let Some(meta) = from_metadata {
                bundle.eos_token_ids.extend(meta.eos_token_ids);
                bundle.eos_token_ids.sort_unstable();
                bundle.eos_token_ids.dedup();
                bundle.chat_template = bundle.chat_template.or(meta.chat_template);
            }
            bundle
        }
        _ => crate::config::gguf::tokenizer(&content, path)?,
    };
    // On CPU the integer kernels serve their formats (legacy and K-quants) as they are; other
    // types are expanded when they fit, else run on the portable path.
    let cpu_takes_blocks = options.device.is_cpu()
        && options.kernels != KernelPath::Portable
        && GgufWeights::cpu_kernels_take_every_tensor(&content);
    let dequantize = match options.dequantize {
        Dequantize::On => true,
        Dequantize::Off => false,
        Dequantize::Auto => {
            options.device.is_cpu() && !cpu_takes_blocks && dense_fits_in_memory(&config)
        }
    };
    let kernels = options.kernel_path(dequantize || cpu_takes_blocks)?;
    let dtype = options.dtype(kernels, None);
    let weights = GgufWeights::new(path, content, file, dtype, &options.device, dequantize);
    let decoder = Decoder::load(config, &weights, dtype, &options.device, kernels)?;
    Ok(LoadedModel {
        decoder,
        tokenizer,
        generation: GenerationDefaults::default(),
        name: display_name(path),
    })
}

/// Auto-dequantization rule: f32 weights must take under half of the available memory.
fn dense_fits_in_memory(config: &DecoderConfig) -> bool {
    let dense_bytes = config.num_parameters() * DType::F32.size_in_bytes();
    available_memory_bytes().is_some_and(|free| dense_bytes < free / 2)
}

/// `MemAvailable` of /proc/meminfo; `None` where that file does not exist.
pub fn available_memory_bytes() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(kernels: KernelPath) -> LoadOptions {
        LoadOptions {
            kernels,
            ..LoadOptions::cpu()
        }
    }

    #[test]
    fn auto_picks_the_cpu_kernels_for_dense_weights_only() {
        let auto = options(KernelPath::Auto);
        assert_eq!(auto.kernel_path(true).ok(), Some(KernelPath::Cpu));
        assert_eq!(auto.kernel_path(false).ok(), Some(KernelPath::Portable));
        let portable = options(KernelPath::Portable);
        assert_eq!(portable.kernel_path(true).ok(), Some(KernelPath::Portable));
    }

    #[test]
    fn cpu_kernels_on_quantized_weights_are_refused_with_the_way_out() {
        let error = options(KernelPath::Cpu).kernel_path(false).err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("--kernels portable"), "{message}");
    }

    #[test]
    fn bf16_checkpoints_stay_bf16_on_the_cpu_kernels_only() {
        let auto = options(KernelPath::Auto);
        let bf16 = Some(DType::BF16);
        assert_eq!(auto.dtype(KernelPath::Cpu, bf16), DType::BF16);
        assert_eq!(auto.dtype(KernelPath::Portable, bf16), DType::F32);
        assert_eq!(auto.dtype(KernelPath::Cpu, Some(DType::F16)), DType::F32);
        let explicit = LoadOptions {
            dtype: Some(DType::F32),
            ..auto
        };
        assert_eq!(explicit.dtype(KernelPath::Cpu, bf16), DType::F32);
    }
}
