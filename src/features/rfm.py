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
(customer, day) keys and ``np.bincount`` reductions instead of pandas groupbys; customer ids
are encoded by :func:`factorize_customers` (short string ids as integer keys, categorical ids
by their codes) and only the block of lines holding the window is read
(``benchmarks/bench_rfm.py``; ``docs/features_rfm.md``).

Always index columns by name: ``summary["T"]``, never ``summary.T`` (the transpose).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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


def _text_keys(ids: pd.Series) -> tuple[np.ndarray, int | None] | None:
    """Order-preserving ``uint64`` keys of short Arrow-backed string ids, or ``None``.

    Ids whose UTF-8 encodings all have the same length ``L <= 8`` map to their bytes read
    as a big-endian integer, zero-padded to 8 bytes (returned width ``L``); ids of at most 7
    bytes but of varying lengths map to their bytes zero-padded to 7 bytes, then the length
    as the last byte (returned width ``None``). Either way equal ids get equal keys,
    different ids different keys, and keys compare as the ids do in Python (UTF-8 byte
    order is code point order; a proper prefix sorts first). Integers hash and sort much
    faster than strings. ``None`` for any other storage or length (the caller falls back
    to :func:`pandas.factorize`).
    """
    if not isinstance(ids.dtype, pd.StringDtype) or ids.dtype.storage != "pyarrow":
        return None
    arr = ids.array.__arrow_array__()
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    parts = []
    lo, hi = None, 0
    for ch in chunks:
        if ch.null_count or not (pa.types.is_string(ch.type) or pa.types.is_large_string(ch.type)):
            return None
        _, obuf, dbuf = ch.buffers()
        otype = np.int64 if pa.types.is_large_string(ch.type) else np.int32
        off = np.frombuffer(obuf, dtype=otype)[ch.offset : ch.offset + len(ch) + 1]
        off = off.astype(np.int64, copy=False)
        data = np.frombuffer(dbuf, dtype=np.uint8) if dbuf is not None else np.zeros(0, np.uint8)
        length = np.diff(off)
        if len(length):
            lo = int(length.min()) if lo is None else min(lo, int(length.min()))
            hi = max(hi, int(length.max()))
        parts.append((off, data, length))
    width = hi if lo == hi and 1 <= hi <= 8 else None
    if width is None and hi > 7:
        return None
    pad = np.zeros((len(ids), 8), dtype=np.uint8)  # one row of key bytes per id
    row = 0
    for off, data, length in parts:
        m = len(length)
        rows = pad[row : row + m]
        row += m
        if width:
            rows[:, :width] = data[off[0] : off[-1]].reshape(m, width)
        else:
            rows[:, 7] = length
            begin = off[:-1]
            for j in range(hi):
                has = np.flatnonzero(length > j)
                rows[has, j] = data[begin[has] + j]
    return pad.view(">u8").ravel().astype(np.uint64), width


def _text_from_keys(keys: np.ndarray, width: int | None, dtype: pd.StringDtype) -> pd.Index:
    """The ids of :func:`_text_keys` keys, as strings of ``dtype``."""
    pad = keys.astype(">u8").view(np.uint8).reshape(len(keys), 8)
    if width:
        data = np.ascontiguousarray(pad[:, :width]).ravel()
        offsets = np.arange(len(keys) + 1, dtype=np.int64) * width
    else:
        length = pad[:, 7].astype(np.int64)
        data = pad[:, :7][np.arange(7) < length[:, None]]
        offsets = np.concatenate([[0], np.cumsum(length)])
    text = pa.Array.from_buffers(
        pa.large_string(), len(keys), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return pd.Index(pd.array(text, dtype=dtype), name="customer_id")


def _run_heads(values: np.ndarray) -> np.ndarray:
    """Positions where a run of equal adjacent values starts."""
    head = np.ones(len(values), dtype=bool)
    np.not_equal(values[1:], values[:-1], out=head[1:])
    return np.flatnonzero(head)


def factorize_customers(ids: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize(ids, sort=True)``, with the same codes and uniques (values, order and
    dtype), faster for categorical and short Arrow-backed string ids.

    Categorical: the category codes, renumbered over the used categories (in category
    order, as ``pd.factorize`` sorts a categorical). Short strings: integer keys
    (:func:`_text_keys`), one per run of equal adjacent ids (the lines of one order), hashed
    with Arrow's ``dictionary_encode``; only the small dictionary is sorted, and the sorted
    ids are decoded from it. Codes are ``int32`` or ``int64``.
    """
    if isinstance(ids.dtype, pd.CategoricalDtype):
        cat = ids.cat.codes.to_numpy()
        if len(cat) and cat.min() < 0:  # missing ids: pandas' handling
            codes, uniques = pd.factorize(ids, sort=True)
            return codes, pd.Index(uniques, name="customer_id")
        used = np.bincount(cat, minlength=len(ids.cat.categories)) > 0
        renumber = (np.cumsum(used) - 1).astype(np.int32 if len(used) < 2**31 else np.int64)
        uniques = pd.Categorical.from_codes(np.flatnonzero(used), dtype=ids.dtype)
        return np.take(renumber, cat), pd.Index(uniques, name="customer_id")
    found = _text_keys(ids)
    if found is None:
        codes, uniques = pd.factorize(ids, sort=True)
        return codes, pd.Index(uniques, name="customer_id")
    keys, width = found
    heads = _run_heads(keys)
    enc = pc.dictionary_encode(pa.array(keys[heads], type=pa.uint64()))
    dictionary = enc.dictionary.to_numpy()
    order = np.argsort(dictionary)
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    run_codes = np.take(rank, enc.indices.to_numpy())
    codes = np.repeat(run_codes, np.diff(heads, append=len(keys)))
    return codes, _text_from_keys(dictionary[order], width, ids.dtype)


def _window_mask(ns: np.ndarray, start: object, end: object) -> np.ndarray | None:
    """Lines with ``start <= order_ts < end`` (``None``: every line)."""
    in_range = None
    if start is not None:
        in_range = ns >= pd.Timestamp(start).value
    if end is not None:
        below = ns < pd.Timestamp(end).value
        in_range = below if in_range is None else in_range & below
    return in_range


def _window_block(in_range: np.ndarray | None, n: int) -> tuple[slice, np.ndarray | None]:
    """The smallest block of lines holding every in-range line (all lines when there is
    none) and the in-range mask over that block (``None`` when it is all in range)."""
    if in_range is None or not in_range.any():
        return slice(0, n), in_range
    lo = int(np.argmax(in_range))
    hi = n - int(np.argmax(in_range[::-1]))
    mask = in_range[lo:hi]
    return slice(lo, hi), None if mask.all() else mask


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
    return _purchase_days(lines, value_col, purchases_only, start, end, every_line=True)


def _purchase_days(
    lines: pd.DataFrame,
    value_col: str | None,
    purchases_only: bool,
    start: object,
    end: object,
    *,
    every_line: bool,
) -> PurchaseDays:
    """:func:`purchase_days`; with ``every_line=False`` the ``line_*`` arrays (and the
    customers) cover only the smallest block of lines holding every line in the window (all
    lines outside it are skipped, e.g. the later ones of time-ordered lines)."""
    _require(lines, ("customer_id", "order_ts") + ((value_col,) if value_col else ()))
    ids = lines["customer_id"]
    if ids.isna().any():
        raise DataContractError(
            "customer_id has missing values; clean the lines first",
            column="customer_id",
            rule="missing_customer_id",
        )
    ns = lines["order_ts"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    in_range = _window_mask(ns, start, end)
    if every_line:
        block = slice(0, len(ns))
    else:
        block, in_range = _window_block(in_range, len(ns))
    codes, uniques = factorize_customers(ids.iloc[block])
    ns = ns[block]
    vals = (
        lines[value_col].to_numpy(dtype=np.float64)[block]
        if value_col
        else np.zeros(len(ns), dtype=np.float64)
    )
    if purchases_only and "quantity" in lines.columns:
        purchase = lines["quantity"].to_numpy(dtype=np.float64)[block] > 0
    else:
        purchase = np.ones(len(ns), dtype=bool)
    # Lines outside [start, end) take no part (masked, not copied out).
    returns = ~purchase
    if in_range is not None:
        purchase &= in_range
        returns &= in_range
    days = ns // _DAY_NS
    d0 = int(days.min()) if len(days) else 0
    span = int(days.max()) - d0 + 1 if len(days) else 1
    # (customer, day) keys; 32-bit when they fit (a faster sort)
    kt = np.uint32 if len(uniques) * span < 2**32 else np.int64
    key = codes.astype(kt) * kt(span) + (days - d0).astype(kt)
    pkeys = key[purchase]
    # adjacent repeats (lines of one order) dropped before the sort; the set is the same
    pkeys = np.sort(pkeys[_run_heads(pkeys)])
    ukey = pkeys[_run_heads(pkeys)]
    on_day = purchase.copy()
    if returns.any():
        rk = key[returns]
        pos = np.minimum(np.searchsorted(ukey, rk), max(len(ukey) - 1, 0))
        on_day[returns] = ukey[pos] == rk if len(ukey) else False
    return PurchaseDays(
        customers=uniques,
        line_code=codes.astype(np.int64) if every_line else codes,
        line_day=days,
        line_value=vals,
        line_on_purchase_day=on_day,
        day_code=(ukey // kt(span)).astype(np.int64),
        day=(ukey % kt(span)).astype(np.int64) + d0,
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
        repeat = pd_.line_on_purchase_day & (pd_.line_day != np.take(first_day, c))
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
    days = _purchase_days(lines, value_col, True, None, analysis_cutoff(as_of), every_line=False)
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
    hd = _purchase_days(lines, value_col, True, cal_cut, hold_cut, every_line=False)
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
