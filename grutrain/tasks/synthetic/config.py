"""The config of task synthetic: its `data` section (which problem, how long, how many
examples) and SyntheticConfig, which puts it together with the shared sections."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from grutrain.config.schema import Section, TaskConfig


class SyntheticDataConfig(Section):
    """task: synthetic -- generated in memory, deterministic under train.seed."""

    section_name: ClassVar[str] = "data"
    kind: Literal["adding", "copy", "sine"] = Field("adding", description="which problem")
    seq_len: int = Field(100, gt=1, description="length of each sequence")
    train_size: int = Field(10000, gt=0, description="examples per training epoch")
    val_size: int = Field(1000, gt=0)
    test_size: int = Field(1000, gt=0)
    num_symbols: int = Field(8, gt=1, description="copy: symbols to remember")
    copy_len: int = Field(10, gt=0, description="copy: how many symbols to reproduce")
    noise: float = Field(0.1, ge=0, description="sine: noise standard deviation")


class SyntheticConfig(TaskConfig):
    task: Literal["synthetic"]
    data: SyntheticDataConfig = SyntheticDataConfig()
