#!/usr/bin/env bash
# One-shot check of Lantern's CUDA path on a GPU machine that has nvcc, PyTorch with its CUDA
# libraries, and transformers, but no Rust toolchain and no network. Carried there: this
# folder and the `lantern` (or `lantern.xz`) that benches/gpu/build.sh made.
#
#   verify.sh checks       # environment, ldd, parity on every family (f32, bf16), chunked
#                          # prefill, preemption, compute-sanitizer memcheck   (~3 min)
#   verify.sh throughput   # 1/32/64 concurrent on the `small` dummy and an 8B-shaped bf16
#                          # dummy, beside transformers `generate`             (~8 min)
#   verify.sh all          # both
#
# Options: --device cuda|cuda:N|cpu (cpu: a dry run of every step on this machine's CPU, with
# a small stand-in for the 8B model and lighter loads), --lantern PATH, --out DIR (default
# ./gpu-verify-out: one .jsonl per step, its log, env.json, results.json, results.md),
# --work DIR (model directories; default /tmp/lantern-verify, reused between runs).
# Exit status: non-zero if any step failed; a step that cannot run says SKIPPED and why.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
stage=all device=cuda out="$PWD/gpu-verify-out" work=/tmp/lantern-verify lantern=""
while [ $# -gt 0 ]; do
    case "$1" in
        checks|throughput|all) stage=$1 ;;
        --device) device=$2; shift ;;
        --out) out=$2; shift ;;
        --work) work=$2; shift ;;
        --lantern) lantern=$2; shift ;;
        *) echo "verify.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$out" "$work"
out="$(cd "$out" && pwd)"
python="${PYTHON:-python3}"
failed=0

if [ -z "$lantern" ]; then
    for candidate in "$here/lantern" "$PWD/lantern" "$here/lantern.xz" "$PWD/lantern.xz"; do
        [ -e "$candidate" ] && { lantern=$candidate; break; }
    done
fi
case "$lantern" in
    "") echo "verify.sh: no lantern binary beside the script or here (--lantern PATH)" >&2; exit 2 ;;
    *.xz) xz -dkf "$lantern" && lantern="${lantern%.xz}" && chmod +x "$lantern" ;;
esac
lantern="$(cd "$(dirname "$lantern")" && pwd)/$(basename "$lantern")"

# The CUDA libraries the binary needs (cuBLAS, cuRAND, the runtime) from PyTorch's install;
# libcuda.so.1 comes from the driver.
torch_libs="$("$python" - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for root in site.getsitepackages() + [site.getusersitepackages()]:
    for pattern in ("nvidia/*/lib", "nvidia/*/*/lib", "torch/lib"):
        for d in glob.glob(os.path.join(root, pattern)):
            if glob.glob(os.path.join(d, "*.so*")):
                dirs.add(d)
print(":".join(sorted(dirs)))
PY
)"
export LD_LIBRARY_PATH="${torch_libs:+$torch_libs:}${LD_LIBRARY_PATH:-}"

# step NAME COMMAND...: the command's stdout (JSON lines) to NAME.jsonl, its stderr to
# NAME.log; start, end and status to steps.jsonl.
step() {
    local name=$1; shift
    local started rc
    started=$(date +%s.%N)
    echo "== $name: $*" >&2
    "$@" > "$out/$name.jsonl" 2> "$out/$name.log"
    rc=$?
    printf '{"step":"%s","started":%s,"ended":%s,"exit":%d}\n' \
        "$name" "$started" "$(date +%s.%N)" "$rc" >> "$out/steps.jsonl"
    if [ "$rc" -ne 0 ]; then
        failed=$((failed + 1))
        echo "   FAILED ($rc); last lines of $out/$name.log:" >&2
        tail -5 "$out/$name.log" >&2
    fi
    return 0
}
skipped() { # NAME WHY
    printf '{"check":"%s","skipped":"SKIPPED: %s"}\n' "$1" "$2" > "$out/$1.jsonl"
    echo "== $1: SKIPPED: $2" >&2
}

environment() {
    "$python" - "$lantern" "$device" <<'PY'
import json, subprocess, sys
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unavailable ({error.__class__.__name__})"
info = {"check": "environment", "device_flag": sys.argv[2],
        "gpu": run("nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                   "--format=csv,noheader"),
        "nvcc": run("nvcc", "--version").splitlines()[-1:],
        "cpu": run("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
        "lantern_size_bytes": __import__("os").path.getsize(sys.argv[1])}
try:
    import torch, transformers
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                transformers=transformers.__version__)
except ImportError as error:
    info["torch"] = f"unavailable ({error})"
missing = [l.split()[0] for l in run("ldd", sys.argv[1]).splitlines() if "not found" in l]
info["ldd_not_found"] = missing
info["pass"] = not missing
print(json.dumps(info))
PY
}

checks() {
    step environment environment
    step parity "$lantern" selftest --device "$device" parity
    step engine_f32 "$lantern" selftest --device "$device" engine --dtype f32
    step engine_bf16 "$lantern" selftest --device "$device" engine --dtype bf16
    local sanitizer
    sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)"
    if [ "$device" = cpu ]; then
        skipped memcheck "compute-sanitizer checks CUDA memory; this is a CPU dry run"
    elif [ -z "$sanitizer" ]; then
        skipped memcheck "compute-sanitizer is not installed on this machine"
    else
        step memcheck "$sanitizer" --tool memcheck --error-exitcode 1 --print-limit 20 \
            "$lantern" selftest --device "$device" engine --requests 3
    fi
}

throughput() {
    local concurrency=1,32,64 prompt=128 new=128 shape=8b
    if [ "$device" = cpu ]; then
        concurrency=1,4 prompt=32 new=16 shape=dry-run
    fi
    local small="$work/small" big="$work/llama-$shape"
    [ -e "$small/config.json" ] || "$lantern" dummy-model --arch llama --size small --out "$small" >/dev/null 2>&1
    local have_torch=true
    "$python" -c 'import torch, transformers' 2>/dev/null || have_torch=false
    if $have_torch; then
        step make_dummy_8b "$python" "$here/make_dummy_8b.py" --lantern "$lantern" --out "$big" --shape "$shape"
    else
        skipped make_dummy_8b "PyTorch and transformers are not installed"
    fi
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
        -lms 500 > "$out/nvidia-smi.csv" 2>/dev/null &
    local sampler=$!
    local hf_device=$device
    for model in small "llama-$shape"; do
        local dir="$work/$model"
        [ -e "$dir/config.json" ] || continue
        step "lantern_$model" "$lantern" selftest --device "$device" throughput --model "$dir" \
            --concurrency "$concurrency" --prompt-tokens "$prompt" --new-tokens "$new"
        if $have_torch; then
            step "transformers_$model" "$python" "$here/hf_generate.py" --model "$dir" \
                --device "$hf_device" --concurrency "$concurrency" --prompt-tokens "$prompt" \
                --new-tokens "$new"
        else
            skipped "transformers_$model" "PyTorch and transformers are not installed"
        fi
    done
    kill "$sampler" 2>/dev/null
}

case "$stage" in
    checks) checks ;;
    throughput) throughput ;;
    all) checks; throughput ;;
esac
"$python" "$here/report.py" "$out" || failed=$((failed + 1))
echo "results: $out/results.md, $out/results.json; failed steps: $failed" >&2
[ "$failed" -eq 0 ]
