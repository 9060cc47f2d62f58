#!/bin/sh
# Container entrypoint. SageMaker starts containers as `docker run IMAGE serve`; any other
# arguments go straight to `lantern`. SageMaker's environment (SM_NUM_GPUS, HF_MODEL_ID,
# SAGEMAKER_BIND_TO_PORT, artifacts in /opt/ml/model) is read by `lantern serve` itself, which
# logs the resolved configuration once at start. `exec` makes lantern PID 1's successor, so it
# receives SIGTERM directly (SageMaker does not support tini as entrypoint).
set -eu
LANTERN_BIN="${LANTERN_BIN:-/usr/local/bin/lantern}"
if [ "$#" -eq 0 ] || [ "$1" = "serve" ]; then
    [ "$#" -gt 0 ] && shift
    exec "$LANTERN_BIN" serve "$@"
fi
exec "$LANTERN_BIN" "$@"
