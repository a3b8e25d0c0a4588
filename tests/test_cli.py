"""The `grutrain` command end to end: fit / eval / sample on a tiny corpus, the run directory it
leaves, and how it refuses bad input (exit 1, one line on stderr, nothing changed) and bad usage (exit 2)."""

from __future__ import annotations

import builtins
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from grutrain.files.checkpoint import load_checkpoint
from grutrain.cli import main
from grutrain.config.schema import config_to_dict
from grutrain.tasks import load_config
from grutrain.data.vocabulary import Vocabulary
from grutrain.tasks.checkpoints import open_checkpoint
from grutrain.tasks.lm.task import EVAL_STREAMS

from conftest import TINY_CONFIG, make_text

FIT_OVERRIDES = ["train.seed=3", "optim.lr=0.02"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run, trained once for the module; tests copy what they would change."""
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY_CONFIG.items()}
    cfg["data"]["path"] = str(corpus)
    cfg["run"]["dir"] = str(root / "run")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main(["fit", str(config), *FIT_OVERRIDES, "--quiet"])
    assert info.value.code == 0
    run = root / "run"
    return {"root": root, "corpus": corpus, "config": config, "run": run,
            "best": run / "checkpoints" / "best.pt", "last": run / "checkpoints" / "last.pt"}


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained run directory (for tests that must prove nothing changed)."""
    return Path(shutil.copytree(trained["run"], tmp_path / "old-run"))


def assert_one_line_error(code, out, err, *needles, exit_code=1):
    assert code == exit_code, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def eval_json(run_cli, *args):
    code, out, err = run_cli(["eval", *args, "--json"])
    assert code == 0, err
    assert out.endswith("\n") and out.count("\n") == 1, "--json prints one line on stdout and nothing else"
    return json.loads(out)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["fit", "eval", "sample"])
def test_command_help_shows_an_example(run_cli, command):
    code, out, _ = run_cli([command, "--help"])
    assert code == 0
    assert "Example:" in out
    assert f"grutrain {command} " in out


def test_top_level_help_lists_commands(run_cli):
    code, out, _ = run_cli(["--help"])
    assert code == 0
    for command in ("fit", "eval", "sample"):
        assert command in out


def test_top_level_help_shows_an_example(run_cli):
    code, out, _ = run_cli(["--help"])
    assert code == 0
    assert "Example" in out and "grutrain fit " in out


# --------------------------------------------------------------------------- fit: the run directory


def test_fit_writes_a_complete_run_directory(trained):
    run = trained["run"]
    resolved = load_config(trained["config"], FIT_OVERRIDES)
    # The resolved config, overrides applied, is saved in the run and inside every checkpoint.
    assert load_config(run / "config.yaml") == resolved
    assert resolved.optim.lr == 0.02 and resolved.train.seed == 3
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(run / "checkpoints" / name)
        assert payload["config"] == config_to_dict(resolved)
    assert load_checkpoint(trained["last"])["trainer"]["step"] == 4
    assert not list((run / "checkpoints").glob("*.tmp")), "no temporary checkpoint left behind"

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["step"] == 4
    final = summary["final"]
    assert final["val/perplexity"] == pytest.approx(math.exp(final["val/loss"]))
    assert final["test/perplexity"] == pytest.approx(math.exp(final["test/loss"]))

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = {}
    for record in records:
        assert set(record) == {"step", "tag", "value"}
        steps.setdefault(record["tag"], []).append(record["step"])
    assert steps["train/loss"] == [1, 2, 3, 4]  # log_every=1
    assert steps["val/loss"] == [2, 4]  # eval_every=2
    for tag in ("lr", "grad_norm", "val/perplexity", "perf/tokens_per_s"):
        assert tag in steps
    last_val = [r["value"] for r in records if r["tag"] == "val/loss"][-1]
    assert final["val/loss"] == pytest.approx(last_val)


def test_fit_tensorboard_events_hold_the_same_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = trained["run"]
    events = list(run.glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/perplexity", "lr", "grad_norm"} <= tags
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for tag in ("train/loss", "val/loss"):
        from_jsonl = [(r["step"], r["value"]) for r in records if r["tag"] == tag]
        from_tb = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in from_tb] == [s for s, _ in from_jsonl]
        for (_, a), (_, b) in zip(from_tb, from_jsonl):
            assert a == pytest.approx(b, rel=1e-6)


def test_fit_prints_a_summary(write_config, run_cli, tmp_path):
    code, out, err = run_cli(["fit", write_config()])
    assert code == 0, err
    squeezed = "".join(out.split())  # rich may wrap long lines when stdout is not a terminal
    assert f"run:{tmp_path / 'run'}" in squeezed
    assert "sample:" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert f"perplexity {summary['final']['val/perplexity']:.4g}" in out
    assert f"val/bigram_perplexity {summary['baselines']['val/bigram_perplexity']:.4g}" in out


# --------------------------------------------------------------------------- eval


def test_eval_json_matches_training_evaluation(trained, run_cli):
    summary = json.loads((trained["run"] / "summary.json").read_text())
    result = eval_json(run_cli, trained["best"])
    assert result["split"] == "val"
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2), rel=1e-12)
    # best.pt holds the model that scored the best validation loss during training.
    assert result["step"] == summary["best"]["step"]
    assert result["loss"] == pytest.approx(summary["best"]["val/loss"], rel=1e-5)
    payload = load_checkpoint(trained["best"])
    assert result["tokens"] == len(payload["task_state"]["eval_tokens"]["val"]) - 1


def test_eval_test_split_matches_final_test_metrics(trained, run_cli):
    summary = json.loads((trained["run"] / "summary.json").read_text())
    result = eval_json(run_cli, trained["last"], "--split", "test")
    assert result["split"] == "test"
    assert result["step"] == 4
    assert result["loss"] == pytest.approx(summary["final"]["test/loss"], rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    val = eval_json(run_cli, trained["last"])
    assert val["loss"] != result["loss"]


def test_eval_plain_output(trained, run_cli):
    code, out, err = run_cli(["eval", trained["best"]])
    assert code == 0, err
    result = eval_json(run_cli, trained["best"])
    assert f"perplexity {result['perplexity']:.4f}" in out
    assert f"loss {result['loss']:.4f}" in out


def test_eval_on_another_text_file_matches_direct_computation(trained, run_cli, tmp_path):
    payload = load_checkpoint(trained["best"])
    vocab = Vocabulary(payload["task_state"]["vocab"])
    known = [t for t in vocab.tokens[1:] if t.isalpha()]
    text = "".join(known[i % len(known)] for i in range(33))  # 33 chars -> 32 targets
    path = tmp_path / "other.txt"
    path.write_text(text, encoding="utf-8")
    result = eval_json(run_cli, trained["best"], "--data", path)
    assert result["split"] == str(path)
    assert result["tokens"] == 32
    # Independent reference: the text as S parallel streams (as many as whole windows of seq_len=8
    # fit, at most EVAL_STREAMS), each read in one forward pass from a zero state (eval reads them in
    # chunks of seq_len, carrying the state).
    model = open_checkpoint(trained["best"], torch.device("cpu")).model
    ids = vocab.encode(list(text))
    streams = min(EVAL_STREAMS, 32 // 8)
    with torch.no_grad():
        logits, _ = model(ids[:32].view(streams, -1))
        expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[1:33].view(streams, -1).flatten())
    assert result["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_eval_needs_no_data_file(write_config, run_cli, tmp_path, text_file):
    code, _, err = run_cli(["fit", write_config(), "-q"])
    assert code == 0, err
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    before = {split: eval_json(run_cli, best, "--split", split) for split in ("val", "test")}
    text_file.unlink()
    after = {split: eval_json(run_cli, best, "--split", split) for split in ("val", "test")}
    assert after == before


# --------------------------------------------------------------------------- sample


def sample_text(run_cli, checkpoint, *args):
    code, out, err = run_cli(["sample", checkpoint, *args])
    assert code == 0, err
    assert out.endswith("\n")
    return out[:-1]


def test_sample_same_seed_same_text(trained, run_cli):
    args = ["--prompt", "Alice was", "--length", "40", "--temperature", "1.0"]
    a = sample_text(run_cli, trained["best"], *args, "--seed", "7")
    b = sample_text(run_cli, trained["best"], *args, "--seed", "7")
    c = sample_text(run_cli, trained["best"], *args, "--seed", "8")
    assert a == b
    assert a.startswith("Alice was") and c.startswith("Alice was")
    assert len(a) == len("Alice was") + 40  # character tokens, <unk> never emitted
    assert a != c


def test_sample_greedy_ignores_the_seed(trained, run_cli):
    args = ["--prompt", "the ", "--length", "15", "--temperature", "0"]
    assert sample_text(run_cli, trained["best"], *args, "--seed", "1") == \
        sample_text(run_cli, trained["best"], *args, "--seed", "2")


def test_sample_top_k_one_is_greedy(trained, run_cli):
    greedy = sample_text(run_cli, trained["best"], "--prompt", "a", "--length", "15", "--temperature", "0")
    top1 = sample_text(run_cli, trained["best"], "--prompt", "a", "--length", "15", "--top-k", "1", "--seed", "4")
    assert top1 == greedy


# --------------------------------------------------------------------------- run directories


def test_second_fit_into_same_run_dir_is_refused(write_config, run_cli, run_copy, snapshot):
    before = snapshot(run_copy)
    code, out, err = run_cli(["fit", write_config(run_dir=run_copy)])
    line = assert_one_line_error(code, out, err, "--resume", "--overwrite")
    assert str(run_copy) in line
    assert snapshot(run_copy) == before


def test_overwrite_starts_the_run_again(write_config, run_cli, run_copy):
    old_summary = json.loads((run_copy / "summary.json").read_text())
    old_events = sorted(p.name for p in run_copy.glob("events.out.tfevents.*"))
    (run_copy / "stale.txt").write_text("from the old run")
    code, _, err = run_cli(["fit", write_config(run_dir=run_copy), "train.seed=9", "--overwrite", "-q"])
    assert code == 0, err
    assert not (run_copy / "stale.txt").exists()
    assert load_config(run_copy / "config.yaml").train.seed == 9
    summary = json.loads((run_copy / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["final"] != old_summary["final"]
    events = list(run_copy.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].name not in old_events
    assert [json.loads(x)["step"] for x in (run_copy / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["tag"] == "train/loss"] == [1, 2, 3, 4]


def test_fits_without_run_dir_get_numbered_directories(write_config, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(run_dir=None)
    code, out, err = run_cli(["fit", config, "train.max_steps=2"])
    assert code == 0, err
    assert "run: runs/tiny-1" in out
    code, _, err = run_cli(["fit", config, "train.max_steps=2", "-q"])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny-1", "tiny-2"]
    for number in (1, 2):
        run = tmp_path / "runs" / f"tiny-{number}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert Path(summary["run_dir"]) == Path("runs") / f"tiny-{number}"
        assert (run / "checkpoints" / "last.pt").is_file()


def test_resume_with_nothing_to_resume(write_config, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "never-ran"
    code, out, err = run_cli(["fit", write_config(run_dir=missing), "--resume"])
    assert_one_line_error(code, out, err, "resume", str(missing))
    assert not missing.exists()
    code, out, err = run_cli(["fit", write_config(run_dir=None), "--resume"])
    assert_one_line_error(code, out, err, "resume", "tiny")
    assert not (tmp_path / "runs").exists()


def test_resume_and_overwrite_together_are_refused(write_config, run_cli, run_copy, snapshot):
    before = snapshot(run_copy)
    code, out, err = run_cli(["fit", write_config(run_dir=run_copy), "--resume", "--overwrite"])
    assert_one_line_error(code, out, err, "--resume", "--overwrite")
    assert snapshot(run_copy) == before


# --------------------------------------------------------------------------- bad input: fit


def _data_file(tmp_path, kind):
    path = tmp_path / f"data-{kind}.txt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "latin1":
        path.write_bytes(("caf\xe9 " * 200).encode("latin-1"))
    elif kind == "dir":
        path.mkdir()
    return path


@pytest.mark.parametrize("kind, overrides, needles", [
    ("misspelled", ["model.hiden_size=8"], ["model.hiden_size", "model.hidden_size"]),
    ("wrong-type", ["model.hidden_size=abc"], ["model.hidden_size", "abc"]),
    ("impossible", ["optim.lr=-1"], ["optim.lr"]),
    ("unknown-section", ["sched.steps=3"], ["sched"]),
    ("no-equals", ["optim.lr"], ["key=value"]),
    ("too-short", ["data.seq_len=4000"], ["data.seq_len", "train.batch_size"]),
    ("missing", [], ["not found"]),
    ("empty", [], ["empty"]),
    ("binary", [], ["binary"]),
    ("latin1", [], ["UTF-8"]),
    ("dir", [], ["directory"]),
])
def test_fit_bad_input_changes_nothing(write_config, run_cli, run_copy, snapshot, tmp_path, kind, overrides, needles):
    data = _data_file(tmp_path, kind) if kind in ("missing", "empty", "binary", "latin1", "dir") else None
    config = write_config(run_dir=run_copy, data_path=data)
    before = snapshot(run_copy)
    # Even --overwrite must not touch the old run when the input is bad.
    code, out, err = run_cli(["fit", config, *overrides, "--overwrite"])
    line = assert_one_line_error(code, out, err, *needles)
    if data is not None:
        assert str(data) in line
    assert snapshot(run_copy) == before


def test_fit_missing_config_file(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["fit", "nope.yaml"])
    assert_one_line_error(code, out, err, "nope.yaml")
    assert not (tmp_path / "runs").exists()


def test_fit_without_max_steps_or_epochs_is_refused(write_config, run_cli, tmp_path):
    run = tmp_path / "nosteps"
    code, out, err = run_cli(["fit", write_config(run_dir=run), "train.max_steps=null"])
    assert_one_line_error(code, out, err, "train.max_steps")
    assert not run.exists()


def test_fit_with_huge_seed_is_refused(write_config, run_cli, tmp_path):
    code, out, err = run_cli(["fit", write_config(), "train.seed=99999999999999999999999"])
    assert_one_line_error(code, out, err, "train.seed")


# --------------------------------------------------------------------------- bad input: checkpoints


class _Exploit:
    """Unpickling this runs exec(), which creates a file: what a hostile checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.target!r}, 'w').close()",))


def _bad_checkpoint(trained, tmp_path, kind) -> Path:
    path = tmp_path / f"bad-{kind}.pt"
    real = trained["best"].read_bytes()
    if kind == "text":
        path.write_text("this is not a checkpoint\n" * 20)
    elif kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(real[: len(real) // 2])
    elif kind == "random-bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "torch-exploit":
        torch.save({"format_version": 1, "config": _Exploit(tmp_path / "PWNED")}, path)
    elif kind == "pickle-exploit":
        path.write_bytes(pickle.dumps(_Exploit(tmp_path / "PWNED")))
    elif kind == "plain-dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "future-version":
        payload = torch.load(trained["best"], weights_only=True)
        payload["format_version"] = 99
        torch.save(payload, path)
    elif kind == "no-vocab":
        payload = torch.load(trained["best"], weights_only=True)
        del payload["task_state"]["vocab"]
        torch.save(payload, path)
    elif kind == "wrong-shapes":
        payload = torch.load(trained["best"], weights_only=True)
        payload["config"]["model"]["hidden_size"] = 16
        torch.save(payload, path)
    elif kind == "invalid-config":
        payload = torch.load(trained["best"], weights_only=True)
        payload["config"]["model"]["hidden_size"] = 0
        torch.save(payload, path)
    elif kind == "directory":
        path.mkdir()
    # "missing": nothing written
    return path


BAD_CHECKPOINTS = {
    "text": "checkpoint", "zero-bytes": "empty", "truncated": "checkpoint", "random-bytes": "checkpoint",
    "torch-exploit": "refused", "pickle-exploit": "checkpoint", "plain-dict": "format_version",
    "future-version": "upgrade", "no-vocab": "vocab", "wrong-shapes": "do not fit",
    "invalid-config": "model.hidden_size", "directory": "directory", "missing": "not found",
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("command", ["eval", "sample"])
@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_refused(trained, run_cli, run_copy, snapshot, tmp_path, monkeypatch, command, kind):
    monkeypatch.chdir(tmp_path)
    path = _bad_checkpoint(trained, tmp_path, kind)
    before = snapshot(run_copy)
    code, out, err = run_cli([command, path])
    needles = [BAD_CHECKPOINTS[kind]] + ([str(path)] if kind not in ("wrong-shapes", "invalid-config") else [])
    assert_one_line_error(code, out, err, *needles)
    assert out == ""
    assert not (tmp_path / "PWNED").exists()
    assert snapshot(run_copy) == before


def test_exploit_payload_is_live(tmp_path):
    """Control for the test above: loading the exploit without weights_only does create the file."""
    path = tmp_path / "exploit.pt"
    torch.save(_Exploit(tmp_path / "CONTROL"), path)
    torch.load(path, weights_only=False)
    assert (tmp_path / "CONTROL").exists()


@pytest.mark.parametrize("field", ["vocab-int", "no-step", "eval-ids-out-of-range"])
def test_malformed_checkpoint_fields_are_refused(trained, run_cli, tmp_path, field):
    payload = torch.load(trained["best"], weights_only=True)
    if field == "vocab-int":
        payload["task_state"]["vocab"] = 5
    elif field == "no-step":
        del payload["trainer"]["step"]
    else:
        payload["task_state"]["eval_tokens"]["val"] = torch.full((50,), 9999, dtype=torch.int32)
    path = tmp_path / "malformed.pt"
    torch.save(payload, path)
    try:
        code, out, err = run_cli(["eval", path])
    except Exception as exc:  # escaped main(): the traceback a user would see
        pytest.fail(f"{type(exc).__name__} escaped: {exc}")
    assert_one_line_error(code, out, err, str(path))


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args", [
    ["fit", "{config}", "--bogus"],
    ["eval", "{best}", "--split", "train"],
    ["eval"],
    ["sample", "{best}", "--length", "-1"],
    ["sample", "{best}", "--temperature", "hot"],
    ["train", "{config}"],
])
def test_usage_errors_exit_2(trained, run_cli, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(config=trained["config"], best=trained["best"]) for a in args]
    code, out, err = run_cli(args)
    assert code == 2
    assert "Traceback" not in err
    assert "Usage:" in err or "Usage:" in out
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")  # one line, like every error
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- real processes


def grutrain_process(args, cwd):
    return subprocess.run([sys.executable, "-m", "grutrain", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_process_bad_data_exits_1_with_one_line(write_config, tmp_path):
    config = write_config(data_path=tmp_path / "missing.txt", run_dir=tmp_path / "r")
    result = grutrain_process(["fit", config], tmp_path)
    assert_one_line_error(result.returncode, result.stdout, result.stderr, "missing.txt", "not found")
    assert not (tmp_path / "r").exists()


def test_process_hostile_checkpoint_exits_1_and_runs_nothing(trained, tmp_path):
    path = _bad_checkpoint(trained, tmp_path, "torch-exploit")
    result = grutrain_process(["eval", path, "--json"], tmp_path)
    assert_one_line_error(result.returncode, result.stdout, result.stderr, str(path))
    assert result.stdout == ""
    assert not (tmp_path / "PWNED").exists()


def test_process_eval_json_and_usage_error(trained, tmp_path):
    result = grutrain_process(["eval", trained["best"], "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["step"] == load_checkpoint(trained["best"])["trainer"]["step"]
    assert result.stdout.count("\n") == 1
    result = grutrain_process(["eval", trained["best"], "--nope"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--nope" in result.stderr


@pytest.mark.parametrize("kind", ["torch-exploit", "pickle-exploit"])
def test_resume_refuses_a_hostile_last_checkpoint_without_running_it(trained, tmp_path, run_cli, kind):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    hostile = _bad_checkpoint(trained, tmp_path, kind)
    shutil.copyfile(hostile, run / "checkpoints" / "last.pt")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    cfg = yaml.safe_load(trained["config"].read_text())
    cfg["run"]["dir"] = str(run)
    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    code, out, err = run_cli(["fit", str(config), *FIT_OVERRIDES, "--resume"])
    assert_one_line_error(code, out, err, "last.pt")
    assert not (tmp_path / "PWNED").exists()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before  # run untouched
