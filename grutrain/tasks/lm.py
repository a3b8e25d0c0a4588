"""Character- (or word-) level language modelling: predict token t+1 from the tokens up to t.

Evaluation reads a split as EVAL_STREAMS parallel streams, carrying the state along each, so
every prediction has the text before it as context. The number of streams is fixed, not the
training batch: the loss logged during fit is the loss `grutrain eval` prints for the same
checkpoint, whatever the batch size, accumulation or number of processes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.nn import functional as F

from grutrain import plots
from grutrain.data.text import (Vocabulary, WindowSampler, bigram_perplexity, detokenize, eval_streams,
                                load_text_splits, read_text_file, tokenize)
from grutrain.errors import GrutrainError
from grutrain.model import SequenceModel
from grutrain.runtime import evaluating
from grutrain.tasks.base import Split

EVAL_STREAMS = 64  # parallel streams an evaluated split is laid out in
SPLITS = ("val", "test")


class LanguageModelTask:
    name = "lm"
    predicts = False  # grutrain predict: outputs for new inputs
    sampler = None
    carries_state = False
    items_per_batch = 0

    def __init__(self, cfg, vocab: Vocabulary, held_out: dict[str, torch.Tensor] | None):
        self.cfg = cfg
        self.vocab = vocab
        self.held_out = held_out  # {"val": [N] ids, "test": [N] ids}; None: the checkpoint's were damaged
        self.train_tokens: torch.Tensor | None = None

    @classmethod
    def from_config(cls, cfg, *, rows_per_step: int, saved: dict | None = None, rank: int = 0,
                    world_size: int = 1) -> "LanguageModelTask":
        vocab = _stored_vocab(saved["task_state"]) if saved else None  # a resumed run keeps its vocabulary
        splits = load_text_splits(cfg.data, vocab=vocab)
        if len(splits.val) < 2:
            raise GrutrainError(f"the validation split has {len(splits.val)} tokens; raise data.val_fraction "
                                "or use a longer data file")
        task = cls(cfg, splits.vocab, {"val": splits.val, "test": splits.test})
        task.train_tokens = splits.train
        task.sampler = WindowSampler(splits.train, cfg.data.seq_len, rows_per_step, cfg.data.sampling,
                                     seed=cfg.train.seed + 1, rank=rank, world_size=world_size)
        task.carries_state = cfg.data.sampling == "sequential"
        task.items_per_batch = task.sampler.global_batch * cfg.data.seq_len  # tokens
        return task

    @classmethod
    def from_checkpoint(cls, cfg, task_state: dict) -> "LanguageModelTask":
        vocab = _stored_vocab(task_state)
        stored = task_state.get("eval_tokens")
        if stored is None:  # written without its held-out text: read it again from data.path
            splits = load_text_splits(cfg.data, vocab=vocab)
            return cls(cfg, vocab, {"val": splits.val, "test": splits.test})
        if not isinstance(stored, dict) or not all(_is_token_tensor(stored.get(s)) for s in SPLITS):
            return cls(cfg, vocab, None)  # sample and export need no held-out text; eval says what is wrong
        return cls(cfg, vocab, {split: stored[split].long() for split in SPLITS})

    def build_model(self) -> SequenceModel:
        return SequenceModel(self.cfg.model, len(self.vocab), vocab_size=len(self.vocab), per_step=True)

    def loss(self, model, batch, hidden):
        inputs, targets = batch  # [B, T] each
        logits, hidden = model(inputs, hidden)  # [B, T, V]
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()), hidden

    def has_split(self, split: str) -> bool:
        return self.held_out is not None and len(self.held_out[split]) > 1

    def tokens(self, split: Split) -> tuple[torch.Tensor, str]:
        """(token ids, name) of a held-out split or of a whole text file."""
        if isinstance(split, Path):
            text = read_text_file(split)
            return self.vocab.encode(tokenize(text, self.cfg.data.tokenizer, self.cfg.data.lowercase)), str(split)
        if self.held_out is None:
            raise GrutrainError("the checkpoint is damaged: its held-out tokens are not two 1-D integer tensors "
                                "(val, test); evaluate another checkpoint or pass --data")
        tokens = self.held_out[split]
        if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= len(self.vocab)):
            raise GrutrainError(f"the checkpoint is damaged: its {split} tokens are outside its vocabulary; "
                                "evaluate another checkpoint or pass --data")
        return tokens, split

    def evaluate(self, model, split: Split, device, amp_dtype=None) -> dict[str, float]:
        tokens, name = self.tokens(split)
        if len(tokens) < 2:
            raise GrutrainError(f"the {name} split has {len(tokens)} tokens; nothing to evaluate")
        return evaluate_lm(model, tokens, self.cfg.data.seq_len, device, amp_dtype)

    def report(self, model, split: Split, device) -> dict:
        tokens, name = self.tokens(split)
        return {"split": name, "tokens": len(tokens) - 1, **self.evaluate(model, split, device)}

    def baselines(self) -> dict[str, float]:
        return {"val/bigram_perplexity": bigram_perplexity(self.train_tokens, self.held_out["val"], len(self.vocab))}

    def state(self) -> dict:
        return {
            "vocab": self.vocab.tokens,
            # The held-out splits travel with the model, so `grutrain eval` needs only the checkpoint.
            "eval_tokens": {split: self.held_out[split].to(torch.int32) for split in SPLITS},
        }

    def on_evaluation(self, model, device, step: int, logger) -> None:
        text = self._sample_during_fit(model, device)
        if text:
            logger.text(step, "sample", text)
        if plots.have_matplotlib():  # the plot extra; without it TensorBoard just has no figure
            losses = position_losses(model, self.held_out["val"], self.cfg.data.seq_len, device)
            logger.figure(step, "val/loss_by_position", plots.per_position_loss_figure(losses))

    def final_extras(self, model, device) -> dict:
        return {"sample": self._sample_during_fit(model, device)}

    def figure(self, model, split: Split, device):
        tokens, name = self.tokens(split)
        seq_len = self.cfg.data.seq_len
        per_position = position_losses(model, tokens, seq_len, device)
        carried = evaluate_lm(model, tokens, seq_len, device)["loss"]
        unit = "character" if self.cfg.data.tokenizer == "char" else "word"
        name = Path(name).name if isinstance(split, Path) else name
        return plots.per_position_loss_figure(per_position, carried, unit=unit,
                                              title=f"{name}: loss by position in windows of {seq_len} {unit}s")

    def predict(self, model, input_path: Path, device) -> list[dict]:
        raise GrutrainError("a language model has no predict; use grutrain sample (or grutrain eval)")

    def usage(self) -> dict:
        data = self.cfg.data
        return {"vocab": list(self.vocab.tokens), "tokenizer": data.tokenizer, "lowercase": data.lowercase,
                "preprocessing": "tokens: ids in `vocab` (0 = <unk>) of the text split by `tokenizer` "
                                 "(char: every character; word: \\w+ runs and single punctuation marks), "
                                 "lowercased first when `lowercase` is true; hidden: zeros to start, then the "
                                 "previous call's hidden_out to continue a text",
                "postprocessing": "softmax(logits[:, t]) is the distribution of the token after position t"}

    def sample(self, model, prompt: str, length: int, *, temperature: float = 1.0, top_k: int | None = None,
               seed: int | None = None, device: torch.device = torch.device("cpu")) -> str:
        """The prompt followed by `length` generated tokens; the same seed gives the same text."""
        data = self.cfg.data
        prompt_tokens = tokenize(prompt, data.tokenizer, data.lowercase)
        generated = generate(model, self.vocab.encode(prompt_tokens), length, temperature=temperature, top_k=top_k,
                             seed=seed, device=device)
        return detokenize(prompt_tokens + self.vocab.decode(generated), data.tokenizer)

    def _sample_during_fit(self, model, device) -> str:
        settings = self.cfg.sample
        if settings.length == 0:
            return ""
        return self.sample(model, settings.prompt, settings.length, temperature=0.8, seed=self.cfg.train.seed,
                           device=device)


def _stored_vocab(task_state: dict) -> Vocabulary:
    vocab = task_state.get("vocab")
    if not isinstance(vocab, list) or not vocab or not all(isinstance(t, str) for t in vocab):
        raise GrutrainError("the checkpoint is damaged: it has no vocabulary (a list of strings)")
    return Vocabulary(vocab)


def _is_token_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 1 and not value.is_floating_point() \
        and not value.is_complex() and value.dtype != torch.bool


def evaluate_lm(model, tokens: torch.Tensor, seq_len: int, device: torch.device,
                autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean next-token loss over every token of `tokens`, carrying the hidden state along each stream."""
    total, count, hidden = 0.0, 0, None
    with evaluating(model):
        for inputs, targets, rows in eval_streams(tokens, seq_len, EVAL_STREAMS):
            inputs, targets = inputs.to(device), targets.to(device)
            hidden = hidden[:, rows] if hidden is not None else None
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits, hidden = model(inputs, hidden)
            total += float(F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum"))
            count += targets.numel()
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bpc": loss / math.log(2)}


def position_losses(model, tokens: torch.Tensor, seq_len: int, device, batch_size: int = 64) -> list[float]:
    """Mean next-token loss at each position 1..seq_len of the non-overlapping windows of `tokens`,
    every window read from a zero state (so position 1 has no context at all)."""
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise GrutrainError(f"the split has {len(tokens)} tokens, fewer than one window of data.seq_len={seq_len} + 1")
    inputs = tokens[: n * seq_len].view(n, seq_len)
    targets = tokens[1 : n * seq_len + 1].view(n, seq_len)
    total = torch.zeros(seq_len, dtype=torch.float64)
    with evaluating(model):
        for lo in range(0, n, batch_size):
            logits, _ = model(inputs[lo:lo + batch_size].to(device))  # [b, T, V]
            loss = F.cross_entropy(logits.float().transpose(1, 2), targets[lo:lo + batch_size].to(device),
                                   reduction="none")  # [b, T]
            total += loss.double().sum(dim=0).cpu()
    return (total / n).tolist()


def generate(model, prompt_ids: torch.Tensor, length: int, *, temperature: float = 1.0, top_k: int | None = None,
             seed: int | None = None, device: torch.device = torch.device("cpu")) -> list[int]:
    """`length` token ids sampled after `prompt_ids` ([P]; empty: start from <unk>), with temperature
    (0: always the most likely token) and top-k; the same seed gives the same ids."""
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    ids = prompt_ids if len(prompt_ids) else torch.tensor([0])
    generated: list[int] = []
    with evaluating(model):
        logits, hidden = model(ids[None].to(device))  # warm the state up on the whole prompt
        for _ in range(length):
            last = logits[0, -1].float().cpu()  # [V]
            last[0] = float("-inf")  # never emit <unk>: it stands for text the model could not learn
            if temperature <= 0:
                next_id = int(last.argmax())
            else:
                last = last / temperature
                if top_k is not None and top_k < len(last):
                    kth = torch.topk(last, top_k).values[-1]
                    last = last.masked_fill(last < kth, float("-inf"))
                next_id = int(torch.multinomial(torch.softmax(last, -1), 1, generator=generator))
            generated.append(next_id)
            logits, hidden = model(torch.tensor([[next_id]], device=device), hidden)
    return generated
