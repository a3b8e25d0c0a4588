"""Language modelling: predict token t+1 from the tokens up to t (char, word, bytes or BPE tokens)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from grutrain.data import lm_corpus
from grutrain.data.text import WindowSampler, bigram_perplexity, long_tensor
from grutrain.data.tokenizers import tokenizer_from_checkpoint
from grutrain.errors import GrutrainError
from grutrain.evaluate import evaluate_lm
from grutrain.model import LanguageModel

BASELINE_MAX_TOKENS = 10_000_000  # the bigram baseline reads at most this much of each split
BASELINE_MAX_VOCAB = 8192  # and needs a V x V table


class LanguageModelTask:
    name = "lm"

    def __init__(self, cfg, saved: dict | None, rank: int, world_size: int):
        self.cfg = cfg
        # The ids are memory-mapped from the token cache: resident memory does not grow with the corpus.
        self.corpus = lm_corpus.open_training_corpus(cfg.data, saved, rank, wait_s=cfg.train.dist_timeout_s)
        self.tokenizer = self.corpus.tokenizer
        self.vocab_size = self.tokenizer.vocab_size
        if len(self.corpus.split("val")) < 2:
            raise GrutrainError(f"the validation split has {len(self.corpus.split('val'))} tokens; raise "
                                "data.val_fraction or use a longer data file")
        self.sampler = WindowSampler(self.corpus.split("train"), cfg.data.seq_len, cfg.train.batch_size,
                                     cfg.data.sampling, seed=cfg.train.seed + 1, rank=rank, world_size=world_size)
        self.carries_state = cfg.data.sampling == "sequential"
        self.items_per_batch = self.sampler.global_batch * cfg.data.seq_len  # tokens

    def build_model(self) -> LanguageModel:
        return LanguageModel(self.vocab_size, self.cfg.model)

    def loss(self, model, batch, hidden):
        inputs, targets = batch  # [B, T] each
        logits, hidden = model(inputs, hidden)  # [B, T, V]
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()), hidden

    def has_split(self, split: str) -> bool:
        return len(self.corpus.split(split)) > 1

    def evaluate(self, model, split: str, device, amp_dtype=None, whole: bool = False) -> dict[str, float]:
        """In training: at most train.eval_tokens (a fixed seeded subset); whole=True: all of the split."""
        cap = None if whole else self.cfg.train.eval_tokens
        return evaluate_lm(model, self.corpus.split(split), self.cfg.data.seq_len, self.cfg.train.batch_size, device,
                           amp_dtype, max_tokens=cap, seed=self.cfg.train.seed,
                           chars_per_token=self.corpus.chars_per_token(split))

    def baselines(self) -> dict[str, float]:
        if self.vocab_size > BASELINE_MAX_VOCAB:
            return {}
        train, val = (self.corpus.split(name)[:BASELINE_MAX_TOKENS] for name in ("train", "val"))
        return {"val/bigram_perplexity": bigram_perplexity(train, val, self.vocab_size)}

    def checkpoint_state(self) -> dict:
        # Small held-out splits travel with the model, so `grutrain eval` needs only the checkpoint;
        # large ones are recorded by the data file's path, size and hash.
        return lm_corpus.checkpoint_state(self.corpus, self.cfg.data)

    def on_evaluation(self, model, device, step: int, metrics) -> None:
        text = self._sample(model, device)
        if text:
            metrics.text(step, "sample", text)
        from grutrain import plots

        if plots.have_matplotlib():  # the plot extra; without it TensorBoard just has no figure
            val = self.corpus.split("val")[: self.cfg.train.eval_tokens or None]
            losses = plots.position_losses(model, long_tensor(val), self.cfg.data.seq_len, device)
            plots.log_figure(metrics, step, "val/loss_by_position", plots.per_position_loss_figure(losses))

    def final_extras(self, model, device) -> dict:
        return {"sample": self._sample(model, device)}

    def _sample(self, model, device) -> str:
        cfg = self.cfg
        if cfg.train.sample_length == 0:
            return ""
        from grutrain.sample import generate

        return generate(model, self.tokenizer, cfg.train.sample_prompt, cfg.train.sample_length,
                        lowercase=cfg.data.lowercase, temperature=0.8, seed=cfg.train.seed, device=device)


def build(cfg, saved, rank, world_size) -> LanguageModelTask:
    return LanguageModelTask(cfg, saved, rank, world_size)


def model_for_checkpoint(payload: dict, cfg) -> LanguageModel:
    if not isinstance(payload.get("vocab"), list) or not all(isinstance(t, str) for t in payload["vocab"]):
        raise GrutrainError("the checkpoint is damaged: it has no vocabulary (a list of strings)")
    if tokenizer_from_checkpoint(payload).vocab_size != len(payload["vocab"]):
        raise GrutrainError("the checkpoint is damaged: its vocabulary and its tokeniser differ in size")
    return LanguageModel(len(payload["vocab"]), cfg.model)


def evaluate_checkpoint(payload: dict, model, cfg, split: str, data_path, device) -> dict:
    """Metrics of a trained model on its whole held-out split, or on all of another text file."""
    tokens, split_name, chars_per_token = lm_corpus.held_out(payload, cfg, split, data_path)
    if len(tokens) < 2:
        raise GrutrainError(f"the {split_name} split has {len(tokens)} tokens; nothing to evaluate")
    vocab_size = tokenizer_from_checkpoint(payload).vocab_size
    if int(np.min(tokens)) < 0 or int(np.max(tokens)) >= vocab_size:
        raise GrutrainError(f"the checkpoint is damaged: its {split} tokens are outside its vocabulary; "
                            "evaluate another checkpoint or pass --data")
    metrics = evaluate_lm(model, tokens, cfg.data.seq_len, cfg.train.batch_size, device,
                          chars_per_token=chars_per_token)
    return {"split": split_name, "tokens": len(tokens) - 1, **metrics}
