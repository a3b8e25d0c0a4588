"""Data changed under a run (issue 22, class "changed data"): a resumed run proves its data is the
same (sha256 and split sizes recorded in the checkpoint), or says in one line what changed; an
explicit train.allow_data_change=true continues on the new data. Each case: fit in this process
(the real CLI's main), change the data, then `grutrain fit --resume` in a fresh process."""

from __future__ import annotations

import json
import os

import pytest

from cli_process import classify_config, classify_lines, forecast_config, grutrain, lm_config, series_rows
from conftest import make_text
from hostile import refused


def shrink_classify(root):
    (root / "names.jsonl").write_text("\n".join(classify_lines(45)) + "\n", encoding="utf-8")


def reorder_classify(root):
    (root / "names.jsonl").write_text("\n".join(reversed(classify_lines())) + "\n", encoding="utf-8")


def same_size_lm_edit(root):
    """Same size, same character count, same mtime: only the content differs."""
    path = root / "corpus.txt"
    stat = path.stat()
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("alice", "alicf", 1), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def cut_forecast(root):
    (root / "series.csv").write_text("\n".join(series_rows(170)) + "\n", encoding="utf-8")


def rescale_forecast(root):
    (root / "series.csv").write_text("\n".join(series_rows(scale=10.0)) + "\n", encoding="utf-8")


def make(task, root):
    return {"classify": lambda: classify_config(root), "forecast": lambda: forecast_config(root),
            "lm": lambda: lm_config(root, make_text())}[task]()


CHANGES = [  # (task, change, words the one line must hold)
    ("classify", shrink_classify, ["names.jsonl", "train 36 -> 27", "allow_data_change"]),
    ("classify", reorder_classify, ["names.jsonl", "other content (same size)"]),
    ("lm", same_size_lm_edit, ["corpus.txt", "other content (same size)"]),
    ("forecast", cut_forecast, ["series.csv", "split sizes", "train 140 -> 118"]),
    ("forecast", rescale_forecast, ["series.csv", "other content"]),
]


@pytest.mark.parametrize("task,change,words", CHANGES, ids=[c[1].__name__ for c in CHANGES])
def test_resume_on_changed_data_is_one_line_naming_the_change(tmp_path, run_cli, task, change, words):
    config = make(task, tmp_path)
    assert run_cli(["fit", config, "-q"])[0] == 0
    last = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    change(tmp_path)
    code, out, err = grutrain("fit", config, "--resume", "-q", "train.max_steps=6")
    refused(code, out, err, "cannot resume: the data changed", *words)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == last  # nothing changed


def test_allow_data_change_continues_on_a_shrunk_classify_file(tmp_path, run_cli):
    config = classify_config(tmp_path, train={"max_steps": 8, "batch_size": 4})
    assert run_cli(["fit", config, "-q", "train.max_steps=6"])[0] == 0  # position 6 of 9 batches an epoch
    (tmp_path / "names.jsonl").write_text("\n".join(classify_lines(30)) + "\n", encoding="utf-8")  # 4 batches now
    code, out, err = grutrain("fit", config, "--resume", "-q", "train.allow_data_change=true")
    assert code == 0, err
    assert err.startswith("note: resuming on changed data") and "names.jsonl" in err and len(err.splitlines()) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 8


@pytest.mark.parametrize("task", ["classify", "forecast", "lm"])
def test_unchanged_data_resumes_and_the_record_is_kept(tmp_path, run_cli, task):
    from grutrain.files.checkpoint import load_checkpoint

    config = make(task, tmp_path)
    assert run_cli(["fit", config, "-q"])[0] == 0
    os.utime(config.parent / {"classify": "names.jsonl", "forecast": "series.csv", "lm": "corpus.txt"}[task])
    code, out, err = run_cli(["fit", config, "--resume", "-q", "train.max_steps=6"])
    assert code == 0 and not err, err
    record = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["task_state"]["data_digest"]
    assert len(record["files"][0]["sha256"]) == 64 and set(record["splits"]) == {"train", "val", "test"}
