"""Edge values and environment (issue 22, class "edge values"): each gets a correct result or one line
naming the problem, through `grutrain` in a fresh process."""

from __future__ import annotations

import datetime
import json
import math

import pytest
import torch

from cli_process import classify_config, classify_lines, forecast_config, grutrain, series_rows
from conftest import make_text
from hostile import refused, run_grutrain, tiny_config, write_yaml


def fit_here(config) -> None:
    from grutrain.cli import main

    try:
        main(["fit", str(config), "-q"])
    except SystemExit as exc:
        assert not exc.code


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    """A finished forecast run on daily dates."""
    root = tmp_path_factory.mktemp("daily")
    start = datetime.date(2000, 1, 1)
    rows = ["YEAR,VALUE"] + [f"{start + datetime.timedelta(days=i)},{50 + 40 * math.sin(i / 3):.3f}" for i in range(200)]
    fit_here(forecast_config(root, rows))
    return root


def test_a_constant_series_trains_to_finite_numbers_and_evaluates(tmp_path):
    fit_here(forecast_config(tmp_path, series_rows(constant=True)))
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    assert final and all(math.isfinite(v) for v in final.values())
    assert "val/mae_vs_baseline" not in final  # the baseline is perfect: no ratio, not NaN
    code, out, err = grutrain("eval", tmp_path / "run" / "checkpoints" / "best.pt", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["baseline_mae"] == 0 and math.isfinite(report["mae"]) and "mae_vs_baseline" not in report


@pytest.mark.parametrize("last_day,ok", [(datetime.date(9999, 12, 28), True), (datetime.date(9999, 12, 31), False)])
def test_predict_near_the_end_of_the_calendar(daily, tmp_path, last_day, ok):
    days = [last_day - datetime.timedelta(days=29 - i) for i in range(30)]
    inputs = tmp_path / "in.csv"
    inputs.write_text("\n".join(["YEAR,VALUE"] + [f"{d},{i}" for i, d in enumerate(days)]) + "\n")
    code, out, err = grutrain("predict", daily / "run" / "checkpoints" / "best.pt", "--input", inputs)
    if ok:  # three days ahead still fit: the last is 9999-12-31
        assert code == 0, err
        assert [json.loads(line)["YEAR"] for line in out.splitlines()][-1] == "9999-12-31"
    else:
        refused(code, out, err, "pass the end of the calendar (year 9999)", str(last_day))


@pytest.mark.parametrize("device,ok", [("cpu:0", True), ("cuda", torch.cuda.is_available()), ("tpu", False)])
def test_device_strings(daily, device, ok):
    code, out, err = grutrain("eval", daily / "run" / "checkpoints" / "best.pt", "--device", device, "--json")
    if ok:
        assert code == 0 and math.isfinite(json.loads(out)["mae"]), err
    else:
        refused(code, out, err, repr(device))


@pytest.mark.parametrize("written", [[1, 1.0], ["1", "1.0"], [1, "1.00"]])
def test_numeric_labels_written_two_ways_are_one_class(tmp_path, run_cli, written):
    config = classify_config(tmp_path)
    lines = [json.dumps({"x": json.loads(line)["x"], "y": written[i % 4 // 2] if i % 2 else 0})
             for i, line in enumerate(classify_lines())]
    (tmp_path / "names.jsonl").write_text("\n".join(lines) + "\n")
    assert run_cli(["fit", config, "-q"])[0] == 0
    labels = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["task_state"]["encoder"]["labels"]
    assert labels == ["0", "1"]


def test_a_deleted_working_directory_is_one_line(tmp_path):
    gone = tmp_path / "gone"
    code, out, err = grutrain("fit", tmp_path / "any.yaml", shell_prefix=f"mkdir -p '{gone}' && cd '{gone}' && rmdir '{gone}' &&")
    refused(code, out, err, "current directory no longer exists")


@pytest.mark.parametrize("name", ["a\nb.pt", "x\x1b[31mred.pt", "bidi\u202etxt.yaml"])
def test_paths_in_messages_are_escaped(tmp_path, name):
    command = "fit" if name.endswith(".yaml") else "eval"
    code, out, err = grutrain(command, tmp_path / name)
    line = refused(code, out, err)
    assert "\x1b" not in line and "\u202e" not in line and "\t" not in line
    assert repr(name[-8:])[1:-1] in line or name.encode("unicode_escape").decode()[-8:] in line


@pytest.mark.parametrize("prompt,named", [(b"Alice \xff", "the byte \\xff"), (b"caf\xe9 ", "the byte \\xe9")])
def test_a_prompt_no_tokenizer_can_encode_is_refused_before_training(tmp_path, prompt, named):
    """sample.prompt with a byte that is not UTF-8 (from a Latin-1 shell): one line at the start naming
    the byte, not a message about the output's encoding after training; no run directory is left."""
    (tmp_path / "corpus.txt").write_text(make_text(), encoding="utf-8")
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(tmp_path, run={"dir": str(tmp_path / "run")}))
    code, out, err = run_grutrain(["fit", config, b"sample.prompt=" + prompt, "-q"], cwd=tmp_path)
    refused(code, out, err, "sample.prompt", named, "UTF-8")
    assert not (tmp_path / "run").exists()



def test_values_near_the_float64_limit_with_the_log_transform_and_classical_partners(tmp_path):
    # log(1 + y) keeps the network's numbers small; Theta, MSTL and the metrics work on y itself, whose
    # squares overflow float64: finite metrics, no RuntimeWarning, the same relative errors as at scale 1
    data = ["data.transform=log", "data.theta_weight=0.3", "data.mstl_weight=0.3", "data.quantiles=[0.1,0.5,0.9]"]
    finals = {}
    for scale in (1.0, 1e298):
        root = tmp_path / str(scale)
        root.mkdir()
        code, out, err = grutrain("fit", forecast_config(root, series_rows(scale=scale)), *data, "-q")
        assert code == 0 and "Warning" not in err, err
        finals[scale] = json.loads((root / "run" / "summary.json").read_text())["final"]
    huge = finals[1e298]
    assert all(math.isfinite(v) for v in huge.values()), huge
    assert huge["test/rmse"] > 1e298
    assert huge["test/smape"] == pytest.approx(finals[1.0]["test/smape"], rel=0.2)
