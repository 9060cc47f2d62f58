#!/usr/bin/env bash
# Build llama.cpp's `llama-server` as a benchmark peer for Lantern.
#
# The only network access available is the package registries (PyPI, crates.io,
# Debian apt, npm), so llama.cpp is taken from the `llama-cpp-python` source
# distribution on PyPI, which vendors a full llama.cpp tree under
# vendor/llama.cpp. Nothing else is fetched: no git, no GitHub, no Hugging Face.
#
# Output: target/llama-cpp/bin/llama-server and target/llama-cpp/bin/llama-quantize
# (statically linked against llama/ggml, self-contained binaries; the quantizer
# makes the Q4_K_M and Q8_0 benchmark files from `lantern dummy-model --format
# gguf`). Each is built only when missing: with both there, the script does
# nothing but print their paths.
#
# Usage: benches/llama_cpp/build.sh      (from anywhere; takes ~5-10 min on 2 cores)
# Env:   JOBS=<n>  parallel compile jobs (default 2)
set -euo pipefail

# Pinned llama-cpp-python release; its CHANGELOG says it vendors
# ggml-org/llama.cpp@0c1e57098 (used below as the reported build commit).
LLAMA_CPP_PYTHON_VERSION="0.3.36"
LLAMA_CPP_COMMIT="0c1e57098"
JOBS="${JOBS:-2}"

# Work relative to the repository root.
cd "$(dirname "$0")/../.."
ROOT="$PWD"
WORK="$ROOT/target/llama-cpp"
VENV="$WORK/venv"
SRC="$WORK/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
LLAMA_SRC="$SRC/vendor/llama.cpp"
BUILD="$WORK/build-$LLAMA_CPP_PYTHON_VERSION"
BIN="$WORK/bin/llama-server"
QUANTIZE="$WORK/bin/llama-quantize"

# Idempotent: skip everything when both binaries are already there.
if [[ -x "$BIN" && -x "$QUANTIZE" ]]; then
    echo "llama-server already built: $BIN"
    echo "llama-quantize already built: $QUANTIZE"
    exit 0
fi

mkdir -p "$WORK/bin"
start=$SECONDS

# 1. Build tools (cmake, ninja) from PyPI into a private venv.
if [[ ! -x "$VENV/bin/cmake" || ! -x "$VENV/bin/ninja" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet cmake ninja
fi
export PATH="$VENV/bin:$PATH"

# 2. Fetch and unpack the sdist.
# Note: `--no-binary llama-cpp-python` (rather than `:all:`) is used on purpose:
# pip still prepares the sdist's metadata, and with `:all:` it would also build
# the build backend's own dependencies (cmake, ninja, ...) from source, which
# takes tens of minutes on this machine. The downloaded file is the same sdist.
SDIST="$WORK/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    "$VENV/bin/pip" download --quiet --no-deps \
        --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$WORK"
fi
if [[ ! -f "$LLAMA_SRC/CMakeLists.txt" ]]; then
    tar -xzf "$SDIST" -C "$WORK"
fi

# The unpacked tree lives inside the Lantern git checkout (target/ is ignored).
# llama.cpp's build-info.cmake runs `git rev-parse`/`git rev-list` in its source
# dir, which would otherwise pick up Lantern's repository and report a bogus
# build number/commit. Stop git's repository discovery above target/llama-cpp.
export GIT_CEILING_DIRECTORIES="$WORK"

# 3. Configure.
# Flags:
#  - Release + Ninja.
#  - BUILD_SHARED_LIBS=OFF: link libllama/libggml statically so the copied
#    binary is self-contained (standalone default is shared libs in build/bin).
#  - GGML_NATIVE=ON: -march=native. Fine here: the binary is only a local
#    benchmark peer on this machine, never shipped elsewhere.
#  - No AMX (-mno-amx-*, which win over -march=native whatever their order):
#    the Xeon VMs this runs on list amx_tile in /proc/cpuinfo, yet llama-server
#    built with AMX died of SIGILL at its first `tilezero` (2026-12-07). AMX
#    only serves ggml's batched products; Lantern uses none either.
#  - LLAMA_BUILD_SERVER=ON (tools must be ON for the server subdirectory);
#    tests, examples and the unified `llama` app are off (less to configure).
#  - Curl: this llama.cpp version no longer uses libcurl at all (LLAMA_CURL is
#    deprecated and ignored; model downloads go through cpp-httplib). The
#    equivalent "no network client deps" switch is LLAMA_OPENSSL=OFF
#    (no HTTPS support; we only serve local GGUF files on 127.0.0.1).
#  - Web UI workaround: the sdist ships the Svelte UI sources (tools/ui) but not
#    a built `dist/`, and by default the build tries to download prebuilt assets
#    from a Hugging Face bucket (unreachable here) or build them with npm.
#    LLAMA_BUILD_UI=OFF + LLAMA_USE_PREBUILT_UI=OFF makes scripts/ui-assets.cmake
#    emit an empty asset table: the server works, just without the browser UI
#    (the HTTP API used by the benchmarks is unaffected).
#  - LLAMA_BUILD_COMMIT: the upstream commit from the sdist CHANGELOG, so that
#    `--version` reports something meaningful (no .git in the sdist).
CMAKE_FLAGS=(
    -G Ninja
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=ON
    "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    "-DLLAMA_BUILD_COMMIT=$LLAMA_CPP_COMMIT"
)
echo "cmake flags: ${CMAKE_FLAGS[*]}"
cmake -S "$LLAMA_SRC" -B "$BUILD" "${CMAKE_FLAGS[@]}"

# 4. Build the missing targets only, and 5. install them into target/llama-cpp/bin.
for target in llama-server llama-quantize; do
    if [[ -x "$WORK/bin/$target" ]]; then
        echo "$target already built: $WORK/bin/$target"
        continue
    fi
    cmake --build "$BUILD" --target "$target" -j "$JOBS"
    cp "$BUILD/bin/$target" "$WORK/bin/$target.tmp"
    mv "$WORK/bin/$target.tmp" "$WORK/bin/$target"
    echo "$target built: $WORK/bin/$target"
done

echo "build took $((SECONDS - start))s"
