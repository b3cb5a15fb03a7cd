"""The order-level steps of :mod:`crmkit.data.orders` with Spark operations, for
:mod:`crmkit.spark.clean`: the ``order_status`` column (status and cancellation-time columns
as one vocabulary), order-level fields carried to an order's other lines (a window over the
order id, in file order), the cancellation-prefix convention and the partially-refunded count.
Each gives what the local function gives; ``tests/spark/test_spark_clean.py`` compares them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from crmkit.data.orders import (
    _STATUS_SYNONYMS,
    ORDER_LEVEL_COLUMNS,
    convention_holds,
    normalise_status,
)

__all__ = [
    "status_column",
    "fill_order_fields",
    "cancellation_convention",
    "partial_refund_lines",
    "excluded_statuses",
]

_MAX_SHAPES = 10_000


def _replace(c: Column, mapping: Mapping[str, str]) -> Column:
    if not mapping:
        return c
    expr = None
    for k, v in mapping.items():
        cond = c == F.lit(k)
        expr = F.when(cond, F.lit(v)) if expr is None else expr.when(cond, F.lit(v))
    return expr.otherwise(c)


def status_column(
    status: Column | None, cancelled_at: Column | None, translate: Mapping[str, str] | None
) -> Column | None:
    """:func:`crmkit.data.orders.combine_status` on text columns (missing values null)."""
    if status is None and cancelled_at is None:
        return None
    out = F.lit(None).cast("string")
    if status is not None:
        t = F.lower(status)
        t = _replace(t, {str(k).strip().lower(): v for k, v in (translate or {}).items()})
        t = F.regexp_replace(F.regexp_replace(t, r"[\s\-]+", "_"), r"^wc_", "")
        t = F.when(t == F.lit(""), F.lit(None)).otherwise(t)
        out = _replace(t, _STATUS_SYNONYMS)
    if cancelled_at is not None:
        out = F.when(cancelled_at.isNotNull() & (cancelled_at != F.lit("")), "cancelled").otherwise(
            out
        )
    return out


def fill_order_fields(frame: DataFrame, order_col: str) -> tuple[DataFrame, dict[str, int]]:
    """:func:`crmkit.data.orders.fill_order_fields`: a blank order-level cell takes the first
    value in file order (``order_col``) of its order's lines; returns the frame and the lines
    filled per column (one aggregation; the window runs only if some column has blanks)."""
    cols = [c for c in ORDER_LEVEL_COLUMNS if c in frame.columns]
    if not cols:
        return frame, {}
    has_oid = F.col("order_id").isNotNull()
    nulls = frame.agg(
        *[F.count(F.when(has_oid & F.col(c).isNull(), 1)).alias(c) for c in cols]
    ).first()
    cols = [c for c in cols if nulls[c]]
    if not cols:
        return frame, {}
    w = (
        Window.partitionBy("order_id")
        .orderBy(F.col(order_col))
        .rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    )
    filled = frame
    for c in cols:
        first = F.first(F.col(c), ignorenulls=True).over(w)
        filled = filled.withColumn(f"_fill_{c}", F.when(has_oid & F.col(c).isNull(), first))
    counts = filled.agg(*[F.count(F.col(f"_fill_{c}")).alias(c) for c in cols]).first()
    done = {c: int(counts[c]) for c in cols if counts[c]}
    for c in cols:
        filled = filled.withColumn(c, F.coalesce(F.col(c), F.col(f"_fill_{c}")))
    filled = filled.drop(*[f"_fill_{c}" for c in cols])
    return (filled if done else frame), done


def _shape(c: Column) -> Column:
    """:func:`crmkit.data.orders.id_shape`."""
    t = F.regexp_replace(c, r"^[A-Za-z]+", "")
    return F.regexp_replace(F.regexp_replace(t, r"[0-9]+", "9"), r"[A-Za-z]+", "A")


def cancellation_convention(
    frame: DataFrame, prefixes: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """:func:`crmkit.data.orders.cancellation_convention` on the lines of ``frame``."""
    oid = F.col("order_id")
    held, rejected = [], []
    for p in prefixes:
        pref = F.coalesce(oid.startswith(p), F.lit(False))
        row = frame.agg(
            F.count(F.when(pref, 1)).alias("n"),
            F.count(F.when(pref & (F.col("quantity") < 0), 1)).alias("neg"),
        ).first()
        if not row["n"]:
            held.append(p)
            continue
        plain = (
            frame.where(oid.isNotNull() & ~pref)
            .select(_shape(oid).alias("s"))
            .distinct()
            .limit(_MAX_SHAPES)
            .collect()
        )
        shapes = [r["s"] for r in plain]
        rest = _shape(F.substring(oid, len(p) + 1, 1 << 30))
        matching = (
            frame.agg(F.count(F.when(pref & rest.isin(shapes), 1)).alias("m")).first()["m"]
            if shapes
            else 0
        )
        ok = convention_holds(int(row["n"]), int(row["neg"]), int(matching))
        (held if ok else rejected).append(p)
    return tuple(held), tuple(rejected)


def excluded_statuses(excluded: Sequence[str]) -> list[str]:
    """The configured statuses in the normalised vocabulary (as the local rule compares)."""
    return sorted(set(normalise_status(pd.Series(list(excluded), dtype="str")).dropna()))


def partial_refund_lines(frame: DataFrame) -> int:
    """Lines of partially refunded orders (kept; counted in the report's note)."""
    return int(
        frame.agg(F.count(F.when(F.col("order_status") == "partially_refunded", 1))).first()[0]
    )
