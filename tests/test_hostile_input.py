"""Hostile input, round two (issue 12), the classes about values: run.name (4), sizes (5), config
text (7), numbers (9) and the environment (10); and random argument lists for every command.
Through the real CLI; each case asserts the exit code, one stderr line, no traceback and the files."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import refused, run_grutrain, snapshot_tree, tiny_config, train_tiny_run, write_yaml


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("hostile-input"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- 4. run.name


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/b", ".", "..", ".hidden", "a" * 300, "a\x00b", "a b",
                                  "x\x1b[31m", "", "a\\b"])
def test_run_name_is_a_plain_name(world, run_cli, workdir, name):
    config = write_yaml(workdir / "c.yaml", tiny_config(world["root"], run={"name": name}))
    before = snapshot_tree(workdir.parent)
    code, out, err = run_cli(["fit", config, "-q"])
    refused(code, out, err, "run.name")
    assert snapshot_tree(workdir.parent) == before and not (workdir / "runs").exists()


@pytest.mark.parametrize("name", ["charlm", "lr-0.01", "2024", "a_b+c=d", "модель"])
def test_plain_run_names_are_accepted(world, run_cli, workdir, name):
    config = write_yaml(workdir / "c.yaml", tiny_config(world["root"], run={"name": name}))
    code, out, err = run_cli(["fit", config, "--print-config"])
    assert code == 0, err


# --------------------------------------------------------------------------- 5. sizes that cannot fit


@pytest.mark.parametrize("overrides, needle", [
    (["model.hidden_size=4096"], "memory"),
    (["model.num_layers=40", "model.hidden_size=1024"], "memory"),
    (["model.embedding_dim=60000", "model.hidden_size=2048"], "memory"),
    (["model.hidden_size=100000000"], "model.hidden_size"),
    (["model.num_layers=1000000"], "model.num_layers"),
    (["train.threads=100000"], "train.threads"),
    (["train.batch_size=1000000000"], "train.batch_size"),
])
def test_sizes_that_cannot_fit_are_refused_before_any_allocation(world, run_cli, workdir, monkeypatch,
                                                                 overrides, needle):
    import grutrain.capacity

    monkeypatch.setattr(grutrain.capacity, "available_memory", lambda: 200 << 20)
    config = write_yaml(workdir / "c.yaml", tiny_config(world["root"], run={"dir": str(workdir / "r")}))
    code, out, err = run_cli(["fit", config, *overrides, "-q"])
    line = refused(code, out, err, needle)
    if needle == "memory":
        assert "available" in line and "parameters" in line
    assert not (workdir / "r").exists() and not (workdir / "runs").exists()


@pytest.mark.parametrize("args, needle", [
    (["bench", "--shape", "100000,100000,1000,1000", "--no-trainer"], "memory"),
    (["bench", "--shape", "99999999999999999999,1,1,1", "--no-trainer"], "--shape"),
    (["lr-find", "CONFIG", "--steps", "100000000000000000000"], "--steps"),
])
def test_other_counts_are_bounded(world, run_cli, workdir, args, needle):
    args = [world["config"] if a == "CONFIG" else a for a in args]
    code, out, err = run_cli(args)
    refused(code, out, err, needle)
    assert not (workdir / "lr-find").exists()


# --------------------------------------------------------------------------- 7. config text


def alias_bomb() -> str:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\nmodel: *a8\n"


CONFIG_TEXTS = [
    ("alias-bomb", alias_bomb(), "expands"),
    ("duplicate-key", "model:\n  hidden_size: 8\n  hidden_size: 9\n", "hidden_size' is given twice"),
    ("duplicate-section", "model: {}\noptim: {}\nmodel: {}\n", "given twice"),
    ("huge-int", "train:\n  seed: " + "9" * 5000 + "\n", "digits"),
    ("deep", "a: " + "[" * 5000 + "]" * 5000 + "\n", "config"),
    ("long-unknown-key", "model:\n  " + "k" * 1000 + ": 1\n", "unknown config key"),
    ("escape-codes", "task: \"\\e[31mred\\e]0;title\\a\"\n", "task"),
    ("huge-string", "run:\n  name: " + "n" * 200000 + "\n", "run.name"),
    ("not-utf8", "run:\n  name: caf\udce9\n", "UTF-8"),
    ("template-width", "run:\n  dir: runs/{optim.lr:>2000000000}\n", "width"),
    ("template-precision", "run:\n  dir: runs/{optim.lr:.999999999f}\n", "width"),
    ("template-unknown", "run:\n  dir: runs/{" + "x" * 10000 + "}\n", "unknown placeholder"),
    ("list", "- 1\n- 2\n", "mapping"),
]


@pytest.mark.parametrize("case, text, needle", CONFIG_TEXTS, ids=[c[0] for c in CONFIG_TEXTS])
def test_config_text_is_bounded(run_cli, workdir, case, text, needle):
    path = workdir / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    code, out, err = run_cli(["fit", path, "--print-config"])
    refused(code, out, err, needle)
    assert len(err) < 600
    assert sorted(p.name for p in workdir.iterdir()) == ["c.yaml"]


@pytest.mark.parametrize("override, needle", [
    ("run.dir=runs/{optim.lr:>2000000000}", "width"),
    ("optim.lr=" + "9" * 5000, "digits"),
    ("model={a: 1, a: 2}", "given twice"),
    ("k" * 100000 + "=1", "unknown config key"),
])
def test_overrides_are_bounded_too(world, run_cli, workdir, override, needle):
    code, out, err = run_cli(["fit", world["config"], override, "--print-config"])
    refused(code, out, err, needle)
    assert len(err) < 600


def test_an_empty_config_trains_the_defaults(run_cli, workdir):
    """Borderline, decided: an empty YAML file is the default config (lm on data/alice29.txt)."""
    (workdir / "empty.yaml").write_text("")
    code, out, err = run_cli(["fit", workdir / "empty.yaml", "--print-config"])
    assert code == 0, err
    assert "task: lm" in out


# --------------------------------------------------------------------------- 9. numbers


def test_forecast_values_whose_normalisation_overflows_are_refused(run_cli, workdir):
    data = workdir / "huge.csv"
    with open(data, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["y"])
        writer.writerows([[f"{(-1) ** i * 1e300:.3e}"] for i in range(200)])
    config = write_yaml(workdir / "fc.yaml", {
        "task": "forecast", "data": {"path": str(data), "target_columns": ["y"], "input_len": 6, "horizon": 1},
        "model": {"hidden_size": 8}, "train": {"max_steps": 4, "batch_size": 8, "device": "cpu"},
        "run": {"dir": str(workdir / "r")}})
    code, out, err = run_cli(["fit", config, "-q"])
    refused(code, out, err, "too large to normalise")
    assert not (workdir / "r").exists()


@pytest.mark.parametrize("args, needle", [
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "1e-300"], "--temperature"),
    (["--seed", str(2 ** 64)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--length", "10000000000"], "--length"),
])
def test_sampling_settings_out_of_range(world, run_cli, args, needle):
    code, out, err = run_cli(["sample", world["best"], "--prompt", "a", *args])
    refused(code, out, err, needle)
    assert out == ""


def test_a_nan_temperature_is_a_usage_error(world, run_cli):
    code, out, err = run_cli(["sample", world["best"], "--prompt", "a", "--temperature", "nan"])
    assert code == 2 and "Traceback" not in err and "--temperature" in err and out == ""


@pytest.fixture
def nan_checkpoint(world, tmp_path):
    """Finite weights so large that the logits overflow: the loss is not a number."""
    from grutrain.files.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(world["best"])
    signs = torch.Generator().manual_seed(0)
    payload["model"] = {k: torch.randn(v.shape, generator=signs).sign() * 3e38 if v.is_floating_point() else v
                        for k, v in payload["model"].items()}
    path = tmp_path / "nan.pt"
    save_checkpoint(payload, path)
    return path


@pytest.mark.parametrize("as_json", [True, False])
def test_eval_never_prints_nan(nan_checkpoint, run_cli, as_json):
    code, out, err = run_cli(["eval", nan_checkpoint, *(["--json"] if as_json else [])])
    refused(code, out, err, "not a finite number")
    assert "nan" not in out.lower() and "infinity" not in out.lower()


def test_json_output_is_strict_json():
    from grutrain.files.json_text import dumps

    with pytest.raises(ValueError):
        dumps({"x": math.nan})
    assert dumps({"x": 1.5}) == '{"x": 1.5}'


# --------------------------------------------------------------------------- 10. the environment


@pytest.mark.parametrize("suffix, needle", [(">&-", "stdout is closed"), ("> /dev/full", "No space left")])
def test_stdout_closed_or_full(tmp_path, suffix, needle):
    code, out, err = run_grutrain(["init", "synthetic", "--output", "s.yaml"], cwd=tmp_path, shell_suffix=suffix)
    refused(code, out, err, needle)


def test_stdout_that_cannot_encode_the_output(world, tmp_path):
    code, out, err = run_grutrain(["init", "synthetic", "--output", "é.yaml"], cwd=tmp_path,
                                  env={"PYTHONIOENCODING": "ascii"})
    refused(code, out, err, "PYTHONIOENCODING")


def test_a_prompt_that_is_not_utf8(world, tmp_path):
    code, out, err = run_grutrain(["sample", str(world["best"]), "--prompt", b"caf\xe9", "--length", "3"],
                                  cwd=tmp_path)
    refused(code, out, err, "--prompt", "UTF-8")


def test_the_c_locale_still_works(world, tmp_path):
    """Borderline, decided: LANG=C is not an error (Python reads and writes UTF-8 there)."""
    code, out, err = run_grutrain(["sample", str(world["best"]), "--prompt", "é", "--length", "3", "--seed", "1"],
                                  cwd=tmp_path, env={"LANG": "C", "LC_ALL": "C"})
    assert code == 0 and "Traceback" not in err, err


def test_a_disk_error_while_training_is_one_line(world, run_cli, tmp_path, monkeypatch):
    """ENOSPC from the TensorBoard writer (or any write) during a resumed run: grutrain's one line."""
    import errno

    from torch.utils.tensorboard import SummaryWriter

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    run = Path(shutil.copytree(world["run"], tmp_path / "run"))
    config = write_yaml(tmp_path / "c.yaml", tiny_config(world["root"], run={"dir": str(run)}))
    code, out, err = run_cli(["fit", config, "train.max_steps=8", "--resume", "-q"])
    refused(code, out, err, "No space left")


RUNS_SUMMARIES = ['[1, 2]', '{"best": [1], "final": "x", "status": 5, "step": "many"}', '"text"', "{",
                  '{"final": {"val/loss": "NaN"}, "wall_time_s": -1e309}', "[" * 100000 + "]" * 100000,
                  '{"error": "' + "e" * 100000 + '"}', "\x00\xff"]


@pytest.mark.parametrize("summary", RUNS_SUMMARIES, ids=range(len(RUNS_SUMMARIES)))
def test_runs_survives_any_summary(world, run_cli, workdir, summary):
    run = Path(shutil.copytree(world["run"], workdir / "runs" / "r-1"))
    (run / "summary.json").write_bytes(summary.encode("utf-8", "replace"))
    for args in (["runs"], ["runs", "--json"], ["runs", "--csv"]):
        code, out, err = run_cli(args)
        assert code == 0 and "Traceback" not in err, err


def test_runs_does_not_follow_symlink_loops_or_walk_forever(world, run_cli, workdir):
    root = workdir / "runs"
    deep = root.joinpath(*["d"] * 12)
    shutil.copytree(world["run"], deep / "r-1")
    (root / "loop").symlink_to(root, target_is_directory=True)
    shutil.copytree(world["run"], root / "r-2")
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        code, out, err = run_cli(["runs", "--json"])
    finally:
        locked.chmod(0o755)
    assert code == 0, err
    assert [Path(r["run"]).name for r in json.loads(out)["runs"]] == ["r-2"]  # not the one 12 levels down


# --------------------------------------------------------------------------- random argument lists


def tokens_for(world, workdir) -> dict[str, list[str]]:
    best, config = str(world["best"]), str(world["config"])
    # fit's own config trains into the working directory: --overwrite may replace that, never world's run.
    fit_config = str(write_yaml(workdir / "fit.yaml", tiny_config(world["root"], run={"dir": str(workdir / "r")})))
    paths = [best, str(world["corpus"]), str(workdir), "/dev/null", "missing.pt", "", "-", "--", "\x00",
             "../../x", "/"]
    common = ["--help", "--json", "--device", "cpu", "--device", "tpu", "-q", "--quiet", "1", "0", "-1", "1e20",
              "nan", "inf", "é", "x" * 300, "--output", "o.json", "--format", "csv"]
    return {
        "fit": [fit_config, "train.max_steps=1", "model.hidden_size=0", "optim.lr=nan", "run.name=../x", "run.dir=.",
                "run.dir=/", "--overwrite", "--resume", "--print-config", "train.threads=999999", "task=forecast",
                "data.path=/dev/zero", "=", "a.b.c=1"],
        "eval": [best, "--split", "test", "--split", "x", "--data", "--plot", "p.png", "p.txt"],
        "sample": [best, "--prompt", "--length", "3", "--temperature", "--top-k", "--seed", str(2 ** 70)],
        "predict": [best, "--input", "--output"],
        "runs": [str(workdir), "--csv", "--sort", "val/loss", "-val/loss", "optim.lr"],
        "lr-find": [config, "--steps", "10", "--start", "--end", "--smoothing", "--output-dir", "lrout"],
        "export": [best, "--format", "state-dict", "pt2", "-o", "model.pt"],
        "init": ["lm", "forecast", "classify", "synthetic", "nope", "--output", "s.yaml"],
        "bench": ["--shape", "2,2,2,2", "0,0,0,0", "1,2,3", "--repeats", "--warmup", "--threads"],
    } | {"common": paths + common}


# Options appended last (the last value wins) so that a random list never starts a long job.
SAFE_SUFFIX = {"bench": ["--no-trainer", "--repeats", "1", "--warmup", "0", "--shape", "2,2,2,2"], "lr-find": ["--steps", "10"],
               "fit": ["train.max_steps=1"], "sample": ["--length", "5"]}


@pytest.mark.parametrize("command", ["fit", "eval", "sample", "predict", "runs", "lr-find", "export", "init", "bench"])
def test_random_argument_lists_end_in_0_1_or_2_without_a_traceback(world, run_cli, workdir, command):
    pool = tokens_for(world, workdir)
    run_before, corpus_before = snapshot_tree(world["run"]), world["corpus"].read_bytes()
    words = st.sampled_from(pool[command] + pool["common"]) | st.text(max_size=12)

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(words, max_size=6))
    def check(args):
        code, out, err = run_cli([command, *args, *SAFE_SUFFIX.get(command, [])])
        assert code in (0, 1, 2), (args, code, err[-1000:])
        assert "Traceback" not in err and "Traceback" not in out, (args, err[-2000:])
        if code == 1:
            assert len([line for line in err.splitlines() if line.strip()]) == 1, (args, err[-2000:])

    check()
    # Whatever the arguments, the run and the data they name are byte for byte as they were.
    assert snapshot_tree(world["run"]) == run_before and world["corpus"].read_bytes() == corpus_before


def test_a_writer_threads_disk_error_prints_no_traceback(tmp_path):
    """TensorBoard writes from a thread: its OSError is reported by the main thread, not as a thread traceback."""
    script = tmp_path / "thread.py"
    script.write_text(
        "import threading\n"
        "from grutrain.files import streams\n"
        "streams.prepare()\n"
        "def writer():\n"
        "    raise OSError(28, 'No space left on device')\n"
        "t = threading.Thread(target=writer); t.start(); t.join()\n"
        "def other():\n"
        "    raise ValueError('a bug stays visible')\n"
        "t = threading.Thread(target=other); t.start(); t.join()\n")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "No space left" not in proc.stderr
    assert "a bug stays visible" in proc.stderr  # only OSErrors are left to the main thread
