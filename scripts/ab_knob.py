"""A/B one tuning knob of the native kernel in one process, the way `grutrain bench` times a layer.

    python scripts/ab_knob.py T,B,I,H KNOB V1,V2[,...] [--threads N] [--reps R] [--bf16] [--set K=V ...]

Each repetition runs every contender once, in a rotated order: the native layer with the knob at each
value, torch.nn.GRU and the matrix products alone (`grutrain bench`'s `products` row); each contender's
training step (forward + backward of out.sum()) is followed by its no-grad forward, as in the bench.
Prints the median times and their ratio to the products. The knobs are those of
`torch.ops.grutrain_native.cpu_tune` (grutrain/gru/csrc/gru_cpu.cpp, struct Tuning); speed only,
the results are the same at every value (tests/gru/test_native.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from grutrain.allocator import keep_freed_memory
from grutrain.commands.bench_layers import _forward, _make_models, _Products, _train_step
from grutrain.gru import native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", help="T,B,I,H")
    parser.add_argument("knob")
    parser.add_argument("values", help="comma-separated integers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--bf16", action="store_true", help="under bfloat16 autocast, products in bfloat16")
    parser.add_argument("--set", nargs="*", default=[], metavar="K=V", help="other knobs, for every contender")
    args = parser.parse_args()

    keep_freed_memory()  # as every grutrain command does
    if not native.load():
        raise SystemExit("the native kernel is not available here (see `grutrain kernels`)")
    tune = torch.ops.grutrain_native.cpu_tune
    torch.set_num_threads(args.threads)
    T, B, I, H = (int(v) for v in args.shape.split(","))
    precision = "bf16" if args.bf16 else "fp32"
    torch.manual_seed(0)
    models = _make_models(["native", "torch"], I, H, "cpu", precision)
    x = torch.randn(T, B, I)
    products = _Products(T, B, I, H, "cpu", torch.bfloat16 if args.bf16 else torch.float32)

    contenders = {f"native {args.knob}={v}": (int(v), models["native"]) for v in args.values.split(",")}
    contenders["torch.nn.GRU"] = (None, models["torch"])
    contenders["products"] = (None, None)
    for kv in args.set:
        name, value = kv.split("=")
        tune(name, int(value))
    default = tune(args.knob, -1)

    times = {name: ([], []) for name in contenders}
    names = list(contenders)
    for rep in range(3 + args.reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            value, model = contenders[name]
            if value is not None:
                tune(args.knob, value)
            train = products.train if model is None else (lambda m=model: _train_step(m, x))
            forward = products.forward if model is None else (lambda m=model: _forward(m, x))
            t0 = time.perf_counter()
            train()
            t1 = time.perf_counter()
            forward()
            t2 = time.perf_counter()
            tune(args.knob, default)
            if rep >= 3:  # warm-up
                times[name][0].append(t1 - t0)
                times[name][1].append(t2 - t1)

    base_train, base_fwd = (statistics.median(v) for v in times["products"])
    print(f"{args.shape} {precision}, {args.threads} threads, {args.reps} repetitions (default {args.knob}={default})")
    for name, (train, fwd) in times.items():
        mt, mf = statistics.median(train), statistics.median(fwd)
        print(f"{name:36s} train {mt * 1e3:8.3f} ms  {mt / base_train:.3f} of products | "
              f"forward {mf * 1e3:8.3f} ms  {mf / base_fwd:.3f}")


if __name__ == "__main__":
    main()
