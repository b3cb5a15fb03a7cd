"""Readable churn reasons: true sentences about one customer.

A churn reason is a feature that pushes the customer's churn score up (a positive SHAP
contribution, :meth:`crmkit.models.churn.ChurnModel.shap_values`) described in words. A
sentence is shown only when it is true and meaningful for that customer's values; otherwise
the feature is skipped and the next one pushing up is described. The conditions, per feature
(:func:`reason_applies`; ``purchase days`` = ``n_purchase_days``, days with a purchase):

=================================================  ==============================================
sentence                                           shown when
=================================================  ==============================================
``no purchase for R days (bought only once)``      one purchase day and ``R >= 1``
``no purchase for R days (usual gap G)``           2+ purchase days and ``R >= G >= 1``
                                                   (silent at least as long as the usual gap)
``customer for N days``                            ``N >= 1``
``N days between first and last purchase``         ``N >= 1`` (2+ purchase days)
``only N orders / purchase days so far``,          F score (order-count quintile) <= 2; without
``only N orders so far (F score f/5)``             an F score: ``N <= 2``
``average repeat purchase value X``                2+ purchase days
``never bought twice``                             one purchase day (``repeat buyer``: never)
``usually buys every N days``                      3+ purchase days (2+ gaps)
``irregular buyer (gaps vary by N days)``          3+ purchase days, gap std >= 1 day and >= half
                                                   the mean gap (coefficient of variation >= 0.5)
``bought only N different products / categories`` ``N <= 3``
``X% of orders with returns / cancelled``,         ``X`` rounds to at least 1 %
``X% of spend / orders in October-December``,
``X% of the coming days fall in October-December``
``BG/NBD: X% chance still a customer``             2+ purchase days (BG/NBD gives 100 % to every
                                                   one-time buyer by construction) and ``X < 50``
``BG/NBD expects E purchases in the next H days``  ``E`` prints below 1.00
``BG/NBD: X% chance of no purchase in ... days``   ``X >= 50``
``no purchases in the last W days``                no order in the last W days
``only N orders / items in the last W days``,      some, and fewer than in the W days before
``spent only X in the last W days``                (the W-day trend is negative)
``... down in the last W days vs the W before``    the W-day trend is negative
``no orders / spend in the last W days``           none in the last W days nor the W before
``orders / spend not growing in the last W days``  trend exactly 0 (a growing one is never shown)
``N orders in the same W days last year``          a customer for at least 365 days
anything else (totals, RFM score, country, ...)    the value is known
=================================================  ==============================================

A missing value is never a reason. The local and the Spark engine both call
:func:`explain_reasons` on the same features, so their reasons are identical.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "RECENCY_NAMES",
    "describe_feature",
    "describe_column",
    "reason_applies",
    "explain_reasons",
]

#: Features described by one recency sentence (described once per customer).
RECENCY_NAMES: tuple[str, ...] = ("recency_days", "days_overdue", "overdue_ratio", "r_score")
#: ``only N`` counts of products / categories are stated up to this many.
FEW_DISTINCT = 3
#: ``only N orders`` is stated for F scores (order-count quintile) up to this.
FEW_ORDERS_F_SCORE = 2


def _n(v: float) -> str:
    return f"{v:,.0f}"


def _count(v: float, noun: str) -> str:
    return f"{v:,.0f} {noun}" + ("" if round(v) == 1 else "s")


def _money(v: float) -> str:
    return f"{v:,.2f}"


#: Row-independent descriptions of single-valued features.
_SIMPLE_FORMATS: dict[str, Callable[[float], str]] = {
    "tenure_days": lambda x: f"customer for {_n(x)} days",
    "active_span_days": lambda x: f"{_n(x)} days between first and last purchase",
    "n_purchase_days": lambda x: f"only {_count(x, 'purchase day')} so far",
    "n_orders": lambda x: f"only {_count(x, 'order')} so far",
    "orders_per_month": lambda x: f"{x:.2f} orders per month",
    "total_items": lambda x: f"{_count(x, 'item')} bought in total",
    "total_spend": lambda x: f"total spend {_money(x)}",
    "rfm_score": lambda x: f"RFM score {_n(x)} of 15",
    "mean_basket_size": lambda x: f"{x:.1f} items per order",
    "mean_basket_value": lambda x: f"average order value {_money(x)}",
    "monetary_value": lambda x: f"average repeat purchase value {_money(x)}",
    "has_repeat": lambda x: "never bought twice" if x == 0 else "repeat buyer",
    "gap_mean_days": lambda x: f"usually buys every {_n(x)} days",
    "gap_std_days": lambda x: f"irregular buyer (gaps vary by {_n(x)} days)",
    "distinct_products": lambda x: f"bought only {_count(x, 'different product')}",
    "distinct_categories": lambda x: f"bought from only {_count(x, 'category')}".replace(
        "categorys", "categories"
    ),
    "return_rate": lambda x: f"{x:.0%} of orders with returns",
    "cancellation_rate": lambda x: f"{x:.0%} of orders cancelled",
    "share_spend_q4": lambda x: f"{x:.0%} of spend in October-December",
    "share_orders_q4": lambda x: f"{x:.0%} of orders in October-December",
    "bg_p_alive": lambda x: f"BG/NBD: {x:.0%} chance still a customer",
    "window_q4_share": lambda x: f"{x:.0%} of the coming days fall in October-December",
}
#: Shares printed as whole percentages: shown from 0.5 % on (printed as at least 1 %).
_SHARES = (
    "return_rate",
    "cancellation_rate",
    "share_spend_q4",
    "share_orders_q4",
    "window_q4_share",
)


def _floats(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


Column = Callable[[str], Any]


def _getter(col: Column, n: int) -> Callable[[str, float], np.ndarray]:
    def other(c: str, default: float = np.nan) -> np.ndarray:
        x = col(c)
        if x is None:
            return np.full(n, default, dtype=np.float64)
        return _floats(x)

    return other


def _purchase_days(other: Callable[[str, float], np.ndarray]) -> np.ndarray:
    """Purchase days per row: ``n_purchase_days``, else 1 / 2+ from ``has_repeat`` (2 for a
    repeat buyer: at least two), else NaN."""
    npd = other("n_purchase_days", np.nan)
    hr = other("has_repeat", np.nan)
    return np.where(np.isnan(npd), np.where(np.isnan(hr), np.nan, np.where(hr == 0, 1.0, 2.0)), npd)


def reason_applies(name: str, col: Column, n: int) -> np.ndarray:
    """Whether the sentence of feature ``name`` is true and meaningful, for ``n`` rows at once
    (``col(c)``: the rows' values of feature ``c``, ``None`` when there is no such feature).
    The conditions are in the module docstring."""
    other = _getter(col, n)
    with np.errstate(invalid="ignore"):
        if name in RECENCY_NAMES:
            rec = other("recency_days")
            days = _purchase_days(other)
            gap = other("gap_mean_days")
            once = days < 2
            repeat = (days >= 2) | np.isnan(days)
            return (rec >= 1) & (once | (repeat & (gap >= 1) & (rec >= gap)))
        raw = col(name)
        if raw is None:
            return np.zeros(n, dtype=bool)
        arr = np.asarray(raw)
        if arr.dtype.kind not in "biuf":
            return np.array([not _missing(x) for x in arr.tolist()], dtype=bool)
        v = arr.astype(np.float64)
        known = ~np.isnan(v)
        days = _purchase_days(other)
        m = re.fullmatch(r"(orders|items|spend)_(\d+)d", name)
        if m:
            what, w = m.groups()
            orders = other(f"orders_{w}d", np.nan)
            orders = np.where(np.isnan(orders), v if what == "orders" else np.nan, orders)
            trend = other(f"{'spend' if what == 'spend' else 'orders'}_trend_{w}d")
            return known & ((orders == 0) | ((orders > 0) & (trend < 0)))
        m = re.fullmatch(r"(orders|spend)_trend_(\d+)d", name)
        if m:
            return known & (v <= 0)
        if re.fullmatch(r"(orders|bought)_same_(\d+)d_last_year", name):
            tenure = other("tenure_days", np.inf)
            return known & (tenure >= 365)
        if re.fullmatch(r"bg_expected_purchases_(\d+)d", name):
            return known & (v < 0.995)  # printed below 1.00
        if re.fullmatch(r"bg_p_no_purchase_(\d+)d", name):
            return known & (v >= 0.5)
        if name in ("n_orders", "n_purchase_days", "f_score"):
            f = other("f_score")
            count = other("n_orders") if name == "f_score" else v
            return known & np.where(np.isnan(f), count <= 2, f <= FEW_ORDERS_F_SCORE)
        rules: dict[str, np.ndarray] = {
            "tenure_days": v >= 1,
            "active_span_days": v >= 1,
            "monetary_value": days >= 2,
            "has_repeat": v == 0,
            "gap_mean_days": days >= 3,
            "gap_std_days": (days >= 3) & (v >= 1) & (v >= 0.5 * other("gap_mean_days")),
            "distinct_products": v <= FEW_DISTINCT,
            "distinct_categories": v <= FEW_DISTINCT,
            "bg_p_alive": (days >= 2) & (v < 0.5),
        }
        if name in rules:
            return known & rules[name]
        if name in _SHARES:
            return known & (v >= 0.005)
        return known


def _missing(x: Any) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def describe_column(name: str, col: Column, n: int) -> list[str | None]:
    """The sentences of feature ``name`` for ``n`` rows at once (``col(c)`` returns the rows'
    values of feature ``c`` as an array, ``None`` when there is no such feature); ``None``
    where the sentence would not be true or meaningful (:func:`reason_applies`)."""
    ok = reason_applies(name, col, n).tolist()
    texts = _texts(name, col, n)
    return [t if o else None for o, t in zip(ok, texts)]


def describe_feature(name: str, row: Mapping[str, Any]) -> str | None:
    """One customer's value of a feature in words (``row`` maps feature names to values),
    e.g. ``"no purchase for 120 days (usual gap 35)"``; ``None`` when that sentence would not
    be true or meaningful for this customer (:func:`reason_applies`)."""

    def col(c: str) -> Any:
        if c not in row:
            return None
        x = row[c]
        if _missing(x):
            return np.array([np.nan])
        return np.array([x], dtype=object if isinstance(x, str) else None)

    return describe_column(name, col, 1)[0]


def _texts(name: str, col: Column, n: int) -> list[str]:
    other = _getter(col, n)
    if name in RECENCY_NAMES:
        once = (_purchase_days(other) < 2).tolist()
        rec, gap = other("recency_days").tolist(), other("gap_mean_days").tolist()
        return [
            f"no purchase for {_n(r)} days (bought only once)"
            if o
            else f"no purchase for {_n(r)} days (usual gap {_n(g)})"
            for r, o, g in zip(rec, once, gap)
        ]
    raw = col(name)
    if raw is None:
        return [""] * n
    arr = np.asarray(raw)
    if arr.dtype.kind not in "biuf":
        prefix = {"country": "based in", "channel": "usually orders via"}.get(name)
        return [f"{prefix} {x}" if prefix else f"{name} = {x}" for x in arr.tolist()]
    v = np.nan_to_num(arr.astype(np.float64))
    vl = v.tolist()
    m = re.fullmatch(r"(orders|items|spend)_(\d+)d", name)
    if m:
        what, w = m.groups()
        none = (other(f"orders_{w}d", np.nan) == 0).tolist()
        if what == "orders":
            none = [z or x == 0 for z, x in zip(none, vl)]
        if what == "spend":
            some = [f"spent only {_money(x)} in the last {w} days" for x in vl]
        else:
            some = [f"only {_count(x, what[:-1])} in the last {w} days" for x in vl]
        return [f"no purchases in the last {w} days" if z else s for z, s in zip(none, some)]
    m = re.fullmatch(r"(orders|spend)_trend_(\d+)d", name)
    if m:
        what, w = m.groups()
        now = other(f"{what}_{w}d").tolist()
        out = []
        for x, z in zip(vl, now):
            if x <= -0.999:
                out.append(f"no {what} in the last {w} days after some in the {w} days before")
            elif x < 0:
                out.append(f"{what} down in the last {w} days vs the {w} days before")
            elif z == 0:
                out.append(f"no {what} in the last {w} days")
            else:
                out.append(f"{what} not growing in the last {w} days")
        return out
    m = re.fullmatch(r"(orders|bought)_same_(\d+)d_last_year", name)
    if m:
        w = m.group(2)
        orders = other(f"orders_same_{w}d_last_year")
        orders = np.where(np.isnan(orders), v, orders).tolist()
        return [f"{_n(o)} orders in the same {w} days last year" for o in orders]
    m = re.fullmatch(r"bg_expected_purchases_(\d+)d", name)
    if m:
        return [f"BG/NBD expects {x:.2f} purchases in the next {m.group(1)} days" for x in vl]
    m = re.fullmatch(r"bg_p_no_purchase_(\d+)d", name)
    if m:
        return [f"BG/NBD: {x:.0%} chance of no purchase in the next {m.group(1)} days" for x in vl]
    if name == "f_score":
        orders = np.nan_to_num(other("n_orders")).tolist()
        return [f"only {_count(o, 'order')} so far (F score {_n(x)}/5)" for o, x in zip(orders, vl)]
    if name == "m_score":
        spend = np.nan_to_num(other("total_spend")).tolist()
        return [f"total spend {_money(t)} (M score {_n(x)}/5)" for t, x in zip(spend, vl)]
    if name in _SIMPLE_FORMATS:
        f = _SIMPLE_FORMATS[name]
        return [f(x) for x in vl]
    return [f"{name} = {x:.3g}" for x in vl]


def explain_reasons(features: pd.DataFrame, contributions: pd.DataFrame, k: int = 3) -> pd.Series:
    """Per row, up to ``k`` reasons: the features with the largest positive contributions
    (SHAP values, pushing churn up) whose sentence is true and meaningful for that row
    (:func:`reason_applies`), described by :func:`describe_column`; fewer when fewer qualify.
    Related features (recency, days overdue, overdue ratio, R score) are described once.

    Vectorised: the conditions are checked per feature column for all rows, then each
    candidate feature is described for all rows that need it at once; texts repeated by
    related features are kept once."""
    cols = [c for c in contributions.columns if c != "bias"]
    vals = contributions[cols].to_numpy(dtype=np.float64).copy()
    n = len(features)
    arrays: dict[str, np.ndarray] = {}

    def column(c: str) -> np.ndarray | None:
        if c not in features.columns:
            return None
        if c not in arrays:
            s = features[c]
            arrays[c] = (
                s.to_numpy(dtype=np.float64, na_value=np.nan)
                if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
                else s.astype(object).to_numpy()
            )
        return arrays[c]

    for j, c in enumerate(cols):
        if n:
            vals[~reason_applies(c, column, n), j] = -np.inf
    width = min(len(cols), 3 * k)
    order = np.argsort(-vals, axis=1, kind="stable")[:, :width]
    top = np.take_along_axis(vals, order, axis=1)
    positive = top > 0
    texts = np.empty(order.shape, dtype=object)
    for j in np.unique(order[positive]) if n else []:
        rows, pos = np.nonzero((order == j) & positive)

        def col(c: str, rows: np.ndarray = rows) -> Any:
            a = column(c)
            return None if a is None else a[rows]

        texts[rows, pos] = _texts(cols[j], col, len(rows))
    out = []
    for p, t in zip(positive.tolist(), texts.tolist()):
        reasons: list[str] = []
        for ok, text in zip(p, t):
            if not ok or len(reasons) >= k:
                break
            if text not in reasons:  # e.g. recency and days overdue: one sentence
                reasons.append(text)
        out.append(reasons)
    return pd.Series(out, index=features.index, name="top_reasons", dtype=object)
