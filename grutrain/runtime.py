"""Seeds, devices, threads, eval mode and the random-number state that checkpoints carry."""

from __future__ import annotations

import contextlib
import random
import signal
import threading

import torch

from grutrain.errors import GrutrainError, Interrupted


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM raises Interrupted (as SIGINT raises KeyboardInterrupt), so that cleanup code runs:
    a run dir created for a run that never started is removed, an overwritten run is put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """Eval mode and no gradients inside the block; the model's mode as it was after it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        shown = repr(name[:40]).encode("ascii", "backslashreplace").decode()
        raise GrutrainError(f"device {shown} is not a device; use auto, cpu, cuda or mps")
    if device.type == "cuda" and not cuda:
        raise GrutrainError(f"device {name!r}: no CUDA device is available here; use cpu or auto "
                            "(train.device, or --device)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise GrutrainError(f"device {name!r}: there are {torch.cuda.device_count()} CUDA devices "
                            "(cuda:0 ...); use one of them or auto")
    if device.type == "mps" and not mps:
        raise GrutrainError(f"device {name!r}: MPS is not available here; use cpu or auto (train.device, or --device)")
    if device.type == "cpu":  # there is one CPU device: cpu:0 is cpu (torch.load cannot map to "cpu:0")
        return torch.device("cpu")
    return device


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def rng_state() -> dict:
    state = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for train.precision, or None for plain float32."""
    if precision == "fp32":
        return None
    if precision == "bf16" and device.type == "cpu":
        if not cpu_supports_bf16():
            raise GrutrainError("train.precision=bf16 needs a CPU with native bfloat16 (AVX512-BF16 or AMX); "
                                "this one has none: use train.precision=fp32")
        return torch.bfloat16
    if device.type != "cuda":
        raise GrutrainError(f"train.precision={precision} needs a CUDA device; use train.precision=fp32 on {device.type}")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def cpu_supports_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX tiles).

    Without it oneDNN emulates bfloat16 products on AVX-512 or falls back to plain loops, slower
    than float32, so bf16 is refused. torch.cpu's checks are private: missing ones mean "no"."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class Distributed:
    """This process's place in a torchrun job; a single process is rank 0 of 1.

    torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; then the process group is started with NCCL
    (one GPU per process, chosen by LOCAL_RANK) or gloo on CPU, with a timeout so a rank that
    died never leaves the others waiting for ever.
    """

    def __init__(self):
        import os

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device, timeout_s: float) -> torch.device:
        """Join the process group; returns this rank's device."""
        if not self.enabled:
            return device
        import datetime

        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                    **({"device_id": device} if backend == "nccl" else {}))
        return device

    def stop(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sum of each value over all ranks (the values themselves in a single process)."""
        if not self.enabled:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_batch(self, tensor: torch.Tensor | None, dim: int) -> torch.Tensor | None:
        """Concatenate every rank's part of a batch along `dim` (rank order)."""
        if not self.enabled or tensor is None:
            return tensor
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)

    def gather_objects(self, obj) -> list:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()
