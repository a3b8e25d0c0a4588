"""The training loop: data, model, optimizer, evaluation, checkpoints and logs of one run.

fit -> claim the run directory -> build the task -> setup (model, optimizer, restored state)
    -> loop (steps, logs, evaluations, checkpoints) -> finish (final metrics, summary.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grutrain.capacity import check_model_fits
from grutrain.files.checkpoint import TrainerState, save_checkpoint, training_payload
from grutrain.tasks.checkpoints import load_checkpoint
from grutrain.config.schema import Config, config_to_dict, config_to_yaml
from grutrain.errors import GrutrainError, TrainingInterrupted
from grutrain.trainer.hparams import FINAL_PREFIX
from grutrain.trainer.metrics import MetricsLogger
from grutrain.trainer.monitor import Monitor
from grutrain.trainer.optim import build_optimizer, lr_at
from grutrain.progress import TrainingProgress
from grutrain.trainer.resume import check_resumable
from grutrain.trainer.rundir import (BEST_CHECKPOINT, LAST_CHECKPOINT, LOCK_FILE, RunLock, discard_set_aside, holds_run,
                             keep_periodic_copy, resolve_run_dir, restore_set_aside, set_aside_run, write_run_file)
from grutrain.runtime import (Distributed, autocast_dtype, resolve_device, rng_state, seed_everything, set_rng_state,
                              set_threads, sigterm_raises)
from grutrain.trainer.step import StepResult, train_step
from grutrain.tasks import training_task

@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps, so a step is never torn.

    A second SIGINT interrupts at once (KeyboardInterrupt), for a user who really wants out.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def weights_are_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def fit(config: Config, *, resume: bool = False, overwrite: bool = False, progress: str = "auto") -> dict:
    """Train as the config says; return the summary that is also written to summary.json.

    Under torchrun every process calls this; rank 0 alone writes files and shows progress.
    """
    cfg = config
    set_threads(cfg.train.threads)
    dist = Distributed()
    device = dist.start(resolve_device(cfg.train.device), timeout_s=cfg.train.dist_timeout_s)
    try:
        with sigterm_raises():  # installed before any slow read: a SIGTERM there still cleans up
            return _fit_on_this_rank(cfg, dist, device, resume, overwrite, progress if dist.is_main else "none")
    finally:
        dist.stop()


def _fit_on_this_rank(cfg: Config, dist: Distributed, device, resume: bool, overwrite: bool, progress: str) -> dict:
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    # Rank 0 picks (and locks) the run directory; every rank learns it, or the reason there is none.
    run_dir = lock = None
    fresh, error = False, None
    if dist.is_main:
        try:
            run_dir = resolve_run_dir(cfg.run.dir, cfg.run.name, resume=resume, overwrite=overwrite)
            fresh = not holds_run(run_dir)
            lock = RunLock(run_dir).acquire()
        except GrutrainError as exc:
            error = str(exc)
    run_dir, error = dist.broadcast((str(run_dir) if run_dir else None, error))
    if error:
        raise GrutrainError(error)
    run_dir = Path(run_dir)
    started, aside = False, None
    # Everything that can fail on bad input happens before an earlier run's files are touched.
    try:
        saved = None
        if resume:
            saved = load_checkpoint(run_dir / LAST_CHECKPOINT, map_location=device)
            check_resumable(saved, cfg, dist.world_size, run_dir / LAST_CHECKPOINT)
        # The task draws all the rows of one optimizer step at once (batch_size x accumulate per
        # process); train_step splits them into micro-batches, so K micro-batches of B rows see the
        # same rows, and give the same gradient, as one batch of K*B.
        task = training_task(cfg, rows_per_step=cfg.train.batch_size * cfg.train.accumulate, saved=saved,
                             rank=dist.rank, world_size=dist.world_size)
        check_model_fits(task, cfg)  # an impossible size is refused here, not by the allocator
        run = setup(cfg, run_dir, task, saved, device, amp_dtype, dist)
        if overwrite and dist.is_main and holds_run(run_dir):
            aside = set_aside_run(run_dir)  # deleted by the first checkpoint, restored if none gets written
        started = True
        return train(run, progress)
    finally:
        if aside is not None:
            restore_set_aside(run_dir, aside)
        if lock is not None:
            lock.release()
        if fresh and not started:  # bad input: leave no empty run directory behind
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
                if cfg.run.dir is None:  # and a runs/ made for it alone
                    run_dir.parent.rmdir()


@dataclass
class Run:
    """Everything one run's loop reads and updates."""

    cfg: Config
    run_dir: Path
    task: object  # grutrain.tasks.protocols.Task
    dist: Distributed
    device: torch.device
    amp_dtype: torch.dtype | None
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    monitor: Monitor
    state: TrainerState
    total_steps: int
    hidden: torch.Tensor | None = None  # carried GRU state of sequential sampling
    baselines: dict = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    earlier_wall_time: float = 0.0  # of the stretches before a resume
    resumed: bool = False

    def wall_time(self) -> float:
        return round(self.earlier_wall_time + time.time() - self.started_at, 2)


def setup(cfg: Config, run_dir: Path, task, saved: dict | None, device, amp_dtype, dist: Distributed) -> Run:
    """The model, optimizer and loop state of a fresh run, or restored from `saved` (--resume)."""
    sampler = task.sampler
    total_steps = cfg.train.epochs * sampler.batches_per_epoch if cfg.train.epochs else cfg.train.max_steps
    seed_everything(cfg.train.seed)
    model = task.build_model().to(device)
    # DDP averages the gradients of the ranks' equal-sized batches: the gradient of the global batch.
    train_model = torch.nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    # fp16 needs loss scaling so small gradients don't flush to zero; bf16 and fp32 don't.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    run = Run(cfg, run_dir, task, dist, device, amp_dtype, model, train_model, optimizer, scaler,
              Monitor(cfg.train.early_stopping), TrainerState(global_batch=sampler.global_batch,
                                                              world_size=dist.world_size), total_steps)
    if saved:
        restore(run, saved)
    return run


def restore(run: Run, saved: dict) -> None:
    """Put a run back where its checkpoint left it; a damaged part is a one-line error."""
    part = "model"
    try:
        run.model.load_state_dict(saved["model"])
        part = "optimizer"
        run.optimizer.load_state_dict(saved["optimizer"])
        part = "scaler"
        run.scaler.load_state_dict(saved["scaler"])
        part = "sampler"
        run.task.sampler.load_state_dict(saved["sampler"])
        part = "random-number"
        rank_rngs = saved.get("rank_rng") or []
        set_rng_state(rank_rngs[run.dist.rank] if len(rank_rngs) == run.dist.world_size else saved["rng"])
        part = "trainer"
        state = TrainerState.from_dict(saved["trainer"])
        run.monitor.load_state_dict(state.monitor)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise GrutrainError(f"cannot resume: the checkpoint's {part} state is damaged ({first}); "
                            "resume from another checkpoint or start a new run") from None
    # Of the loop's counters only these carry over; global_batch and world_size describe this run.
    run.state.step, run.state.loss_window = state.step, list(state.loss_window)
    run.state.skipped_steps, run.state.bad_in_a_row = state.skipped_steps, state.bad_in_a_row
    run.earlier_wall_time, run.resumed = state.wall_time_s, True
    # The checkpoint holds the carried state of the whole global batch; keep this rank's rows.
    hidden = saved["hidden"]
    run.hidden = hidden[:, run.task.sampler.rows].to(run.device) if hidden is not None else None


def train(run: Run, progress: str) -> dict:
    """Loop to the last step and finish; on any failure summary.json says so before the error propagates."""
    cfg, dist = run.cfg, run.dist
    if dist.is_main:
        write_run_file(run.run_dir / "config.yaml", config_to_yaml(cfg))
    run.baselines = run.task.baselines()
    run.started_at = time.time()
    write_summary(run, "running", pid=os.getpid())
    metrics = MetricsLogger(run.run_dir, resume_step=run.state.step if run.resumed else None, enabled=dist.is_main)
    bar = TrainingProgress(run.total_steps, run.state.step, progress)
    try:
        val, stop_reason = loop(run, metrics, bar)
        final = finish(run, val, metrics)
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        write_summary(run, "interrupted", error=str(exc) or "KeyboardInterrupt")
        raise
    except Exception as exc:
        write_summary(run, "failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        bar.close()
        metrics.close()
    extras = run.task.final_extras(run.model, run.device) if dist.is_main else {}
    if stop_reason:
        extras["early_stopping"] = {"reason": stop_reason, "stopped_at_step": run.state.step,
                                    "best_step": run.monitor.best_step}
    return write_summary(run, "finished", final=final, **extras)


class StepSync:
    """The one collective of a step: the mean loss over processes, and whether any process got a
    signal, so every rank takes the same decisions (skip, stop) at the same step."""

    def __init__(self, dist: Distributed, stop_signals: list[int], device):
        self.dist, self.stop_signals, self.device = dist, stop_signals, device
        self.signals_seen = 0.0

    def __call__(self, loss: float) -> float:
        loss_sum, self.signals_seen = self.dist.sum([loss, float(len(self.stop_signals))], self.device)
        return loss_sum / self.dist.world_size


def loop(run: Run, metrics: MetricsLogger, bar: TrainingProgress) -> tuple[dict, str | None]:
    """Train until the last step, an early stop or a signal; returns (last validation metrics, stop reason)."""
    cfg, task, state = run.cfg, run.task, run.state
    val, stop_reason = {}, None
    throughput = Throughput(state.step, task.items_per_batch)
    with stop_on_signals() as stop_signals:
        run.model.train()
        while state.step < run.total_steps:
            *batch, starts_epoch = task.sampler.next_batch()
            batch = [t.to(run.device) for t in batch]
            # Sequential batches continue the previous ones: carry the state, not its history.
            carried = run.hidden.detach() if task.carries_state and not starts_epoch and run.hidden is not None else None
            lr = lr_at(state.step, cfg.optim, run.total_steps)
            sync = StepSync(run.dist, stop_signals, run.device)
            result = train_step(task, run.train_model, run.optimizer, run.scaler, batch, carried, lr=lr,
                                accumulate=cfg.train.accumulate, grad_clip=cfg.optim.grad_clip, device=run.device,
                                amp_dtype=run.amp_dtype, mean_over_processes=sync, parameters=run.model.parameters())
            state.step += 1
            count_step(run, result, bar, metrics)
            if (state.step % cfg.train.log_every == 0 or state.step == run.total_steps) and state.loss_window[1]:
                log_training(run, lr, result, throughput, metrics, bar)
            if state.step % cfg.train.eval_every == 0 or state.step == run.total_steps:
                val, stop_reason = evaluate_during_fit(run, metrics, bar)
            if state.step % cfg.train.checkpoint_every == 0 or state.step == run.total_steps or sync.signals_seen \
                    or stop_reason:
                save_last(run)
            if sync.signals_seen:
                raise TrainingInterrupted(stop_signals[0] if stop_signals else signal.SIGTERM, run.run_dir, state.step)
            if stop_reason:
                # As Keras' restore_best_weights: what the run hands over is best.pt's model.
                run.model.load_state_dict(load_checkpoint(run.run_dir / BEST_CHECKPOINT, map_location=run.device)["model"])
                return {}, stop_reason
    return val, stop_reason


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
        return
    state.epoch, state.monitor, state.wall_time_s = run.task.sampler.epoch, run.monitor.state_dict(), run.wall_time()
    payload = training_payload(
        task=run.cfg.task, config=config_to_dict(run.cfg), model=run.model.state_dict(),
        optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(), trainer=state,
        sampler=run.task.sampler.state_dict(), hidden=full_hidden.cpu() if full_hidden is not None else None,
        rng=rank_rngs[0], rank_rng=rank_rngs, task_state=run.task.state())
    try:
        save_checkpoint(payload, run.run_dir / name)
        discard_set_aside(run.run_dir)  # --overwrite: the run this one replaces can go now
    finally:
        dist.barrier()


def save_last(run: Run) -> None:
    save(run, LAST_CHECKPOINT)
    if run.cfg.train.keep_last and run.dist.is_main:
        keep_periodic_copy(run.run_dir, run.state.step, run.cfg.train.keep_last)


def write_summary(run: Run, status: str, **extra) -> dict:
    state = run.state
    summary = {"status": status, "task": run.cfg.task, "processes": run.dist.world_size, "run_dir": str(run.run_dir),
               "step": state.step, "total_steps": run.total_steps, "epoch": run.task.sampler.epoch,
               "skipped_steps": state.skipped_steps,
               "best": {run.monitor.metric: run.monitor.best, "step": run.monitor.best_step},
               "baselines": run.baselines, "wall_time_s": run.wall_time(), **extra}
    if run.dist.is_main:
        write_run_file(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
