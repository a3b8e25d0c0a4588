"""Character- (or word-) level language modelling: predict token t+1 from the tokens up to t."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from grutrain.data.text import Vocabulary, WindowSampler, bigram_perplexity, load_text_splits, read_text_file, tokenize
from grutrain.errors import GrutrainError
from grutrain.evaluate import evaluate_lm
from grutrain.model import LanguageModel


class LanguageModelTask:
    name = "lm"

    def __init__(self, cfg, saved: dict | None, rank: int, world_size: int):
        self.cfg = cfg
        self.splits = load_text_splits(cfg.data, vocab=Vocabulary(saved["vocab"]) if saved else None)
        self.vocab = self.splits.vocab
        if len(self.splits.val) < 2:
            raise GrutrainError(f"the validation split has {len(self.splits.val)} tokens; raise data.val_fraction "
                                "or use a longer data file")
        self.sampler = WindowSampler(self.splits.train, cfg.data.seq_len, cfg.train.batch_size, cfg.data.sampling,
                                     seed=cfg.train.seed + 1, rank=rank, world_size=world_size)
        self.carries_state = cfg.data.sampling == "sequential"
        self.items_per_batch = self.sampler.global_batch * cfg.data.seq_len  # tokens

    def build_model(self) -> LanguageModel:
        return LanguageModel(len(self.vocab), self.cfg.model)

    def loss(self, model, batch, hidden):
        inputs, targets = batch  # [B, T] each
        logits, hidden = model(inputs, hidden)  # [B, T, V]
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()), hidden

    def has_split(self, split: str) -> bool:
        return len(getattr(self.splits, split)) > 1

    def evaluate(self, model, split: str, device, amp_dtype=None) -> dict[str, float]:
        tokens = getattr(self.splits, split)
        return evaluate_lm(model, tokens, self.cfg.data.seq_len, self.cfg.train.batch_size, device, amp_dtype)

    def baselines(self) -> dict[str, float]:
        return {"val/bigram_perplexity": bigram_perplexity(self.splits.train, self.splits.val, len(self.vocab))}

    def checkpoint_state(self) -> dict:
        return {
            "vocab": self.vocab.tokens,
            # The held-out splits travel with the model, so `grutrain eval` needs only the checkpoint.
            "eval_tokens": {"val": self.splits.val.to(torch.int32), "test": self.splits.test.to(torch.int32)},
        }

    def on_evaluation(self, model, device, step: int, metrics) -> None:
        text = self._sample(model, device)
        if text:
            metrics.text(step, "sample", text)
        from grutrain import plots

        if plots.have_matplotlib():  # the plot extra; without it TensorBoard just has no figure
            losses = plots.position_losses(model, self.splits.val, self.cfg.data.seq_len, device)
            plots.log_figure(metrics, step, "val/loss_by_position", plots.per_position_loss_figure(losses))

    def final_extras(self, model, device) -> dict:
        return {"sample": self._sample(model, device)}

    def _sample(self, model, device) -> str:
        cfg = self.cfg
        if cfg.train.sample_length == 0:
            return ""
        from grutrain.sample import generate

        return generate(model, self.vocab, cfg.train.sample_prompt, cfg.train.sample_length,
                        tokenizer=cfg.data.tokenizer, lowercase=cfg.data.lowercase, temperature=0.8,
                        seed=cfg.train.seed, device=device)


def build(cfg, saved, rank, world_size) -> LanguageModelTask:
    return LanguageModelTask(cfg, saved, rank, world_size)


def model_for_checkpoint(payload: dict, cfg) -> LanguageModel:
    if not isinstance(payload.get("vocab"), list) or not all(isinstance(t, str) for t in payload["vocab"]):
        raise GrutrainError("the checkpoint is damaged: it has no vocabulary (a list of strings)")
    return LanguageModel(len(payload["vocab"]), cfg.model)


def evaluate_checkpoint(payload: dict, model, cfg, split: str, data_path, device) -> dict:
    """Metrics of a trained model on its own held-out split, or on all of another text file."""
    vocab = Vocabulary(payload["vocab"])
    if data_path is not None:
        tokens = vocab.encode(tokenize(read_text_file(data_path), cfg.data.tokenizer, cfg.data.lowercase))
        split_name = str(data_path)
    elif "eval_tokens" in payload:
        tokens, split_name = payload["eval_tokens"][split].long(), split
    else:
        tokens, split_name = getattr(load_text_splits(cfg.data, vocab=vocab), split), split
    if len(tokens) < 2:
        raise GrutrainError(f"the {split_name} split has {len(tokens)} tokens; nothing to evaluate")
    if int(tokens.min()) < 0 or int(tokens.max()) >= len(vocab):
        raise GrutrainError(f"the checkpoint is damaged: its {split} tokens are outside its vocabulary; "
                            "evaluate another checkpoint or pass --data")
    metrics = evaluate_lm(model, tokens, cfg.data.seq_len, cfg.train.batch_size, device)
    return {"split": split_name, "tokens": len(tokens) - 1, **metrics}
