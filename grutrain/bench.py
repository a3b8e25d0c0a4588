"""Benchmarks of one GRU layer: the fused fast path against the reference loop and torch.nn.GRU.

Plain functions that return data (the CLI formats and prints them). Timing discipline, because
the machines this runs on are small and shared:

- the implementations are timed INTERLEAVED, round-robin within each repetition and in a
  rotating order, so load from other processes hits all of them alike;
- each number is the median of many repetitions after a warm-up;
- ratios are taken against torch.nn.GRU measured in the same run, never across runs.

On a 2-core machine that other jobs share, prefer ``threads=1``: with 2 threads every parallel
region (GEMMs, large elementwise ops) waits for a descheduled worker, and under heavy load all
three implementations end up equally stall-bound (ratios ~1.0 that say nothing about the code).

Peak memory of a training step is measured apart from the timing (profiling slows things down):
on CUDA with ``torch.cuda.max_memory_allocated``; on CPU by replaying the allocation and free
events that ``torch.profiler`` records with ``profile_memory=True`` and taking the maximum of
their running sum, i.e. the most memory the step held above what existed before it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from grutrain.gru import reference_gru_layer
from grutrain.gru_fused import fused_gru_layer

__all__ = ["STANDARD_SHAPES", "IMPLS", "bench_layers", "format_layer_table", "bench_trainer", "format_trainer_result"]

# (T, B, I, H): sequence length, batch, input size, hidden size
STANDARD_SHAPES: list[tuple[int, int, int, int]] = [
    (35, 32, 28, 256),
    (64, 64, 64, 128),
    (128, 32, 32, 512),
    (32, 256, 1, 32),
]
IMPLS = ("fused", "reference", "torch")


class _OneLayer(nn.Module):
    """A single-direction, single-layer GRU around a layer function, with nn.GRU's parameters."""

    def __init__(self, layer_fn, like: nn.GRU, reset: str = "after"):
        super().__init__()
        self.layer_fn = layer_fn
        self.reset = reset
        self.hidden_size = like.hidden_size
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            setattr(self, name, nn.Parameter(getattr(like, name).detach().clone()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # x: [T, B, I]
        h0 = x.new_zeros(x.shape[1], self.hidden_size)
        return self.layer_fn(
            x, h0, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0, reset=self.reset
        )


def _make_models(input_size: int, hidden_size: int, device) -> dict[str, nn.Module]:
    torch_gru = nn.GRU(input_size, hidden_size).to(device)
    return {
        "fused": _OneLayer(fused_gru_layer, torch_gru).to(device),
        "reference": _OneLayer(reference_gru_layer, torch_gru).to(device),
        "torch": torch_gru,
    }


def _train_step(model: nn.Module, x: Tensor) -> None:
    for p in model.parameters():
        p.grad = None
    out, _ = model(x)
    out.sum().backward()


def _forward(model: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        model(x)


def _timed(fn, model, x, sync) -> float:
    sync()
    start = time.perf_counter()
    fn(model, x)
    sync()
    return time.perf_counter() - start


@contextlib.contextmanager
def _stderr_silenced():
    """The profiler's C++ side prints a line per start and stop to file descriptor 2; not for the user."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_memory_bytes(model: nn.Module, x: Tensor) -> int:
    """The most memory one training step holds above what existed before it."""
    for p in model.parameters():
        p.grad = None
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        _train_step(model, x)
        torch.cuda.synchronize(x.device)
        return torch.cuda.max_memory_allocated(x.device) - base
    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _train_step(model, x)
    try:  # every allocation (+) and free (-) with its time stamp
        raw = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        deltas = [(e.start_ns(), e.nbytes()) for e in raw]
    except AttributeError:  # private API moved: fall back to each op's own net allocation
        deltas = [(e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()]
    running = peak = 0
    for _, nbytes in sorted(deltas):
        running += nbytes
        peak = max(peak, running)
    return peak


def bench_layers(
    shapes: Sequence[tuple[int, int, int, int]] = STANDARD_SHAPES,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    impls: Sequence[str] = IMPLS,
    seed: int = 0,
) -> list[dict]:
    """Time a training step (forward + backward of ``output.sum()``, parameter gradients) and a
    no-grad forward of each implementation at each (T, B, I, H) shape, interleaved.

    Returns one dict per (shape, impl): shape, impl, train_ms, forward_ms (medians),
    train_tokens_per_s, forward_tokens_per_s (T*B per second), train_ratio_vs_torch,
    forward_ratio_vs_torch (time / torch.nn.GRU's time; < 1 is faster), peak_mem_bytes and
    mem_ratio_vs_torch (peak memory of a training step), plus threads and device.
    ``threads`` sets torch's intra-op threads for the duration of the run (restored afterwards).
    """
    if "torch" not in impls:
        raise ValueError("impls must include 'torch', the baseline of the ratios")
    device = torch.device(device)
    if device.type == "cuda":
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    else:
        sync = lambda: None  # noqa: E731
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        results = []
        for shape in shapes:
            results.extend(_bench_shape(shape, repeats, warmup, device, impls, seed, sync))
        return results
    finally:
        torch.set_num_threads(old_threads)


def _bench_shape(shape, repeats, warmup, device, impls, seed, sync) -> list[dict]:
    T, B, I, H = shape
    torch.manual_seed(seed)
    all_models = _make_models(I, H, device)
    models = {name: all_models[name] for name in impls}
    x = torch.randn(T, B, I, device=device)

    times = {name: {"train": [], "forward": []} for name in models}
    names = list(models)
    for rep in range(warmup + repeats):
        # Rotate the order so no implementation always runs right after the same neighbour.
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            train = _timed(_train_step, models[name], x, sync)
            forward = _timed(_forward, models[name], x, sync)
            if rep >= warmup:
                times[name]["train"].append(train)
                times[name]["forward"].append(forward)

    peaks = {name: _peak_memory_bytes(model, x) for name, model in models.items()}
    tokens = T * B
    base_train = statistics.median(times["torch"]["train"])
    base_forward = statistics.median(times["torch"]["forward"])
    rows = []
    for name in names:
        train = statistics.median(times[name]["train"])
        forward = statistics.median(times[name]["forward"])
        rows.append(
            {
                "shape": tuple(shape),
                "impl": name,
                "train_ms": train * 1e3,
                "forward_ms": forward * 1e3,
                "train_tokens_per_s": tokens / train,
                "forward_tokens_per_s": tokens / forward,
                "train_ratio_vs_torch": train / base_train,
                "forward_ratio_vs_torch": forward / base_forward,
                "peak_mem_bytes": peaks[name],
                "mem_ratio_vs_torch": peaks[name] / peaks["torch"] if peaks["torch"] else float("nan"),
                "threads": torch.get_num_threads(),
                "device": str(device),
            }
        )
    return rows


def format_layer_table(results: list[dict]):
    """A rich Table of ``bench_layers`` results, one row per (shape, impl)."""
    from rich.table import Table

    table = Table(title="GRU layer: training step (fwd+bwd) and no-grad forward; ratio = time / torch.nn.GRU")
    for col in ("T,B,I,H", "impl", "train ms", "train ratio", "fwd ms", "fwd ratio", "train tok/s", "peak MiB", "mem ratio"):
        table.add_column(col, justify="left" if col in ("T,B,I,H", "impl") else "right")
    for i, row in enumerate(results):
        first_of_shape = i == 0 or results[i - 1]["shape"] != row["shape"]
        last_of_shape = i == len(results) - 1 or results[i + 1]["shape"] != row["shape"]
        table.add_row(
            ",".join(map(str, row["shape"])) if first_of_shape else "",
            row["impl"],
            f"{row['train_ms']:.2f}",
            f"{row['train_ratio_vs_torch']:.2f}",
            f"{row['forward_ms']:.2f}",
            f"{row['forward_ratio_vs_torch']:.2f}",
            f"{row['train_tokens_per_s']:,.0f}",
            f"{row['peak_mem_bytes'] / 2**20:.1f}",
            f"{row['mem_ratio_vs_torch']:.2f}",
            end_section=last_of_shape,
        )
    return table


# The trainer benchmark: the default language model (configs/charlm.yaml's sizes) on alice29.txt.
TRAINER_MODEL = {"embedding_dim": 64, "hidden_size": 256, "num_layers": 1}
TRAINER_DATA = {"path": "data/alice29.txt", "seq_len": 64, "sampling": "random"}
TRAINER_BATCH = 64


def _bare_loop_tokens_per_s(steps: int, warmup: int, device, backend: str = "custom") -> float:
    """nanoGPT-style: the same model, data and optimizer in a plain loop with nothing around it.

    backend "torch" swaps in torch.nn.GRU: the loop a PyTorch user would write without grutrain."""
    from grutrain.config import ModelConfig, TextDataConfig
    from grutrain.data.text import WindowSampler, load_text_splits
    from grutrain.model import SequenceModel

    splits = load_text_splits(TextDataConfig(**TRAINER_DATA))
    sampler = WindowSampler(splits.train, TRAINER_DATA["seq_len"], TRAINER_BATCH, "random", seed=1)
    torch.manual_seed(0)
    vocab_size = len(splits.vocab)
    model = SequenceModel(ModelConfig(**TRAINER_MODEL, backend=backend), vocab_size, vocab_size=vocab_size,
                          per_step=True).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        inputs, targets, _ = sampler.next_batch()
        inputs, targets = inputs.to(device), targets.to(device)
        logits, _ = model(inputs)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * TRAINER_BATCH * TRAINER_DATA["seq_len"] / (time.perf_counter() - start)


def _fit_tokens_per_s(steps: int, warmup: int, device, threads) -> float:
    """`grutrain fit` on the same model and data; its own perf/tokens_per_s after the warm-up steps."""
    import tempfile

    from grutrain.config import validate_config
    from grutrain.metrics import read_metrics
    from grutrain.train import fit

    with tempfile.TemporaryDirectory() as tmp:
        cfg = validate_config({
            "data": TRAINER_DATA, "model": TRAINER_MODEL,
            "optim": {"name": "adamw", "lr": 3e-3, "grad_clip": 1.0, "schedule": "cosine"},
            "train": {"max_steps": warmup + steps, "batch_size": TRAINER_BATCH, "log_every": warmup,
                      "eval_every": 10**9, "checkpoint_every": 10**9,
                      "device": device.type, "threads": threads},
            "sample": {"length": 0},
            "run": {"dir": f"{tmp}/run"},
        })
        started = time.perf_counter()
        fit(cfg, progress="none")
        rates = [m["value"] for m in read_metrics(f"{tmp}/run") if m["tag"] == "perf/tokens_per_s"]
    # The first logged rate covers the warm-up steps; the rest the measured ones (one eval and
    # one checkpoint at the very end fall outside them, as in a long run they are rare).
    return statistics.median(rates[1:]) if len(rates) > 1 else rates[0]


def bench_trainer(steps: int = 60, warmup: int = 10, rounds: int = 3, threads: int | None = None,
                  device: str | torch.device = "cpu") -> dict:
    """tokens/s of `grutrain fit` against a bare PyTorch loop (same model, data, optimizer), alternated
    `rounds` times so machine load hits both alike; medians and their ratio (>= 1 means fit is as fast)."""
    device = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        fit_rates, bare_rates, bare_torch_rates = [], [], []
        for _ in range(rounds):
            fit_rates.append(_fit_tokens_per_s(steps, warmup, device, threads))
            bare_rates.append(_bare_loop_tokens_per_s(steps, warmup, device))
            bare_torch_rates.append(_bare_loop_tokens_per_s(steps, warmup, device, backend="torch"))
    finally:
        torch.set_num_threads(old_threads)
    fit_median, bare_median = statistics.median(fit_rates), statistics.median(bare_rates)
    bare_torch_median = statistics.median(bare_torch_rates)
    return {"model": TRAINER_MODEL, "data": TRAINER_DATA, "batch_size": TRAINER_BATCH, "steps": steps,
            "rounds": rounds, "fit_tokens_per_s": fit_median, "bare_tokens_per_s": bare_median,
            "bare_torch_gru_tokens_per_s": bare_torch_median, "ratio": fit_median / bare_median,
            "ratio_vs_bare_torch_gru": fit_median / bare_torch_median,
            "fit_runs": fit_rates, "bare_runs": bare_rates, "bare_torch_gru_runs": bare_torch_rates}


def format_trainer_result(result: dict) -> str:
    return (f"trainer (charlm sizes, median of {result['rounds']} alternated rounds of {result['steps']} steps):\n"
            f"  grutrain fit                      {result['fit_tokens_per_s']:>9,.0f} tok/s\n"
            f"  bare loop, same model             {result['bare_tokens_per_s']:>9,.0f} tok/s   "
            f"fit / bare = {result['ratio']:.2f}\n"
            f"  bare loop with torch.nn.GRU       {result['bare_torch_gru_tokens_per_s']:>9,.0f} tok/s   "
            f"fit / bare nn.GRU = {result['ratio_vs_bare_torch_gru']:.2f}")
