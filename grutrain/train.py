"""The training loop: data, model, optimizer, evaluation, checkpoints and logs of one run."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import torch

from grutrain.checkpoint import load_checkpoint, save_checkpoint
from grutrain.config import Config, config_to_dict, config_to_yaml, flatten_config
from grutrain.errors import GrutrainError, TrainingInterrupted
from grutrain.hparams import FINAL_PREFIX
from grutrain.metrics import MetricsLogger
from grutrain.monitor import Monitor
from grutrain.optim import build_optimizer, lr_at
from grutrain.progress import TrainingProgress
from grutrain.rundir import (BEST_CHECKPOINT, LAST_CHECKPOINT, LOCK_FILE, RunLock, clear_run_dir, holds_run,
                             resolve_run_dir)
from grutrain.runtime import (Distributed, autocast_dtype, resolve_device, rng_state, seed_everything, set_rng_state,
                              set_threads)
from grutrain.tasks import build_task

# Keys that may differ between a run and its resumption: how long, where, on what hardware.
RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "run.dir", "train.threads", "train.device", "train.dist_timeout_s"}


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


def check_resumable(saved: dict, config: Config, world_size: int, path: Path) -> None:
    """A run resumes only under its own config, but may be given more steps or another dir.

    The per-process batch may change with the number of processes, as long as the global batch
    (batch_size x processes) stays the same: then the data order is the same too.
    """
    before, now = flatten_config(saved["config"]), flatten_config(config_to_dict(config))
    changed = sorted(k for k in before.keys() | now.keys()
                     if k not in RESUMABLE_CHANGES | {"train.batch_size"} and before.get(k) != now.get(k))
    if changed:
        raise GrutrainError(f"cannot resume {str(path)!r}: the config differs from the run's in {', '.join(changed)}; "
                            "resume with the run's own config (its config.yaml)")
    saved_global = saved.get("global_batch", before["train.batch_size"])
    accumulate = config.train.accumulate
    if config.train.batch_size * accumulate * world_size != saved_global:
        raise GrutrainError(f"cannot resume {str(path)!r}: it was trained with a global batch of {saved_global}, "
                            f"now train.batch_size={config.train.batch_size} x {accumulate} accumulated x "
                            f"{world_size} processes; set train.batch_size={saved_global // world_size // accumulate}")


def forward_backward(task, model, batch: list, hidden, accumulate: int, scaler, device, amp_dtype):
    """The step's loss and gradients, computed in `accumulate` equal micro-batches.

    Each micro-batch loss is a mean over its rows; scaled by 1/accumulate their sum is the mean
    over all the step's rows. Under DDP the gradients are averaged once, after the last one.
    Returns (mean loss, the carried state of all rows or None).
    """
    micro_batches = list(zip(*(t.chunk(accumulate) for t in batch)))
    states = hidden.chunk(accumulate, dim=1) if hidden is not None else [None] * accumulate
    total, new_states = 0.0, []
    for i, (micro, state) in enumerate(zip(micro_batches, states)):
        last = i == accumulate - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, new_state = task.loss(model, list(micro), state)
            scaler.scale(loss / accumulate).backward()
        total = total + loss.detach() / accumulate
        new_states.append(new_state)
    carried = torch.cat(new_states, dim=1) if task.carries_state else None
    return total, carried


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
    started = False
    # Everything that can fail on bad input happens before an earlier run's files are touched.
    try:
        saved = None
        if resume:
            saved = load_checkpoint(run_dir / LAST_CHECKPOINT, map_location=device)
            check_resumable(saved, cfg, dist.world_size, run_dir / LAST_CHECKPOINT)
        # The task draws all the rows of one optimizer step at once (batch_size x accumulate per
        # process); the loop splits them into micro-batches, so K micro-batches of B rows see the
        # same rows, and give the same gradient, as one batch of K*B.
        rows_per_step = cfg.train.batch_size * cfg.train.accumulate
        task = build_task(cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": rows_per_step})}),
                          saved, dist.rank, dist.world_size)
        if overwrite and dist.is_main:
            clear_run_dir(run_dir)
        started = True
        return _train(cfg, run_dir, task, saved, device, amp_dtype, progress, dist)
    finally:
        if lock is not None:
            lock.release()
        if fresh and not started:  # bad input: leave no empty run directory behind
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def _train(cfg: Config, run_dir: Path, task, saved: dict | None,
           device: torch.device, amp_dtype, progress: str, dist: Distributed) -> dict:
    sampler = task.sampler
    total_steps = cfg.train.epochs * sampler.batches_per_epoch if cfg.train.epochs else cfg.train.max_steps
    seed_everything(cfg.train.seed)
    model = task.build_model().to(device)
    # DDP averages the gradients of the ranks' equal-sized batches: the gradient of the global batch.
    train_model = torch.nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    # fp16 needs loss scaling so small gradients don't flush to zero; bf16 and fp32 don't.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    step, hidden, monitor, stop_reason = 0, None, Monitor(cfg.train.early_stopping), None
    loss_window, skipped, bad_in_a_row, earlier_wall_time = [0.0, 0], 0, 0, 0.0
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        sampler.load_state_dict(saved["sampler"])
        rank_rngs = saved.get("rank_rng") or []
        set_rng_state(rank_rngs[dist.rank] if len(rank_rngs) == dist.world_size else saved["rng"])
        step = saved["step"]
        monitor.load_state_dict(saved["monitor"])
        # The checkpoint holds the carried state of the whole global batch; keep this rank's rows.
        hidden = saved["hidden"][:, sampler.rows].to(device) if saved["hidden"] is not None else None
        loss_window, skipped, bad_in_a_row = list(saved["loss_window"]), saved["skipped_steps"], saved["bad_in_a_row"]
        earlier_wall_time = saved.get("wall_time_s", 0.0)
    if dist.is_main:
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    baselines = task.baselines()

    def save(name: Path) -> None:
        """Called on every rank (it gathers the ranks' states); rank 0 writes, the others wait."""
        if not weights_are_finite(model):
            raise GrutrainError(f"the weights became non-finite at step {step}; {name.name} was not overwritten. "
                                "Lower optim.lr or set optim.grad_clip, then --resume from the last good checkpoint")
        full_hidden = dist.gather_batch(hidden.detach() if hidden is not None else None, dim=1)
        rank_rngs = dist.gather_objects(rng_state())
        if not dist.is_main:
            dist.barrier()
            return
        payload = {
            "task": cfg.task, "config": config_to_dict(cfg), **task.checkpoint_state(),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "step": step, "epoch": sampler.epoch, "monitor": monitor.state_dict(),
            "sampler": sampler.state_dict(), "hidden": full_hidden.cpu() if full_hidden is not None else None,
            "global_batch": sampler.global_batch, "world_size": dist.world_size,
            "loss_window": loss_window, "skipped_steps": skipped, "bad_in_a_row": bad_in_a_row,
            "rng": rank_rngs[0], "rank_rng": rank_rngs, "wall_time_s": wall_time(),
        }
        try:
            save_checkpoint(payload, run_dir / name)
        finally:
            dist.barrier()

    def save_last() -> None:
        save(LAST_CHECKPOINT)
        if cfg.train.keep_last and dist.is_main:
            keep_periodic_copy(run_dir, step, cfg.train.keep_last)

    def wall_time() -> float:  # over every stretch of a resumed run
        return round(earlier_wall_time + time.time() - started, 2)

    def write_summary(status: str, **extra) -> dict:
        summary = {"status": status, "task": cfg.task, "processes": dist.world_size, "run_dir": str(run_dir), "step": step,
                   "total_steps": total_steps, "epoch": sampler.epoch, "skipped_steps": skipped,
                   "best": {monitor.metric: monitor.best, "step": monitor.best_step},
                   "baselines": baselines, "wall_time_s": wall_time(), **extra}
        if dist.is_main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    started = time.time()
    write_summary("running", pid=os.getpid())
    metrics = MetricsLogger(run_dir, resume_step=step if saved else None, enabled=dist.is_main)
    bar = TrainingProgress(total_steps, step, progress)
    sequential = task.carries_state
    last_log_time, last_log_step = time.perf_counter(), step
    val = {}
    try:
        with stop_on_signals() as stop_signals:
            model.train()
            while step < total_steps:
                *batch, starts_epoch = sampler.next_batch()
                batch = [t.to(device) for t in batch]
                # Sequential batches continue the previous ones: carry the state, not its history.
                hidden = hidden.detach() if sequential and not starts_epoch and hidden is not None else None
                lr = lr_at(step, cfg.optim, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss, new_hidden = forward_backward(task, train_model, batch, hidden, cfg.train.accumulate,
                                                    scaler, device, amp_dtype)
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
                step += 1
                # One collective per step: the mean loss over ranks and whether any rank got a signal,
                # so every rank takes the same decisions (skip, stop) at the same step.
                loss_sum, signals_seen = dist.sum([float(loss.detach()), float(len(stop_signals))], device)
                mean_loss = loss_sum / dist.world_size
                # A non-finite loss or gradient never reaches the weights: the step is skipped.
                # (fp16's scaler skips overflowing gradients by itself and lowers its scale.)
                if math.isfinite(mean_loss) and (scaler.is_enabled() or torch.isfinite(grad_norm)):
                    scaler.step(optimizer)
                    hidden = new_hidden if sequential else None
                    bad_in_a_row = 0
                    loss_window = [loss_window[0] + mean_loss, loss_window[1] + 1]
                else:
                    hidden, skipped, bad_in_a_row = None, skipped + 1, bad_in_a_row + 1
                    bar.message(f"step {step}: non-finite loss or gradient, step skipped ({bad_in_a_row} in a row)")
                    metrics.log(step, {"train/skipped_steps": skipped})
                    if bad_in_a_row >= cfg.train.max_bad_steps:
                        raise GrutrainError(
                            f"training diverged: {bad_in_a_row} steps in a row (up to step {step}) had a non-finite "
                            f"loss or gradient (train.max_bad_steps={cfg.train.max_bad_steps}); lower optim.lr or "
                            f"set optim.grad_clip, then --resume from {run_dir / LAST_CHECKPOINT}")
                scaler.update()

                if (step % cfg.train.log_every == 0 or step == total_steps) and loss_window[1]:
                    now = time.perf_counter()
                    tokens_per_s = (step - last_log_step) * task.items_per_batch / max(now - last_log_time, 1e-9)
                    last_log_time, last_log_step = now, step
                    train_loss = loss_window[0] / loss_window[1]
                    loss_window = [0.0, 0]
                    metrics.log(step, {"train/loss": train_loss, "lr": lr, "grad_norm": float(grad_norm),
                                       "perf/tokens_per_s": tokens_per_s})
                    bar.update(step, train_loss, tokens_per_s, lr)

                if step % cfg.train.eval_every == 0 or step == total_steps:
                    # The last evaluation reads the whole split (lm caps the others at train.eval_tokens).
                    val = task.evaluate(model, "val", device, amp_dtype, whole=step == total_steps)
                    metrics.log(step, {f"val/{name}": value for name, value in val.items()})
                    if dist.is_main:
                        task.on_evaluation(model, device, step, metrics)
                    bar.message(f"step {step}: " + ", ".join(f"val {k} {v:.4g}" for k, v in val.items()))
                    if monitor.update(step, {f"val/{name}": value for name, value in val.items()}):
                        save(BEST_CHECKPOINT)
                    if monitor.should_stop():
                        stop_reason = monitor.stop_reason()
                        bar.message(stop_reason)

                if step % cfg.train.checkpoint_every == 0 or step == total_steps or signals_seen or stop_reason:
                    save_last()
                if signals_seen:
                    raise TrainingInterrupted(stop_signals[0] if stop_signals else signal.SIGTERM, run_dir, step)
                if stop_reason:
                    # As Keras' restore_best_weights: what the run hands over is best.pt's model.
                    model.load_state_dict(load_checkpoint(run_dir / BEST_CHECKPOINT, map_location=device)["model"])
                    val = {}
                    break

        if not val:  # resumed a run that had already reached its last step
            val = task.evaluate(model, "val", device, amp_dtype, whole=True)
        final = {f"val/{name}": value for name, value in val.items()}
        if task.has_split("test"):
            final.update({f"test/{k}": v for k, v in task.evaluate(model, "test", device, amp_dtype, whole=True).items()})
        # As scalars too: TensorBoard's HParams dashboard takes its metric columns from scalar tags.
        metrics.log(step, {FINAL_PREFIX + tag: value for tag, value in final.items()})
        metrics.hparams(config_to_dict(cfg))
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        write_summary("interrupted", error=str(exc) or "KeyboardInterrupt")
        raise
    except Exception as exc:
        write_summary("failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        bar.close()
        metrics.close()

    extras = task.final_extras(model, device) if dist.is_main else {}
    if stop_reason:
        extras["early_stopping"] = {"reason": stop_reason, "stopped_at_step": step, "best_step": monitor.best_step}
    return write_summary("finished", final=final, **extras)


def keep_periodic_copy(run_dir: Path, step: int, keep: int) -> None:
    """Link last.pt as step-N.pt and delete all but the `keep` latest of those."""
    checkpoints = run_dir / LAST_CHECKPOINT.parent
    target = checkpoints / f"step-{step:08d}.pt"
    tmp = checkpoints / f".{target.name}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(checkpoints / LAST_CHECKPOINT.name, tmp)  # files are replaced, never rewritten, so a link is safe
        os.replace(tmp, target)
    except OSError:
        shutil.copyfile(checkpoints / LAST_CHECKPOINT.name, target)
    for old in sorted(checkpoints.glob("step-*.pt"))[:-keep]:
        old.unlink()
