"""`grutrain cache`: list the caches tasks keep between runs (lm: token caches), with their sizes and
sources; `grutrain cache rm ID ... | --all` removes them. Every task with the Caches ability is asked."""

from __future__ import annotations

from grutrain.errors import GrutrainError
from grutrain.tasks import TASKS, task_class
from grutrain.tasks.protocols import Caches, has_ability


def _caching_tasks():
    return [task_class(name) for name in TASKS if has_ability(task_class(name), Caches)]


def list_caches(cache_dir: str | None = None) -> list[dict]:
    return [{"task": task.name, **entry} for task in _caching_tasks() for entry in task.list_caches(cache_dir)]


def remove_caches(ids: list[str], cache_dir: str | None = None, everything: bool = False) -> list[dict]:
    if not ids and not everything:
        raise GrutrainError("say which caches to remove: grutrain cache rm ID ... (ids from `grutrain cache`) or --all")
    if ids and everything:
        raise GrutrainError("give cache ids or --all, not both")
    removed = []
    for task in _caching_tasks():
        removed += task.remove_caches(ids, cache_dir, everything)
    return removed
