#!/usr/bin/env bash
# The GPU checks of the native GRU kernel (issue 20), in one go on a machine with a CUDA GPU:
#   1. `grutrain kernels` (builds the kernel if needed; says what model.kernel=auto runs on cuda),
#   2. the kernel tests that run on CUDA (the device-parametrised cases of tests/gru/test_native.py;
#      they skip while no CUDA kernel is registered),
#   3. `grutrain bench --device cuda` (fp32 and bf16): every implementation against cuDNN's
#      torch.nn.GRU and the matrix products alone,
#   4. a short charlm fit on cuda with model.kernel=native, model.kernel=auto and model.backend=torch
#      (cuDNN), tokens/s from each run's metrics.jsonl (median of the logged steps after the first),
# then one table. Usage: scripts/gpu_check.sh [STEPS]   (default 200 training steps per fit)
# Run from the repository root with grutrain installed. Exits 1 at once when torch sees no GPU.
set -u
steps="${1:-200}"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False); nothing checked" >&2
    exit 1
fi
work="$(mktemp -d -t grutrain-gpu-check-XXXXXX)"
echo "gpu_check: results in $work" >&2

grutrain kernels --json > "$work/kernels.json" 2> "$work/kernels.err"
python -m pytest -q tests/gru/test_native.py -k cuda -p no:cacheprovider > "$work/tests.txt" 2>&1
echo $? > "$work/tests.rc"
grutrain bench --device cuda --no-trainer --no-generation --json > "$work/bench_fp32.json" 2> "$work/bench_fp32.err"
grutrain bench --device cuda --no-trainer --no-generation --precision bf16 --json \
    > "$work/bench_bf16.json" 2> "$work/bench_bf16.err"
for variant in "native model.kernel=native" "auto model.kernel=auto" "cudnn model.backend=torch"; do
    set -- $variant
    grutrain fit configs/charlm.yaml --quiet train.device=cuda "train.max_steps=$steps" train.log_every=10 \
        "run.dir=$work/fit-$1" "$2" > "$work/fit-$1.out" 2> "$work/fit-$1.err"
    echo $? > "$work/fit-$1.rc"
done

python - "$work" <<'PY'
import json, statistics, sys
from pathlib import Path

work = Path(sys.argv[1])


def read_json(name):
    try:
        return json.loads((work / name).read_text())
    except (OSError, ValueError):
        return None


def first_line(name):
    text = (work / name).read_text().strip() if (work / name).exists() else ""
    return text.splitlines()[-1] if text else ""


rows = []
kernels = read_json("kernels.json") or {}
rows.append(("kernels", "auto on cuda", str(kernels.get("auto", {}).get("cuda", "?")),
             f"available={kernels.get('available')} build_s={kernels.get('build_seconds')}"))
rows.append(("tests", "test_native -k cuda", "rc=" + first_line("tests.rc"), first_line("tests.txt")))
for precision in ("fp32", "bf16"):
    bench = read_json(f"bench_{precision}.json")
    if bench is None:
        rows.append((f"bench {precision}", "-", "failed", first_line(f"bench_{precision}.err")))
        continue
    for r in bench["layers"]:
        mem = "-" if r["mem_ratio_vs_torch"] is None else f"{r['mem_ratio_vs_torch']:.2f}"
        rows.append((f"bench {precision} {','.join(map(str, r['shape']))}", r["impl"],
                     f"train {r['train_ms']:.2f} ms, fwd {r['forward_ms']:.2f} ms",
                     f"vs cuDNN train {r['train_ratio_vs_torch']:.2f} fwd {r['forward_ratio_vs_torch']:.2f}; "
                     f"vs products train {r['train_ratio_vs_products']:.2f} fwd {r['forward_ratio_vs_products']:.2f}; "
                     f"mem {mem}"))
for name in ("native", "auto", "cudnn"):
    rc = first_line(f"fit-{name}.rc")
    rates = []
    metrics = work / f"fit-{name}" / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if "perf/tokens_per_s" in record:
                rates.append(record["perf/tokens_per_s"])
    rate = f"{statistics.median(rates[1:]):,.0f} tokens/s" if len(rates) > 1 else "-"
    rows.append((f"charlm fit ({name})", f"rc={rc}", rate, first_line(f"fit-{name}.err") if rc != "0" else ""))

widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
print(f"{'check':<{widths[0]}}  {'what':<{widths[1]}}  {'result':<{widths[2]}}  notes")
for r in rows:
    print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
PY
