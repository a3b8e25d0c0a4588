"""One optimizer step, the same for `grutrain fit` and `grutrain lr-find`.

The next batch and the state it starts from; then forward and backward in `accumulate`
micro-batches, unscale (fp16), clip, and apply the update only when the loss and the gradient
are finite: a non-finite step never reaches the weights.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch


def next_batch(task, hidden: torch.Tensor | None, device) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The task's next batch on `device`, and the GRU state it starts from (None: zeros).

    Sequential batches continue the previous ones: they carry the state, not its history, except
    the first batch of an epoch, which starts the text (or series) again.
    """
    *batch, starts_epoch = task.sampler.next_batch()
    carried = hidden.detach() if task.carries_state and not starts_epoch and hidden is not None else None
    return [t.to(device) for t in batch], carried


@dataclass
class StepResult:
    loss: float  # the step's mean loss (over every process under DDP)
    grad_norm: torch.Tensor  # before clipping
    hidden: torch.Tensor | None  # the carried state of this process's rows after the step, or None
    applied: bool  # False: the loss or gradient was not finite and the weights were left as they were


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


def train_step(task, model, optimizer, scaler, batch: list, hidden, *, lr: float, accumulate: int,
               grad_clip: float | None, device, amp_dtype, mean_over_processes: Callable[[float], float] = float,
               parameters=None) -> StepResult:
    """Set the lr, compute the gradients, clip them and apply the update if the step is finite.

    `model` is what runs forward (the DDP wrapper under torchrun), `parameters` what is clipped
    (default: the model's); `mean_over_processes` turns this process's loss into the mean over
    all of them, so every process takes the same decision.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss, new_hidden = forward_backward(task, model, batch, hidden, accumulate, scaler, device, amp_dtype)
    scaler.unscale_(optimizer)
    params = list(parameters if parameters is not None else model.parameters())
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf)
    mean_loss = mean_over_processes(float(loss.detach()))
    # fp16's scaler skips overflowing gradients by itself (and lowers its scale); otherwise skip here.
    applied = math.isfinite(mean_loss) and (scaler.is_enabled() or bool(torch.isfinite(grad_norm)))
    if applied:
        scaler.step(optimizer)
    scaler.update()
    return StepResult(mean_loss, grad_norm, new_hidden, applied)
