"""Shared fixtures: a tiny text corpus, a tiny YAML config pointing at it, and a CLI runner.

Everything here is sized to train in well under a second on a busy 2-core CPU.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import yaml

_WORDS = ("alice was beginning to get very tired of sitting by her sister on the bank and of having "
          "nothing to do once or twice she had peeped into the book her sister was reading").split()


def make_text(n_sentences: int = 120, seed: int = 0) -> str:
    """A few KB of English-looking sentences, generated here (not the shipped data)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 9))]
        lines.append(" ".join(words).capitalize() + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session", autouse=True)
def _native_kernel(request, tmp_path_factory):
    """The native GRU kernel is built once per checkout (in pytest's cache directory, kept between
    sessions) before any test runs, so no test's output holds the build notice. Where it can't be
    built, the tests (and the commands they start) run the Python path quietly; tests/gru/test_native.py
    checks the fallback and its notice."""
    from grutrain.gru import native

    if not os.environ.get("GRUTRAIN_KERNEL_DIR"):
        cache = getattr(request.config, "cache", None)
        where = cache.mkdir("grutrain-kernels") if cache is not None else tmp_path_factory.mktemp("kernels")
        os.environ["GRUTRAIN_KERNEL_DIR"] = str(where)  # inherited by the commands tests start
    if not native.load():
        os.environ["GRUTRAIN_NATIVE"] = "0"


@pytest.fixture(autouse=True)
def _token_cache_dir(tmp_path_factory, monkeypatch):
    """Language-model token caches go under pytest's temporary directory, not ~/.cache."""
    monkeypatch.setenv("GRUTRAIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "token-cache"))


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


TINY_CONFIG = {
    "task": "lm",
    "data": {"seq_len": 8, "val_fraction": 0.1, "test_fraction": 0.1},
    "model": {"embedding_dim": 4, "hidden_size": 8, "num_layers": 1},
    "optim": {"lr": 0.01},
    "train": {"max_steps": 4, "batch_size": 2, "eval_every": 2, "checkpoint_every": 2, "log_every": 1,
              "device": "cpu"},
    "sample": {"length": 20, "prompt": "Alice "},
    "run": {"name": "tiny"},
}


@pytest.fixture
def write_config(tmp_path: Path, text_file: Path):
    """write_config(run_dir=..., name=..., **section_updates) -> path of a tiny YAML config.

    run_dir: a path (absolute, under tmp_path) for run.dir, "default" for tmp_path/"run",
    or None to leave run.dir unset (runs/<name>-N in the working directory).
    """
    counter = [0]

    def write(run_dir: str | Path | None = "default", name: str | None = None, data_path: Path | None = None,
              **updates) -> Path:
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_CONFIG.items()}
        cfg["data"]["path"] = str(data_path or text_file)
        if run_dir == "default":
            run_dir = tmp_path / "run"
        if run_dir is not None:
            cfg["run"]["dir"] = str(run_dir)
        for section, values in updates.items():
            cfg[section].update(values)
        counter[0] += 1
        path = tmp_path / (name or f"config{counter[0]}.yaml")
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_cli(capsys):
    """run_cli(args) -> (exit_code, stdout, stderr) of an in-process `grutrain ...`."""
    from grutrain.cli import main

    def run(args) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under a directory with its bytes, to prove a failed command changed nothing."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


@pytest.fixture
def snapshot():
    return _snapshot
