#!/usr/bin/env bash
# Builds, on a machine without a GPU, the `lantern` that verify.sh runs on a GPU machine:
# compute capability 9.0 (SASS sm_90 plus compute_90 PTX; not 90a, whose PTX no later GPU
# runs), features cuda,flash-attn, CUDA 13.0 from PyPI: the driver of the GPU machines
# available for verification (580 / CUDA 13.0). The GPU image is built from NVIDIA's CUDA 12.4
# images instead (docker/build-cuda.sh, Dockerfile): same source, another toolkit and
# architecture list, so not the same binary.
#
# The self-tests are subcommands of this one binary (`lantern selftest ...`), so the
# FlashAttention kernels are linked once. Out: target/gpu-verify/carry/ (the stripped binary
# xz-compressed, and verify.sh with its Python helpers), which must stay under 64 MiB.
#
#   benches/gpu/build.sh        # ~30 min on 2 cores from a clean target; FlashAttention's 12
#                               # split-KV files (the ones Lantern launches, see
#                               # docker/nvcc-gencode.sh) are kept in target/flash-attn-sm90
set -euo pipefail
cd "$(dirname "$0")/../.."
export LANTERN_CUDA_GENCODE="-gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90"
export CUDA_COMPUTE_CAP=90
# shellcheck source=docker/cuda-env.sh
source docker/cuda-env.sh
target="${CARGO_TARGET_DIR:-target/gpu-verify}"
features="${LANTERN_FEATURES:-cuda,flash-attn}"
mkdir -p target/flash-attn-sm90
CANDLE_FLASH_ATTN_BUILD_DIR="$(cd target/flash-attn-sm90 && pwd)"
export CANDLE_FLASH_ATTN_BUILD_DIR

started=$(date +%s)
cargo build --release --locked --features "$features" --bin lantern --target-dir "$target"
echo "build: $(( $(date +%s) - started )) s (features $features; $LANTERN_CUDA_GENCODE)"

binary="$target/release/lantern"
carry="$target/carry"
rm -rf "$carry"
mkdir -p "$carry"
strip -o "$carry/lantern" "$binary"
xz -T0 -6 "$carry/lantern"
cp benches/gpu/verify.sh benches/gpu/report.py benches/gpu/make_dummy_8b.py \
    benches/gpu/hf_generate.py "$carry/"
echo "binary: $(stat -c %s "$binary") bytes; stripped and xz-compressed: $(stat -c %s "$carry/lantern.xz") bytes"
total=$(du -sb "$carry" | cut -f1)
echo "to carry ($carry): $total bytes"
# Libraries the GPU machine must provide: libcuda.so.1 from its driver, the CUDA runtime
# libraries from PyTorch's install there (verify.sh puts them on LD_LIBRARY_PATH). The stub
# libcuda used for linking here is never carried.
echo "needed libraries:"; readelf -d "$binary" | grep NEEDED
echo "kernel images (cuobjdump):"
{ "$CUDA_ROOT/bin/cuobjdump" --list-elf "$binary" || true; } | grep -oE 'sm_[0-9]+a?' | sort | uniq -c | sed 's/$/ (SASS)/'
{ "$CUDA_ROOT/bin/cuobjdump" --list-ptx "$binary" || true; } | grep -oE 'sm_[0-9]+a?' | sort | uniq -c | sed 's/$/ (PTX)/'
if [ "$total" -gt $((64 * 1024 * 1024)) ]; then
    echo "too big to carry: $total bytes > 64 MiB" >&2
    exit 1
fi
