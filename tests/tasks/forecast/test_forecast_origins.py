"""grutrain eval CHECKPOINT --origins N: the last N forecast origins of each series, one horizon
apart, with every baseline scored on the same windows."""

from __future__ import annotations

import json

import numpy as np
import yaml

from grutrain.tasks.forecast.windows import rolling_origins
from test_forecast import assert_one_line_error, cli
from test_forecast_panel import config, panel_rows, write


def test_the_origins_tile_the_end_of_each_series_block_without_overlap():
    starts = np.concatenate([np.arange(10, 30), np.arange(100, 108)])  # two series' window starts
    groups = np.array([0] * 20 + [1] * 8)
    got = rolling_origins(starts, groups, horizon=3, n=4)
    # series 0: its last start 29 and three more, 3 apart; series 1: only 107, 104, 101 fit
    assert got.tolist() == [20, 23, 26, 29, 101, 104, 107]
    assert rolling_origins(np.arange(5, 9), None, horizon=2, n=1).tolist() == [8]


def test_eval_with_origins_scores_those_windows_and_the_baselines_on_them(tmp_path, capsys):
    path = write(tmp_path, panel_rows({"a": 60, "b": 50}))
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(config(path, val_rows=4, test_rows=10)))
    assert cli(["fit", cfg_path], capsys)[0] == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    code, out, err = cli(["eval", ckpt, "--split", "test", "--origins", "3", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["windows"] == 6 and result["origins"] == 3  # 3 per series, horizon 2 apart
    assert {s["windows"] for s in result["per_series"].values()} == {3}
    code, out, _ = cli(["eval", ckpt, "--split", "test", "--json"], capsys)
    every = json.loads(out)
    assert every["windows"] == 2 * (10 - 2 + 1)
    assert every["naive_mae"] != result["naive_mae"]  # the baselines follow the chosen windows


def test_origins_are_refused_for_other_tasks(tmp_path, capsys):
    cfg = {"task": "synthetic", "data": {"kind": "adding", "seq_len": 10, "train_size": 64, "val_size": 32,
                                         "test_size": 32},
           "model": {"hidden_size": 4}, "train": {"max_steps": 2, "batch_size": 16, "eval_every": 2,
                                                   "checkpoint_every": 2, "device": "cpu", "threads": 1},
           "run": {"dir": str(tmp_path / "run")}}
    cfg_path = tmp_path / "a.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    code, _, err = cli(["fit", cfg_path], capsys)
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert_one_line_error(cli(["eval", ckpt, "--origins", "2"], capsys), "--origins is for forecast")
