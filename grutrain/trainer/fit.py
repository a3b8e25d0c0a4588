"""One training run, read top to bottom.

fit -> claim the run directory (rundir.RunDirectory) -> setup (setup.py: task, model, optimizer,
restored state) -> train: loop (loop.py: steps, logs, evaluations, checkpoints) -> finish (final
metrics, summary.json).

One interruption path (interrupts.Interrupts, for the whole fit): a signal inside the loop ends it
with a checkpoint of the step (TrainingInterrupted); anywhere else it raises at once, and then
either this command has written a checkpoint (the run is kept, summary.json says interrupted) or
it has not, and the run directory is put back as it was before the command (RunDirectory). Any
other failure before that first checkpoint (a full disk at the first save) is undone the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

from grutrain.config.schema import Config, config_to_dict, config_to_yaml
from grutrain.errors import GrutrainError, Interrupted, TrainingInterrupted
from grutrain.progress import TrainingProgress
from grutrain.runtime import Distributed
from grutrain.trainer.hparams import FINAL_PREFIX
from grutrain.trainer.interrupts import Interrupts, signal_of
from grutrain.trainer.loop import loop
from grutrain.trainer.metrics import MetricsLogger
from grutrain.trainer.resume import resumable_checkpoint
from grutrain.trainer.rundir import CONFIG_FILE, SUMMARY_FILE, RunDirectory, write_run_file
from grutrain.trainer.setup import Run, build_training, start_device, start_run


def fit(config: Config, *, resume: bool = False, overwrite: bool = False, progress: str = "auto") -> dict:
    """Train as the config says; return the summary that is also written to summary.json.

    Under torchrun every process calls this; rank 0 alone writes files and shows progress.
    """
    cfg = config
    dist = Distributed()
    try:
        device, amp_dtype = start_device(cfg, dist)
        with Interrupts() as interrupts:  # installed before any slow read: a signal there still cleans up
            return _fit_on_this_rank(cfg, dist, device, amp_dtype, resume, overwrite,
                                     progress if dist.is_main else "none", interrupts)
    finally:
        dist.stop()


def _fit_on_this_rank(cfg: Config, dist: Distributed, device, amp_dtype, resume: bool, overwrite: bool,
                      progress: str, interrupts: Interrupts) -> dict:
    with RunDirectory(cfg.run.dir, cfg.run.name, dist, resume=resume, overwrite=overwrite) as directory:
        try:
            # Everything that can fail on bad input happens before an earlier run's files are touched.
            saved = resumable_checkpoint(directory.path, cfg, device, dist.world_size) if resume else None
            training = build_training(cfg, device, amp_dtype, dist=dist, saved=saved)
            run = start_run(training, directory.path, dist, saved)
            directory.begin()
            return train(run, progress, interrupts, directory.commit)
        except BaseException as exc:
            interrupts.disarm()  # cleanup (summary, undo) runs to its end
            if isinstance(exc, (Interrupted, KeyboardInterrupt)):  # before this command's first checkpoint
                raise _undone_by(signal_of(exc), directory) from None
            if _came_from_a_signal(exc, interrupts) and not directory.committed:
                raise _undone_by(interrupts.raised, directory) from None
            if isinstance(exc, GrutrainError) and directory.begun and not directory.committed:
                # e.g. a full disk at the first save: undone on leaving, as for a signal
                exc.args = (f"{exc}; {directory.undone_by_failure()}",)
            raise


def _came_from_a_signal(exc: BaseException, interrupts: Interrupts) -> bool:
    """An error after the signal handler raised Interrupted is that signal's doing: Python wraps an exception
    raised in a class body's __set_name__ (torch imports modules while a model is built) in a RuntimeError,
    which a bad-input check then reads as its own."""
    return interrupts.raised is not None and isinstance(exc, Exception) and not isinstance(exc, TrainingInterrupted)


def _undone_by(signum: int, directory: RunDirectory) -> Interrupted:
    return Interrupted(signum, f"interrupted by {signal.Signals(signum).name} before this command wrote a "
                               f"checkpoint; {directory.undone_by_interrupt()}")


def train(run: Run, progress: str, interrupts: Interrupts, on_commit=lambda: None) -> dict:
    """Loop to the last step and finish; on any failure summary.json says so before the error propagates.

    `on_commit` is called once this command has a checkpoint (or finished): from then on the run is kept.
    """
    cfg, dist = run.cfg, run.dist
    metrics = bar = None
    checkpointed, phase = [], "training"

    def commit() -> None:  # the first checkpoint of this command, or its end
        if not checkpointed:
            checkpointed.append(True)
            on_commit()
            note = metrics.commit()
            if note and dist.is_main:
                bar.message(note)

    run.on_checkpoint = commit
    try:
        if dist.is_main:
            write_run_file(run.run_dir / CONFIG_FILE, config_to_yaml(cfg))
        run.baselines = run.task.baselines()
        run.started_at = time.time()
        write_summary(run, "running", pid=os.getpid())
        metrics = MetricsLogger(run.run_dir, resume_step=run.state.step if run.resumed else None,
                                enabled=dist.is_main)
        bar = TrainingProgress(run.total_steps, run.state.step, progress)
        val, stop_reason = loop(run, metrics, bar, interrupts)
        phase = "the final evaluation"
        final = finish(run, val, metrics)
        extras = run.task.final_extras(run.model, run.device) if dist.is_main else {}
        if stop_reason:
            extras["early_stopping"] = {"reason": stop_reason, "stopped_at_step": run.state.step,
                                        "best_step": run.monitor.best_step}
        metrics.flush()  # a full disk under the logs shows here, as one line, before the run is called finished
        commit()
        summary = write_summary(run, "finished", final=final, **extras)
        interrupts.disarm()  # the run is finished: a signal from here on changes nothing
        return summary
    except (Interrupted, KeyboardInterrupt) as exc:
        interrupts.disarm()  # from here on a signal is only noted: the cleanup runs to its end
        if not checkpointed:
            raise  # nothing of this command is kept: the directory is put back
        # after a checkpoint: in the final evaluation, or a second Ctrl-C in the loop
        stopped = TrainingInterrupted(signal_of(exc), run.run_dir, run.state.step, during=phase)
        note_end(run, "interrupted", error=str(stopped))
        raise stopped from None
    except TrainingInterrupted as exc:
        interrupts.disarm()
        note_end(run, "interrupted", error=str(exc))
        raise
    except Exception as exc:
        interrupts.disarm()
        if _came_from_a_signal(exc, interrupts):
            if not checkpointed:
                raise Interrupted(interrupts.raised) from None  # put back as for the signal itself
            stopped = TrainingInterrupted(interrupts.raised, run.run_dir, run.state.step, during=phase)
            note_end(run, "interrupted", error=str(stopped))
            raise stopped from None
        note_end(run, "failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()


def finish(run: Run, val: dict, metrics: MetricsLogger) -> dict:
    """The final validation and test metrics, logged as final/... scalars and HParams."""
    task, device = run.task, run.device
    if not val:  # resumed a run that had already reached its last step, or stopped early
        val = task.evaluate(run.model, "val", device, run.amp_dtype, whole=True)
    final = {f"val/{name}": value for name, value in val.items()}
    if task.has_split("test"):
        final.update({f"test/{k}": v for k, v in task.evaluate(run.model, "test", device, run.amp_dtype,
                                                                   whole=True).items()})
    # As scalars too: TensorBoard's HParams dashboard takes its metric columns from scalar tags.
    metrics.log(run.state.step, {FINAL_PREFIX + tag: value for tag, value in final.items()})
    metrics.hparams(config_to_dict(run.cfg))
    return final


def note_end(run: Run, status: str, **extra) -> None:
    """summary.json says how the run ended, if the disk still takes it: on the way out of a failure
    (a full disk, most likely) the run's own error is the one to tell, not this file's."""
    with contextlib.suppress(GrutrainError, OSError):
        write_summary(run, status, **extra)


def write_summary(run: Run, status: str, **extra) -> dict:
    state = run.state
    summary = {"status": status, "task": run.cfg.task, "processes": run.dist.world_size, "run_dir": str(run.run_dir),
               "step": state.step, "total_steps": run.total_steps, "epoch": run.task.sampler.epoch,
               "skipped_steps": state.skipped_steps,
               "best": {run.monitor.metric: run.monitor.best, "step": run.monitor.best_step},
               "baselines": run.baselines, "wall_time_s": run.wall_time(), **extra}
    if run.dist.is_main:
        write_run_file(run.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary
