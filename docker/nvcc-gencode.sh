#!/usr/bin/env bash
# nvcc with the architecture list Lantern ships, for crates built by cudaforge (candle's GGUF
# kernels, candle-flash-attn). cudaforge passes one `-gencode` derived from CUDA_COMPUTE_CAP,
# and turns 90 into sm_90a, whose code runs on H100 only and whose PTX no later GPU can load.
# This wrapper (cudaforge runs `$NVCC`) swaps that flag:
#  - object and library builds get every flag of LANTERN_CUDA_GENCODE (SASS per capability,
#    plus PTX for the newest, which later GPUs JIT-compile);
#  - `--ptx` builds (candle's own kernels, loaded as PTX text) keep one virtual architecture,
#    with the `a` suffix dropped.
set -euo pipefail
set -f # the gencode list is split on spaces, never globbed
real="${LANTERN_REAL_NVCC:?LANTERN_REAL_NVCC must name the real nvcc}"
gencode="${LANTERN_CUDA_GENCODE:?LANTERN_CUDA_GENCODE must list -gencode flags}"
ptx=false
for arg in "$@"; do
    [ "$arg" = "--ptx" ] && ptx=true
done
args=()
for arg in "$@"; do
    case "$arg" in
        -gencode=*)
            if $ptx; then
                args+=("${arg//90a/90}")
            else
                # shellcheck disable=SC2206 # deliberate split of the flag list
                args+=($gencode)
            fi
            ;;
        *) args+=("$arg") ;;
    esac
done
exec "$real" "${args[@]}"
