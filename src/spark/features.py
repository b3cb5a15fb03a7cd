"""The customer table of ``crmkit features`` computed with Spark DataFrame operations.

:func:`customer_table` takes a Spark DataFrame of cleaned order lines (the columns of
``crmkit.data.clean_lines(...).lines``, e.g. read by :func:`read_lines` from the
``lines.parquet`` that ``crmkit validate`` writes, or from a directory of such files) and
returns the same table as :func:`crmkit.pipelines.features.customer_table`: the RFM summary
(:mod:`crmkit.features.rfm`), RFM measures, scores and segment (:mod:`crmkit.features.segments`)
and every behavioural feature (:mod:`crmkit.features.behaviour`), with the same columns, in the
same order, under the same definitions. Nothing is collected to the driver but one row of
validation counts; every step is a grouped aggregation, a join or a window.

Exactness
---------
Counts, days, ids, scores and segments are identical to the local engine's, and so is every
number the scores rank on: float sums that feed a quantile score (``total_spend``, hence
``avg_order_value``) are added in the local engine's order (order lines in file order within
an order, orders in order of their first line), with ``array_sort`` / ``aggregate`` over the
lines of one order and the orders of one customer. Other float sums (spend in windows, basket
means, ``monetary_value``) are plain Spark sums and agree to rounding (relative 1e-12 on
Online Retail). The line order is taken from the Parquet files (``_metadata.file_path``, then
``_metadata.row_index``), so a directory of files is read as their concatenation in path order.

Quantile scores are ranked without a single task (:func:`_quintile_scores`): the customer
table is persisted once, and for each score its customers are range-partitioned and sorted on
the total order (the measure, then ``customer_id``); a customer's rank is its partition's
offset (from the rows per partition, a few numbers on the driver) plus its position within
the partition. Same scores as one window over all customers; see ``docs/spark.md``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping, Sequence

import pandas as pd
from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crmkit.errors import ConfigError, DataContractError
from crmkit.features.behaviour import _check_windows, _cutoff_ns
from crmkit.features.rfm import _unit_days
from crmkit.features.segments import (
    DAYS_PER_MONTH,
    DEFAULT_SEGMENT_RULES,
    RFMThresholds,
    SegmentRule,
    _as_rules,
    segment_shares,
)
from crmkit.pipelines.features import FeaturesConfig
from crmkit.spark.orders import cancellation_convention
from crmkit.spark.session import NANOS_AS_LONG

__all__ = [
    "LINE_ORDER",
    "read_lines",
    "default_as_of",
    "customer_table",
    "segment_summary",
    "write_customers",
]

#: Column :func:`read_lines` adds: the position of each line (file path, row in the file).
LINE_ORDER = "_line_order"
_DAY_NS = 86_400 * 10**9
_REQUIRED = ("customer_id", "order_id", "order_ts", "quantity", "amount")


# --------------------------------------------------------------------------------------------
# input


def read_lines(
    spark: SparkSession, path: str | os.PathLike | Sequence[str | os.PathLike]
) -> DataFrame:
    """Cleaned order lines from a Parquet file, a directory of Parquet files, or several paths.

    Parquet nanosecond timestamps (pandas' ``datetime64[ns]``) are read as exact ``long``
    nanoseconds (:data:`crmkit.spark.session.NANOS_AS_LONG` is switched on in the session).
    Adds :data:`LINE_ORDER`, each line's file and row, which fixes the order of float sums.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    # local paths made absolute: the JVM resolves relative ones against the folder it
    # started in, not this process's current folder (a notebook's os.chdir, a test's chdir)
    paths = [p if "://" in str(p) else os.path.abspath(p) for p in paths]
    if str(spark.conf.get(NANOS_AS_LONG, "false")).lower() != "true":
        spark.conf.set(NANOS_AS_LONG, "true")
    try:
        df = spark.read.parquet(*[str(p) for p in paths])
    except AnalysisException as exc:
        raise DataContractError(
            f"cannot read Parquet order lines from {', '.join(map(str, paths))}: "
            f"{str(exc).splitlines()[0]}",
            rule="readable_file",
            hint="pass the lines.parquet written by `crmkit validate` (a file or a directory)",
        ) from None
    order = F.struct(
        F.col("_metadata.file_path").alias("file"), F.col("_metadata.row_index").alias("row")
    )
    return df.withColumn(LINE_ORDER, order)


def _check_schema(lines: DataFrame) -> None:
    if not isinstance(lines, DataFrame):
        raise DataContractError(
            f"expected a Spark DataFrame of order lines, got {type(lines).__name__}",
            rule="input_type",
        )
    missing = [c for c in _REQUIRED if c not in lines.columns]
    if missing:
        raise DataContractError(
            f"order lines lack column(s) {missing}",
            column=missing[0],
            rule="required_column",
            hint="pass cleaned lines (the lines.parquet of `crmkit validate`)",
        )
    for col in ("quantity", "amount"):
        dtype = lines.schema[col].dataType
        if not isinstance(dtype, T.NumericType):
            raise DataContractError(
                f"{col} must be numeric, got Spark type {dtype.simpleString()}",
                column=col,
                rule="column_type",
            )
    _timestamp_ns(lines)


def _timestamp_ns(lines: DataFrame) -> Column:
    """``order_ts`` as nanoseconds since the epoch (naive stamps as written, aware in UTC)."""
    dtype = lines.schema["order_ts"].dataType
    if isinstance(dtype, T.LongType):  # Parquet TIMESTAMP(NANOS) read with NANOS_AS_LONG
        return F.col("order_ts")
    if isinstance(dtype, T.TimestampType):
        return F.unix_micros(F.col("order_ts")) * F.lit(1000)
    if isinstance(dtype, T.TimestampNTZType):
        epoch = "TIMESTAMP_NTZ'1970-01-01 00:00:00'"
        return F.expr(f"timestampdiff(MICROSECOND, {epoch}, order_ts)") * F.lit(1000)
    raise DataContractError(
        f"order_ts must hold timestamps, got Spark type {dtype.simpleString()}",
        column="order_ts",
        rule="column_type",
        hint="pass cleaned lines (the lines.parquet of `crmkit validate`)",
    )


def default_as_of(lines: DataFrame) -> pd.Timestamp:
    """The last day with an order line (as :func:`crmkit.pipelines.features.default_as_of`)."""
    _check_schema(lines)
    last = lines.agg(F.max(_timestamp_ns(lines))).first()[0]
    if last is None:
        raise DataContractError("no order lines", rule="empty_window")
    return pd.Timestamp(int(last), unit="ns").normalize()


def _finite(col: str) -> Column:
    c = F.col(col)
    return c.isNotNull() & ~F.isnan(c) & (F.abs(c) != F.lit(float("inf")))


def _validate(lines: DataFrame, as_of: object) -> None:
    """One pass of counts; raises the local engine's errors (missing ids and stamps anywhere,
    non-finite quantities or amounts before the cutoff, no purchase before it)."""
    past = F.col("ts") < F.lit(_cutoff_ns(as_of))
    counts = {
        "customer_id": F.col("customer_id").isNull(),
        "order_id": F.col("order_id").isNull(),
        "order_ts": F.col("ts").isNull(),
        "quantity": past & ~_finite("q"),
        "amount": past & ~_finite("a"),
        "purchases": past & (F.col("q") > 0),
    }
    with _jobs(lines, "crmkit: validation counts"):
        row = lines.agg(*[F.sum(c.cast("long")).alias(k) for k, c in counts.items()]).first()
    got = {k: int(row[k] or 0) for k in counts}
    for col in ("customer_id", "order_id", "order_ts"):
        if got[col]:
            raise DataContractError(
                f"{col} has {got[col]} missing value(s); clean the lines first",
                column=col,
                rule=f"missing_{col}",
                hint="crmkit.data.clean.clean_lines drops lines that cannot be used",
            )
    for col in ("quantity", "amount"):
        if got[col]:
            raise DataContractError(
                f"{col} has {got[col]} missing or infinite value(s)",
                column=col,
                rule="invalid_values",
                hint="crmkit.data.clean.clean_lines drops lines that cannot be used",
            )
    if not got["purchases"]:
        raise DataContractError(
            f"no purchases on or before the analysis date {as_of}",
            rule="empty_window",
            hint="choose an as_of date inside the data's date range",
        )


# --------------------------------------------------------------------------------------------
# helpers


def _day(ts: str) -> Column:
    """Day number (days since 1970-01-01, floored) of a nanosecond column, in integers."""
    return F.expr(f"({ts} - pmod({ts}, {_DAY_NS}L)) div {_DAY_NS}L")


def _is_q4(day: Column) -> Column:
    return F.month(F.date_from_unix_date(day.cast("int"))) >= F.lit(10)


def _sum_in_order(key: str, value: str) -> Column:
    """Sum of ``value`` over a group, added one by one in ``key`` order from 0.0 (the order
    in which ``np.bincount`` adds the local engine's weights)."""
    items = F.array_sort(F.collect_list(F.struct(F.col(key).alias("k"), F.col(value).alias("v"))))
    return F.aggregate(items, F.lit(0.0), lambda acc, x: acc + x["v"])


def _count_if(cond: Column) -> Column:
    return F.count(F.when(cond, F.lit(1)))


def _sum_if(cond: Column, value: Column) -> Column:
    return F.sum(F.when(cond, value).otherwise(F.lit(0.0)))


def _ratio(num: Column, den: Column, fallback: Column | float = 0.0) -> Column:
    fb = fallback if isinstance(fallback, Column) else F.lit(float(fallback))
    return F.when(den > 0, num.cast("double") / den.cast("double")).otherwise(fb)


def _trend(recent: Column, previous: Column) -> Column:
    r, p = recent.cast("double"), previous.cast("double")
    return _ratio(r - p, F.abs(r) + F.abs(p))


def _in_age(age: Column, lo: int, hi: int) -> Column:
    """``lo < age <= hi`` (ages in ns before the cutoff): the window ``[C - hi, C - lo)``."""
    return (age > F.lit(lo)) & (age <= F.lit(hi))


@contextlib.contextmanager
def _jobs(df: DataFrame, description: str) -> Iterator[None]:
    """Name the Spark jobs started in the block (``spark.job.description``: the Spark UI and
    status store show it for their stages); the previous description is restored."""
    sc = df.sparkSession.sparkContext
    previous = sc.getLocalProperty("spark.job.description")
    sc.setLocalProperty("spark.job.description", description)
    try:
        yield
    finally:
        sc.setLocalProperty("spark.job.description", previous)  # type: ignore[arg-type]


#: :func:`pyspark.sql.functions.monotonically_increasing_id` keeps the row number within a
#: partition in the lower 33 bits and the partition index above them.
_ROW_BITS = 33


def _quintile_scores(df: DataFrame, scores: Mapping[str, Sequence[Column]]) -> DataFrame:
    """Add one quantile score 1..5 per entry of ``scores`` (name -> sort order, worst first):
    ``5 * rank // n + 1`` from the 0-based rank in that order, ties by ``customer_id``, as
    :func:`crmkit.features.segments.score_rfm`. Exact and distributed; no step sees all rows.

    For each score, only ``customer_id`` and the sort keys are range-partitioned on the total
    order (the sort keys, then ``customer_id``) and sorted within each partition, so that
    partition ``p`` holds one contiguous run of ranks and a row's local position
    (``monotonically_increasing_id`` right after the sort) is its rank within the run. The rows
    per partition (a few numbers per partition) reach the driver and become offsets; the
    global rank is the offset of the row's partition plus its local position, and the score a
    column of that. The scores are joined back on ``customer_id``. Orders, nulls, NaN and ties
    are Spark's sort's for the given sort orders, as in one window over all rows.

    ``df`` must have one row per non-null ``customer_id`` (the customer table). It is persisted
    (``MEMORY_AND_DISK``) and computed now, once, as are the narrow rank tables: the returned
    DataFrame reads them (``spark.catalog.clearCache()`` or ``unpersist`` frees them).
    """
    spark = df.sparkSession
    parts = max(1, int(spark.conf.get("spark.sql.shuffle.partitions") or 1))
    base = df.persist(StorageLevel.MEMORY_AND_DISK)
    with _jobs(df, "crmkit: table before the quantile scores (persisted)"):
        n = base.count()  # computes and caches df
    if n == 0:
        return base.select(*df.columns, *[F.lit(None).cast("long").alias(k) for k in scores])
    part = F.shiftright(F.col("_pos"), _ROW_BITS)
    ranked: dict[str, DataFrame] = {}
    for name, worst_first in scores.items():
        order = [*worst_first, F.col("customer_id").asc()]
        ranked[name] = (
            base.repartitionByRange(parts, *order)
            .sortWithinPartitions(*order)
            .select(F.col("customer_id"), F.monotonically_increasing_id().alias("_pos"))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
    counts = [
        r.groupBy(part.alias("_part"))
        .agg(
            F.count(F.lit(1)).alias("_rows"),
            F.count(F.when(F.col("customer_id").isNull(), F.lit(1))).alias("_null_ids"),
        )
        .select(F.lit(name).alias("_score"), "*")
        for name, r in ranked.items()
    ]
    rows: dict[str, dict[int, int]] = {name: {} for name in scores}
    null_ids = 0
    with _jobs(df, "crmkit: quantile ranks (range partitions, rows per partition)"):
        got = functools.reduce(DataFrame.unionByName, counts).collect()
    for row in got:
        rows[row["_score"]][int(row["_part"])] = int(row["_rows"])
        null_ids += int(row["_null_ids"])
    if null_ids:
        raise DataContractError(
            f"customer_id has {null_ids // len(scores)} missing value(s); quantile scores "
            "rank customers by id among ties",
            column="customer_id",
            rule="missing_customer_id",
        )
    out = base
    for name, by_part in rows.items():
        if sum(by_part.values()) != n:  # the persisted table was recomputed differently
            raise DataContractError(
                f"quantile score {name}: {sum(by_part.values())} ranked rows, {n} rows",
                rule="deterministic_input",
                hint="the table must give the same rows each time it is computed",
            )
        offsets, total = [], 0
        for p in range(max(by_part, default=-1) + 1):
            offsets.append(F.lit(total).cast("long"))
            total += by_part.get(p, 0)
        rank = F.element_at(F.array(*offsets), (part + 1).cast("int")) + F.col("_pos").bitwiseAND(
            F.lit((1 << _ROW_BITS) - 1)
        )
        scored = ranked[name].select("customer_id", rank.alias("_rank"))
        scored = scored.select("customer_id", F.expr(f"(_rank * 5) div {n}L + 1").alias(name))
        out = out.join(scored.hint("shuffle_hash"), "customer_id")
    return out.select(*df.columns, *rows)


def _with_quintile(df: DataFrame, name: str, worst_first: list[Column]) -> DataFrame:
    """Add score ``name`` 1..5 from the 0-based rank in ``worst_first`` order (ties by
    customer id): ``5 * rank // n + 1``, as :func:`crmkit.features.segments.score_rfm`.
    Distributed and exact (:func:`_quintile_scores`, which does several scores at once)."""
    return _quintile_scores(df, {name: worst_first})


# --------------------------------------------------------------------------------------------
# the table


def _settings(config: FeaturesConfig | None) -> FeaturesConfig:
    if config is None:
        return FeaturesConfig()
    if not isinstance(config, FeaturesConfig):
        raise ConfigError(f"config must be a FeaturesConfig, got {type(config).__name__}")
    return config


def _prepare(lines: DataFrame, extra: list[str]) -> DataFrame:
    """The columns the features read, under short names: ``ts`` (ns), ``q``, ``a``, ``line``
    (file order) and ``x_<col>`` for the optional columns."""
    if LINE_ORDER not in lines.columns:  # not from read_lines: the DataFrame's own row order
        order = F.struct(F.lit("").alias("file"), F.monotonically_increasing_id().alias("row"))
        lines = lines.withColumn(LINE_ORDER, order)
    return lines.select(
        F.col("customer_id"),
        F.col("order_id"),
        _timestamp_ns(lines).alias("ts"),
        F.col("quantity").cast("double").alias("q"),
        F.col("amount").cast("double").alias("a"),
        F.col(LINE_ORDER).alias("line"),
        *[F.col(c).alias(f"x_{c}") for c in extra],
    )


def _orders(past: DataFrame, prefixes: tuple[str, ...], cats: list[str]) -> DataFrame:
    """One row per ``(customer_id, order_id)`` of the past lines."""
    pos = F.col("pos")
    firsts = [
        F.min(F.when(pos, F.struct(F.col("line").alias("k"), F.col(f"x_{c}").alias("v")))).alias(
            f"o_{c}"
        )
        for c in cats
    ]
    cancel = F.lit(False)
    for p in prefixes:
        cancel = cancel | F.col("order_id").cast("string").startswith(p)
    return (
        past.groupBy("customer_id", "order_id")
        .agg(
            F.min("line").alias("o_line"),
            _sum_in_order("line", "a").alias("o_value"),
            F.min("ts").alias("o_ts_any"),  # segments date an order by its earliest line
            F.min(F.when(pos, F.col("ts"))).alias("o_ts"),  # behaviour: earliest purchase line
            F.bool_or(pos).alias("o_purchase"),
            F.bool_or(F.col("q") < 0).alias("o_return"),
            *firsts,
        )
        .withColumn("o_cancel", cancel)
    )


def _usual_value(values: str, dtype: str) -> Column:
    """The most frequent element of the ascending array column ``values`` (ties: the one
    that sorts first; null for an empty array): the customer's usual value over their
    purchase orders, as the local ``_usual_value``."""
    none = f"CAST(NULL AS {dtype})"
    step = (
        "CASE WHEN x = acc.cur THEN named_struct('cur', x, 'n', acc.n + 1, "
        "'best', IF(acc.n + 1 > acc.bn, x, acc.best), 'bn', greatest(acc.n + 1, acc.bn)) "
        "ELSE named_struct('cur', x, 'n', 1, 'best', IF(1 > acc.bn, x, acc.best), "
        "'bn', greatest(1, acc.bn)) END"
    )
    start = f"named_struct('cur', {none}, 'n', 0, 'best', {none}, 'bn', 0)"
    return F.expr(f"aggregate({values}, {start}, (acc, x) -> {step}, acc -> acc.best)")


def _segment(rules: Sequence[SegmentRule | Mapping[str, str]], default: str = "other") -> Column:
    """First matching rule's name (rules in Spark SQL syntax: the default rules read the same
    in pandas ``eval`` and SQL)."""
    out = None
    for rule in _as_rules(rules):
        try:
            cond = F.coalesce(F.expr(rule.when), F.lit(False))
        except Exception as exc:  # a parse error is a configuration error
            raise ConfigError(
                f"segment rule {rule.name!r}: cannot evaluate {rule.when!r} in Spark SQL "
                f"({type(exc).__name__})"
            ) from None
        out = F.when(cond, F.lit(rule.name)) if out is None else out.when(cond, F.lit(rule.name))
    return out.otherwise(F.lit(default))  # type: ignore[union-attr]


def _fixed_scores(cfg: FeaturesConfig, monetary: str) -> tuple[Column, Column, Column]:
    th = RFMThresholds.from_mapping(cfg.thresholds) if cfg.thresholds else RFMThresholds()

    def count(cond: list[Column]) -> Column:
        total = F.lit(0).cast("long")
        for c in cond:
            total = total + c.cast("long")
        return total

    days, opm, money = F.col("days_since_last"), F.col("orders_per_month"), F.col(monetary)
    r = 5 - count([F.lit(float(t)) < days for t in th.recency_days])
    f = 1 + count([F.lit(float(t)) <= opm for t in th.frequency_per_month])
    m = 1 + count([F.lit(float(t)) <= money for t in th.monetary])
    return r, f, m


def customer_table(
    lines: DataFrame,
    as_of: object,
    config: FeaturesConfig | None = None,
    *,
    cancellation_prefixes: Sequence[str] = ("C",),
    categoricals: Sequence[str] = ("country", "channel"),
) -> DataFrame:
    """Every feature of every customer who bought on or before ``as_of``, as Spark columns.

    The Spark counterpart of :func:`crmkit.pipelines.features.customer_table` (same columns
    in the same order, same definitions): ``customer_id``, the RFM summary in
    ``config.unit``, RFM measures, scores and ``segment``, then the behavioural features.
    ``segment``, ``country`` and ``channel`` are strings (Spark has no categorical type).

    Parameters
    ----------
    lines
        Cleaned order lines as a Spark DataFrame, best read with :func:`read_lines` (whose
        :data:`LINE_ORDER` fixes the order of float sums to the file order).
    as_of
        Analysis date: lines with ``order_ts < analysis_cutoff(as_of)`` count.
    config
        Feature settings (unit, scoring, monetary, thresholds, windows, season windows).
    cancellation_prefixes
        Order-id prefixes of cancelled orders (the cleaning config's); a prefix counts only
        where the lines show the convention, as in the local
        :func:`~crmkit.features.behaviour.behaviour_features`.
    categoricals
        Columns whose usual value per customer becomes a column, when present.

    Returns
    -------
    pyspark.sql.DataFrame
        One validating pass over the lines runs now (missing ids or stamps, non-finite
        quantities or amounts, no purchase before ``as_of`` raise
        :class:`~crmkit.errors.DataContractError` as in the local engine). With quantile
        scores the table before the scores is also computed now and persisted
        (``MEMORY_AND_DISK``), with the three small rank tables (:func:`_quintile_scores`);
        the rest (scores, segment, the columns) is lazy and reads them. With fixed scores the
        table is all lazy.
    """
    cfg = _settings(config)
    _check_schema(lines)
    ud = _unit_days(cfg.unit)
    wins = _check_windows(cfg.windows, "windows")
    seasons = _check_windows(cfg.season_windows, "season_windows", upper=365)
    prefixes = tuple(cancellation_prefixes)
    cutoff = _cutoff_ns(as_of)
    end_day = (cutoff - 1) // _DAY_NS
    cut_ts = pd.Timestamp(cutoff, unit="ns")
    year_age = cutoff - int((cut_ts - pd.DateOffset(years=1)).as_unit("ns").value)
    breadth = [c for c in ("product_id", "category") if c in lines.columns]
    cats = [c for c in dict.fromkeys(categoricals) if c in lines.columns]
    extra = list(dict.fromkeys(breadth + cats))

    base = _prepare(lines, extra)
    _validate(base, as_of)
    if prefixes:  # only the prefixes the lines show as a convention, as the cleaning rule
        ids = lines.select(F.col("order_id").cast("string").alias("order_id"), "quantity")
        prefixes = cancellation_convention(ids, prefixes)[0]
    pos = F.col("q") > 0
    # one shuffle: every later grouping (by customer, customer-order, customer-day), join
    # and window is keyed on customer_id and runs within these partitions
    past = (
        base.where(F.col("ts") < F.lit(cutoff))
        .repartition("customer_id")
        .withColumn("day", _day("ts"))
        .withColumn("pos", pos)
        .withColumn("age", F.lit(cutoff) - F.col("ts"))
        .withColumn("q_pos", F.when(pos, F.col("q")).otherwise(F.lit(0.0)))
        .withColumn("a_pos", F.when(pos, F.col("a")).otherwise(F.lit(0.0)))
    )
    # ages (ns before the cutoff) of the trailing windows, the windows before them and the
    # same periods one year earlier: (lo, hi] holds the lines of [C - hi, C - lo)
    recent = {w: (0, w * _DAY_NS) for w in wins}
    before = {w: (w * _DAY_NS, 2 * w * _DAY_NS) for w in wins}
    last_year = {h: (year_age - h * _DAY_NS, year_age) for h in seasons}
    spans = sorted(set(recent.values()) | set(before.values()) | set(last_year.values()))

    def key(span: tuple[int, int]) -> str:
        return f"{span[0]}_{span[1]}"

    # ---- per customer from the lines -------------------------------------------------------
    age = F.col("age")
    by_line = past.groupBy("customer_id").agg(
        _count_if(F.col("pos")).alias("n_pos_lines"),
        F.sum("q_pos").alias("total_items"),
        F.sum("a_pos").alias("gross"),
        _sum_if(_is_q4(F.col("day")), F.col("a_pos")).alias("q4_value"),
        *[_sum_if(_in_age(age, *s), F.col("q_pos")).alias(f"i_{key(s)}") for s in recent.values()],
        *[_sum_if(_in_age(age, *s), F.col("a")).alias(f"s_{key(s)}") for s in spans],
        *[F.count_distinct(F.when(F.col("pos"), F.col(f"x_{c}"))).alias(f"n_{c}") for c in breadth],
    )

    # ---- per customer from the orders --------------------------------------------------------
    orders = _orders(past, prefixes, cats)
    op = F.col("o_purchase")
    o_age = F.lit(cutoff) - F.col("o_ts")
    by_order = orders.groupBy("customer_id").agg(
        _count_if(op).alias("n_orders"),
        _sum_in_order("o_line", "o_value").alias("total_spend"),
        F.min(F.when(op, _day("o_ts_any"))).alias("seg_first"),
        F.max(F.when(op, _day("o_ts_any"))).alias("seg_last"),
        F.count(F.lit(1)).alias("all_orders"),
        _count_if(F.col("o_return") & ~F.col("o_cancel")).alias("n_returns"),
        _count_if(F.col("o_cancel")).alias("n_cancels"),
        _count_if(op & _is_q4(_day("o_ts"))).alias("q4_orders"),
        *[_count_if(op & _in_age(o_age, *s)).alias(f"o_{key(s)}") for s in spans],
        *[
            F.array_sort(F.collect_list(F.when(op, F.col(f"o_{c}.v")))).alias(f"v_{c}")
            for c in cats
        ],
    )

    # ---- per customer from the purchase days --------------------------------------------------
    days = (
        past.groupBy("customer_id", "day")
        .agg(F.bool_or("pos").alias("p"), F.sum("a").alias("v"))
        .where(F.col("p"))
        .groupBy("customer_id")
        .agg(
            F.array_sort(
                F.collect_list(F.struct(F.col("day").alias("d"), F.col("v").alias("v")))
            ).alias("days")
        )
        .select(
            "customer_id",
            F.size("days").cast("long").alias("n_days"),
            F.col("days")[0]["d"].alias("first_day"),
            F.element_at("days", -1)["d"].alias("last_day"),
            F.expr("aggregate(slice(days, 2, size(days)), 0D, (acc, x) -> acc + x.v)").alias(
                "repeat_value"
            ),
            F.expr(
                "zip_with(slice(days, 2, size(days)), slice(days, 1, size(days) - 1), "
                "(x, y) -> x.d - y.d)"
            ).alias("gaps"),
        )
    )

    # all three are partitioned by customer_id already: hash joins without a shuffle (a
    # broadcast, which Spark would pick for small inputs, would shuffle again afterwards)
    t = by_line.where(F.col("n_pos_lines") > 0)
    t = t.join(by_order.hint("shuffle_hash"), "customer_id")
    t = t.join(days.hint("shuffle_hash"), "customer_id")

    # ---- the columns -----------------------------------------------------------------------------
    end = F.lit(end_day)
    n_days, n_orders = F.col("n_days"), F.col("n_orders")
    reps = n_days - 1
    recency = end - F.col("last_day")
    tenure = end - F.col("first_day")
    since_first = end - F.col("seg_first")
    gap_mean = F.when(
        n_days >= 2,
        (F.col("last_day") - F.col("first_day")).cast("double")
        / F.greatest(reps, F.lit(1)).cast("double"),
    ).otherwise(tenure.cast("double"))
    monetary = "avg_order_value" if cfg.monetary == "avg_order_value" else "total_spend"
    t = t.select(
        "*",
        reps.cast("double").alias("frequency"),
        ((F.col("last_day") - F.col("first_day")).cast("double") / F.lit(ud)).alias("recency"),
        (tenure.cast("double") / F.lit(ud)).alias("T"),
        F.when(reps > 0, F.col("repeat_value") / F.greatest(reps, F.lit(1)).cast("double"))
        .otherwise(F.lit(0.0))
        .alias("monetary_value"),
        (F.col("total_spend") / n_orders.cast("double")).alias("avg_order_value"),
        since_first.alias("days_since_first"),
        (end - F.col("seg_last")).alias("days_since_last"),
        (
            n_orders.cast("double")
            / F.greatest(since_first.cast("double") / F.lit(DAYS_PER_MONTH), F.lit(1.0))
        ).alias("orders_per_month"),
        recency.alias("recency_days"),
        tenure.alias("tenure_days"),
        gap_mean.alias("gap_mean_days"),
    )
    dev = "(cast(g AS DOUBLE) - gap_mean_days)"
    gap_ss = F.expr(f"aggregate(gaps, 0D, (acc, g) -> acc + {dev} * {dev})")
    share_orders_q4 = F.col("q4_orders").cast("double") / n_orders.cast("double")
    cols: list[Column] = [F.col("customer_id")]
    cols += [
        F.col(c).cast("double").alias(c) for c in ("frequency", "recency", "T", "monetary_value")
    ]
    cols += [
        n_orders.cast("long").alias("n_orders"),
        F.col("total_spend").cast("double").alias("total_spend"),
        F.col("avg_order_value").cast("double").alias("avg_order_value"),
        F.col("days_since_first").cast("long").alias("days_since_first"),
        F.col("days_since_last").cast("long").alias("days_since_last"),
        F.col("orders_per_month").cast("double").alias("orders_per_month"),
    ]
    cols += [
        F.col("recency_days").cast("long").alias("recency_days"),
        F.col("tenure_days").cast("long").alias("tenure_days"),
        n_days.cast("long").alias("n_purchase_days"),
        F.col("total_items").cast("double").alias("total_items"),
        (F.col("total_items") / n_orders.cast("double")).alias("mean_basket_size"),
        (F.col("gross") / n_orders.cast("double")).alias("mean_basket_value"),
    ]
    for w in wins:
        r = key(recent[w])
        cols += [
            F.col(f"o_{r}").cast("long").alias(f"orders_{w}d"),
            F.col(f"i_{r}").cast("double").alias(f"items_{w}d"),
            F.col(f"s_{r}").cast("double").alias(f"spend_{w}d"),
        ]
    for w in wins:
        r, b = key(recent[w]), key(before[w])
        cols += [
            _trend(F.col(f"o_{r}"), F.col(f"o_{b}")).alias(f"orders_trend_{w}d"),
            _trend(F.col(f"s_{r}"), F.col(f"s_{b}")).alias(f"spend_trend_{w}d"),
        ]
    cols += [
        (n_days >= 2).cast("long").alias("has_repeat"),
        F.col("gap_mean_days"),
        F.sqrt(_ratio(gap_ss, reps.cast("double"))).alias("gap_std_days"),
        (F.col("recency_days").cast("double") - F.col("gap_mean_days")).alias("days_overdue"),
        (
            F.col("recency_days").cast("double") / F.greatest(F.col("gap_mean_days"), F.lit(1.0))
        ).alias("overdue_ratio"),
    ]
    names = {"product_id": "distinct_products", "category": "distinct_categories"}
    cols += [F.col(f"n_{c}").cast("long").alias(names[c]) for c in breadth]
    cols += [
        _ratio(F.col("n_returns"), F.col("all_orders")).alias("return_rate"),
        _ratio(F.col("n_cancels"), F.col("all_orders")).alias("cancellation_rate"),
        _ratio(F.col("q4_value"), F.col("gross"), fallback=share_orders_q4).alias("share_spend_q4"),
        share_orders_q4.alias("share_orders_q4"),
    ]
    for h in seasons:
        o = F.col(f"o_{key(last_year[h])}").cast("long")
        cols += [
            o.alias(f"orders_same_{h}d_last_year"),
            (o > 0).cast("long").alias(f"bought_same_{h}d_last_year"),
        ]
    kinds = {c: lines.schema[c].dataType.simpleString() for c in cats}
    cols += [_usual_value(f"v_{c}", kinds[c]).cast("string").alias(c) for c in cats]
    # every column but the scores and the segment; ranked (quantile scores) on the measures
    # as they are output, so the persisted table holds the output columns only
    t = t.select(*cols)
    scored = ["r_score", "f_score", "m_score", "rfm_score", "rfm_cell", "segment"]
    at = t.columns.index("orders_per_month") + 1
    order = [*t.columns[:at], *scored, *t.columns[at:]]
    if cfg.scoring == "quantile":
        if cfg.thresholds:
            raise ConfigError("thresholds only apply to scoring 'fixed'")
        worst_first = {
            "r_score": [F.col("days_since_last").desc()],
            "f_score": [F.col("orders_per_month").asc()],
            "m_score": [F.col(monetary).asc()],
        }
        t = _quintile_scores(t, worst_first)
    else:
        r, f, m = _fixed_scores(cfg, monetary)
        t = t.withColumn("r_score", r).withColumn("f_score", f).withColumn("m_score", m)
    score = [F.col(c).cast("long") for c in ("r_score", "f_score", "m_score")]
    t = (
        t.withColumn("r_score", score[0])
        .withColumn("f_score", score[1])
        .withColumn("m_score", score[2])
        .withColumn("rfm_score", score[0] + score[1] + score[2])
        .withColumn("rfm_cell", (score[0] * 100 + score[1] * 10 + score[2]).cast("string"))
    )
    t = t.withColumn("segment", _segment(DEFAULT_SEGMENT_RULES))
    return t.select(*order)


# --------------------------------------------------------------------------------------------
# output


def segment_summary(table: DataFrame) -> pd.DataFrame:
    """The segment table of :func:`crmkit.features.segments.segment_summary` from a Spark
    customer table (aggregated in Spark; only one row per segment reaches the driver).
    Segments are in the default rules' order, empty ones listed with 0 customers."""
    cols = ["customers", "mean_r_score", "mean_f_score", "mean_m_score", "total_spend"]
    got = (
        table.groupBy("segment")
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.avg("r_score").alias("mean_r_score"),
            F.avg("f_score").alias("mean_f_score"),
            F.avg("m_score").alias("mean_m_score"),
            F.sum("total_spend").alias("total_spend"),
        )
        .collect()
    )
    rows = pd.DataFrame(
        [[r[c] for c in cols] for r in got], columns=cols, index=[r["segment"] for r in got]
    )
    names = [r.name for r in DEFAULT_SEGMENT_RULES]
    names += [s for s in rows.index if s not in names]
    out = rows.reindex(pd.Index(names, name="segment"))
    out["customers"] = out["customers"].fillna(0).astype("int64")
    out["total_spend"] = out["total_spend"].fillna(0.0).astype("float64")
    return segment_shares(out)


def write_customers(table: DataFrame, path: str | os.PathLike, *, mode: str = "overwrite") -> None:
    """Write the customer table as a Parquet data set (a directory of part files) sorted by
    ``customer_id``: read as one table (``pandas.read_parquet(path)``) it has the local
    ``customers.parquet`` columns and row order."""
    table.orderBy("customer_id").write.mode(mode).parquet(str(path))
