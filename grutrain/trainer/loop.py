"""The training loop and what it does between steps: book the step, log, evaluate, save.

loop -> (next_batch, Training.step) -> count_step -> log_training -> evaluate_during_fit -> save_last
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from grutrain.config.schema import config_to_dict
from grutrain.errors import GrutrainError, TrainingInterrupted
from grutrain.files.checkpoint import load_checkpoint, save_checkpoint, training_payload
from grutrain.progress import TrainingProgress
from grutrain.runtime import Distributed, rng_state
from grutrain.trainer.metrics import MetricsLogger
from grutrain.trainer.optim import lr_at
from grutrain.trainer.interrupts import Interrupts
from grutrain.trainer.rundir import BEST_CHECKPOINT, LAST_CHECKPOINT, keep_periodic_copy
from grutrain.trainer.step import StepResult, next_batch

if TYPE_CHECKING:
    from grutrain.trainer.setup import Run


def loop(run: Run, metrics: MetricsLogger, bar: TrainingProgress, interrupts: Interrupts) -> tuple[dict, str | None]:
    """Train until the last step, an early stop or a signal; returns (last validation metrics, stop reason).

    A signal is noted, not raised, here (interrupts.deferred): the loop stops at the end of the step
    it arrived in, after a checkpoint of that step. The step's collective tells every process of a
    signal that arrived before it; one that arrives during a validation (the last step's included)
    is checked by one more collective after it.
    """
    cfg, state = run.cfg, run.state
    val, stop_reason = {}, None
    throughput = Throughput(state.step, run.task.items_per_batch)
    with interrupts.deferred() as stop_signals:
        run.model.train()
        while state.step < run.total_steps:
            batch, carried = next_batch(run.task, run.hidden, run.device)
            lr = lr_at(state.step, cfg.optim, run.total_steps)
            sync = StepSync(run.dist, stop_signals, run.device)
            result = run.step(batch, carried, lr, mean_over_processes=sync)
            state.step += 1
            count_step(run, result, bar, metrics)
            last = state.step == run.total_steps
            if (state.step % cfg.train.log_every == 0 or last) and state.loss_window[1]:
                log_training(run, lr, result, throughput, metrics, bar)
            stopping = bool(sync.signals_seen)
            if state.step % cfg.train.eval_every == 0 or last:
                val, stop_reason = evaluate_during_fit(run, metrics, bar)
                stopping = stopping or sync.signals_after_evaluation()
            if state.step % cfg.train.checkpoint_every == 0 or last or stopping or stop_reason:
                save_last(run)
            if stopping:
                raise TrainingInterrupted(stop_signals[0] if stop_signals else signal.SIGTERM, run.run_dir, state.step)
            if stop_reason:
                # As Keras' restore_best_weights: what the run hands over is best.pt's model.
                run.model.load_state_dict(load_checkpoint(run.run_dir / BEST_CHECKPOINT, map_location=run.device)["model"])
                return {}, stop_reason
    return val, stop_reason


class StepSync:
    """The one collective of a step: the mean loss over processes, and whether any process got a
    signal, so every rank takes the same decisions (skip, stop) at the same step."""

    def __init__(self, dist: Distributed, stop_signals: list[int], device):
        self.dist, self.stop_signals, self.device = dist, stop_signals, device
        self.signals_seen = 0.0

    def __call__(self, loss: float) -> float:
        loss_sum, self.signals_seen = self.dist.sum([loss, float(len(self.stop_signals))], self.device)
        return loss_sum / self.dist.world_size

    def signals_after_evaluation(self) -> bool:
        """Whether any process got a signal by now (every process evaluates at the same step)."""
        (seen,) = self.dist.sum([float(len(self.stop_signals))], self.device)
        return bool(seen)


def count_step(run: Run, result: StepResult, bar: TrainingProgress, metrics: MetricsLogger) -> None:
    """Book a step: its loss into the window, or a skipped step (and stop after too many in a row)."""
    state, cfg = run.state, run.cfg
    if result.applied:
        run.hidden = result.hidden if run.task.carries_state else None
        state.bad_in_a_row = 0
        state.loss_window = [state.loss_window[0] + result.loss, state.loss_window[1] + 1]
        return
    run.hidden = None
    state.skipped_steps += 1
    state.bad_in_a_row += 1
    bar.message(f"step {state.step}: non-finite loss or gradient, step skipped ({state.bad_in_a_row} in a row)")
    metrics.log(state.step, {"train/skipped_steps": state.skipped_steps})
    if state.bad_in_a_row >= cfg.train.max_bad_steps:
        raise GrutrainError(
            f"training diverged: {state.bad_in_a_row} steps in a row (up to step {state.step}) had a non-finite "
            f"loss or gradient (train.max_bad_steps={cfg.train.max_bad_steps}); lower optim.lr or "
            f"set optim.grad_clip, then --resume from {run.run_dir / LAST_CHECKPOINT}")


class Throughput:
    """Items (tokens, time steps) per second since the last log."""

    def __init__(self, step: int, items_per_batch: int):
        self.items_per_batch, self.step, self.time = items_per_batch, step, time.perf_counter()

    def since_last(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.step) * self.items_per_batch / max(now - self.time, 1e-9)
        self.step, self.time = step, now
        return rate


def log_training(run: Run, lr: float, result: StepResult, throughput: Throughput, metrics: MetricsLogger,
                 bar: TrainingProgress) -> None:
    state = run.state
    tokens_per_s = throughput.since_last(state.step)
    train_loss = state.loss_window[0] / state.loss_window[1]
    state.loss_window = [0.0, 0]
    metrics.log(state.step, {"train/loss": train_loss, "lr": lr, "grad_norm": float(result.grad_norm),
                             "perf/tokens_per_s": tokens_per_s})
    bar.update(state.step, train_loss, tokens_per_s, lr)


def evaluate_during_fit(run: Run, metrics: MetricsLogger, bar: TrainingProgress) -> tuple[dict, str | None]:
    """Validation metrics logged, best.pt kept, early stopping consulted; returns (metrics, stop reason)."""
    step = run.state.step
    # The last evaluation reads the whole split; the others may read a capped, fixed subset
    # (lm: train.eval_tokens), so that evaluating a large corpus does not dominate training.
    val = run.task.evaluate(run.model, "val", run.device, run.amp_dtype, whole=step == run.total_steps)
    scalars = {f"val/{name}": value for name, value in val.items()}
    metrics.log(step, scalars)
    if run.dist.is_main:
        run.task.on_evaluation(run.model, run.device, step, metrics)
    bar.message(f"step {step}: " + ", ".join(f"val {k} {v:.4g}" for k, v in val.items()))
    if run.monitor.update(step, scalars):
        save(run, BEST_CHECKPOINT)
    stop_reason = run.monitor.stop_reason() if run.monitor.should_stop() else None
    if stop_reason:
        bar.message(stop_reason)
    return val, stop_reason


def save_last(run: Run) -> None:
    save(run, LAST_CHECKPOINT)
    if run.cfg.train.keep_last and run.dist.is_main:
        keep_periodic_copy(run.run_dir, run.state.step, run.cfg.train.keep_last)


def save(run: Run, name: Path) -> None:
    """Called on every rank (it gathers the ranks' states); rank 0 writes, the others wait."""
    state, dist = run.state, run.dist
    if not weights_are_finite(run.model):
        raise GrutrainError(f"the weights became non-finite at step {state.step}; {name.name} was not overwritten. "
                            "Lower optim.lr or set optim.grad_clip, then --resume from the last good checkpoint")
    full_hidden = dist.gather_batch(run.hidden.detach() if run.hidden is not None else None, dim=1)
    rank_rngs = dist.gather_objects(rng_state())
    if not dist.is_main:
        dist.barrier()
        run.on_checkpoint()
        return
    state.epoch, state.monitor, state.wall_time_s = run.task.sampler.epoch, run.monitor.state_dict(), run.wall_time()
    payload = training_payload(
        task=run.cfg.task, config=config_to_dict(run.cfg), model=run.model.state_dict(),
        optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(), trainer=state,
        sampler=run.task.sampler.state_dict(), hidden=full_hidden.cpu() if full_hidden is not None else None,
        rng=rank_rngs[0], rank_rng=rank_rngs, task_state=run.task.state())
    try:
        save_checkpoint(payload, run.run_dir / name)
        run.on_checkpoint()  # the run is this command's now (--overwrite: the one it replaces can go)
    finally:
        dist.barrier()


def weights_are_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
