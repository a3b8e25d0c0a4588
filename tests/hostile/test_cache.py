"""Token caches (issue 22, class "caches"): reused only for the same content, listed and removed by
`grutrain cache`, and fit says where a new one went. Through `grutrain` in a fresh process."""

from __future__ import annotations

import json
import os

import pytest

from cli_process import grutrain, lm_config
from conftest import make_text
from hostile import refused


def caches(cache_dir) -> list[dict]:
    code, out, err = grutrain("cache", "--dir", cache_dir, "--json")
    assert code == 0, err
    return json.loads(out)["caches"]


def test_fit_says_where_a_new_cache_went_and_cache_lists_and_removes_it(tmp_path):
    config = lm_config(tmp_path, make_text(), data={"cache_dir": str(tmp_path / "cache")})
    code, out, err = grutrain("fit", config)
    assert code == 0, err
    listed = caches(tmp_path / "cache")
    assert len(listed) == 1 and listed[0]["source"] == str(tmp_path / "corpus.txt") and listed[0]["source_exists"]
    bin_path = next(p for p in listed[0]["files"] if p.endswith(".bin"))
    assert f"written to {bin_path} (" in out and "KB" in out  # its place and size
    (tmp_path / "cache" / "notes.json").write_text("{}")  # not a cache: never listed, never removed
    (tmp_path / "cache" / f".{listed[0]['id']}.x.bin.tmp").write_bytes(b"0" * 10)  # left by a killed build
    assert [e["id"] for e in caches(tmp_path / "cache")] == [listed[0]["id"], None]
    code, out, err = grutrain("cache", "rm", "--all", "--dir", tmp_path / "cache")
    assert code == 0 and "removed 2 caches" in out, err
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["notes.json"]


@pytest.mark.parametrize("args,words", [(["rm"], ["--all"]), (["rm", "nope"], ["'nope'", "grutrain cache"]),
                                        (["rm", "x", "--all"], ["not both"])])
def test_cache_rm_refusals(tmp_path, args, words):
    code, out, err = grutrain("cache", *args, "--dir", tmp_path)
    refused(code, out, err, *words)


def test_an_edit_keeping_size_and_mtime_is_not_served_from_the_stale_cache(tmp_path, run_cli):
    from grutrain.files.checkpoint import load_checkpoint

    text = make_text()
    config = lm_config(tmp_path, text, data={"cache_dir": str(tmp_path / "cache")})
    assert run_cli(["fit", config, "-q"])[0] == 0
    path = tmp_path / "corpus.txt"
    stat = path.stat()
    path.write_text(text.replace("alice", "zalic", 3), encoding="utf-8")  # same size: "z" is new
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    code, out, err = run_cli(["fit", config, "--overwrite", "-q"])
    assert code == 0, err
    vocab = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["task_state"]["vocab"]
    assert "z" in vocab  # tokenised again from the new text
    assert len(caches(tmp_path / "cache")) == 1  # rebuilt in place, not beside the stale one
