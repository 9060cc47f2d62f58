#!/usr/bin/env bash
# Builds `lantern --features cuda` on a machine without a GPU or a CUDA install: nvcc, headers
# and libraries come from PyPI (`cuda-toolkit`), and libcuda.so (the driver, which only a GPU
# host has) is replaced at link time by a stub built from cuda.h's function names. The result
# is the same binary the Dockerfile's GPU stage builds; it runs wherever a real driver is.
#
#   docker/build-cuda.sh            # CUDA_COMPUTE_CAP defaults to 80 (PTX runs on 80/86/89/90)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CUDA_VENV:-target/cuda-toolkit}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "cuda-toolkit[nvcc,cudart,cublas,curand,cccl]==13.4.3"
CUDA_ROOT="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
export CUDA_ROOT CUDA_PATH="$CUDA_ROOT" CUDA_HOME="$CUDA_ROOT"
export PATH="$CUDA_ROOT/bin:$PATH"

# The wheels ship versioned libraries only: give the linker the plain names it asks for.
for lib in "$CUDA_ROOT"/lib/lib*.so.*; do
    plain="${lib%%.so.*}.so"
    [ -e "$plain" ] || ln -s "$(basename "$lib")" "$plain"
done

# libcuda.so stub: every cu* function cuda.h declares (after the preprocessor has mapped the
# names to their exported versions, e.g. cuCtxCreate -> cuCtxCreate_v2), each returning an error.
stub_dir="$CUDA_ROOT/lib/stubs"
mkdir -p "$stub_dir"
if [ ! -e "$stub_dir/libcuda.so" ]; then
    gcc -E -P -I "$CUDA_ROOT/include" "$CUDA_ROOT/include/cuda.h" \
        | grep -oE 'CUresult +cu[A-Za-z0-9_]+ *\(' | grep -oE 'cu[A-Za-z0-9_]+' | sort -u \
        | awk '{printf "int %s(void) { return 999; }\n", $1}' > "$stub_dir/libcuda_stub.c"
    # SONAME libcuda.so.1: the binary then asks for the name the NVIDIA driver installs.
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub_dir/libcuda.so" "$stub_dir/libcuda_stub.c"
    ln -sf libcuda.so "$stub_dir/libcuda.so.1"
fi
export LIBRARY_PATH="$stub_dir:$CUDA_ROOT/lib:${LIBRARY_PATH:-}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$stub_dir -L native=$CUDA_ROOT/lib"

started=$(date +%s)
cargo build --release --features cuda --bin lantern
echo "CUDA build took $(( $(date +%s) - started )) s (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
