"""`grutrain lr-find`: the learning-rate range test (Smith 2015, "Cyclical learning rates for
training neural networks", Sec. 3.3; fastai's `lr_find`).

A fresh model, as `grutrain fit` would start it, trains for a few hundred steps while the
learning rate grows exponentially from `start` to `end`. The loss is smoothed with an
exponential moving average, bias-corrected (as fastai does, so the first points are not pulled
towards zero), and the test stops early once the smoothed loss exceeds 4x the best seen: the
learning rate is then too high to be of use. The suggested learning rate is where the smoothed
loss falls fastest against log(lr), looked for between the first points and the minimum.

Nothing here touches a run directory: the model is thrown away and the results go to
`lr-find/<run.name>-N` (a fresh directory each time) or to the directory given.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from grutrain.errors import GrutrainError, Interrupted, escaped
from grutrain.files.atomic import PendingFile, commit_together
from grutrain.files.outputs import check_output, check_output_dir
from grutrain.trainer.rundir import CHECKPOINTS, CONFIG_FILE, RUNS_ROOT, SUMMARY_FILE, claim_numbered_dir
from grutrain.trainer.interrupts import Interrupts, signal_of
from grutrain.trainer.setup import build_training, start_device
from grutrain.trainer.step import next_batch

OUTPUT_ROOT = Path("lr-find")
CSV_NAME, PNG_NAME, JSON_NAME = "lr_find.csv", "lr_find.png", "lr_find.json"
SMOOTHING = 0.98  # fastai's beta: the average over roughly the last 50 steps
DIVERGE_FACTOR = 4.0  # stop when the smoothed loss exceeds this many times the best


@dataclass
class LRFindResult:
    lrs: list[float]  # the learning rate of each step taken
    losses: list[float]  # each step's training loss, as computed before that step's update
    smoothed: list[float]  # the bias-corrected exponential moving average of the losses
    suggestion: float | None  # the lr at the steepest descent of the smoothed loss
    suggestion_index: int | None
    slope: float | None  # d(smoothed loss) / d(ln lr) there (negative)
    min_loss: float  # the lowest smoothed loss, and the lr where it was reached
    min_loss_lr: float
    stop_reason: str
    start: float
    end: float
    steps: int
    smoothing: float = SMOOTHING
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def run_range_test(cfg, start: float = 1e-7, end: float = 10.0, steps: int = 200, *, smoothing: float = SMOOTHING,
                   output_dir: str | Path | None = None, device: str | None = None,
                   progress=None) -> tuple[LRFindResult, dict[str, Path]]:
    """`grutrain lr-find`: the range test, its results written to `output_dir` (default: a fresh
    lr-find/<run.name>-N); returns the result and the files written (see write_results)."""
    check_sweep(start, end, steps, smoothing)  # before a directory is made for the results
    # SIGINT/SIGTERM raise Interrupted (trainer.interrupts), so the way out below runs for a signal too.
    with Interrupts() as interrupts:
        had_root, had_requested = OUTPUT_ROOT.exists(), output_dir is not None and Path(output_dir).exists()
        directory = results_dir(cfg, output_dir)
        made = [] if had_requested else [directory] + ([OUTPUT_ROOT] if output_dir is None and not had_root else [])
        written = None
        try:
            result = range_test(cfg, start, end, steps, smoothing=smoothing, device=device, progress=progress)
            with interrupts.deferred():  # a signal now is noted: the results are written whole, then it stops
                written = write_results(result, directory, configured_lr=cfg.optim.lr)
            return result, written
        except BaseException as exc:
            if written is None:  # leave no empty lr-find/<name>-N (nor lr-find/, nor an --output-dir) made for it
                for path in made:
                    with contextlib.suppress(OSError):
                        path.rmdir()
            signum = signal_of(exc) if isinstance(exc, (Interrupted, KeyboardInterrupt)) else None
            if signum is None and interrupts.raised is not None and isinstance(exc, Exception):
                signum = interrupts.raised  # the signal's exception came back as another error (trainer/fit.py)
            if signum is not None:
                name = signal.Signals(signum).name
                left = (f"its results are written to {escaped(directory)}" if written else
                        "it wrote nothing (no results, no directory); start it again")
                raise Interrupted(signum, f"lr-find interrupted by {name}; {left}") from None
            raise


def lr_schedule(start: float, end: float, steps: int) -> list[float]:
    """`steps` learning rates growing exponentially from `start` to `end` (both included)."""
    if steps == 1:
        return [start]
    ratio = end / start
    return [start * ratio ** (i / (steps - 1)) for i in range(steps)]


def smooth_losses(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Exponential moving average with fastai's bias correction: avg_i / (1 - beta^(i+1))."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], smoothed: list[float], skip_start: int | None = None) -> tuple[int | None, float | None]:
    """(index, slope) of the steepest descent of the smoothed loss against ln(lr).

    Looked for after the first `skip_start` points (few losses, noisy average; default a tenth of
    the curve, at most 10, as fastai's plot skips) and up to the minimum (past it the loss rises).
    None when there is no descent to find.
    """
    n = len(smoothed)
    if n < 3:
        return None, None
    if skip_start is None:
        skip_start = min(10, n // 10)
    lo = skip_start
    hi = int(np.argmin(smoothed)) + 1  # up to and including the minimum
    if hi - lo < 2:
        return None, None
    x, y = np.log(np.asarray(lrs[lo:hi])), np.asarray(smoothed[lo:hi])
    gradient = np.gradient(y, x)
    i = int(np.argmin(gradient))
    if not gradient[i] < 0:
        return None, None
    return lo + i, float(gradient[i])


MAX_STEPS = 100_000


def check_sweep(start: float, end: float, steps: int, smoothing: float = SMOOTHING) -> None:
    if not 0 <= smoothing < 1:
        raise GrutrainError(f"--smoothing {smoothing:g}: the moving average's beta must be in [0, 1), e.g. 0.98")
    if not (0 < start < end and math.isfinite(end)):
        raise GrutrainError(f"--start {start:g} and --end {end:g}: need 0 < start < end, e.g. --start 1e-7 --end 10")
    if not 10 <= steps <= MAX_STEPS:
        raise GrutrainError(f"--steps {steps}: the range test needs 10 to {MAX_STEPS} steps (a few hundred is usual)")


def range_test(cfg, start: float = 1e-7, end: float = 10.0, steps: int = 200, *, smoothing: float = SMOOTHING,
               device: str | None = None, progress=None) -> LRFindResult:
    """Train a throwaway model for `steps` steps with the lr growing from `start` to `end`.

    The model, data and optimizer are the config's, built by fit's own setup (trainer.setup); the
    optimizer's schedule and warm-up are replaced by the sweep. `smoothing` is the moving average's
    beta: 0.98 (fastai's) averages over about the last 50 steps, so on a sweep of a few hundred
    steps the smoothed curve trails the raw one; a lower beta follows it more closely.
    `progress(step, lr, loss)` is called after each step when given.
    """
    check_sweep(start, end, steps, smoothing)
    training = build_training(cfg, *start_device(cfg, device=device))
    training.model.train()
    lrs, losses, smoothed = [], [], []
    hidden, best, avg = None, math.inf, 0.0
    stop_reason = f"reached --end {end:g} after {steps} steps"
    for i, lr in enumerate(lr_schedule(start, end, steps)):
        batch, carried = next_batch(training.task, hidden, training.device)
        result = training.step(batch, carried, lr)
        if not math.isfinite(result.loss):
            stop_reason = f"the loss became non-finite at lr {lr:.3g} (step {i + 1})"
            break
        hidden, loss = result.hidden, result.loss
        lrs.append(lr)
        losses.append(loss)
        avg = smoothing * avg + (1 - smoothing) * loss
        smoothed.append(avg / (1 - smoothing ** (i + 1)))
        best = min(best, smoothed[-1])
        if progress is not None:
            progress(i + 1, lr, loss)
        if smoothed[-1] > DIVERGE_FACTOR * best:
            stop_reason = (f"stopped at lr {lr:.3g} (step {i + 1}): the smoothed loss {smoothed[-1]:.4g} "
                           f"exceeded {DIVERGE_FACTOR:g}x the best {best:.4g}")
            break
    if len(losses) < 3:
        raise GrutrainError(f"the range test {stop_reason} with only {len(losses)} finite losses; "
                            "lower --start (or --end)")
    index, slope = suggest(lrs, smoothed)
    low = int(np.argmin(smoothed))
    notes = []
    if index is None:
        notes.append("the smoothed loss never fell: no suggestion; lower --start or check the data")
    elif index == low:
        notes.append("the steepest descent is at the minimum itself; lower --start or raise --steps for a finer curve")
    if low == len(smoothed) - 1 and stop_reason.startswith("reached"):
        notes.append(f"the loss was still falling at --end {end:g}; raise --end")
    return LRFindResult(
        lrs=lrs, losses=losses, smoothed=smoothed,
        suggestion=lrs[index] if index is not None else None, suggestion_index=index, slope=slope,
        min_loss=smoothed[low], min_loss_lr=lrs[low], stop_reason=stop_reason,
        start=start, end=end, steps=steps, smoothing=smoothing, notes=notes)


def explain(result: LRFindResult, configured_lr: float | None = None) -> list[str]:
    """The suggestion and the reasoning behind it, a line each."""
    lines = []
    if result.suggestion is not None:
        lines.append(f"suggested lr: {result.suggestion:.3g}")
        lines.append(f"  the smoothed loss falls fastest there: {result.slope:.3g} per unit of ln(lr) "
                     f"(step {result.suggestion_index + 1} of {len(result.lrs)})")
    else:
        lines.append("no suggestion: the smoothed loss never fell along the sweep")
    lines.append(f"  minimum smoothed loss {result.min_loss:.4g} at lr {result.min_loss_lr:.3g} "
                 f"(a tenth of that, {result.min_loss_lr / 10:.3g}, is fastai's other rule of thumb)")
    lines.append(f"  sweep: {result.start:g} to {result.end:g} over {result.steps} steps, smoothing {result.smoothing:g}; "
                 f"{result.stop_reason}")
    if configured_lr is not None:
        lines.append(f"  the config's optim.lr is {configured_lr:g}")
    lines += [f"  note: {note}" for note in result.notes]
    return lines


# --------------------------------------------------------------------------- where the results go


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _looks_like_run(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and ((path / CHECKPOINTS).is_dir() or (path / SUMMARY_FILE).is_file())


def results_dir(cfg, requested: str | Path | None) -> Path:
    """The directory for the results, created: `requested`, or a fresh `lr-find/<run.name>-N`.

    Never inside runs/ or in (or under) a run directory, so that a range test cannot change a run.
    """
    if requested is None:
        return claim_numbered_dir(cfg.run.name, OUTPUT_ROOT)
    path = Path(requested)
    run_dirs = [RUNS_ROOT] + ([Path(cfg.run.dir)] if cfg.run.dir else [])
    hit = next((p for p in [path, *path.resolve().parents] if _looks_like_run(p)), None)
    if any(_inside(path, d) for d in run_dirs) or hit is not None:
        where = hit if hit is not None else next(d for d in run_dirs if _inside(path, d))
        raise GrutrainError(f"--output-dir {str(path)!r} is inside {str(where)!r}, where runs live; lr-find never "
                            "writes into runs: give another directory (default: lr-find/<run.name>-N)")
    if path.exists() and not path.is_dir():
        raise GrutrainError(f"--output-dir {str(path)!r} is a file; give a directory")
    check_output_dir(path, "--output-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GrutrainError(f"cannot create --output-dir {str(path)!r}: {exc.strerror or exc}") from None
    for name in (CSV_NAME, JSON_NAME, PNG_NAME):  # each a new file or a regular one, before the sweep
        check_output(path / name, "--output-dir")
    return path


def csv_text(result: LRFindResult) -> str:
    """step, lr, loss, smoothed_loss: one row per step taken."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["step", "lr", "loss", "smoothed_loss"])
    for i, (lr, loss, avg) in enumerate(zip(result.lrs, result.losses, result.smoothed)):
        writer.writerow([i + 1, repr(lr), repr(loss), repr(avg)])
    return text.getvalue()


def read_csv(path: Path) -> dict[str, list[float]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in ("step", "lr", "loss", "smoothed_loss")}


def write_results(result: LRFindResult, directory: Path, configured_lr: float | None = None) -> dict[str, Path]:
    """lr_find.csv, lr_find.json (the suggestion and the whole curve) and, with matplotlib, lr_find.png.

    All of them are written to temporaries first and renamed together (files.atomic.commit_together):
    a full disk or a signal leaves the earlier results as they were, never a new JSON beside an old PNG.
    Returns the files written; a missing matplotlib leaves out the PNG (plots.PLOT_EXTRA_MESSAGE says why).
    """
    from grutrain import plots

    summary = {"suggestion": result.suggestion, "reasoning": explain(result, configured_lr), **result.to_dict()}
    contents = {"csv": (CSV_NAME, csv_text(result), "lr-find CSV"),
                "json": (JSON_NAME, json.dumps(summary, indent=2) + "\n", "lr-find JSON")}
    if plots.have_matplotlib():
        figure = plots.lr_find_figure(result.lrs, result.losses, result.smoothed, result.suggestion,
                                      result.min_loss_lr)
        contents["png"] = (PNG_NAME, plots.figure_bytes(figure, directory / PNG_NAME), "lr-find figure")
    with contextlib.ExitStack() as stack:
        pending = {key: stack.enter_context(PendingFile(directory / name, what))
                   for key, (name, _, what) in contents.items()}
        for key, (_, content, _) in contents.items():
            pending[key].write(content)
        commit_together(*pending.values())
    return {key: file.path for key, file in pending.items()}
