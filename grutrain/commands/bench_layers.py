"""Benchmarks of one GRU layer: each implementation of grutrain.gru.paths (the fused fast path, the
reference loop, ...) against torch.nn.GRU; the first part of `grutrain bench` (commands/bench.py).

Plain functions that return data, and the tables the command prints of it. Timing discipline, because
the machines this runs on are small and shared:

- the implementations are timed INTERLEAVED, round-robin within each repetition and in a
  rotating order, so load from other processes hits all of them alike;
- each number is the median of many repetitions after a warm-up, and its spread is reported:
  the 25th-75th percentiles of the per-repetition ratios (each repetition times every
  implementation back to back, so a ratio's spread shows how steady the comparison was);
- ratios are taken against torch.nn.GRU measured in the same run, never across runs;
- ``precision="bf16"`` runs every implementation under ``torch.autocast(bfloat16)`` and times
  torch.nn.GRU both under autocast (the ``torch`` baseline) and in float32 (``torch_fp32``);
- the ``products`` row is the limit: only the matrix products a GRU layer cannot avoid, each into a
  preallocated buffer (``X W_ih^T`` for all steps and ``h W_hh^T`` per step; for training also
  ``G W_hh`` per step backward, then ``dW_hh``, ``dW_ih`` and ``dX`` batched), in the precision's
  dtype, timed in the same interleaved rounds; every row's ``*_ratio_vs_products`` is its time over
  that one.

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
from typing import Sequence

import torch
from torch import Tensor, nn

from grutrain.gru import paths
from grutrain.runtime import autocast_dtype

__all__ = ["STANDARD_SHAPES", "IMPLS", "PRECISIONS", "bench_layers", "format_layer_table", "format_layer_markdown"]

# (T, B, I, H): sequence length, batch, input size, hidden size
STANDARD_SHAPES: list[tuple[int, int, int, int]] = [
    (35, 32, 28, 256),
    (64, 64, 64, 128),
    (128, 32, 32, 512),
    (32, 256, 1, 32),
]
# grutrain's implementations (the registry's), then torch.nn.GRU: the baseline of every ratio.
IMPLS = (*paths.IMPLS, "torch")
# The reference loop adds nothing under autocast; torch.nn.GRU is timed in float32 too.
IMPLS_BF16 = (*(name for name in paths.IMPLS if name != "reference"), "torch", "torch_fp32")
PRECISIONS = ("fp32", "bf16")
PRODUCTS = "products"  # the matrix products alone: the limit every implementation is compared to


class _Products:
    """The matrix products of one layer's training step and forward, each into a preallocated buffer."""

    def __init__(self, T: int, B: int, I: int, H: int, device, dtype: torch.dtype):
        g = torch.Generator().manual_seed(0)

        def r(*shape):
            return (torch.randn(*shape, generator=g) * 0.1).to(device=device, dtype=dtype)

        self.x2, self.w_ih, self.w_hh = r(T * B, I), r(3 * H, I), r(3 * H, H)
        self.h = r(T + 1, B, H)  # the states each step's product reads
        self.G = r(T, B, 3 * H)  # the gate gradients of the backward
        self.gx, self.gh = torch.empty_like(r(T * B, 3 * H)), torch.empty_like(r(T, B, 3 * H))
        self.dh = torch.empty_like(r(T, B, H))
        self.dw_hh, self.dw_ih, self.dx = torch.empty_like(self.w_hh), torch.empty_like(self.w_ih), torch.empty_like(self.x2)

    def forward(self) -> None:
        torch.mm(self.x2, self.w_ih.t(), out=self.gx)
        w_t = self.w_hh.t()
        for h, gh in zip(self.h.unbind(0), self.gh.unbind(0)):
            torch.mm(h, w_t, out=gh)

    def train(self) -> None:
        self.forward()
        for g, dh in zip(self.G.unbind(0), self.dh.unbind(0)):
            torch.mm(g, self.w_hh, out=dh)
        G2 = self.G.view(-1, self.G.shape[-1])
        torch.mm(G2.t(), self.h[:-1].reshape(-1, self.h.shape[-1]), out=self.dw_hh)
        torch.mm(G2.t(), self.x2, out=self.dw_ih)
        torch.mm(G2, self.w_ih, out=self.dx)


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


class _Timed:
    """A model and the autocast dtype it runs under (None: float32)."""

    def __init__(self, model: nn.Module, amp: torch.dtype | None):
        self.model, self.amp = model, amp

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None)


def _make_models(names: Sequence[str], input_size: int, hidden_size: int, device, precision: str = "fp32"
                 ) -> dict[str, _Timed]:
    torch_gru = nn.GRU(input_size, hidden_size).to(device)
    amp = autocast_dtype(precision, torch.device(device))
    models = {"torch": _Timed(torch_gru, amp), "torch_fp32": _Timed(torch_gru, None)}
    for name in names:
        if name not in models:
            models[name] = _Timed(_OneLayer(paths.implementation(name).layer, torch_gru).to(device), amp)
    return {name: models[name] for name in names}


def _train_step(timed: _Timed, x: Tensor) -> None:
    for p in timed.model.parameters():
        p.grad = None
    with timed.autocast(x.device):
        out, _ = timed.model(x)
    out.float().sum().backward()  # backward outside autocast, as torch.amp recommends


def _forward(timed: _Timed, x: Tensor) -> None:
    with torch.no_grad(), timed.autocast(x.device):
        timed.model(x)


def _timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _quartiles(values: list[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (the spread reported beside each median)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


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


def _peak_memory_bytes(model: _Timed, x: Tensor) -> int:
    """The most memory one training step holds above what existed before it."""
    for p in model.model.parameters():
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
    impls: Sequence[str] | None = None,
    seed: int = 0,
    precision: str = "fp32",
) -> list[dict]:
    """Time a training step (forward + backward of ``output.sum()``, parameter gradients) and a
    no-grad forward of each implementation at each (T, B, I, H) shape, interleaved.

    Returns one dict per (shape, impl): shape, impl, train_ms, forward_ms (medians),
    train_tokens_per_s, forward_tokens_per_s (T*B per second), train_ratio_vs_torch,
    forward_ratio_vs_torch (time / torch.nn.GRU's time; < 1 is faster), peak_mem_bytes and
    mem_ratio_vs_torch (peak memory of a training step), plus threads and device; the spread:
    train_ms_iqr, forward_ms_iqr, train_ratio_iqr, forward_ratio_iqr (25th, 75th percentiles of
    the times and of the per-repetition ratios). Each shape ends with a "products" row (the matrix
    products alone; peak_mem_bytes and mem_ratio_vs_torch None), and every row has
    ``*_ratio_vs_products`` and ``*_ratio_products_iqr`` against it. ``precision="bf16"``: everything
    under bfloat16 autocast, "torch" too, and ``*_ratio_vs_torch_fp32`` against torch.nn.GRU in float32.
    ``threads`` sets torch's intra-op threads for the duration of the run (restored afterwards).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if impls is None:  # every implementation this process has and that runs on `device`
        impls = tuple(name for name in (IMPLS_BF16 if precision == "bf16" else IMPLS) if _runs_on(name, device))
    impls = tuple(impls)
    if precision == "bf16" and "torch_fp32" not in impls:
        impls += ("torch_fp32",)
    if "torch" not in impls:
        raise ValueError("impls must include 'torch', the baseline of the ratios")
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
            results.extend(_bench_shape(shape, repeats, warmup, device, impls, seed, sync, precision))
        return results
    finally:
        torch.set_num_threads(old_threads)


def _runs_on(name: str, device: torch.device) -> bool:
    if name.startswith("torch"):
        return True
    impl = paths.implementation(name)
    return impl.available() and impl.supports(torch.empty(1, 1, 1, device=device))


def _bench_shape(shape, repeats, warmup, device, impls, seed, sync, precision="fp32") -> list[dict]:
    T, B, I, H = shape
    torch.manual_seed(seed)
    models = _make_models(impls, I, H, device, precision)
    x = torch.randn(T, B, I, device=device)
    products = _Products(T, B, I, H, device, autocast_dtype(precision, device) or torch.float32)
    steps = {name: (lambda m=model: _train_step(m, x), lambda m=model: _forward(m, x)) for name, model in models.items()}
    steps[PRODUCTS] = (products.train, products.forward)

    times = {name: {"train": [], "forward": []} for name in steps}
    names = list(steps)
    for rep in range(warmup + repeats):
        # Rotate the order so no implementation always runs right after the same neighbour.
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            train = _timed(steps[name][0], sync)
            forward = _timed(steps[name][1], sync)
            if rep >= warmup:
                times[name]["train"].append(train)
                times[name]["forward"].append(forward)

    peaks = {name: _peak_memory_bytes(model, x) for name, model in models.items()}
    tokens = T * B
    rows = []
    for name in [*models, PRODUCTS]:
        row = {"shape": tuple(shape), "impl": name, "precision": precision}
        for kind in ("train", "forward"):
            mine = times[name][kind]
            median = statistics.median(mine)
            row[f"{kind}_ms"] = median * 1e3
            row[f"{kind}_ms_iqr"] = tuple(q * 1e3 for q in _quartiles(mine))
            row[f"{kind}_tokens_per_s"] = tokens / median
            bases = ("torch", "torch_fp32", PRODUCTS) if precision == "bf16" else ("torch", PRODUCTS)
            for base in bases:
                theirs = times[base][kind]
                suffix = {"torch": "", "torch_fp32": "_fp32", PRODUCTS: "_products"}[base]
                key = "products" if base == PRODUCTS else f"torch{suffix}"
                row[f"{kind}_ratio_vs_{key}"] = median / statistics.median(theirs)
                row[f"{kind}_ratio{suffix}_iqr"] = _quartiles([a / b for a, b in zip(mine, theirs)])
        row["peak_mem_bytes"] = peaks.get(name)  # None for the products: nothing of a layer is kept
        row["mem_ratio_vs_torch"] = (peaks[name] / peaks["torch"] if peaks["torch"] else float("nan")) \
            if name in peaks else None
        row["threads"] = torch.get_num_threads()
        row["device"] = str(device)
        rows.append(row)
    return rows


def _ratio(row: dict, kind: str, suffix: str = "") -> str:
    low, high = row[f"{kind}_ratio{suffix}_iqr"]
    key = "products" if suffix == "_products" else f"torch{suffix}"
    return f"{row[f'{kind}_ratio_vs_{key}']:.2f} ({low:.2f}-{high:.2f})"


def _table_rows(results: list[dict]):
    """(header, rows) shared by the terminal table and the Markdown one."""
    bf16 = any(r.get("precision") == "bf16" for r in results)
    header = ["T,B,I,H", "impl", "train ms", "train ratio (IQR)", "train / products", "fwd ms", "fwd ratio (IQR)",
              "fwd / products"]
    if bf16:
        header += ["train vs fp32 torch", "fwd vs fp32 torch"]
    header += ["train tok/s", "peak MiB", "mem ratio"]
    rows = []
    for i, row in enumerate(results):
        first_of_shape = i == 0 or results[i - 1]["shape"] != row["shape"]
        cells = [",".join(map(str, row["shape"])) if first_of_shape else "", row["impl"],
                 f"{row['train_ms']:.2f}", _ratio(row, "train"), _ratio(row, "train", "_products"),
                 f"{row['forward_ms']:.2f}", _ratio(row, "forward"), _ratio(row, "forward", "_products")]
        if bf16:
            cells += [_ratio(row, "train", "_fp32"), _ratio(row, "forward", "_fp32")]
        peak = row["peak_mem_bytes"]
        cells += [f"{row['train_tokens_per_s']:,.0f}", "-" if peak is None else f"{peak / 2**20:.1f}",
                  "-" if peak is None else f"{row['mem_ratio_vs_torch']:.2f}"]
        rows.append(cells)
    return header, rows


def format_layer_table(results: list[dict]):
    """A rich Table of ``bench_layers`` results, one row per (shape, impl)."""
    from rich.table import Table

    precision = results[0].get("precision", "fp32") if results else "fp32"
    table = Table(title=f"GRU layer ({precision}): training step (fwd+bwd) and no-grad forward; "
                        "ratio = time / torch.nn.GRU's (median, 25th-75th percentile); / products = time / "
                        "the matrix products' alone (the products row)")
    header, rows = _table_rows(results)
    for col in header:
        table.add_column(col, justify="left" if col in ("T,B,I,H", "impl") else "right")
    for i, cells in enumerate(rows):
        last_of_shape = i == len(results) - 1 or results[i + 1]["shape"] != results[i]["shape"]
        table.add_row(*cells, end_section=last_of_shape)
    return table


def format_layer_markdown(results: list[dict], command: str, machine: str) -> str:
    """The README's table: a Markdown table of ``bench_layers`` results with what produced it."""
    header, rows = _table_rows(results)
    lines = [f"`{command}` on {machine}:", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)
