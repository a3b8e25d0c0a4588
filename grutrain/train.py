"""The training loop: data, model, optimizer, evaluation, checkpoints and logs of one run."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from grutrain.checkpoint import load_checkpoint, save_checkpoint
from grutrain.config import Config, config_to_dict, config_to_yaml
from grutrain.data.text import Vocabulary, WindowSampler, bigram_perplexity, load_text_splits
from grutrain.errors import GrutrainError, TrainingInterrupted
from grutrain.evaluate import evaluate_lm
from grutrain.metrics import MetricsLogger
from grutrain.model import build_model
from grutrain.optim import build_optimizer, lr_at
from grutrain.progress import TrainingProgress
from grutrain.rundir import BEST_CHECKPOINT, LAST_CHECKPOINT, resolve_run_dir
from grutrain.runtime import autocast_dtype, resolve_device, rng_state, seed_everything, set_rng_state, set_threads

# Keys that may differ between a run and its resumption: how long to train and where.
RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "run.dir"}


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


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(saved: dict, config: Config, path: Path) -> None:
    """A run resumes only under its own config, but may be given more steps or another dir."""
    before, now = _flatten(saved), _flatten(config_to_dict(config))
    changed = sorted(k for k in before.keys() | now.keys() if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k))
    if changed:
        raise GrutrainError(f"cannot resume {str(path)!r}: the config differs from the run's in {', '.join(changed)}; "
                            "resume with the run's own config (its config.yaml)")


def fit(config: Config, *, resume: bool = False, overwrite: bool = False, progress: str = "auto") -> dict:
    """Train as the config says; return the summary that is also written to summary.json."""
    cfg = config
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    amp_dtype = autocast_dtype(cfg.train.precision, device)

    # Everything that can fail on bad input happens before the run directory is touched.
    saved = None
    if resume:
        run_dir = resolve_run_dir(cfg.run.dir, cfg.run.name, resume=True, overwrite=False)
        saved = load_checkpoint(run_dir / LAST_CHECKPOINT, map_location=device)
        check_resumable(saved["config"], cfg, run_dir / LAST_CHECKPOINT)
    vocab = Vocabulary(saved["vocab"]) if saved else None
    splits = load_text_splits(cfg.data, vocab=vocab)
    vocab = splits.vocab
    if len(splits.val) < 2:
        raise GrutrainError(f"the validation split has {len(splits.val)} tokens; raise data.val_fraction "
                            "or use a longer data file")
    sampler = WindowSampler(splits.train, cfg.data.seq_len, cfg.train.batch_size, cfg.data.sampling, seed=cfg.train.seed + 1)
    total_steps = cfg.train.epochs * sampler.batches_per_epoch if cfg.train.epochs else cfg.train.max_steps
    if not resume:
        run_dir = resolve_run_dir(cfg.run.dir, cfg.run.name, resume=False, overwrite=overwrite)

    seed_everything(cfg.train.seed)
    model = build_model(len(vocab), cfg.model).to(device)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    step, best_val_loss, best_step, hidden, loss_window = 0, math.inf, None, None, [0.0, 0]
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.load_state_dict(saved["sampler"])
        set_rng_state(saved["rng"])
        step, best_val_loss, best_step = saved["step"], saved["best_val_loss"], saved["best_step"]
        hidden = saved["hidden"].to(device) if saved["hidden"] is not None else None
        loss_window = list(saved["loss_window"])
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    baselines = {"val/bigram_perplexity": bigram_perplexity(splits.train, splits.val, len(vocab))}

    def checkpoint_payload() -> dict:
        return {
            "task": cfg.task, "config": config_to_dict(cfg), "vocab": vocab.tokens,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "epoch": sampler.epoch, "best_val_loss": best_val_loss, "best_step": best_step,
            "sampler": sampler.state_dict(), "hidden": hidden.detach().cpu() if hidden is not None else None,
            "loss_window": loss_window, "rng": rng_state(),
            # The held-out splits travel with the model, so `grutrain eval` needs only this file.
            "eval_tokens": {"val": splits.val.to(torch.int32), "test": splits.test.to(torch.int32)},
        }

    def write_summary(status: str, **extra) -> dict:
        summary = {"status": status, "task": cfg.task, "run_dir": str(run_dir), "step": step,
                   "total_steps": total_steps, "epoch": sampler.epoch, "best": {"val/loss": best_val_loss, "step": best_step},
                   "baselines": baselines, "wall_time_s": round(time.time() - started, 2), **extra}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    metrics = MetricsLogger(run_dir, resume_step=step if saved else None)
    bar = TrainingProgress(total_steps, step, progress)
    started = time.time()
    sequential = cfg.data.sampling == "sequential"
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    last_log_time, last_log_step = time.perf_counter(), step
    val = {}
    try:
        with stop_on_signals() as stop_signals:
            model.train()
            while step < total_steps:
                inputs, targets, starts_epoch = sampler.next_batch()
                inputs, targets = inputs.to(device), targets.to(device)
                if sequential and not starts_epoch and hidden is not None:
                    hidden = hidden.detach()  # truncated BPTT: carry the state, not its history
                else:
                    hidden = None
                lr = lr_at(step, cfg.optim, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits, new_hidden = model(inputs, hidden)
                    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
                optimizer.step()
                hidden = new_hidden if sequential else None
                step += 1
                loss_window = [loss_window[0] + float(loss.detach()), loss_window[1] + 1]

                if step % cfg.train.log_every == 0 or step == total_steps:
                    now = time.perf_counter()
                    tokens_per_s = (step - last_log_step) * tokens_per_step / max(now - last_log_time, 1e-9)
                    last_log_time, last_log_step = now, step
                    train_loss = loss_window[0] / loss_window[1]
                    loss_window = [0.0, 0]
                    metrics.log(step, {"train/loss": train_loss, "lr": lr, "grad_norm": float(grad_norm),
                                       "perf/tokens_per_s": tokens_per_s})
                    bar.update(step, train_loss, tokens_per_s, lr)

                if step % cfg.train.eval_every == 0 or step == total_steps:
                    val = evaluate_lm(model, splits.val, cfg.data.seq_len, cfg.train.batch_size, device, amp_dtype)
                    metrics.log(step, {"val/loss": val["loss"], "val/perplexity": val["perplexity"], "val/bpc": val["bpc"]})
                    sample = _sample_text(model, vocab, cfg, device)
                    if sample:
                        metrics.text(step, "sample", sample)
                    bar.message(f"step {step}: val loss {val['loss']:.4f}, perplexity {val['perplexity']:.2f}")
                    if val["loss"] < best_val_loss:
                        best_val_loss, best_step = val["loss"], step
                        save_checkpoint(checkpoint_payload(), run_dir / BEST_CHECKPOINT)

                if step % cfg.train.checkpoint_every == 0 or step == total_steps:
                    save_checkpoint(checkpoint_payload(), run_dir / LAST_CHECKPOINT)

                if stop_signals:
                    save_checkpoint(checkpoint_payload(), run_dir / LAST_CHECKPOINT)
                    raise TrainingInterrupted(stop_signals[0], run_dir, step)
    except (TrainingInterrupted, KeyboardInterrupt):
        write_summary("interrupted")
        raise
    except Exception as exc:
        write_summary("failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        bar.close()
        metrics.close()

    if not val:  # resumed a run that had already reached its last step
        val = evaluate_lm(model, splits.val, cfg.data.seq_len, cfg.train.batch_size, device, amp_dtype)
    test = evaluate_lm(model, splits.test, cfg.data.seq_len, cfg.train.batch_size, device, amp_dtype) if len(splits.test) > 1 else None
    final = {"val/loss": val.get("loss"), "val/perplexity": val.get("perplexity"), "val/bpc": val.get("bpc")}
    if test:
        final.update({"test/loss": test["loss"], "test/perplexity": test["perplexity"], "test/bpc": test["bpc"]})
    return write_summary("finished", final=final, sample=_sample_text(model, vocab, cfg, device))


def _sample_text(model, vocab, cfg: Config, device) -> str:
    if cfg.train.sample_length == 0:
        return ""
    from grutrain.sample import generate

    return generate(model, vocab, cfg.train.sample_prompt, cfg.train.sample_length, tokenizer=cfg.data.tokenizer,
                    lowercase=cfg.data.lowercase, temperature=0.8, top_k=None, seed=cfg.train.seed, device=device)
