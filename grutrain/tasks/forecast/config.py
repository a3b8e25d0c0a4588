"""The config of task forecast: its `data` section (a CSV of one or more series and the
windows read from it) and ForecastConfig, which puts it together with the shared sections."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from grutrain.config.schema import Section, TaskConfig


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
    season: Optional[int | list[int] | Literal["auto"]] = Field(
        None, description="season length(s) in rows, e.g. 48 or [48, 336]: a seasonal-naive baseline each; "
        "auto: found from the time column's spacing (dates) or the autocorrelation of the training rows")
    anchor: Literal["auto", "naive", "seasonal", "profile"] = Field(
        "auto", description="what the model predicts the residual over: auto = the baseline (naive or a "
        "seasonal naive) with the lowest in-sample MAE on the training rows; profile = the mean of the last "
        "season plus the seasonal profile of the last data.profile_periods seasons (the longest season)")
    profile_periods: int = Field(3, ge=1, description="anchor profile: seasons the profile averages over")
    profile_level: int = Field(0, ge=0, description="anchor profile: the level is the mean of the last so many rows "
                               "minus the profile at their phases (0: the last season's mean)")
    profile_recent: int = Field(0, ge=0, description="anchor profile with two seasons: add the mean shape of the last "
                                "so many shortest seasons' residuals over it (e.g. 1: yesterday's, 0: off)")
    transform: Literal["none", "log"] = Field(
        "none", description="log: the model reads and predicts log(1 + y) (non-negative targets), so a "
        "window's level and season act as ratios")
    conformal: bool = Field(True, description="with data.quantiles: calibrate the intervals on the validation "
                            "block (CQR) for test, --data and predict")
    conformal_from: list[str] = Field(default_factory=list, description="checkpoints of the same recipe fitted at "
                                      "earlier origins (data.test_rows larger by multiples of the horizon): their "
                                      "validation blocks' CQR scores are pooled with this model's (a refit model: used alone)")
    ensemble: int = Field(1, ge=1, le=32, description="models trained side by side; the forecast is their median")
    refit: bool = Field(False, description="train on the validation block too (after choosing train.max_steps on "
                        "it): the final fit before the test block; the validation metrics are then in-sample")
    theta_weight: float = Field(0.0, ge=0, le=1, description="combine the forecast with the Theta method's, per "
                                "series on its rows before the origin: (1 - w) GRU + w Theta (0: off)")
    mstl_weight: float = Field(0.0, ge=0, le=1, description="combine the forecast with MSTL's (every data.season, "
                               "an exponential-smoothing level), per series on its rows before the origin: the GRU "
                               "keeps 1 - data.theta_weight - data.mstl_weight (0: off)")
    loss: Literal["mse", "mae"] = Field("mse", description="training loss on the normalised targets "
                                       "(with data.quantiles: the pinball loss)")
    calendar: Literal["auto", "none", "epoch_seconds"] = Field(
        "auto", description="calendar inputs (hour, weekday, day of year) from a date time column; "
        "epoch_seconds: the time column holds Unix times")
    quantiles: list[float] = Field(default_factory=list,
                                   description="e.g. [0.1, 0.5, 0.9]: train with the pinball loss, forecast these quantiles")
    missing: Literal["interpolate", "drop", "error"] = Field("error", description="what to do with blank cells")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    val_rows: Optional[int] = Field(
        None, ge=1, description="the competition protocol: the last rows of every series before the test block "
        "are its validation block (replaces data.val_fraction)")
    test_rows: Optional[int] = Field(
        None, ge=0, description="the last rows of every series are its test block, e.g. the official horizon "
        "(replaces data.test_fraction; 0: train on everything up to the end)")

    @model_validator(mode="after")
    def _has_targets(self) -> "ForecastDataConfig":
        if not self.target_columns:
            raise ValueError("data.target_columns must name at least one CSV column to forecast, e.g. [SUNACTIVITY]")
        if self.theta_weight + self.mstl_weight > 1:
            raise ValueError(f"data.theta_weight + data.mstl_weight is {self.theta_weight + self.mstl_weight:g}: the "
                             "combination weights must sum to at most 1 (the GRU keeps the rest); lower one of them")
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
        if self.season is None or self.season == "auto":  # auto: resolved when the data is read (seasons.py)
            return []
        return [self.season] if isinstance(self.season, int) else list(self.season)


class ForecastConfig(TaskConfig):
    task: Literal["forecast"]
    data: ForecastDataConfig
