"""`grutrain ...` in a fresh Python process (the real entry point), and tiny data and configs of every
file-based task, for the hostile tests in tests/hostile/."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def grutrain(*args, cwd: Path | None = None, timeout: float = 120, shell_prefix: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m grutrain ARGS` run from this checkout.

    shell_prefix: a shell snippet run first (e.g. `cd D && rmdir ../D &&`), for states a Popen cannot
    start in, such as a deleted working directory."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "grutrain", *map(str, args)]
    if shell_prefix is not None:
        command = ["sh", "-c", f"{shell_prefix} exec \"$@\"", "sh", *command]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


BASE = {
    "model": {"embedding_dim": 4, "hidden_size": 8, "num_layers": 1},
    "optim": {"lr": 0.01, "warmup_steps": 1},
    "train": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2, "log_every": 1,
              "device": "cpu", "threads": 1},
}


def write_config(path: Path, task: str, data: dict, run_dir: Path, **sections) -> Path:
    cfg = {"task": task, **{k: dict(v) for k, v in BASE.items()}, "data": data, "run": {"dir": str(run_dir)}}
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def classify_lines(n: int = 60) -> list[str]:
    names = ["anna", "bob", "carla", "dave", "emma", "fred", "gina", "hugo", "ivy", "jack"]
    return [json.dumps({"x": names[i % 10] + "abc"[i % 3] * (i % 4), "y": "f" if i % 2 else "m"}) for i in range(n)]


def classify_config(root: Path, **sections) -> Path:
    path = root / "names.jsonl"
    path.write_text("\n".join(classify_lines()) + "\n", encoding="utf-8")
    data = {"path": str(path), "val_fraction": 0.2, "test_fraction": 0.2}
    return write_config(root / "classify.yaml", "classify", data, root / "run", **sections)


def series_rows(n: int = 200, scale: float = 1.0, start: int = 1700, constant: bool = False) -> list[str]:
    rows = ["YEAR,VALUE"]
    for i in range(n):
        value = 7.0 if constant else 50 + 40 * math.sin(2 * math.pi * i / 11) + (i * 7919 % 13)
        rows.append(f"{start + i},{value * scale:.3f}")
    return rows


def forecast_config(root: Path, rows: list[str] | None = None, **sections) -> Path:
    path = root / "series.csv"
    path.write_text("\n".join(rows or series_rows()) + "\n", encoding="utf-8")
    data = {"path": str(path), "target_columns": ["VALUE"], "time_column": "YEAR", "input_len": 12, "horizon": 3,
            "season": 11, "val_fraction": 0.15, "test_fraction": 0.15}
    return write_config(root / "forecast.yaml", "forecast", data, root / "run", **sections)


def lm_config(root: Path, text: str, data: dict | None = None, **sections) -> Path:
    path = root / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    data = {"path": str(path), "seq_len": 8, "val_fraction": 0.1, "test_fraction": 0.1, **(data or {})}
    return write_config(root / "lm.yaml", "lm", data, root / "run", sample={"length": 5}, **sections)
