"""Next best actions and campaign audiences of ``crmkit score --engine spark``, equal to the
local ones (:mod:`crmkit.models.actions`).

Next best action (:func:`next_best_actions`)
--------------------------------------------
The rules decide each customer from their own row and recommendation rows, except for three
population-level values (:func:`crmkit.models.actions.action_thresholds`): ``numpy.quantile``
(linear interpolation) over **all** customers of ``clv`` at ``winback_value_quantile`` and at
``referral_clv_quantile``, and of the historical value column (``total_spend``) at
``winback_value_quantile``. They are computed first, exactly (:func:`exact_quantiles`); then
the customers and their recommendation rows are co-grouped by a hash bucket of
``customer_id`` (``groupBy(...).cogroup(...).applyInPandas``) and every group runs the local
:func:`~crmkit.models.actions.assign_next_best_action` with those thresholds. Each customer
therefore gets the action, value and product of the local run over the whole table.

Exact quantiles (:func:`exact_quantiles`)
-----------------------------------------
``numpy.quantile(v, q)`` with ``n`` values reads two order statistics, the values of rank
``floor((n - 1) q)`` and the next one (0-based, in ascending order), and interpolates between
them. Spark finds each order statistic by its exact rank without sorting all values in one
task: the values are cut into ranges of about ``rows_per_bucket`` rows (bounds from
``approxQuantile``: they only balance the work, exactness never depends on them), the rows per
range are counted, and only the range holding the wanted rank is read again: its distinct
values, each with the running count of rows at or below it (a window partitioned by range over
distinct values, so ties such as the many customers with a CLV of 0 collapse to one row). The
driver receives the range bounds, one count per range and the two values, and interpolates
with numpy's formula (same operations, same rounding), so the thresholds equal the local ones
bit for bit.

Audiences (:func:`build_audiences`, :func:`write_audiences`)
------------------------------------------------------------
The same lists as :func:`crmkit.models.actions.build_audiences`: one per action but ``none``,
ranked by ``action_value`` descending then ``customer_id`` ascending (code point order in
both engines), ``rank`` 1..n. Ranks are global without a window over all rows: values are cut
into ranges as above, a range's first rank is the number of the action's rows in the ranges
of higher values (counted in Spark, summed on the driver), and rows are numbered within their
range (one task per range; all rows of one value share a range, so a value held by very many
customers is numbered in one task). :func:`write_audiences` writes the files and ``index.json`` of the local function:
``<action>.parquet`` is a Parquet data set (a directory of part files in rank order, read by
``pandas.read_parquet`` as the local frame), ``<action>.csv`` one CSV file (Spark writes the
parts, the driver concatenates them under one header) that
:func:`crmkit.models.actions.read_audience` reads as the local one. ``total_action_value`` in
``index.json`` is a Spark sum: equal to the local sum up to rounding (relative 1e-12).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crmkit.errors import DataContractError
from crmkit.models.actions import (
    _CUSTOMER_COLUMNS,
    _HINT_CUSTOMERS,
    _HINT_RECS,
    _KINDS,
    _RECOMMENDATION_COLUMNS,
    ACTION_COLUMNS,
    ACTIONS,
    AUDIENCE_ACTIONS,
    AUDIENCE_COLUMNS,
    THRESHOLD_KEYS,
    NextBestActionConfig,
    _check_write_args,
    _require,
)
from crmkit.spark.features import _finite

__all__ = [
    "ROWS_PER_BUCKET",
    "ROWS_PER_GROUP",
    "exact_quantiles",
    "action_thresholds",
    "next_best_actions",
    "build_audiences",
    "write_audiences",
]

#: Rows per value range when ranking (:func:`exact_quantiles`, :func:`build_audiences`): one
#: range is numbered in one task.
ROWS_PER_BUCKET = 1_000_000
#: Customers per group of :func:`next_best_actions` (a pandas frame in one Python worker).
ROWS_PER_GROUP = 100_000
_MAX_RANGES = 10_000
_BUCKET = "_crmkit_bucket"
_SCHEMA: dict[str, T.DataType] = {
    "customer_id": T.StringType(),
    "rank": T.LongType(),
    "action_value": T.DoubleType(),
    "product_id": T.StringType(),
    "segment": T.StringType(),
    "clv": T.DoubleType(),
    "p_alive": T.DoubleType(),
    "churn_probability": T.DoubleType(),
}


# --------------------------------------------------------------------------------------------
# checks


def _check_frame(df: Any, columns: Sequence[str], what: str, hint: str) -> None:
    _require(df, columns, what, hint, frame_type=DataFrame, type_name="a Spark DataFrame")


def _check_numeric(df: DataFrame, columns: Sequence[str], hint: str) -> None:
    for col in columns:
        dtype = df.schema[col].dataType
        if not isinstance(dtype, T.NumericType):
            raise DataContractError(
                f"{col} must be numeric, got Spark type {dtype.simpleString()}",
                column=col,
                rule="dtype",
                hint=hint,
            )


def _count_violations(
    df: DataFrame,
    checks: Sequence[tuple[str, str, Column, str]],
    hint: str,
    extra: Mapping[str, Column] | None = None,
) -> dict[str, int]:
    """Counts every check's offending rows in one aggregation and raises the first failing
    check, in the order given: ``(column, rule, offending-row condition, message)``. Returns
    the counts of ``extra`` (aggregate columns) and ``n``, the number of rows."""
    aggs = [F.count(F.lit(1)).alias("n")]
    aggs += [F.sum(cond.cast("long")).alias(f"c{i}") for i, (_, _, cond, _) in enumerate(checks)]
    aggs += [c.alias(k) for k, c in (extra or {}).items()]
    row = df.agg(*aggs).first()
    for i, (col, rule, _, text) in enumerate(checks):
        bad = int(row[f"c{i}"] or 0)
        if bad:
            raise DataContractError(f"{text} ({bad} rows)", column=col, rule=rule, hint=hint)
    return {"n": int(row["n"]), **{k: int(row[k] or 0) for k in (extra or {})}}


def _value_checks(
    col: str, lo: float | None, hi: float | None, *, allow_missing: bool = False
) -> list[tuple[str, str, Column, str]]:
    """The checks of :func:`crmkit.models.actions._numeric`: finite (missing allowed when
    ``allow_missing``), then within ``[lo, hi]``."""
    c = F.col(col).cast("double")
    bad = ~_finite(col)
    if allow_missing:
        bad = bad & c.isNotNull() & ~F.isnan(c)
    out = [(col, "missing_values", bad, f"{col} has missing or infinite values")]
    outside = F.lit(False)
    if lo is not None:
        outside = outside | (c < F.lit(lo))
    if hi is not None:
        outside = outside | (c > F.lit(hi))
    if lo is not None or hi is not None:
        rng = f"in [{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        out.append((col, "out_of_range", _finite(col) & outside, f"{col} must be {rng}"))
    return out


def _history_column(customers: DataFrame, cfg: NextBestActionConfig) -> str | None:
    col = cfg.historical_value_column
    return col if col is not None and col in customers.columns else None


def _check_customers(customers: Any, cfg: NextBestActionConfig) -> int:
    """The local engine's checks of the customer table, in one pass; returns its row count."""
    hint = _HINT_CUSTOMERS
    _check_frame(customers, ("customer_id", *_CUSTOMER_COLUMNS), "customers", hint)
    hist = _history_column(customers, cfg)
    _check_numeric(
        customers, ["p_alive", "churn_probability", "clv"] + ([hist] if hist else []), hint
    )
    ids = F.col("customer_id")
    checks = [
        ("customer_id", "missing_values", ids.isNull(), "customer_id has missing values"),
        ("segment", "missing_values", F.col("segment").isNull(), "segment has missing values"),
        *_value_checks("p_alive", 0.0, 1.0),
        *_value_checks("churn_probability", 0.0, 1.0, allow_missing=cfg.missing_churn == "p_alive"),
        *_value_checks("clv", 0.0, None),
        *(_value_checks(hist, None, None) if hist else []),
    ]
    got = _count_violations(
        customers, checks, hint, {"distinct": F.count_distinct(ids.cast("string"))}
    )
    if got["distinct"] < got["n"]:
        raise DataContractError(
            f"customer_id must be unique (one row per customer) ({got['n'] - got['distinct']} "
            "duplicated rows)",
            column="customer_id",
            rule="unique",
            hint=hint,
        )
    return got["n"]


def _check_recommendations(recs: Any) -> str:
    """The local engine's checks of the recommendation lists, in one pass; returns the column
    that marks due rows (``due``, else ``reason``)."""
    hint = _HINT_RECS
    _check_frame(recs, _RECOMMENDATION_COLUMNS, "recommendations", hint)
    due = "due" if "due" in recs.columns else "reason" if "reason" in recs.columns else None
    if due is None:
        raise DataContractError(
            "recommendations need a due or a reason column to find due replenishments",
            column="reason",
            rule="required_column",
            hint=hint,
        )
    _check_numeric(recs, ["rank", "score"], hint)
    rank = F.col("rank").cast("double")
    checks = [
        (c, "missing_values", F.col(c).isNull(), f"recommendations: {c} has missing values")
        for c in ("customer_id", "product_id", "kind")
    ]
    checks += [
        (
            "kind",
            "allowed_values",
            ~F.col("kind").cast("string").isin(*_KINDS),
            f"recommendations: kind must be one of {list(_KINDS)}",
        ),
        *_value_checks("rank", 1.0, None),
        (
            "rank",
            "integer",
            _finite("rank") & (rank != F.floor(rank)),
            "recommendations: rank must be a whole number >= 1",
        ),
        *_value_checks("score", None, None),
    ]
    _count_violations(recs, checks, hint)
    return due


# --------------------------------------------------------------------------------------------
# exact quantiles


def _range_count(n: int, rows_per_bucket: int) -> int:
    return min(-(-n // max(1, int(rows_per_bucket))), _MAX_RANGES)


def _at_or_below(col: str) -> Callable[[Column], Column]:
    return lambda bound: bound <= F.col(col)


def _ranges(df: DataFrame, columns: Sequence[str], n: int, rows_per_bucket: int) -> list[Column]:
    """For each column (finite, not null), a range index that never decreases as the value
    grows: the number of range bounds at or below it, about ``rows_per_bucket`` rows per
    range. The bounds come from one ``approxQuantile`` job; only they reach the driver."""
    k = _range_count(n, rows_per_bucket)
    if k <= 1:
        return [F.lit(0) for _ in columns]
    probs = [i / k for i in range(1, k)]
    out = []
    for col, bounds in zip(columns, df.approxQuantile(list(columns), probs, 0.25 / k), strict=True):
        arr = F.array(*[F.lit(float(b)) for b in sorted(set(bounds))])
        out.append(F.size(F.filter(arr, _at_or_below(col))))
    return out


def _order_statistics(
    df: DataFrame, wanted: Mapping[str, Sequence[int]], n: int, rows_per_bucket: int
) -> dict[tuple[str, int], float]:
    """The values of the given 0-based ranks, in ascending order, of each column (exact):
    ``{(column, rank): value}``. Three Spark jobs whatever the number of columns."""
    cols = list(wanted)
    values = df.select(*[F.col(c).cast("double").alias(f"v{i}") for i, c in enumerate(cols)])
    names = [f"v{i}" for i in range(len(cols))]
    ranges = _ranges(values, names, n, rows_per_bucket)
    # one row per (column, value): the column's position, its value and range
    long = values.select(
        F.explode(
            F.array(
                *[
                    F.struct(F.lit(i).alias("c"), F.col(v).alias("v"), r.alias(_BUCKET))
                    for i, (v, r) in enumerate(zip(names, ranges, strict=True))
                ]
            )
        ).alias("x")
    ).select("x.c", "x.v", f"x.{_BUCKET}")
    counts: dict[int, dict[int, int]] = {}
    for row in long.groupBy("c", _BUCKET).count().collect():
        counts.setdefault(row["c"], {})[row[_BUCKET]] = row["count"]
    targets: dict[tuple[int, int, int], list[int]] = {}  # (column, range, row in range)
    for i, c in enumerate(cols):
        start, first = 0, {}
        for key in sorted(counts[i]):
            first[key] = start
            start += counts[i][key]
        for r in sorted(set(wanted[c])):
            key = max(k for k, s in first.items() if s <= r)
            targets.setdefault((i, key, r - first[key] + 1), []).append(r)
    in_range = F.lit(False)
    for i, key in {(i, key) for i, key, _ in targets}:
        in_range = in_range | ((F.col("c") == i) & (F.col(_BUCKET) == key))
    # within a wanted range, the distinct values with the number of rows at or below each
    # (ties collapse to one row: a value shared by many customers, e.g. a CLV of 0, is cheap)
    upto = Window.partitionBy("c", _BUCKET).orderBy("v").rowsBetween(Window.unboundedPreceding, 0)
    dist = (
        long.where(in_range)
        .groupBy("c", _BUCKET, "v")
        .count()
        .withColumn("_end", F.sum("count").over(upto))
    )
    hit = F.lit(False)
    for i, key, j in targets:
        hit = hit | (
            (F.col("c") == i)
            & (F.col(_BUCKET) == key)
            & (F.col("_end") >= j)
            & (F.col("_end") - F.col("count") < j)
        )
    out: dict[tuple[str, int], float] = {}
    for row in dist.where(hit).collect():
        for (i, key, j), rs in targets.items():
            if (i, key) == (row["c"], row[_BUCKET]) and row["_end"] - row["count"] < j <= row[
                "_end"
            ]:
                for r in rs:
                    out[(cols[i], r)] = float(row["v"])
    return out


def _linear_ranks(n: int, q: float) -> tuple[int, int, float]:
    """``numpy.quantile``'s (method ``linear``) two 0-based ranks and interpolation weight."""
    virtual = np.float64(n - 1) * np.float64(q)
    prev = np.floor(virtual)
    if virtual >= n - 1:  # numpy takes the last value (index -1) twice
        return n - 1, n - 1, float(virtual - np.float64(-1))
    return int(prev), int(prev) + 1, float(virtual - prev)


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's ``_lerp``: ``a + (b - a) t``, from ``b``'s side when ``t >= 0.5``."""
    a64, b64 = np.float64(a), np.float64(b)
    diff = b64 - a64
    return float(b64 - diff * (1 - t)) if t >= 0.5 else float(a64 + diff * t)


def exact_quantiles(
    df: DataFrame,
    quantiles: Mapping[str, Sequence[float]],
    *,
    n: int | None = None,
    rows_per_bucket: int = ROWS_PER_BUCKET,
) -> dict[str, list[float | None]]:
    """``numpy.quantile(values, q)`` (linear interpolation) of numeric columns, bit for bit
    (module docstring): ``{column: [value per q]}``, ``None`` for an empty frame. Three Spark
    jobs (range bounds, range counts, the wanted order statistics) for all the columns.

    Parameters
    ----------
    df
        The values: finite, no nulls (checked by the caller), cast to double.
    quantiles
        ``{column: [q, ...]}``, each ``q`` in [0, 1].
    n
        The number of rows, when already counted.
    rows_per_bucket
        Rows per value range numbered in one task.
    """
    n = int(df.count()) if n is None else int(n)
    if n == 0:
        return {c: [None for _ in qs] for c, qs in quantiles.items()}
    plan = {c: [_linear_ranks(n, float(q)) for q in qs] for c, qs in quantiles.items()}
    wanted = {c: [r for i, j, _ in p for r in (i, j)] for c, p in plan.items()}
    values = _order_statistics(df, wanted, n, rows_per_bucket)
    return {c: [_lerp(values[(c, i)], values[(c, j)], t) for i, j, t in p] for c, p in plan.items()}


def action_thresholds(
    customers: DataFrame,
    config: NextBestActionConfig | None = None,
    *,
    n: int | None = None,
    rows_per_bucket: int = ROWS_PER_BUCKET,
) -> dict[str, float | None]:
    """:func:`crmkit.models.actions.action_thresholds` of a Spark customer table, equal bit
    for bit (:func:`exact_quantiles`). ``customers`` is assumed checked (as by
    :func:`next_best_actions`); ``n`` is its row count when already known."""
    cfg = config if config is not None else NextBestActionConfig()
    wq, rq = cfg.winback_value_quantile, cfg.referral_clv_quantile
    hist = _history_column(customers, cfg)
    wanted = {"clv": [wq, rq], **({hist: [wq]} if hist else {})}
    got = exact_quantiles(customers, wanted, n=n, rows_per_bucket=rows_per_bucket)
    out = {
        "winback_clv": got["clv"][0],
        "winback_history": got[hist][0] if hist else None,
        "referral_clv": got["clv"][1],
    }
    return {k: out[k] for k in THRESHOLD_KEYS}


# --------------------------------------------------------------------------------------------
# next best action


def _assign_groups(
    cfg: NextBestActionConfig, thresholds: dict[str, float | None], names: list[str]
) -> Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]:
    """The function run on each (customers, recommendations) group."""

    def assign(customers: pd.DataFrame, recs: pd.DataFrame) -> pd.DataFrame:
        from crmkit.models.actions import assign_next_best_action

        if customers.empty:  # lists of customers outside the table only
            # (object columns: Arrow cannot take pandas' empty Arrow-backed strings back)
            return pd.DataFrame({c: pd.Series([], dtype=object) for c in names})
        out = assign_next_best_action(
            customers.drop(columns=_BUCKET), recs.drop(columns=_BUCKET), cfg, thresholds=thresholds
        )
        out["next_best_action"] = out["next_best_action"].astype("str")
        return out[names]

    return assign


def _customer_bucket(buckets: int) -> Column:
    return F.pmod(F.xxhash64(F.col("customer_id").cast("string")), F.lit(int(buckets)))


def next_best_actions(
    customers: DataFrame,
    recommendations: DataFrame,
    config: NextBestActionConfig | None = None,
    *,
    thresholds: Mapping[str, float | None] | None = None,
    buckets: int | None = None,
    rows_per_bucket: int = ROWS_PER_BUCKET,
) -> DataFrame:
    """:func:`crmkit.models.actions.assign_next_best_action` on Spark (module docstring).

    Parameters
    ----------
    customers
        One row per customer: ``customer_id`` (a column), ``segment``, ``p_alive``, ``clv``,
        ``churn_probability`` (nulls / NaN as in the local function), optionally
        ``churn_risk_band`` / ``risk_band`` and the historical value column.
    recommendations
        The ranked lists: ``customer_id``, ``rank``, ``product_id``, ``kind``, ``score`` and
        ``reason`` (or ``due``).
    config
        The rules' settings (default :class:`~crmkit.models.actions.NextBestActionConfig`).
    thresholds
        The population-level values, when already computed (:func:`action_thresholds`).
    buckets
        Number of customer groups (default: about :data:`ROWS_PER_GROUP` customers each, and
        at least ``spark.sql.shuffle.partitions``).
    rows_per_bucket
        Rows per value range of the exact quantiles.

    Returns
    -------
    DataFrame
        ``customers`` with :data:`~crmkit.models.actions.ACTION_COLUMNS`: ``next_best_action``
        (string), ``action_value`` (double) and ``action_product_id`` (string, null without a
        product), replaced in place when present, else appended; rows in no particular order.
        Lazy: the checks and the thresholds have run, the actions are computed when used.

    Raises
    ------
    DataContractError
        The local function's errors (a missing column, missing / duplicated ids, missing or
        out-of-range values, unknown kinds, bad ranks), naming the column and the rule.
    """
    cfg = config if config is not None else NextBestActionConfig()
    n = _check_customers(customers, cfg)
    due = _check_recommendations(recommendations)
    if thresholds is None:
        thresholds = action_thresholds(customers, cfg, n=n, rows_per_bucket=rows_per_bucket)
    cuts = {
        k: (None if thresholds.get(k) is None else float(thresholds[k])) for k in THRESHOLD_KEYS
    }
    spark = customers.sparkSession
    if buckets is None:
        partitions = int(spark.conf.get("spark.sql.shuffle.partitions") or 1)
        buckets = max(1, -(-n // ROWS_PER_GROUP), partitions)
    added = {
        "next_best_action": T.StringType(),
        "action_value": T.DoubleType(),
        "action_product_id": T.StringType(),
    }
    fields = [
        T.StructField(f.name, added[f.name], True) if f.name in added else f
        for f in customers.schema.fields
    ]
    fields += [
        T.StructField(c, added[c], True) for c in ACTION_COLUMNS if c not in customers.columns
    ]
    schema = T.StructType(fields)
    recs = recommendations.select(*_RECOMMENDATION_COLUMNS, due)
    bucket = _customer_bucket(buckets)
    return (
        customers.withColumn(_BUCKET, bucket)
        .groupBy(_BUCKET)
        .cogroup(recs.withColumn(_BUCKET, bucket).groupBy(_BUCKET))
        .applyInPandas(_assign_groups(cfg, cuts, schema.names), schema)
    )


# --------------------------------------------------------------------------------------------
# audiences


def build_audiences(
    customers_with_actions: DataFrame, *, rows_per_bucket: int = ROWS_PER_BUCKET
) -> dict[str, DataFrame]:
    """:func:`crmkit.models.actions.build_audiences` on Spark: ``{action: DataFrame}`` for every
    action of :data:`~crmkit.models.actions.AUDIENCE_ACTIONS` (empty ones included), columns
    :data:`~crmkit.models.actions.AUDIENCE_COLUMNS` (``rank`` a long from 1), ranked by
    ``action_value`` descending then ``customer_id`` ascending (sort by ``rank`` to read them
    in order; :func:`write_audiences` does).

    ``customers_with_actions`` (:func:`next_best_actions` output) is read several times (one
    check, the range bounds and counts, the ranks): persist it, or pass it as read back from
    its written Parquet, so that the actions are computed once.
    """
    hint = "pass next_best_actions(...) output"
    df = customers_with_actions
    need = ("customer_id", "next_best_action", "action_value", "action_product_id", "segment")
    _check_frame(df, need + ("clv", "p_alive", "churn_probability"), "customers with actions", hint)
    _check_numeric(df, ["action_value", "clv", "p_alive", "churn_probability"], hint)
    action = F.col("next_best_action").cast("string")
    checks = [
        (
            "customer_id",
            "missing_values",
            F.col("customer_id").isNull(),
            "customer_id has missing values",
        ),
        (
            "next_best_action",
            "missing_values",
            action.isNull(),
            "next_best_action has missing values",
        ),
        (
            "next_best_action",
            "allowed_values",
            action.isNotNull() & ~action.isin(*ACTIONS),
            f"next_best_action must be one of {list(ACTIONS)}",
        ),
        *_value_checks("action_value", None, None),
    ]
    got = _count_violations(
        df,
        checks,
        hint,
        {
            "distinct": F.count_distinct(F.col("customer_id").cast("string")),
            "actions": F.sum((action != "none").cast("long")),
        },
    )
    if got["distinct"] < got["n"]:
        raise DataContractError(
            "customer_id must be unique (one row per customer)",
            column="customer_id",
            rule="unique",
            hint=hint,
        )
    rows = df.where(action != "none").select(
        F.col("customer_id").cast("string").alias("customer_id"),
        action.alias("next_best_action"),
        F.col("action_value").cast("double").alias("action_value"),
        F.col("action_product_id").cast("string").alias("product_id"),
        F.col("segment").cast("string").alias("segment"),
        *[F.col(c).cast("double").alias(c) for c in ("clv", "p_alive", "churn_probability")],
    )
    # ranges of action_value; within an action, ranges of higher values come first
    ranges = _ranges(rows, ["action_value"], got["actions"], rows_per_bucket)
    rows = rows.withColumn(_BUCKET, ranges[0])
    counts = rows.groupBy("next_best_action", _BUCKET).count().collect()
    by_action: dict[str, list[tuple[int, int]]] = {}
    for r in counts:
        by_action.setdefault(r["next_best_action"], []).append((r[_BUCKET], r["count"]))
    firsts = []
    for a, parts in by_action.items():
        before = 0
        for key, count in sorted(parts, reverse=True):
            firsts.append((a, key, before))
            before += count
    spark = df.sparkSession
    first = spark.createDataFrame(
        firsts,
        T.StructType(
            [
                T.StructField("next_best_action", T.StringType()),
                T.StructField(_BUCKET, T.IntegerType()),
                T.StructField("_first", T.LongType()),
            ]
        ),
    )
    order = Window.partitionBy("next_best_action", _BUCKET).orderBy(
        F.col("action_value").desc(), F.col("customer_id").asc()
    )
    ranked = rows.join(F.broadcast(first), ["next_best_action", _BUCKET]).withColumn(
        "rank", (F.col("_first") + F.row_number().over(order)).cast("long")
    )
    return {
        a: ranked.where(F.col("next_best_action") == a).select(*AUDIENCE_COLUMNS)
        for a in AUDIENCE_ACTIONS
    }


def _empty_audience(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(
        [], T.StructType([T.StructField(c, _SCHEMA[c], True) for c in AUDIENCE_COLUMNS])
    )


def _write_csv(frame: DataFrame, path: Path) -> None:
    """One CSV file as pandas writes it (header, ``"`` doubled inside quoted fields, null as an
    empty field): Spark writes the rows in rank order as part files, which are concatenated."""
    from crmkit.spark.csv_cells import neutralise_csv_cells  # as the local CSV writer

    parts = path.with_name(f".{path.name}.parts")
    (
        neutralise_csv_cells(frame)
        .orderBy("rank")
        .write.mode("overwrite")
        .option("header", "false")
        .option("escape", '"')
        .option("ignoreLeadingWhiteSpace", "false")
        .option("ignoreTrailingWhiteSpace", "false")
        .option("encoding", "UTF-8")
        .csv(str(parts))
    )
    with open(path, "wb") as out:
        out.write((",".join(AUDIENCE_COLUMNS) + "\n").encode("utf-8"))
        for part in sorted(parts.glob("part-*")):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out)
    shutil.rmtree(parts)


def write_audiences(
    audiences: Mapping[str, DataFrame],
    path: str | os.PathLike,
    fmt: str = "parquet",
) -> dict[str, Any]:
    """:func:`crmkit.models.actions.write_audiences` for Spark audiences
    (:func:`build_audiences`): every action's ``<action>.parquet`` (a Parquet data set: a
    directory of part files in rank order) or ``<action>.csv`` (one file), empty ones included,
    and ``index.json`` with the same keys, all-or-nothing. Returns the ``index.json`` content.
    """
    from crmkit.data.io import staged_output

    _check_write_args(audiences, fmt)
    spark = next(iter(audiences.values())).sparkSession if audiences else None
    if spark is None:
        from crmkit.spark.session import spark_session

        spark = spark_session()
    frames: dict[str, DataFrame] = {}
    for a in AUDIENCE_ACTIONS:
        f = audiences.get(a)
        if f is None:
            frames[a] = _empty_audience(spark)
            continue
        _check_frame(f, AUDIENCE_COLUMNS, f"audience {a!r}", "pass build_audiences(...) output")
        frames[a] = f.select(*[F.col(c).cast(_SCHEMA[c]).alias(c) for c in AUDIENCE_COLUMNS])
    union = functools.reduce(
        DataFrame.unionByName,
        [f.select(F.lit(a).alias("a"), "action_value") for a, f in frames.items()],
    )
    stats = {
        r["a"]: (int(r["n"]), float(r["v"] or 0.0))
        for r in union.groupBy("a")
        .agg(F.count(F.lit(1)).alias("n"), F.sum("action_value").alias("v"))
        .collect()
    }
    manifest: dict[str, Any] = {"format": fmt, "columns": list(AUDIENCE_COLUMNS), "actions": {}}
    with staged_output(path) as stage:
        for a, f in frames.items():
            name = f"{a}.{fmt}"
            if fmt == "parquet":
                f.orderBy("rank").write.mode("overwrite").parquet(str(Path(stage) / name))
            else:
                _write_csv(f, Path(stage) / name)
            manifest["actions"][a] = {
                "file": name,
                "rows": stats.get(a, (0, 0.0))[0],
                "total_action_value": stats.get(a, (0, 0.0))[1],
            }
        (Path(stage) / "index.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest
