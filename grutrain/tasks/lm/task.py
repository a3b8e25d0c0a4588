"""Language modelling: predict token t+1 from the tokens up to t (char, word, bytes or BPE tokens).

The text is tokenised once into a memory-mapped token cache (token_cache.py), so resident
memory does not grow with the corpus. Evaluation reads a split as EVAL_STREAMS parallel streams,
carrying the state along each, so every prediction has the text before it as context. The number
of streams is fixed, not the training batch: the loss logged during fit is the loss `grutrain eval`
prints for the same checkpoint, whatever the batch size, accumulation or number of processes.
Fit's evaluations before the last may read only a fixed, seeded subset of train.eval_tokens
tokens; the last one, the test metrics and `grutrain eval` read the whole split.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from grutrain import plots
from grutrain.tasks.lm import corpus as lm_corpus
from grutrain.tasks.lm import token_cache
from grutrain.tasks.lm.text import WindowSampler, bigram_perplexity, eval_streams, long_tensor
from grutrain.tasks.lm.tokenizers import tokenizer_from_task_state
from grutrain.errors import GrutrainError
from grutrain.model import SequenceModel
from grutrain.runtime import evaluating
from grutrain.tasks.export_io import LanguageModelIO
from grutrain.tasks.protocols import Split

EVAL_STREAMS = 64  # parallel streams an evaluated split is laid out in
SPLITS = ("val", "test")
BASELINE_MAX_TOKENS = 10_000_000  # the bigram baseline reads at most this much of each split
BASELINE_MAX_VOCAB = 8192  # and needs a V x V table


class LanguageModelTask:
    name = "lm"
    sampler = None
    carries_state = False
    items_per_batch = 0

    def __init__(self, cfg, tokenizer, held_out: dict | None, chars: dict | None, stored: dict | None = None):
        self.cfg = cfg
        self.tokenizer = tokenizer  # tokenizers/: char, word, bytes or bpe; travels in task_state
        # {"val": ids, "test": ids} (memmaps of the cache in fit, tensors from a checkpoint); None: not
        # inside the checkpoint (recorded by place, or damaged): tokens() finds or refuses them
        self.held_out = held_out
        self.chars = chars  # characters in each held-out split (bpc is per character); None: not recorded
        self.stored = stored  # the task_state this task was opened from (None in fit)
        self.corpus = None  # fit: the memory-mapped token cache
        self.train_tokens = None
        self.source_path: Path | None = None  # --data: where a checkpoint's recorded data file is now

    @classmethod
    def from_config(cls, cfg, *, rows_per_step: int, saved: dict | None = None, rank: int = 0,
                    world_size: int = 1) -> "LanguageModelTask":
        check_prompt(cfg.sample.prompt, cfg.sample.length)  # before the corpus is read, not after training
        # The ids are memory-mapped from the token cache: resident memory does not grow with the corpus.
        corpus = lm_corpus.open_training_corpus(cfg.data, saved["task_state"] if saved else None, rank,
                                                wait_s=cfg.train.dist_timeout_s,
                                                allow_change=cfg.train.allow_data_change)
        if len(corpus.split("val")) < 2:
            raise GrutrainError(f"the validation split has {len(corpus.split('val'))} tokens; raise "
                                "data.val_fraction or use a longer data file")
        task = cls(cfg, corpus.tokenizer, {split: corpus.split(split) for split in SPLITS},
                   {split: corpus.chars[split] for split in SPLITS})
        task.corpus, task.train_tokens = corpus, corpus.split("train")
        task.sampler = WindowSampler(task.train_tokens, cfg.data.seq_len, rows_per_step, cfg.data.sampling,
                                     seed=cfg.train.seed + 1, rank=rank, world_size=world_size)
        task.carries_state = cfg.data.sampling == "sequential"
        task.items_per_batch = task.sampler.global_batch * cfg.data.seq_len  # tokens
        return task

    @classmethod
    def prepare(cls, cfg, progress: bool = True) -> dict:
        """`grutrain prepare`: the token cache of cfg.data.path, built (or found); what it holds."""
        corpus = lm_corpus.open_training_corpus(cfg.data, progress=progress)
        return {
            "cache": str(corpus.bin_path), "tokenizer": cfg.data.tokenizer, "vocab_size": corpus.tokenizer.vocab_size,
            "dtype": corpus.meta["dtype"], "tokens": corpus.meta["n_tokens"],
            "source_bytes": corpus.meta["source"]["size"],
            "splits": {name: end - start for name, (start, end) in corpus.splits.items()},
            "chars_per_token": {name: corpus.chars_per_token(name) for name in corpus.splits},
        }

    @classmethod
    def list_caches(cls, cache_dir: str | None = None) -> list[dict]:
        """`grutrain cache`: the token caches in cache_dir (default: the user's cache directory)."""
        return token_cache.list_caches(cache_dir)

    @classmethod
    def remove_caches(cls, ids: list[str], cache_dir: str | None = None, everything: bool = False) -> list[dict]:
        return token_cache.remove_caches(ids, cache_dir, everything)

    @classmethod
    def from_checkpoint(cls, cfg, task_state: dict) -> "LanguageModelTask":
        tokenizer = tokenizer_from_task_state(task_state, cfg.data.tokenizer)
        chars = task_state.get("eval_chars")
        stored = task_state.get("eval_tokens")
        held_out = None  # sample and export need no held-out text; eval finds it or says what is wrong
        if isinstance(stored, dict) and all(_is_token_tensor(stored.get(s)) for s in SPLITS):
            held_out = {split: stored[split].cpu().long() for split in SPLITS}
        return cls(cfg, tokenizer, held_out, chars, stored=task_state)

    def build_model(self) -> SequenceModel:
        V = self.tokenizer.vocab_size
        return SequenceModel(self.cfg.model, V, vocab_size=V, per_step=True)

    def loss(self, model, batch, hidden):
        inputs, targets = batch  # [B, T] each
        logits, hidden = model(inputs, hidden)  # [B, T, V]
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()), hidden

    def has_split(self, split: str) -> bool:
        return self.held_out is not None and len(self.held_out[split]) > 1

    def relocate(self, path: Path) -> bool:
        """Whether `path` (eval --data) is the data file this checkpoint recorded its held-out splits in,
        at a new place: then eval reads the recorded split from it rather than all of it."""
        source = (self.stored or {}).get("eval_source")
        if self.held_out is not None or source is None:
            return False
        if lm_corpus.same_file(path, lm_corpus.check_source_record(source)):
            self.source_path = path
            return True
        return False

    def tokens(self, split: Split) -> tuple[np.ndarray | torch.Tensor, str, float]:
        """(token ids, name, characters per token) of a held-out split or of a whole text file."""
        if isinstance(split, Path):
            ids, chars = lm_corpus.encode_file(self.tokenizer, split, self.cfg.data.lowercase)
            return ids, str(split), chars / len(ids) if len(ids) else 1.0
        chars_per_token = None
        if self.held_out is not None:
            tokens = self.held_out[split]
        else:
            tokens, chars_per_token = self._not_carried(split)
        # (fit's own ids come from its tokeniser; a checkpoint's are checked before they index anything)
        if self.stored is not None and len(tokens) and \
                (int(tokens.min()) < 0 or int(tokens.max()) >= self.tokenizer.vocab_size):
            raise GrutrainError(f"the checkpoint is damaged: its {split} tokens are outside its vocabulary; "
                                "evaluate another checkpoint or pass --data")
        return tokens, split, chars_per_token or self._chars_per_token(split, len(tokens))

    def _not_carried(self, split: str) -> tuple[np.ndarray, float | None]:
        state = self.stored or {}
        if "eval_source" in state:  # a large corpus: the checkpoint says where its held-out splits are
            source = lm_corpus.check_source_record(state["eval_source"])
            return lm_corpus.recorded_split(source, self.cfg.data, self.tokenizer.state(), split,
                                            self.source_path), None
        if "eval_tokens" not in state:  # written without its held-out text: read it again from data.path
            return lm_corpus.config_split(self.cfg.data, self.tokenizer.state(), split)
        raise GrutrainError("the checkpoint is damaged: its held-out tokens are not two 1-D integer tensors "
                            "(val, test); evaluate another checkpoint or pass --data")

    def _chars_per_token(self, split: str, n_tokens: int) -> float:
        if self.chars is None:
            return 1.0  # checkpoints from before bpc was per character: char or word level, 1 per token
        chars = self.chars.get(split) if isinstance(self.chars, dict) else None
        if not isinstance(chars, int) or isinstance(chars, bool) or chars < 0:
            raise GrutrainError("the checkpoint is damaged: its held-out character counts (eval_chars) are not "
                                "two integers (val, test)")
        return chars / n_tokens if chars and n_tokens else 1.0

    def evaluate(self, model, split: Split, device, amp_dtype=None, *, whole: bool = True) -> dict[str, float]:
        """whole=False (fit's evaluations before the last): at most train.eval_tokens, a fixed seeded subset."""
        tokens, name, chars_per_token = self.tokens(split)
        if len(tokens) < 2:
            raise GrutrainError(f"the {name} split has {len(tokens)} tokens; nothing to evaluate")
        cap = None if whole else self.cfg.train.eval_tokens
        return evaluate_lm(model, tokens, self.cfg.data.seq_len, device, amp_dtype, max_tokens=cap,
                           seed=self.cfg.train.seed, chars_per_token=chars_per_token)

    def report(self, model, split: Split, device) -> dict:
        tokens, name, _ = self.tokens(split)
        return {"split": name, "tokens": len(tokens) - 1, **self.evaluate(model, split, device)}

    def baselines(self) -> dict[str, float]:
        V = self.tokenizer.vocab_size
        if V > BASELINE_MAX_VOCAB:
            return {}
        train, val = self.train_tokens[:BASELINE_MAX_TOKENS], self.held_out["val"][:BASELINE_MAX_TOKENS]
        return {"val/bigram_perplexity": bigram_perplexity(train, val, V)}

    def state(self) -> dict:
        if self.corpus is None:
            return self.stored
        # Small held-out splits travel with the model, so `grutrain eval` needs only the checkpoint;
        # large ones are recorded by the data file's path, size and hash.
        return lm_corpus.checkpoint_state(self.corpus, self.cfg.data)

    def on_evaluation(self, model, device, step: int, logger) -> None:
        text = self._sample_during_fit(model, device)
        if text:
            logger.text(step, "sample", text)
        if plots.have_matplotlib():  # the plot extra; without it TensorBoard just has no figure
            val = self.held_out["val"][: self.cfg.train.eval_tokens or None]  # capped like the evaluation
            losses = position_losses(model, long_tensor(val), self.cfg.data.seq_len, device)
            logger.figure(step, "val/loss_by_position", plots.per_position_loss_figure(losses))

    def final_extras(self, model, device) -> dict:
        return {"sample": self._sample_during_fit(model, device)}

    def figure(self, model, split: Split, device):
        tokens, name, _ = self.tokens(split)
        tokens = long_tensor(tokens)
        seq_len = self.cfg.data.seq_len
        per_position = position_losses(model, tokens, seq_len, device)
        carried = evaluate_lm(model, tokens, seq_len, device)["loss"]
        unit = self.tokenizer.unit
        name = Path(name).name if isinstance(split, Path) else name
        return plots.per_position_loss_figure(per_position, carried, unit=unit,
                                              title=f"{name}: loss by position in windows of {seq_len} {unit}s")

    @staticmethod
    def export_io(model) -> nn.Module:
        return LanguageModelIO(model)

    def usage(self) -> dict:
        tokenizer = self.tokenizer
        kind = tokenizer.kind
        usage = {"vocab": list(tokenizer.tokens), "tokenizer": kind, "lowercase": self.cfg.data.lowercase}
        # What else the tokeniser needs to be rebuilt (bpe: tokenizer_json); its vocabulary is `vocab`.
        usage.update({k: v for k, v in tokenizer.state().items() if k not in ("kind", "tokens")})
        unk = " (0 = <unk>)" if tokenizer.unk_id == 0 else ""
        usage.update({
            "preprocessing": f"tokens: ids in `vocab`{unk} of the text split by `tokenizer` ({kind}: "
                             f"{tokenizer.splitting}), "
                             "lowercased first when `lowercase` is true; hidden: zeros to start, then the "
                             "previous call's hidden_out to continue a text",
            "postprocessing": "softmax(logits[:, t]) is the distribution of the token after position t"})
        return usage

    def sample(self, model, prompt: str, length: int, *, temperature: float = 1.0, top_k: int | None = None,
               seed: int | None = None, device: torch.device = torch.device("cpu")) -> str:
        """The prompt followed by `length` generated tokens; the same seed gives the same text."""
        tokenizer = self.tokenizer
        prompt = prompt.lower() if self.cfg.data.lowercase else prompt
        prompt_ids = long_tensor(tokenizer.encode(prompt)) if prompt else torch.zeros(0, dtype=torch.long)
        generated = generate(model, prompt_ids, length, temperature=temperature, top_k=top_k, seed=seed,
                             device=device, unk_id=tokenizer.unk_id)
        return tokenizer.extend(prompt, generated)

    def _sample_during_fit(self, model, device) -> str:
        settings = self.cfg.sample
        if settings.length == 0:
            return ""
        return self.sample(model, settings.prompt, settings.length, temperature=0.8, seed=self.cfg.train.seed,
                           device=device)


def check_prompt(prompt: str, length: int) -> None:
    """The sample prompt must be text every tokenizer can encode: an invalid byte (read as a lone
    surrogate, e.g. from a command line that is not UTF-8) is refused, naming it escaped."""
    if not length:
        return  # no sample is drawn
    for char in prompt:
        if 0xD800 <= ord(char) <= 0xDFFF:
            # Python reads an undecodable byte B as the surrogate U+DC00+B: name the byte itself.
            what = (f"the byte \\x{ord(char) - 0xDC00:02x}" if ord(char) >= 0xDC80
                    else f"the lone surrogate {repr(char)[1:-1]}")
            raise GrutrainError(f"sample.prompt holds {what}, which is not UTF-8 text and no tokenizer can encode; "
                                "give the prompt as UTF-8 text (or set sample.length=0)")


def _is_token_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 1 and not value.is_floating_point() \
        and not value.is_complex() and value.dtype != torch.bool


def evaluate_lm(model, tokens, seq_len: int, device: torch.device, autocast_dtype: torch.dtype | None = None, *,
                max_tokens: int | None = None, seed: int = 0, chars_per_token: float = 1.0) -> dict[str, float]:
    """Mean next-token loss over every token of `tokens` (or a fixed seeded subset of about max_tokens),
    carrying the hidden state along each stream. bpc is bits per character: bits per token divided by
    characters per token, so models with different tokenisers compare."""
    total, count, hidden = 0.0, 0, None
    with evaluating(model):
        for inputs, targets, rows in eval_streams(tokens, seq_len, EVAL_STREAMS, max_tokens, seed):
            inputs, targets = inputs.to(device), targets.to(device)
            hidden = hidden[:, rows] if hidden is not None else None
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits, hidden = model(inputs, hidden)
            total += float(F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum"))
            count += targets.numel()
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bpc": loss / math.log(2) / chars_per_token}


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
             seed: int | None = None, device: torch.device = torch.device("cpu"), unk_id: int | None = 0) -> list[int]:
    """`length` token ids sampled after `prompt_ids` ([P]; empty: start from id 0), with temperature
    (0: always the most likely token) and top-k, never `unk_id`; the same seed gives the same ids."""
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
            if unk_id is not None:
                last[unk_id] = float("-inf")  # never emit <unk>: it stands for text the model could not learn
            if temperature <= 0:
                next_id = int(last.argmax())
            else:
                last = last / temperature
                if top_k is not None and top_k < len(last):
                    kth = torch.topk(last, top_k).values[-1]
                    last = last.masked_fill(last < kth, float("-inf"))
                next_id = int(torch.multinomial(torch.softmax(last, -1), 1, generator=generator))
            generated.append(next_id)
            step_logits, hidden = model.step(torch.tensor([next_id], device=device), hidden)  # [1, V]
            logits = step_logits[:, None]
    return generated
