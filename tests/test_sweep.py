"""Sweeps from the shell: run.dir templates, several `grutrain fit` processes at once, exit codes a
script can trust, and `grutrain runs` over the result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grutrain.tasks import load_config, validate_config
from grutrain.errors import GrutrainError

TEMPLATE = "runs/lr{optim.lr}-h{model.hidden_size}"


@pytest.fixture
def config_file(tmp_path):
    (tmp_path / "text.txt").write_text("alice was beginning to get very tired of sitting by her sister.\n" * 40)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"path": "text.txt", "seq_len": 8, "val_fraction": 0.1, "test_fraction": 0.1},
        "model": {"embedding_dim": 4, "hidden_size": 8},
        "train": {"max_steps": 3, "batch_size": 4, "eval_every": 3, "log_every": 1, "device": "cpu"},
        "sample": {"length": 0},
        "run": {"name": "tiny"},
    }))
    return path


@pytest.mark.parametrize("overrides, expected", [
    (["optim.lr=0.003"], "runs/lr0.003-h8"),
    (["optim.lr=3e-4", "model.hidden_size=128"], "runs/lr0.0003-h128"),  # the override's value, as written
    (["optim.lr=1e-5"], "runs/lr1e-05-h8"),
    (["optim.lr=0.01", "run.dir=out/{run.name}-{optim.name}-lr{optim.lr:.0e}-clip{optim.grad_clip}"],
     "out/tiny-adamw-lr1e-02-clip1.0"),
    (["run.dir=runs/{task}-e{train.epochs}-{data.lowercase}-b{optim.betas}"], "runs/lm-enull-false-b0.9,0.999"),
])
def test_run_dir_template_takes_the_values_after_overrides(config_file, overrides, expected):
    cfg = load_config(config_file, [f"run.dir={TEMPLATE}", *overrides])
    assert cfg.run.dir == expected
    # The resolved config (saved in config.yaml and checkpoints) validates to the same directory.
    assert validate_config(cfg.model_dump(mode="json")).run.dir == expected


@pytest.mark.parametrize("template, problem", [
    ("runs/{optim.learning_rate}", "unknown placeholder {optim.learning_rate}"),
    ("runs/{optim}", "unknown placeholder {optim}"),
    ("runs/{run.dir}", "unknown placeholder {run.dir}"),
    ("runs/{}", "unknown placeholder {}"),
    ("runs/lr{optim.lr", "not a valid template"),
    ("runs/{{literal}}", "still holds a brace"),
    ("runs/{model.hidden_size:.2q}", "cannot format model.hidden_size=8"),
])
def test_bad_run_dir_template_is_a_config_error_naming_it(config_file, template, problem, run_cli, tmp_path):
    with pytest.raises(GrutrainError, match="run.dir") as info:
        load_config(config_file, [f"run.dir={template}"])
    assert problem in str(info.value)
    code, out, err = run_cli(["fit", config_file, f"run.dir={template}"])
    assert code == 1 and problem in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_print_config_shows_the_resolved_run_dir(config_file, run_cli):
    code, out, err = run_cli(["fit", config_file, "--print-config", "optim.lr=0.002", f"run.dir={TEMPLATE}"])
    assert code == 0 and yaml.safe_load(out)["run"]["dir"] == "runs/lr0.002-h8"


def _env() -> dict:
    # `grutrain` of this interpreter's environment first on PATH, one torch thread per process.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(shutil.which("xargs") is None or shutil.which("bash") is None, reason="needs bash and xargs")
def test_a_shell_sweep_two_at_a_time_with_one_bad_run(config_file, tmp_path):
    """The README's sweep pattern: xargs -P 2 over override lines; one line is bad input."""
    if shutil.which("grutrain", path=_env()["PATH"]) is None:
        pytest.skip("the grutrain console script is not installed")
    script = f"""
        printf '%s\\n' 'optim.lr=0.01' 'optim.lr=0.003' 'optim.lr=-1' |
          xargs -P 2 -L 1 grutrain fit {config_file.name} --quiet train.threads=1 'run.dir=sweep/lr{{optim.lr}}'
        echo "xargs exit $?"
        grutrain runs sweep --json > table.json
    """
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=120)
    # xargs exits 123 when any run failed: a script can tell. The bad run says why, in one line.
    assert "xargs exit 123" in done.stdout, done.stderr
    assert "optim.lr" in done.stderr and "Traceback" not in done.stderr
    table = json.loads((tmp_path / "table.json").read_text())
    assert sorted(r["run"] for r in table["runs"]) == ["sweep/lr0.003", "sweep/lr0.01"]
    assert table["varied"] == ["optim.lr"]
    for run in table["runs"]:
        assert run["status"] == "finished" and run["step"] == 3 and run["config"]["train.threads"] == 1
        steps = [m["step"] for m in map(json.loads, (tmp_path / run["run"] / "metrics.jsonl").read_text().splitlines())
                 if m["tag"] == "train/loss"]
        assert steps == [1, 2, 3]  # each run wrote only its own lines


def test_parallel_runs_without_run_dir_get_their_own_numbered_dirs(config_file, tmp_path):
    cmd = [sys.executable, "-m", "grutrain", "fit", config_file.name, "--quiet", "train.threads=1"]
    procs = [subprocess.Popen(cmd + [f"train.seed={seed}"], cwd=tmp_path, env=_env(), stderr=subprocess.PIPE,
                              text=True) for seed in (1, 2)]
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], errors
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["tiny-1", "tiny-2"]
    seeds = sorted(yaml.safe_load((r / "config.yaml").read_text())["train"]["seed"] for r in runs)
    assert seeds == [1, 2]  # one process per directory, neither overwrote the other
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["run_dir"] == f"runs/{run.name}"
