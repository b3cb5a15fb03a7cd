"""RFM scores (quintile or fixed e-mail targeting cut points) and named customer segments.

Everything is a pure function of cleaned order lines and an analysis date ``as_of``: only lines
with ``order_ts < analysis_cutoff(as_of)`` are read (see
:func:`crmkit.data.clean.analysis_cutoff`), the input frame is never modified, and all work is
vectorised over customers (numpy reductions on integer codes, no Python loop per customer).

Orders
------
An *order* is a distinct ``(customer_id, order_id)`` pair among the past lines. It is a
*purchase order* when at least one of its lines has ``quantity > 0`` (every order is one when
the lines carry no ``quantity``); an order made only of negative lines (a cancellation or
return kept by ``returns: net``, e.g. Online Retail's ``C`` invoices) is not a purchase but its
(negative) value still counts in spend. The order's timestamp is the earliest of its lines'
``order_ts``; its day is that timestamp's calendar day; its value is the sum of its lines'
``amount``.

Raw measures (:func:`rfm_measures`)
-----------------------------------
With ``as_of_day`` the calendar day of the analysis date (the last day whose purchases count):

``n_orders``
    number of purchase orders;
``total_spend``
    sum of ``amount`` over all past lines of the customer (shop currency; returns kept as
    negative lines reduce it);
``avg_order_value``
    ``total_spend / n_orders`` (shop currency per order; net of returns);
``days_since_first``
    ``as_of_day - day of the first purchase order`` (days, >= 0);
``days_since_last``
    ``as_of_day - day of the last purchase order`` (days, >= 0);
``orders_per_month``
    ``n_orders / max(days_since_first / 30.4375, 1)``: purchase orders per average month of
    tenure, tenure floored at one month so that a customer who placed one order last week
    counts as one order per month, not four.

Only customers with at least one purchase order on or before ``as_of`` are rows.

Scores (:func:`score_rfm`)
--------------------------
``r_score`` from ``days_since_last`` (fewer days is better), ``f_score`` from
``orders_per_month`` and ``m_score`` from ``avg_order_value`` (or ``total_spend`` with
``monetary="total_spend"``), each an int 1..5 with 5 best; ``rfm_score`` is their sum (3..15)
and ``rfm_cell`` the string ``f"{r}{f}{m}"`` (e.g. ``"545"``).

``method="quantile"``
    quintiles of each measure over the customers scored: customers are ranked from worst to
    best with a *stable* sort on the measure, ties kept in ``customer_id`` order (the index is
    sorted), and the customer at 0-based rank ``i`` of ``n`` gets score ``5 * i // n + 1``. The
    five groups differ in size by at most one customer, every score occurs as soon as there are
    5 customers, and the result does not depend on the row order of the input. Customers tied
    on a measure at a quintile boundary may therefore get neighbouring scores (the one with the
    smaller ``customer_id`` the lower score).
``method="fixed"``
    the classic e-mail targeting table, thresholds in :class:`RFMThresholds`.

Segments (:func:`assign_segments`)
----------------------------------
An ordered list of :class:`SegmentRule` (first match wins, the last rule a catch-all), each a
boolean expression over the score columns evaluated with :meth:`pandas.DataFrame.eval`. The
default rules are :data:`DEFAULT_SEGMENT_RULES`; the table is in
``docs/features_segments_kpis.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from crmkit.data.clean import analysis_cutoff
from crmkit.errors import ConfigError, DataContractError
from crmkit.features.rfm import factorize_customers

__all__ = [
    "DAYS_PER_MONTH",
    "MEASURE_COLUMNS",
    "SCORE_COLUMNS",
    "DEFAULT_SEGMENT_RULES",
    "OrderTable",
    "RFMThresholds",
    "SegmentRule",
    "order_table",
    "rfm_measures",
    "score_rfm",
    "rfm_scores",
    "assign_segments",
    "rfm_segments",
    "segment_summary",
]

#: Days in an average month (365.25 / 12), as ``crmkit.features.rfm.UNIT_DAYS["M"]``.
DAYS_PER_MONTH: float = 365.25 / 12.0
#: Columns of :func:`rfm_measures`, in order.
MEASURE_COLUMNS: tuple[str, ...] = (
    "n_orders",
    "total_spend",
    "avg_order_value",
    "days_since_first",
    "days_since_last",
    "orders_per_month",
)
#: Columns :func:`score_rfm` adds, in order.
SCORE_COLUMNS: tuple[str, ...] = ("r_score", "f_score", "m_score", "rfm_score", "rfm_cell")

Method = Literal["quantile", "fixed"]
Monetary = Literal["avg_order_value", "total_spend"]


# --------------------------------------------------------------------------------------------
# Orders
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderTable:
    """The past orders of a set of lines, as arrays (one element per order).

    Attributes
    ----------
    customers
        Customer ids (sorted), one per customer code; includes customers whose past orders are
        all returns.
    code
        Customer code of each order (position in ``customers``).
    ts
        Order timestamp (earliest line), ``datetime64[ns]``.
    value
        Sum of the order's line ``amount`` (negative for return-only orders).
    purchase
        Whether the order has a line with ``quantity > 0``.
    as_of_day
        Day number (days since 1970-01-01) of the analysis date.
    cutoff
        ``analysis_cutoff(as_of)``: the orders are the lines before it.
    """

    customers: pd.Index
    code: np.ndarray
    ts: np.ndarray
    value: np.ndarray
    purchase: np.ndarray
    as_of_day: int
    cutoff: pd.Timestamp

    @property
    def day(self) -> np.ndarray:
        """Day number (days since 1970-01-01) of each order."""
        return self.ts.astype("datetime64[D]").astype(np.int64)


def _require(lines: pd.DataFrame, columns: Sequence[str]) -> None:
    if not isinstance(lines, pd.DataFrame):
        raise DataContractError(
            f"expected a DataFrame of order lines, got {type(lines).__name__}",
            rule="input_type",
            hint="pass crmkit.data.clean.clean_lines(...).lines",
        )
    missing = [c for c in columns if c not in lines.columns]
    if missing:
        raise DataContractError(
            f"order lines lack column(s) {missing}",
            column=missing[0],
            rule="required_column",
            hint="pass cleaned lines (crmkit.data.clean.clean_lines(...).lines)",
        )


def _as_of_day(cutoff: pd.Timestamp) -> int:
    """Day number of the analysis date: the day of the last instant before ``cutoff``."""
    last = cutoff - pd.Timedelta(1, "ns")
    return int(np.datetime64(last, "D").astype(np.int64))


def _cutoff(as_of: object) -> pd.Timestamp:
    try:
        return analysis_cutoff(as_of)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise DataContractError(
            f"as_of must be a date or timestamp, got {as_of!r}",
            rule="as_of",
            hint="e.g. as_of='2011-09-09'",
        ) from exc


def order_table(lines: pd.DataFrame, as_of: object) -> OrderTable:
    """Merge the past order lines into orders (see the module docstring).

    Parameters
    ----------
    lines
        Cleaned order lines with ``customer_id``, ``order_id``, ``order_ts``, ``amount`` and
        optionally ``quantity``.
    as_of
        Analysis date; lines with ``order_ts >= analysis_cutoff(as_of)`` are ignored.

    Returns
    -------
    OrderTable

    Raises
    ------
    DataContractError
        Missing columns, a non-datetime ``order_ts``, missing customer ids, non-finite amounts,
        or no purchase on or before ``as_of``.
    """
    _require(lines, ("customer_id", "order_id", "order_ts", "amount"))
    ts_col = lines["order_ts"]
    if not pd.api.types.is_datetime64_dtype(ts_col.dtype):
        raise DataContractError(
            f"order_ts must be naive datetime64, got {ts_col.dtype}",
            column="order_ts",
            rule="dtype",
            hint="pass cleaned lines (crmkit.data.clean.clean_lines(...).lines)",
        )
    cutoff = _cutoff(as_of)
    ts = ts_col.to_numpy(dtype="datetime64[ns]")
    past = ts < np.datetime64(cutoff.as_unit("ns").asm8)
    n_past = int(past.sum())
    if n_past == len(past):
        take = None
    elif past[:n_past].all():  # time-ordered lines: the past is a prefix, sliced without a copy
        take = slice(0, n_past)
    else:
        take = np.flatnonzero(past)

    def col(name: str) -> pd.Series:
        s = lines[name]
        return s if take is None else s.iloc[take]

    cust = col("customer_id")
    if cust.isna().any():
        raise DataContractError(
            "customer_id has missing values; clean the lines first",
            column="customer_id",
            rule="missing_customer_id",
            hint="clean_lines drops guest lines by default (drop_missing_customer_id)",
        )
    amount = col("amount").to_numpy(dtype=np.float64)
    if not np.isfinite(amount).all():
        raise DataContractError(
            "amount has missing or infinite values",
            column="amount",
            rule="invalid_values",
            hint="pass cleaned lines (crmkit.data.clean.clean_lines(...).lines)",
        )
    if "quantity" in lines.columns:
        is_purchase = col("quantity").to_numpy(dtype=np.float64) > 0
    else:
        is_purchase = np.ones(len(amount), dtype=bool)
    if not is_purchase.any():
        raise DataContractError(
            f"no purchases on or before the analysis date {as_of}",
            rule="empty_window",
            hint="choose an as_of date inside the data's date range",
        )
    ts = ts if take is None else ts[take]

    ccode, customers = factorize_customers(cust)
    ocode, ouniq = pd.factorize(col("order_id"))
    key = ccode.astype(np.int64) * max(len(ouniq), 1) + ocode
    oidx, okeys = pd.factorize(key)
    n_ord = len(okeys)
    o_code = (okeys // max(len(ouniq), 1)).astype(np.int64)
    o_ts = np.full(n_ord, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(o_ts, oidx, ts.view(np.int64))
    o_value = np.bincount(oidx, weights=amount, minlength=n_ord)
    o_purchase = np.bincount(oidx, weights=is_purchase, minlength=n_ord) > 0
    return OrderTable(
        customers=pd.Index(customers, name="customer_id"),
        code=o_code,
        ts=o_ts.view("datetime64[ns]"),
        value=o_value,
        purchase=o_purchase,
        as_of_day=_as_of_day(cutoff),
        cutoff=cutoff,
    )


# --------------------------------------------------------------------------------------------
# Raw measures
# --------------------------------------------------------------------------------------------


def _measures_from_orders(orders: OrderTable) -> pd.DataFrame:
    n = len(orders.customers)
    p = orders.purchase
    code_p = orders.code[p]
    day_p = orders.day[p]
    n_orders = np.bincount(code_p, minlength=n)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, code_p, day_p)
    np.maximum.at(last, code_p, day_p)
    spend = np.bincount(orders.code, weights=orders.value, minlength=n)
    keep = n_orders > 0
    n_orders, first, last, spend = n_orders[keep], first[keep], last[keep], spend[keep]
    since_first = orders.as_of_day - first
    months = np.maximum(since_first / DAYS_PER_MONTH, 1.0)
    return pd.DataFrame(
        {
            "n_orders": n_orders.astype(np.int64),
            "total_spend": spend,
            "avg_order_value": spend / n_orders,
            "days_since_first": since_first.astype(np.int64),
            "days_since_last": (orders.as_of_day - last).astype(np.int64),
            "orders_per_month": n_orders / months,
        },
        index=orders.customers[keep],
    )


def rfm_measures(lines: pd.DataFrame, as_of: object) -> pd.DataFrame:
    """Raw RFM measures per customer at ``as_of`` (defined in the module docstring).

    Parameters
    ----------
    lines
        Cleaned order lines (``customer_id``, ``order_id``, ``order_ts``, ``amount``,
        ``quantity``).
    as_of
        Analysis date: purchases up to the end of that day (or up to that instant when it has
        a time) count.

    Returns
    -------
    DataFrame
        Indexed by ``customer_id`` (sorted), columns :data:`MEASURE_COLUMNS`: ``n_orders``
        (int), ``total_spend`` and ``avg_order_value`` (shop currency), ``days_since_first``
        and ``days_since_last`` (int days), ``orders_per_month`` (orders per 30.4375 days).
    """
    return _measures_from_orders(order_table(lines, as_of))


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def _cuts(name: str, values: Sequence[float]) -> tuple[float, float, float, float]:
    vals = tuple(float(v) for v in values)
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"RFMThresholds.{name} needs 4 finite numbers, got {values!r}")
    if any(b <= a for a, b in zip(vals, vals[1:], strict=False)):
        raise ConfigError(f"RFMThresholds.{name} must be strictly increasing, got {values!r}")
    return vals  # type: ignore[return-value]


@dataclass(frozen=True)
class RFMThresholds:
    """Cut points of ``method="fixed"`` scoring (the classic e-mail targeting table).

    Parameters
    ----------
    recency_days
        Largest ``days_since_last`` (inclusive) still scoring R = 5, 4, 3, 2; anything older
        scores 1. Default ``(30, 90, 180, 240)``: within the last month (30 days), 3 months,
        6 months, 8 months (a month counted as 30 days).
    frequency_per_month
        Smallest ``orders_per_month`` (inclusive) scoring F = 2, 3, 4, 5; anything lower
        scores 1. Default ``(0.1, 0.25, 0.5, 1.0)``: at least once in 10 months, every 4
        months, every 2 months, monthly.
    monetary
        Smallest monetary value (inclusive, shop currency) scoring M = 2, 3, 4, 5; anything
        lower scores 1. Default ``(10, 50, 100, 200)``: M = 1 under 10, 2 in [10, 50),
        3 in [50, 100), 4 in [100, 200), 5 at 200 and above.

    Each is 4 strictly increasing finite numbers (:class:`~crmkit.errors.ConfigError`
    otherwise).
    """

    recency_days: tuple[float, float, float, float] = (30, 90, 180, 240)
    frequency_per_month: tuple[float, float, float, float] = (0.1, 0.25, 0.5, 1.0)
    monetary: tuple[float, float, float, float] = (10.0, 50.0, 100.0, 200.0)

    def __post_init__(self) -> None:
        for name in ("recency_days", "frequency_per_month", "monetary"):
            object.__setattr__(self, name, _cuts(name, getattr(self, name)))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Sequence[float]] | None) -> RFMThresholds:
        """Build from a config mapping (unknown keys raise :class:`ConfigError`)."""
        data = dict(data or {})
        unknown = sorted(set(data) - {"recency_days", "frequency_per_month", "monetary"})
        if unknown:
            raise ConfigError(f"unknown RFM threshold(s) {unknown}")
        return cls(**{k: tuple(v) for k, v in data.items()})


def _quintile_scores(values: np.ndarray) -> np.ndarray:
    """Scores 1..5 from ordinal ranks (worst first; ties in the given order)."""
    n = len(values)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n, dtype=np.int64)
    return ranks * 5 // max(n, 1) + 1


def _fixed_scores(
    measures: pd.DataFrame, monetary: str, th: RFMThresholds
) -> tuple[np.ndarray, ...]:
    days = measures["days_since_last"].to_numpy(dtype=np.float64)
    opm = measures["orders_per_month"].to_numpy(dtype=np.float64)
    money = measures[monetary].to_numpy(dtype=np.float64)
    r = 5 - np.searchsorted(np.asarray(th.recency_days), days, side="left")
    f = 1 + np.searchsorted(np.asarray(th.frequency_per_month), opm, side="right")
    m = 1 + np.searchsorted(np.asarray(th.monetary), money, side="right")
    return r, f, m


def score_rfm(
    measures: pd.DataFrame,
    *,
    method: Method = "quantile",
    thresholds: RFMThresholds | None = None,
    monetary: Monetary = "avg_order_value",
) -> pd.DataFrame:
    """Add ``r_score, f_score, m_score, rfm_score, rfm_cell`` to raw RFM measures.

    Parameters
    ----------
    measures
        Output of :func:`rfm_measures` (at least ``days_since_last``, ``orders_per_month`` and
        the ``monetary`` column), indexed by customer id.
    method
        ``"quantile"`` (quintiles over these customers) or ``"fixed"`` (``thresholds``).
    thresholds
        Cut points for ``method="fixed"``; default :class:`RFMThresholds()`.
    monetary
        Measure behind ``m_score``: ``"avg_order_value"`` (default, so that M is not a second
        frequency score) or ``"total_spend"``.

    Returns
    -------
    DataFrame
        A copy of ``measures`` with the score columns appended (scores ``int64`` 1..5, 5 best;
        ``rfm_score`` 3..15; ``rfm_cell`` a 3-character string).
    """
    if monetary not in ("avg_order_value", "total_spend"):
        raise ConfigError(f"monetary must be 'avg_order_value' or 'total_spend', got {monetary!r}")
    if not isinstance(measures, pd.DataFrame):
        raise DataContractError(
            f"expected a DataFrame of RFM measures, got {type(measures).__name__}",
            rule="input_type",
            hint="pass crmkit.features.segments.rfm_measures(lines, as_of)",
        )
    needed = ("days_since_last", "orders_per_month", monetary)
    missing = [c for c in needed if c not in measures.columns]
    if missing:
        raise DataContractError(
            f"RFM measures lack column(s) {missing}",
            column=missing[0],
            rule="required_column",
            hint="pass crmkit.features.segments.rfm_measures(lines, as_of)",
        )
    for c in needed:
        if not np.isfinite(measures[c].to_numpy(dtype=np.float64)).all():
            raise DataContractError(
                f"RFM measure {c} has missing or infinite values", column=c, rule="invalid_values"
            )
    if method == "quantile":
        if thresholds is not None:
            raise ConfigError("thresholds only apply to method='fixed'")
        r = _quintile_scores(-measures["days_since_last"].to_numpy(dtype=np.float64))
        f = _quintile_scores(measures["orders_per_month"].to_numpy(dtype=np.float64))
        m = _quintile_scores(measures[monetary].to_numpy(dtype=np.float64))
    elif method == "fixed":
        r, f, m = _fixed_scores(measures, monetary, thresholds or RFMThresholds())
    else:
        raise ConfigError(f"method must be 'quantile' or 'fixed', got {method!r}")
    r, f, m = (np.asarray(a, dtype=np.int64) for a in (r, f, m))
    cell = pd.Series(r * 100 + f * 10 + m, index=measures.index).astype(str)
    return measures.assign(r_score=r, f_score=f, m_score=m, rfm_score=r + f + m, rfm_cell=cell)


def rfm_scores(
    lines: pd.DataFrame,
    as_of: object,
    *,
    method: Method = "quantile",
    thresholds: RFMThresholds | None = None,
    monetary: Monetary = "avg_order_value",
) -> pd.DataFrame:
    """RFM measures and scores per customer at ``as_of``.

    ``score_rfm(rfm_measures(lines, as_of), method=..., thresholds=..., monetary=...)``; see
    the module docstring for every definition.

    Parameters
    ----------
    lines
        Cleaned order lines.
    as_of
        Analysis date; later lines are ignored.
    method, thresholds, monetary
        As :func:`score_rfm`.

    Returns
    -------
    DataFrame
        Indexed by ``customer_id``: :data:`MEASURE_COLUMNS` then :data:`SCORE_COLUMNS`.

    Examples
    --------
    >>> from crmkit.data.simulate import simulate_transactions
    >>> from crmkit.data.clean import clean_lines
    >>> lines = clean_lines(simulate_transactions(n_customers=200, seed=1).lines).lines
    >>> s = rfm_scores(lines, "2023-06-30")
    >>> sorted(s["r_score"].unique().tolist())
    [1, 2, 3, 4, 5]
    """
    return score_rfm(
        rfm_measures(lines, as_of), method=method, thresholds=thresholds, monetary=monetary
    )


# --------------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentRule:
    """One rule of a segmentation: customers matching ``when`` (and no earlier rule) get
    ``name``.

    Parameters
    ----------
    name
        Segment name.
    when
        Boolean expression over the columns of the scores frame, in
        :meth:`pandas.DataFrame.eval` syntax, e.g. ``"r_score >= 4 and n_orders >= 2"``;
        ``"True"`` matches everyone (a catch-all).
    description
        What the segment means and what to do with it (documentation only).
    """

    name: str
    when: str
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"segment rule name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.when, str) or not self.when.strip():
            raise ConfigError(f"segment rule {self.name!r}: 'when' must be a non-empty expression")


#: The default segmentation (first match wins); see ``docs/features_segments_kpis.md``.
DEFAULT_SEGMENT_RULES: tuple[SegmentRule, ...] = (
    SegmentRule(
        "new",
        "n_orders == 1 and days_since_first <= 90",
        "First and only order within the last 90 days: welcome / second-order journey.",
    ),
    SegmentRule(
        "champions",
        "n_orders >= 2 and r_score >= 4 and f_score >= 4 and m_score >= 4",
        "Recent, frequent, high-value repeat buyers: reward, early access, referrals.",
    ),
    SegmentRule(
        "loyal",
        "n_orders >= 2 and r_score >= 3 and f_score >= 4",
        "Frequent repeat buyers who are still active (not top on recency or value): loyalty "
        "programme, up-sell.",
    ),
    SegmentRule(
        "active_repeat",
        "n_orders >= 2 and r_score >= 4",
        "Recent repeat buyers who do not buy often (yet): cross-sell, nudge frequency.",
    ),
    SegmentRule(
        "need_attention",
        "n_orders >= 2 and r_score == 3",
        "Repeat buyers, not frequent, whose last order is getting old: reminders, "
        "limited-time offers.",
    ),
    SegmentRule(
        "promising",
        "n_orders == 1 and r_score >= 3",
        "One order, still fairly recent but past the 'new' window: second-order incentive.",
    ),
    SegmentRule(
        "at_risk",
        "r_score <= 2 and n_orders >= 2 and (f_score >= 3 or m_score >= 4)",
        "Used to buy often or spend much, not recently: win-back before they are lost.",
    ),
    SegmentRule(
        "hibernating",
        "r_score == 2",
        "Lapsed, low frequency and value: cheap reactivation campaigns.",
    ),
    SegmentRule(
        "lost",
        "True",
        "Everyone else, i.e. R = 1 and not at risk: longest lapsed; lowest priority.",
    ),
)


def _as_rules(rules: Sequence[SegmentRule | Mapping[str, str]]) -> tuple[SegmentRule, ...]:
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence) or not rules:
        raise ConfigError("segment rules must be a non-empty sequence of SegmentRule")
    out = []
    for r in rules:
        if isinstance(r, SegmentRule):
            out.append(r)
        elif isinstance(r, Mapping):
            try:
                out.append(SegmentRule(**r))
            except TypeError as exc:
                raise ConfigError(f"invalid segment rule {dict(r)!r}: {exc}") from None
        else:
            raise ConfigError(f"invalid segment rule {r!r}; use SegmentRule(name, when)")
    return tuple(out)


def _evaluate(scores: pd.DataFrame, rule: SegmentRule) -> np.ndarray:
    n = len(scores)
    try:
        res = scores.eval(rule.when, engine="python")
    except Exception as exc:  # any parse / name error is a configuration error
        raise ConfigError(
            f"segment rule {rule.name!r}: cannot evaluate {rule.when!r} "
            f"({type(exc).__name__}: {exc}); columns are {list(scores.columns)}"
        ) from None
    if np.ndim(res) == 0:
        return np.full(n, bool(res))
    dtype = getattr(res, "dtype", None)
    if np.shape(res) != (n,) or dtype is None or not pd.api.types.is_bool_dtype(dtype):
        raise ConfigError(
            f"segment rule {rule.name!r}: {rule.when!r} is not a boolean condition per customer"
        )
    return pd.Series(res).fillna(False).to_numpy(dtype=bool)


def assign_segments(
    scores: pd.DataFrame,
    *,
    rules: Sequence[SegmentRule | Mapping[str, str]] = DEFAULT_SEGMENT_RULES,
    default: str = "other",
) -> pd.Series:
    """Name the segment of every customer: the first rule whose condition holds.

    Parameters
    ----------
    scores
        Output of :func:`rfm_scores` / :func:`score_rfm` (any frame with the columns the rules
        use).
    rules
        Ordered rules (or mappings with ``name``, ``when``, ``description``); first match wins.
    default
        Segment of customers no rule matches (never used by :data:`DEFAULT_SEGMENT_RULES`,
        whose last rule is a catch-all).

    Returns
    -------
    Series
        Categorical, named ``segment``, same index as ``scores``; categories are the rule
        names in rule order (then ``default`` if used), so empty segments stay listed.
    """
    rule_list = _as_rules(rules)
    if not isinstance(scores, pd.DataFrame):
        raise DataContractError(
            f"expected a DataFrame of RFM scores, got {type(scores).__name__}",
            rule="input_type",
            hint="pass crmkit.features.segments.rfm_scores(lines, as_of)",
        )
    names = list(dict.fromkeys(r.name for r in rule_list))
    code_of = {name: i for i, name in enumerate(names)}
    codes = np.full(len(scores), -1, dtype=np.int64)
    free = np.ones(len(scores), dtype=bool)
    for rule in rule_list:
        if not free.any():
            break
        hit = _evaluate(scores, rule) & free
        codes[hit] = code_of[rule.name]
        free &= ~hit
    if free.any():
        if default not in code_of:
            code_of[default] = len(names)
            names.append(default)
        codes[free] = code_of[default]
    cat = pd.Categorical.from_codes(codes, categories=names)
    return pd.Series(cat, index=scores.index, name="segment")


def rfm_segments(
    lines: pd.DataFrame,
    as_of: object,
    *,
    method: Method = "quantile",
    thresholds: RFMThresholds | None = None,
    monetary: Monetary = "avg_order_value",
    rules: Sequence[SegmentRule | Mapping[str, str]] = DEFAULT_SEGMENT_RULES,
) -> pd.DataFrame:
    """RFM scores with a ``segment`` column: ``rfm_scores`` then ``assign_segments``.

    Parameters
    ----------
    lines, as_of, method, thresholds, monetary
        As :func:`rfm_scores`.
    rules
        As :func:`assign_segments`.

    Returns
    -------
    DataFrame
        The scores frame plus a categorical ``segment`` column.
    """
    scores = rfm_scores(lines, as_of, method=method, thresholds=thresholds, monetary=monetary)
    return scores.assign(segment=assign_segments(scores, rules=rules))


def segment_summary(
    scores_with_segment: pd.DataFrame, *, segment_col: str = "segment"
) -> pd.DataFrame:
    """The segment table: size, mean scores and spend per segment.

    Parameters
    ----------
    scores_with_segment
        Output of :func:`rfm_segments` (``segment``, ``r_score``, ``f_score``, ``m_score``,
        ``total_spend``).
    segment_col
        Name of the segment column.

    Returns
    -------
    DataFrame
        Indexed by segment (rule order for a categorical column, empty segments included with
        0 customers; otherwise largest first): ``customers`` (int), ``share`` (of customers),
        ``mean_r_score``, ``mean_f_score``, ``mean_m_score``, ``total_spend`` (shop currency),
        ``spend_share`` (of the total) and ``mean_spend`` (per customer). Means of empty
        segments are NaN.
    """
    needed = (segment_col, "r_score", "f_score", "m_score", "total_spend")
    if not isinstance(scores_with_segment, pd.DataFrame):
        raise DataContractError(
            "expected a DataFrame of scores with a segment column",
            rule="input_type",
            hint="pass crmkit.features.segments.rfm_segments(lines, as_of)",
        )
    missing = [c for c in needed if c not in scores_with_segment.columns]
    if missing:
        raise DataContractError(
            f"scores lack column(s) {missing}",
            column=missing[0],
            rule="required_column",
            hint="pass crmkit.features.segments.rfm_segments(lines, as_of)",
        )
    df = scores_with_segment
    seg = df[segment_col]
    categorical = isinstance(seg.dtype, pd.CategoricalDtype)
    g = df.groupby(seg, observed=False, sort=categorical)
    out = pd.DataFrame(
        {
            "customers": g.size().astype(np.int64),
            "mean_r_score": g["r_score"].mean(),
            "mean_f_score": g["f_score"].mean(),
            "mean_m_score": g["m_score"].mean(),
            "total_spend": g["total_spend"].sum().astype(np.float64),
        }
    )
    if not categorical:
        out = out.sort_values("customers", ascending=False, kind="stable")
    out = segment_shares(out)
    out.index = pd.Index([str(i) for i in out.index], name="segment")
    return out


def segment_shares(counts: pd.DataFrame) -> pd.DataFrame:
    """Complete a per-segment aggregate (``customers``, ``mean_r_score``, ``mean_f_score``,
    ``mean_m_score``, ``total_spend``; one row per segment) into the columns of
    :func:`segment_summary`: adds ``share``, ``spend_share`` and ``mean_spend`` (NaN for
    empty segments). Shared with the Spark engine, which aggregates in Spark."""
    out = counts[["customers", "mean_r_score", "mean_f_score", "mean_m_score", "total_spend"]]
    out = out.copy()
    n = int(out["customers"].sum())
    spend = float(out["total_spend"].sum())
    out.insert(1, "share", out["customers"] / n if n else np.nan)
    out["spend_share"] = out["total_spend"] / spend if spend else np.nan
    nonempty = out["customers"].where(out["customers"] > 0)  # NaN means for empty segments
    out["mean_spend"] = out["total_spend"] / nonempty
    return out
