"""The language model's data: the token cache of data.path, and the held-out splits a checkpoint keeps.

Small held-out splits travel inside every checkpoint's task_state (so `grutrain eval` needs nothing
else); beyond data.carry_max_tokens the task_state records where they are instead: the source
file's path, size and sha256 and the splits' token offsets (`eval_source`). `recorded_split`
finds them again at the recorded path, the config's path or --data, and says clearly when the
file has moved or changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from grutrain.tasks.lm import token_cache
from grutrain.tasks.lm.token_cache import CacheSettings, TokenCorpus
from grutrain.data.digest import DATA_KEY, check_same_data, data_record
from grutrain.errors import GrutrainError

HELD_OUT = ("val", "test")


def cache_settings(data_cfg) -> CacheSettings:
    return CacheSettings(tokenizer=data_cfg.tokenizer, lowercase=data_cfg.lowercase,
                         val_fraction=data_cfg.val_fraction, test_fraction=data_cfg.test_fraction,
                         min_freq=data_cfg.min_freq, vocab_size=data_cfg.vocab_size,
                         tokenizer_path=data_cfg.tokenizer_path)


def open_training_corpus(data_cfg, saved_state: dict | None = None, rank: int = 0, wait_s: float = 600.0,
                         progress: bool = True, allow_change: bool = False) -> TokenCorpus:
    """data.path tokenised (once) and memory-mapped; a resumed run (saved_state: the checkpoint's
    task_state) checks that the text (sha256, split sizes) and its tokeniser are the saved ones;
    allow_change (train.allow_data_change) continues on changed text in the saved tokeniser."""
    corpus = token_cache.open_corpus(data_cfg.path, cache_settings(data_cfg), data_cfg.cache_dir, rank=rank,
                                     wait_s=wait_s, progress=progress and rank == 0)
    if saved_state is None:
        return corpus
    check_same_data(saved_state, data_record_of(corpus, data_cfg), allow_change)
    changed_tokens = "tokenizer" in saved_state and saved_state["tokenizer"] != corpus.tokenizer.state()
    if changed_tokens and allow_change and saved_state.get(DATA_KEY):  # the new text, in the model's vocabulary
        return token_cache.open_corpus(data_cfg.path, cache_settings(data_cfg), data_cfg.cache_dir, rank=rank,
                                       wait_s=wait_s, given_tokenizer=saved_state["tokenizer"],
                                       progress=progress and rank == 0)
    if changed_tokens:
        raise GrutrainError(f"cannot resume: {data_cfg.path} tokenises differently from when the checkpoint was "
                            "written (the file or the tokeniser changed); train a new run")
    return corpus


def data_record_of(corpus: TokenCorpus, data_cfg) -> dict:
    """What the run trains on (data/digest.py): the text's size and sha256, the splits' characters."""
    source = corpus.meta["source"]
    return data_record([{"path": str(data_cfg.path), "size": source["size"], "sha256": source["sha256"]}],
                       dict(corpus.chars))


def checkpoint_state(corpus: TokenCorpus, data_cfg) -> dict:
    """The task_state of a language model: the tokeniser, the held-out splits or where they are, and the
    record of the text it trained on."""
    state = {"vocab": list(corpus.tokenizer.tokens), "tokenizer": corpus.tokenizer.state(),
             "eval_chars": {name: corpus.chars[name] for name in HELD_OUT},
             DATA_KEY: data_record_of(corpus, data_cfg)}
    held_out_tokens = sum(corpus.splits[name][1] - corpus.splits[name][0] for name in HELD_OUT)
    if held_out_tokens <= data_cfg.carry_max_tokens:
        state["eval_tokens"] = {name: torch.from_numpy(np.asarray(corpus.split(name), dtype=np.int32))
                                for name in HELD_OUT}
    else:
        source = corpus.meta["source"]
        state["eval_source"] = {"path": source["path"], "size": source["size"], "sha256": source["sha256"],
                                "splits": {name: list(corpus.splits[name]) for name in HELD_OUT}}
    return state


def check_source_record(source) -> dict:
    """A task_state's eval_source, checked; a GrutrainError when it is damaged."""
    def bounds(value) -> bool:
        return isinstance(value, (list, tuple)) and len(value) == 2 and \
            all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value) and value[0] <= value[1]

    if not (isinstance(source, dict) and isinstance(source.get("path"), str) and isinstance(source.get("size"), int)
            and isinstance(source.get("sha256"), str) and isinstance(source.get("splits"), dict)
            and all(bounds(source["splits"].get(name)) for name in HELD_OUT)):
        raise GrutrainError("the checkpoint is damaged: the record of where its held-out data is (eval_source) "
                            "is not a path, size, sha256 and two token ranges")
    return source


def same_file(path: Path, recorded: dict) -> bool:
    """Whether `path` is the data file a checkpoint recorded (same size and sha256)."""
    return path.is_file() and path.stat().st_size == recorded["size"] and \
        token_cache.file_fingerprint(path)["sha256"] == recorded["sha256"]


def recorded_split(source: dict, data_cfg, tokenizer_state: dict, split: str, path: Path | None = None) -> np.ndarray:
    """The ids of a held-out split the checkpoint recorded by place: read from `path` (--data, the file
    at its new place), else from the recorded path, else from the config's data.path."""
    if path is None:
        path = Path(source["path"])
        if not path.exists() and Path(data_cfg.path).exists():
            path = Path(data_cfg.path)
    if not path.exists():
        raise GrutrainError(f"the {split} split is not inside the checkpoint and its data file {source['path']!r} "
                            "is gone; pass --data PATH to where the file is now")
    if not same_file(path, source):
        raise GrutrainError(f"{str(path)!r} is not the file this model was trained on (its size or sha256 "
                            "differ: it moved or changed); pass --data PATH to the original file")
    corpus = token_cache.open_corpus(path, cache_settings(data_cfg), data_cfg.cache_dir,
                                     given_tokenizer=tokenizer_state)
    start, end = source["splits"][split]
    if end > len(corpus.ids):
        raise GrutrainError(f"the checkpoint is damaged: its {split} split ends at token {end}, past the "
                            f"{len(corpus.ids)} tokens of {str(path)!r}")
    return corpus.ids[start:end]


def config_split(data_cfg, tokenizer_state: dict, split: str) -> tuple[np.ndarray, float]:
    """(ids, characters per token) of a split of data.path, for an older checkpoint written without its
    held-out data: the config's file tokenised with the checkpoint's tokeniser."""
    corpus = token_cache.open_corpus(data_cfg.path, cache_settings(data_cfg), data_cfg.cache_dir,
                                     given_tokenizer=tokenizer_state)
    return corpus.split(split), corpus.chars_per_token(split)


def encode_file(tokenizer, path, lowercase: bool) -> tuple[np.ndarray, int]:
    """(ids, characters) of a whole text file, read in blocks."""
    token_cache.check_source(Path(path))
    pieces, chars = [], 0
    for text in token_cache.iter_text(Path(path), lowercase):
        pieces.append(tokenizer.encode(text))
        chars += len(text)
    if not chars:
        raise GrutrainError(f"data file {str(path)!r} is empty; give a UTF-8 text file with some text in it")
    return np.concatenate(pieces), chars
