"""`grutrain kernels`: build the native GRU kernel ahead of its first use and say what is in use.

The kernel (grutrain/gru/native.py) is otherwise built the first time a GRU runs; building it here
instead (once per machine, torch version and kernel source) keeps that ~30 s out of a first fit, a
sweep's first processes or a timed benchmark.
"""

from __future__ import annotations

import time

import torch

from grutrain.gru import native, paths

__all__ = ["kernels_report", "format_kernels_report"]


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def kernels_report(build: bool = True) -> dict:
    """Load the native kernel (building it first when `build` and it is not in the cache) and report:
    native.status()'s fields (key, kernels_dir, path, built, loaded, reason, build_seconds, ...),
    available, load_seconds (this call's), and auto: the implementation model.kernel=auto runs per device
    (empty when nothing is built and `build` is False)."""
    start = time.perf_counter()
    available = native.load(build=build)
    load_seconds = time.perf_counter() - start
    auto = {}  # selecting would build the kernel: not with build=False before it is built
    if available or build:
        auto = {dev.type: paths.select("native", torch.empty(1, 1, 1, device=dev)).name for dev in _devices()}
    return {**native.status(), "available": available, "load_seconds": round(load_seconds, 2), "auto": auto}


def format_kernels_report(report: dict) -> str:
    if report["available"]:
        head = f"native GRU kernel: available (built in {report['build_seconds']:.1f} s; loaded in " \
               f"{report['load_seconds']:.1f} s now)"
    elif report["reason"] is None:  # --no-build and nothing built yet
        head = "native GRU kernel: not built yet (grutrain kernels builds it)"
    else:
        head = f"native GRU kernel: unavailable ({report['reason']})"
    lines = [head, f"cache: {report['path'] or report['kernels_dir']}"]
    lines += [f"model.kernel=auto runs on {device}: {name}" for device, name in report["auto"].items()]
    return "\n".join(lines)
