"""Whole-model benchmarks: `grutrain fit` against bare PyTorch loops, and the per-token cost of
generation (`grutrain sample`'s loop) against torch.nn.GRU stepping one token at a time.

They train on a synthetic text written to a temporary directory: alice29.txt's length (148,481
characters) and alphabet size (73), drawn uniformly with a fixed seed. Tokens per second do not
depend on what the text says, only on its vocabulary size and the model, so this runs the same
from any directory and on an installed package (the data/ folder is only in a checkout).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time

import torch
from torch import nn

from grutrain.runtime import autocast_dtype

__all__ = ["TRAINER_MODEL", "bench_trainer", "format_trainer_result", "bench_generation",
           "format_generation_result"]

# The default language model (configs/charlm.yaml's sizes).
TRAINER_MODEL = {"embedding_dim": 64, "hidden_size": 256, "num_layers": 1}
TRAINER_DATA = {"seq_len": 64, "sampling": "random"}
TRAINER_BATCH = 64
TEXT_LENGTH, TEXT_ALPHABET = 148_481, 73


@contextlib.contextmanager
def synthetic_text():
    """The path of the benchmark's text, in a temporary directory removed afterwards."""
    alphabet = "".join(chr(c) for c in range(ord(" "), ord(" ") + TEXT_ALPHABET))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(alphabet), (TEXT_LENGTH,), generator=g).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/text.txt"
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(alphabet[i] for i in ids))
        yield path


def _autocast(device, precision: str):
    dtype = autocast_dtype(precision, device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def language_model(vocab_size: int, model_cfg):
    """grutrain's language model (as the lm task builds it) for a vocabulary of `vocab_size`."""
    from grutrain.model import SequenceModel

    return SequenceModel(model_cfg, vocab_size, vocab_size=vocab_size, per_step=True)


def _bare_loop_tokens_per_s(path: str, steps: int, warmup: int, device, backend: str = "custom",
                            precision: str = "fp32") -> float:
    """nanoGPT-style: the same model, data and optimizer in a plain loop with nothing around it.

    backend "torch" swaps in torch.nn.GRU: the loop a PyTorch user would write without grutrain."""
    from grutrain.config.schema import ModelConfig
    from grutrain.tasks.lm.config import TextDataConfig
    from grutrain.tasks.lm.text import WindowSampler, load_text_splits

    splits = load_text_splits(TextDataConfig(path=path, **TRAINER_DATA))
    sampler = WindowSampler(splits.train, TRAINER_DATA["seq_len"], TRAINER_BATCH, "random", seed=1)
    torch.manual_seed(0)
    model = language_model(len(splits.vocab), ModelConfig(**TRAINER_MODEL, backend=backend)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        inputs, targets, _ = sampler.next_batch()
        inputs, targets = inputs.to(device), targets.to(device)
        with _autocast(device, precision):
            logits, _ = model(inputs)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * TRAINER_BATCH * TRAINER_DATA["seq_len"] / (time.perf_counter() - start)


def _fit_tokens_per_s(path: str, steps: int, warmup: int, device, threads, precision: str = "fp32") -> float:
    """`grutrain fit` on the same model and data; its own perf/tokens_per_s after the warm-up steps."""
    from grutrain.tasks import validate_config
    from grutrain.trainer.metrics import read_metrics
    from grutrain.trainer.fit import fit

    with tempfile.TemporaryDirectory() as tmp:
        cfg = validate_config({
            "data": {"path": path, **TRAINER_DATA}, "model": TRAINER_MODEL,
            "optim": {"name": "adamw", "lr": 3e-3, "grad_clip": 1.0, "schedule": "cosine"},
            "train": {"max_steps": warmup + steps, "batch_size": TRAINER_BATCH, "log_every": warmup,
                      "eval_every": 10**9, "checkpoint_every": 10**9,
                      "device": device.type, "threads": threads, "precision": precision},
            "sample": {"length": 0},
            "run": {"dir": f"{tmp}/run"},
        })
        fit(cfg, progress="none")
        rates = [m["value"] for m in read_metrics(f"{tmp}/run") if m["tag"] == "perf/tokens_per_s"]
    # The first logged rate covers the warm-up steps; the rest the measured ones (one eval and
    # one checkpoint at the very end fall outside them, as in a long run they are rare).
    return statistics.median(rates[1:]) if len(rates) > 1 else rates[0]


@contextlib.contextmanager
def _threads(threads: int | None):
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def bench_trainer(steps: int = 60, warmup: int = 10, rounds: int = 3, threads: int | None = None,
                  device: str | torch.device = "cpu", precision: str = "fp32") -> dict:
    """tokens/s of `grutrain fit` against a bare PyTorch loop (same model, data, optimizer), alternated
    `rounds` times so machine load hits both alike; medians and their ratio (>= 1 means fit is as fast)."""
    device = torch.device(device)
    with _threads(threads), synthetic_text() as path:
        fit_rates, bare_rates, bare_torch_rates = [], [], []
        for _ in range(rounds):
            fit_rates.append(_fit_tokens_per_s(path, steps, warmup, device, threads, precision))
            bare_rates.append(_bare_loop_tokens_per_s(path, steps, warmup, device, precision=precision))
            bare_torch_rates.append(_bare_loop_tokens_per_s(path, steps, warmup, device, "torch", precision))
    fit_median, bare_median = statistics.median(fit_rates), statistics.median(bare_rates)
    bare_torch_median = statistics.median(bare_torch_rates)
    return {"model": TRAINER_MODEL, "data": {"text": f"synthetic, {TEXT_LENGTH} chars, {TEXT_ALPHABET} symbols",
                                             **TRAINER_DATA},
            "batch_size": TRAINER_BATCH, "steps": steps, "precision": precision,
            "rounds": rounds, "fit_tokens_per_s": fit_median, "bare_tokens_per_s": bare_median,
            "bare_torch_gru_tokens_per_s": bare_torch_median, "ratio": fit_median / bare_median,
            "ratio_vs_bare_torch_gru": fit_median / bare_torch_median,
            "fit_runs": fit_rates, "bare_runs": bare_rates, "bare_torch_gru_runs": bare_torch_rates}


def format_trainer_result(result: dict) -> str:
    def spread(runs):
        return f"(runs {min(runs):,.0f}-{max(runs):,.0f})"

    return (f"trainer ({result.get('precision', 'fp32')}, charlm sizes, median of {result['rounds']} "
            f"alternated rounds of {result['steps']} steps):\n"
            f"  grutrain fit                      {result['fit_tokens_per_s']:>9,.0f} tok/s {spread(result['fit_runs'])}\n"
            f"  bare loop, same model             {result['bare_tokens_per_s']:>9,.0f} tok/s {spread(result['bare_runs'])}   "
            f"fit / bare = {result['ratio']:.2f}\n"
            f"  bare loop with torch.nn.GRU       {result['bare_torch_gru_tokens_per_s']:>9,.0f} tok/s "
            f"{spread(result['bare_torch_gru_runs'])}   fit / bare nn.GRU = {result['ratio_vs_bare_torch_gru']:.2f}")


def bench_generation(tokens: int = 200, rounds: int = 5, threads: int | None = None,
                     device: str | torch.device = "cpu", vocab_size: int = TEXT_ALPHABET) -> dict:
    """Per-token cost of generation, the body of `grutrain sample`'s loop (one token in, logits
    and the new state out, no grad), for the charlm-sized model with grutrain's GRU and with
    torch.nn.GRU; the two are alternated `rounds` times. Medians and 25th-75th percentiles in us."""
    from grutrain.config.schema import ModelConfig

    device = torch.device(device)
    models = {}
    for backend in ("custom", "torch"):
        torch.manual_seed(0)
        models[backend] = language_model(vocab_size, ModelConfig(**TRAINER_MODEL, backend=backend)).to(device).eval()
    per_token = {backend: [] for backend in models}
    ids = torch.randint(vocab_size, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    with _threads(threads), torch.no_grad():
        for rnd in range(rounds + 1):  # round 0 warms up
            for backend, model in models.items():
                hidden = None
                start = time.perf_counter()
                for token in ids:
                    logits, hidden = model.step(torch.tensor([token], device=device), hidden)  # sample()'s step
                    logits[0].float().cpu()  # what sample() reads each step
                elapsed = time.perf_counter() - start
                if rnd > 0:
                    per_token[backend].append(elapsed / tokens * 1e6)
    result = {"tokens": tokens, "rounds": rounds, "model": TRAINER_MODEL, "vocab_size": vocab_size}
    for backend, name in (("custom", "grutrain"), ("torch", "torch_gru")):
        runs = per_token[backend]
        q = statistics.quantiles(runs, n=4, method="inclusive") if len(runs) > 1 else [runs[0]] * 3
        result[f"{name}_us_per_token"] = statistics.median(runs)
        result[f"{name}_us_iqr"] = (q[0], q[2])
        result[f"{name}_runs"] = runs
    result["ratio"] = result["grutrain_us_per_token"] / result["torch_gru_us_per_token"]
    return result


def format_generation_result(result: dict) -> str:
    def line(name, label):
        low, high = result[f"{name}_us_iqr"]
        return f"  {label:<34}{result[f'{name}_us_per_token']:>8.1f} us/token (IQR {low:.1f}-{high:.1f})"

    return "\n".join([
        f"generation (sample's loop, charlm sizes, batch 1, {result['tokens']} tokens x {result['rounds']} rounds):",
        line("grutrain", "grutrain GRU"),
        line("torch_gru", "torch.nn.GRU, one token at a time") + f"   ratio = {result['ratio']:.2f}",
    ])
