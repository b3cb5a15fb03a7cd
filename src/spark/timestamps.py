"""Timestamps outside the plausible or the representable range on Spark, as the local engine
treats them (:mod:`crmkit.data.parse`, :func:`crmkit.data.clean.plausible_range`).

* Reading: nanoseconds since the epoch hold the years 1678-2261 only. A timestamp outside
  them (year 2300, a placeholder ``0001-01-01``) is read at the nearest bound, 1678-01-01 or
  2261-12-31 23:59:59.999999, as the local loader reads it, never wrapped (pandas' year 2300
  became 1715) nor overflowed (Spark's ``ARITHMETIC_OVERFLOW``); the note naming the first
  rows is the local loader's (:func:`bound_note`).
* Cleaning: :func:`implausible_mask` flags the lines of the ``implausible_timestamp`` rule,
  before ``plausible_from`` or after ``plausible_to``, with the bounds of
  :func:`~crmkit.data.clean.plausible_range`.

A line read at a bound is recognised by its value: a genuine timestamp exactly at
1678-01-01 00:00 or 2261-12-31 23:59:59.999999 is counted in the note too (the rule drops
both alike, since ``plausible_from`` / ``plausible_to`` must lie strictly inside).
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crmkit.data.clean import CleaningConfig, plausible_range
from crmkit.data.parse import _TS_HIGH, _TS_LOW
from crmkit.errors import DataContractError, shorten

__all__ = [
    "LOW_NS",
    "HIGH_NS",
    "clamp_series",
    "native_ns",
    "at_bound",
    "bound_note",
    "implausible_mask",
]

#: The bounds out-of-range timestamps are read at, in nanoseconds since the epoch.
LOW_NS = int(_TS_LOW.value)
HIGH_NS = int((_TS_HIGH - pd.Timedelta(1, "us")).value)
_LOW_US, _HIGH_US = LOW_NS // 1000, int(_TS_HIGH.value) // 1000
_DAY_NS = 86_400 * 10**9
_LOW_DAY, _HIGH_DAY = LOW_NS // _DAY_NS, int(_TS_HIGH.value) // _DAY_NS


def clamp_series(parsed: pd.Series) -> pd.Series:
    """Parsed timestamps (any unit) with the years outside 1678-2261 set to the bounds, as
    the local ``_clamp_to_ns`` sets them (for the parsing UDF)."""
    low = (parsed < _TS_LOW).to_numpy(dtype=bool)
    high = (parsed >= _TS_HIGH).to_numpy(dtype=bool)
    if not (low.any() or high.any()):
        return parsed
    return parsed.mask(low, _TS_LOW).mask(high, _TS_HIGH - pd.Timedelta(1, "us"))


def _bounded(value: Column, low: int, high: int, scale: int) -> Column:
    """``value * scale`` nanoseconds, at the bounds when ``value`` is below ``low`` or at or
    above ``high`` (``value`` in units of ``scale`` ns)."""
    return (
        F.when(value < F.lit(low), F.lit(LOW_NS))
        .when(value >= F.lit(high), F.lit(HIGH_NS))
        .otherwise(value * F.lit(scale))
    )


def native_ns(dtype: T.DataType, name: str) -> Column:
    """A native timestamp or date column as nanoseconds since the epoch, out-of-range years
    at the bounds (the local loader's reading)."""
    if isinstance(dtype, T.LongType):  # TIMESTAMP(NANOS) read with NANOS_AS_LONG
        c = F.col(name)
        return (
            F.when(c < F.lit(LOW_NS), F.lit(LOW_NS))
            .when(c >= F.lit(int(_TS_HIGH.value)), F.lit(HIGH_NS))
            .otherwise(c)
        )
    if isinstance(dtype, T.TimestampType):
        return _bounded(F.unix_micros(F.col(name)), _LOW_US, _HIGH_US, 1000)
    if isinstance(dtype, T.TimestampNTZType):
        epoch = "TIMESTAMP_NTZ'1970-01-01 00:00:00'"
        micros = F.expr(f"timestampdiff(MICROSECOND, {epoch}, {name})")
        return _bounded(micros, _LOW_US, _HIGH_US, 1000)
    if isinstance(dtype, T.DateType):
        days = F.unix_date(F.col(name)).cast("long")
        return _bounded(days, _LOW_DAY, _HIGH_DAY, _DAY_NS)
    raise DataContractError(
        f"holds {dtype.simpleString()} values, not timestamps",
        column="order_ts",
        rule="timestamp_format",
    )


def at_bound(ns: Column) -> Column:
    """Whether a parsed timestamp (ns) was read at a representable bound."""
    return (ns == F.lit(LOW_NS)) | (ns == F.lit(HIGH_NS))


def _shown(value: object, dtype: T.DataType) -> str:
    """A raw value as the local note shows it (``repr`` of what pandas read)."""
    if isinstance(dtype, T.StringType):
        return repr(value)
    if isinstance(dtype, T.TimestampType):  # UTC-adjusted: pandas reads it tz-aware
        return repr(pd.Timestamp(int(value), unit="us", tz="UTC"))
    return repr(pd.Timestamp(value))


def _literal(value: object, dtype: T.DataType) -> Column:
    """A literal of ``dtype`` (a struct from a collected Row)."""
    if isinstance(dtype, T.StructType):
        return F.struct(*[_literal(value[f.name], f.dataType).alias(f.name) for f in dtype])
    return F.lit(value).cast(dtype)


def bound_note(
    frame: DataFrame, ns: Column, raw: str, order: str, label: str, count: int, k: int = 5
) -> str:
    """The local loader's note on ``count`` timestamps read at a bound: the first ``k`` in
    file order (``order``) with their 1-based row numbers and raw values (column ``raw``),
    from two small jobs."""
    dtype = frame.schema[raw].dataType
    value = F.unix_micros(F.col(raw)) if isinstance(dtype, T.TimestampType) else F.col(raw)
    hits = (
        frame.where(at_bound(ns))
        .select(F.col(order).alias("o"), value.alias("v"))
        .orderBy("o")
        .limit(k)
        .collect()
    )
    kind = frame.schema[order].dataType
    before = frame.agg(
        *[
            F.count(F.when(F.col(order) < _literal(h["o"], kind), 1)).alias(f"n{i}")
            for i, h in enumerate(hits)
        ]
    ).first()
    shown = ", ".join(
        f"row {int(before[f'n{i}']) + 1}: {shorten(_shown(h['v'], dtype), 40)}"
        for i, h in enumerate(hits)
    )
    return (
        f"{label}: {count} timestamps outside the representable years 1678-2261 "
        f"({shown}) read at the nearest bound; rule implausible_timestamp drops them"
    )


def implausible_mask(cfg: CleaningConfig, ts: Column) -> Column:
    """The ``implausible_timestamp`` rule on ``ts`` (ns): before ``plausible_from`` or after
    ``plausible_to`` (:func:`~crmkit.data.clean.plausible_range`); false for a missing one."""
    low, high = plausible_range(cfg)
    lo, hi = int(low.as_unit("ns").value), int(high.as_unit("ns").value)
    return F.coalesce((ts < F.lit(lo)) | (ts > F.lit(hi)), F.lit(False))
