"""Issue 22, class "append-only logs": `fit --resume` never rewrites metrics.jsonl in place. The records
logged after the checkpoint it resumes from are dropped by writing the kept ones to a temporary
and renaming it into place, once the resumed run has its first checkpoint, and a line says how
many; a resume that fails first leaves metrics.jsonl and summary.json (the whole run) byte for
byte as they were. Each case: `grutrain fit --resume` in a fresh process (the real CLI).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from cli_process import REPO
from conftest import make_text
from hostile import refused, snapshot_tree, tiny_config, write_yaml


def fit(args, cwd, limit_bytes: int | None = None) -> tuple[int, str, str]:
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    proc = subprocess.run([sys.executable, "-m", "grutrain", "fit", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
                          preexec_fn=limit if limit_bytes else None)
    return proc.returncode, proc.stdout, proc.stderr


def fit_here(config, *args) -> None:
    """A finished tiny run (4 steps) trained through the CLI's main in this process."""
    from grutrain.cli import main

    try:
        main(["fit", str(config), "-q", *args])
    except SystemExit as exc:
        assert not exc.code


@pytest.fixture
def run(tmp_path):
    (tmp_path / "corpus.txt").write_text(make_text(), encoding="utf-8")
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(tmp_path, run={"dir": str(tmp_path / "run")}))
    fit_here(config)
    return tmp_path, config, tmp_path / "run"


def later_records(steps) -> str:
    """Records of steps after the checkpoint, as a run killed after step 4's checkpoint leaves them."""
    return "".join(json.dumps({"step": s, "tag": "train/loss", "value": 9.0}) + "\n" for s in steps)


def test_resume_drops_the_later_records_by_a_rename_and_says_how_many(run):
    root, config, run_dir = run
    metrics = run_dir / "metrics.jsonl"
    kept = metrics.read_bytes()
    with metrics.open("a") as f:
        f.write(later_records([5, 6, 7]))
        f.write('{"step": 8, "tag": "train/lo')  # torn by the kill
    inode = metrics.stat().st_ino

    code, out, err = fit([config, "--resume", "train.max_steps=6"], root)
    assert code == 0, err
    assert "metrics.jsonl: dropped 4 records after step 4" in out, out
    after = metrics.read_bytes()
    assert after.startswith(kept)  # the kept records byte for byte, the new ones after them
    new = [json.loads(line) for line in after[len(kept):].decode().splitlines()]
    assert {r["step"] for r in new} == {5, 6} and not any(r["value"] == 9.0 for r in new)
    assert metrics.stat().st_ino != inode  # replaced by a rename, never truncated in place
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def limit_file_size(root, config, run_dir):
    """A file-size limit (half the checkpoint): a write of the resumed run (log or checkpoint) fails."""
    return [config, "--resume", "train.max_steps=8"], (run_dir / "checkpoints" / "last.pt").stat().st_size // 2, ()


def change_the_data(root, config, run_dir):
    (root / "corpus.txt").write_text(make_text().replace("Alice", "Alicf", 3), encoding="utf-8")
    return [config, "--resume", "train.max_steps=8"], None, ("corpus",)


FAILED = [  # (case, what makes the resume fail: returns (args, file-size limit, words of the message))
    ("file-size limit (ulimit -f) in the resumed run", limit_file_size),
    ("changed data", change_the_data),
]


@pytest.mark.parametrize("case,make_it_fail", FAILED, ids=[c[0] for c in FAILED])
def test_a_failed_resume_leaves_metrics_and_summary_byte_identical(run, case, make_it_fail):
    root, config, run_dir = run
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(later_records([5, 6]))  # records past the checkpoint: a failed resume must not drop them
    args, limit, words = make_it_fail(root, config, run_dir)
    before = snapshot_tree(run_dir)
    code, out, err = fit(args, root, limit)
    refused(code, out, err, *words)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"  # not "running", not "failed"
    assert snapshot_tree(run_dir) == before  # metrics.jsonl, summary.json, config.yaml, checkpoints, logs
