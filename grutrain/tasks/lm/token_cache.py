"""Tokenise a text file once into a flat binary file of ids; memory-map it after (nanoGPT's way).

A cache is two files in the cache directory, named by a key of (source path, tokeniser settings,
split fractions):
    <key>.bin   the ids of the whole text, [train | val | test], as the smallest unsigned type
                that holds the vocabulary (uint8, uint16 or uint32)
    <key>.json  what they are: the source's path, size, mtime and sha256, the tokeniser (its
                state, so the vocabulary travels with it), the token offsets and character
                counts of the three splits
The .json is written last, so its presence says the .bin is complete; both are written to a
temporary file, fsynced and renamed. A later run reuses the cache when the settings are the same
and the source is the same content: its size, mtime, ctime and inode unchanged (the kernel sets
ctime on every write, and no user call sets it back, so an edit that keeps size and mtime is
still seen), or else its sha256 still matches; otherwise it is rebuilt. The splits are contiguous blocks of *characters* (so every tokeniser sees the same
text in each split and bits per character compare); under DDP rank 0 builds and the others wait.

Text is read in blocks of BLOCK_BYTES whether or not its lines end: each block is decoded
incrementally (a UTF-8 sequence cut by the block boundary waits for the next block) and cut before
its last whitespace character that a non-space follows, so no word, and no byte-level BPE piece
with its leading space, straddles two blocks; a block with no such place is cut at its end (a
single "word" of megabytes is split there). The resident memory of building is a few blocks,
whatever the file's size or the length of its lines.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from grutrain.data.vocabulary import UNK
from grutrain.errors import GrutrainError
from grutrain.files import inputs
from grutrain.files.atomic import write_file
from grutrain.files.inputs import DATA_EXPANSION, format_bytes, open_input
from grutrain.tasks.lm import tokenizers

CACHE_FORMAT = "grutrain-token-cache"
CACHE_VERSION = 2  # 2: blocks cut at whitespace, not newlines; ctime and inode recorded
BLOCK_BYTES = 4 << 20  # small enough that the arrays of a block stay in the allocator's heap


@dataclass(frozen=True)
class CacheSettings:
    tokenizer: str  # a name in tokenizers.TOKENIZERS
    lowercase: bool
    val_fraction: float
    test_fraction: float
    min_freq: int = 1
    vocab_size: int = 4096  # bpe
    tokenizer_path: str | None = None  # bpe from a tokenizer.json

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TokenCorpus:
    """The memory-mapped ids of a text file and what they mean."""

    tokenizer: object
    ids: np.ndarray  # [N] memmap, uint8/16/32
    splits: dict  # name -> (start, end) token offsets
    chars: dict  # name -> characters in the split
    meta: dict
    bin_path: Path

    def split(self, name: str) -> np.ndarray:
        start, end = self.splits[name]
        return self.ids[start:end]

    def chars_per_token(self, name: str) -> float:
        start, end = self.splits[name]
        return self.chars[name] / max(end - start, 1)


def default_cache_dir() -> Path:
    if os.environ.get("GRUTRAIN_CACHE_DIR"):
        return Path(os.environ["GRUTRAIN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "grutrain" / "tokens"


def check_source(path: Path) -> os.stat_result:
    """The stat of a text file to tokenise: a regular file (not a FIFO or a device, which never end)
    with the memory free that reading it in blocks takes; a GrutrainError saying what is wrong."""
    if path.is_dir():
        raise GrutrainError(f"data.path {str(path)!r} is a directory; give a UTF-8 text file")
    if not path.exists():
        raise GrutrainError(f"data file {str(path)!r} not found; check data.path (e.g. data/alice29.txt)")
    # Streamed, so the file's size is bounded by the disk, not by memory: only one block is checked.
    with open_input(path, "data file", expansion=0) as f:
        info = os.fstat(f.fileno())
    need = min(info.st_size, BLOCK_BYTES) * DATA_EXPANSION
    free = inputs.available_memory()
    if free is not None and need > free:
        raise GrutrainError(f"data file {str(path)!r} is {format_bytes(info.st_size)}, too large to tokenise with "
                            f"{format_bytes(free)} of memory free (reading it in blocks takes about "
                            f"{format_bytes(need)}); free some memory")
    return info


def iter_text(path: Path, lowercase: bool, block_bytes: int | None = None,
              on_chunk: Callable[[bytes], None] | None = None) -> Iterator[str]:
    """The file's text in blocks of about block_bytes (default BLOCK_BYTES), universal newlines, each cut
    where no token straddles it (block_cut); held back is at most one block, whatever the lines' length."""
    block_bytes = block_bytes or BLOCK_BYTES
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    carry, offset = "", 0
    with open_input(path, "data file", expansion=0) as f:  # a regular file; streamed, so no size bound
        while True:
            raw = _read_block(f, block_bytes, path)
            final = not raw
            if offset == 0 and b"\x00" in raw[:65536]:
                raise GrutrainError(f"data file {str(path)!r} looks binary (it contains NUL bytes); give a UTF-8 text file")
            try:
                text = carry + decoder.decode(raw, final=final)
            except UnicodeDecodeError as exc:
                raise GrutrainError(f"data file {str(path)!r} is not UTF-8 (bad byte at offset {offset + exc.start}); "
                                    "convert it to UTF-8") from None
            offset += len(raw)
            if on_chunk is not None:
                on_chunk(raw)
            if not final and text.endswith("\r"):  # a \r\n pair may straddle the blocks
                text, carry = text[:-1], "\r"
            else:
                carry = ""
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            cut = len(text) if final else block_cut(text)
            text, carry = text[:cut], text[cut:] + carry
            if text:
                yield text.lower() if lowercase else text
            if final:
                return


_LAST_BREAK = re.compile(r"\s(?=\S*\Z)")  # the whitespace just before the last run of non-spaces


def block_cut(text: str) -> int:
    """Where a block ends: before the whitespace character that precedes its last word (so the next block
    starts with it, as byte-level BPE attaches a space to the word after it); at its end when it has none.
    Whitespace at the block's end waits for the next block, which may continue the run."""
    stripped = text.rstrip()
    found = _LAST_BREAK.search(stripped)
    return found.start() if found is not None and found.start() > 0 else len(text)


def split_bounds(n_chars: int, val_fraction: float, test_fraction: float) -> list[tuple[str, int, int]]:
    """Contiguous character blocks [train | val | test], so no text leaks between them."""
    n_test = int(round(n_chars * test_fraction))
    n_val = int(round(n_chars * val_fraction))
    n_train = n_chars - n_val - n_test
    return [("train", 0, n_train), ("val", n_train, n_train + n_val), ("test", n_train + n_val, n_chars)]


def iter_split_text(blocks: Iterator[str], bounds) -> Iterator[tuple[str, str]]:
    """(split name, text) pieces of the block stream, cut at the splits' character bounds."""
    position = 0
    for block in blocks:
        end = position + len(block)
        for name, lo, hi in bounds:
            a, b = max(lo, position), min(hi, end)
            if a < b:
                yield name, block[a - position : b - position]
        position = end


def _read_block(f, size: int, path: Path) -> bytes:
    """The next block of an open data file; an I/O error (EIO, a vanished network mount) is one line."""
    try:
        return f.read(size)
    except OSError as exc:
        raise GrutrainError(f"cannot read data file {str(path)!r}: {exc.strerror or exc}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_input(path, "data file", expansion=0) as f:
        while chunk := _read_block(f, BLOCK_BYTES, path):
            digest.update(chunk)
    return digest.hexdigest()


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32)


def cache_key(source: Path, settings: CacheSettings, given_tokenizer: dict | None) -> str:
    described = {"source": str(source.resolve()), "settings": settings.as_dict(), "version": CACHE_VERSION}
    if given_tokenizer is not None:
        described["tokenizer"] = given_tokenizer
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return f"{source.stem[:40]}-{settings.tokenizer}-{digest}"


def _read_meta(meta_path: Path) -> dict | None:
    """The cache's metadata, None when absent; refuses a file grutrain did not write."""
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise GrutrainError(f"{str(meta_path)!r} is not a grutrain token cache, so it is left alone; "
                            "move it away or set data.cache_dir to another directory")
    return meta


def _usable(meta: dict | None, bin_path: Path, source: Path, stat: os.stat_result, settings: CacheSettings) -> bool:
    if meta is None or meta.get("version") != CACHE_VERSION or meta.get("settings") != settings.as_dict():
        return False
    if meta["source"]["size"] != stat.st_size:
        return False
    try:
        expected = meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
        if bin_path.stat().st_size != expected:  # truncated or torn: rebuild it (it is ours)
            return False
    except (OSError, KeyError, TypeError):
        return False
    if _stat_record(stat) == {k: meta["source"].get(k) for k in _STAT_KEYS}:
        return True  # untouched since it was hashed: ctime moves on every write, and no user call sets it
    return meta["source"]["sha256"] == _sha256(source)  # touched or copied, but maybe not changed


_STAT_KEYS = ("mtime_ns", "ctime_ns", "inode", "device")


def _stat_record(stat: os.stat_result) -> dict:
    return {"mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino, "device": stat.st_dev}


def open_corpus(path: str | Path, settings: CacheSettings, cache_dir: str | Path | None = None, *,
                given_tokenizer: dict | None = None, rank: int = 0, wait_s: float = 600.0,
                progress: bool = False) -> TokenCorpus:
    """The memory-mapped corpus of `path`, tokenising it first when no usable cache exists.

    given_tokenizer: the state of the tokeniser to use (a checkpoint's) instead of training one.
    rank > 0 never writes: it waits up to wait_s for rank 0's cache.
    """
    source = Path(path)
    stat = check_source(source)
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    if given_tokenizer is not None:  # the training run's cache serves when its tokeniser is this one
        plain = cache_key(source, settings, None)
        meta = _read_meta(directory / f"{plain}.json")
        if _usable(meta, directory / f"{plain}.bin", source, stat, settings) and meta["tokenizer"] == given_tokenizer:
            return _open(meta, directory / f"{plain}.bin")
    key = cache_key(source, settings, given_tokenizer)
    bin_path, meta_path = directory / f"{key}.bin", directory / f"{key}.json"
    deadline = time.monotonic() + wait_s
    while True:
        meta = _read_meta(meta_path)
        if _usable(meta, bin_path, source, stat, settings):
            if rank == 0:
                _refresh_stat(meta, meta_path, stat)
            return _open(meta, bin_path)
        if rank == 0:
            break
        if time.monotonic() > deadline:
            raise GrutrainError(f"rank {rank} waited {wait_s:.0f} s for rank 0 to write the token cache {str(meta_path)!r}; "
                                "the ranks must share data.cache_dir (or run `grutrain prepare CONFIG` first)")
        time.sleep(0.5)
    meta = build_cache(source, settings, directory, key, given_tokenizer, progress=progress)
    if progress:
        from grutrain.progress import note

        note(f"token cache of {source} written to {bin_path} ({format_bytes(bin_path.stat().st_size)}, "
             f"{meta['n_tokens']:,} tokens); see `grutrain cache` to list or remove caches")
    return _open(meta, bin_path)


def _refresh_stat(meta: dict, meta_path: Path, stat: os.stat_result) -> None:
    """Record the stat of a source whose hash was found unchanged, so the next run need not hash it again."""
    if {k: meta["source"].get(k) for k in _STAT_KEYS} == _stat_record(stat):
        return
    meta["source"].update(_stat_record(stat))
    try:
        _write_json_atomically(meta, meta_path)
    except OSError:  # a read-only cache still serves; the next run hashes again
        pass


def _open(meta: dict, bin_path: Path) -> TokenCorpus:
    ids = np.memmap(bin_path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["n_tokens"],)) \
        if meta["n_tokens"] else np.zeros(0, dtype=np.dtype(meta["dtype"]))
    splits = {name: tuple(bounds) for name, bounds in meta["splits"].items()}
    return TokenCorpus(tokenizers.from_state(meta["tokenizer"]), ids, splits, meta["chars"], meta, bin_path)


def _train_tokenizer(source: Path, settings: CacheSettings, train_chars: int):
    def train_blocks():
        bounds = [("train", 0, train_chars)]
        for _, text in iter_split_text(iter_text(source, settings.lowercase), bounds):
            yield text

    tokenizer = tokenizers.train(settings.tokenizer, train_blocks, settings)
    if tokenizer.vocab_size < 2:  # only <unk>: nothing to predict or to sample
        raise GrutrainError(f"data.min_freq {settings.min_freq} leaves no token in the vocabulary but {UNK} "
                            f"(no token occurs that often in {str(source)!r}); lower data.min_freq")
    return tokenizer


def build_cache(source: Path, settings: CacheSettings, directory: Path, key: str,
                given_tokenizer: dict | None = None, progress: bool = False) -> dict:
    """Tokenise `source` into directory/key.bin + key.json (atomically) and return the metadata."""
    from grutrain.progress import byte_progress

    directory.mkdir(parents=True, exist_ok=True)
    stat = source.stat()
    size = stat.st_size
    # Pass 1: the character count (for the split bounds) and the hash, in one read.
    digest, n_chars = hashlib.sha256(), 0
    with byte_progress(f"reading {source.name}", size, enabled=progress) as advance:
        def on_chunk(raw: bytes) -> None:
            digest.update(raw)
            advance(len(raw))

        for text in iter_text(source, settings.lowercase, on_chunk=on_chunk):
            n_chars += len(text)
    if n_chars == 0 or size == 0:
        raise GrutrainError(f"data file {str(source)!r} is empty; give a UTF-8 text file with some text in it")
    bounds = split_bounds(n_chars, settings.val_fraction, settings.test_fraction)
    tokenizer = tokenizers.from_state(given_tokenizer) if given_tokenizer else _train_tokenizer(source, settings, bounds[0][2])
    dtype = _dtype_for(tokenizer.vocab_size)
    # Pass 2: the ids, written as they come.
    offsets = {name: [0, 0] for name, _, _ in bounds}
    chars = {name: hi - lo for name, lo, hi in bounds}
    n_tokens = 0

    def write_ids(out) -> None:
        nonlocal n_tokens
        with byte_progress(f"tokenising {source.name} ({settings.tokenizer})", size, enabled=progress) as advance:
            current = None
            for name, text in iter_split_text(iter_text(source, settings.lowercase, on_chunk=lambda raw: advance(len(raw))), bounds):
                if name != current:
                    offsets[name][0] = n_tokens
                    current = name
                ids = tokenizer.encode(text)
                out.write(ids.astype(dtype).tobytes())
                n_tokens += len(ids)
                offsets[name][1] = n_tokens

    write_file(directory / f"{key}.bin", write_ids, "token cache")  # files.atomic: unique temporary, rename
    for name in offsets:  # an empty split sits where it would start
        if offsets[name] == [0, 0] and name != "train":
            offsets[name] = [n_tokens, n_tokens]
    meta = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "settings": settings.as_dict(),
        "source": {"path": str(source.resolve()), "size": size, **_stat_record(stat), "sha256": digest.hexdigest()},
        "tokenizer": tokenizer.state(), "dtype": dtype.name, "n_tokens": n_tokens,
        "splits": offsets, "chars": chars,
    }
    _write_json_atomically(meta, directory / f"{key}.json")
    return meta


def _write_json_atomically(data: dict, path: Path) -> None:
    write_file(path, json.dumps(data), "token cache")


def file_fingerprint(path: str | Path) -> dict:
    """What a checkpoint records of a data file it does not carry: path, size and sha256."""
    path = Path(path)
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": _sha256(path)}


def list_caches(cache_dir: str | Path | None = None) -> list[dict]:
    """The token caches in a cache directory (default: default_cache_dir()): id, files, size, source, and the
    temporaries a killed build left (id None)."""
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    if not directory.is_dir():
        return []
    found = []
    for meta_path in sorted(directory.glob("*.json")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            continue  # not ours: never listed, never removed
        key = meta_path.stem
        files = [p for p in (directory / f"{key}.bin", meta_path) if p.exists()]
        source = meta.get("source", {})
        found.append({"id": key, "files": [str(p) for p in files], "bytes": sum(p.stat().st_size for p in files),
                      "source": source.get("path"), "source_exists": Path(str(source.get("path"))).is_file(),
                      "tokenizer": meta.get("settings", {}).get("tokenizer"), "tokens": meta.get("n_tokens")})
    for tmp in sorted(directory.glob(".*.tmp")):  # a build or a write that never finished
        found.append({"id": None, "files": [str(tmp)], "bytes": tmp.stat().st_size, "source": None,
                      "source_exists": False, "tokenizer": None, "tokens": None})
    return found


def remove_caches(ids: list[str], cache_dir: str | Path | None = None, everything: bool = False) -> list[dict]:
    """Remove the caches named by id (or all of them, and leftover temporaries); what was removed.
    An id that is not a cache here is a GrutrainError, before anything is removed."""
    listed = list_caches(cache_dir)
    by_id = {entry["id"]: entry for entry in listed if entry["id"] is not None}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise GrutrainError(f"no token cache {unknown[0]!r} in {str(Path(cache_dir) if cache_dir else default_cache_dir())!r}; "
                            "`grutrain cache` lists them")
    chosen = listed if everything else [by_id[i] for i in ids]
    for entry in chosen:
        for path in sorted(entry["files"], key=lambda p: not p.endswith(".json")):  # .json first: never half a cache
            _unlink(path)
    return chosen


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
