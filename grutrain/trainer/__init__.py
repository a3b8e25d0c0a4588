"""One training run: the fit loop, the optimizer step, resume, optimizers and schedules, early
stopping, metric logging (TensorBoard, metrics.jsonl, HParams) and the run directory's lifecycle.

Read downward: fit.py (the run, top to bottom) -> rundir.py (its directory, claimed and released)
-> setup.py (task, model, optimizer: shared with lr-find) -> loop.py (steps, logs, evaluations,
checkpoints) -> step.py (one optimizer step); beside them interrupts (SIGINT/SIGTERM for the whole
fit), resume, optim, monitor, metrics, hparams.

Rule: knows a task only through the protocols of grutrain.tasks (never a task by name); imports
tasks and the floors below, never a command.
"""
