"""The language model's data: the token cache of data.path, and the held-out splits of a checkpoint.

Small held-out splits travel inside every checkpoint (so `grutrain eval` needs nothing else);
beyond data.carry_max_tokens a checkpoint records where they are instead: the source file's
path, size and sha256, the tokeniser settings and the splits' token offsets. `held_out` finds
them again from the config's path or from --data, and says clearly when the file has moved or changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from grutrain.data import token_cache
from grutrain.data.token_cache import CacheSettings, TokenCorpus
from grutrain.data.tokenizers import tokenizer_from_checkpoint
from grutrain.errors import GrutrainError

HELD_OUT = ("val", "test")


def cache_settings(data_cfg) -> CacheSettings:
    return CacheSettings(tokenizer=data_cfg.tokenizer, lowercase=data_cfg.lowercase,
                         val_fraction=data_cfg.val_fraction, test_fraction=data_cfg.test_fraction,
                         min_freq=data_cfg.min_freq, vocab_size=data_cfg.vocab_size,
                         tokenizer_path=data_cfg.tokenizer_path)


def open_training_corpus(data_cfg, saved: dict | None = None, rank: int = 0, wait_s: float = 600.0,
                         progress: bool = True) -> TokenCorpus:
    """data.path tokenised (once) and memory-mapped; a resumed run checks its tokeniser is the saved one."""
    corpus = token_cache.open_corpus(data_cfg.path, cache_settings(data_cfg), data_cfg.cache_dir, rank=rank,
                                     wait_s=wait_s, progress=progress and rank == 0)
    if saved is not None and "tokenizer" in saved and saved["tokenizer"] != corpus.tokenizer.state():
        raise GrutrainError(f"cannot resume: {data_cfg.path} tokenises differently from when the checkpoint was "
                            "written (the file or the tokeniser changed); train a new run")
    return corpus


def checkpoint_state(corpus: TokenCorpus, data_cfg) -> dict:
    """What the checkpoint keeps of the data: the tokeniser, and the held-out splits or where they are."""
    state = {"vocab": list(corpus.tokenizer.tokens), "tokenizer": corpus.tokenizer.state(),
             "eval_chars": {name: corpus.chars[name] for name in HELD_OUT}}
    held_out_tokens = sum(corpus.splits[name][1] - corpus.splits[name][0] for name in HELD_OUT)
    if held_out_tokens <= data_cfg.carry_max_tokens:
        state["eval_tokens"] = {name: torch.from_numpy(np.asarray(corpus.split(name), dtype=np.int32))
                                for name in HELD_OUT}
    else:
        source = corpus.meta["source"]
        state["eval_source"] = {"path": source["path"], "size": source["size"], "sha256": source["sha256"],
                                "splits": {name: list(corpus.splits[name]) for name in HELD_OUT}}
    return state


def held_out(payload: dict, cfg, split: str, data_path=None) -> tuple[np.ndarray, str, float]:
    """(token ids, name, characters per token) of what `grutrain eval` scores.

    data_path: another text file to score whole, or, for a checkpoint that records where its
    held-out data is, that data file at its new place.
    """
    tokenizer = tokenizer_from_checkpoint(payload)
    source = payload.get("eval_source")
    if data_path is not None and not (source and _same_file(Path(data_path), source)):
        ids, chars = encode_file(tokenizer, data_path, cfg.data.lowercase)
        return ids, str(data_path), chars / max(len(ids), 1)
    if "eval_tokens" in payload:
        ids = payload["eval_tokens"][split].numpy()
        return ids, split, _chars_per_token(payload, split, len(ids))
    if source is None:  # an old checkpoint without its data: tokenise the config's file with its vocabulary
        path = Path(cfg.data.path)
    else:
        path = Path(data_path) if data_path is not None else Path(source["path"])
        if not path.exists() and Path(cfg.data.path).exists():
            path = Path(cfg.data.path)
        if not path.exists():
            raise GrutrainError(f"the {split} split is not inside the checkpoint and its data file {source['path']!r} "
                                "is gone; pass --data PATH to where the file is now")
        if not _same_file(path, source):
            raise GrutrainError(f"{str(path)!r} is not the file this model was trained on (its size or sha256 "
                                "differ: it moved or changed); pass --data PATH to the original file")
    corpus = token_cache.open_corpus(path, cache_settings(cfg.data), cfg.data.cache_dir,
                                     given_tokenizer=tokenizer.state())
    if source is not None:
        start, end = source["splits"][split]
        return corpus.ids[start:end], split, _chars_per_token(payload, split, end - start)
    return corpus.split(split), split, corpus.chars_per_token(split)


def _chars_per_token(payload: dict, split: str, n_tokens: int) -> float:
    chars = payload.get("eval_chars", {}).get(split)
    return chars / n_tokens if chars and n_tokens else 1.0  # older checkpoints: char-level (1 per token)


def _same_file(path: Path, recorded: dict) -> bool:
    return path.is_file() and path.stat().st_size == recorded["size"] and \
        token_cache.file_fingerprint(path)["sha256"] == recorded["sha256"]


def encode_file(tokenizer, path, lowercase: bool) -> tuple[np.ndarray, int]:
    """(ids, characters) of a whole text file, read in blocks."""
    token_cache._check_source(Path(path))
    pieces, chars = [], 0
    for text in token_cache.iter_text(Path(path), lowercase):
        pieces.append(tokenizer.encode(text))
        chars += len(text)
    if not chars:
        raise GrutrainError(f"data file {str(path)!r} is empty; give a UTF-8 text file with some text in it")
    return np.concatenate(pieces), chars
