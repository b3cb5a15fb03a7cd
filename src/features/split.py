"""Time splits without leakage: the past/future split at a cutoff, calibration/holdout
periods, and rolling cutoffs that yield one customer snapshot per cutoff.

Every split uses :func:`crmkit.data.clean.analysis_cutoff`: a cutoff given as a date covers
that whole day; a line at the first instant after it belongs to the future.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from crmkit.data.clean import analysis_cutoff
from crmkit.errors import DataContractError

__all__ = [
    "split_at",
    "calibration_holdout_split",
    "rolling_cutoffs",
    "snapshots",
]


def split_at(lines: pd.DataFrame, cutoff: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lines on or before ``cutoff`` (the past) and after it (the future)."""
    edge = analysis_cutoff(cutoff)
    past = lines["order_ts"] < edge
    return lines[past], lines[~past]


def calibration_holdout_split(
    lines: pd.DataFrame, calibration_end: object, holdout_end: object
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibration lines (up to the end of ``calibration_end``) and holdout lines (after it, up
    to the end of ``holdout_end``). Lines after ``holdout_end`` are in neither."""
    cal_edge, hold_edge = analysis_cutoff(calibration_end), analysis_cutoff(holdout_end)
    if hold_edge <= cal_edge:
        raise DataContractError(
            f"holdout_end {holdout_end} must come after calibration_end {calibration_end}",
            rule="time_split",
        )
    ts = lines["order_ts"]
    return lines[ts < cal_edge], lines[(ts >= cal_edge) & (ts < hold_edge)]


def rolling_cutoffs(
    lines: pd.DataFrame,
    *,
    last: object | None = None,
    every: str = "30D",
    n: int | None = None,
    min_history_days: int = 90,
    horizon_days: int = 0,
) -> list[pd.Timestamp]:
    """Cutoff dates stepping back from ``last`` by ``every``.

    Parameters
    ----------
    lines
        Cleaned order lines (only ``order_ts`` is read).
    last
        The latest cutoff; default: the last day with data minus ``horizon_days`` (so that the
        label window after each cutoff is fully observed).
    every
        Step between cutoffs, a pandas offset alias: ``"30D"``, ``"7D"``, ``"MS"`` / ``"ME"``
        (month starts / ends), ...
    n
        Maximum number of cutoffs (the latest ``n``); ``None`` for as many as fit.
    min_history_days
        Each cutoff has at least this many days of data before it.
    horizon_days
        Each cutoff leaves this many days of data after it (for labels).

    Returns
    -------
    Cutoff dates (midnight, each covering its whole day), ascending.
    """
    if lines.empty:
        raise DataContractError("no order lines to place cutoffs in", rule="empty_window")
    first_day = lines["order_ts"].min().normalize()
    last_day = lines["order_ts"].max().normalize()
    latest = (
        pd.Timestamp(last).normalize()
        if last is not None
        else last_day - pd.Timedelta(days=horizon_days)
    )
    if latest + pd.Timedelta(days=horizon_days) > last_day:
        raise DataContractError(
            f"the latest cutoff {latest.date()} plus the {horizon_days}-day horizon runs past "
            f"the data, which ends {last_day.date()}",
            rule="time_split",
        )
    earliest = first_day + pd.Timedelta(days=min_history_days)
    try:
        offset = pd.tseries.frequencies.to_offset(every)
    except ValueError:
        raise DataContractError(
            f"'{every}' is not a pandas offset alias", rule="time_split"
        ) from None
    if isinstance(offset, (pd.offsets.Tick, pd.offsets.Day)):  # fixed steps back from latest
        cuts = []
        c = latest
        while c >= earliest and (n is None or len(cuts) < n):
            cuts.append(c)
            c = c - offset
        cuts = cuts[::-1]
    else:
        cuts = [c.normalize() for c in pd.date_range(earliest, latest, freq=offset)]
        if n is not None:
            cuts = cuts[-n:]
    if not cuts:
        raise DataContractError(
            f"no cutoff fits: the data runs {first_day.date()} to {last_day.date()}, which "
            f"leaves less than {min_history_days} days of history before {latest.date()}",
            rule="time_split",
        )
    return cuts


def snapshots(
    lines: pd.DataFrame,
    cutoffs: Sequence[object],
    features: Callable[..., pd.DataFrame],
    *,
    progress: Callable[[int, int, pd.Timestamp], None] | None = None,
    **kwargs: object,
) -> pd.DataFrame:
    """One customer snapshot per cutoff: ``features(past_lines, cutoff, **kwargs)`` on the
    lines before each cutoff only, stacked with a ``cutoff`` index level in front of
    ``customer_id``."""
    frames = []
    for i, c in enumerate(cutoffs):
        ts = pd.Timestamp(c)
        past, _ = split_at(lines, ts)
        if past.empty:
            continue
        f = features(past, ts, **kwargs)
        frames.append(pd.concat({ts: f}, names=["cutoff"]))
        if progress is not None:
            progress(i + 1, len(cutoffs), ts)
    if not frames:
        raise DataContractError("no cutoff has any purchases before it", rule="empty_window")
    return pd.concat(frames)
