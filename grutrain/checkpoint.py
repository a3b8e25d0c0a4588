"""Checkpoints: one self-describing file, written atomically, loaded without running code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:
    format_version, grutrain_version, config (resolved, as a dict), task, vocab (list of tokens),
    model, optimizer, step, epoch, monitor (best metric, early stopping), sampler (data position), hidden (carried
    state of sequential sampling or None), rng (python, torch, cuda).
It rebuilds the model without the YAML, and `torch.load(weights_only=True)` reads it, so an
untrusted file cannot run code when it is loaded.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from grutrain import __version__
from grutrain.errors import GrutrainError
from grutrain.inputs import CHECKPOINT_EXPANSION, open_input

FORMAT_VERSION = 1


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "grutrain_version": __version__, **payload}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp makes it private; give it normal permissions
        os.replace(tmp_name, path)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise GrutrainError(f"could not write checkpoint {str(path)!r}: {exc.strerror or exc}; "
                                "the previous checkpoint is untouched") from None
        raise
    _fsync_directory(path.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; any problem becomes a GrutrainError naming the file."""
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise GrutrainError(f"checkpoint {name!r} is a directory; give a .pt file such as runs/charlm-1/checkpoints/best.pt")
    if not path.exists():
        raise GrutrainError(f"checkpoint {name!r} not found; give a .pt file such as runs/charlm-1/checkpoints/best.pt")
    # A regular file (not a FIFO or a device) that fits in memory.
    with open_input(path, "checkpoint", expansion=CHECKPOINT_EXPANSION) as file:
        if os.fstat(file.fileno()).st_size == 0:
            raise GrutrainError(f"checkpoint {name!r} is empty (0 bytes); it was not written completely")
        payload = _torch_load(file, name, map_location)
    return _checked(payload, name)


def _torch_load(file, name: str, map_location) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            payload = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses pickles that would import or call anything.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise GrutrainError(f"checkpoint {name!r} was refused: it is not a plain grutrain checkpoint ({first[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise GrutrainError(f"checkpoint {name!r} is not a readable checkpoint (truncated or not a torch file): "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}") from None
    except Exception as exc:  # any other decoder failure on hostile bytes
        raise GrutrainError(f"checkpoint {name!r} is not a readable checkpoint: {type(exc).__name__}") from None
    return payload


def _checked(payload: Any, name: str) -> dict[str, Any]:
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise GrutrainError(f"checkpoint {name!r} is not a grutrain checkpoint (no format_version)")
    version = payload["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise GrutrainError(f"checkpoint {name!r} is damaged: format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise GrutrainError(f"checkpoint {name!r} has format version {version}, newer than this grutrain "
                            f"understands ({FORMAT_VERSION}); upgrade grutrain")
    expected = {"config": dict, "model": dict, "step": int}
    for key, kind in expected.items():
        if key not in payload:
            raise GrutrainError(f"checkpoint {name!r} is incomplete: it has no {key!r}")
        if not isinstance(payload[key], kind):
            raise GrutrainError(f"checkpoint {name!r} is damaged: {key!r} is a {type(payload[key]).__name__}, "
                                f"not a {kind.__name__}")
    return payload
