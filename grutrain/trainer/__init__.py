"""One training run: the fit loop, the optimizer step, resume, optimizers and schedules, early
stopping, metric logging (TensorBoard, metrics.jsonl, HParams) and the run directory's lifecycle.

Rule: knows a task only through the protocols of grutrain.tasks (never a task by name); imports
tasks and the floors below, never a command.
"""
