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
``freq="D"`` and ``freq_multiplier`` 1, 7 or 30.4375, computed with one sort of integer
(customer, day) keys and ``np.bincount`` reductions instead of pandas groupbys
(``benchmarks/bench_rfm.py``).

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
    "purchase_days",
    "rfm_summary",
    "calibration_holdout_summary",
    "PurchaseDays",
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


_DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class PurchaseDays:
    """Order lines reduced to purchase days (customer-days with a purchase line).

    Attributes
    ----------
    customers
        Customer ids, ascending; customer code ``k`` is ``customers[k]``.
    line_code, line_day, line_value
        Per order line: customer code, day number (days since 1970-01-01) and value.
    line_on_purchase_day
        Per order line: whether its customer-day is a purchase day (always true for purchase
        lines; a return line counts on a day its customer also bought something).
    day_code, day
        Per purchase day, sorted by customer then day: customer code and day number.
    """

    customers: pd.Index
    line_code: np.ndarray
    line_day: np.ndarray
    line_value: np.ndarray
    line_on_purchase_day: np.ndarray
    day_code: np.ndarray
    day: np.ndarray

    def days_per_customer(self) -> np.ndarray:
        """Number of purchase days per customer code."""
        return np.bincount(self.day_code, minlength=len(self.customers))

    def first_and_last_day(self) -> tuple[np.ndarray, np.ndarray]:
        """First and last purchase day per customer code (0 where a customer has none)."""
        n = len(self.customers)
        start = np.ones(len(self.day_code), dtype=bool)
        start[1:] = self.day_code[1:] != self.day_code[:-1]
        end = np.ones(len(self.day_code), dtype=bool)
        end[:-1] = start[1:]
        first = np.zeros(n, dtype=np.int64)
        last = np.zeros(n, dtype=np.int64)
        first[self.day_code[start]] = self.day[start]
        last[self.day_code[end]] = self.day[end]
        return first, last


def purchase_days(
    lines: pd.DataFrame,
    *,
    value_col: str | None = "amount",
    purchases_only: bool = True,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
) -> PurchaseDays:
    """Reduce order lines to purchase days with sort-based numpy operations.

    Parameters
    ----------
    lines
        Order lines with ``customer_id``, ``order_ts`` and ``value_col``.
    value_col
        Line value column; ``None`` for no values (zeros).
    purchases_only
        Days whose only lines have a negative quantity (returns kept by ``returns: net``) are
        not purchase days; their lines carry no weight. With ``False`` every line's day counts.
    start, end
        Only lines with ``start <= order_ts < end`` count (masked on numpy arrays, without
        copying the frame; the ``line_*`` arrays still hold every line, with
        ``line_on_purchase_day`` false outside the range). Customers with no line in the
        range have no purchase days.
    """
    _require(lines, ("customer_id", "order_ts") + ((value_col,) if value_col else ()))
    if lines["customer_id"].isna().any():
        raise DataContractError(
            "customer_id has missing values; clean the lines first",
            column="customer_id",
            rule="missing_customer_id",
        )
    codes, uniques = pd.factorize(lines["customer_id"], sort=True)
    ns = lines["order_ts"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    in_range = None
    if start is not None:
        in_range = ns >= pd.Timestamp(start).value
    if end is not None:
        below = ns < pd.Timestamp(end).value
        in_range = below if in_range is None else in_range & below
    vals = (
        lines[value_col].to_numpy(dtype=np.float64)
        if value_col
        else np.zeros(len(lines), dtype=np.float64)
    )
    if purchases_only and "quantity" in lines.columns:
        purchase = lines["quantity"].to_numpy(dtype=np.float64) > 0
    else:
        purchase = np.ones(len(lines), dtype=bool)
    codes = codes.astype(np.int64, copy=False)
    # Lines outside [start, end) take no part (masked, not copied out).
    returns = ~purchase
    if in_range is not None:
        purchase &= in_range
        returns &= in_range
    days = ns // _DAY_NS
    d0 = int(days.min()) if len(days) else 0
    span = int(days.max()) - d0 + 1 if len(days) else 1
    key = codes * span + (days - d0)
    pkeys = np.sort(key[purchase])
    keep = np.ones(len(pkeys), dtype=bool)
    keep[1:] = pkeys[1:] != pkeys[:-1]
    ukey = pkeys[keep]
    on_day = purchase.copy()
    if returns.any():
        rk = key[returns]
        pos = np.minimum(np.searchsorted(ukey, rk), max(len(ukey) - 1, 0))
        on_day[returns] = ukey[pos] == rk if len(ukey) else False
    return PurchaseDays(
        customers=pd.Index(uniques, name="customer_id"),
        line_code=codes,
        line_day=days,
        line_value=vals,
        line_on_purchase_day=on_day,
        day_code=ukey // span,
        day=ukey % span + d0,
    )


def _summary_from_days(
    pd_: PurchaseDays, end_day: int, unit_days: float, with_monetary: bool
) -> pd.DataFrame:
    counts = pd_.days_per_customer()
    present = counts > 0
    first_day, last_day = pd_.first_and_last_day()
    out = pd.DataFrame(
        {
            "frequency": (counts - 1).astype(np.float64),
            "recency": (last_day - first_day).astype(np.float64) / unit_days,
            "T": (end_day - first_day).astype(np.float64) / unit_days,
        },
        index=pd_.customers,
    )
    if with_monetary:
        # Value of the repeat purchase days: lines on a purchase day other than the first.
        c = pd_.line_code
        repeat = pd_.line_on_purchase_day & (pd_.line_day != first_day[c])
        sums = np.bincount(c[repeat], weights=pd_.line_value[repeat], minlength=len(counts))
        reps = counts - 1
        out["monetary_value"] = np.where(reps > 0, sums / np.maximum(reps, 1), 0.0)
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
    days = purchase_days(lines, value_col=value_col, end=analysis_cutoff(as_of))
    if len(days.day) == 0:
        raise DataContractError(
            f"no purchases on or before the analysis date {as_of}", rule="empty_window"
        )
    return _summary_from_days(days, _end_day(as_of), ud, value_col is not None)


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
    n = len(cal)
    freq_h = np.zeros(n)
    mv_h = np.zeros(n)
    hd = purchase_days(lines, value_col=value_col, start=cal_cut, end=hold_cut)
    if len(hd.day):
        pos = cal.index.get_indexer(hd.customers)
        known = pos >= 0  # the calibration cohort only
        counts = hd.days_per_customer().astype(np.float64)
        freq_h[pos[known]] = counts[known]
        if value_col is not None:
            on = hd.line_on_purchase_day
            sums = np.bincount(hd.line_code[on], weights=hd.line_value[on], minlength=len(counts))
            mv = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
            mv_h[pos[known]] = mv[known]
    cal["frequency_holdout"] = freq_h
    if value_col is not None:
        cal["monetary_value_holdout"] = mv_h
    cal["duration_holdout"] = (hold_end - cal_end) / ud
    return cal
