//! Which device runs the model, and what a CUDA device offers: free and total memory (to size
//! the KV cache), compute capability (which kernels run on it).

use candle_core::Device;

/// `--device`: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA GPU 0 when this build has CUDA and a GPU answers, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

/// Oldest compute capability the GPU build has kernels for: candle's kernels ship as PTX for
/// compute capability 8.0 (Ampere: A100, A10G), which the driver compiles for newer GPUs.
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// KV block sizes when none is configured: 16 tokens on the CPU (less padding per sequence),
/// 32 on a GPU (FlashAttention's paged layout needs a multiple of 32).
pub const CPU_BLOCK_SIZE: usize = 16;
pub const GPU_BLOCK_SIZE: usize = 32;

/// The block size `serve`, the self-tests and the engine benchmark use on `device` by default.
pub fn default_block_size(device: &Device) -> usize {
    if device.is_cpu() {
        CPU_BLOCK_SIZE
    } else {
        GPU_BLOCK_SIZE
    }
}

impl DeviceChoice {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("device {text:?}: auto, cpu, cuda or cuda:N")),
        }
    }

    /// Opens the device. An explicit CUDA choice that cannot be honoured is an error naming
    /// the cause and the fix; `auto` falls back to the CPU, and says why in `fallback`.
    pub fn open(self) -> Result<Opened, String> {
        match self {
            Self::Cpu => Ok(Opened {
                device: Device::Cpu,
                fallback: None,
            }),
            Self::Cuda(ordinal) => open_cuda(ordinal).map(|device| Opened {
                device,
                fallback: None,
            }),
            Self::Auto if !cfg!(feature = "cuda") => Ok(Opened {
                device: Device::Cpu,
                fallback: Some("this build has no CUDA support".into()),
            }),
            Self::Auto => match open_cuda(0) {
                Ok(device) => Ok(Opened {
                    device,
                    fallback: None,
                }),
                Err(reason) => Ok(Opened {
                    device: Device::Cpu,
                    fallback: Some(reason),
                }),
            },
        }
    }
}

/// An opened device; `fallback` says why `auto` chose the CPU.
#[derive(Debug, Clone)]
pub struct Opened {
    pub device: Device,
    pub fallback: Option<String>,
}

/// Whether the GPU build has kernels for compute capability `(major, minor)`, and if not,
/// what to do.
pub fn check_compute_capability(capability: (i32, i32)) -> Result<(), String> {
    if capability >= MIN_COMPUTE_CAPABILITY {
        return Ok(());
    }
    let (major, minor) = capability;
    Err(format!(
        "the GPU has compute capability {major}.{minor}, older than the {}.{} this build has kernels for: use an Ampere or newer GPU (SageMaker ml.g5, ml.g6, ml.p4d, ml.p5; EC2 g5, g6, p4d, p5), or the CPU image",
        MIN_COMPUTE_CAPABILITY.0, MIN_COMPUTE_CAPABILITY.1
    ))
}

/// A driver error in words a user can act on (the raw error stays in the message, without
/// the backtrace candle appends to it when RUST_BACKTRACE is set: one line for the log).
pub fn explain_cuda_error(error: &str) -> String {
    let error = error.lines().next().unwrap_or_default().trim_end();
    let fix = if error.contains("CUDA_ERROR_NO_DEVICE") {
        "no GPU is visible to this process: run the container with `--gpus all` (ECS: a GPU resource requirement; EKS: an nvidia.com/gpu limit), or serve on the CPU with --device cpu"
    } else if error.contains("CUDA_ERROR_INSUFFICIENT_DRIVER")
        || error.contains("CUDA_ERROR_UNSUPPORTED_PTX_VERSION")
        || error.contains("CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE")
    {
        "the NVIDIA driver is older than this build's CUDA version: use a host with a newer driver (SageMaker: an InferenceAmiVersion with driver 550 or later, as docker/sagemaker/deploy.py sets)"
    } else if error.contains("999")
        || error.contains("CUDA_ERROR_UNKNOWN")
        || error.contains("CUDA_ERROR_STUB_LIBRARY")
    {
        "no NVIDIA driver was found (libcuda.so.1): run on a GPU host with the NVIDIA container toolkit (`docker run --gpus all`), or serve on the CPU with --device cpu"
    } else {
        "check `nvidia-smi` on the host"
    };
    format!("cannot use the GPU ({error}): {fix}")
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, String> {
    let device = Device::new_cuda(ordinal).map_err(|e| explain_cuda_error(&format!("{e:?}")))?;
    let capability =
        compute_capability(&device).ok_or("cannot read the GPU's compute capability")?;
    check_compute_capability(capability)?;
    Ok(device)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device, String> {
    Err("this build has no CUDA support: use the GPU image (or build with --features cuda), or --device cpu".into())
}

/// CUDA GPUs this process can see (0 without CUDA support or a driver).
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    if let Ok(count) = cudarc::driver::CudaContext::device_count() {
        return usize::try_from(count).unwrap_or(0);
    }
    0
}

/// Free and total bytes of the device's memory (`None` on the CPU).
pub fn memory_info(device: &Device) -> Option<(usize, usize)> {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        return cuda.cuda_stream().context().mem_get_info().ok();
    }
    let _ = device;
    None
}

/// The GPU's compute capability (`None` on the CPU).
pub fn compute_capability(device: &Device) -> Option<(i32, i32)> {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        return cuda.cuda_stream().context().compute_capability().ok();
    }
    let _ = device;
    None
}

/// Short name for logs and `/info`: `cpu` or `cuda:0`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!(DeviceChoice::parse("auto"), Ok(DeviceChoice::Auto));
        assert_eq!(DeviceChoice::parse("CPU"), Ok(DeviceChoice::Cpu));
        assert_eq!(DeviceChoice::parse("cuda"), Ok(DeviceChoice::Cuda(0)));
        assert_eq!(DeviceChoice::parse("cuda:3"), Ok(DeviceChoice::Cuda(3)));
        assert!(DeviceChoice::parse("cuda:x").is_err());
        assert!(DeviceChoice::parse("tpu").is_err());
    }

    #[test]
    fn only_ampere_and_newer_have_kernels() {
        for ok in [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)] {
            assert!(check_compute_capability(ok).is_ok(), "{ok:?}");
        }
        for old in [(7, 5), (7, 0), (6, 1)] {
            let Err(error) = check_compute_capability(old) else {
                panic!("{old:?} must be refused");
            };
            assert!(error.contains("ml.g5"), "{error}");
        }
    }

    #[test]
    fn default_block_sizes_suit_each_device() {
        assert_eq!(default_block_size(&Device::Cpu), CPU_BLOCK_SIZE);
        // On a GPU the default must be one FlashAttention's paged layout accepts.
        assert_eq!(GPU_BLOCK_SIZE % 32, 0);
    }

    #[test]
    fn driver_errors_name_a_fix() {
        let no_gpu = explain_cuda_error(
            "DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device is detected\")",
        );
        assert!(no_gpu.contains("--gpus all"), "{no_gpu}");
        let old = explain_cuda_error("DriverError(CUDA_ERROR_INSUFFICIENT_DRIVER, \"\")");
        assert!(old.contains("InferenceAmiVersion"), "{old}");
        // The GPU image's entrypoint puts the stub libcuda on the path when no driver is there.
        let stub = explain_cuda_error("DriverError(CUDA_ERROR_STUB_LIBRARY, \"\")");
        assert!(stub.contains("no NVIDIA driver"), "{stub}");
        // candle's error with its backtrace (RUST_BACKTRACE=1): still one line.
        let traced = explain_cuda_error(
            "DriverError(CUDA_ERROR_UNKNOWN, \"\")\n   0: candle_core::error::Error::bt\n  14: _start",
        );
        assert!(traced.contains("no NVIDIA driver"), "{traced}");
        assert!(
            !traced.contains('\n') && !traced.contains("_start"),
            "{traced}"
        );
    }

    #[test]
    fn auto_without_cuda_falls_back_to_the_cpu_and_says_why() {
        if cfg!(feature = "cuda") {
            return; // with CUDA, auto depends on the machine
        }
        let opened = DeviceChoice::Auto.open().expect("the CPU always opens");
        assert!(opened.device.is_cpu());
        assert!(opened.fallback.is_some());
        assert!(DeviceChoice::Cuda(0).open().is_err());
    }
}
