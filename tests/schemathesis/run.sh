#!/usr/bin/env bash
# schemathesis (every check) against the real binary on a tiny dummy model; fails on any
# failure. Usage: tests/schemathesis/run.sh PYTHON_VENV_BIN [LANTERN_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV_BIN=$1
LANTERN=${2:-target/debug/lantern}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
"$LANTERN" dummy-model --arch qwen2 --out "$work/model" >/dev/null
# Short generations: every generated request stays fast. Qwen2: its template without tools is
# ChatML, short enough for chat prompts to fit the 64 tokens.
"$LANTERN" serve --model-id "$work/model" --host 127.0.0.1 --port 0 --kv-cache-memory 32Mi \
    --max-total-tokens 64 >"$work/stdout" 2>"$work/stderr" &
server=$!
for _ in $(seq 1 300); do
    base=$(sed -n 's/^lantern listening on //p' "$work/stdout")
    if [ -n "$base" ] && curl -sf -o /dev/null "$base/ping"; then break; fi
    sleep 0.2
done
# Two seeds explore different corners (seed 11 found a float just above its maximum); the
# examples per seed keep .ci/run within its time.
for seed in ${SCHEMATHESIS_SEEDS:-1 11}; do
    echo "schemathesis seed $seed"
    "$VENV_BIN/schemathesis" --config-file tests/schemathesis/schemathesis.toml run \
        "$base/openapi.json" --checks all --max-examples "${SCHEMATHESIS_EXAMPLES:-30}" \
        --seed "$seed" --no-color
done
