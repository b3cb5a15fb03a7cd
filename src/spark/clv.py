"""CLV on Spark: the purchase and spend models fitted on the driver from small tables of unique
patterns aggregated in Spark, and every customer's P(alive), expected purchases, expected
spend and CLV predicted with stored parameters in pandas UDFs.

Fitting (:func:`weighted_patterns`, :func:`fit_purchase_model`, :func:`fit_gamma_gamma`)
---------------------------------------------------------------------------------------------
The local fitters (:mod:`crmkit.models.clv`) collapse equal ``(frequency, recency, T)`` rows
into one pattern with a weight before they evaluate any likelihood
(:func:`crmkit.models._clv_math.purchase_data`): the patterns in the order of their first
customer (customers sorted by id), the weights summed. :func:`weighted_patterns` builds that
table with one grouped aggregation in Spark (``count`` and ``min(customer_id)`` per pattern,
ordered by the latter), so only the patterns reach the driver, and a fit on them with their
weights sees the same patterns, in the same order, with the same weights as the local fit on
the whole summary: the fitted parameters are identical, bit for bit (tested), given the same
summary. Customer ids order as in pandas for numbers and strings (Spark compares strings by
their UTF-8 bytes, i.e. by code point, as Python does).

Gamma-Gamma (:func:`fit_gamma_gamma`) needs ``(frequency, monetary_value)`` of the repeat
buyers. ``monetary_value`` is a mean of money amounts, nearly unique per customer, so the
unique pairs rarely reduce the table much: about one row per repeat buyer reaches the driver
(the customers without a repeat purchase collapse into one row, which the fit ignores). The
local fitter sorts the pairs itself, so their order does not matter; the parameters equal a
local fit on the same pairs exactly, and a local fit on the local summary to the rounding of
``monetary_value`` (Spark adds the repeat days' values in another order).

Predictions (:func:`clv_scores`)
--------------------------------
:func:`summary_in_unit` takes the RFM summary in any time unit from a Spark customer table
(:func:`crmkit.spark.customer_table`) from its whole days (``recency = (tenure_days -
recency_days) / unit_days``, ``T = tenure_days / unit_days``: the local
:func:`crmkit.features.rfm.rfm_summary`'s arithmetic, so identical). :func:`clv_scores` runs
the local definitions on each batch of customers through ``mapInPandas``:
:func:`crmkit.models.clv_value.customer_lifetime_value` (without draws) and
``conditional_probability_alive`` of the scorer's purchase model with the stored parameters.
Both are per customer (``customer_lifetime_value`` collapses equal rows of a batch only to
evaluate each once); its one population-level step - raising when a customer's expected spend
is infinite, or (Gamma-Gamma) a repeat buyer's ``monetary_value`` is negative - is checked on
the driver first by a Spark query for such customers (at most 20 are collected), handed to
the local function so that it raises its own :class:`~crmkit.errors.DataContractError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crmkit.errors import DataContractError

__all__ = [
    "CLV_COLUMNS",
    "summary_in_unit",
    "weighted_patterns",
    "fit_purchase_model",
    "fit_gamma_gamma",
    "clv_scores",
]

#: Columns of :func:`clv_scores` after ``customer_id``.
CLV_COLUMNS = ("p_alive", "expected_purchases", "expected_spend", "clv")
_SUMMARY = ("frequency", "recency", "T", "monetary_value")
_FIRST = "_first_customer"


def _require(table: DataFrame, columns: Sequence[str], what: str) -> None:
    """A Spark DataFrame with ``columns`` (else the error names the first one missing)."""
    have = table.columns if isinstance(table, DataFrame) else ()
    missing = [c for c in columns if c not in have]
    if missing or not isinstance(table, DataFrame):
        kind = "a Spark DataFrame" if isinstance(table, DataFrame) else type(table).__name__
        msg = f"{what} ({kind}) lacks column(s) {missing}; pass crmkit.spark.customer_table"
        raise DataContractError(msg, column=missing[0], rule="required_column")


def summary_in_unit(table: DataFrame, unit: str) -> DataFrame:
    """``customer_id, frequency, recency, T, monetary_value`` in ``unit`` (``D``, ``W``, ``M``)
    from a Spark customer table (:func:`crmkit.spark.customer_table`, any unit): ``recency =
    (tenure_days - recency_days) / unit_days`` (first to last purchase day) and ``T =
    tenure_days / unit_days``, in the same float operations as
    :func:`crmkit.features.rfm.rfm_summary`, hence identical to it; ``frequency`` and
    ``monetary_value`` do not depend on the unit."""
    from crmkit.features.rfm import _unit_days

    ud = _unit_days(unit)
    _require(
        table,
        ("customer_id", "frequency", "monetary_value", "recency_days", "tenure_days"),
        "customer table",
    )
    span = F.col("tenure_days") - F.col("recency_days")
    return table.select(
        F.col("customer_id"),
        F.col("frequency").cast("double").alias("frequency"),
        (span.cast("double") / F.lit(ud)).alias("recency"),
        (F.col("tenure_days").cast("double") / F.lit(ud)).alias("T"),
        F.col("monetary_value").cast("double").alias("monetary_value"),
    )


def weighted_patterns(
    table: DataFrame, columns: Sequence[str] = ("frequency", "recency", "T")
) -> pd.DataFrame:
    """The distinct rows of ``columns`` of a Spark table with one row per customer, with their
    number of customers as ``weight`` (float64), ordered by their first customer id.

    Aggregated in Spark (one ``groupBy``); only the patterns reach the driver. This is the
    order in which the local fitters collapse a summary sorted by customer id into patterns
    (first appearance), so ``Model().fit(p[columns], weights=p["weight"])`` on the result is
    bit-identical to ``Model().fit(summary)`` on the local summary (see the module docstring).

    Parameters
    ----------
    table
        One row per customer: ``customer_id`` and ``columns`` (e.g. :func:`summary_in_unit`).
    columns
        The pattern columns.

    Returns
    -------
    pandas.DataFrame
        ``columns`` and ``weight``, index 0..n-1.
    """
    cols = list(columns)
    _require(table, ["customer_id", *cols], "table")
    rows = (
        table.groupBy(*cols)
        .agg(F.count(F.lit(1)).alias("weight"), F.min("customer_id").alias(_FIRST))
        .orderBy(_FIRST)
        .select(*cols, "weight")
        .collect()
    )
    out = pd.DataFrame(
        {c: np.array([r[c] for r in rows], dtype=np.float64) for c in cols},
        index=pd.RangeIndex(len(rows)),
    )
    out["weight"] = np.array([r["weight"] for r in rows], dtype=np.float64)
    return out


def fit_purchase_model(
    table: DataFrame, model: str = "bgnbd", *, penalizer: float = 0.0, **params: Any
) -> Any:
    """A purchase model (``bgnbd``, ``mbgnbd``, ``pareto_nbd``: the classes of
    :data:`crmkit.models.clv_validation.MODELS`) fitted on the driver on the
    :func:`weighted_patterns` of ``table``'s ``frequency, recency, T`` (in the table's unit).

    Identical to ``MODELS[model](penalizer=penalizer, **params).fit(summary)`` on the local
    summary of the same customers (same parameters, log-likelihood and convergence report).
    Raises what the local fit raises (e.g. ``DataContractError`` for no repeat buyers,
    ``ConvergenceError``); the rows it names are pattern numbers, not customer ids.
    """
    from crmkit.models.clv_validation import MODELS

    if model not in MODELS:
        raise DataContractError(
            f"unknown purchase model {model!r}; use one of {sorted(MODELS)}", rule="model"
        )
    patterns = weighted_patterns(table, ("frequency", "recency", "T"))
    fitted = MODELS[model](penalizer=penalizer, **params)
    return fitted.fit(patterns[["frequency", "recency", "T"]], weights=patterns["weight"])


def fit_gamma_gamma(table: DataFrame, *, penalizer: float = 0.0, **params: Any) -> Any:
    """A :class:`crmkit.models.clv.GammaGamma` fitted on the driver on the distinct
    ``(frequency, monetary_value)`` pairs of ``table`` with their weights.

    The pairs rarely reduce the table: ``monetary_value`` (mean value of the repeat purchase
    days) is nearly unique per repeat buyer, so about one row per repeat buyer reaches the
    driver; the customers without a repeat purchase collapse into one row, which keeps the
    local errors (e.g. no repeat buyers) and is ignored by the fit. Equal to the local fit on
    the same pairs exactly (the fitter sorts the pairs itself); the weighted correlation behind
    its spend-correlation warning is taken over the pairs.
    """
    from crmkit.models.clv import GammaGamma

    pairs = weighted_patterns(table, ("frequency", "monetary_value"))
    fitted = GammaGamma(penalizer=penalizer, **params)
    return fitted.fit(pairs[["frequency", "monetary_value"]], weights=pairs["weight"])


def _clv_settings(scorer: Any) -> dict[str, Any]:
    from crmkit.features.rfm import UNIT_DAYS

    cfg = scorer.config.clv
    return {
        "unit_days": UNIT_DAYS[scorer.clv["unit"]],
        "horizon_periods": cfg.horizon_periods,
        "period_days": cfg.period_days,
        "discount_rate": cfg.discount_rate,
        "margin": cfg.margin,
        "n_draws": 0,
    }


def _local_clv(
    purchase: Any, spend: Any, settings: dict[str, Any], summary: pd.DataFrame
) -> pd.DataFrame:
    """The local scorer's CLV columns of a pandas summary (the body of
    ``CustomerScorer.clv_scores`` after the summary)."""
    from crmkit.models.clv_value import customer_lifetime_value
    from crmkit.models.p_alive import reported_p_alive

    value = customer_lifetime_value(purchase, spend, summary, **settings)
    p_alive = reported_p_alive(purchase, summary, settings["unit_days"])
    out = pd.DataFrame({"p_alive": p_alive.to_numpy()}, index=summary.index)
    return out.join(value.customers[["expected_purchases", "expected_spend", "clv"]])


def _check_spend(summary: DataFrame, purchase: Any, spend: Any, settings: dict) -> None:
    """Raise the local error when a customer's expected spend is infinite (Gamma-Gamma
    ``p x + q - 1 <= 0``, e.g. no repeat purchase with ``q <= 1``) or a repeat buyer's
    ``monetary_value`` is negative: up to 20 such customers are collected and scored by the
    local function, which raises."""
    p, q, _ = (float(v) for v in spend._check_is_fitted())
    x, m = F.col("frequency"), F.col("monetary_value")
    bad = (m < F.lit(0.0)) | (F.lit(p) * x + F.lit(q) - F.lit(1.0) <= F.lit(0.0))
    rows = summary.where(bad).limit(20).collect()
    if rows:
        local = pd.DataFrame(
            {c: [float(r[c]) for r in rows] for c in _SUMMARY},
            index=pd.Index([r["customer_id"] for r in rows], name="customer_id"),
        )
        _local_clv(purchase, spend, settings, local)


def clv_scores(
    lines: DataFrame, scorer: Any, when: object, *, table: DataFrame | None = None
) -> DataFrame:
    """``customer_id, p_alive, expected_purchases, expected_spend, clv`` of every customer with
    a purchase on or before ``when``, as the local ``CustomerScorer.clv_scores``.

    The RFM summary in the scorer's CLV unit is :func:`summary_in_unit` of the Spark customer
    table (computed with the scorer's feature settings and cancellation prefixes, or the
    ``table`` given, which must be that of ``lines`` at ``when``); the predictions use the
    stored parameters (``scorer.clv_models()``) and the local definitions, on each batch of
    customers in ``mapInPandas``. Before that, one Spark query looks for customers whose
    expected spend would be infinite or whose ``monetary_value`` is negative (the local
    scorer raises :class:`~crmkit.errors.DataContractError` for them; so does this).

    Exact: ``frequency, recency, T`` are identical to the local summary's, so ``p_alive`` and
    ``expected_purchases`` agree to the last bits of numpy's vectorised functions;
    ``monetary_value`` (hence ``expected_spend`` and ``clv``) to the rounding of its sum
    (relative ~1e-15).

    Returns
    -------
    pyspark.sql.DataFrame
        Lazy, one row per customer (no particular order).
    """
    from crmkit.spark.features import customer_table

    if table is None:
        prefixes = tuple(scorer.config.cleaning.cancellation_prefixes)
        table = customer_table(lines, when, scorer.config.features, cancellation_prefixes=prefixes)
    summary = summary_in_unit(table, scorer.clv["unit"])
    purchase, spend = scorer.clv_models()
    settings = _clv_settings(scorer)
    _check_spend(summary, purchase, spend, settings)

    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if batch.empty:
                continue
            local = batch.set_index("customer_id")[list(_SUMMARY)]
            out = _local_clv(purchase, spend, settings, local)
            yield out.reset_index()[["customer_id", *CLV_COLUMNS]]

    schema = T.StructType(
        [T.StructField("customer_id", summary.schema["customer_id"].dataType, True)]
        + [T.StructField(c, T.DoubleType(), True) for c in CLV_COLUMNS]
    )
    return summary.mapInPandas(predict, schema)
