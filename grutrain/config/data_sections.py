"""The config's base section and each task's `data` section (what it reads and how it splits it).

The other sections (model, optim, train, sample, run) and the task configs that put them
together are in config.py.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    # Unknown keys are errors; inf/nan are never a sensible setting; `name: 2024` is a string.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic would quietly read `hidden_size: true` as 1.
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and "bool" not in str(field.annotation):
                    raise ValueError(f"{cls.section_name}.{key}: {value!r} is a boolean; expected {_type_name(field.annotation)}")
        return data

    section_name: ClassVar[str] = "config"


class TextDataConfig(Section):
    """task: lm -- a text file."""

    section_name: ClassVar[str] = "data"
    path: str = Field("data/alice29.txt", description="UTF-8 text file to train on")
    tokenizer: Literal["char", "word", "bytes", "bpe"] = Field(
        "char", description="char | word | bytes (UTF-8 bytes, 256 ids) | bpe (byte-level BPE, tokenizers library)"
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


class ForecastDataConfig(Section):
    """task: forecast -- a CSV of one or more series, windows of input_len steps -> the next horizon steps."""

    section_name: ClassVar[str] = "data"
    path: str = Field("data/sunspots.csv", description="CSV file with a header row")
    target_columns: list[str] = Field(default_factory=list, description="the columns to forecast")
    input_columns: list[str] = Field(default_factory=list, description="extra input columns (known covariates)")
    time_column: Optional[str] = Field(None, description="sorted by it when given; otherwise file order")
    id_column: Optional[str] = Field(None, description="long format: the column naming each row's series "
                                     "(one global model, each series normalised and split on its own)")
    input_len: int = Field(24, gt=0, description="time steps the model sees")
    horizon: int = Field(1, gt=0, description="time steps it predicts, all at once (direct multi-step)")
    known_columns: list[str] = Field(default_factory=list,
                                     description="extra input columns known for the horizon too (holidays, a weather forecast)")
    season: Optional[int | list[int]] = Field(
        None, description="season length(s) in rows, e.g. 48 or [48, 336]: a seasonal-naive baseline each")
    anchor: Literal["auto", "naive", "seasonal"] = Field(
        "auto", description="what the model predicts the residual over: auto = the baseline (naive or a "
        "seasonal naive) with the lowest in-sample MAE on the training rows")
    calendar: Literal["auto", "none", "epoch_seconds"] = Field(
        "auto", description="calendar inputs (hour, weekday, day of year) from a date time column; "
        "epoch_seconds: the time column holds Unix times")
    quantiles: list[float] = Field(default_factory=list,
                                   description="e.g. [0.1, 0.5, 0.9]: train with the pinball loss, forecast these quantiles")
    missing: Literal["interpolate", "drop", "error"] = Field("error", description="what to do with blank cells")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)

    @model_validator(mode="after")
    def _has_targets(self) -> "ForecastDataConfig":
        if not self.target_columns:
            raise ValueError("data.target_columns must name at least one CSV column to forecast, e.g. [SUNACTIVITY]")
        seasons = self.seasons
        if any(s < 1 for s in seasons) or len(set(seasons)) != len(seasons):
            raise ValueError("data.season must be a positive whole number of rows or a list of distinct ones, e.g. [48, 336]")
        if self.quantiles:
            q = self.quantiles
            if any(not 0 < v < 1 for v in q) or sorted(set(q)) != q or 0.5 not in q:
                raise ValueError("data.quantiles must be distinct, increasing, between 0 and 1 and include 0.5 "
                                 "(the point forecast), e.g. [0.1, 0.5, 0.9]")
        return self

    @property
    def seasons(self) -> list[int]:
        if self.season is None:
            return []
        return [self.season] if isinstance(self.season, int) else list(self.season)


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


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", text)
