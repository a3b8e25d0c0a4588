"""task: synthetic -- the generated data against hand computations, the baselines, training, exact resume,
`grutrain eval` on a regenerated split, and bad input through the real CLI (exit 1, one line)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import grutrain.trainer.loop as train_module
from grutrain.files.checkpoint import load_checkpoint, save_checkpoint
from grutrain.tasks import validate_config
from grutrain.tasks.synthetic import problems as syn
from grutrain.trainer.metrics import read_metrics
from grutrain.trainer.fit import fit


def data_config(**data):
    return validate_config({"task": "synthetic", "data": data}).data


def tiny_raw(run_dir, kind="adding", **sections):
    raw = {
        "task": "synthetic",
        "data": {"kind": kind, "seq_len": 8, "train_size": 64, "val_size": 32, "test_size": 32,
                 "num_symbols": 3, "copy_len": 2},
        "model": {"embedding_dim": 4, "hidden_size": 8},
        "optim": {"lr": 0.01},
        "train": {"max_steps": 10, "batch_size": 8, "eval_every": 3, "checkpoint_every": 2, "log_every": 1,
                  "device": "cpu"},
        "run": {"dir": str(run_dir)},
    }
    for section, values in sections.items():
        raw[section].update(values)
    return raw


def write_yaml(path, raw):
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def assert_one_line_error(code, err, *needles):
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


# --------------------------------------------------------------------------- the data


@pytest.mark.parametrize("kind", ["adding", "copy", "sine"])
def test_same_seed_same_data_other_seed_or_split_differs(kind):
    data = data_config(kind=kind, seq_len=30, train_size=50, val_size=50, test_size=50)
    a, b = syn.make_split(data, 5, "train"), syn.make_split(data, 5, "train")
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    for other in (syn.make_split(data, 6, "train"), syn.make_split(data, 5, "val"), syn.make_split(data, 5, "test")):
        assert not torch.equal(a.inputs, other.inputs)
    # seed 0's validation stream is not seed 1's training stream (no seed + offset collisions)
    assert not torch.equal(syn.make_split(data, 0, "val").inputs, syn.make_split(data, 1, "train").inputs)


def test_data_does_not_depend_on_the_global_random_state():
    data = data_config(kind="adding", seq_len=10, val_size=20)
    torch.manual_seed(1)
    a = syn.make_split(data, 0, "val")
    torch.manual_seed(2)
    torch.rand(7)
    assert torch.equal(a.inputs, syn.make_split(data, 0, "val").inputs)


@pytest.mark.parametrize("seq_len", [2, 7, 100])
def test_adding_two_markers_one_per_half_and_target_is_their_sum(seq_len):
    split = syn.adding_problem(300, seq_len, torch.Generator().manual_seed(0))
    assert split.inputs.shape == (300, seq_len, 2) and split.targets.shape == (300,)
    half = seq_len // 2
    for x, y in zip(split.inputs.tolist(), split.targets.tolist()):
        values, markers = [v for v, _ in x], [m for _, m in x]
        assert set(markers) <= {0.0, 1.0} and all(0.0 <= v < 1.0 for v in values)
        marked = [t for t, m in enumerate(markers) if m == 1.0]
        assert len(marked) == 2
        assert 0 <= marked[0] < half <= marked[1] < seq_len
        assert y == pytest.approx(values[marked[0]] + values[marked[1]], abs=1e-6)
    # every position of each half gets marked sometimes (uniform, not a fixed slot)
    if seq_len == 7:
        assert set(split.inputs[:, :, 1].nonzero()[:, 1].tolist()) == set(range(7))


def test_copy_layout():
    T, C, K = 12, 3, 4
    split = syn.copy_memory(200, T, C, K, torch.Generator().manual_seed(0))
    assert split.inputs.shape == split.targets.shape == (200, T)
    for x, y in zip(split.inputs.tolist(), split.targets.tolist()):
        symbols = x[:C]
        assert all(1 <= s <= K for s in symbols)
        assert x[C:T - C - 1] == [0] * (T - 2 * C - 1)  # the blank delay
        assert x[T - C - 1] == K + 1  # the delimiter
        assert x[T - C:] == [0] * C
        assert y == [0] * (T - C) + symbols  # blanks, then the symbols in order
    assert set(split.inputs[:, :C].flatten().tolist()) == set(range(1, K + 1))


def test_copy_at_its_minimum_length_has_no_delay():
    split = syn.copy_memory(5, syn.copy_min_seq_len(3), 3, 4, torch.Generator().manual_seed(0))
    assert split.inputs.shape[1] == 7
    assert split.inputs[:, 3].eq(5).all() and split.inputs[:, 4:].eq(0).all()


def test_sine_windows_and_next_value():
    data = data_config(kind="sine", seq_len=20, val_size=50, noise=0.0)
    split = syn.make_split(data, 0, "val")
    assert split.inputs.shape == (50, 20, 1) and split.targets.shape == (50,)
    assert split.inputs.abs().max() <= 1.0
    # without noise, each window is a sine: x[t+1] = 2 cos(w) x[t] - x[t-1] holds, also for the target
    series = torch.cat([split.inputs[:, :, 0], split.targets[:, None]], dim=1).double()  # [N, T+1]
    two_cos_w = (series[:, 2] + series[:, 0]) / series[:, 1]  # [N]
    predicted = two_cos_w * series[:, -2] - series[:, -3]
    ok = series[:, 1].abs() > 0.1  # where the ratio is well conditioned
    assert torch.allclose(predicted[ok], series[ok, -1], atol=1e-3)


# --------------------------------------------------------------------------- baselines


def test_always_one_baseline_is_the_hand_computed_mse_and_near_one_sixth():
    split = syn.adding_problem(20000, 10, torch.Generator().manual_seed(1))
    by_hand = sum((y - 1.0) ** 2 for y in split.targets.tolist()) / len(split)
    assert syn.always_one_mse(split) == pytest.approx(by_hand, rel=1e-5)
    assert by_hand == pytest.approx(1 / 6, abs=0.006)  # Var(U1 + U2) = 2/12


def test_memoryless_copy_baseline_is_copy_len_log_k_over_t():
    T, C, K = 30, 5, 8
    split = syn.copy_memory(50, T, C, K, torch.Generator().manual_seed(0))
    scores = syn.memoryless_copy(split, C, K)
    assert scores["cross_entropy"] == pytest.approx(C * math.log(K) / T, rel=1e-12)
    assert scores["accuracy"] == pytest.approx(1 / K)


def test_naive_sine_baseline_by_hand():
    split = syn.noisy_sine(40, 9, 0.1, torch.Generator().manual_seed(0))
    pairs = [(x[-1][0], y) for x, y in zip(split.inputs.tolist(), split.targets.tolist())]
    scores = syn.naive_last_value(split)
    assert scores["mse"] == pytest.approx(sum((a - b) ** 2 for a, b in pairs) / 40, rel=1e-5)
    assert scores["mae"] == pytest.approx(sum(abs(a - b) for a, b in pairs) / 40, rel=1e-5)


# --------------------------------------------------------------------------- training


def test_tiny_adding_run_learns_and_reports_baselines(tmp_path):
    raw = tiny_raw(tmp_path / "run", data={"seq_len": 6, "train_size": 512, "val_size": 200, "test_size": 200},
                   model={"hidden_size": 16}, optim={"lr": 0.01, "schedule": "constant"},
                   train={"max_steps": 150, "batch_size": 32, "eval_every": 150, "checkpoint_every": 150,
                          "log_every": 10})
    summary = fit(validate_config(raw), progress="none")
    curve = [m["value"] for m in read_metrics(tmp_path / "run") if m["tag"] == "train/loss"]
    assert len(curve) == 15 and curve[-1] < curve[0] / 3
    baselines = summary["baselines"]
    assert set(baselines) == {"val/always_one_mse", "test/always_one_mse"}
    test = syn.make_split(validate_config(raw).data, 0, "test")
    assert baselines["test/always_one_mse"] == pytest.approx(float(((test.targets - 1) ** 2).mean()))
    # it learned more than the mean: below the baseline on held-out sequences
    assert summary["final"]["test/mse"] < baselines["test/always_one_mse"]
    assert summary["final"]["test/loss"] == summary["final"]["test/mse"]


def test_copy_run_metrics_by_hand(tmp_path):
    """The logged loss and accuracy of a copy run equal a direct computation with its final weights."""
    from grutrain.tasks.checkpoints import open_checkpoint

    raw = tiny_raw(tmp_path / "run", kind="copy", train={"max_steps": 4, "eval_every": 4})
    summary = fit(validate_config(raw), progress="none")
    assert set(summary["baselines"]) == {f"{s}/memoryless_{m}" for s in ("val", "test")
                                         for m in ("cross_entropy", "accuracy")}
    assert summary["baselines"]["val/memoryless_cross_entropy"] == pytest.approx(2 * math.log(3) / 8)
    opened = open_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", torch.device("cpu"))
    model, cfg = opened.model, opened.cfg
    val = syn.make_split(cfg.data, 0, "val")
    with torch.no_grad():
        logits, _ = model(val.inputs)  # [N, T, 4]
    assert logits.shape == (32, 8, 4)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), val.targets.flatten())
    hits = (logits[:, -2:].argmax(-1) == val.targets[:, -2:]).float()
    assert summary["final"]["val/loss"] == pytest.approx(float(ce), rel=1e-5)
    assert summary["final"]["val/accuracy"] == pytest.approx(float(hits.mean()))
    assert summary["final"]["val/sequence_accuracy"] == pytest.approx(float(hits.min(dim=1).values.mean()))


class CrashAfterCheckpoint(Exception):
    pass


@pytest.mark.parametrize("kind", ["adding", "copy", "sine"])
def test_resume_after_crash_matches_uninterrupted_run(tmp_path, monkeypatch, kind):
    """Crash right after last.pt at step 4 (mid-epoch: 8 batches an epoch), resume, compare bit for bit."""
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    fit(validate_config(tiny_raw(full_dir, kind)), progress="none")
    real_save = train_module.save_checkpoint

    def save_then_crash(payload, path):
        real_save(payload, path)
        if path.name == "last.pt" and payload["trainer"]["step"] == 4:
            raise CrashAfterCheckpoint

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(CrashAfterCheckpoint):
        fit(validate_config(tiny_raw(cut_dir, kind)), progress="none")
    saved = load_checkpoint(cut_dir / "checkpoints" / "last.pt")
    assert saved["trainer"]["step"] == 4 and saved["sampler"]["position"] == 4
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)

    fit(validate_config(tiny_raw(cut_dir, kind)), resume=True, progress="none")
    full = load_checkpoint(full_dir / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(cut_dir / "checkpoints" / "last.pt")["model"]
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    curves = [[(m["step"], m["value"]) for m in read_metrics(d) if m["tag"] in ("train/loss", "val/loss")]
              for d in (full_dir, cut_dir)]
    assert curves[0] == curves[1]


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("name,kind", [("adding", "adding"), ("copy", "copy")])
def test_shipped_configs_are_valid(name, kind):
    from pathlib import Path

    from grutrain.tasks import load_config

    cfg = load_config(Path(__file__).resolve().parents[3] / "configs" / f"{name}.yaml")
    assert cfg.task == "synthetic" and cfg.data.kind == kind
    syn.check_data_config(cfg.data)
    if kind == "adding":
        assert cfg.data.seq_len == 100  # the T


@pytest.fixture(scope="module")
def trained_adding(tmp_path_factory):
    from grutrain.cli import main

    root = tmp_path_factory.mktemp("adding")
    config = write_yaml(root / "adding.yaml", tiny_raw(root / "run", train={"max_steps": 6}))
    with pytest.raises(SystemExit) as info:
        main(["fit", str(config), "--quiet"])
    assert info.value.code == 0
    return {"root": root, "run": root / "run", "last": root / "run" / "checkpoints" / "last.pt"}


def test_eval_regenerates_the_split_and_matches_the_final_metrics(trained_adding, run_cli):
    summary = json.loads((trained_adding["run"] / "summary.json").read_text())
    for split in ("val", "test"):
        code, out, err = run_cli(["eval", trained_adding["last"], "--split", split, "--json"])
        assert code == 0, err
        result = json.loads(out)
        assert result["split"] == split and result["examples"] == 32
        assert result["mse"] == pytest.approx(summary["final"][f"{split}/mse"], rel=1e-6)
        assert result["baseline/always_one_mse"] == pytest.approx(summary["baselines"][f"{split}/always_one_mse"])


def test_eval_plain_output_shows_metrics_and_baseline(trained_adding, run_cli):
    code, out, err = run_cli(["eval", trained_adding["last"], "--split", "test"])
    assert code == 0, err
    assert "on test: 32 examples" in out and "mse " in out and "baselines: baseline/always_one_mse" in out


def test_eval_refuses_data(trained_adding, run_cli, tmp_path):
    other = tmp_path / "x.txt"
    other.write_text("1,2,3\n")
    code, _, err = run_cli(["eval", trained_adding["last"], "--data", other])
    assert_one_line_error(code, err, "--data", "synthetic")


def test_eval_refuses_a_split_that_regenerates_differently(trained_adding, run_cli, tmp_path):
    payload = load_checkpoint(trained_adding["last"])
    payload["task_state"]["synthetic_data"]["test"] = "0" * 16
    save_checkpoint(payload, tmp_path / "tampered.pt")
    code, _, err = run_cli(["eval", tmp_path / "tampered.pt", "--split", "test", "--json"])
    assert_one_line_error(code, err, "test split differs")


def test_predict_is_not_offered(trained_adding, run_cli, tmp_path):
    code, _, err = run_cli(["predict", trained_adding["last"], "--input", tmp_path / "in.csv"])
    assert_one_line_error(code, err, "synthetic", "no predict")


@pytest.mark.parametrize("kind,data,train,needles", [
    ("copy", {"seq_len": 20, "copy_len": 10}, {}, ["data.seq_len=20", "data.seq_len >= 21"]),
    ("copy", {"seq_len": 4, "copy_len": 2}, {}, ["data.seq_len >= 5"]),
    ("adding", {"seq_len": 1}, {}, ["data.seq_len"]),
    ("adding", {"train_size": 0}, {}, ["data.train_size"]),
    ("sine", {"val_size": 0}, {}, ["data.val_size"]),
    ("copy", {"num_symbols": 1}, {}, ["data.num_symbols"]),
    ("copy", {"copy_len": 0}, {}, ["data.copy_len"]),
    ("sine", {"noise": -0.1}, {}, ["data.noise"]),
    ("adding", {"kind": "parity"}, {}, ["data.kind", "adding"]),
    ("adding", {"train_size": 10}, {"batch_size": 16}, ["10 sequences", "train.batch_size=16"]),
])
def test_fit_bad_input_exits_1_with_one_line(run_cli, tmp_path, kind, data, train, needles):
    config = write_yaml(tmp_path / "bad.yaml", tiny_raw(tmp_path / "run", kind, data=data, train=train))
    code, out, err = run_cli(["fit", str(config), "--quiet"])
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "run").exists()  # refused before any work: no run directory left behind
