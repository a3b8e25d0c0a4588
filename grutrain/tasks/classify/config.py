"""The config of task classify: its `data` section (a file of (sequence, label) examples) and
ClassifyConfig, which puts it together with the shared sections."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field

from grutrain.config.schema import Section, TaskConfig


class ClassifyDataConfig(Section):
    """task: classify -- examples of (sequence, label) from JSONL, CSV or UCR/UEA .ts files."""

    section_name: ClassVar[str] = "data"
    path: str = Field("data/names.jsonl", description="JSONL, CSV or .ts file of examples")
    format: Literal["auto", "jsonl", "csv", "ts"] = Field("auto", description="auto: from the file extension")
    label_column: str = Field("label", description="CSV: the column holding the label")
    lowercase: bool = Field(False, description="text examples: lowercase them first")
    max_len: Optional[int] = Field(None, gt=0, description="truncate longer sequences to this many steps")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)


class ClassifyConfig(TaskConfig):
    task: Literal["classify"]
    data: ClassifyDataConfig
