"""The config of task lm: its `data` section (a text file and how it is tokenised and split), its `sample`
section, and LMConfig, which puts them together with the shared sections."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from grutrain.config.schema import Section, TaskConfig
from grutrain.tasks.lm.tokenizers import TOKENIZERS

_TOKENIZER_NAMES = tuple(TOKENIZERS)

class TextDataConfig(Section):
    """task: lm -- a text file."""

    section_name: ClassVar[str] = "data"
    path: str = Field("data/alice29.txt", description="UTF-8 text file to train on")
    tokenizer: Literal[_TOKENIZER_NAMES] = Field(  # type: ignore[valid-type]  # the names in tokenizers/__init__.py
        "char", description="char | word | bytes (UTF-8 bytes, 256 ids) | bpe (byte-level BPE, tokenizers library); "
        "one module each in grutrain/tasks/lm/tokenizers/"
    )
    vocab_size: int = Field(4096, ge=260, le=2**20, description="bpe: ids to learn from the training block")
    tokenizer_path: Optional[str] = Field(None, description="bpe: load this tokenizer.json instead of training one")
    cache_dir: Optional[str] = Field(
        None, description="where the tokenised ids are cached; null = $GRUTRAIN_CACHE_DIR or ~/.cache/grutrain/tokens"
    )
    carry_max_tokens: int = Field(
        1_000_000, ge=0, description="held-out splits up to this many tokens travel inside checkpoints; "
        "beyond it a checkpoint records the data file's path, size and hash instead"
    )
    lowercase: bool = False
    seq_len: int = Field(64, gt=0, description="tokens per training sequence (BPTT length)")
    sampling: Literal["random", "sequential"] = Field(
        "random",
        description="random: shuffled windows each epoch; sequential: consecutive windows with "
        "the hidden state carried across batches (truncated BPTT)",
    )
    val_fraction: float = Field(0.05, ge=0, lt=1)
    test_fraction: float = Field(0.10, ge=0, lt=1)
    min_freq: int = Field(1, ge=1, description="tokens seen fewer times become <unk>")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "TextDataConfig":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "data.val_fraction + data.test_fraction must be below 0.9 so that training data is left"
            )
        return self



class SampleConfig(Section):
    """task: lm -- the text sample shown at each evaluation and at the end of a run."""

    section_name: ClassVar[str] = "sample"
    length: int = Field(200, ge=0, description="tokens sampled at each evaluation; 0 turns sampling off")
    prompt: str = Field("Alice ", description="the text the sample starts from")


class LMConfig(TaskConfig):
    task: Literal["lm"] = "lm"
    data: TextDataConfig = TextDataConfig()
    sample: SampleConfig = SampleConfig()

    # Version 1 had the sample section's keys under train (see TaskConfig.moved_keys).
    moved_keys: ClassVar[dict[str, Optional[str]]] = {"train.sample_length": "sample.length",
                                                      "train.sample_prompt": "sample.prompt"}

    @model_validator(mode="after")
    def _causal(self) -> "LMConfig":
        if self.model.bidirectional:
            raise ValueError("model.bidirectional=true cannot predict the next token (it would see it); "
                             "use it with task classify")
        return self
