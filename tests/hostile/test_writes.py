"""Issue 22, class "every write is one mechanism": faults in the middle of a write, through the real CLI.

A file-size limit (RLIMIT_FSIZE, as `ulimit -f`) makes the disk refuse bytes mid-write: the
command must end with one line naming the file, exit 1, and leave the earlier file intact.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from hostile import train_tiny_run

from grutrain.files.atomic import remove_stale_temporaries, temp_path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("writes"))


def run_limited(args: list[str], limit_bytes: int, cwd: Path) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "grutrain", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, preexec_fn=limit, timeout=300)


def one_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


CASES = [  # (name, argv after the checkpoint, the output file)
    ("state-dict", ["export", "{best}", "--format", "state-dict", "--output", "{out}/model.pt"], "model.pt"),
    ("pt2", ["export", "{best}", "--format", "pt2", "--output", "{out}/model.pt2"], "model.pt2"),
]


@pytest.mark.parametrize("name,argv,target", CASES, ids=[c[0] for c in CASES])
def test_a_full_disk_mid_export_is_one_line_and_the_old_file_stays(world, tmp_path, name, argv, target):
    previous = b"the earlier export\n"
    (tmp_path / target).write_bytes(previous)
    args = [a.format(best=world["best"], out=tmp_path) for a in argv]
    result = run_limited(args, 4096, tmp_path)
    one_line(result, target, "free some space")
    assert (tmp_path / target).read_bytes() == previous
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_mid_checkpoint_is_one_line_and_last_pt_stays(world, tmp_path):
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(world["run"]), str(run)], check=True)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    config = tmp_path / "c.yaml"
    config.write_text(world["config"].read_text().replace(str(world["run"]), str(run)))
    result = run_limited(["fit", str(config), "train.max_steps=40", "--resume", "-q"], len(before) // 2, tmp_path)
    one_line(result)  # the limit may hit the TensorBoard log first: one line either way
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_temporaries_of_a_dead_process_are_removed_and_nothing_else(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
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
