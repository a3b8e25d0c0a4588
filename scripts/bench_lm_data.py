"""Benchmark the language model's data path on a large synthetic text file (default 1 GB).

    python scripts/bench_lm_data.py [--mb 1024] [--dir /tmp] [--steps 20] [--keep]

Writes the file (lines of data/alice29.txt in a fresh random order for each 4 MB block), then
reports, as one JSON object at the end:
- tokenising: `grutrain prepare` time and MB/s, its peak resident memory
- fit:        peak resident memory of `grutrain fit configs/charlm.yaml` for --steps steps on the
              cached corpus, and the time from starting the command to its first training step
- eval:       time of one in-training evaluation with the default cap (train.eval_tokens)
- checkpoint: the size of last.pt next to that of the model + optimizer state alone
The held-out splits are 0.01% each (--held-out; 100 KB of 1 GB) so the final whole-split evaluations stay
short on a busy machine; the in-training evaluation is capped by train.eval_tokens either way.
Everything written (text file, cache, run directory) is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_corpus(path: Path, megabytes: int) -> None:
    lines = (ROOT / "data" / "alice29.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(0)
    target = megabytes << 20
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(lines)
            block = "".join(lines)[: target - written]
            f.write(block)
            written += len(block.encode("utf-8"))


def run_measured(cmd: list[str], env: dict, first_line: str | None = None) -> dict:
    """Run cmd; its wall time, peak resident memory (MB) and when first_line appeared on stdout (s)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    first_at, out = None, []
    for line in proc.stdout:
        out.append(line)
        if first_at is None and first_line and line.startswith(first_line):
            first_at = time.perf_counter() - start
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(out[-20:])}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": usage.ru_maxrss / 1024,
            "first_line_s": first_at, "output": "".join(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of the synthetic text file in MB")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write it (and the cache)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--held-out", type=float, default=0.0001,
                        help="val and test fractions (the final evaluations read them whole)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="grutrain-bench-data-", dir=args.dir))
    env = {**os.environ, "GRUTRAIN_CACHE_DIR": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    grutrain = [sys.executable, "-m", "grutrain"]
    try:
        text = work / "corpus.txt"
        t0 = time.perf_counter()
        write_corpus(text, args.mb)
        print(f"wrote {text} ({text.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f} s", flush=True)
        overrides = [f"data.path={text}", f"data.val_fraction={args.held_out}", f"data.test_fraction={args.held_out}"]
        prep = run_measured([*grutrain, "prepare", "configs/charlm.yaml", *overrides, "--json"], env)
        info = json.loads(prep["output"].strip().splitlines()[-1])
        print(f"prepare: {info['seconds']:.1f} s, peak RSS {prep['peak_rss_mb']:.0f} MB", flush=True)
        run_dir = work / "run"
        fit = run_measured([*grutrain, "fit", "configs/charlm.yaml", *overrides, f"train.max_steps={args.steps}",
                            f"train.eval_every={max(args.steps // 2, 1)}", "train.log_every=1",
                            f"train.checkpoint_every={args.steps}", f"run.dir={run_dir}"], env, first_line="step 1/")
        print(f"fit: {fit['seconds']:.1f} s, first step after {fit['first_line_s']:.1f} s, "
              f"peak RSS {fit['peak_rss_mb']:.0f} MB", flush=True)
        result = {
            "corpus_mb": args.mb, "tokens": info["tokens"], "vocab_size": info["vocab_size"],
            "tokenise_s": info["seconds"], "tokenise_mb_per_s": info["source_bytes"] / 2**20 / info["seconds"],
            "prepare_peak_rss_mb": prep["peak_rss_mb"], "prepare_wall_s": prep["seconds"],
            "fit_steps": args.steps, "fit_wall_s": fit["seconds"], "fit_peak_rss_mb": fit["peak_rss_mb"],
            "start_to_first_step_s": fit["first_line_s"],
            **eval_and_checkpoint(run_dir, text, env),
        }
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def eval_and_checkpoint(run_dir: Path, text: Path, env: dict) -> dict:
    import torch

    os.environ["GRUTRAIN_CACHE_DIR"] = env["GRUTRAIN_CACHE_DIR"]
    from grutrain.files.checkpoint import load_checkpoint
    from grutrain.config.schema import validate_config
    from grutrain.tasks import training_task

    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = validate_config(payload["config"])
    task = training_task(cfg, rows_per_step=cfg.train.batch_size * cfg.train.accumulate)
    model = task.build_model()
    model.load_state_dict(payload["model"])
    times = []
    for _ in range(2):
        start = time.perf_counter()
        task.evaluate(model, "val", torch.device("cpu"), whole=False)  # as fit's evaluations before the last
        times.append(time.perf_counter() - start)
    alone = io.BytesIO()
    torch.save({"model": payload["model"], "optimizer": payload["optimizer"]}, alone)
    return {"eval_tokens_cap": cfg.train.eval_tokens, "in_training_eval_s": sorted(times),
            "checkpoint_mb": (run_dir / "checkpoints" / "last.pt").stat().st_size / 2**20,
            "model_plus_optimizer_mb": alone.getbuffer().nbytes / 2**20,
            "checkpoint_records_source": "eval_source" in payload["task_state"]}


if __name__ == "__main__":
    main()
