//! How many engines serve the model, and where: `--data-parallel N`, or by default one per
//! visible GPU when the model fits one GPU (a model that needs several GPUs would need tensor
//! parallelism, which Lantern does not have yet: it then runs one engine).

use candle_core::Device;
use lantern_kernels::device_choice::DeviceChoice;

/// Of the memory an engine may use on its GPU, the share its weights may take for the model
/// to count as fitting: the rest holds the KV cache and the step's activations. Below a
/// fifth for the cache, an engine would serve few sequences, and one engine with the other
/// GPUs' help (tensor parallelism) would serve better.
const WEIGHTS_SHARE_TO_FIT: f64 = 0.8;

/// What the first engine's GPU showed once the weights were on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FirstGpu {
    /// GPUs usable from the first engine's on (the first included).
    pub usable_gpus: usize,
    /// Bytes the weights took on the first GPU.
    pub weights_bytes: usize,
    /// Bytes an engine may use on a GPU (`--gpu-memory-utilization` of its memory).
    pub budget_bytes: usize,
}

/// The default engine count on GPUs, and the line to log when it is one for lack of room.
pub fn default_gpu_engines(gpu: FirstGpu) -> (usize, Option<String>) {
    if gpu.usable_gpus <= 1 {
        return (1, None);
    }
    let fits = (gpu.weights_bytes as f64) <= gpu.budget_bytes as f64 * WEIGHTS_SHARE_TO_FIT;
    if fits {
        (gpu.usable_gpus, None)
    } else {
        let note = format!(
            "the weights ({} MiB) leave too little of one GPU's budget ({} MiB) for the KV cache; \
             tensor parallelism is not supported yet, so one engine serves on one of the {} GPUs",
            gpu.weights_bytes >> 20,
            gpu.budget_bytes >> 20,
            gpu.usable_gpus
        );
        (1, Some(note))
    }
}

/// The device of each of `engines` engines, the first being `first` (already open): all on
/// the CPU, or consecutive GPUs from the first's.
pub fn engine_devices(
    first: &Device,
    engines: usize,
    visible_gpus: usize,
) -> anyhow::Result<Vec<DeviceChoice>> {
    let first_ordinal = match first.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
        _ => return Ok(vec![DeviceChoice::Cpu; engines]),
    };
    if engines <= 1 {
        // The one device is open already, whatever the platform says it has.
        return Ok(vec![DeviceChoice::Cuda(first_ordinal)]);
    }
    if first_ordinal + engines > visible_gpus {
        anyhow::bail!(
            "--data-parallel {engines} needs {engines} GPUs from cuda:{first_ordinal}, but {visible_gpus} are visible: lower --data-parallel (LANTERN_DATA_PARALLEL) or give the container more GPUs"
        );
    }
    Ok((first_ordinal..first_ordinal + engines)
        .map(DeviceChoice::Cuda)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    #[test]
    fn a_model_that_fits_one_gpu_gets_an_engine_on_each() {
        let gpu = FirstGpu {
            usable_gpus: 4,
            weights_bytes: 15 * GIB,
            budget_bytes: 21 * GIB,
        };
        assert_eq!(default_gpu_engines(gpu), (4, None));
    }

    #[test]
    fn a_model_that_leaves_no_room_for_its_cache_gets_one_engine_and_says_why() {
        let gpu = FirstGpu {
            usable_gpus: 4,
            weights_bytes: 19 * GIB,
            budget_bytes: 21 * GIB,
        };
        let (engines, note) = default_gpu_engines(gpu);
        assert_eq!(engines, 1);
        assert!(note.is_some_and(|n| n.contains("tensor parallelism is not supported yet")));
        let single = FirstGpu {
            usable_gpus: 1,
            ..gpu
        };
        assert_eq!(default_gpu_engines(single), (1, None));
    }

    #[test]
    fn engines_take_consecutive_gpus_and_the_cpu_holds_any_number() {
        assert_eq!(
            engine_devices(&Device::Cpu, 3, 0).ok(),
            Some(vec![DeviceChoice::Cpu; 3])
        );
    }
}
