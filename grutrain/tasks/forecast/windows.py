"""What the forecaster reads and what it predicts on top of: model inputs and seasonal anchors.

Row features (normalised, [N, F]) are ordered targets (T), past-only inputs (P: data.input_columns,
known only up to the forecast origin), known inputs (K: data.known_columns, known for the horizon
too); calendar features ([N, C], calendar.py) are known for the horizon as well.

A window starting at row s (its first target) reads rows s - input_len .. s - 1. Each step gives
the model
    targets minus the window's last value               (T)  the shape of the recent past
    targets minus their value one anchor lag earlier    (T, only when the anchor lag is > 1)
    past-only inputs, known inputs, calendar            (P + K + C)
    a 0/1 flag "this step is in the horizon"            (1, only when K + C > 0)
and, when K + C > 0, the horizon rows s .. s + horizon - 1 follow with the target and past-only
features zero, their known inputs and calendar filled in, and the flag 1: the GRU reads what is
known about the future before the head speaks from its last state.

The head predicts the residual over the anchor: the seasonal-naive forecast with the anchor lag
(lag 1 is the naive forecast, the last value repeated), in normalised units. A head that outputs
zero gives exactly that baseline, so a model starts from the strongest baseline instead of having
to learn it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from grutrain.tasks.forecast.metrics import seasonal_scale


@dataclass(frozen=True)
class WindowLayout:
    input_len: int
    horizon: int
    n_targets: int
    n_past: int = 0
    n_known: int = 0
    n_calendar: int = 0
    anchor_lag: int = 1
    seasons: tuple[int, ...] = ()
    quantiles: tuple[float, ...] = ()
    # [T] the typical size of a residual over the seasonal anchor (normalised units): residual inputs
    # are divided by it and head outputs multiplied by it, so the GRU sees and predicts values near
    # +-1 rather than a few hundredths. Empty: 1 (the naive anchor, as before anchoring existed).
    residual_scale: tuple[float, ...] = ()
    profile_periods: int = 0  # > 0: the anchor is the seasonal profile over that many anchor lags
    profile_level: int = 0  # > 0: the profile's level is that of the last so many rows, deseasonalised
    profile_recent: int = 0  # > 0: plus the last so many shortest seasons' mean residual shape (a day's)
    transform: str = "none"  # "log": targets are read and predicted as log(1 + y)
    loss: str = "mse"  # the training (and validation) loss without quantiles: mse | mae
    theta_weight: float = 0.0  # > 0: the forecast is combined with the Theta method's (theta.py)
    mstl_weight: float = 0.0  # > 0: ... and with MSTL's (mstl.py); the GRU keeps 1 - both weights

    @property
    def classical_weight(self) -> float:
        """The share of the forecast that comes from classical methods fitted on each window's history."""
        return self.theta_weight + self.mstl_weight

    @property
    def reads_future(self) -> bool:
        return self.n_known + self.n_calendar > 0

    @property
    def n_inputs(self) -> int:
        """Features per step the GRU reads."""
        seasonal = self.n_targets if self.anchor_lag > 1 else 0
        return self.n_targets + seasonal + self.n_past + self.n_known + self.n_calendar + int(self.reads_future)

    @property
    def n_outputs(self) -> int:
        """Head outputs: horizon x targets x quantiles (one point forecast without quantiles)."""
        return self.horizon * self.n_targets * max(1, len(self.quantiles))

    @property
    def history(self) -> int:
        """Rows a window needs before its first target: its inputs (each one anchor lag back too)
        and one of each season for the seasonal-naive baselines."""
        lagged = self.input_len + (self.anchor_lag if self.anchor_lag > 1 else 0)
        return max([lagged, self.anchor_lag, self.profile_periods * self.anchor_lag, self.profile_level,
                    self.profile_recent * min(self.seasons, default=1), *self.seasons])

    @property
    def median_index(self) -> int | None:
        """Which quantile output is the point forecast (0.5), None without quantiles."""
        return self.quantiles.index(0.5) if self.quantiles else None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "WindowLayout":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def choose_anchor_lag(train_targets, seasons: list[int], mode: str) -> int:
    """The anchor lag: `naive` -> 1; `seasonal` -> the season whose seasonal-naive forecast has the
    lowest in-sample MAE on the training rows; `auto` -> the lowest among 1 and the seasons; `profile`
    -> the longest season. Chosen on training rows only, so the held-out blocks never steer it.
    `train_targets`: [N, T], or a list of them (several series, normalised: their errors are averaged)."""
    if mode == "naive" or not seasons:
        return 1
    if mode == "profile":  # the longest season: a week's profile holds the day's shape too (taylor)
        return max(seasons)
    parts = train_targets if isinstance(train_targets, list) else [train_targets]
    candidates = list(seasons) if mode == "seasonal" else [1, *seasons]
    errors = [float(np.nanmean([np.nanmean(seasonal_scale(p, lag)) for p in parts])) for lag in candidates]
    usable = [(e, lag) for e, lag in zip(errors, candidates) if np.isfinite(e)]
    return min(usable)[1] if usable else 1


def anchor_rows(starts, horizon: int, lag: int):
    """[W, horizon] rows whose values form the seasonal-naive forecast with period `lag`: each step's
    value whole periods back, so that only rows before the start are used (lag 1: the last row)."""
    k = np.arange(horizon)
    back = lag * (k // lag + 1)
    rows = np.asarray(starts)[:, None] + k - back
    return torch.from_numpy(rows) if isinstance(starts, torch.Tensor) else rows


def make_inputs(norm: torch.Tensor, calendar: torch.Tensor, starts: torch.Tensor, layout: WindowLayout):
    """(x [W, input_len (+ horizon), n_inputs], anchor [W, horizon, T]) for the windows at `starts`.

    norm [N, T + P + K] normalised features; calendar [N, C]; both float32.
    """
    T, P, L, H = layout.n_targets, layout.n_past, layout.input_len, layout.horizon
    past = starts[:, None] + torch.arange(-L, 0)  # [W, L] rows read
    rows = norm[past]  # [W, L, F]
    targets = rows[:, :, :T]
    parts = [targets - targets[:, -1:]]
    if layout.anchor_lag > 1:
        parts.append((targets - norm[past - layout.anchor_lag][:, :, :T]) / _scale(layout))
    parts.append(rows[:, :, T:])  # past-only and known inputs
    if layout.reads_future:
        parts += [calendar[past], torch.zeros(len(starts), L, 1)]
    x = torch.cat(parts, dim=-1)
    if layout.reads_future:
        ahead = starts[:, None] + torch.arange(H)  # [W, H]
        zeros = torch.zeros(len(starts), H, T * (2 if layout.anchor_lag > 1 else 1) + P)
        future = torch.cat([zeros, norm[ahead][:, :, T + P:], calendar[ahead], torch.ones(len(starts), H, 1)], dim=-1)
        x = torch.cat([x, future], dim=1)
    if layout.profile_periods:
        return x, profile_anchor(norm, starts, layout)
    anchor = norm[anchor_rows(starts, H, layout.anchor_lag)][:, :, :T]  # [W, H, T]
    return x, anchor


def profile_anchor(norm: torch.Tensor, starts: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """[W, H, T] the mean of the last season plus the seasonal profile of the last K seasons: each
    phase's mean deviation from its season's mean (Tourism validation: MASE 2.04 vs the seasonal naive's
    2.11 quarterly, 1.90 vs 2.00 monthly, K=3; docs/forecasting.md). Fewer seasons average out noise
    less; a seasonal naive is K=1.

    With layout.profile_level L > 0 the level is instead the mean of the last L rows minus the profile
    at their phases: a week's mean lags a level that moved during the week, the last day's does not
    (taylor validation, the anchor alone: MAE 566 with the week's mean, 406 with L=48, K=3).

    With layout.profile_recent D > 0 (and two seasons, m the longer), the residual of the last D shortest
    seasons d (days) over that anchor, averaged per phase of d and centred, is added at each phase of d:
    the recent days' shape where it differs from the average week's (with L = d and D = 1, the forecast
    is yesterday's value plus the average week's change from yesterday's weekday to today's). MSTL's
    structure: a week's shape averaged over many weeks, a day's shape from the last days (taylor
    validation, the anchor alone: MAE 275 against 354 without, K=6, L=24)."""
    m, K, T = layout.anchor_lag, layout.profile_periods, layout.n_targets
    rows = starts[:, None] + torch.arange(-K * m, 0)  # [W, K*m]
    blocks = norm[rows][:, :, :T].reshape(len(starts), K, m, T)  # oldest .. newest season
    profile = (blocks - blocks.mean(dim=2, keepdim=True)).mean(dim=1)  # [W, m, T]
    phase = torch.arange(layout.horizon) % m
    if layout.profile_level:
        back = torch.arange(-layout.profile_level, 0)  # the last L rows; row s - j has phase (-j) mod m
        recent = norm[starts[:, None] + back][:, :, :T]  # [W, L, T]
        level = (recent - profile[:, back % m]).mean(dim=1, keepdim=True)
    else:
        level = blocks[:, -1].mean(dim=1, keepdim=True)
    anchor = level + profile[:, phase]
    if layout.profile_recent:
        d, D = min(layout.seasons), layout.profile_recent
        back = torch.arange(-D * d, 0)  # the last D days; row s - D*d + i has phase i mod d
        residual = norm[starts[:, None] + back][:, :, :T] - level - profile[:, back % m]  # [W, D*d, T]
        shape = residual.reshape(len(starts), D, d, T).mean(dim=1)  # [W, d, T]
        anchor = anchor + (shape - shape.mean(dim=1, keepdim=True))[:, torch.arange(layout.horizon) % d]
    return anchor


def add_anchor(output: torch.Tensor, anchor: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """Head output [W, n_outputs] + anchor [W, H, T] -> forecast [W, H, T, Q] (Q = 1 without quantiles).

    Quantile forecasts are sorted along Q so that an interval's bounds never cross."""
    q = max(1, len(layout.quantiles))
    residual = output.float().view(len(anchor), layout.horizon, layout.n_targets, q) * _scale(layout)[:, None]
    forecast = anchor.float().unsqueeze(-1) + residual
    return forecast.sort(dim=-1).values if q > 1 else forecast


def _scale(layout: WindowLayout) -> torch.Tensor:
    return torch.tensor(layout.residual_scale or [1.0] * layout.n_targets, dtype=torch.float32)  # [T]


def residual_scale(train_norm_targets, lag: int) -> tuple[float, ...]:
    """Per target, the standard deviation of z_t - z_{t-lag} over the training rows (1 for lag 1);
    `train_norm_targets` [N, T] or a list of them (several series, pooled)."""
    parts = train_norm_targets if isinstance(train_norm_targets, list) else [train_norm_targets]
    parts = [p for p in parts if len(p) > lag]
    if lag <= 1 or not parts:
        return ()
    diffs = np.concatenate([p[lag:] - p[:-lag] for p in parts])
    std = np.nanstd(diffs, axis=0)
    return tuple(float(s) if np.isfinite(s) and s > 1e-12 else 1.0 for s in std)


def seasonal_naive_baselines(values: np.ndarray, starts: np.ndarray, horizon: int, n_targets: int,
                             seasons: list[int]) -> dict[str, np.ndarray]:
    """{"naive": [W, H, T], "seasonal_naive_<s>": [W, H, T] for each season} on the original scale
    (just "seasonal_naive" when there is one season, as before several were accepted)."""
    out = {"naive": values[anchor_rows(starts, horizon, 1)][:, :, :n_targets]}
    for s in seasons:
        name = "seasonal_naive" if len(seasons) == 1 else f"seasonal_naive_{s}"
        out[name] = values[anchor_rows(starts, horizon, s)][:, :, :n_targets]
    return out


def rolling_origins(starts: np.ndarray, groups: np.ndarray | None, horizon: int, n: int) -> np.ndarray:
    """The last `n` forecast origins of each series among the window `starts` of a block, `horizon`
    rows apart, so that the windows tile the block's end without overlap (statsforecast's
    cross_validation with step_size = h; darts' historical_forecasts): the first starts of each
    series come first. `groups` [W]: each start's series (None: one series)."""
    starts = np.asarray(starts)
    groups = np.zeros(len(starts), dtype=np.int64) if groups is None else np.asarray(groups)
    out = []
    for g in dict.fromkeys(groups.tolist()):
        mine = set(starts[groups == g].tolist())
        last = max(mine)
        out += [s for s in (last - horizon * k for k in range(n - 1, -1, -1)) if s in mine]
    return np.asarray(out, dtype=np.int64)
