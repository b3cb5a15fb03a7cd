"""Next best action per customer, campaign audiences, and writing them.

Inputs are the two tables of the batch-scoring job:

* the **customer table**: one row per customer, ``customer_id`` as a column or as the index,
  with ``segment`` (:mod:`crmkit.features.segments`), ``p_alive``, ``clv`` and
  ``churn_probability`` (missing values stand for "not scored by the churn model" and are
  replaced by ``1 - p_alive``, see ``missing_churn``); optionally ``churn_risk_band`` (or the churn stage's ``risk_band``)
  and a historical value column (``total_spend`` by default). Other columns (``r_score``,
  ``expected_purchases``, ...) are carried through untouched;
* the **recommendation lists** of :func:`crmkit.models.recommend.recommend`: ``customer_id``,
  ``rank`` (1 = best), ``product_id``, ``kind`` (one of
  :data:`crmkit.models.recommend.KINDS`), ``score`` (expected value) and ``reason``; an optional
  ``due`` column (truthy = a due replenishment) is used when present, otherwise a ``resell`` row
  is *due* when its reason says so (``"... so a repurchase is due"`` / ``"... overdue"``).

Rules (:func:`assign_next_best_action`)
---------------------------------------
Every customer gets exactly one action. The rules are evaluated in the order
``NextBestActionConfig.priority`` (default below); the first rule a customer satisfies
**and whose expected value exceeds its cost** (``costs``, :mod:`crmkit.models.action_value`)
wins, and a customer for whom no action matches and pays gets ``none``. Quantiles are taken
over **all** customers of the table (``numpy.quantile``, linear interpolation;
:func:`action_thresholds`, which can be computed once and passed in to assign a subset of
customers exactly as the whole table) and every threshold is inclusive (``>=``) except the recommendation score floor (strictly above).
Everything else is decided per customer, from their own row and recommendation rows.

1. ``win_back`` - *lapsed*: ``segment`` in ``lapsed_segments`` [at_risk, hibernating, lost]
   or high churn risk (risk band in ``high_risk_bands`` [high], or ``churn_probability >=
   high_churn_probability`` [0.8]); **and** *valuable*: ``clv``, or the historical value column
   [total_spend, used when present], at or above its ``winback_value_quantile`` [0.5]
   quantile; **and** ``p_alive >= winback_min_p_alive`` [0.1]. Value: ``clv *
   churn_probability`` (CLV at risk). Product: the best-ranked ``reactivation`` row, else the
   best-ranked ``resell`` row, else missing.
2. ``replenishment`` - a *due* row of a kind in ``replenishment_kinds`` [resell] with
   ``score > min_recommendation_score`` [0]. Value and product: the best-ranked due row's.
3. ``loyalty_reward`` - ``segment`` in ``loyalty_segments`` [champions]. Value: ``clv``.
4. ``referral_ask`` - ``segment`` in ``referral_segments`` [loyal] and ``clv`` at or above its
   ``referral_clv_quantile`` [0.75] quantile. Value: ``clv``.
5. ``cross_sell`` - the customer's best-ranked offer (a ``cross_sell`` or ``up_sell`` row with
   ``score > min_recommendation_score``) is a cross-sell. Value and product: that row's.
6. ``up_sell`` - the same, an up-sell.
7. ``none`` - no rule matched. Value ``0.0``, no product.

"Best-ranked" is the lowest ``rank``, ties broken by the higher ``score`` then the smaller
``product_id``. With ``offer_choice="priority"`` rules 5 and 6 ignore each other's rows: the
first of them in ``priority`` that has an offer wins. Leaving an action out of ``priority``
switches its rule off. ``action_value`` is comparable within one action (it ranks that
action's audience), not across actions: CLV and recommendation scores are different
quantities.

Audiences (:func:`build_audiences`, :func:`write_audiences`)
------------------------------------------------------------
One frame per action except ``none`` (all six, empty ones included), columns
:data:`AUDIENCE_COLUMNS`, ranked by ``action_value`` descending then ``customer_id``
ascending. :func:`write_audiences` writes **every** action's file, empty ones as well-formed
zero-row files, plus ``index.json`` with the row counts, all-or-nothing: a re-run into the same
folder never leaves a stale audience from an earlier run behind. See ``docs/actions.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from crmkit.errors import DataContractError
from crmkit.models.action_value import ActionCosts, action_pays, expected_values

__all__ = [
    "ACTIONS",
    "AUDIENCE_ACTIONS",
    "AUDIENCE_COLUMNS",
    "ACTION_COLUMNS",
    "RISK_BAND_COLUMNS",
    "THRESHOLD_KEYS",
    "NextBestActionConfig",
    "action_thresholds",
    "assign_next_best_action",
    "build_audiences",
    "write_audiences",
    "read_audience",
]

#: Every value ``next_best_action`` can take, in the default priority order (``none`` last).
ACTIONS: tuple[str, ...] = (
    "win_back",
    "replenishment",
    "loyalty_reward",
    "referral_ask",
    "cross_sell",
    "up_sell",
    "none",
)
#: The actions that get an audience (every action but ``none``).
AUDIENCE_ACTIONS: tuple[str, ...] = ACTIONS[:-1]
#: Columns :func:`assign_next_best_action` adds to the customer table.
ACTION_COLUMNS: tuple[str, ...] = ("next_best_action", "action_value", "action_product_id")
#: Columns of an audience frame, in order.
AUDIENCE_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "rank",
    "action_value",
    "product_id",
    "segment",
    "clv",
    "p_alive",
    "churn_probability",
)
#: Keys of :func:`action_thresholds`: the population-level values of the rules.
THRESHOLD_KEYS: tuple[str, ...] = ("winback_clv", "winback_history", "referral_clv")
#: Risk band columns looked for, in order (the scoring job's name, then the churn stage's).
RISK_BAND_COLUMNS: tuple[str, ...] = ("churn_risk_band", "risk_band")

_CUSTOMER_COLUMNS = ("segment", "p_alive", "clv", "churn_probability")
_RECOMMENDATION_COLUMNS = ("customer_id", "rank", "product_id", "kind", "score")
_KINDS = ("cross_sell", "up_sell", "resell", "reactivation")
_HINT_CUSTOMERS = "pass the scoring job's customer table (segments joined with CLV and churn)"
_HINT_RECS = "pass crmkit.models.recommend.recommend(...) output (or empty_recommendations())"

Action = Literal[
    "win_back", "replenishment", "loyalty_reward", "referral_ask", "cross_sell", "up_sell"
]


class NextBestActionConfig(BaseModel):
    """Thresholds and order of the next-best-action rules (table in the module docstring).

    Attributes
    ----------
    priority
        The rules in evaluation order, first match wins; an action left out is never assigned.
        Default: win_back, replenishment, loyalty_reward, referral_ask, cross_sell, up_sell.
    lapsed_segments
        Segments counted as lapsed for win-back (default at_risk, hibernating, lost).
    high_risk_bands
        Values of ``churn_risk_band`` (or ``risk_band``) counted as high churn risk, when the
        table has such a column (default ``high``).
    high_churn_probability
        ``churn_probability`` from which a customer counts as high churn risk whatever the
        band (default 0.8, the churn stage's ``high`` threshold); ``None``: the band alone.
    winback_value_quantile
        A lapsed customer is valuable when ``clv`` or the historical value is at least this
        quantile of that column over all customers (default 0.5, the median; 0 admits all).
    historical_value_column
        Column with the historical value (default ``total_spend``); used when the table has
        it, ignored otherwise; ``None``: CLV alone.
    winback_min_p_alive
        P(alive) floor of win-back (inclusive, default 0.1): below it the customer is taken
        for gone and not chased.
    replenishment_kinds
        Recommendation kinds whose due rows are replenishments (default ``resell``).
    due_reason_pattern
        Regular expression on ``reason`` marking a due row when the lists have no ``due``
        column (default matches recommend's "so a repurchase is due / overdue").
    loyalty_segments
        Segments offered a loyalty reward (default champions).
    referral_segments, referral_clv_quantile
        Segments asked for a referral when their ``clv`` is at least this quantile over all
        customers (default loyal, 0.75: the top quarter by CLV).
    min_recommendation_score
        A recommendation drives an action only when its ``score`` is strictly above this
        (default 0: zero-value rows never do).
    offer_choice
        ``best_rank`` (default): cross-sell vs up-sell is decided by the customer's best-ranked
        row of the two kinds; ``priority``: by the order of the two in ``priority``.
    missing_churn
        ``p_alive`` (default): a missing ``churn_probability`` (a customer outside the churn
        model's scored-customer rule, or no churn model at all) is replaced by ``1 - p_alive``
        in the high-risk test and the win-back value; ``error``: it raises
        :class:`~crmkit.errors.DataContractError`. Infinite values always raise.
    costs
        Per action, its ``contact`` cost and ``discount`` share
        (:class:`~crmkit.models.action_value.ActionCosts`); an action is kept only when its
        expected value exceeds its cost (:mod:`crmkit.models.action_value`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: tuple[Action, ...] = AUDIENCE_ACTIONS  # type: ignore[assignment]
    lapsed_segments: tuple[str, ...] = ("at_risk", "hibernating", "lost")
    high_risk_bands: tuple[str, ...] = ("high",)
    high_churn_probability: float | None = Field(0.8, ge=0, le=1)
    winback_value_quantile: float = Field(0.5, ge=0, le=1)
    historical_value_column: str | None = "total_spend"
    winback_min_p_alive: float = Field(0.1, ge=0, le=1)
    replenishment_kinds: tuple[Literal["cross_sell", "up_sell", "resell", "reactivation"], ...] = (
        "resell",
    )
    due_reason_pattern: str = r"repurchase is (?:over)?due"
    loyalty_segments: tuple[str, ...] = ("champions",)
    referral_segments: tuple[str, ...] = ("loyal",)
    referral_clv_quantile: float = Field(0.75, ge=0, le=1)
    min_recommendation_score: float = 0.0
    offer_choice: Literal["best_rank", "priority"] = "best_rank"
    missing_churn: Literal["p_alive", "error"] = "p_alive"
    costs: ActionCosts = ActionCosts()

    @field_validator("priority")
    @classmethod
    def _unique_priority(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        dup = sorted({a for a in v if v.count(a) > 1})
        if dup:
            raise ValueError(f"priority lists {dup} more than once")
        return v

    @field_validator("due_reason_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        import re

        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"due_reason_pattern is not a regular expression: {exc}") from exc
        return v


# --------------------------------------------------------------------------------------------
# input contract


def _rows(mask: np.ndarray, values: np.ndarray | pd.Series, k: int = 10) -> list[tuple[int, Any]]:
    """The first ``k`` offending rows as ``(1-based row, value)``."""
    idx = np.flatnonzero(mask)[:k]
    vals = np.asarray(values, dtype=object)
    return [(int(i) + 1, vals[i]) for i in idx]


def _require(
    frame: Any,
    columns: Sequence[str],
    what: str,
    hint: str,
    *,
    frame_type: type = pd.DataFrame,
    type_name: str = "a DataFrame",
) -> None:
    """``frame`` is a ``frame_type`` with ``columns`` (also used for Spark DataFrames)."""
    if not isinstance(frame, frame_type):
        raise DataContractError(
            f"expected {type_name} of {what}, got {type(frame).__name__}",
            rule="input_type",
            hint=hint,
        )
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataContractError(
            f"{what} lack column(s) {missing}", column=missing[0], rule="required_column", hint=hint
        )


def _customer_ids(frame: pd.DataFrame, what: str, hint: str) -> pd.Index:
    """``customer_id`` (column, else the index) as unique, non-missing strings."""
    if "customer_id" in frame.columns:
        raw = frame["customer_id"]
    elif frame.index.name == "customer_id":
        raw = frame.index.to_series()
    else:
        raise DataContractError(
            f"{what} have no customer_id column or index",
            column="customer_id",
            rule="required_column",
            hint=hint,
        )
    miss = raw.isna().to_numpy()
    if miss.any():
        raise DataContractError(
            "customer_id has missing values",
            column="customer_id",
            rule="missing_values",
            rows=_rows(miss, raw),
            hint=hint,
        )
    ids = pd.Index(raw.astype("str").to_numpy(), dtype="str", name="customer_id")
    dup = np.asarray(ids.duplicated())
    if dup.any():
        raise DataContractError(
            "customer_id must be unique (one row per customer)",
            column="customer_id",
            rule="unique",
            rows=_rows(dup, ids),
            hint=hint,
        )
    return ids


def _numeric(
    frame: pd.DataFrame,
    column: str,
    *,
    lo: float | None,
    hi: float | None,
    hint: str,
    allow_nan: bool = False,
) -> np.ndarray:
    """A float column with no missing (unless ``allow_nan``) or infinite values, within
    ``[lo, hi]``."""
    s = frame[column]
    if s.dtype == bool or not (
        pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_object_dtype(s.dtype)
    ):
        raise DataContractError(
            f"{column} must be numeric, got dtype {s.dtype}", column=column, rule="dtype", hint=hint
        )
    try:
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise DataContractError(
            f"{column} must be numeric", column=column, rule="dtype", hint=hint
        ) from exc
    bad = ~np.isfinite(v)
    if allow_nan:
        bad &= ~np.isnan(v)
    if bad.any():
        raise DataContractError(
            f"{column} has missing or infinite values ({int(bad.sum())} rows)",
            column=column,
            rule="missing_values",
            rows=_rows(bad, s),
            hint=hint,
        )
    out = np.zeros(len(v), dtype=bool)
    if lo is not None:
        out |= v < lo
    if hi is not None:
        out |= v > hi
    if out.any():
        rng = f"[{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        raise DataContractError(
            f"{column} must be {'in ' if hi is not None else ''}{rng} ({int(out.sum())} rows "
            "outside)",
            column=column,
            rule="out_of_range",
            rows=_rows(out, s),
            hint=hint,
        )
    return v


def _labels(frame: pd.DataFrame, column: str, hint: str) -> np.ndarray:
    """A label column (e.g. ``segment``) as an object array of strings, no missing values."""
    s = frame[column]
    miss = s.isna().to_numpy()
    if miss.any():
        raise DataContractError(
            f"{column} has missing values ({int(miss.sum())} rows)",
            column=column,
            rule="missing_values",
            rows=_rows(miss, s),
            hint=hint,
        )
    return s.astype("str").to_numpy(dtype=object)


# --------------------------------------------------------------------------------------------
# recommendations


def _recommendation_arrays(
    recs: pd.DataFrame, ids: pd.Index, cfg: NextBestActionConfig
) -> dict[str, np.ndarray]:
    """Recommendation rows of known customers: customer position, rank, score, kind, product,
    due flag (arrays aligned on the rows kept)."""
    _require(recs, _RECOMMENDATION_COLUMNS, "recommendations", _HINT_RECS)
    if "due" not in recs.columns and "reason" not in recs.columns:
        raise DataContractError(
            "recommendations need a due or a reason column to find due replenishments",
            column="reason",
            rule="required_column",
            hint=_HINT_RECS,
        )
    for col in ("customer_id", "product_id", "kind"):
        miss = recs[col].isna().to_numpy()
        if miss.any():
            raise DataContractError(
                f"recommendations: {col} has missing values",
                column=col,
                rule="missing_values",
                rows=_rows(miss, recs[col]),
                hint=_HINT_RECS,
            )
    kcode, kuniq = pd.factorize(recs["kind"].astype("str"))
    kind = np.asarray(kuniq, dtype=object)[kcode]
    unknown = ~np.isin(kind, _KINDS)
    if unknown.any():
        raise DataContractError(
            f"recommendations: kind must be one of {list(_KINDS)}",
            column="kind",
            rule="allowed_values",
            rows=_rows(unknown, kind),
            hint=_HINT_RECS,
        )
    rank = _numeric(recs, "rank", lo=1, hi=None, hint=_HINT_RECS)
    frac = rank != np.floor(rank)
    if frac.any():
        raise DataContractError(
            "recommendations: rank must be a whole number >= 1",
            column="rank",
            rule="integer",
            rows=_rows(frac, rank),
            hint=_HINT_RECS,
        )
    score = _numeric(recs, "score", lo=None, hi=None, hint=_HINT_RECS)
    if "due" in recs.columns:
        d = recs["due"]
        due = (
            d.fillna(False).astype(bool).to_numpy()
            if d.dtype == bool or pd.api.types.is_object_dtype(d.dtype)
            else d.to_numpy(dtype=np.float64, na_value=0.0) > 0
        )
    else:
        due = (
            recs["reason"]
            .astype("str")
            .str.contains(cfg.due_reason_pattern, regex=True, na=False)
            .to_numpy(dtype=bool)
        )
    pos = ids.get_indexer(pd.Index(recs["customer_id"].astype("str").to_numpy(), dtype="str"))
    keep = pos >= 0
    # product ids as sorted codes (ordering ties by product id compares integers) plus
    # the distinct ids, instead of millions of Python strings
    pcode, puniq = pd.factorize(recs["product_id"].astype("str"), sort=True)
    p_, r_ = pos[keep], rank[keep]
    # recommend() output is grouped by customer and ranked 1..n without ties: then the best
    # row of a customer is simply the first selected one (no sort needed in _best)
    ordered = bool(
        len(p_) < 2 or np.all((p_[1:] > p_[:-1]) | ((p_[1:] == p_[:-1]) & (r_[1:] > r_[:-1])))
    )
    return {
        "ordered": np.array(ordered),
        "pos": p_,
        "rank": r_,
        "score": score[keep],
        "kind": kind[keep],
        "pcode": pcode[keep],
        "puniq": np.asarray(puniq, dtype=object),
        "due": due[keep],
    }


def _best(rec: dict[str, np.ndarray], mask: np.ndarray, n: int) -> np.ndarray:
    """Per customer, the row index (into ``rec``) of the best-ranked row among ``mask``
    (lowest rank, then highest score, then smallest product id); -1 when none."""
    best = np.full(n, -1, dtype=np.int64)
    sel = np.flatnonzero(mask)
    if not len(sel):
        return best
    if rec["ordered"]:
        # grouped by customer, ranks strictly increasing: array order is the ranking order
        # (checked in _recommendation_arrays), ties on rank cannot occur
        rows = sel
    else:
        order = np.lexsort(
            (rec["pcode"][sel], -rec["score"][sel], rec["rank"][sel], rec["pos"][sel])
        )
        rows = sel[order]
    c = rec["pos"][rows]
    first = np.r_[True, c[1:] != c[:-1]]
    best[c[first]] = rows[first]
    return best


# --------------------------------------------------------------------------------------------
# population-level values


def _history(customers: pd.DataFrame, cfg: NextBestActionConfig) -> np.ndarray | None:
    """The historical value column (validated), or ``None`` when not configured / absent."""
    col = cfg.historical_value_column
    if col is None or col not in customers.columns:
        return None
    return _numeric(customers, col, lo=None, hi=None, hint=_HINT_CUSTOMERS)


def _quantile(v: np.ndarray, q: float) -> float | None:
    return float(np.quantile(v, q)) if len(v) else None


def _thresholds(
    clv: np.ndarray, hist: np.ndarray | None, cfg: NextBestActionConfig
) -> dict[str, float | None]:
    return {
        "winback_clv": _quantile(clv, cfg.winback_value_quantile),
        "winback_history": None if hist is None else _quantile(hist, cfg.winback_value_quantile),
        "referral_clv": _quantile(clv, cfg.referral_clv_quantile),
    }


def action_thresholds(
    customers: pd.DataFrame, config: NextBestActionConfig | None = None
) -> dict[str, float | None]:
    """The population-level values of the rules, computed over **all** customers of the table:
    the only inputs of :func:`assign_next_best_action` that depend on other customers.

    Every one is ``numpy.quantile`` (linear interpolation) of a customer column, and a rule
    holds at or above it (``>=``):

    * ``winback_clv``: ``clv`` at ``winback_value_quantile`` (win-back "valuable");
    * ``winback_history``: the historical value column (``historical_value_column``) at
      ``winback_value_quantile``; ``None`` when that column is not configured or absent;
    * ``referral_clv``: ``clv`` at ``referral_clv_quantile`` (referral ask).

    A value is ``None`` for an empty table (no customer passes). Passing the result to
    :func:`assign_next_best_action` (``thresholds=``) scores any subset of the customers
    exactly as the whole table: this is how the Spark engine assigns actions group by group
    (:func:`crmkit.spark.actions.next_best_actions` computes the same values on Spark).

    Raises
    ------
    DataContractError
        As :func:`assign_next_best_action` for a missing column or a missing, infinite or
        negative ``clv`` / a missing or infinite historical value.
    """
    cfg = config if config is not None else NextBestActionConfig()
    _require(customers, _CUSTOMER_COLUMNS, "customers", _HINT_CUSTOMERS)
    clv = _numeric(customers, "clv", lo=0.0, hi=None, hint=_HINT_CUSTOMERS)
    return _thresholds(clv, _history(customers, cfg), cfg)


def _given_thresholds(
    thresholds: Mapping[str, float | None], hist: np.ndarray | None, cfg: NextBestActionConfig
) -> dict[str, float | None]:
    """Checks ``thresholds`` (from :func:`action_thresholds`) against this table."""
    hint = "pass action_thresholds(all customers, config)"
    missing = [k for k in THRESHOLD_KEYS if k not in thresholds]
    if missing:
        raise DataContractError(f"thresholds lack {missing}", rule="thresholds", hint=hint)
    out: dict[str, float | None] = {}
    for k in THRESHOLD_KEYS:
        v = thresholds[k]
        if v is not None and not np.isfinite(float(v)):
            raise DataContractError(f"thresholds: {k} is {v}", rule="thresholds", hint=hint)
        out[k] = None if v is None else float(v)
    col = cfg.historical_value_column
    if (hist is None) != (out["winback_history"] is None) and (hist is None or len(hist)):
        has = "has" if hist is not None else "lacks"
        raise DataContractError(
            f"the customer table {has} the historical value column {col!r}, the thresholds "
            f"were computed {'without' if hist is not None else 'with'} it",
            column=col,
            rule="thresholds",
            hint=hint,
        )
    return out


def _at_least(v: np.ndarray, threshold: float | None) -> np.ndarray:
    return v >= threshold if threshold is not None else np.zeros(len(v), dtype=bool)


# --------------------------------------------------------------------------------------------
# rules


def assign_next_best_action(
    customers: pd.DataFrame,
    recommendations: pd.DataFrame,
    config: NextBestActionConfig | None = None,
    *,
    thresholds: Mapping[str, float | None] | None = None,
) -> pd.DataFrame:
    """One next best action per customer (rules and defaults in the module docstring).

    Parameters
    ----------
    customers
        One row per customer: ``customer_id`` (column or index), ``segment``, ``p_alive``
        (in [0, 1]), ``clv`` (>= 0), ``churn_probability`` (in [0, 1]; missing values are
        replaced by ``1 - p_alive`` unless ``config.missing_churn="error"``); optionally
        ``churn_risk_band`` / ``risk_band`` and the historical value column
        (``config.historical_value_column``, ``total_spend`` by default). Nothing else may
        be missing.
    recommendations
        Ranked lists (:func:`crmkit.models.recommend.recommend`): ``customer_id``, ``rank``,
        ``product_id``, ``kind``, ``score`` and ``reason`` (or a ``due`` column). Rows of
        customers absent from ``customers`` are ignored; customers without rows are fine.
    config
        Thresholds and rule order (default :class:`NextBestActionConfig()`).
    thresholds
        The population-level values (:func:`action_thresholds`) to use instead of computing
        them over ``customers``: with those of a larger table, every customer gets the action
        the larger table's run gives it. Default: computed over ``customers``.

    Returns
    -------
    DataFrame
        A copy of ``customers`` (same rows, order and index) with :data:`ACTION_COLUMNS`
        added (replaced when present): ``next_best_action`` (categorical over
        :data:`ACTIONS`, never missing), ``action_value`` (float; ``0.0`` for ``none``) and
        ``action_product_id`` (string; missing unless the action names a product).

    Raises
    ------
    DataContractError
        A missing column, missing / duplicated ``customer_id``, missing values, a probability
        outside [0, 1], a negative ``clv``, an unknown recommendation ``kind`` or a ``rank``
        below 1, naming the column and the rule.
    """
    cfg = config if config is not None else NextBestActionConfig()
    _require(customers, _CUSTOMER_COLUMNS, "customers", _HINT_CUSTOMERS)
    ids = _customer_ids(customers, "customers", _HINT_CUSTOMERS)
    n = len(ids)
    segment = _labels(customers, "segment", _HINT_CUSTOMERS)
    p_alive = _numeric(customers, "p_alive", lo=0.0, hi=1.0, hint=_HINT_CUSTOMERS)
    churn = _numeric(
        customers,
        "churn_probability",
        lo=0.0,
        hi=1.0,
        hint=_HINT_CUSTOMERS
        + ("; missing_churn='p_alive' accepts customers the churn model did not score")
        * (cfg.missing_churn == "error"),
        allow_nan=cfg.missing_churn == "p_alive",
    )
    churn = np.where(np.isnan(churn), 1.0 - p_alive, churn)
    clv = _numeric(customers, "clv", lo=0.0, hi=None, hint=_HINT_CUSTOMERS)
    band_col = next((c for c in RISK_BAND_COLUMNS if c in customers.columns), None)
    hist = _history(customers, cfg)
    cuts = (
        _thresholds(clv, hist, cfg)
        if thresholds is None
        else _given_thresholds(thresholds, hist, cfg)
    )
    rec = _recommendation_arrays(recommendations, ids, cfg)
    min_score = float(cfg.min_recommendation_score)
    scored = rec["score"] > min_score

    # -- eligibility of each rule (before priority) ---------------------------------------
    high_risk = np.zeros(n, dtype=bool)
    if band_col is not None:
        band = customers[band_col].astype("str").to_numpy(dtype=object)
        high_risk |= (
            np.isin(band, list(cfg.high_risk_bands)) & customers[band_col].notna().to_numpy()
        )
    if cfg.high_churn_probability is not None:
        high_risk |= churn >= float(cfg.high_churn_probability)
    lapsed = np.isin(segment, list(cfg.lapsed_segments)) | high_risk
    valuable = _at_least(clv, cuts["winback_clv"])
    if hist is not None:
        valuable |= _at_least(hist, cuts["winback_history"])
    winback = lapsed & valuable & (p_alive >= float(cfg.winback_min_p_alive))

    react_best = _best(rec, rec["kind"] == "reactivation", n)
    resell_best = _best(rec, rec["kind"] == "resell", n)
    winback_row = np.where(react_best >= 0, react_best, resell_best)

    due_row = _best(rec, rec["due"] & np.isin(rec["kind"], cfg.replenishment_kinds) & scored, n)

    offer_kinds = [k for k in cfg.priority if k in ("cross_sell", "up_sell")]
    offer_row: dict[str, np.ndarray] = {}
    if cfg.offer_choice == "best_rank":
        best_offer = _best(rec, np.isin(rec["kind"], offer_kinds) & scored, n)
        ok = best_offer >= 0
        kinds = np.r_[rec["kind"], np.array([""], dtype=object)]
        kind_of = kinds[best_offer]  # -1 picks the "" sentinel
        for k in offer_kinds:
            offer_row[k] = np.where(ok & (kind_of == k), best_offer, -1)
    else:
        for k in offer_kinds:
            offer_row[k] = _best(rec, (rec["kind"] == k) & scored, n)

    rows_for: dict[str, np.ndarray] = {
        "win_back": winback_row,
        "replenishment": due_row,
        **offer_row,
    }
    eligible: dict[str, np.ndarray] = {
        "win_back": winback,
        "replenishment": due_row >= 0,
        "loyalty_reward": np.isin(segment, list(cfg.loyalty_segments)),
        "referral_ask": np.isin(segment, list(cfg.referral_segments))
        & _at_least(clv, cuts["referral_clv"]),
        **{k: r >= 0 for k, r in offer_row.items()},
    }
    rec_score = np.r_[rec["score"], 0.0]
    value_of: dict[str, np.ndarray] = {
        "win_back": clv * churn,
        "loyalty_reward": clv,
        "referral_ask": clv,
        "replenishment": rec_score[due_row],
        **{k: rec_score[r] for k, r in offer_row.items()},
    }
    # -- an action is kept only where its expected value exceeds its cost ------------------
    for a, ev in expected_values(value_of, p_alive, churn).items():
        eligible[a] = eligible[a] & action_pays(ev, getattr(cfg.costs, a))

    # -- first match wins -------------------------------------------------------------------
    code = np.full(n, len(ACTIONS) - 1, dtype=np.int64)  # none
    value = np.zeros(n, dtype=np.float64)
    prod_row = np.full(n, -1, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    for action in cfg.priority:
        take = free & eligible[action]
        code[take] = ACTIONS.index(action)
        value[take] = value_of[action][take]
        if action in rows_for:
            prod_row[take] = rows_for[action][take]
        free &= ~take

    has = prod_row >= 0
    products = np.full(n, None, dtype=object)
    products[has] = rec["puniq"][rec["pcode"][prod_row[has]]]
    product = pd.Series(products, dtype="str", index=customers.index)
    out = customers.copy()
    out["next_best_action"] = pd.Categorical.from_codes(code, categories=list(ACTIONS))
    out["action_value"] = value
    out["action_product_id"] = product
    return out


# --------------------------------------------------------------------------------------------
# audiences


def _empty_audience() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": pd.Series([], dtype="str"),
            "rank": pd.Series([], dtype=np.int64),
            "action_value": pd.Series([], dtype=np.float64),
            "product_id": pd.Series([], dtype="str"),
            "segment": pd.Series([], dtype="str"),
            "clv": pd.Series([], dtype=np.float64),
            "p_alive": pd.Series([], dtype=np.float64),
            "churn_probability": pd.Series([], dtype=np.float64),
        }
    )


def build_audiences(customers_with_actions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One campaign audience per action (every action of :data:`AUDIENCE_ACTIONS`, empty ones
    included; ``none`` gets none).

    Parameters
    ----------
    customers_with_actions
        :func:`assign_next_best_action` output (``customer_id`` as column or index,
        ``next_best_action``, ``action_value``, ``action_product_id``, ``segment``, ``clv``,
        ``p_alive``, ``churn_probability``).

    Returns
    -------
    dict
        ``{action: frame}`` in :data:`AUDIENCE_ACTIONS` order; each frame has
        :data:`AUDIENCE_COLUMNS` (``product_id`` is ``action_product_id``), rows ranked by
        ``action_value`` descending then ``customer_id`` ascending, ``rank`` 1..n, a fresh
        ``RangeIndex``.
    """
    hint = "pass assign_next_best_action(...) output"
    df = customers_with_actions
    _require(
        df,
        ("next_best_action", "action_value", "action_product_id", "segment", "clv", "p_alive")
        + ("churn_probability",),
        "customers with actions",
        hint,
    )
    ids = _customer_ids(df, "customers with actions", hint)
    action = _labels(df, "next_best_action", hint)
    unknown = ~np.isin(action, ACTIONS)
    if unknown.any():
        raise DataContractError(
            f"next_best_action must be one of {list(ACTIONS)}",
            column="next_best_action",
            rule="allowed_values",
            rows=_rows(unknown, action),
            hint=hint,
        )
    value = _numeric(df, "action_value", lo=None, hi=None, hint=hint)
    cols = {
        "customer_id": ids.to_numpy(dtype=object),
        "action_value": value,
        "product_id": df["action_product_id"].to_numpy(dtype=object, na_value=None),
        "segment": df["segment"].to_numpy(dtype=object, na_value=None),
        "clv": df["clv"].to_numpy(dtype=np.float64, na_value=np.nan),
        "p_alive": df["p_alive"].to_numpy(dtype=np.float64, na_value=np.nan),
        "churn_probability": df["churn_probability"].to_numpy(dtype=np.float64, na_value=np.nan),
    }
    id_code = pd.factorize(cols["customer_id"], sort=True)[0]
    order = np.lexsort((id_code, -value))
    out: dict[str, pd.DataFrame] = {}
    for a in AUDIENCE_ACTIONS:
        rows = order[action[order] == a]
        out[a] = pd.DataFrame(
            {
                "customer_id": pd.Series(cols["customer_id"][rows], dtype="str"),
                "rank": np.arange(1, len(rows) + 1, dtype=np.int64),
                "action_value": cols["action_value"][rows],
                "product_id": pd.Series(cols["product_id"][rows], dtype="str"),
                "segment": pd.Series(cols["segment"][rows], dtype="str"),
                "clv": cols["clv"][rows],
                "p_alive": cols["p_alive"][rows],
                "churn_probability": cols["churn_probability"][rows],
            }
        )
    return out


def _check_write_args(audiences: Mapping[str, Any], fmt: str) -> None:
    """The arguments of :func:`write_audiences` (and of the Spark engine's)."""
    if fmt not in ("parquet", "csv"):
        raise DataContractError(f"fmt must be 'parquet' or 'csv', got {fmt!r}", rule="format")
    unknown = sorted(set(audiences) - set(AUDIENCE_ACTIONS))
    if unknown:
        raise DataContractError(
            f"unknown audience(s) {unknown}; expected keys from {list(AUDIENCE_ACTIONS)}",
            rule="allowed_values",
            hint="pass build_audiences(...) output",
        )


def write_audiences(
    audiences: Mapping[str, pd.DataFrame],
    out_dir: str | os.PathLike,
    fmt: Literal["parquet", "csv"] = "parquet",
) -> dict[str, Any]:
    """Write the audiences into ``out_dir``, all-or-nothing.

    Every action of :data:`AUDIENCE_ACTIONS` gets ``out_dir/<action>.parquet`` (pyarrow, no
    index) or ``out_dir/<action>.csv`` (UTF-8, header, missing ``product_id`` as an empty
    field), with the columns :data:`AUDIENCE_COLUMNS`; an action that is missing from
    ``audiences`` or has no rows is written as a zero-row file with the same columns, so a
    folder never mixes audiences of two runs. ``out_dir/index.json`` lists, per action, the
    file, its row count and the sum of ``action_value``.

    Parameters
    ----------
    audiences
        :func:`build_audiences` output.
    out_dir
        Folder to write (created; files of the same names are replaced).
    fmt
        ``"parquet"`` or ``"csv"``.

    Returns
    -------
    dict
        The ``index.json`` content.
    """
    from crmkit.data.io import staged_output, write_parquet
    from crmkit.data.output import write_csv

    _check_write_args(audiences, fmt)
    frames: dict[str, pd.DataFrame] = {}
    for a in AUDIENCE_ACTIONS:
        f = audiences.get(a)
        if f is None or not len(f):
            frames[a] = _empty_audience()
            continue
        _require(f, AUDIENCE_COLUMNS, f"audience {a!r}", "pass build_audiences(...) output")
        frames[a] = f.loc[:, list(AUDIENCE_COLUMNS)].reset_index(drop=True)
    manifest: dict[str, Any] = {"format": fmt, "columns": list(AUDIENCE_COLUMNS), "actions": {}}
    with staged_output(out_dir) as stage:
        for a, f in frames.items():
            name = f"{a}.{fmt}"
            if fmt == "parquet":
                write_parquet(f, stage / name)
            else:
                write_csv(f, stage / name)  # formula-like text cells neutralised
            manifest["actions"][a] = {
                "file": name,
                "rows": len(f),
                "total_action_value": float(f["action_value"].sum()),
            }
        (stage / "index.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def read_audience(path: str | os.PathLike) -> pd.DataFrame:
    """Read one audience file written by :func:`write_audiences` (Parquet or CSV) or by
    :func:`crmkit.spark.actions.write_audiences` (a Parquet data set: a directory) with the
    same column types (``customer_id`` / ``product_id`` / ``segment`` as strings). In CSV an
    empty field is a missing ``product_id`` or number (``churn_probability`` of a customer the
    churn model did not score), ``NaN`` a missing number; numbers are read back exactly."""
    p = Path(path)
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    missing_number = ["", "NaN"]
    return pd.read_csv(
        p,
        dtype={
            "customer_id": "str",
            "rank": np.int64,
            "action_value": np.float64,
            "product_id": "str",
            "segment": "str",
            "clv": np.float64,
            "p_alive": np.float64,
            "churn_probability": np.float64,
        },
        keep_default_na=False,
        na_values={
            "product_id": [""],
            **{c: missing_number for c in ("action_value", "clv", "p_alive", "churn_probability")},
        },
    )
