"""Which evaluation was best, and whether training has stopped improving (early stopping)."""

from __future__ import annotations

from grutrain.errors import GrutrainError


class Monitor:
    """The metric that picks best.pt and, with train.early_stopping, decides when to stop."""

    def __init__(self, early_stopping):
        self.early_stopping = early_stopping
        self.metric = early_stopping.metric if early_stopping else "val/loss"
        self.mode = early_stopping.mode if early_stopping else "min"
        self.min_delta = early_stopping.min_delta if early_stopping else 0.0
        self.best, self.best_step, self.evals_without_improvement = None, None, 0

    def update(self, step: int, scalars: dict[str, float]) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if self.metric not in scalars:
            raise GrutrainError(f"train.early_stopping.metric {self.metric!r} is not a metric of this task; "
                                f"choose one of {', '.join(sorted(scalars))}")
        value = scalars[self.metric]
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_step, self.evals_without_improvement = value, step, 0
        else:
            self.evals_without_improvement += 1
        return better

    def should_stop(self) -> bool:
        return self.early_stopping is not None and self.evals_without_improvement >= self.early_stopping.patience

    def stop_reason(self) -> str:
        es = self.early_stopping
        return (f"early stopping: {self.metric} did not improve by more than {es.min_delta} for {es.patience} "
                f"evaluations; best {self.best:.6g} at step {self.best_step}")

    def state_dict(self) -> dict:
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step,
                "evals_without_improvement": self.evals_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        if state["metric"] == self.metric:
            self.best, self.best_step = state["best"], state["best_step"]
            self.evals_without_improvement = state["evals_without_improvement"]
