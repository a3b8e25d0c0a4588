"""`grutrain runs`: the runs of a sweep side by side, from their run directories.

Plain functions: `collect_runs` finds and reads runs and returns data (or raises GrutrainError);
`runs_to_json`, `runs_to_csv` and `format_runs_table` turn that data into text or a rich table;
`compare_runs` does both, for the command. Nothing here prints.

A run's status comes from its summary.json (`running`, `finished`, `failed`, `interrupted`), checked
against the run directory's flock: a summary that still says `running` while no process holds the
lock belongs to a process that died without a word (SIGKILL, power loss): `crashed`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from grutrain.config.schema import flatten_config, format_config_value, parse_yaml
from grutrain.errors import GrutrainError
from grutrain.files.inputs import read_input
from grutrain.trainer.metrics import METRICS_FILE
from grutrain.trainer.rundir import LAST_CHECKPOINT, LOCK_FILE, RUNS_ROOT

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
STATUSES = ("running", "finished", "failed", "interrupted", "crashed", "unknown")
# run.dir differs between any two runs and is the `run` column already.
NOT_COMPARED = {"run.dir"}
# The columns every run has, besides its config keys and its final metrics.
BASE_COLUMNS = ("run", "status", "step", "total_steps", "wall_time_s", "best/val/loss", "best/step")


def compare_runs(dirs: Sequence[str | Path] = (), sort: str | None = None, fmt: str = "table"):
    """The runs under `dirs` (see `collect_runs`) as `fmt`: "json" or "csv" text, or the rich "table"."""
    table = collect_runs(dirs, sort=sort)
    if fmt == "json":
        return runs_to_json(table)
    if fmt == "csv":
        return runs_to_csv(table)
    return format_runs_table(table, sort=sort)


def collect_runs(dirs: Sequence[str | Path] = (), sort: str | None = None) -> dict:
    """Every run under `dirs` (run directories or directories of runs; default `runs`).

    Returns {"varied": [config keys whose values differ between the runs], "runs": [one dict per run]},
    sorted by `sort` (a column of `runs_to_csv`, e.g. `val/perplexity` or `optim.lr`; a leading `-`
    sorts descending; runs without that value come last), else by directory name.
    """
    paths = find_run_dirs(dirs or [RUNS_ROOT])
    runs = [read_run(path) for path in paths]
    varied = varied_keys(run["config"] for run in runs)
    if sort:
        runs = sort_runs(runs, sort, varied)
    return {"varied": varied, "runs": runs}


def find_run_dirs(dirs: Iterable[str | Path]) -> list[Path]:
    """Run directories: each of `dirs` that is one, else the run directories found below it."""
    found: list[Path] = []
    seen: set[Path] = set()
    for given in dirs:
        root = Path(given)
        if not root.is_dir():
            what = "is a file" if root.exists() else "does not exist"
            hint = " (train with `grutrain fit CONFIG` first)" if root == RUNS_ROOT and not root.exists() else ""
            raise GrutrainError(f"{str(root)!r} {what}{hint}; give a run directory or a directory of runs")
        for path in _walk_runs(root):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found


MAX_DEPTH = 4  # runs/<sweep>/<group>/<run>: deep enough, and never a whole filesystem


def _walk_runs(root: Path, depth: int = 0) -> list[Path]:
    """Run directories at or below `root`: symbolic links below it are not followed (no loops),
    unreadable directories are skipped, and the walk stops MAX_DEPTH levels down."""
    if is_run_dir(root):
        return [root]
    if depth >= MAX_DEPTH:
        return []
    try:
        children = [c for c in root.iterdir() if c.is_dir() and not c.is_symlink() and not c.name.startswith(".")]
    except OSError:
        return []
    found = []
    for child in sorted(children, key=lambda c: natural_key(c.name)):
        found.extend(_walk_runs(child, depth + 1))
    return found


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in (SUMMARY_FILE, CONFIG_FILE, LOCK_FILE))


_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def natural_key(text: str) -> list:
    """Numbers by value: charlm-2 before charlm-10, lr0.003 before lr0.01, lr1e-05 before lr0.001."""
    return [(0, float(part), "") if i % 2 else (1, 0.0, part) for i, part in enumerate(_NUMBER.split(text))]


def read_run(path: Path) -> dict:
    """One run's record: status, steps, wall time, best and final metrics, its flattened config."""
    summary, problem = _read_json(path / SUMMARY_FILE)
    config = flatten_config(_read_yaml(path / CONFIG_FILE))
    best = summary.get("best") if isinstance(summary.get("best"), dict) else {}
    run: dict[str, Any] = {
        "run": str(path),
        "status": summary.get("status", "unknown") if isinstance(summary.get("status"), str) else "unknown",
        "step": _number(summary.get("step")),
        "total_steps": _number(summary.get("total_steps")),
        "wall_time_s": _number(summary.get("wall_time_s")),
        "best": {"val/loss": _number(best.get("val/loss")), "step": _number(best.get("step"))},
        "final": {str(k): _number(v) for k, v in summary["final"].items()} if isinstance(summary.get("final"), dict) else {},
        "error": str(summary.get("error"))[:300] if summary.get("error") else problem,
        "config": config,
    }
    if run["status"] not in STATUSES:
        run["status"] = "unknown"
    if run["status"] in ("running", "unknown"):
        held = lock_is_held(path)
        if held is None:  # no flock here: fall back to the PID the summary names
            held = run["status"] == "running" and _pid_alive(summary.get("pid"))
        if held:
            run["status"], run["error"] = "running", None
        elif run["status"] == "running":
            run["status"] = "crashed"
            again = ("continue it with `grutrain fit CONFIG --resume`" if (path / LAST_CHECKPOINT).is_file()
                     else "it wrote no checkpoint; start it again with `grutrain fit CONFIG --overwrite`")
            run["error"] = f"the process stopped without writing a summary (killed?); {again} and run.dir={path}"
        _progress_from_metrics(path, run, live=bool(held))
    return run


def lock_is_held(run_dir: Path) -> bool | None:
    """Whether a process holds the run directory's flock (None: this platform has no flock).

    Probing takes a shared lock for an instant and drops it at once; it never creates the file.
    """
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except OSError:
        return False
    return True


def _progress_from_metrics(path: Path, run: dict, live: bool) -> None:
    """A run without a final summary: its step, best validation loss and time so far, from metrics.jsonl."""
    metrics = path / METRICS_FILE
    try:
        lines = read_input(metrics, METRICS_FILE).decode("utf-8", errors="replace").splitlines()
    except GrutrainError:
        return
    step, best = run["step"] or 0, run["best"]
    for line in lines:
        try:
            record = json.loads(line)
            at, tag, value = int(record["step"]), record["tag"], record["value"]
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash mid-write
        step = max(step, at)
        if tag == "val/loss" and isinstance(value, (int, float)) and (best["val/loss"] is None or value < best["val/loss"]):
            best["val/loss"], best["step"] = float(value), at
    run["step"] = step
    try:
        started = (path / SUMMARY_FILE).stat().st_mtime  # the "running" summary is written as training starts
        last = time.time() if live else metrics.stat().st_mtime
        run["wall_time_s"] = round(max(last - started, 0.0), 2)
    except OSError:
        pass


def _number(value: Any) -> Any:
    """A number from a summary as it is; anything else (a hand-edited or hostile file) as None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _read_json(path: Path) -> tuple[dict, str | None]:
    if not path.exists():
        return {}, f"no {path.name}"
    try:  # a regular file of sane size (a FIFO would hang), valid JSON of sane depth
        data = json.loads(read_input(path, path.name).decode("utf-8"))
    except GrutrainError as exc:
        return {}, str(exc)
    except (ValueError, RecursionError) as exc:  # also a summary caught mid-write
        return {}, f"unreadable {path.name}: {str(exc)[:200]}"
    return (data, None) if isinstance(data, dict) else ({}, f"unreadable {path.name}: not an object")


def _read_yaml(path: Path) -> dict:
    try:
        data = parse_yaml(read_input(path, path.name).decode("utf-8"), str(path))
    except (GrutrainError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def varied_keys(configs: Iterable[dict]) -> list[str]:
    """Config keys whose values are not the same in every run (a key only some runs have counts).

    Runs without a readable config.yaml take no part, or every key would look varied.
    """
    configs = [c for c in configs if c]
    keys: dict[str, None] = {}
    for config in configs:
        keys.update(dict.fromkeys(config))
    varied = []
    for key in keys:
        values = {json.dumps(c[key], sort_keys=True, default=str) if key in c else "<missing>" for c in configs}
        if len(values) > 1 and key not in NOT_COMPARED:
            varied.append(key)
    return varied


def columns_of(table: dict) -> list[str]:
    """The flat columns of `runs_to_csv`, in order."""
    metrics: dict[str, None] = {}
    for run in table["runs"]:
        metrics.update(dict.fromkeys(run["final"]))
    return [*BASE_COLUMNS[:5], *table["varied"], *BASE_COLUMNS[5:], *metrics, "error"]


def value_of(run: dict, column: str) -> Any:
    """A run's value in one flat column: a base column, `best/...`, a final metric or a config key."""
    if column.startswith("best/"):
        return run["best"].get(column.removeprefix("best/"))
    if column in run["final"]:
        return run["final"][column]
    if column in run["config"]:
        return run["config"][column]
    return run.get(column) if column in BASE_COLUMNS or column == "error" else None


def sort_runs(runs: list[dict], sort: str, varied: Sequence[str] = ()) -> list[dict]:
    descending = sort.startswith("-")
    column = sort.lstrip("-")
    if runs and not any(value_of(run, column) is not None for run in runs):
        known = columns_of({"runs": runs, "varied": list(varied)})
        raise GrutrainError(f"--sort {sort!r}: no run has a value for {column!r}; "
                            f"sort by one of: {', '.join(c for c in known if c != 'error')} or any config key")

    def present(run):
        value = value_of(run, column)
        return value is not None and not (isinstance(value, float) and math.isnan(value))

    have = [run for run in runs if present(run)]
    missing = [run for run in runs if not present(run)]
    numeric = all(isinstance(value_of(r, column), (int, float)) for r in have)
    key = (lambda r: value_of(r, column)) if numeric else (lambda r: natural_key(str(value_of(r, column))))
    return sorted(have, key=key, reverse=descending) + missing


# ---- output formats ---------------------------------------------------------------------------------------

def _json_safe(value: Any) -> Any:
    # JSON has no NaN/inf: written as strings, as metrics.jsonl does.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def runs_to_json(table: dict) -> str:
    """One JSON object: {"varied": [...], "runs": [{"run", "status", ..., "best", "final", "config"}]}."""
    return json.dumps(_json_safe(table)) + "\n"


def runs_to_csv(table: dict) -> str:
    """One header line, one line per run: the base columns, the varied config keys, best and final metrics."""
    columns = columns_of(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for run in table["runs"]:
        row = []
        for column in columns:
            value = value_of(run, column)
            row.append("" if value is None else format_config_value(value) if column in table["varied"] else value)
        writer.writerow(row)
    return buffer.getvalue()


_STYLE = {"finished": "green", "running": "cyan", "interrupted": "yellow", "failed": "red", "crashed": "red",
          "unknown": "dim"}
# Final metrics the table shows (all of them are in --json and --csv), with short headers.
_TABLE_METRICS = {"val/perplexity": "val ppl", "test/perplexity": "test ppl",
                  "val/accuracy": "val acc", "test/accuracy": "test acc", "val/mae": "val mae", "test/mae": "test mae"}


def format_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    # Losses as 3.017, perplexities as 20.42: four or five significant digits either way.
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def format_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_runs_table(table: dict, sort: str | None = None):
    """A rich renderable: the table, then one line per run that failed, crashed or was interrupted."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    runs = table["runs"]
    if not runs:
        return Text("no runs found")
    metrics = [m for m in _TABLE_METRICS if any(m in run["final"] for run in runs)]
    extra = sort.lstrip("-") if sort else None
    if extra and (extra in metrics or extra in table["varied"] or extra in ("step", "wall_time_s", "best/val/loss")):
        extra = None
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    grid.add_column("run", overflow="fold")
    grid.add_column("status")
    for key in table["varied"]:
        grid.add_column(key, justify="right")
    grid.add_column("steps", justify="right")
    grid.add_column("best val loss", justify="right")
    for metric in metrics:
        grid.add_column(_TABLE_METRICS[metric], justify="right")
    if extra:
        grid.add_column(extra, justify="right")
    grid.add_column("time", justify="right")
    notes = []
    for run in runs:
        status = run["status"]
        steps = format_number(run["step"])
        if run["total_steps"] is not None and run["step"] != run["total_steps"]:
            steps += f"/{run['total_steps']}"
        best = run["best"]
        best_text = format_number(best["val/loss"]) + (f" @{best['step']}" if best["val/loss"] is not None else "")
        cells = [run["run"], Text(status, style=_STYLE.get(status, ""))]
        cells += [format_config_value(run["config"].get(key)) if key in run["config"] else "-" for key in table["varied"]]
        cells += [steps, best_text]
        cells += [format_number(run["final"].get(metric)) for metric in metrics]
        if extra:
            value = value_of(run, extra)
            cells.append(format_number(value) if not isinstance(value, (list, tuple)) else format_config_value(value))
        cells.append(format_duration(run["wall_time_s"]))
        grid.add_row(*cells)
        if status in ("failed", "crashed", "interrupted", "unknown") and run["error"]:
            notes.append(Text.assemble((f"{run['run']}: {status}: ", _STYLE.get(status, "")), str(run["error"])))
    return Group(grid, *notes) if notes else grid
