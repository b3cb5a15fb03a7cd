"""Behavioural features of customers for churn models, from cleaned order lines.

:func:`behaviour_features` turns order lines (``crmkit.data.clean_lines(...).lines``) and an
analysis date into one row per customer who bought on or before that date: recency and
tenure, activity in trailing windows and its trend, inter-purchase gaps and how overdue the
customer is against their own rhythm, breadth (products, categories), baskets, returns and
cancellations, seasonality, and the customer's usual country and channel. The full feature
dictionary, with every edge-case convention, is ``docs/features_behaviour.md``.

Conventions
-----------
* Only lines with ``order_ts < analysis_cutoff(as_of)`` are read (the past); the *cutoff* ``C``
  is that instant. Windows are half-open and end at the cutoff: the ``w``-day window holds the
  lines with ``order_ts`` in ``[C - w days, C)``.
* A *purchase line* has ``quantity > 0``; a *return line* ``quantity < 0`` (kept by
  ``returns: net`` cleaning). An *order* is a distinct ``(customer_id, order_id)``; a
  *purchase order* holds at least one purchase line and is dated by its earliest purchase
  line. A *purchase day* is a calendar day with a purchase line, as in
  :func:`crmkit.features.rfm.purchase_days` (so ``n_purchase_days`` is ``rfm_summary``'s
  ``frequency + 1``, ``tenure_days`` its ``T`` in days).
* Spend is net (returns subtract); basket value and seasonal spend shares use purchase lines.
* Categorical columns (``country``, ``channel``) hold the value on most of the customer's
  purchase orders; their categories come from the past lines only, so they are leakage-free.
* Every numeric feature is finite for every customer, including single-order customers,
  customers whose orders all fall on one day and zero-value orders.

Everything is computed with sort-based numpy reductions over integer customer codes (one
``np.sort`` of int64 keys per distinct count, ``np.bincount`` per sum); there is no Python loop
over customers or orders. Customer-days are found with a plain ``np.sort`` of
``(customer, day)`` keys, as in :func:`~crmkit.features.rfm.purchase_days`
(``tests/features/test_behaviour.py`` checks them against ``rfm_summary``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from crmkit.data.clean import analysis_cutoff
from crmkit.data.orders import convention_holds, id_shape
from crmkit.errors import DataContractError
from crmkit.features.rfm import factorize_customers

__all__ = ["behaviour_features", "DEFAULT_WINDOWS", "DEFAULT_SEASON_WINDOWS"]

#: Trailing windows (days) of the activity and trend features.
DEFAULT_WINDOWS: tuple[int, ...] = (30, 90, 180, 365)
#: Lengths (days) of the prediction windows whose same period one year earlier is described.
DEFAULT_SEASON_WINDOWS: tuple[int, ...] = (30, 90)

_DAY_NS = 86_400 * 10**9
_REQUIRED = ("customer_id", "order_id", "order_ts", "quantity", "amount")


# --------------------------------------------------------------------------------------------
# input checks


def _check_windows(windows: Sequence[int], name: str, upper: int | None = None) -> list[int]:
    values = list(windows)
    for w in values:
        if isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 1:
            raise DataContractError(
                f"{name} must be whole numbers of days >= 1, got {w!r}", rule="window_length"
            )
        if upper is not None and w > upper:
            raise DataContractError(
                f"{name} must be at most {upper} days, got {w!r}",
                rule="window_length",
                hint="a window one year back longer than a year would reach past the cutoff",
            )
    return sorted({int(w) for w in values})


def _check_lines(lines: pd.DataFrame) -> None:
    if not isinstance(lines, pd.DataFrame):
        raise DataContractError(
            f"expected a DataFrame of order lines, got {type(lines).__name__}",
            rule="input_type",
        )
    missing = [c for c in _REQUIRED if c not in lines.columns]
    if missing:
        raise DataContractError(
            f"order lines lack column(s) {missing}",
            column=missing[0],
            rule="required_column",
            hint="pass cleaned lines: crmkit.data.clean.clean_lines(...).lines",
        )
    if not pd.api.types.is_datetime64_any_dtype(lines["order_ts"]):
        raise DataContractError(
            f"order_ts must hold timestamps, got dtype {lines['order_ts'].dtype}",
            column="order_ts",
            rule="column_type",
            hint="pass cleaned lines: crmkit.data.clean.clean_lines(...).lines",
        )
    for col in ("customer_id", "order_id", "order_ts"):
        if lines[col].isna().any():
            raise DataContractError(
                f"{col} has missing values; clean the lines first",
                column=col,
                rule=f"missing_{col}",
                hint="crmkit.data.clean.clean_lines drops lines that cannot be used",
            )
    for col in ("quantity", "amount"):
        if not pd.api.types.is_numeric_dtype(lines[col]):
            raise DataContractError(
                f"{col} must be numeric, got dtype {lines[col].dtype}",
                column=col,
                rule="column_type",
            )


def _timestamps_ns(ts: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch, naive; tz-aware stamps are taken in UTC (as the cutoff)."""
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return ts.to_numpy(dtype="datetime64[ns]").view(np.int64)


def _cutoff_ns(as_of: object) -> int:
    try:
        cutoff = analysis_cutoff(as_of)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise DataContractError(
            f"as_of {as_of!r} is not a date or timestamp ({exc})", rule="as_of"
        ) from None
    if pd.isna(cutoff):
        raise DataContractError("as_of is missing", rule="as_of")
    return int(cutoff.as_unit("ns").value)


# --------------------------------------------------------------------------------------------
# vectorised helpers


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Distinct values of an int64 array, ascending (``np.sort`` then run starts; much faster
    than ``np.unique`` and ``pd.unique`` on ten million keys)."""
    k = np.sort(keys)
    keep = np.ones(len(k), dtype=bool)
    keep[1:] = k[1:] != k[:-1]
    return k[keep]


def _ratio(num: np.ndarray, den: np.ndarray, fallback: float | np.ndarray = 0.0) -> np.ndarray:
    """``num / den`` where ``den > 0``, else ``fallback``."""
    out = np.empty(len(num), dtype=np.float64)
    out[:] = fallback
    np.divide(num, den, out=out, where=den > 0)
    return out


def _trend(recent: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Symmetric relative change ``(r - p) / (|r| + |p|)`` in [-1, 1]; 0 when both are 0."""
    r = recent.astype(np.float64)
    p = previous.astype(np.float64)
    return _ratio(r - p, np.abs(r) + np.abs(p))


def _distinct_per_customer(cust: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Number of distinct non-missing (``>= 0``) value codes per customer code."""
    ok = values >= 0
    width = np.int64(values.max() + 1) if ok.any() else np.int64(1)
    pairs = _sorted_unique(cust[ok] * width + values[ok])
    return np.bincount(pairs // width, minlength=n).astype(np.int64)


def _usual_value(cust_of_order: np.ndarray, value_of_order: np.ndarray, n: int) -> np.ndarray:
    """Per customer, the value code on most of their orders (ties: the smallest code; -1 when
    none of their orders has a value, code -1)."""
    ok = value_of_order >= 0
    width = np.int64(value_of_order.max() + 1) if ok.any() else np.int64(1)
    k = np.sort(cust_of_order[ok] * width + value_of_order[ok])
    start = np.ones(len(k), dtype=bool)
    start[1:] = k[1:] != k[:-1]
    at = np.flatnonzero(start)
    counts = np.diff(np.append(at, len(k)))
    kc, kv = k[at] // width, k[at] % width
    order = np.lexsort((kv, -counts, kc))
    first = np.ones(len(order), dtype=bool)
    first[1:] = kc[order][1:] != kc[order][:-1]
    out = np.full(n, -1, dtype=np.int64)
    out[kc[order][first]] = kv[order][first]
    return out


def _window_sum(per_bucket: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Row sums over the age buckets ``lo .. hi - 1``."""
    return per_bucket[:, lo:hi].sum(axis=1)


class _AgeBuckets:
    """Age boundaries ``B`` (ns before the cutoff, ascending). Bucket 0 holds ages ``<= B[0]``,
    bucket ``j`` ages in ``(B[j-1], B[j]]`` and the last bucket ages ``> B[-1]``; the lines of a
    window ``[C - hi, C - lo)`` are then exactly the buckets ``edge(lo) .. edge(hi) - 1``."""

    def __init__(self, ages: set[int]) -> None:
        self.bounds = np.array(sorted(ages), dtype=np.int64)
        self.size = len(self.bounds) + 1

    def of(self, age: np.ndarray) -> np.ndarray:
        """Bucket of each age."""
        return np.searchsorted(self.bounds, age)

    def edge(self, age: int) -> int:
        """Number of buckets holding only ages ``<= age`` (``age`` 0 or a boundary)."""
        return 0 if age == 0 else int(np.searchsorted(self.bounds, age)) + 1

    def per_customer(
        self, cust: np.ndarray, bucket: np.ndarray, n: int, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Per customer (rows) and bucket (columns): count, or sum of ``weights``."""
        counts = np.bincount(cust * self.size + bucket, weights=weights, minlength=n * self.size)
        return counts.reshape(n, self.size)


def _is_q4_day(days: np.ndarray) -> np.ndarray:
    """Whether each day number (days since 1970-01-01) falls in October-December."""
    if len(days) == 0:
        return np.zeros(0, dtype=bool)
    d0 = int(days.min())
    calendar = np.arange(d0, int(days.max()) + 1).astype("datetime64[D]")
    month = calendar.astype("datetime64[M]").astype(np.int64) % 12
    return (month >= 9)[days - d0]


def _cancelled_ids(
    uniques: pd.Index, codes: np.ndarray, quantity: np.ndarray, prefixes: tuple[str, ...]
) -> np.ndarray:
    """Which distinct order ids (``uniques``; ``codes`` maps every line to one) are cancelled
    orders: those starting with a prefix that the lines show as a cancellation convention,
    decided as the cleaning rule decides it (:func:`crmkit.data.orders.convention_holds` on
    all the given lines: the prefixed lines mostly negative, the rest of their ids shaped like
    the other order ids). Ordinary orders such as ``CA-2019-103800`` or ``CUST-17`` are not
    cancellations."""
    cancel = np.zeros(len(uniques), dtype=bool)
    if not prefixes or not len(uniques):
        return cancel
    text = pd.Series(uniques.astype(str), dtype="str")
    shapes = None
    for p in prefixes:
        pref_u = text.str.startswith(p).to_numpy(dtype=bool)
        if not pref_u.any():
            continue
        if shapes is None:
            shapes = id_shape(text)
        pref = pref_u[codes]
        plain = set(shapes[~pref_u])
        match_u = np.zeros(len(uniques), dtype=bool)
        match_u[pref_u] = id_shape(text[pref_u].str.slice(len(p))).isin(plain).to_numpy()
        negative = int((pref & (quantity < 0)).sum())
        if convention_holds(int(pref.sum()), negative, int(match_u[codes].sum())):
            cancel |= pref_u
    return cancel


# --------------------------------------------------------------------------------------------
# the features


def behaviour_features(
    lines: pd.DataFrame,
    as_of: object,
    *,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    season_windows: Sequence[int] = DEFAULT_SEASON_WINDOWS,
    cancellation_prefixes: Sequence[str] = ("C",),
    categoricals: Sequence[str] = ("country", "channel"),
) -> pd.DataFrame:
    """Behavioural features per customer at an analysis date, for churn models.

    Parameters
    ----------
    lines
        Cleaned order lines (:func:`crmkit.data.clean.clean_lines` ``.lines``): ``customer_id``,
        ``order_id``, ``order_ts``, ``quantity``, ``amount``; ``product_id``, ``category`` and
        the ``categoricals`` columns are used when present. Not modified.
    as_of
        Analysis date: lines with ``order_ts < analysis_cutoff(as_of)`` count, later ones are
        ignored (a date covers that whole day).
    windows
        Trailing window lengths ``w`` in days (sorted, duplicates dropped): activity over
        ``[C - w days, C)`` and its trend against ``[C - 2w days, C - w days)``.
    season_windows
        Prediction-window lengths ``h`` in days (at most 365; sorted, duplicates dropped):
        activity over ``[C - 1 year, C - 1 year + h days)``, the same period one calendar year
        before the prediction window ``[C, C + h days)``.
    cancellation_prefixes
        Order-id prefixes that mark cancelled orders (as clean_lines'
        ``cancellation_prefixes``); empty for none. A prefix counts only where the lines
        show the convention, as the cleaning rule decides it (``cancellation_convention:
        auto``): ids such as ``CA-2019-103800`` or ``CUST-17`` on ordinary, positive lines
        are ordinary orders.
    categoricals
        Columns whose usual value per customer becomes a ``category`` column, when present in
        ``lines``.

    Returns
    -------
    pandas.DataFrame
        One row per customer with a purchase line on or before ``as_of`` (the customers of
        :func:`crmkit.features.rfm.rfm_summary`), indexed by ``customer_id`` (sorted). Columns,
        in this order (``docs/features_behaviour.md`` defines each one):

        ``recency_days, tenure_days, n_purchase_days, n_orders, total_items, total_spend,
        mean_basket_size, mean_basket_value``; per ``w``: ``orders_{w}d, items_{w}d,
        spend_{w}d``; per ``w``: ``orders_trend_{w}d, spend_trend_{w}d``; ``has_repeat,
        gap_mean_days, gap_std_days, days_overdue, overdue_ratio``; ``distinct_products`` (only
        with ``product_id``), ``distinct_categories`` (only with ``category``); ``return_rate,
        cancellation_rate, share_spend_q4, share_orders_q4``; per ``h``:
        ``orders_same_{h}d_last_year, bought_same_{h}d_last_year``; then the categoricals.

        Counts and whole days are ``int64``, the other numeric features ``float64``, all finite;
        categoricals have ``category`` dtype: the value on most of the customer's purchase
        orders, an order's value being that of its first purchase line (ties: the value that
        sorts first; missing only when none of those lines has a value).

    Raises
    ------
    DataContractError
        Missing or mistyped columns, missing ids or timestamps, non-finite quantities or
        amounts before the cutoff, bad window lengths, an unreadable ``as_of``, or no purchase
        on or before it.
    """
    _check_lines(lines)
    wins = _check_windows(windows, "windows")
    seasons = _check_windows(season_windows, "season_windows", upper=365)
    prefixes = tuple(cancellation_prefixes)
    cutoff = _cutoff_ns(as_of)
    end_day = (cutoff - 1) // _DAY_NS

    # ---- the past, restricted to customers with a purchase line in it ----------------------
    ts_all = _timestamps_ns(lines["order_ts"])
    past = ts_all < cutoff
    qty_all = lines["quantity"].to_numpy(dtype=np.float64)
    amt_all = lines["amount"].to_numpy(dtype=np.float64)
    for col, values in (("quantity", qty_all), ("amount", amt_all)):
        bad = past & ~np.isfinite(values)
        if bad.any():
            rows = [(int(i) + 1, values[i]) for i in np.flatnonzero(bad)[:5]]
            raise DataContractError(
                f"{col} has {int(bad.sum())} missing or infinite value(s)",
                column=col,
                rule="invalid_values",
                rows=rows,
                hint="crmkit.data.clean.clean_lines drops lines that cannot be used",
            )
    cust_all, cust_ids = factorize_customers(lines["customer_id"])
    buyers = np.bincount(cust_all[past & (qty_all > 0)], minlength=len(cust_ids)) > 0
    if not buyers.any():
        raise DataContractError(
            f"no purchases on or before the analysis date {as_of}", rule="empty_window"
        )
    sel = past & buyers[cust_all]
    c = (np.cumsum(buyers) - 1)[cust_all[sel]]
    n = int(buyers.sum())
    t = ts_all[sel]
    q = qty_all[sel]
    a = amt_all[sel]
    day = t // _DAY_NS
    pos = q > 0
    q_pos = np.where(pos, q, 0.0)
    a_pos = np.where(pos, a, 0.0)

    # ---- purchase days: recency, tenure, gaps -------------------------------------------------
    d0 = int(day.min())
    span = np.int64(int(day.max()) - d0 + 1)
    cust_days = _sorted_unique(c[pos] * span + (day[pos] - d0))
    dcode, dday = cust_days // span, cust_days % span + d0
    n_days = np.bincount(dcode, minlength=n)
    first = np.ones(len(dcode), dtype=bool)
    first[1:] = dcode[1:] != dcode[:-1]
    last = np.ones(len(dcode), dtype=bool)
    last[:-1] = first[1:]
    first_day = dday[first]  # every customer has a purchase day: one entry per code, in order
    last_day = dday[last]
    recency = end_day - last_day
    tenure = end_day - first_day
    has_repeat = n_days >= 2
    gap_mean = np.where(
        has_repeat,
        (last_day - first_day) / np.maximum(n_days - 1, 1),
        tenure.astype(np.float64),
    )
    gaps = np.diff(dday)[~first[1:]].astype(np.float64)
    gcode = dcode[1:][~first[1:]]
    dev2 = (gaps - gap_mean[gcode]) ** 2
    gap_std = np.sqrt(_ratio(np.bincount(gcode, weights=dev2, minlength=n), n_days - 1.0))

    # ---- orders ------------------------------------------------------------------------------
    oid_all, oid_uniques = pd.factorize(lines["order_id"])
    oid = oid_all[sel]
    o = oid
    order_cust = np.empty(len(oid_uniques), dtype=np.int64)
    order_cust[o] = c
    if (order_cust[o] != c).any():  # an order id used by several customers: key on both
        o = pd.factorize(c * np.int64(len(oid_uniques)) + oid)[0]
        order_cust = np.empty(int(o.max()) + 1, dtype=np.int64)
        order_cust[o] = c
    n_ord = len(order_cust)
    seen = np.bincount(o, minlength=n_ord) > 0
    is_purchase = np.bincount(o[pos], minlength=n_ord) > 0
    is_return = np.bincount(o[q < 0], minlength=n_ord) > 0
    cancel_id = _cancelled_ids(oid_uniques, oid_all, qty_all, prefixes)
    is_cancel = np.bincount(o[cancel_id[oid]], minlength=n_ord) > 0
    order_ts = np.full(n_ord, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(order_ts, o[pos], t[pos])
    p_cust = order_cust[is_purchase]
    p_ts = order_ts[is_purchase]
    n_orders = np.bincount(p_cust, minlength=n)
    all_orders = np.bincount(order_cust[seen], minlength=n)
    returns = np.bincount(order_cust[is_return & ~is_cancel], minlength=n)
    cancels = np.bincount(order_cust[is_cancel], minlength=n)

    total_items = np.bincount(c, weights=q_pos, minlength=n)
    total_spend = np.bincount(c, weights=a, minlength=n)
    gross = np.bincount(c, weights=a_pos, minlength=n)

    # ---- trailing windows, their trends and last year's windows: one pass of bincounts -------
    cut_ts = pd.Timestamp(cutoff, unit="ns")
    year_age = cutoff - int((cut_ts - pd.DateOffset(years=1)).as_unit("ns").value)
    ages = {w * _DAY_NS for w in wins} | {2 * w * _DAY_NS for w in wins}
    ages |= {year_age} | {year_age - h * _DAY_NS for h in seasons}
    ages.discard(0)
    buckets = _AgeBuckets(ages)
    line_bucket = buckets.of(cutoff - t)
    items_b = buckets.per_customer(c, line_bucket, n, weights=q_pos)
    spend_b = buckets.per_customer(c, line_bucket, n, weights=a)
    orders_b = buckets.per_customer(p_cust, buckets.of(cutoff - p_ts), n)

    cols: dict[str, object] = {
        "recency_days": recency.astype(np.int64),
        "tenure_days": tenure.astype(np.int64),
        "n_purchase_days": n_days.astype(np.int64),
        "n_orders": n_orders.astype(np.int64),
        "total_items": total_items,
        "total_spend": total_spend,
        "mean_basket_size": total_items / n_orders,
        "mean_basket_value": gross / n_orders,
    }
    trends: dict[str, np.ndarray] = {}
    for w in wins:
        lo, hi = buckets.edge(w * _DAY_NS), buckets.edge(2 * w * _DAY_NS)
        orders_w = _window_sum(orders_b, 0, lo).astype(np.int64)
        spend_w = _window_sum(spend_b, 0, lo)
        cols[f"orders_{w}d"] = orders_w
        cols[f"items_{w}d"] = _window_sum(items_b, 0, lo)
        cols[f"spend_{w}d"] = spend_w
        trends[f"orders_trend_{w}d"] = _trend(orders_w, _window_sum(orders_b, lo, hi))
        trends[f"spend_trend_{w}d"] = _trend(spend_w, _window_sum(spend_b, lo, hi))
    cols.update(trends)
    cols["has_repeat"] = has_repeat.astype(np.int64)
    cols["gap_mean_days"] = gap_mean
    cols["gap_std_days"] = gap_std
    cols["days_overdue"] = recency - gap_mean
    cols["overdue_ratio"] = recency / np.maximum(gap_mean, 1.0)

    # ---- breadth -----------------------------------------------------------------------------
    for col, name in (("product_id", "distinct_products"), ("category", "distinct_categories")):
        if col in lines.columns:
            codes = pd.factorize(lines[col])[0][sel]
            cols[name] = _distinct_per_customer(c[pos], codes[pos], n)

    # ---- returns, cancellations, seasonality ---------------------------------------------------
    cols["return_rate"] = returns / all_orders
    cols["cancellation_rate"] = cancels / all_orders
    share_orders_q4 = np.bincount(p_cust[_is_q4_day(p_ts // _DAY_NS)], minlength=n) / n_orders
    q4_value = np.bincount(c, weights=np.where(_is_q4_day(day), a_pos, 0.0), minlength=n)
    cols["share_spend_q4"] = _ratio(q4_value, gross, fallback=share_orders_q4)
    cols["share_orders_q4"] = share_orders_q4
    for h in seasons:
        lo, hi = buckets.edge(year_age - h * _DAY_NS), buckets.edge(year_age)
        orders_ly = _window_sum(orders_b, lo, hi).astype(np.int64)
        cols[f"orders_same_{h}d_last_year"] = orders_ly
        cols[f"bought_same_{h}d_last_year"] = (orders_ly > 0).astype(np.int64)

    # ---- usual country / channel: the value on each purchase order's first purchase line ----
    wanted = [col for col in categoricals if col in lines.columns]
    if wanted:
        first_line = np.full(n_ord, len(lines), dtype=np.int64)
        rows = np.flatnonzero(sel)[pos]
        np.minimum.at(first_line, o[pos], rows)
        first_line = first_line[is_purchase]
    for col in wanted:
        codes, uniques = pd.factorize(lines[col].iloc[first_line], sort=True)
        usual = _usual_value(p_cust, codes, n)
        cols[col] = pd.Categorical.from_codes(usual, categories=pd.Index(uniques))

    return pd.DataFrame(cols, index=pd.Index(cust_ids[buyers], name="customer_id"))
