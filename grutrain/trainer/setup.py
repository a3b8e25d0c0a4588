"""What a run trains with, built one way for `grutrain fit` and `grutrain lr-find`.

start_device (threads, device, autocast dtype) -> build_training (task, seed, capacity check,
model, optimizer, loss scaler) -> a `Training`, whose `step` is the optimizer step. fit then
wraps it in a `Run` (start_run): the loop's state, fresh or restored from a checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from grutrain import tasks
from grutrain.capacity import check_model_fits
from grutrain.config.schema import Config
from grutrain.errors import GrutrainError
from grutrain.files.checkpoint import TrainerState
from grutrain.model import check_kernel
from grutrain.runtime import Distributed, autocast_dtype, resolve_device, seed_everything, set_rng_state, set_threads
from grutrain.trainer.monitor import Monitor
from grutrain.trainer.optim import build_optimizer
from grutrain.trainer.step import StepResult, train_step


def start_device(cfg: Config, dist: Distributed | None = None,
                 device: str | None = None) -> tuple[torch.device, torch.dtype | None]:
    """Torch's threads, this process's device (`device`, default train.device) and its autocast dtype.

    Under torchrun (`dist`) the process joins the group here, which may pick its device (a GPU per rank).
    """
    set_threads(cfg.train.threads)
    dev = resolve_device(device or cfg.train.device)
    if dist is not None:
        dev = dist.start(dev, timeout_s=cfg.train.dist_timeout_s)
    return dev, autocast_dtype(cfg.train.precision, dev)


@dataclass
class Training:
    """A task with a model, its optimizer and its loss scaler on a device: what an optimizer step needs."""

    cfg: Config
    task: object  # grutrain.tasks.protocols.Task
    device: torch.device
    amp_dtype: torch.dtype | None
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler

    def step(self, batch: list, carried: torch.Tensor | None, lr: float,
             mean_over_processes=float) -> StepResult:
        return train_step(self.task, self.train_model, self.optimizer, self.scaler, batch, carried, lr=lr,
                          accumulate=self.cfg.train.accumulate, grad_clip=self.cfg.optim.grad_clip,
                          device=self.device, amp_dtype=self.amp_dtype, mean_over_processes=mean_over_processes,
                          parameters=self.model.parameters())


def build_training(cfg: Config, device: torch.device, amp_dtype: torch.dtype | None, *,
                   dist: Distributed | None = None, saved: dict | None = None) -> Training:
    """The config's task, a freshly seeded model, its optimizer and loss scaler.

    `saved`: the checkpoint being resumed, which the task reads its state from (vocabulary, scaling);
    the model's and optimizer's state are put back later, by start_run.
    """
    # The task draws all the rows of one optimizer step at once (batch_size x accumulate per
    # process); train_step splits them into micro-batches, so K micro-batches of B rows see the
    # same rows, and give the same gradient, as one batch of K*B.
    task = tasks.training_task(cfg, rows_per_step=cfg.train.batch_size * cfg.train.accumulate, saved=saved,
                               rank=dist.rank if dist else 0, world_size=dist.world_size if dist else 1)
    check_model_fits(task, cfg)  # an impossible size is refused here, not by the allocator
    seed_everything(cfg.train.seed)
    check_kernel(cfg.model, device)  # model.kernel=native where it can't run: a one-line error
    model = task.build_model().to(device)
    # DDP averages the gradients of the ranks' equal-sized batches: the gradient of the global batch.
    train_model = torch.nn.parallel.DistributedDataParallel(model) if dist is not None and dist.enabled else model
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    # fp16 needs loss scaling so small gradients don't flush to zero; bf16 and fp32 don't.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    return Training(cfg, task, device, amp_dtype, model, train_model, optimizer, scaler)


@dataclass
class Run(Training):
    """A fit run: its training, directory and processes, and everything its loop reads and updates."""

    run_dir: Path
    dist: Distributed
    monitor: Monitor
    state: TrainerState
    total_steps: int
    hidden: torch.Tensor | None = None  # carried GRU state of sequential sampling
    baselines: dict = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    earlier_wall_time: float = 0.0  # of the stretches before a resume
    resumed: bool = False
    on_checkpoint: Callable[[], None] = lambda: None  # called after each checkpoint this command writes

    def wall_time(self) -> float:
        return round(self.earlier_wall_time + time.time() - self.started_at, 2)


def start_run(training: Training, run_dir: Path, dist: Distributed, saved: dict | None) -> Run:
    """The loop's state around `training`: fresh, or where `saved` left it (--resume)."""
    cfg, sampler = training.cfg, training.task.sampler
    total_steps = cfg.train.epochs * sampler.batches_per_epoch if cfg.train.epochs else cfg.train.max_steps
    run = Run(**vars(training), run_dir=run_dir, dist=dist, monitor=Monitor(cfg.train.early_stopping),
              state=TrainerState(global_batch=sampler.global_batch, world_size=dist.world_size),
              total_steps=total_steps)
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
