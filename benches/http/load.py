#!/usr/bin/env python3
"""Closed-loop load against an OpenAI-compatible /v1/completions endpoint (stdlib only).

For each concurrency level, that many clients each send requests back to back (streamed,
greedy, `ignore_eos`, a fixed number of new tokens, a distinct random prompt each) until
the level's request count is reached. Prints one Markdown row per level: output tokens/s
over the level's wall time, TTFT p50/p90 (first streamed text) and end-to-end latency p50.

    python3 load.py --url http://127.0.0.1:8080 --name lantern --concurrency 1,32

A stand-in until `lantern benchmark` (the benchmark tool issue) exists. Talks only to the
URL it is given; every level is bounded in requests and time.
"""
import argparse
import http.client
import json
import random
import statistics
import threading
import time
import urllib.parse

WORDS = ("river mountain quiet engine paper window orange silver garden music "
         "market winter yellow signal harbor forest candle planet rocket simple").split()


def one_request(url, prompt, new_tokens, timeout):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    body = json.dumps({
        "model": "any", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True,
    })
    started = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}: {response.read()[:200]!r}")
    first = None
    text = []
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        piece = "".join(c.get("text", "") for c in chunk.get("choices", []))
        if piece and first is None:
            first = time.perf_counter() - started
        text.append(piece)
    conn.close()
    return first if first is not None else float("nan"), time.perf_counter() - started


def level(url, concurrency, requests, new_tokens, timeout, seed):
    rng = random.Random(seed)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(24)) for _ in range(requests)]
    lock = threading.Lock()
    results, errors = [], []

    def client():
        while True:
            with lock:
                if not prompts:
                    return
                prompt = prompts.pop()
            try:
                results.append(one_request(url, prompt, new_tokens, timeout))
            except Exception as error:  # noqa: BLE001 - reported, not hidden
                errors.append(str(error))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return wall, results, errors


def percentile(values, q):
    values = sorted(v for v in values if v == v)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client and level")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    # Warm-up: one short request, not counted.
    one_request(args.url, "warm up", 8, args.timeout)
    for c in [int(v) for v in args.concurrency.split(",")]:
        requests = max(c * args.rounds, 4)
        wall, results, errors = level(args.url, c, requests, args.new_tokens, args.timeout, c)
        done = len(results)
        ttft = [r[0] for r in results]
        e2e = [r[1] for r in results]
        print(f"| {args.name} | {c} | {done} | {len(errors)} | {done * args.new_tokens / wall:.1f} "
              f"| {percentile(ttft, 0.5) * 1e3:.0f} | {percentile(ttft, 0.9) * 1e3:.0f} "
              f"| {statistics.median(e2e) if e2e else float('nan'):.2f} |", flush=True)
        for error in errors[:3]:
            print(f"  error: {error}", flush=True)


if __name__ == "__main__":
    main()
