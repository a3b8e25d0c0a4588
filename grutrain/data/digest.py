"""What a run trained on, recorded in its checkpoint so that `--resume` can prove the data is the same.

A task puts `data_record(files, splits)` in its task_state under DATA_KEY: each data file's size and
sha256 and the size of each split (examples, windows or characters). On resume the task compares the
record with the data it reads now (`check_same_data`): a difference is refused in one line that says
what changed, unless train.allow_data_change is set, which continues on the new data with a note.
Checkpoints written before the record existed have none and resume as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from grutrain.errors import GrutrainError
from grutrain.files.inputs import format_bytes, open_input

DATA_KEY = "data_digest"
_BLOCK = 1 << 20


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open_input(Path(path), "data file", expansion=0) as f:
        try:
            while chunk := f.read(_BLOCK):
                digest.update(chunk)
        except OSError as exc:
            raise GrutrainError(f"cannot read data file {str(path)!r}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def file_digest(path: str | Path, sha256: str | None = None) -> dict:
    """A data file's path, size and sha256 (`sha256` when the caller has already hashed it)."""
    path = Path(path)
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256 or sha256_of(path)}


def data_record(files: list[dict], splits: dict[str, int]) -> dict:
    return {"files": files, "splits": {name: int(n) for name, n in splits.items()}}


def differences(saved: dict, now: dict) -> list[str]:
    """What differs between two data records, in words; empty when they agree."""
    found = []
    for before, after in zip(saved.get("files", []), now.get("files", [])):
        if before.get("sha256") != after.get("sha256"):
            size = (f"{format_bytes(before.get('size', 0))} -> {format_bytes(after['size'])}"
                    if before.get("size") != after["size"] else "same size")
            found.append(f"{after['path']!r} has other content ({size})")
    if len(saved.get("files", [])) != len(now.get("files", [])):
        found.append(f"{len(saved.get('files', []))} data files then, {len(now.get('files', []))} now")
    before, after = saved.get("splits", {}), now.get("splits", {})
    sizes = [f"{name} {before.get(name)} -> {after.get(name)}" for name in dict.fromkeys([*before, *after])
             if before.get(name) != after.get(name)]
    if sizes:
        found.append("split sizes " + ", ".join(sizes))
    return found


def check_same_data(saved_state: dict | None, now: dict, allow_change: bool) -> None:
    """Refuse to resume on data other than the checkpoint's (saved_state: its task_state), unless allowed."""
    saved = (saved_state or {}).get(DATA_KEY)
    if not isinstance(saved, dict):  # written before the record existed
        return
    changed = differences(saved, now)
    if not changed:
        return
    what = "; ".join(changed)
    if not allow_change:
        raise GrutrainError(f"cannot resume: the data changed since the checkpoint ({what}); to continue on the "
                            "new data add train.allow_data_change=true, or train a new run")
    from grutrain.progress import note

    note(f"resuming on changed data ({what}), as train.allow_data_change=true says", warning=True)
