"""Issue 22, class "every write is one mechanism": a full disk in the middle of every writer, through the
real CLI in a fresh process.

A file-size limit (RLIMIT_FSIZE, as `ulimit -f`, SIGXFSZ ignored so the write fails instead of killing)
set in the child, at a size that lets the files written before the target through and breaks the
target. Each case: exit 1, exactly one line on stderr that names the file, no traceback, the earlier
file (or the whole run directory) byte for byte as it was, and no temporary left anywhere.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_process import REPO
from conftest import make_text
from hostile import snapshot_tree, tiny_config, write_yaml

from grutrain.files.atomic import remove_stale_temporaries, temp_path

BIG_MODEL = {"embedding_dim": 32, "hidden_size": 128}  # a checkpoint of ~850 KB: larger than any log by then


def run_limited(args: list, limit_bytes: int, cwd: Path) -> subprocess.CompletedProcess:
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "grutrain", *map(str, args)], cwd=cwd, env=env,
                          check=False, capture_output=True, text=True, preexec_fn=limit, timeout=300)


def grutrain_here(*args) -> None:
    """`grutrain ARGS` through the CLI's main in this process (no second torch import); must succeed."""
    from grutrain.cli import main

    try:
        main([*map(str, args)])
    except SystemExit as exc:
        assert not exc.code, exc.code


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A corpus and a finished 4-step run of the big-checkpoint model, trained once for the module."""
    root = tmp_path_factory.mktemp("writes")
    (root / "corpus.txt").write_text(make_text(), encoding="utf-8")
    config = write_yaml(root / "tiny.yaml", tiny_config(root, model=BIG_MODEL, run={"dir": str(root / "run")}))
    grutrain_here("fit", config, "-q")
    return root


@dataclass
class Fault:
    args: list  # grutrain's argv
    limit: int  # RLIMIT_FSIZE in bytes
    target: Path  # the file the limit breaks (or the checkpoints folder: best.pt or last.pt): named in the message
    keep: list[Path] = field(default_factory=list)  # files or directories that must stay byte for byte
    gone: list[Path] = field(default_factory=list)  # paths the failed command must not leave
    words: tuple[str, ...] = ()  # more words of the message
    after: Callable[[], None] | None = None  # a check once the rest holds (e.g. the same command succeeds)


def copy_world(trained: Path, root: Path) -> list:
    """A copy of the trained run as ROOT/run; the config (and override) that name it."""
    shutil.copytree(trained / "run", root / "run")
    return [trained / "tiny.yaml", f"run.dir={root / 'run'}"]  # its own config: the same data.path


def checkpoint_size(root: Path) -> int:
    return (root / "run" / "checkpoints" / "last.pt").stat().st_size


def resumed_save(trained, root):
    config = copy_world(trained, root)
    return Fault(["fit", *config, "--resume", "train.max_steps=8", "-q"], checkpoint_size(root) // 2,
                 root / "run" / "checkpoints", keep=[root / "run"],
                 words=("could not write checkpoint", "continue it with --resume"))


def first_save_of_a_new_run_dir(trained, root):
    size = (trained / "run" / "checkpoints" / "last.pt").stat().st_size
    shutil.copy(trained / "corpus.txt", root / "corpus.txt")
    config = write_yaml(root / "new.yaml", tiny_config(root, model=BIG_MODEL, run={"dir": str(root / "new")}))

    def the_same_command_then_succeeds():
        grutrain_here("fit", config, "-q")
        assert (root / "new" / "checkpoints" / "last.pt").is_file()

    return Fault(["fit", config, "-q"], size // 2, root / "new" / "checkpoints", gone=[root / "new"],
                 words=("no run was changed; start it again",), after=the_same_command_then_succeeds)


def first_save_of_a_numbered_run(trained, root):
    size = (trained / "run" / "checkpoints" / "last.pt").stat().st_size
    shutil.copy(trained / "corpus.txt", root / "corpus.txt")
    config = write_yaml(root / "numbered.yaml", tiny_config(root, model=BIG_MODEL))  # run.dir unset: runs/tiny-1

    def the_same_command_then_gets_tiny_1():
        cwd = os.getcwd()
        os.chdir(root)
        try:
            grutrain_here("fit", config, "-q")
        finally:
            os.chdir(cwd)
        assert [p.name for p in (root / "runs").iterdir()] == ["tiny-1"]

    return Fault(["fit", config, "-q"], size // 2, root / "runs" / "tiny-1" / "checkpoints",
                 gone=[root / "runs"], words=("no run was changed; start it again",),
                 after=the_same_command_then_gets_tiny_1)


def first_save_after_overwrite(trained, root):
    config = copy_world(trained, root)
    return Fault(["fit", *config, "--overwrite", "-q"], checkpoint_size(root) // 2,
                 root / "run" / "checkpoints", keep=[root / "run"],
                 words=("the earlier run", "is as it was", "--overwrite"))


def metrics_log_at_a_resumes_first_save(trained, root):
    """A long history: the resumed run's rewrite of metrics.jsonl is its largest file (the tiny model)."""
    shutil.copy(trained / "corpus.txt", root / "corpus.txt")
    config = write_yaml(root / "long.yaml", tiny_config(root, run={"dir": str(root / "run")}, train={
        "max_steps": 400, "eval_every": 1000, "checkpoint_every": 1000}))
    grutrain_here("fit", config, "-q")
    metrics = root / "run" / "metrics.jsonl"
    assert metrics.stat().st_size > checkpoint_size(root) + 50_000, "the history must outgrow the checkpoint and log"
    return Fault(["fit", config, "--resume", "train.max_steps=401", "-q"], metrics.stat().st_size - 1000, metrics,
                 keep=[metrics], words=("the metrics log",))


def summary_at_the_end(trained, root):
    """A sample of Cyrillic letters: escaped as \\uXXXX in summary.json (6 bytes each) it outgrows everything
    else, the checkpoint and the TensorBoard log (2 bytes a letter there) included."""
    text = "".join("абвгдежзиклмнопрстуфхцчшщыэюя"[(i * 7) % 29] + ("" if i % 5 else " ") for i in range(6000))
    (root / "corpus.txt").write_text(text + "\n", encoding="utf-8")
    config = write_yaml(root / "ru.yaml", tiny_config(root, run={"dir": str(root / "run")},
                                                      train={"eval_every": 100}, sample={"length": 15000,
                                                                                         "prompt": "а"}))
    return Fault(["fit", config, "-q"], 80_000, root / "run" / "summary.json", words=("summary.json",))


def export(fmt: str, name: str):
    def make(trained, root):
        target = root / name
        target.write_bytes(b"the earlier export\n")
        meta = root / (name + ".json")
        meta.write_text('{"the earlier": "metadata"}\n')
        return Fault(["export", trained / "run" / "checkpoints" / "best.pt", "--format", fmt, "--output", target],
                     4096, target, keep=[target, meta])
    return make


def eval_plot(trained, root):
    png = root / "plot.png"
    png.write_bytes(b"\x89PNG the earlier figure\n")
    return Fault(["eval", trained / "run" / "checkpoints" / "best.pt", "--plot", png], 8192, png, keep=[png])


def lr_find(trained, root):
    out = root / "lr"
    out.mkdir()
    old = [out / "lr_find.csv", out / "lr_find.json", out / "lr_find.png"]
    for path in old:
        path.write_bytes(b"the earlier results\n")
    shutil.copy(trained / "corpus.txt", root / "corpus.txt")
    config = write_yaml(root / "tiny.yaml", tiny_config(root))
    # the CSV and the JSON of 12 steps fit under the limit, the PNG does not: none of the three may change
    return Fault(["lr-find", config, "--steps", "12", "--output-dir", out], 16384, out / "lr_find.png", keep=old)


def init_over_nothing(trained, root):
    target = root / "new.yaml"
    return Fault(["init", "lm", "--output", target], 64, target, gone=[target])


def prepare_cache(trained, root):
    """A cache rebuilt after its text changed: the limit lets the old .bin through, not the new one."""
    cache = root / "cache"
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(100), encoding="utf-8")
    config = write_yaml(root / "prep.yaml", tiny_config(root, data={"cache_dir": str(cache)}))
    grutrain_here("prepare", config, "--json")
    old_bin = next(cache.glob("*.bin"))
    old = [old_bin, old_bin.with_suffix(".json")]
    corpus.write_text(make_text(400), encoding="utf-8")
    return Fault(["prepare", config], old_bin.stat().st_size + 512, old_bin, keep=old, words=("token cache",))


WRITERS = [
    ("checkpoint: a resumed run's save over last.pt", resumed_save),
    ("checkpoint: the first save of a new run.dir", first_save_of_a_new_run_dir),
    ("checkpoint: the first save of a numbered run", first_save_of_a_numbered_run),
    ("checkpoint: the first save after --overwrite", first_save_after_overwrite),
    ("metrics.jsonl: a resume's rewrite", metrics_log_at_a_resumes_first_save),
    ("summary.json: the final summary", summary_at_the_end),
    ("export state-dict", export("state-dict", "model.pt")),
    ("export pt2", export("pt2", "model.pt2")),
    ("export onnx", export("onnx", "model.onnx")),
    ("eval --plot over a PNG", eval_plot),
    ("lr-find's results", lr_find),
    ("init over nothing", init_over_nothing),
    ("prepare's token cache", prepare_cache),
]


def snapshot(path: Path):
    return snapshot_tree(path) if path.is_dir() else path.read_bytes()


@pytest.mark.parametrize("case,make", WRITERS, ids=[c[0] for c in WRITERS])
def test_a_full_disk_mid_write_is_one_line_and_leaves_the_earlier_files(trained, tmp_path, case, make):
    if case.startswith("export onnx"):
        pytest.importorskip("onnx")
    if "plot" in case or "lr-find" in case or "summary" in case:
        pytest.importorskip("matplotlib")  # the figures (and, for summary.json, the log's size) need it
    fault = make(trained, tmp_path)
    before = {path: snapshot(path) for path in fault.keep}
    result = run_limited(fault.args, fault.limit, tmp_path)

    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not write "), result.stderr[-3000:]
    for word in (fault.target.name, "free some space", *fault.words):
        assert word in lines[0], (word, lines[0])
    for path, content in before.items():
        assert snapshot(path) == content, path
    for path in fault.gone:
        assert not path.exists(), path
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    if fault.target.name == "summary.json":  # the run's summary is whole and says why it failed
        summary = json.loads(fault.target.read_text())
        assert summary["status"] == "failed" and "summary.json" in summary["error"]
    if fault.after is not None:
        fault.after()


def test_temporaries_of_a_dead_process_are_removed_and_nothing_else(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=False, capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".last.pt.grutrain-{pid}-0123abcd.tmp"
    mine = temp_path(tmp_path / "last.pt")
    others = [tmp_path / ".last.pt.abc.tmp", tmp_path / "notes.tmp", tmp_path / f".x.grutrain-{pid}-zz.tmp"]
    for path in (stale, mine, *others):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert mine.exists() and all(p.exists() for p in others)


def test_two_writers_never_share_a_temporary_name(tmp_path):
    assert len({temp_path(tmp_path / "model.pt") for _ in range(100)}) == 100


def test_two_concurrent_exports_to_one_output_leave_one_exports_pair(trained, tmp_path):
    """Reproduction 6: the model and its JSON always come from the same export (renamed together under a lock)."""
    import torch

    other = tmp_path / "other"  # a second model: the same run trained on with another seed
    shutil.copytree(trained / "run", other)
    grutrain_here("fit", trained / "tiny.yaml", f"run.dir={other}", "--overwrite", "train.seed=7", "-q")
    sources = [trained / "run" / "checkpoints" / "best.pt", other / "checkpoints" / "best.pt"]
    output = tmp_path / "model.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "grutrain", "export", str(source), "--format", "state-dict",
                                   "--output", str(output)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for source in sources]
        for proc in procs:
            assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
        meta = json.loads((tmp_path / "model.pt.json").read_text())
        exported = torch.load(output, weights_only=True)
        source = torch.load(meta["source"]["checkpoint"], weights_only=True)["model"]
        assert {name: tensor.shape for name, tensor in exported.items()}  # the export holds weights
        first = next(iter(exported))
        matches = [torch.equal(exported[first], tensor) for tensor in source.values()
                   if tensor.shape == exported[first].shape]
        assert any(matches), "the model file is not the export its JSON describes"
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real file system that fills up (a 4 MB tmpfs, filled by the test), where this user may mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                           check=False, capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (the file-size limit cases cover the same writers)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` but `leave` bytes."""
    free = shutil.disk_usage(disk).free
    if free > leave:
        (disk / "filler").write_bytes(b"\0" * (free - leave))


def test_a_real_full_disk_during_a_resumed_save_and_an_export(trained, small_tmpfs):
    """Reproduction 1 on a real small tmpfs: "No space left on device", not a file-size limit."""
    run = small_tmpfs / "run"
    shutil.copytree(trained / "run", run)
    before = snapshot_tree(run)
    fill(small_tmpfs, 300_000)  # room for the logs and config, not for an ~850 KB checkpoint
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "grutrain", "fit", str(trained / "tiny.yaml"), f"run.dir={run}",
                             "--resume", "train.max_steps=8", "-q"], cwd=small_tmpfs.parent, env=env,
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not write checkpoint" in lines[0] and "no space left" in lines[0].lower(), lines
    assert snapshot_tree(run) == before
    assert not [p for p in small_tmpfs.rglob("*.tmp")]

    (small_tmpfs / "model.pt").write_bytes(b"the earlier export\n")
    (small_tmpfs / "filler").unlink()
    fill(small_tmpfs, 8192)  # an export of the ~280 KB weights does not fit
    result = subprocess.run([sys.executable, "-m", "grutrain", "export", str(trained / "run" / "checkpoints" / "best.pt"),
                             "--output", str(small_tmpfs / "model.pt")], cwd=small_tmpfs.parent, env=env,
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.pt" in lines[0] and "no space left" in lines[0].lower(), lines
    assert (small_tmpfs / "model.pt").read_bytes() == b"the earlier export\n"
    assert not [p for p in small_tmpfs.rglob("*.tmp")]
