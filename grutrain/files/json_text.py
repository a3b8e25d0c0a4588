"""JSON for stdout and output files: strict JSON, never NaN or Infinity (which JSON does not have)."""

from __future__ import annotations

import json
import math
from typing import Any

from grutrain.errors import GrutrainError


def non_finite(value: Any, path: str = "") -> str | None:
    """The dotted key of the first NaN or infinite float in `value`, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def require_finite(value: Any, what: str) -> Any:
    """`value` unchanged, or a GrutrainError naming its first non-finite number."""
    found = non_finite(value)
    if found:
        raise GrutrainError(f"{what}: {found} is not a finite number; the checkpoint's weights or the data are "
                            "out of range (retrain with a lower optim.lr, or check the data)")
    return value


def dumps(value: Any, **kwargs) -> str:
    """json.dumps that refuses NaN and Infinity instead of writing them."""
    return json.dumps(value, allow_nan=False, **kwargs)
