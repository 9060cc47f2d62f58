# Sourced by the no-GPU CUDA builds (docker/build-cuda.sh, benches/gpu/build.sh): a CUDA 13.0
# toolkit from PyPI (13.0 = driver 580, the GPU machines available for verification; PyPI has
# no CUDA 12 nvcc, so the Docker image builds from NVIDIA's CUDA 12 images instead, same
# source and architecture list), a stub libcuda.so for the linker (the driver lives on GPU
# hosts only), and nvcc wrapped to emit LANTERN_CUDA_GENCODE.
#   in:  LANTERN_CUDA_GENCODE, optional CUDA_VENV (default target/cuda-toolkit)
#   out: CUDA_ROOT, PATH, NVCC, LIBRARY_PATH, RUSTFLAGS, CUDA_COMPUTE_CAP (if unset: 80)
CUDA_TOOLKIT_PIN="13.0.*"
VENV="${CUDA_VENV:-target/cuda-toolkit}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "cuda-toolkit[nvcc,cudart,cublas,curand,cccl]==$CUDA_TOOLKIT_PIN"
# cuobjdump (to list the SASS and PTX a binary carries) is on PyPI from 13.2 only; it reads
# binaries of older toolkits.
"$VENV/bin/pip" install --quiet --no-deps --disable-pip-version-check "nvidia-cuda-cuobjdump==13.2.*"
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

# Beside the real nvcc: cudaforge finds the toolkit's include and lib folders from $NVCC's place.
export LANTERN_REAL_NVCC="$CUDA_ROOT/bin/nvcc"
cp docker/nvcc-gencode.sh "$CUDA_ROOT/bin/nvcc-gencode"
export NVCC="$CUDA_ROOT/bin/nvcc-gencode"
export LANTERN_CUDA_GENCODE="${LANTERN_CUDA_GENCODE:?set LANTERN_CUDA_GENCODE}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
# candle-flash-attn fetches CUTLASS from GitHub; the pinned commit from the vendored pack.
if [ -x ../shared/tools/cutlass-offline.sh ]; then
    ../shared/tools/cutlass-offline.sh >/dev/null
fi
