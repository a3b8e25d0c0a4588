"""`grutrain bench`: the numbers it reports are consistent with each other (never timed assertions)."""

import json
from pathlib import Path

import pytest

from grutrain.bench import bench_trainer
from grutrain.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_bench_json_reports_each_impl_with_ratios_against_torch(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--shape", "5,3,2,4", "--shape", "3,2,1,8", "--repeats", "2", "--warmup", "1",
              "--threads", "1", "--no-trainer", "--json"])
    assert exit_info.value.code in (0, None)
    result = json.loads(capsys.readouterr().out)  # one JSON object and nothing else on stdout
    rows = {(tuple(r["shape"]), r["impl"]): r for r in result["layers"]}
    assert set(rows) == {(s, i) for s in [(5, 3, 2, 4), (3, 2, 1, 8)] for i in ("fused", "reference", "torch")}
    for (shape, impl), row in rows.items():
        torch_row = rows[(shape, "torch")]
        assert row["train_ratio_vs_torch"] == pytest.approx(row["train_ms"] / torch_row["train_ms"])
        assert row["forward_ratio_vs_torch"] == pytest.approx(row["forward_ms"] / torch_row["forward_ms"])
        tokens = shape[0] * shape[1]
        assert row["train_tokens_per_s"] == pytest.approx(tokens / (row["train_ms"] / 1000), rel=1e-6)
        assert row["peak_mem_bytes"] > 0


def test_bad_shape_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--shape", "5,3,2", "--no-trainer"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "T,B,I,H" in err and len(err.splitlines()) == 1


def test_trainer_bench_compares_fit_with_bare_loops(monkeypatch):
    monkeypatch.chdir(REPO)  # the benchmark trains on data/alice29.txt
    result = bench_trainer(steps=2, warmup=1, rounds=1, threads=1)
    assert result["ratio"] == pytest.approx(result["fit_tokens_per_s"] / result["bare_tokens_per_s"])
    assert result["ratio_vs_bare_torch_gru"] == pytest.approx(
        result["fit_tokens_per_s"] / result["bare_torch_gru_tokens_per_s"])
    assert len(result["fit_runs"]) == len(result["bare_runs"]) == 1
