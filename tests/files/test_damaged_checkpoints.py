"""Checkpoints that load but are damaged: every command that reads one says so in one line (exit 1),
with no traceback, and leaves the file as it was. The payload is checked against the schema
(checkpoint.py) and each task checks its own task_state before use."""

from __future__ import annotations

import pickle

import pytest
import torch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny lm run (last.pt with every training key), made once for the module."""
    import yaml

    from conftest import TINY_CONFIG, make_text
    from grutrain.cli import main

    root = tmp_path_factory.mktemp("damaged")
    (root / "corpus.txt").write_text(make_text(), encoding="utf-8")
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY_CONFIG.items()}
    cfg["data"]["path"] = str(root / "corpus.txt")
    cfg["run"] = {"dir": str(root / "run")}
    cfg["sample"] = {"length": 0}
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as done:
        main(["fit", str(root / "tiny.yaml"), "-q"])
    assert done.value.code in (0, None)
    return root


def damage(payload: dict, change: str) -> None:
    """Apply one named kind of damage to a loaded payload, in place."""
    ts = payload["task_state"]
    if change == "tokens-as-string":
        ts["eval_tokens"]["val"] = "0 1 2 3"
    elif change == "tokens-as-list":
        ts["eval_tokens"]["val"] = [0, 1, 2, 3]
    elif change == "tokens-2d":
        ts["eval_tokens"]["val"] = torch.zeros(4, 5, dtype=torch.int32)
    elif change == "tokens-float":
        ts["eval_tokens"]["val"] = torch.zeros(40)
    elif change == "split-missing":
        del ts["eval_tokens"]["test"]
    elif change == "vocab-missing":
        del ts["vocab"]
    elif change == "vocab-of-numbers":
        ts["vocab"] = list(range(10))
    elif change == "task-state-list":
        payload["task_state"] = [1, 2]
    elif change == "trainer-missing":
        del payload["trainer"]
    elif change == "model-string":
        payload["model"] = "weights"
    elif change == "weight-shape":
        name = next(k for k in payload["model"] if k.startswith("gru.weight_hh"))
        payload["model"][name] = torch.zeros(3, 3)
    elif change == "weights-nan":
        name = next(iter(payload["model"]))
        payload["model"][name] = torch.full_like(payload["model"][name], float("nan"))
    elif change == "config-impossible":
        payload["config"]["model"]["hidden_size"] = -4
    elif change == "config-string":
        payload["config"] = "task: lm"
    elif change == "version-bool":
        payload["format_version"] = True
    else:
        raise AssertionError(change)


EVAL_CASES = {
    "tokens-as-string": "held-out tokens", "tokens-as-list": "held-out tokens", "tokens-2d": "held-out tokens",
    "tokens-float": "held-out tokens", "split-missing": "held-out tokens", "vocab-missing": "vocabulary",
    "vocab-of-numbers": "vocabulary", "task-state-list": "task_state", "trainer-missing": "trainer",
    "model-string": "'model'", "weight-shape": "do not fit", "weights-nan": "not finite",
    "config-impossible": "hidden_size", "config-string": "'config'", "version-bool": "format_version",
}


def assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("change", sorted(EVAL_CASES))
@pytest.mark.parametrize("command", ["eval", "sample", "export"])
def test_a_damaged_checkpoint_is_one_line_for_every_reader(trained, run_cli, tmp_path, change, command):
    payload = torch.load(trained / "run" / "checkpoints" / "last.pt", weights_only=True)
    damage(payload, change)
    path = tmp_path / "damaged.pt"
    torch.save(payload, path)
    before = path.read_bytes()
    args = {"eval": ["eval", path, "--split", "test"], "sample": ["sample", path, "--length", "5"],
            "export": ["export", path, "--format", "state-dict", "--output", tmp_path / "out.pt"]}[command]
    code, _, err = run_cli(args)
    if command != "eval" and EVAL_CASES[change] == "held-out tokens":
        assert code == 0, err  # sample and export never read the held-out data
        return
    assert_one_line(code, err, EVAL_CASES[change])
    assert path.read_bytes() == before
    assert not (tmp_path / "out.pt").exists()


RESUME_CASES = {
    "no-optimizer": ("optimizer", "'optimizer'"), "no-sampler": ("sampler", "'sampler'"),
    "no-rng": ("rng", "'rng'"), "optimizer-of-another-model": ("optimizer", "optimizer state"),
    "sampler-garbage": ("sampler", "sampler state"), "hidden-1d": ("hidden", "carried state"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_from_a_damaged_last_pt_is_one_line(trained, run_cli, tmp_path, case):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained / "run", run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    if case.startswith("no-"):
        del payload[RESUME_CASES[case][0]]
    elif case == "optimizer-of-another-model":
        payload["optimizer"]["state"] = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2),
                                             "exp_avg_sq": torch.zeros(2)}}
        payload["optimizer"]["param_groups"][0]["params"] = [0]
    elif case == "sampler-garbage":
        payload["sampler"] = {"nonsense": 1}
    elif case == "hidden-1d":
        payload["hidden"] = torch.zeros(3)
    torch.save(payload, last)
    before = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    code, _, err = run_cli(["fit", trained / "tiny.yaml", f"run.dir={run_dir}", "train.max_steps=6", "--resume"])
    assert_one_line(code, err, RESUME_CASES[case][1])
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == before


class _Exploit:
    def __reduce__(self):
        return (print, ("\x1b[31mPWNED\x1b[0m",))


def test_a_malicious_pickle_is_refused_without_torch_advice_or_escape_codes(run_cli, tmp_path):
    path = tmp_path / "evil\x1b[2J.pt"
    path.write_bytes(pickle.dumps(_Exploit()))
    code, out, err = run_cli(["eval", path])
    assert_one_line(code, err, "refused")
    assert "weights_only" not in err and "\x1b" not in err and "PWNED" not in out + err
