"""`grutrain runs`: real runs read back against their own files, and hand-made run directories for
the statuses a sweep can leave behind (running, crashed, failed, interrupted)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grutrain.commands import runs as run_table
from grutrain.tasks import validate_config
from grutrain.errors import GrutrainError
from grutrain.trainer.rundir import RunLock

WORDS = "alice was beginning to get very tired of sitting by her sister on the bank".split()


def tiny_raw(text_path: Path, run_dir: str, lr: float, hidden: int = 8) -> dict:
    return {
        "data": {"path": str(text_path), "seq_len": 8, "val_fraction": 0.1, "test_fraction": 0.1},
        "model": {"embedding_dim": 4, "hidden_size": hidden},
        "optim": {"lr": lr},
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 4, "log_every": 1,
                  "device": "cpu"},
        "sample": {"length": 0},
        "run": {"dir": run_dir},
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three real runs of a little lr x hidden-size sweep, named by a run.dir template."""
    from grutrain.trainer.fit import fit

    root = tmp_path_factory.mktemp("sweep")
    rng = random.Random(0)
    text = root / "text.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(150)), encoding="utf-8")
    template = str(root / "runs" / "lr{optim.lr}-h{model.hidden_size}")
    summaries = [fit(validate_config(tiny_raw(text, template, lr, hidden)), progress="none")
                 for lr, hidden in [(0.01, 8), (0.003, 8), (0.01, 12)]]
    return root / "runs", summaries


def test_run_dir_template_names_each_run_and_the_table_reads_their_summaries(sweep):
    runs_root, summaries = sweep
    assert sorted(p.name for p in runs_root.iterdir()) == ["lr0.003-h8", "lr0.01-h12", "lr0.01-h8"]
    table = run_table.collect_runs([runs_root])
    assert table["varied"] == ["model.hidden_size", "optim.lr"]  # config order; run.dir never counts
    by_name = {Path(r["run"]).name: r for r in table["runs"]}
    for summary in summaries:
        run = by_name[Path(summary["run_dir"]).name]
        on_disk = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())
        assert run["status"] == "finished"
        assert run["final"] == on_disk["final"] == summary["final"]
        assert run["best"] == on_disk["best"]
        assert (run["step"], run["total_steps"], run["wall_time_s"]) == (4, 4, on_disk["wall_time_s"])
        assert run["config"]["optim.lr"] == yaml.safe_load((Path(summary["run_dir"]) / "config.yaml").read_text())["optim"]["lr"]


def test_sort_by_a_metric_ascending_descending_and_by_a_config_key(sweep):
    runs_root, _ = sweep
    ppl = [r["final"]["val/perplexity"] for r in run_table.collect_runs([runs_root], sort="val/perplexity")["runs"]]
    assert ppl == sorted(ppl) and len(set(ppl)) == 3
    ppl_desc = [r["final"]["val/perplexity"] for r in run_table.collect_runs([runs_root], sort="-val/perplexity")["runs"]]
    assert ppl_desc == sorted(ppl, reverse=True)
    lrs = [r["config"]["optim.lr"] for r in run_table.collect_runs([runs_root], sort="optim.lr")["runs"]]
    assert lrs == [0.003, 0.01, 0.01]
    with pytest.raises(GrutrainError, match="val/nonsense.*sort by one of.*val/perplexity"):
        run_table.collect_runs([runs_root], sort="val/nonsense")


def test_cli_json_csv_and_table(sweep, run_cli):
    runs_root, summaries = sweep
    code, out, err = run_cli(["runs", runs_root, "--json", "--sort", "test/perplexity"])
    assert code == 0 and err == ""
    data = json.loads(out)  # stdout holds the JSON object and nothing else
    assert data["varied"] == ["model.hidden_size", "optim.lr"]
    test_ppl = [r["final"]["test/perplexity"] for r in data["runs"]]
    assert test_ppl == sorted(s["final"]["test/perplexity"] for s in summaries)

    code, out, err = run_cli(["runs", runs_root, "--csv"])
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [Path(r["run"]).name for r in rows] == ["lr0.003-h8", "lr0.01-h8", "lr0.01-h12"]  # natural order
    assert {"status", "step", "wall_time_s", "optim.lr", "model.hidden_size", "best/val/loss", "val/perplexity",
            "test/perplexity"} <= set(rows[0])
    assert "data.path" not in rows[0]  # the same in every run
    for row in rows:
        summary = json.loads((Path(row["run"]) / "summary.json").read_text())
        assert float(row["val/perplexity"]) == summary["final"]["val/perplexity"]  # full precision
        assert row["status"] == "finished" and row["error"] == ""

    code, out, err = run_cli(["runs", runs_root, "--sort", "val/perplexity"])
    assert code == 0
    lines = [line for line in out.splitlines() if "finished" in line]
    assert len(lines) == 3 and all("lr0.0" in line for line in lines)
    best = min(summaries, key=lambda s: s["final"]["val/perplexity"])
    assert Path(best["run_dir"]).name in lines[0]
    assert f"{best['final']['val/perplexity']:.2f}" in lines[0]


def test_a_dir_may_be_a_run_itself_and_dirs_are_searched_below(sweep, run_cli):
    runs_root, summaries = sweep
    one = run_table.collect_runs([summaries[0]["run_dir"]])
    assert [r["run"] for r in one["runs"]] == [summaries[0]["run_dir"]] and one["varied"] == []
    above = run_table.collect_runs([runs_root.parent])  # the sweep's parent: runs found two levels down
    assert len(above["runs"]) == 3
    twice = run_table.collect_runs([runs_root, summaries[0]["run_dir"]])  # listed once
    assert len(twice["runs"]) == 3


def test_missing_dir_and_contradicting_options_exit_codes(tmp_path, run_cli, monkeypatch):
    code, out, err = run_cli(["runs", tmp_path / "nope"])
    assert code == 1 and out == "" and "nope" in err and "does not exist" in err
    monkeypatch.chdir(tmp_path)  # no runs/ here
    code, out, err = run_cli(["runs"])
    assert code == 1 and "'runs' does not exist" in err and "grutrain fit" in err
    code, out, err = run_cli(["runs", tmp_path, "--json", "--csv"])
    assert code == 2
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(["runs", tmp_path / "empty", "--json"])
    assert code == 0 and json.loads(out) == {"varied": [], "runs": []}


# ---- hand-made run directories: every status a sweep can leave ------------------------------------------

def make_run(root: Path, name: str, summary: dict | None, lr: float = 0.01, metrics: list[dict] | None = None) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"task": "lm", "optim": {"lr": lr}, "run": {"dir": str(path)}}))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    if metrics is not None:
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return path


def base_summary(status: str, **extra) -> dict:
    return {"status": status, "step": 0, "total_steps": 100, "wall_time_s": 0.0,
            "best": {"val/loss": None, "step": None}, **extra}


def test_statuses_running_crashed_failed_interrupted_unknown(tmp_path, run_cli):
    metrics = [{"step": 10, "tag": "train/loss", "value": 2.5}, {"step": 20, "tag": "val/loss", "value": 2.0},
               {"step": 40, "tag": "val/loss", "value": 1.5}, {"step": 50, "tag": "train/loss", "value": 1.2}]
    live = make_run(tmp_path, "live", base_summary("running", pid=os.getpid()), metrics=metrics)
    dead = make_run(tmp_path, "dead", base_summary("running", pid=os.getpid()), metrics=metrics[:2], lr=0.003)
    with open(dead / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "tag": "train/lo')  # torn by the crash
    make_run(tmp_path, "diverged", base_summary("failed", step=7, error="training diverged: 10 steps in a row"))
    make_run(tmp_path, "stopped", base_summary("interrupted", step=60, best={"val/loss": 1.4, "step": 60},
                                               error="interrupted by SIGTERM at step 60"))
    make_run(tmp_path, "starting", None)

    with RunLock(live):  # a process trains in `live`; nobody holds `dead`'s lock any more
        RunLock(dead).acquire().release()
        table = run_table.collect_runs([tmp_path])
        code, out, err = run_cli(["runs", tmp_path])
    runs = {Path(r["run"]).name: r for r in table["runs"]}
    assert runs["live"]["status"] == "running"
    assert runs["live"]["step"] == 50 and runs["live"]["best"] == {"val/loss": 1.5, "step": 40}
    assert runs["dead"]["status"] == "crashed" and runs["dead"]["step"] == 20
    assert "--overwrite" in runs["dead"]["error"] and f"run.dir={dead}" in runs["dead"]["error"]  # no last.pt
    assert runs["diverged"]["status"] == "failed" and runs["diverged"]["error"].startswith("training diverged")
    assert runs["stopped"]["status"] == "interrupted" and runs["stopped"]["best"]["val/loss"] == 1.4
    assert runs["starting"]["status"] == "unknown" and runs["starting"]["error"] == "no summary.json"
    assert table["varied"] == ["optim.lr"]
    assert code == 0
    for name, status in [("live", "running"), ("dead", "crashed"), ("diverged", "failed"), ("stopped", "interrupted")]:
        assert any(name in line and status in line for line in out.splitlines())
    assert "training diverged: 10 steps in a row" in out and "SIGTERM" in out  # the errors under the table


def test_lock_probe_neither_creates_a_lock_nor_blocks_the_next_run(tmp_path):
    run = make_run(tmp_path, "r", base_summary("running", pid=os.getpid()))
    assert run_table.lock_is_held(run) is False
    assert not (run / ".lock").exists()
    (run / ".lock").touch()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").touch()
    crashed = run_table.read_run(run)
    assert crashed["status"] == "crashed" and "--resume" in crashed["error"]
    with RunLock(run):  # the probe released its shared lock: an exclusive one is still free
        assert run_table.lock_is_held(run) is True


def test_without_flock_the_summary_pid_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(run_table, "lock_is_held", lambda path: None)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = make_run(tmp_path, "alive", base_summary("running", pid=os.getpid()))
    dead = make_run(tmp_path, "dead", base_summary("running", pid=gone.pid))
    assert run_table.read_run(alive)["status"] == "running"
    assert run_table.read_run(dead)["status"] == "crashed"


def test_non_finite_metrics_stay_valid_json(tmp_path, run_cli):
    make_run(tmp_path, "nan", {**base_summary("finished", step=100), "final": {"val/loss": float("nan")}})
    code, out, err = run_cli(["runs", tmp_path, "--json"])
    assert code == 0
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))["runs"][0]["final"] == {"val/loss": "nan"}
