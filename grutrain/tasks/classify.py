"""Sequence classification: a label for each sequence (text, or a univariate/multivariate series).

The model reads each example to its own end (right-padded batches with `lengths`, so padding
never changes a prediction; `model.bidirectional` reads it both ways) and a linear head on the
final state gives one logit per label. Metrics: cross-entropy, accuracy and macro-F1, next to
the majority-class baseline on the same split, and a confusion matrix.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from grutrain.data.batching import ShuffledBatches
from grutrain.data.classify import (TEXT, Encoder, Examples, Split, file_format, load_classify_data, pad_batch,
                                    read_examples)
from grutrain.errors import GrutrainError
from grutrain.model import SequenceModel

STATE_KEY = "classify"  # the checkpoint's entry for everything this task stores
EVAL_BATCH = 256  # examples per forward pass when evaluating (no gradients: larger is faster)


class ClassifyTask:
    name = "classify"

    def __init__(self, cfg, saved: dict | None, rank: int, world_size: int):
        self.cfg = cfg
        state = _stored_state(saved) if saved else None
        # On resume the label set, vocabulary and normalisation come from the checkpoint, not a refit.
        self.data = load_classify_data(cfg.data, cfg.train.seed, state["encoder"] if state else None)
        self.encoder = self.data.encoder
        self.splits = self.data.splits
        if not len(self.splits["val"]):
            raise GrutrainError(f"the validation split is empty ({len(self.splits['train'])} examples in all); "
                                "raise data.val_fraction or give more examples")
        train = self.splits["train"]
        self.sampler = ShuffledBatches(len(train), cfg.train.batch_size, seed=cfg.train.seed + 1,
                                       make_batch=train.batch, rank=rank, world_size=world_size)
        self.carries_state = False
        # Throughput counts time steps (characters, series values per step), not padding.
        self.items_per_batch = max(1, round(self.sampler.global_batch * float(train.lengths.float().mean())))
        self._confusion: dict[str, list[list[int]]] = {}

    def build_model(self) -> SequenceModel:
        return build_classifier(self.encoder, self.cfg)

    def loss(self, model, batch, hidden):
        inputs, lengths, labels = batch  # [B, T(, C)], [B], [B]
        logits, _ = model(inputs, None, lengths)  # [B, K]
        return F.cross_entropy(logits.float(), labels), None

    def has_split(self, split: str) -> bool:
        return len(self.splits[split]) > 0

    def evaluate(self, model, split: str, device, amp_dtype=None, whole: bool = True) -> dict[str, float]:
        data = self.splits[split]
        logits = class_logits(model, data.xs, device, amp_dtype)
        metrics, confusion = classification_metrics(logits, data.ys, len(self.encoder.labels))
        self._confusion[split] = confusion
        return metrics

    def baselines(self) -> dict[str, float]:
        out = {}
        for split in ("val", "test"):
            if self.has_split(split):
                scores = majority_baseline(self.encoder, self.splits[split].ys)
                out.update({f"{split}/{k}": v for k, v in scores.items()})
        return out

    def checkpoint_state(self) -> dict:
        # The held-out splits travel with the model, so `grutrain eval` needs only the checkpoint.
        return {STATE_KEY: {"encoder": self.encoder.state(),
                            "eval_examples": {s: self.splits[s].packed() for s in ("val", "test")}}}

    def on_evaluation(self, model, device, step: int, metrics) -> None:
        if "val" in self._confusion:
            metrics.text(step, "confusion_matrix", confusion_markdown(self.encoder.labels, self._confusion["val"]))
            from grutrain import plots

            if plots.have_matplotlib():  # the plot extra; without it the text table stands alone
                figure = plots.confusion_matrix_figure(self.encoder.labels, self._confusion["val"])
                plots.log_figure(metrics, step, "val/confusion_matrix", figure)

    def final_extras(self, model, device) -> dict:
        split = "test" if self.has_split("test") else "val"
        if split not in self._confusion:
            self.evaluate(model, split, device)
        return {"confusion_matrix": {"split": split, "labels": self.encoder.labels,
                                     "matrix": self._confusion[split]}}


def build(cfg, saved, rank, world_size) -> ClassifyTask:
    return ClassifyTask(cfg, saved, rank, world_size)


def build_classifier(encoder: Encoder, cfg) -> SequenceModel:
    if encoder.kind == TEXT:
        return SequenceModel(cfg.model, len(encoder.labels), vocab_size=len(encoder.vocab))
    return SequenceModel(cfg.model, len(encoder.labels), input_size=encoder.channels)


@torch.no_grad()
def class_logits(model, xs: list[torch.Tensor], device, amp_dtype=None) -> torch.Tensor:
    """Logits [N, K] (float32, on the CPU) of every example, in the order given.

    Batches are formed by length so they carry little padding; lengths make the order irrelevant
    to the results.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(xs)), key=lambda i: len(xs[i]))
    out = [None] * len(xs)
    for start in range(0, len(order), EVAL_BATCH):
        chunk = order[start : start + EVAL_BATCH]
        inputs, lengths = pad_batch([xs[i] for i in chunk])
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits, _ = model(inputs.to(device), None, lengths.to(device))  # [b, K]
        for i, row in zip(chunk, logits.float().cpu()):
            out[i] = row
    model.train(was_training)
    return torch.stack(out)


def confusion_matrix(predicted: torch.Tensor, true: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, K] counts: row = true label, column = predicted label."""
    return torch.bincount(true * num_classes + predicted, minlength=num_classes * num_classes).view(num_classes,
                                                                                                     num_classes)


def accuracy_and_macro_f1(confusion: torch.Tensor) -> tuple[float, float]:
    """Accuracy, and F1 averaged over the labels present in the split's true or predicted labels.

    Like scikit-learn's f1_score(average="macro"): a label neither present nor predicted is left
    out rather than counted as 0 (or 1).
    """
    c = confusion.double()
    tp, support, predicted = c.diagonal(), c.sum(dim=1), c.sum(dim=0)
    present = (support + predicted) > 0
    f1 = torch.where(present, 2 * tp / (support + predicted).clamp(min=1), torch.zeros_like(tp))
    accuracy = float(tp.sum() / c.sum().clamp(min=1))
    macro_f1 = float(f1[present].mean()) if bool(present.any()) else 0.0
    return accuracy, macro_f1


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           num_classes: int) -> tuple[dict[str, float], list[list[int]]]:
    """({"loss", "accuracy", "macro_f1"}, confusion matrix as nested lists) of logits [N, K] vs labels [N]."""
    loss = float(F.cross_entropy(logits, labels))
    confusion = confusion_matrix(logits.argmax(dim=1), labels, num_classes)
    accuracy, macro_f1 = accuracy_and_macro_f1(confusion)
    return {"loss": loss, "accuracy": accuracy, "macro_f1": macro_f1}, confusion.tolist()


def majority_baseline(encoder: Encoder, labels: torch.Tensor) -> dict[str, float]:
    """What always answering the training split's most frequent label scores on `labels`.

    Also `prior_loss`: the cross-entropy of predicting the training label frequencies, the loss
    to beat.
    """
    counts = torch.tensor(encoder.train_counts, dtype=torch.float64)
    majority = int(counts.argmax())  # ties: the first label in sorted order
    k = len(counts)
    predicted = torch.full_like(labels, majority)
    accuracy, macro_f1 = accuracy_and_macro_f1(confusion_matrix(predicted, labels, k))
    prior = counts / counts.sum()
    prior_loss = float(-prior.log()[labels].mean()) if len(labels) else math.nan
    return {"majority_accuracy": accuracy, "majority_macro_f1": macro_f1, "prior_loss": prior_loss}


def confusion_markdown(labels: list[str], matrix: list[list[int]]) -> str:
    """A markdown table, rows = true label, columns = predicted, padded to line up as plain text too."""
    head = ["true \\ predicted"] + [str(label) for label in labels]
    rows = [[str(label)] + [str(n) for n in row] for label, row in zip(labels, matrix)]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


# ---------------------------------------------------------------------------------------------
# grutrain eval / predict
# ---------------------------------------------------------------------------------------------

def _stored_state(payload: dict) -> dict:
    state = payload.get(STATE_KEY)
    if not isinstance(state, dict) or not isinstance(state.get("encoder"), dict):
        raise GrutrainError("the checkpoint is damaged: it has no classify state (labels, vocabulary, normalisation)")
    encoder = state["encoder"]
    if not isinstance(encoder.get("labels"), list) or not encoder["labels"] or encoder.get("kind") not in ("text",
                                                                                                         "numeric"):
        raise GrutrainError("the checkpoint is damaged: its classify state has no label list")
    return state


def model_for_checkpoint(payload: dict, cfg) -> SequenceModel:
    try:
        encoder = Encoder(_stored_state(payload)["encoder"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GrutrainError(f"the checkpoint is damaged: its classify state is incomplete ({exc})") from None
    return build_classifier(encoder, cfg)


def _read_for_model(encoder: Encoder, cfg, path, require_labels: bool, what: str) -> Examples:
    examples = read_examples(path, file_format(path, cfg.data.format), label_column=cfg.data.label_column,
                             lowercase=cfg.data.lowercase, require_labels=require_labels, what=what)
    encoder.check_fits(examples)
    return examples


def evaluate_checkpoint(payload: dict, model, cfg, split: str, data_path, device) -> dict:
    """Metrics of a trained model on its own held-out split, or on every example of another file."""
    encoder = Encoder(_stored_state(payload)["encoder"])
    if data_path is not None:
        examples = _read_for_model(encoder, cfg, data_path, require_labels=True, what="--data")
        data, name = Split.of(encoder.encode(examples), encoder.label_ids(examples)), str(data_path)
    else:
        stored = _stored_state(payload).get("eval_examples", {}).get(split)
        data, name = (Split.unpacked(stored) if stored is not None else load_classify_data(
            cfg.data, cfg.train.seed, encoder.state()).splits[split]), split
    if not len(data):
        raise GrutrainError(f"the {name} split has no examples; nothing to evaluate (try --split val or --data FILE)")
    logits = class_logits(model, data.xs, device)
    metrics, confusion = classification_metrics(logits, data.ys, len(encoder.labels))
    baseline = majority_baseline(encoder, data.ys)
    return {"split": name, "examples": len(data), **metrics,
            **{f"baseline/{k}": v for k, v in baseline.items()},
            "confusion_matrix": {"labels": encoder.labels, "matrix": confusion}}


def predict(payload: dict, model, cfg, input_path, device) -> list[dict]:
    """One row per example: {"index", "y" (when the file has labels), "label", "probabilities"}."""
    encoder = Encoder(_stored_state(payload)["encoder"])
    examples = _read_for_model(encoder, cfg, input_path, require_labels=False, what="--input")
    for y, where in zip(examples.ys, examples.where):
        if y is not None and y not in encoder.label_index:
            raise GrutrainError(f"{examples.source}: {where}: label {y!r} was never seen in training; "
                                f"the model knows {', '.join(map(repr, encoder.labels))}")
    probabilities = class_logits(model, encoder.encode(examples), device).softmax(dim=1)  # [N, K]
    # Every row gets "y" when any example has a label, so CSV rows share one header.
    echo = any(y is not None for y in examples.ys)
    rows = []
    for i, (y, p) in enumerate(zip(examples.ys, probabilities)):
        row = {"index": i}
        if echo:
            row["y"] = y
        row["label"] = encoder.labels[int(p.argmax())]
        row["probabilities"] = {label: round(float(q), 6) for label, q in zip(encoder.labels, p)}
        rows.append(row)
    return rows
