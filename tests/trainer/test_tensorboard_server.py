"""TensorBoard reads what a run wrote: HParams records read back from the event files, and a real
`tensorboard --logdir` server (loopback only) answering over HTTP with a run's scalars and HParams."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from grutrain.tasks import validate_config
from grutrain.trainer.hparams import FINAL_PREFIX, NOT_HPARAMS
from grutrain.trainer.metrics import read_metrics

WORDS = "the queen of hearts she made some tarts all on a summer day".split()
SERVER_START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two finished runs that differ in optim.lr, each with its HParams written as train.py does."""
    from grutrain.trainer.fit import fit

    root = tmp_path_factory.mktemp("tb")
    rng = random.Random(1)
    text = root / "text.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(150)), encoding="utf-8")
    runs = []
    for lr in (0.01, 0.003):
        cfg = validate_config({
            "data": {"path": str(text), "seq_len": 8, "val_fraction": 0.1, "test_fraction": 0.1},
            "model": {"embedding_dim": 4, "hidden_size": 8},
            "optim": {"lr": lr},
            "train": {"max_steps": 5, "batch_size": 4, "eval_every": 5, "log_every": 1, "device": "cpu"},
            "sample": {"length": 0},
            "run": {"dir": str(root / "logs" / "lr{optim.lr}")},
        })
        summary = fit(cfg, progress="none")  # writes the HParams session at the end
        runs.append((cfg, summary))
    return root / "logs", runs


def test_hparams_read_back_from_the_event_files(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    _, runs = sweep
    cfg, summary = runs[0]
    acc = EventAccumulator(summary["run_dir"])
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    hparams = dict(start.hparams)
    assert hparams["optim.lr"].number_value == cfg.optim.lr == 0.01
    assert hparams["model.hidden_size"].number_value == 8
    assert hparams["model.reset"].string_value == "after"
    assert hparams["data.lowercase"].WhichOneof("kind") == "bool_value" and hparams["data.lowercase"].bool_value is False
    assert hparams["optim.betas"].string_value == "[0.9, 0.999]"
    assert "train.epochs" not in hparams  # null: no value
    assert not NOT_HPARAMS & set(hparams)  # bookkeeping such as run.dir is not a hyperparameter
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS
    for tag, value in summary["final"].items():
        [event] = acc.Scalars(FINAL_PREFIX + tag)
        assert event.step == summary["step"] == 5
        assert event.value == pytest.approx(value, rel=1e-6)  # float32 in the event file
    # The run's own scalars are untouched: still one point per logged step.
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, body: dict | None = None, timeout: float = 10):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_tensorboard_server_serves_the_runs_scalars_and_hparams(sweep, tmp_path):
    logdir, runs = sweep
    port = free_loopback_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "tensorboard.log", "w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false", "--reload_interval", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        # Runs are named relative to --logdir ("lr0.01"); wait until TensorBoard has loaded both of them.
        expected = {Path(s["run_dir"]).name: [(m["step"], m["value"]) for m in read_metrics(s["run_dir"])
                                              if m["tag"] == "train/loss"] for _, s in runs}
        served: dict = {}
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None and served.keys() != expected.keys():
            for name in expected.keys() - served.keys():
                try:
                    points = http_json(f"{base}/data/plugin/scalars/scalars?run={name}&tag=train/loss", timeout=5)
                except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                    continue  # not listening yet, or this run not loaded yet (400)
                if len(points) == len(expected[name]):  # [[wall_time, step, value], ...]
                    served[name] = points
            time.sleep(0.25)
        log.seek(0)
        assert served.keys() == expected.keys(), f"scalars not served by TensorBoard:\n{log.read()[-3000:]}"
        for name, points in served.items():
            assert [p[1] for p in points] == [step for step, _ in expected[name]]
            assert [p[2] for p in points] == pytest.approx([value for _, value in expected[name]], rel=1e-6)

        assert sorted(http_json(f"{base}/data/runs")) == sorted(Path(s["run_dir"]).name for _, s in runs)

        # The HParams dashboard's own API: the experiment knows optim.lr differs across the sweep,
        # and each session carries its lr and its final metrics.
        experiment = http_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        infos = {h["name"]: h for h in experiment["hparamInfos"]}
        assert infos["optim.lr"]["differs"] is True
        assert infos["optim.lr"]["domainInterval"] == {"minValue": 0.003, "maxValue": 0.01}
        assert infos["model.hidden_size"].get("differs", False) is False
        metric = {"tag": FINAL_PREFIX + "val/perplexity", "group": ""}
        assert metric in [m["name"] for m in experiment["metricInfos"]]
        groups = http_json(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "startIndex": 0, "sliceSize": 10,
            "colParams": [{"hparam": "optim.lr"}, {"metric": metric, "order": "ORDER_ASC"}]})
        sessions = {g["hparams"]["optim.lr"]: g["metricValues"] for g in groups["sessionGroups"]}
        assert set(sessions) == {0.01, 0.003}
        for cfg, summary in runs:
            [value] = [m["value"] for m in sessions[cfg.optim.lr] if m["name"] == metric]
            assert value == pytest.approx(summary["final"]["val/perplexity"], rel=1e-6)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
