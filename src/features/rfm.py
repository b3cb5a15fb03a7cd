"""RFM summaries in the convention of the BG/NBD and Gamma-Gamma papers (and ``lifetimes``).

A *transaction* is a customer-period: all purchases of one customer within one day are merged
(the CDNOW convention). Per customer, at an analysis date:

* ``frequency`` - number of repeat transactions (distinct purchase days after the first);
* ``recency`` - age of the customer at the last purchase: last day - first day;
* ``T`` - age of the customer at the analysis date: analysis day - first day;
* ``monetary_value`` - mean value of the repeat transactions (0 when there are none).

Ages are measured in days and expressed in ``unit``: ``"D"`` days, ``"W"`` 7-day weeks
(days / 7, fractional, as in Fader, Hardie and Lee 2005), ``"M"`` average months
(days / 30.4375). This is exactly ``lifetimes.utils.summary_data_from_transaction_data`` with
``freq="D"`` and ``freq_multiplier`` 1, 7 or 30.4375, computed with sort-based numpy
reductions instead of pandas groupbys (see ``benchmarks/bench_rfm.py``).

Always index columns by name: ``summary["T"]``, never ``summary.T`` (the transpose).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from crmkit.data.clean import analysis_cutoff
from crmkit.errors import DataContractError

__all__ = [
    "UNIT_DAYS",
    "customer_days",
    "rfm_summary",
    "calibration_holdout_summary",
    "CustomerDays",
]

#: Days per time unit.
UNIT_DAYS: dict[str, float] = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0}


def _unit_days(unit: str) -> float:
    try:
        return UNIT_DAYS[unit]
    except KeyError:
        raise DataContractError(
            f"unknown time unit {unit!r}; use one of {sorted(UNIT_DAYS)}", rule="time_unit"
        ) from None


def _require(lines: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in lines.columns]
    if missing:
        raise DataContractError(
            f"order lines lack column(s) {missing}; pass cleaned lines "
            "(crmkit.data.clean_lines(...).lines)",
            column=missing[0],
            rule="required_column",
        )


@dataclass(frozen=True)
class CustomerDays:
    """Purchases merged to customer-days, sorted by customer then day.

    Attributes
    ----------
    customers
        Customer ids, one per customer code (sorted ascending).
    code, day, value
        Per customer-day: customer code, day number (days since 1970-01-01) and summed value.
    """

    customers: pd.Index
    code: np.ndarray
    day: np.ndarray
    value: np.ndarray

    @property
    def first_day(self) -> np.ndarray:
        """First purchase day per customer code."""
        first = np.ones(len(self.code), dtype=bool)
        first[1:] = self.code[1:] != self.code[:-1]
        out = np.empty(len(self.customers), dtype=np.int64)
        out[self.code[first]] = self.day[first]
        return out

    @property
    def is_first(self) -> np.ndarray:
        """Whether each customer-day is that customer's first."""
        first = np.ones(len(self.code), dtype=bool)
        first[1:] = self.code[1:] != self.code[:-1]
        return first


def customer_days(
    lines: pd.DataFrame,
    *,
    value_col: str | None = "amount",
    purchases_only: bool = True,
) -> CustomerDays:
    """Merge order lines into customer-days (sorted by customer id, then day).

    Parameters
    ----------
    lines
        Order lines with ``customer_id``, ``order_ts`` and ``value_col``.
    value_col
        Column summed per customer-day; ``None`` for no values (zeros).
    purchases_only
        Ignore lines with a negative quantity (returns kept by ``returns: net``) when deciding
        which days are purchase days; their values still count on days that are.
    """
    _require(lines, ("customer_id", "order_ts") + ((value_col,) if value_col else ()))
    if lines["customer_id"].isna().any():
        raise DataContractError(
            "customer_id has missing values; clean the lines first",
            column="customer_id",
            rule="missing_customer_id",
        )
    codes, uniques = pd.factorize(lines["customer_id"], sort=True)
    days = (
        lines["order_ts"].to_numpy(dtype="datetime64[ns]").astype("datetime64[D]").astype(np.int64)
    )
    vals = (
        lines[value_col].to_numpy(dtype=np.float64)
        if value_col
        else np.zeros(len(lines), dtype=np.float64)
    )
    purchase = np.ones(len(lines), dtype=bool)
    if purchases_only and "quantity" in lines.columns:
        purchase = lines["quantity"].to_numpy(dtype=np.float64) > 0
    # One int64 key per (customer, day): days fit in 2**20 offsets from the minimum.
    d0 = int(days.min()) if len(days) else 0
    span = int(days.max()) - d0 + 1 if len(days) else 1
    key = codes.astype(np.int64) * span + (days - d0)
    order = np.argsort(key, kind="stable")
    key_s = key[order]
    start = np.ones(len(key_s), dtype=bool)
    start[1:] = key_s[1:] != key_s[:-1]
    group = np.cumsum(start) - 1
    # Values summed per customer-day in line order. lifetimes sums in (timestamp, value) order
    # with compensated summation, so monetary values agree to ~1e-14 relative, not to the bit.
    summed = np.bincount(group, weights=vals[order], minlength=int(start.sum()))
    has_purchase = np.bincount(group, weights=purchase[order], minlength=int(start.sum())) > 0
    ukey = key_s[start][has_purchase]
    return CustomerDays(
        customers=pd.Index(uniques, name="customer_id"),
        code=(ukey // span).astype(np.int64),
        day=(ukey % span + d0).astype(np.int64),
        value=summed[has_purchase],
    )


def _summary_from_days(
    cd: CustomerDays, end_day: int, unit_days: float, with_monetary: bool
) -> pd.DataFrame:
    n = len(cd.customers)
    is_first = cd.is_first
    counts = np.bincount(cd.code, minlength=n)
    present = counts > 0
    first_day = np.zeros(n, dtype=np.int64)
    first_day[cd.code[is_first]] = cd.day[is_first]
    last_day = np.zeros(n, dtype=np.int64)
    is_last = np.ones(len(cd.code), dtype=bool)
    is_last[:-1] = cd.code[1:] != cd.code[:-1]
    last_day[cd.code[is_last]] = cd.day[is_last]
    out = pd.DataFrame(
        {
            "frequency": (counts - 1).astype(np.float64),
            "recency": (last_day - first_day).astype(np.float64) / unit_days,
            "T": (end_day - first_day).astype(np.float64) / unit_days,
        },
        index=cd.customers,
    )
    if with_monetary:
        repeat = ~is_first
        sums = np.bincount(cd.code[repeat], weights=cd.value[repeat], minlength=n)
        reps = counts - 1
        mv = np.where(reps > 0, sums / np.maximum(reps, 1), 0.0)
        out["monetary_value"] = mv
    return out[present]


def _end_day(as_of: object) -> int:
    """Day number of the analysis date (the last day whose purchases count)."""
    last_instant = analysis_cutoff(as_of) - pd.Timedelta(1, "ns")
    return int(np.datetime64(last_instant, "D").astype(np.int64))


def rfm_summary(
    lines: pd.DataFrame,
    as_of: object,
    *,
    unit: str = "D",
    value_col: str | None = "amount",
) -> pd.DataFrame:
    """Per-customer ``frequency, recency, T, monetary_value`` at ``as_of``.

    Parameters
    ----------
    lines
        Cleaned order lines (``customer_id``, ``order_ts``, ``amount``).
    as_of
        Analysis date: purchases up to the end of that day count (see
        :func:`crmkit.data.clean.analysis_cutoff`); later ones are ignored.
    unit
        ``"D"``, ``"W"`` (days / 7) or ``"M"`` (days / 30.4375).
    value_col
        Line value column; ``None`` for no ``monetary_value``.

    Returns
    -------
    DataFrame indexed by ``customer_id`` (sorted), float columns, one row per customer with a
    purchase on or before ``as_of``.
    """
    ud = _unit_days(unit)
    cutoff = analysis_cutoff(as_of)
    past = lines[lines["order_ts"] < cutoff] if len(lines) else lines
    if past.empty:
        raise DataContractError(
            f"no purchases on or before the analysis date {as_of}", rule="empty_window"
        )
    cd = customer_days(past, value_col=value_col)
    return _summary_from_days(cd, _end_day(as_of), ud, value_col is not None)


def calibration_holdout_summary(
    lines: pd.DataFrame,
    calibration_end: object,
    holdout_end: object | None = None,
    *,
    unit: str = "D",
    value_col: str | None = "amount",
) -> pd.DataFrame:
    """Calibration summary at ``calibration_end`` plus what the same customers did in the
    holdout period (after ``calibration_end`` up to the end of ``holdout_end``).

    Columns: ``frequency_cal, recency_cal, T_cal, monetary_value_cal`` (as
    :func:`rfm_summary`), ``frequency_holdout`` (distinct purchase days in the holdout),
    ``monetary_value_holdout`` (mean value of those days, 0 when none) and ``duration_holdout``
    (holdout length in ``unit``). Customers whose first purchase falls in the holdout are not
    included (the cohort is fixed at calibration).
    """
    ud = _unit_days(unit)
    cal_end, cal_cut = _end_day(calibration_end), analysis_cutoff(calibration_end)
    if holdout_end is None:
        holdout_end = lines["order_ts"].max()
    hold_end, hold_cut = _end_day(holdout_end), analysis_cutoff(holdout_end)
    if hold_cut <= cal_cut:
        raise DataContractError(
            f"holdout_end {holdout_end} must come after calibration_end {calibration_end}",
            rule="time_split",
        )
    cal = rfm_summary(lines, calibration_end, unit=unit, value_col=value_col)
    cal.columns = [f"{c}_cal" for c in cal.columns]
    ts = lines["order_ts"]
    hold_lines = lines[(ts >= cal_cut) & (ts < hold_cut)]
    hold_lines = hold_lines[hold_lines["customer_id"].isin(cal.index)]
    n = len(cal)
    freq_h = np.zeros(n)
    mv_h = np.zeros(n)
    if len(hold_lines):
        cd = customer_days(hold_lines, value_col=value_col)
        pos = cal.index.get_indexer(cd.customers)
        counts = np.bincount(cd.code, minlength=len(cd.customers)).astype(np.float64)
        freq_h[pos] = counts
        if value_col is not None:
            sums = np.bincount(cd.code, weights=cd.value, minlength=len(cd.customers))
            mv_h[pos] = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    cal["frequency_holdout"] = freq_h
    if value_col is not None:
        cal["monetary_value_holdout"] = mv_h
    cal["duration_holdout"] = (hold_end - cal_end) / ud
    return cal
