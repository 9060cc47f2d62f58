#!/usr/bin/env python3
"""Gathers what verify.sh wrote into OUT/results.json and OUT/results.md (the tables that go
into benches/RESULTS.md). Exits non-zero if a check says it failed."""
import datetime
import json
import pathlib
import sys


def read_lines(path):
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            pass  # a stray non-JSON line in a step's stdout is not a result
    return lines


def gpu_utilisation(out, steps):
    """Mean and max GPU utilisation (nvidia-smi samples every 500 ms) within each step."""
    samples = []
    csv = out / "nvidia-smi.csv"
    if csv.exists():
        for row in csv.read_text().splitlines():
            parts = [p.strip() for p in row.split(",")]
            try:
                when = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                samples.append((when, float(parts[1]), float(parts[2])))
            except (ValueError, IndexError):
                continue
    result = {}
    for step in steps:
        inside = [s for s in samples if step["started"] <= s[0] <= step["ended"]]
        if inside:
            result[step["step"]] = {
                "mean_percent": sum(s[1] for s in inside) / len(inside),
                "max_memory_mib": max(s[2] for s in inside),
            }
    return result


def main():
    out = pathlib.Path(sys.argv[1])
    steps = read_lines(out / "steps.jsonl") if (out / "steps.jsonl").exists() else []
    by_step = {p.stem: read_lines(p) for p in sorted(out.glob("*.jsonl")) if p.stem != "steps"}
    utilisation = gpu_utilisation(out, steps)
    environment = (by_step.get("environment") or [{}])[0]
    failures = [(name, line) for name, lines in by_step.items() for line in lines
                if line.get("pass") is False]
    failures += [(s["step"], {"exit": s["exit"]}) for s in steps if s["exit"] != 0]
    (out / "results.json").write_text(json.dumps(
        {"steps": steps, "results": by_step, "gpu_utilisation": utilisation}, indent=1))

    md = [f"GPU: {environment.get('gpu', '?')}; torch {environment.get('torch', '?')} "
          f"(CUDA {environment.get('torch_cuda', '?')}), transformers "
          f"{environment.get('transformers', '?')}; CPU: {environment.get('cpu', '?')}; "
          f"--device {environment.get('device_flag', '?')}; "
          f"lantern binary {environment.get('lantern_size_bytes', 0) / 2**20:.1f} MiB; "
          f"missing libraries: {environment.get('ldd_not_found') or 'none'}", ""]
    parity = by_step.get("parity", [])
    if parity:
        md += ["| family | dtype | kernels | attention | max abs diff vs CPU f32 | top-1 agreement | pass |",
               "|---|---|---|---|---:|---:|---|"]
        md += [f"| {p['family']} | {p['dtype']} | {p['kernels']} | {p['attention']} | "
               f"{p['max_abs_diff']:.2e} | {p['top1_agreement']:.3f} | {p['pass']} |" for p in parity]
        md.append("")
    engine = [line for name in ("engine_f32", "engine_bf16") for line in by_step.get(name, [])]
    if engine:
        md += ["| engine check | dtype | identical requests | detail | pass |", "|---|---|---:|---|---|"]
        md += [f"| {e['check']} | {e['dtype']} | {e['identical_requests']}/{e['requests']} | "
               f"{json.dumps(e['detail'])} | {e['pass']} |" for e in engine]
        md.append("")
    for step in steps:
        if step["step"] == "memcheck":
            md += [f"memcheck: compute-sanitizer exit {step['exit']} (0: no errors)", ""]

    rows = []
    for name, lines in by_step.items():
        if not name.startswith("lantern_"):
            continue
        model = name.removeprefix("lantern_")
        baseline = {b["concurrency"]: b for b in by_step.get(f"transformers_{model}", [])
                    if "concurrency" in b}
        util = utilisation.get(name, {})
        for line in lines:
            hf = baseline.get(line["concurrency"])
            rows.append(
                f"| {model} | {line['dtype']} | {line['attention']} | {line['concurrency']} | "
                f"{line['tokens_per_second']:.1f} | {line['ttft_p50_ms']:.0f} | "
                f"{line.get('process_cpu_seconds', float('nan')):.1f} | "
                + (f"{hf['tokens_per_second']:.1f} | {line['tokens_per_second'] / hf['tokens_per_second']:.2f}x"
                   if hf else "SKIPPED | -")
                + (f" | {util['mean_percent']:.0f} |" if util else " | - |"))
    if rows:
        first = next(l for n, ls in by_step.items() if n.startswith("lantern_") for l in ls)
        md += [f"Throughput: prompt {first['prompt_tokens']} tokens, {first['new_tokens']} new "
               "tokens, greedy, all requests at once; transformers `generate` as one static batch.",
               "",
               "| model | dtype | attention | concurrency | Lantern tok/s | TTFT p50 ms | "
               "Lantern CPU s | transformers tok/s | Lantern / transformers | GPU util % (Lantern step) |",
               "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"] + rows
    md += [""] + [f"- {name}: {s}" for name, lines in by_step.items()
                  for line in lines if (s := line.get("skipped"))]
    md += [""] + [f"FAILED: {name}: {json.dumps(line)}" for name, line in failures]
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
