"""Seeds, devices, threads and the random-number state that checkpoints carry."""

from __future__ import annotations

import random

import torch

from grutrain.errors import GrutrainError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise GrutrainError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
    if name == "mps" and not mps:
        raise GrutrainError("train.device=mps but MPS is not available; use train.device=cpu or auto")
    return torch.device(name)


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
    if device.type != "cuda":
        raise GrutrainError(f"train.precision={precision} needs a CUDA device; use train.precision=fp32 on {device.type}")
    return torch.bfloat16 if precision == "bf16" else torch.float16
