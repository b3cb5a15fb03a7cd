"""The ranked recommendation lists of ``crmkit score --engine spark``: the registered
recommender (:class:`crmkit.models.recommend.Recommender`) applied on Spark, equal to its local
:meth:`~crmkit.models.recommend.Recommender.recommend_for`.

How
---
A customer's list depends on their own lines, on the learned (product-level) state, and on a
few *population-level* quantities measured over all customers of the lines
(:class:`crmkit.models.recommend.PopulationStats`). :func:`recommendations` measures those on
Spark, then runs the local recommender code on groups of customers
(``groupBy(bucket).cogroup(...).applyInPandas``: every line of a customer in one group, in the
lines' order), each group with the whole population's statistics. The population-level
quantities and how each is made exact:

- *products new since training* (their codes follow the learned ones in product id order; the
  realised mean unit price, value, mean units per order, category and name of the first
  line): the local code on every line of each new product (``groupBy(product
  bucket).applyInPandas``, lines in file order), one row per new product to the driver;
- *typical repurchase gaps* (geometric mean of the repeat buyers' own gaps per product; the
  geometric mean over all repeat purchases for the other products): each customer group's
  repeat purchases and log gaps from the local code, then per product the sum of the log
  gaps added one by one in customer id order, as the local engine adds them
  (``groupBy(product bucket).applyInPandas``), one row per product to the driver, where the
  fallback is summed over the product array as the local engine sums it;
- *RFM segments* (quintile scores over all customers) and the *spend quantile* of
  reactivation: each customer group's RFM measures from the local code (sums in file order),
  then the local scoring, segment rules and ``numpy.quantile`` over every customer in one
  task (one row per customer moves there; as the quantile scores of
  :mod:`crmkit.spark.features`). Segments stay in Spark and reach each group by the cogroup;
- *the mean CLV* (the denominator of the CLV weight) over the scored customers with a
  purchase: exact partial sums (:func:`crmkit.models.recommend._exact_partials`) per customer
  group, merged by :func:`math.fsum` into the correctly rounded sum the local engine takes.

So ids, ranks, products, kinds, reasons and scores are identical to the local engine's (the
same float operations in the same order). Only product-level tables (new products, gap sums),
a few counts and the CLV partial sums reach the driver; order lines never do. Calling
:func:`recommendations` runs the checks (one aggregation of the lines, one of the scores) and
the product-level job(s); the lists themselves are built when the result is written (that job
computes the customer groups' measures again for the segments).

The recommender reaches the executors once, as a broadcast variable together with the
population statistics (its learned state only, :meth:`Recommender._learned_only`: no training
customer, no ``rules_`` report): pickled, about 0.07 MB for a recommender of the simulated
sample (300 products, rules, up-sell pairs, calibration) and 1.2 MB for one of Online Retail
(3,400 products, 36,000 rules); the population statistics add 16 bytes per product
and a row per new product.

Assumed, and checked: one customer per ``order_id`` among the purchase lines (an order shared
by customers would be split between groups), and one ``customer_scores`` row per customer.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crmkit.errors import ConfigError, DataContractError
from crmkit.features.segments import MEASURE_COLUMNS
from crmkit.models.recommend import (
    NEW_PRODUCT_COLUMNS,
    PopulationStats,
    Recommender,
    _customer_group_parts,
    _cutoff,
    _empty_new_products,
    _exact_partials,
    _new_product_table,
    _past_mask,
    _population_segments,
    _product_gap_sums,
    _purchases,
    _require_columns,
    _usable_clv,
    empty_recommendations,
)
from crmkit.spark.features import LINE_ORDER, _timestamp_ns

__all__ = ["RECOMMENDATION_SCHEMA", "recommendations"]

#: Spark schema of a recommendation list (the local frame's columns and dtypes).
RECOMMENDATION_SCHEMA = (
    "customer_id string, rank long, product_id string, kind string, score double, reason string"
)
#: Line columns the local recommender reads (when present).
_LINE_COLUMNS = (
    "customer_id",
    "order_id",
    "product_id",
    "quantity",
    "unit_price",
    "amount",
    "margin",
    "category",
    "product_name",
)
_REQUIRED = ("customer_id", "order_id", "order_ts", "unit_price")
_NUMERIC = ("quantity", "unit_price", "amount", "margin")
_FILE, _ROW, _BUCKET, _CID = "_lo_file", "_lo_row", "_bucket", "_cid"
_MEASURES = MEASURE_COLUMNS
_INT_MEASURES = ("n_orders", "days_since_first", "days_since_last")
_PARTS_SCHEMA = (
    "part string, customer_id string, product_id string, log_gap double, "
    + ", ".join(f"{c} double" for c in _MEASURES)
    + ", partials array<double>, n long"
)
_DRIVER_SCHEMA = (
    "part string, product_id string, repeat_buyers long, log_gap_sum double, is_new boolean, "
    "partials array<double>, n long"
)
_NEW_SCHEMA = (
    "product_id string, price double, value double, quantity double, category string, "
    "name string, value_basis string"
)
_SEGMENTS_SCHEMA = f"{_CID} string, segment string, spend_cut double"


def recommendations(
    lines: DataFrame,
    recommender: Recommender,
    as_of: Any,
    customer_scores: DataFrame | None = None,
    *,
    buckets: int | None = None,
) -> DataFrame:
    """The ranked lists of every customer of ``lines`` at ``as_of``: the rows of
    ``recommender.recommend_for(lines, as_of, customer_scores)`` computed on Spark.

    Parameters
    ----------
    lines
        Cleaned order lines (:func:`crmkit.spark.features.read_lines`: its
        :data:`~crmkit.spark.features.LINE_ORDER` fixes the order of float sums; without it,
        the DataFrame's partition order is used). ``customer_id``, ``order_id``,
        ``order_ts``, ``product_id``, ``unit_price``; ``quantity``, ``amount``, ``margin``,
        ``category`` and ``product_name`` are used when present. Later lines are ignored.
    recommender
        A fitted or loaded recommender (the registered model's).
    as_of
        Analysis date (a date covers that whole day).
    customer_scores
        Optional ``customer_id`` with ``p_alive`` and / or ``clv`` (one row per customer).
    buckets
        Groups of customers the lists are built in (default ``spark.sql.shuffle.partitions``);
        a group's lines are one pandas frame on an executor.

    Returns
    -------
    DataFrame
        :data:`RECOMMENDATION_SCHEMA` (``customer_id``, ``rank``, ``product_id``, ``kind``,
        ``score``, ``reason``), a customer's rows together and in rank order. Lazy: the
        population statistics are measured when this is called, the lists when it is
        written.

    Raises
    ------
    ConfigError
        The recommender is neither fitted nor loaded, or ``buckets`` is not a positive integer.
    DataContractError
        A missing or mistyped column, no purchase before ``as_of``, an order of several
        customers, a duplicated or out-of-range ``customer_scores`` row.
    """
    if not isinstance(recommender, Recommender):
        raise ConfigError(f"expected a crmkit Recommender, got {type(recommender).__name__}")
    rec = recommender._learned_only()  # ConfigError when neither fitted nor loaded
    cutoff = _cutoff(as_of)
    spark = lines.sparkSession
    n_buckets = _buckets(spark, buckets)
    prepared = _prepare(lines, cutoff, n_buckets)
    _check_lines(prepared, cutoff)
    scores = _checked_scores(customer_scores, n_buckets)
    score_cols = [] if scores is None else [c for c in ("p_alive", "clv") if c in scores.columns]
    known = rec._products
    q = float(rec.reactivation_min_value_quantile)
    want_segments = "reactivation" in set(rec.kinds)

    # per customer group, by the local code: RFM measures ("m"), repeat purchases with their
    # log gaps ("g"), new products ("n") and exact partial sums of the usable CLVs ("c")
    def group_parts(pdf: pd.DataFrame, sc: pd.DataFrame | None = None) -> pd.DataFrame:
        got = _customer_group_parts(_local_lines(pdf), cutoff, known)
        clv = None
        if "clv" in score_cols and sc is not None:
            frame = pd.DataFrame({"customer_id": sc[_CID].to_numpy(dtype=object)})
            frame["clv"] = sc["clv"].to_numpy(dtype=np.float64)
            clv = _usable_clv(frame, got.customers)
        return _objects(_parts_frame(got, clv))

    if "clv" in score_cols:
        parts = (
            prepared.groupBy(_BUCKET)
            .cogroup(scores.groupBy(_BUCKET))
            .applyInPandas(group_parts, _PARTS_SCHEMA)
        )
    else:
        parts = prepared.groupBy(_BUCKET).applyInPandas(lambda pdf: group_parts(pdf), _PARTS_SCHEMA)
    # per product: gap sums in customer order and whether it is new; the CLV sums merged
    product_bucket = F.when(F.col("part") == "c", F.lit(-1)).otherwise(
        _bucket(F.col("product_id"), n_buckets)
    )
    small = (
        parts.where(F.col("part") != "m")
        .withColumn("_pb", product_bucket)
        .groupBy("_pb")
        .applyInPandas(lambda pdf: _objects(_driver_rows(pdf)), _DRIVER_SCHEMA)
        .toPandas()
    )
    prod = small[small["part"] == "p"]
    gaps = prod[prod["repeat_buyers"] > 0]
    new_ids = [str(p) for p in prod.loc[prod["is_new"].astype(bool), "product_id"]]
    clv_mean = None
    if "clv" in score_cols:
        c = small[small["part"] == "c"]
        n = int(c["n"].sum())
        total = math.fsum(itertools.chain.from_iterable(map(_floats, c["partials"])))
        clv_mean = total / n if n else 0.0
    new_products, basis = _new_products(prepared, new_ids, cutoff, n_buckets)
    base = PopulationStats.from_parts(
        rec,
        as_of,
        new_products=new_products,
        value_basis=basis,
        gaps=gaps[["product_id", "repeat_buyers", "log_gap_sum"]],
        clv_mean=clv_mean,
    )
    segments = None
    if want_segments:

        def population_segments(pdf: pd.DataFrame) -> pd.DataFrame:
            m = pdf[["customer_id", *_MEASURES]].copy()
            for c in _INT_MEASURES:
                m[c] = m[c].to_numpy(dtype=np.int64)
            seg, cut = _population_segments(m, q)
            return _objects(
                pd.DataFrame(
                    {
                        _CID: seg.index.to_numpy(dtype=object),
                        "segment": seg.to_numpy(dtype=object),
                        "spend_cut": np.full(len(seg), np.nan if cut is None else cut),
                    }
                )
            )

        segments = (
            parts.where(F.col("part") == "m")
            .withColumn("_one", F.lit(0))
            .groupBy("_one")
            .applyInPandas(population_segments, _SEGMENTS_SCHEMA)
        )
    per_customer = _per_customer(segments, scores, n_buckets)
    value = _shipped(spark, (rec, base))

    def build(pdf: pd.DataFrame, cust: pd.DataFrame | None) -> pd.DataFrame:
        model, stats = value()
        local = _local_lines(pdf)
        if not len(local) or not _past_mask(local, cutoff).any():
            return _objects(empty_recommendations())
        got = None
        if cust is not None and len(cust):
            if "segment" in cust.columns:
                seg = cust[cust["segment"].notna()]
                index = pd.Index(seg[_CID].astype("str"), dtype="str", name="customer_id")
                stats = dataclasses.replace(
                    stats,
                    segments=pd.Series(seg["segment"].to_numpy(), index=index, dtype="str"),
                    spend_cut=float(seg["spend_cut"].iloc[0]) if len(seg) else None,
                )
            if score_cols:
                s = cust[cust["_scored"].fillna(False).astype(bool)]
                got = pd.DataFrame({"customer_id": s[_CID].astype("str").to_numpy()})
                for c in score_cols:
                    got[c] = s[c].to_numpy(dtype=np.float64)
        elif want_segments:
            stats = dataclasses.replace(stats, segments=_no_segments(), spend_cut=None)
        if score_cols and got is None:
            got = pd.DataFrame({"customer_id": [], **{c: [] for c in score_cols}})
        return _objects(model.recommend_for(local, as_of, got, population=stats))

    if per_customer is None:
        return prepared.groupBy(_BUCKET).applyInPandas(
            lambda pdf: build(pdf, None), RECOMMENDATION_SCHEMA
        )
    return (
        prepared.groupBy(_BUCKET)
        .cogroup(per_customer.groupBy(_BUCKET))
        .applyInPandas(build, RECOMMENDATION_SCHEMA)
    )


# --------------------------------------------------------------------------------------------
# input


def _buckets(spark: Any, buckets: int | None) -> int:
    if buckets is None:
        buckets = int(spark.conf.get("spark.sql.shuffle.partitions", "200"))
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ConfigError(f"buckets must be an integer >= 1, got {buckets!r}")
    return buckets


def _bucket(cid: Column, n: int) -> Column:
    """The group of a customer: a hash of the id (as a string) modulo ``n``."""
    return F.pmod(F.xxhash64(cid), F.lit(n)).cast("int")


def _prepare(lines: DataFrame, cutoff: pd.Timestamp, n_buckets: int) -> DataFrame:
    """The purchase lines before ``cutoff`` (as the local engine's filter: ``order_ts`` before
    it, ``quantity`` > 0 and not missing, ids present) with the columns the recommender reads,
    ``order_ts`` as nanoseconds, the line order and the customer's bucket."""
    if not isinstance(lines, DataFrame):
        raise DataContractError(
            f"expected a Spark DataFrame of order lines, got {type(lines).__name__}",
            rule="input_type",
        )
    # the local engine's errors for missing columns
    _require_columns(pd.DataFrame(columns=lines.columns), _REQUIRED)
    for c in _NUMERIC:
        if c in lines.columns and not isinstance(lines.schema[c].dataType, T.NumericType):
            raise DataContractError(
                f"{c} must be numeric, got Spark type {lines.schema[c].dataType.simpleString()}",
                column=c,
                rule="column_type",
            )
    ts = _timestamp_ns(lines)  # DataContractError unless timestamps
    if LINE_ORDER in lines.columns:
        src = lines.withColumn(_FILE, F.col(f"{LINE_ORDER}.file").cast("string"))
        src = src.withColumn(_ROW, F.col(f"{LINE_ORDER}.row").cast("long"))
    else:
        src = lines.withColumn(_FILE, F.lit("")).withColumn(_ROW, F.monotonically_increasing_id())
    past = (
        (ts < F.lit(int(cutoff.as_unit("ns").value)))
        & F.col("customer_id").isNotNull()
        & F.col("product_id").isNotNull()
    )
    if "quantity" in lines.columns:
        qty = F.col("quantity").cast("double")
        past = past & qty.isNotNull() & ~F.isnan(qty) & (qty > 0)
    cols = [c for c in _LINE_COLUMNS if c in lines.columns]
    out = src.where(past).select(*cols, ts.alias("order_ts"), _FILE, _ROW)
    out = out.withColumn(_CID, F.col("customer_id").cast("string"))
    return out.withColumn(_BUCKET, _bucket(F.col(_CID), n_buckets))


def _check_lines(prepared: DataFrame, cutoff: pd.Timestamp) -> None:
    """No purchase before the cutoff, missing order ids, orders of several customers: the
    local engine's error, or one of the Spark engine's (it groups by customer)."""
    row = prepared.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.col("order_id").isNull().cast("long")).alias("na"),
        F.countDistinct("order_id").alias("orders"),
        F.countDistinct("order_id", _CID).alias("pairs"),
    ).first()
    if not int(row["n"]):
        raise DataContractError(
            f"no purchase before the analysis date ({cutoff - pd.Timedelta(1, 'ns')})",
            rule="empty_window",
            hint="choose an as_of date inside the data's date range",
        )
    if int(row["na"] or 0):
        raise DataContractError(
            f"order_id has {int(row['na'])} missing value(s); clean the lines first",
            column="order_id",
            rule="missing_order_id",
        )
    if int(row["orders"]) == int(row["pairs"]):
        return
    shared = (
        prepared.groupBy("order_id")
        .agg(F.countDistinct(_CID).alias("k"))
        .where(F.col("k") > 1)
        .select("order_id")
        .limit(1)
        .collect()
    )
    if shared:
        raise DataContractError(
            f"order {shared[0]['order_id']!r} has lines of several customers: the Spark engine "
            "builds lists by customer and needs one customer per order",
            column="order_id",
            rule="order_customers",
        )


def _local_lines(pdf: pd.DataFrame) -> pd.DataFrame:
    """A group's lines as the local engine reads them: in the lines' order, ``order_ts`` as
    naive ``datetime64[ns]``, without the helper columns."""
    pdf = pdf.sort_values([_FILE, _ROW], kind="stable")
    out = pdf.drop(columns=[c for c in (_FILE, _ROW, _BUCKET, _CID, "_pid") if c in pdf.columns])
    out = out.reset_index(drop=True)
    ns = out["order_ts"].to_numpy(dtype=np.int64)
    out["order_ts"] = pd.Series(ns.view("datetime64[ns]"), index=out.index)
    return out


# --------------------------------------------------------------------------------------------
# population statistics


def _parts_frame(got: Any, clv: np.ndarray | None) -> pd.DataFrame:
    """A customer group's parts (:func:`crmkit.models.recommend._customer_group_parts`) in one
    frame: ``part`` "m" (measures), "g" (repeat purchases), "n" (new products), "c" (the exact
    partial sums of the group's usable CLVs, when there are scores)."""
    m = pd.DataFrame({"part": "m", "customer_id": got.measures["customer_id"].astype(object)})
    for c in _MEASURES:
        m[c] = got.measures[c].to_numpy(dtype=np.float64)  # integers below 2**53: exact
    g = pd.DataFrame(
        {
            "part": "g",
            "customer_id": got.repeats["customer_id"].astype(object),
            "product_id": got.repeats["product_id"].astype(object),
            "log_gap": got.repeats["log_gap"].to_numpy(dtype=np.float64),
        }
    )
    n = pd.DataFrame({"part": "n", "product_id": got.new_products.to_numpy(dtype=object)})
    frames = [m, g, n]
    if clv is not None:
        frames.append(pd.DataFrame({"part": ["c"]}))
    out = pd.concat(frames, ignore_index=True)
    for c in ("customer_id", "product_id"):
        if c not in out.columns:
            out[c] = None
    for c in ("log_gap", *_MEASURES):
        if c not in out.columns:
            out[c] = np.nan
    partials = np.full(len(out), None, dtype=object)
    counts = np.zeros(len(out), dtype=np.int64)
    if clv is not None:  # the last row
        partials[len(out) - 1] = _exact_partials(clv)
        counts[-1] = len(clv)
    out["partials"] = pd.Series(partials, index=out.index, dtype=object)
    out["n"] = counts
    return out[["part", "customer_id", "product_id", "log_gap", *_MEASURES, "partials", "n"]]


def _floats(values: Any) -> list[float]:
    return [] if values is None else [float(v) for v in values]


def _driver_rows(pdf: pd.DataFrame) -> pd.DataFrame:
    """What reaches the driver from a group of products (every row of each): per product its
    repeat buyers and log gap sum (in customer order) and whether it is new; or, from the
    group of the CLV rows, their exact partial sums merged."""
    if (pdf["part"] == "c").all():
        partials = _exact_partials(itertools.chain.from_iterable(map(_floats, pdf["partials"])))
        return pd.DataFrame(
            {
                "part": ["c"],
                "product_id": [None],
                "repeat_buyers": [0],
                "log_gap_sum": [0.0],
                "is_new": [False],
                "partials": [partials],
                "n": [int(pdf["n"].sum())],
            }
        )
    sums = _product_gap_sums(pdf.loc[pdf["part"] == "g", ["customer_id", "product_id", "log_gap"]])
    new = pd.Index(pdf.loc[pdf["part"] == "n", "product_id"].astype("str").unique(), dtype="str")
    ids = pd.Index(sums["product_id"], dtype="str").union(new)
    at = pd.Index(sums["product_id"], dtype="str").get_indexer(ids)
    has = at >= 0
    repeat_buyers = np.where(has, sums["repeat_buyers"].to_numpy()[np.maximum(at, 0)], 0)
    log_sum = np.where(has, sums["log_gap_sum"].to_numpy()[np.maximum(at, 0)], 0.0)
    return pd.DataFrame(
        {
            "part": "p",
            "product_id": ids.to_numpy(dtype=object),
            "repeat_buyers": repeat_buyers.astype(np.int64),
            "log_gap_sum": log_sum.astype(np.float64),
            "is_new": ids.isin(new),
            "partials": pd.Series(np.full(len(ids), None, dtype=object), dtype=object),
            "n": np.zeros(len(ids), dtype=np.int64),
        }
    )


def _new_products(
    prepared: DataFrame, new_ids: list[str], cutoff: pd.Timestamp, n_buckets: int
) -> tuple[pd.DataFrame, str]:
    """The products unknown at training (``new_ids``), measured on all lines of each, in
    groups of products."""
    if not new_ids:
        return _empty_new_products(), "price"
    lines = prepared.withColumn("_pid", F.col("product_id").cast("string"))
    lines = lines.where(F.col("_pid").isin(new_ids))
    lines = lines.withColumn("_pb", _bucket(F.col("_pid"), n_buckets))

    def products(pdf: pd.DataFrame) -> pd.DataFrame:
        local = _local_lines(pdf.drop(columns="_pb"))
        if not _past_mask(local, cutoff).any():
            return pd.DataFrame({c: [] for c in (*NEW_PRODUCT_COLUMNS, "value_basis")})
        table, basis = _new_product_table(local, _purchases(local, cutoff, None), 0)
        table["value_basis"] = basis
        return _objects(table)

    got = lines.groupBy("_pb").applyInPandas(products, _NEW_SCHEMA).toPandas()
    basis = str(got["value_basis"].iloc[0]) if len(got) else "price"
    table = pd.DataFrame(
        {
            "product_id": pd.Series(got["product_id"].to_numpy(dtype=object), dtype="str"),
            **{c: got[c].to_numpy(dtype=np.float64) for c in ("price", "value", "quantity")},
            "category": pd.Series(_nones(got["category"]), dtype=object),
            "name": pd.Series(_nones(got["name"]), dtype=object),
        }
    )
    return table, basis


def _objects(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its string columns as Python objects (what PySpark's Arrow conversion of
    a pandas UDF's result takes; pandas 3's ``str`` dtype is not)."""
    for c in frame.columns:
        if pd.api.types.is_string_dtype(frame[c].dtype) and frame[c].dtype != object:
            frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    return frame


def _nones(s: pd.Series) -> np.ndarray:
    v = s.to_numpy(dtype=object)
    return np.where(pd.isna(v), None, v)


def _finite(c: Column) -> Column:
    return c.isNotNull() & ~F.isnan(c) & (F.abs(c) != F.lit(float("inf")))


def _checked_scores(customer_scores: DataFrame | None, n_buckets: int) -> DataFrame | None:
    """The scores by customer: ``_cid`` (the id as a string), ``p_alive`` and / or ``clv``,
    ``_scored`` and the bucket; checked (one row per customer, P(alive) in [0, 1]) in one
    aggregation."""
    if customer_scores is None:
        return None
    if not isinstance(customer_scores, DataFrame):
        raise DataContractError(
            f"customer_scores must be a Spark DataFrame, got {type(customer_scores).__name__}",
            rule="input_type",
        )
    cols = [c for c in ("p_alive", "clv") if c in customer_scores.columns]
    if "customer_id" not in customer_scores.columns:
        raise DataContractError(
            "customer_scores needs a customer_id column",
            column="customer_id",
            rule="required_column",
        )
    if not cols:
        raise DataContractError(
            "customer_scores needs a p_alive and / or clv column",
            column="p_alive",
            rule="required_column",
        )
    s = customer_scores.select(
        F.col("customer_id").cast("string").alias(_CID),
        *[F.col(c).cast("double").alias(c) for c in cols],
    )
    checks = [F.count(F.lit(1)).alias("n"), F.countDistinct(_CID).alias("ids")]
    if "p_alive" in cols:
        p = F.col("p_alive")
        bad = _finite(p) & ((p < 0) | (p > 1))
        checks.append(F.sum(bad.cast("long")).alias("bad"))
    row = s.agg(*checks).first()
    if int(row["n"]) != int(row["ids"]):
        raise DataContractError(
            "customer_scores has several rows for a customer_id (one row per customer)",
            column="customer_id",
            rule="duplicate_customer",
        )
    if "p_alive" in cols and int(row["bad"] or 0):
        raise DataContractError(
            "p_alive must be in [0, 1]", column="p_alive", rule="invalid_values"
        )
    s = s.withColumn("_scored", F.lit(True))
    return s.withColumn(_BUCKET, _bucket(F.col(_CID), n_buckets))


def _per_customer(
    segments: DataFrame | None, scores: DataFrame | None, n_buckets: int
) -> DataFrame | None:
    """Segments and scores by customer, with the customer's bucket (None: neither)."""
    if segments is None and scores is None:
        return None
    if segments is None:
        return scores
    segments = segments.withColumn(_BUCKET, _bucket(F.col(_CID), n_buckets))
    if scores is None:
        return segments
    return segments.join(scores, [_CID, _BUCKET], "full_outer")


def _no_segments() -> pd.Series:
    index = pd.Index([], dtype="str", name="customer_id")
    return pd.Series([], index=index, name="segment", dtype="str")


def _shipped(spark: Any, payload: Any) -> Callable[[], Any]:
    """``payload`` for the executors: a broadcast variable (sent once per executor), or the
    UDF's closure where the session has no SparkContext (Spark Connect)."""
    try:
        bc = spark.sparkContext.broadcast(payload)
    except Exception:  # pragma: no cover - Spark Connect
        return lambda: payload
    return lambda: bc.value
