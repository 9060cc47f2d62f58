#!/usr/bin/env bash
# nvcc with the architecture list Lantern ships, for crates built by cudaforge (candle's GGUF
# kernels, candle-flash-attn). cudaforge passes one `-gencode` derived from CUDA_COMPUTE_CAP,
# and turns 90 into sm_90a, whose code runs on H100 only and whose PTX no later GPU can load.
# This wrapper (cudaforge runs `$NVCC`) swaps that flag:
#  - object and library builds get every flag of LANTERN_CUDA_GENCODE (SASS per capability,
#    plus PTX for the newest, which later GPUs JIT-compile);
#  - `--ptx` builds (candle's own kernels, loaded as PTX text) keep one virtual architecture,
#    with the `a` suffix dropped.
# And it compiles only the FlashAttention kernels Lantern calls (see flash_stub below).
set -euo pipefail
set -f # the gencode list is split on spaces, never globbed
real="${LANTERN_REAL_NVCC:?LANTERN_REAL_NVCC must name the real nvcc}"
gencode="${LANTERN_CUDA_GENCODE:?LANTERN_CUDA_GENCODE must list -gencode flags}"

# Lantern calls FlashAttention only with a block table (kernels/src/flash.rs), which
# candle-flash-attn's flash_api.cu serves with its split-KV kernels for head sizes up to 64,
# 128 and 256 (Lantern sends nothing above 256). Its other 40 files (the contiguous-K/V
# kernels for every head size, split-KV for 512) are three quarters of its build time and
# binary size and are never launched: each is compiled as a stub that defines the same
# function and aborts with its name, should a future caller reach it.
flash_kept='^(flash_api|flash_fwd_splitkv_hdim(64|128|256)_.*)\.cu$'

ptx=false
source_file=""
object_file=""
previous=""
for arg in "$@"; do
    [ "$arg" = "--ptx" ] && ptx=true
    [ "$previous" = "-o" ] && object_file="$arg"
    case "$arg" in *.cu) source_file="$arg" ;; esac
    previous="$arg"
done

# cudaforge names sources relative to the crate, which is the build script's directory.
source_path="$source_file"
[ -n "$source_path" ] && [ "${source_path#/}" = "$source_path" ] && source_path="$PWD/$source_path"
flash=false
case "$source_path" in
    */candle-flash-attn-*/kernels/flash_*.cu) flash=true ;;
esac

# The stub: the file's own specialisation (same `template<>` signature line), its body
# replaced by an abort; flash.h declares the template, CUTLASS the element types.
flash_stub() {
    local original="$1" stub="$2"
    {
        echo '#include <cstdio>'
        echo '#include <cstdlib>'
        echo '#include "cutlass/numeric_types.h"'
        echo '#include "flash.h"'
        echo 'template<>'
        grep -E '^void run_mha_fwd_' "$original" | sed 's/ *{ *$//'
        echo '{'
        echo "    std::fprintf(stderr, \"lantern: FlashAttention kernel $(basename "$original") is not in this build\\n\");"
        echo '    std::abort();'
        echo '}'
    } > "$stub"
}

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
        "$source_file")
            if $flash && ! [[ "$(basename "$arg")" =~ $flash_kept ]] && [ -n "$object_file" ]; then
                stub="$object_file.stub.cu"
                flash_stub "$arg" "$stub"
                args+=("-I$(dirname "$source_path")" "$stub")
            else
                args+=("$arg")
            fi
            ;;
        *) args+=("$arg") ;;
    esac
done
exec "$real" "${args[@]}"
