//! Where the decoder's tensors come from: safetensors files (Hugging Face layout, possibly
//! sharded) or one GGUF file. Both answer the same questions (a dense tensor of a known shape,
//! a linear layer), and every failure names the tensor and the file.

use crate::error::{ModelError, Result};
use crate::layers::Linear;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use lantern_kernels::cpu::QuantFormat;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A tensor's job in the decoder; each format names it its own way.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Embedding,
    FinalNorm,
    LmHead,
    AttentionNorm,
    Query,
    Key,
    Value,
    AttentionOutput,
    QueryNorm,
    KeyNorm,
    MlpNorm,
    /// Gemma's sandwich norms: after attention, before the MLP (its `MlpNorm`), after the MLP.
    PostAttentionNorm,
    PreFeedforwardNorm,
    PostFeedforwardNorm,
    Gate,
    Up,
    Down,
}

/// The two naming schemes of the formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    HuggingFace,
    Gguf,
}

impl Naming {
    /// Name of the weight of `role` (in `layer` for per-layer roles).
    pub fn weight(self, role: Role, layer: usize) -> String {
        use Role::*;
        match self {
            Naming::HuggingFace => {
                let l = format!("model.layers.{layer}");
                match role {
                    Embedding => "model.embed_tokens.weight".into(),
                    FinalNorm => "model.norm.weight".into(),
                    LmHead => "lm_head.weight".into(),
                    AttentionNorm => format!("{l}.input_layernorm.weight"),
                    Query => format!("{l}.self_attn.q_proj.weight"),
                    Key => format!("{l}.self_attn.k_proj.weight"),
                    Value => format!("{l}.self_attn.v_proj.weight"),
                    AttentionOutput => format!("{l}.self_attn.o_proj.weight"),
                    QueryNorm => format!("{l}.self_attn.q_norm.weight"),
                    KeyNorm => format!("{l}.self_attn.k_norm.weight"),
                    MlpNorm | PostAttentionNorm => format!("{l}.post_attention_layernorm.weight"),
                    PreFeedforwardNorm => format!("{l}.pre_feedforward_layernorm.weight"),
                    PostFeedforwardNorm => format!("{l}.post_feedforward_layernorm.weight"),
                    Gate => format!("{l}.mlp.gate_proj.weight"),
                    Up => format!("{l}.mlp.up_proj.weight"),
                    Down => format!("{l}.mlp.down_proj.weight"),
                }
            }
            Naming::Gguf => {
                let l = format!("blk.{layer}");
                match role {
                    Embedding => "token_embd.weight".into(),
                    FinalNorm => "output_norm.weight".into(),
                    LmHead => "output.weight".into(),
                    AttentionNorm => format!("{l}.attn_norm.weight"),
                    Query => format!("{l}.attn_q.weight"),
                    Key => format!("{l}.attn_k.weight"),
                    Value => format!("{l}.attn_v.weight"),
                    AttentionOutput => format!("{l}.attn_output.weight"),
                    QueryNorm => format!("{l}.attn_q_norm.weight"),
                    KeyNorm => format!("{l}.attn_k_norm.weight"),
                    MlpNorm | PreFeedforwardNorm => format!("{l}.ffn_norm.weight"),
                    PostAttentionNorm => format!("{l}.post_attention_norm.weight"),
                    PostFeedforwardNorm => format!("{l}.post_ffw_norm.weight"),
                    Gate => format!("{l}.ffn_gate.weight"),
                    Up => format!("{l}.ffn_up.weight"),
                    Down => format!("{l}.ffn_down.weight"),
                }
            }
        }
    }
}

pub(crate) fn bias_name(weight_name: &str) -> String {
    match weight_name.strip_suffix(".weight") {
        Some(stem) => format!("{stem}.bias"),
        None => format!("{weight_name}.bias"),
    }
}

/// GGUF blocks of a weight in a format the CPU integer kernels multiply directly.
#[derive(Debug, Clone)]
pub struct QuantBlocks<'a> {
    pub format: QuantFormat,
    /// The tensor's GGUF bytes: `out` rows of `in / 32` blocks (borrowed from a mapped file,
    /// or made at load).
    pub data: Cow<'a, [u8]>,
}

/// A place to read named tensors from.
pub trait WeightSource {
    fn naming(&self) -> Naming;
    /// A dense tensor in the model's dtype, checked against `shape`.
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// A linear layer with weight `(out, in)`, and a bias `(out,)` when `with_bias`.
    fn linear(&self, name: &str, out_in: (usize, usize), with_bias: bool) -> Result<Linear>;
    /// The weight `(out, in)` as blocks for the CPU integer kernels, when it is stored in one
    /// of their formats and is to stay quantized; `None` means: read it dense.
    fn quantized_blocks(
        &self,
        _name: &str,
        _out_in: (usize, usize),
    ) -> Result<Option<QuantBlocks<'_>>> {
        Ok(None)
    }
}

/// Hugging Face safetensors, one file or shards, memory-mapped.
pub struct SafetensorsWeights {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// Tensor name -> index in `files`.
    routing: HashMap<String, usize>,
    dtype: DType,
    device: Device,
}

impl SafetensorsWeights {
    pub fn open(paths: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for path in paths {
            if !path.exists() {
                return Err(ModelError::file(path, "weight file is missing"));
            }
            // SAFETY: the file is mapped read-only; like every mmap-based loader (candle,
            // transformers) we rely on nobody truncating model files while they are served.
            #[allow(unsafe_code)]
            let mapped = unsafe { MmapedSafetensors::new(path) }.map_err(|e| {
                ModelError::file(path, format!("not a valid safetensors file: {e}"))
            })?;
            for (name, _) in mapped.tensors() {
                routing.insert(name, files.len());
            }
            files.push((path.clone(), mapped));
        }
        Ok(Self {
            files,
            routing,
            dtype,
            device: device.clone(),
        })
    }

    /// The dtype `name` is stored in, if the files hold it.
    pub fn stored_dtype(&self, name: &str) -> Option<DType> {
        let name = self.stored_name(name);
        let (_, file) = &self.files[*self.routing.get(name.as_ref())?];
        let view = file.get(&name).ok()?;
        match view.dtype() {
            safetensors::Dtype::BF16 => Some(DType::BF16),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::F32 => Some(DType::F32),
            _ => None,
        }
    }

    /// The same files, read in `dtype`.
    pub fn with_dtype(self, dtype: DType) -> Self {
        Self { dtype, ..self }
    }

    /// `name` as the files spell it: a Gemma 3 checkpoint with vision keeps its text model
    /// under `language_model.model.` (transformers 4) or `model.language_model.` (5).
    fn stored_name<'n>(&self, name: &'n str) -> Cow<'n, str> {
        if self.routing.contains_key(name) {
            return Cow::Borrowed(name);
        }
        if let Some(rest) = name.strip_prefix("model.") {
            for prefix in ["language_model.model.", "model.language_model."] {
                let candidate = format!("{prefix}{rest}");
                if self.routing.contains_key(&candidate) {
                    return Cow::Owned(candidate);
                }
            }
        }
        Cow::Borrowed(name)
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let stored = self.stored_name(name);
        let name = stored.as_ref();
        let Some(&index) = self.routing.get(name) else {
            let listed: Vec<String> = self
                .files
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            return Err(ModelError::Tensor {
                name: name.into(),
                file: PathBuf::from(listed.join(", ")),
                message: "missing".into(),
            });
        };
        let (path, file) = &self.files[index];
        let tensor_error = |message: String| ModelError::Tensor {
            name: name.into(),
            file: path.clone(),
            message,
        };
        let tensor = file
            .load(name, &self.device)
            .map_err(|e| tensor_error(format!("cannot be read: {e}")))?;
        if tensor.dims() != shape {
            return Err(tensor_error(format!(
                "has shape {:?}, the config implies {shape:?}",
                tensor.dims()
            )));
        }
        Ok(tensor.to_dtype(self.dtype)?)
    }
}

impl WeightSource for SafetensorsWeights {
    fn naming(&self) -> Naming {
        Naming::HuggingFace
    }

    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.load(name, shape)
    }

    fn linear(&self, name: &str, (out, inp): (usize, usize), with_bias: bool) -> Result<Linear> {
        let weight = self.load(name, &[out, inp])?;
        let bias = with_bias
            .then(|| self.load(&bias_name(name), &[out]))
            .transpose()?;
        Ok(Linear::Dense { weight, bias })
    }
}

/// One GGUF file. Linear layers stay quantized unless `dequantize` asks to expand them.
pub struct GgufWeights {
    path: PathBuf,
    content: gguf_file::Content,
    file: Mutex<File>,
    /// The whole file, for reading blocks without copies (see `quantized_blocks`).
    mapped: std::sync::OnceLock<memmap2::Mmap>,
    dtype: DType,
    device: Device,
    dequantize: bool,
}

impl GgufWeights {
    pub fn new(
        path: &Path,
        content: gguf_file::Content,
        file: File,
        dtype: DType,
        device: &Device,
        dequantize: bool,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
            mapped: std::sync::OnceLock::new(),
            dtype,
            device: device.clone(),
            dequantize,
        }
    }

    fn tensor_error(&self, name: &str, message: String) -> ModelError {
        ModelError::Tensor {
            name: name.into(),
            file: self.path.clone(),
            message,
        }
    }

    /// The metadata of tensor `name`, checked to have `shape`.
    fn checked_info(&self, name: &str, shape: &[usize]) -> Result<&gguf_file::TensorInfo> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.tensor_error(name, "missing".into()))?;
        if info.shape.dims() != shape {
            return Err(self.tensor_error(
                name,
                format!(
                    "has shape {:?}, the metadata implies {shape:?}",
                    info.shape.dims()
                ),
            ));
        }
        Ok(info)
    }

    fn qtensor(&self, name: &str, shape: &[usize]) -> Result<candle_core::quantized::QTensor> {
        let tensor_error = |message: String| self.tensor_error(name, message);
        self.checked_info(name, shape)?;
        let mut file = self
            .file
            .lock()
            .map_err(|_| tensor_error("file handle poisoned by an earlier failure".into()))?;
        self.content
            .tensor(&mut *file, name, &self.device)
            .map_err(|e| tensor_error(format!("cannot be read: {e}")))
    }
}

impl WeightSource for GgufWeights {
    fn naming(&self) -> Naming {
        Naming::Gguf
    }

    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .qtensor(name, shape)?
            .dequantize(&self.device)?
            .to_dtype(self.dtype)?)
    }

    fn linear(&self, name: &str, (out, inp): (usize, usize), with_bias: bool) -> Result<Linear> {
        let bias = with_bias
            .then(|| self.dense(&bias_name(name), &[out]))
            .transpose()?;
        let qtensor = self.qtensor(name, &[out, inp])?;
        let stored_dense = matches!(
            qtensor.dtype(),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        );
        if self.dequantize || stored_dense {
            let weight = qtensor.dequantize(&self.device)?.to_dtype(self.dtype)?;
            return Ok(Linear::Dense { weight, bias });
        }
        let weight = QMatMul::from_qtensor(qtensor)?;
        Ok(Linear::Quantized { weight, bias })
    }

    fn quantized_blocks(
        &self,
        name: &str,
        (out, inp): (usize, usize),
    ) -> Result<Option<QuantBlocks<'_>>> {
        let info = self.content.tensor_infos.get(name);
        let format = info.and_then(|info| QuantFormat::from_ggml(info.ggml_dtype));
        let (Some(info), Some(format), false) = (info, format, self.dequantize) else {
            return Ok(None);
        };
        self.checked_info(name, &[out, inp])?;
        // Straight from the mapped file: the repacked panels are the only copy made.
        let start = self.content.tensor_data_offset.saturating_add(info.offset) as usize;
        let values = format.gguf_block_values();
        if !inp.is_multiple_of(values) {
            return Err(self.tensor_error(
                name,
                format!(
                    "{} rows of {inp} values are not whole blocks of {values}",
                    format.name()
                ),
            ));
        }
        let len = out
            .checked_mul(inp / values)
            .and_then(|blocks| blocks.checked_mul(format.gguf_block_bytes()))
            .ok_or_else(|| self.tensor_error(name, format!("({out}, {inp}) is too large")))?;
        let mapped = self.mapped()?;
        let data = mapped
            .get(start..start.saturating_add(len))
            .ok_or_else(|| self.tensor_error(name, "extends past the end of the file".into()))?;
        Ok(Some(QuantBlocks {
            format,
            data: Cow::Borrowed(data),
        }))
    }
}

impl GgufWeights {
    /// The file mapped read-only, mapped on first use and kept while the weights are read.
    fn mapped(&self) -> Result<&memmap2::Mmap> {
        if let Some(mapped) = self.mapped.get() {
            return Ok(mapped);
        }
        let file = self.file.lock().map_err(|_| {
            ModelError::file(&self.path, "file handle poisoned by an earlier failure")
        })?;
        // SAFETY: mapped read-only, like the safetensors files above: we rely on nobody
        // truncating the model file while it is being read.
        #[allow(unsafe_code)]
        let mapped = unsafe { memmap2::Mmap::map(&*file) }
            .map_err(|e| ModelError::file(&self.path, format!("cannot map the file: {e}")))?;
        Ok(self.mapped.get_or_init(|| mapped))
    }

    /// Whether the CPU kernels can serve every tensor of the file without expanding it:
    /// each is dense (f32, f16, bf16) or in one of their quantized formats.
    pub fn cpu_kernels_take_every_tensor(content: &gguf_file::Content) -> bool {
        content.tensor_infos.values().all(|info| {
            matches!(
                info.ggml_dtype,
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            ) || QuantFormat::from_ggml(info.ggml_dtype).is_some()
        })
    }
}

/// Another source's matrices quantized at load (`--quantize`), so a dense checkpoint runs on
/// the CPU integer kernels in a fraction of the memory without a conversion step. Quantization
/// uses ggml's rounding (candle's quantizer): the same blocks llama.cpp's tools would write.
/// A K format needs rows of whole 256-value super-blocks; other matrices fall back to its
/// 32-value sibling (`q4_k` to `q4_0`, as llama.cpp's quantizer does), and matrices whose `in`
/// is not a multiple of 32 stay dense.
pub struct QuantizingWeights<'a> {
    pub inner: &'a dyn WeightSource,
    pub format: QuantFormat,
}

impl QuantizingWeights<'_> {
    /// The format a `(_, inp)` matrix is quantized in, `None` to keep it dense.
    pub fn format_for(&self, inp: usize) -> Option<QuantFormat> {
        let fallback = match self.format {
            QuantFormat::Q4K => QuantFormat::Q4_0,
            QuantFormat::Q5K => QuantFormat::Q5_0,
            QuantFormat::Q6K => QuantFormat::Q8_0,
            other => other,
        };
        [self.format, fallback]
            .into_iter()
            .find(|f| inp.is_multiple_of(f.gguf_block_values()))
    }
}

impl WeightSource for QuantizingWeights<'_> {
    fn naming(&self) -> Naming {
        self.inner.naming()
    }

    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.inner.dense(name, shape)
    }

    fn linear(&self, name: &str, out_in: (usize, usize), with_bias: bool) -> Result<Linear> {
        self.inner.linear(name, out_in, with_bias)
    }

    fn quantized_blocks(
        &self,
        name: &str,
        (out, inp): (usize, usize),
    ) -> Result<Option<QuantBlocks<'_>>> {
        let Some(format) = self.format_for(inp) else {
            tracing::warn!(
                tensor = name,
                columns = inp,
                format = self.format.name(),
                "not a multiple of 32 columns: kept dense"
            );
            return Ok(None);
        };
        if format != self.format {
            tracing::info!(
                tensor = name,
                columns = inp,
                asked = self.format.name(),
                format = format.name(),
                "columns are not whole super-blocks of 256: quantized in the 32-value format"
            );
        }
        let dense = self.inner.dense(name, &[out, inp])?.to_dtype(DType::F32)?;
        let blocks = QTensor::quantize(&dense, format.ggml_dtype())?;
        Ok(Some(QuantBlocks {
            format,
            data: Cow::Owned(blocks.data()?.into_owned()),
        }))
    }
}
