"""`grutrain kernels`, model.kernel, and training and sampling on whichever kernel runs: the native
one where it is built, else the Python fused path after one notice line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from grutrain.config.schema import ModelConfig
from grutrain.gru import native, paths
from grutrain.model import SequenceModel


def test_kernels_json_reports_the_cache_the_build_and_what_auto_runs(run_cli):
    code, out, err = run_cli(["kernels", "--json"])
    assert code == 0, err
    report = json.loads(out)  # one JSON object and nothing else on stdout
    assert report["path"] == os.path.join(report["kernels_dir"], report["key"])
    assert report["available"] == native.available()
    assert report["auto"]["cpu"] == ("native" if native.available() else "fused")
    if report["available"]:
        assert report["built"] and report["build_seconds"] > 0 and report["reason"] is None
        assert os.path.exists(os.path.join(report["path"], native.LIBRARY + ".so"))


def test_kernels_text_names_the_cache_and_the_choice(run_cli):
    code, out, err = run_cli(["kernels"])
    assert code == 0, err
    assert out.splitlines()[0].startswith("native GRU kernel: ")
    assert f"cache: {native.status()['path']}" in out
    assert "model.kernel=auto runs on cpu: " in out


@pytest.mark.parametrize("kernel, impl", [("auto", "native"), ("native", "native"), ("python", "fused")])
def test_model_kernel_picks_the_implementation(kernel, impl):
    model = SequenceModel(ModelConfig(kernel=kernel, hidden_size=8, embedding_dim=4), 5, vocab_size=5)
    assert model.gru.impl == impl


def test_native_kernel_needs_the_custom_backend():
    with pytest.raises(ValueError, match="model.kernel=native .* model.backend=custom"):
        ModelConfig(kernel="native", backend="torch")


def test_a_forced_native_kernel_that_cannot_be_had_is_a_one_line_error(run_cli, write_config, monkeypatch):
    monkeypatch.setattr(native, "load", lambda build=True: False)
    monkeypatch.setattr(native, "reason", lambda: "no C++ compiler found: c++; install g++ or set CXX")
    code, out, err = run_cli(["fit", write_config(), "--quiet", "model.kernel=native"])
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.endswith("model.kernel=native: the native GRU kernel is unavailable (no C++ compiler found: c++; "
                         "install g++ or set CXX); fix that, or use model.kernel=auto (the Python path where native "
                         "can't run)")


def test_fit_without_a_compiler_trains_on_the_python_path_after_one_notice(write_config, tmp_path):
    """A machine without a C++ compiler: the README's first command works, one line says why."""
    env = {k: v for k, v in os.environ.items() if k not in ("GRUTRAIN_NATIVE", "CXX")}
    env.update(GRUTRAIN_KERNEL_DIR=str(tmp_path / "kernels"), CXX="/nonexistent/g++")
    config = write_config()
    proc = subprocess.run([sys.executable, "-m", "grutrain", "fit", str(config), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "grutrain: native GRU kernel unavailable (no C++ compiler found: /nonexistent/g++; install g++ or set CXX); "
        "using the Python fused path"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["kernel"] == "auto"  # stored with the run's config
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("backend", ["custom", "torch"])
def test_a_generation_step_equals_the_forward_on_one_token(backend, mode, monkeypatch):
    """SequenceModel.step (sample's per-token call) gives what forward gives: in eval mode as one
    native call for the whole step where the kernel is built, in train mode (no dropout) on the
    implementation's cell."""
    calls = {"cell": 0, "stack": 0}
    if native.available():
        impl = paths.implementation("native")
        stack_step = native.native_stack_step

        def counted_cell(*args, **kwargs):
            calls["cell"] += 1
            return native.native_gru_cell(*args, **kwargs)

        def counted_stack(*args, **kwargs):
            calls["stack"] += 1
            return stack_step(*args, **kwargs)

        counting = dataclasses.replace(impl, cell=counted_cell)
        monkeypatch.setattr(paths, "IMPLEMENTATIONS", (counting, *paths.IMPLEMENTATIONS[1:]))
        monkeypatch.setattr(native, "native_stack_step", counted_stack)
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(backend=backend, hidden_size=16, embedding_dim=4, num_layers=2), 7,
                          vocab_size=7, per_step=True).train(mode == "train")
    tokens = torch.tensor([3, 1])
    hidden = torch.randn(2, 2, 16)
    with torch.no_grad():
        logits, h = model.step(tokens, hidden)
        want_logits, want_h = model(tokens[:, None], hidden)
    torch.testing.assert_close(logits, want_logits[:, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h, want_h, atol=1e-6, rtol=1e-5)
    native_here = backend == "custom" and native.available()
    assert calls == {"cell": 2 * (native_here and mode == "train"),  # one per layer
                     "stack": int(native_here and mode == "eval")}


def test_sampling_on_the_native_step_gives_the_python_paths_tokens():
    """generate() (grutrain sample) draws the same tokens, seed for seed, with the whole step in one
    native call as with the Python fused path."""
    from grutrain.tasks.lm.task import generate

    models = {}
    for kernel in ("auto", "python"):
        torch.manual_seed(0)
        models[kernel] = SequenceModel(ModelConfig(hidden_size=32, embedding_dim=8, num_layers=2, kernel=kernel),
                                       13, vocab_size=13, per_step=True)
    for temperature, top_k in ((1.0, None), (0.7, 5), (0.0, None)):
        tokens = [generate(model, torch.tensor([2, 5]), 60, temperature=temperature, top_k=top_k, seed=3)
                  for model in models.values()]
        assert tokens[0] == tokens[1]
