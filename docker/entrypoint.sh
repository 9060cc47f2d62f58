#!/bin/sh
# Container entrypoint. SageMaker starts containers as `docker run IMAGE serve`; any other
# arguments go straight to `lantern`. SageMaker's environment (SM_NUM_GPUS, HF_MODEL_ID,
# SAGEMAKER_BIND_TO_PORT, artifacts in /opt/ml/model) is read by `lantern serve` itself, which
# logs the resolved configuration once at start. `exec` makes lantern PID 1's successor, so it
# receives SIGTERM directly (SageMaker does not support tini as entrypoint).
#
# In the GPU image (LANTERN_IMAGE_CUDA set) it first looks at the GPU with nvidia-smi:
#  - a driver older than the image's CUDA needs (LANTERN_DRIVER_MIN): the image's CUDA
#    forward-compatibility libraries go first on the library path (datacenter GPUs only; on
#    others the driver refuses, and lantern says so);
#  - no driver in the container (no `--gpus all`): the stub libcuda goes on the library path
#    so that lantern starts, answers /ping with 503, logs one line naming the fix and exits
#    non-zero, instead of failing in the dynamic loader with no /ping at all;
#  - one log line says which of the image's kernels the GPU runs (sm_80 machine code on
#    8.x, sm_90 on 9.0, compute_90 PTX compiled by the driver on newer GPUs). A GPU older
#    than 8.0 is refused by lantern itself, with the instance types that work.
# LANTERN_DEVICE=cpu skips all of it.
set -eu
LANTERN_BIN="${LANTERN_BIN:-/usr/local/bin/lantern}"

log() { # one JSON log line on stderr, as lantern's own with LOG_FORMAT=json
    printf '{"level":"%s","target":"entrypoint","fields":{"message":"%s"}}\n' "$1" "$2" >&2
}

prepare_gpu() {
    [ -n "${LANTERN_IMAGE_CUDA:-}" ] || return 0
    [ "${LANTERN_DEVICE:-}" = "cpu" ] && return 0
    # The first GPU's line; nvidia-smi missing, or failing for want of a driver: none.
    gpu="$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null)" \
        || gpu=""
    gpu="$(printf '%s\n' "$gpu" | head -n 1)"
    name="$(echo "$gpu" | cut -d, -f1 | sed 's/^ *//;s/ *$//')"
    capability="$(echo "$gpu" | cut -s -d, -f2 | tr -d ' ')"
    driver="$(echo "$gpu" | cut -s -d, -f3 | tr -d ' ')"
    case "$capability" in
        [0-9]*.[0-9]*) ;;
        *)
            export LD_LIBRARY_PATH="${LANTERN_CUDA_STUB_DIR:-/usr/local/lib/lantern/stubs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            return 0
            ;;
    esac
    compat=""
    if [ "${driver%%.*}" -lt "${LANTERN_DRIVER_MIN:-550}" ] 2>/dev/null \
        && [ -d "${LANTERN_CUDA_COMPAT_DIR:-/usr/local/cuda/compat}" ]; then
        export LD_LIBRARY_PATH="${LANTERN_CUDA_COMPAT_DIR:-/usr/local/cuda/compat}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        compat="; driver $driver is older than CUDA $LANTERN_IMAGE_CUDA needs: CUDA forward-compatibility libraries in use"
    fi
    case "$capability" in
        8.*) code="sm_80 machine code" ;;
        9.0) code="sm_90 machine code" ;;
        [0-7].*) return 0 ;; # lantern refuses it, naming the GPUs that work
        *) code="compute_90 PTX, compiled by the driver at first start (slower start)" ;;
    esac
    log info "GPU $name (compute capability $capability, driver $driver) runs the image's $code$compat"
}

if [ "$#" -eq 0 ] || [ "$1" = "serve" ]; then
    [ "$#" -gt 0 ] && shift
    prepare_gpu
    exec "$LANTERN_BIN" serve "$@"
fi
exec "$LANTERN_BIN" "$@"
