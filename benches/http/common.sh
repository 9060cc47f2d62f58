# Sourced by the HTTP benchmark scripts.

# Waits until `curl URL` succeeds (2 minutes at most).
wait_ready() { # url
    for _ in $(seq 1 600); do
        if curl -sf -o /dev/null "$1"; then return 0; fi
        sleep 0.2
    done
    echo "server at $1 did not become ready" >&2
    return 1
}
