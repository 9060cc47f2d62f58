#!/usr/bin/env bash
# Builds the GPU image's `lantern` on a machine without a GPU or a CUDA install, with the
# image's architecture list: SASS for compute capability 8.0 (A100, and A10G/L4 at 8.6/8.9,
# which run 8.0 code) and 9.0 (H100), plus PTX for 9.0 that the driver compiles for newer
# GPUs. candle's own kernels ship as PTX text for 8.0 (candle loads them as PTX; the driver
# compiles them once per process). Same source and flags as the Dockerfile's GPU stage, but
# CUDA 13.0 from PyPI (PyPI has no CUDA 12 nvcc; the image is built on NVIDIA's CUDA 12
# images for the drivers SageMaker runs): a different toolkit, so not the same bytes.
#
#   docker/build-cuda.sh                      # target/cuda-fat/release/lantern
#   LANTERN_FEATURES=cuda,flash-attn docker/build-cuda.sh   # hours on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
export LANTERN_CUDA_GENCODE="${LANTERN_CUDA_GENCODE:--gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
# shellcheck source=docker/cuda-env.sh
source docker/cuda-env.sh
target_dir="${CARGO_TARGET_DIR:-target/cuda-fat}"
features="${LANTERN_FEATURES:-cuda}"

started=$(date +%s)
cargo build --release --locked --features "$features" --bin lantern --target-dir "$target_dir"
seconds=$(( $(date +%s) - started ))
binary="$target_dir/release/lantern"
echo "CUDA build took $seconds s (features $features; $LANTERN_CUDA_GENCODE; candle PTX compute_$CUDA_COMPUTE_CAP)"
echo "binary: $(du -h "$binary" | cut -f1) ($binary)"
echo "needs:"; readelf -d "$binary" | grep NEEDED
echo "kernel images in the binary (cuobjdump):"
{ "$CUDA_ROOT/bin/cuobjdump" --list-elf "$binary" || true; } | grep -oE 'sm_[0-9]+a?' | sort | uniq -c | sed 's/$/ (SASS)/'
{ "$CUDA_ROOT/bin/cuobjdump" --list-ptx "$binary" || true; } | grep -oE 'sm_[0-9]+a?' | sort | uniq -c | sed 's/$/ (PTX)/'
