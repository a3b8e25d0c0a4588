"""`grutrain prepare CONFIG`: tokenise a language model's text into its token cache ahead of `fit`."""

from __future__ import annotations

import time

from grutrain.errors import GrutrainError


def prepare(cfg, progress: bool = True) -> dict:
    """Build (or find) the token cache of cfg.data.path; what it holds, and how long it took."""
    from grutrain.tasks.lm.corpus import open_training_corpus

    if cfg.task != "lm":
        raise GrutrainError(f"prepare tokenises text for language models (task lm); this config is task {cfg.task}")
    start = time.perf_counter()
    corpus = open_training_corpus(cfg.data, progress=progress)
    seconds = time.perf_counter() - start
    return {
        "cache": str(corpus.bin_path), "tokenizer": cfg.data.tokenizer, "vocab_size": corpus.tokenizer.vocab_size,
        "dtype": corpus.meta["dtype"], "tokens": corpus.meta["n_tokens"], "source_bytes": corpus.meta["source"]["size"],
        "splits": {name: end - start for name, (start, end) in corpus.splits.items()},
        "chars_per_token": {name: corpus.chars_per_token(name) for name in corpus.splits},
        "seconds": seconds,
    }
