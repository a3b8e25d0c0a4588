"""Sequence classification: a label for each sequence (text, or a univariate/multivariate series).

The model reads each example to its own end (right-padded batches with `lengths`, so padding
never changes a prediction; `model.bidirectional` reads it both ways) and a linear head on the
final state gives one logit per label. Metrics: cross-entropy, accuracy and macro-F1, next to
the majority-class baseline on the same split, and a confusion matrix.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from grutrain.data.batching import ShuffledBatches
from grutrain import plots
from grutrain.tasks.classify.examples import Encoder, Split, load_classify_data, pad_batch
from grutrain.tasks.classify.files import TEXT, Examples, file_format, read_examples
from grutrain.data.digest import DATA_KEY, check_same_data, data_record, file_digest
from grutrain.errors import GrutrainError
from grutrain.model import SequenceModel
from grutrain.runtime import evaluating
from grutrain.tasks.export_io import PaddedSequenceIO
from grutrain.tasks.protocols import Split as SplitName

EVAL_BATCH = 256  # examples per forward pass when evaluating (no gradients: larger is faster)


def _load_and_check(cfg, state: dict | None):
    """(the data of data.path, its record); on resume (state) the data must be the checkpoint's
    (train.allow_data_change continues on other data), checked before the saved encoding is applied."""
    digest = file_digest(cfg.data.path) if Path(cfg.data.path).is_file() else None
    try:
        data = load_classify_data(cfg.data, cfg.train.seed, state["encoder"] if state else None)
    except GrutrainError:
        if state is not None and digest is not None:  # a label or length the saved encoding lacks: say why
            check_same_data(state, data_record([digest], state.get(DATA_KEY, {}).get("splits", {})),
                            cfg.train.allow_data_change)
        raise
    record = data_record([digest] if digest else [], {name: len(split) for name, split in data.splits.items()})
    if state is not None:
        check_same_data(state, record, cfg.train.allow_data_change)
    return data, record


class ClassifyTask:
    name = "classify"
    sampler = None
    carries_state = False
    items_per_batch = 0

    def __init__(self, cfg, encoder: Encoder, splits: dict[str, Split | None]):
        self.cfg = cfg
        self.encoder = encoder
        self.splits = splits  # "val", "test" (and "train" when training); None: not in the checkpoint
        self._confusion: dict[str, list[list[int]]] = {}
        self.data_record: dict | None = None  # fit: what it trains on (data/digest.py)

    @classmethod
    def from_config(cls, cfg, *, rows_per_step: int, saved: dict | None = None, rank: int = 0,
                    world_size: int = 1) -> "ClassifyTask":
        state = _stored_state(saved["task_state"]) if saved else None
        # On resume the label set, vocabulary and normalisation come from the checkpoint, not a refit.
        data, record = _load_and_check(cfg, state)
        task = cls(cfg, data.encoder, dict(data.splits))
        task.data_record = record
        if not len(task.splits["val"]):
            raise GrutrainError(f"the validation split is empty ({len(task.splits['train'])} examples in all); "
                                "raise data.val_fraction or give more examples")
        train = task.splits["train"]
        task.sampler = ShuffledBatches(len(train), rows_per_step, seed=cfg.train.seed + 1, make_batch=train.batch,
                                       rank=rank, world_size=world_size)
        # Throughput counts time steps (characters, series values per step), not padding.
        task.items_per_batch = max(1, round(task.sampler.global_batch * float(train.lengths.float().mean())))
        return task

    @classmethod
    def from_checkpoint(cls, cfg, task_state: dict) -> "ClassifyTask":
        state = _stored_state(task_state)
        try:
            encoder = Encoder(state["encoder"])
        except (KeyError, TypeError, ValueError) as exc:
            raise GrutrainError(f"the checkpoint is damaged: its classify state is incomplete ({exc})") from None
        stored = state.get("eval_examples")
        try:
            splits = {s: Split.unpacked(stored[s]) if isinstance(stored, dict) and stored.get(s) is not None else None
                      for s in ("val", "test")}
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):
            raise GrutrainError("the checkpoint is damaged: its held-out examples cannot be read; pass --data") from None
        return cls(cfg, encoder, splits)

    def build_model(self) -> SequenceModel:
        return build_classifier(self.encoder, self.cfg)

    def loss(self, model, batch, hidden):
        inputs, lengths, labels = batch  # [B, T(, C)], [B], [B]
        logits, _ = model(inputs, None, lengths)  # [B, K]
        return F.cross_entropy(logits.float(), labels), None

    def has_split(self, split: str) -> bool:
        return self.splits.get(split) is not None and len(self.splits[split]) > 0

    def data(self, split: SplitName) -> tuple[Split, str]:
        """(examples, name) of a held-out split or of every example of another file."""
        if isinstance(split, Path):
            examples = _read_for_model(self.encoder, self.cfg, split, require_labels=True, what="--data")
            return Split.of(self.encoder.encode(examples), self.encoder.label_ids(examples)), str(split)
        data = self.splits.get(split)
        if data is None:  # not stored in the checkpoint: read and split data.path again
            data = self.splits[split] = load_classify_data(self.cfg.data, self.cfg.train.seed,
                                                           self.encoder.state()).splits[split]
        return data, split

    def _logits(self, model, split: SplitName, device, amp_dtype=None) -> tuple[torch.Tensor, Split, str]:
        data, name = self.data(split)
        if not len(data):
            raise GrutrainError(f"the {name} split has no examples; nothing to evaluate (try --split val or --data FILE)")
        return class_logits(model, data.xs, device, amp_dtype), data, name

    def evaluate(self, model, split: SplitName, device, amp_dtype=None, *,
                 whole: bool = True) -> dict[str, float]:  # whole: always (no cap here)
        logits, data, name = self._logits(model, split, device, amp_dtype)
        metrics, confusion = classification_metrics(logits, data.ys, len(self.encoder.labels))
        self._confusion[name] = confusion
        return metrics

    def report(self, model, split: SplitName, device) -> dict:
        logits, data, name = self._logits(model, split, device)
        metrics, confusion = classification_metrics(logits, data.ys, len(self.encoder.labels))
        baseline = majority_baseline(self.encoder, data.ys)
        return {"split": name, "examples": len(data), **metrics,
                **{f"baseline/{k}": v for k, v in baseline.items()},
                "confusion_matrix": {"labels": self.encoder.labels, "matrix": confusion}}

    def baselines(self) -> dict[str, float]:
        out = {}
        for split in ("val", "test"):
            if self.has_split(split):
                scores = majority_baseline(self.encoder, self.splits[split].ys)
                out.update({f"{split}/{k}": v for k, v in scores.items()})
        return out

    def state(self) -> dict:
        # The held-out splits travel with the model, so `grutrain eval` needs only the checkpoint.
        state = {"encoder": self.encoder.state(), "eval_examples": {s: self.splits[s].packed() for s in ("val", "test")}}
        if self.data_record is not None:  # what it trained on, for --resume to compare
            state[DATA_KEY] = self.data_record
        return state

    def on_evaluation(self, model, device, step: int, logger) -> None:
        if "val" in self._confusion:
            logger.text(step, "confusion_matrix", confusion_markdown(self.encoder.labels, self._confusion["val"]))
            if plots.have_matplotlib():  # the plot extra; without it the text table stands alone
                figure = plots.confusion_matrix_figure(self.encoder.labels, self._confusion["val"])
                logger.figure(step, "val/confusion_matrix", figure)

    def final_extras(self, model, device) -> dict:
        split = "test" if self.has_split("test") else "val"
        if split not in self._confusion:
            self.evaluate(model, split, device)
        return {"confusion_matrix": {"split": split, "labels": self.encoder.labels,
                                     "matrix": self._confusion[split]}}

    def figure(self, model, split: SplitName, device):
        result = self.report(model, split, device)
        matrix = result["confusion_matrix"]
        return plots.confusion_matrix_figure(matrix["labels"], matrix["matrix"],
                                             title=f"{result['split']}: confusion matrix")

    @staticmethod
    def export_io(model) -> nn.Module:
        return PaddedSequenceIO(model, "logits")  # examples of different lengths share a batch only with their lengths

    def usage(self) -> dict:
        state = self.encoder.state()
        out = {"labels": state.get("labels"), "kind": state.get("kind"), "max_len": state.get("max_len"),
               "lowercase": self.cfg.data.lowercase, "postprocessing": "softmax(logits[b]) over `labels`"}
        if state.get("kind") == TEXT:
            out["vocab"] = state.get("vocab")
            out["preprocessing"] = ("inputs: character ids in `vocab` (0 = <unk>; lowercased first when "
                                    "`lowercase` is true; at most max_len characters), right-padded with 0; "
                                    "lengths: each example's own length")
        else:
            out["normalisation"] = {"mean": state.get("mean"), "std": state.get("std"), "channels": state.get("channels")}
            out["preprocessing"] = ("inputs: (value - mean) / std per channel, missing values 0, at most max_len "
                                    "steps, right-padded with 0; lengths: each example's own length")
        return out

    def predict(self, model, input_path: Path, device) -> list[dict]:
        """One row per example: {"index", "y" (when the file has labels), "label", "probabilities"}."""
        encoder = self.encoder
        examples = _read_for_model(encoder, self.cfg, input_path, require_labels=False, what="--input")
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


def build_classifier(encoder: Encoder, cfg) -> SequenceModel:
    if encoder.kind == TEXT:
        return SequenceModel(cfg.model, len(encoder.labels), vocab_size=len(encoder.vocab))
    return SequenceModel(cfg.model, len(encoder.labels), input_size=encoder.channels)


def class_logits(model, xs: list[torch.Tensor], device, amp_dtype=None) -> torch.Tensor:
    """Logits [N, K] (float32, on the CPU) of every example, in the order given.

    Batches are formed by length so they carry little padding; lengths make the order irrelevant
    to the results.
    """
    order = sorted(range(len(xs)), key=lambda i: len(xs[i]))
    out = [None] * len(xs)
    with evaluating(model):
        for start in range(0, len(order), EVAL_BATCH):
            chunk = order[start : start + EVAL_BATCH]
            inputs, lengths = pad_batch([xs[i] for i in chunk])
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits, _ = model(inputs.to(device), None, lengths.to(device))  # [b, K]
            for i, row in zip(chunk, logits.float().cpu()):
                out[i] = row
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


def _stored_state(task_state: dict) -> dict:
    if isinstance(task_state.get("classify"), dict):  # version 1 nested this task's state under its name
        task_state = {**task_state, **task_state["classify"]}
    encoder = task_state.get("encoder")
    if not isinstance(encoder, dict):
        raise GrutrainError("the checkpoint is damaged: it has no classify state (labels, vocabulary, normalisation)")
    if not isinstance(encoder.get("labels"), list) or not encoder["labels"] or encoder.get("kind") not in ("text",
                                                                                                         "numeric"):
        raise GrutrainError("the checkpoint is damaged: its classify state has no label list")
    return task_state


def _read_for_model(encoder: Encoder, cfg, path, require_labels: bool, what: str) -> Examples:
    examples = read_examples(path, file_format(path, cfg.data.format), label_column=cfg.data.label_column,
                             lowercase=cfg.data.lowercase, require_labels=require_labels, what=what)
    encoder.check_fits(examples)
    return examples
