"""`grutrain bench`: the numbers it reports are consistent with each other (never timed assertions)."""

import json
from pathlib import Path

import pytest

from grutrain.commands.bench_trainer import bench_generation, bench_trainer
from grutrain.gru import native
from grutrain.cli import main
from grutrain.runtime import cpu_supports_bf16

REPO = Path(__file__).resolve().parents[2]


def test_bench_json_reports_each_impl_with_ratios_against_torch(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--shape", "5,3,2,4", "--shape", "3,2,1,8", "--repeats", "2", "--warmup", "1",
              "--threads", "1", "--no-trainer", "--no-generation", "--json"])
    assert exit_info.value.code in (0, None)
    result = json.loads(capsys.readouterr().out)  # one JSON object and nothing else on stdout
    rows = {(tuple(r["shape"]), r["impl"]): r for r in result["layers"]}
    impls = (*(("native",) if native.available() else ()), "fused", "reference", "torch", "products")
    assert set(rows) == {(s, i) for s in [(5, 3, 2, 4), (3, 2, 1, 8)] for i in impls}
    for (shape, impl), row in rows.items():
        torch_row, products_row = rows[(shape, "torch")], rows[(shape, "products")]
        assert row["train_ratio_vs_torch"] == pytest.approx(row["train_ms"] / torch_row["train_ms"])
        assert row["forward_ratio_vs_torch"] == pytest.approx(row["forward_ms"] / torch_row["forward_ms"])
        assert row["train_ratio_vs_products"] == pytest.approx(row["train_ms"] / products_row["train_ms"])
        assert row["forward_ratio_vs_products"] == pytest.approx(row["forward_ms"] / products_row["forward_ms"])
        tokens = shape[0] * shape[1]
        assert row["train_tokens_per_s"] == pytest.approx(tokens / (row["train_ms"] / 1000), rel=1e-6)
        if impl == "products":  # the matrix products alone keep nothing of a layer
            assert row["peak_mem_bytes"] is None and row["mem_ratio_vs_torch"] is None
        else:
            assert row["peak_mem_bytes"] > 0
            assert row["mem_ratio_vs_torch"] == pytest.approx(row["peak_mem_bytes"] / torch_row["peak_mem_bytes"])


def test_bad_shape_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--shape", "5,3,2", "--no-trainer", "--no-generation"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "T,B,I,H" in err and len(err.splitlines()) == 1


def test_trainer_bench_compares_fit_with_bare_loops(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs from any directory: its text is written to a temporary one
    result = bench_trainer(steps=2, warmup=1, rounds=1, threads=1)
    assert list(tmp_path.iterdir()) == []
    assert result["ratio"] == pytest.approx(result["fit_tokens_per_s"] / result["bare_tokens_per_s"])
    assert result["ratio_vs_bare_torch_gru"] == pytest.approx(
        result["fit_tokens_per_s"] / result["bare_torch_gru_tokens_per_s"])
    assert len(result["fit_runs"]) == len(result["bare_runs"]) == 1


def _row_ratios(rows, kind, suffix=""):
    return {(tuple(r["shape"]), r["impl"]): r[f"{kind}_ratio{suffix}_iqr"] for r in rows}


def test_bench_reports_the_spread_of_each_ratio(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--shape", "5,3,2,4", "--repeats", "5", "--warmup", "1", "--threads", "1",
              "--no-trainer", "--no-generation", "--json"])
    assert exit_info.value.code in (0, None)
    result = json.loads(capsys.readouterr().out)
    assert result["precision"] == "fp32" and result["machine"]
    for row in result["layers"]:
        for kind in ("train", "forward"):
            low, high = row[f"{kind}_ratio_iqr"]
            assert low <= high
            t_low, t_high = row[f"{kind}_ms_iqr"]
            assert t_low <= row[f"{kind}_ms"] <= t_high
        if row["impl"] == "torch":
            assert row["train_ratio_iqr"] == [1.0, 1.0]  # each repetition against itself


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bfloat16")
def test_bench_bf16_times_torch_under_autocast_and_in_fp32(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--shape", "5,3,2,4", "--repeats", "2", "--warmup", "1", "--threads", "1",
              "--no-trainer", "--no-generation", "--precision", "bf16", "--markdown"])
    assert exit_info.value.code in (0, None)
    text = capsys.readouterr().out
    assert text.startswith("`grutrain bench") and "| torch_fp32 |" in text and "train vs fp32 torch" in text
    assert "| products |" in text and "train / products" in text


def test_bench_bf16_without_native_bfloat16_is_a_one_line_error(monkeypatch, capsys):
    import grutrain.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--precision", "bf16", "--no-trainer", "--no-generation"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "bfloat16" in err and len(err.splitlines()) == 1


def test_generation_bench_compares_per_token_cost():
    result = bench_generation(tokens=3, rounds=2, threads=1)
    assert result["ratio"] == pytest.approx(result["grutrain_us_per_token"] / result["torch_gru_us_per_token"])
    assert len(result["grutrain_runs"]) == len(result["torch_gru_runs"]) == 2


def test_bench_layers_reports_every_impl_against_torch():
    from rich.console import Console

    from grutrain.commands.bench_layers import bench_layers, format_layer_table

    results = bench_layers([(3, 2, 2, 4)], repeats=2, warmup=1, threads=1)
    native_row = ["native"] if native.available() else []
    assert [r["impl"] for r in results] == [*native_row, "fused", "reference", "torch", "products"]
    by_impl = {r["impl"]: r for r in results}
    assert by_impl["torch"]["train_ratio_vs_torch"] == 1.0 and by_impl["torch"]["mem_ratio_vs_torch"] == 1.0
    for r in results:
        assert r["shape"] == (3, 2, 2, 4) and r["threads"] == 1
        assert r["train_ms"] > 0 and r["forward_ms"] > 0
        assert r["peak_mem_bytes"] is None if r["impl"] == "products" else r["peak_mem_bytes"] > 0
        assert r["train_tokens_per_s"] == pytest.approx(3 * 2 / (r["train_ms"] / 1e3))
    console = Console(width=200, record=True)
    console.print(format_layer_table(results))
    assert "reference" in console.export_text()
