"""``crmkit train --engine spark``: the training job of :func:`crmkit.pipelines.train.run_train`
on cleaned order lines in Spark, for shops whose lines do not fit on one machine.

The MLflow run has the local run's structure - a parent run ``train`` (tag
``crmkit.engine=spark``) with the nested runs ``validate``, ``features``, ``clv``, ``churn``
and ``basket``, the same parameters, metrics and artifacts where the engine computes them, and
the same :class:`~crmkit.pipelines.scorer.CustomerScorer` bundle, registered and gated as
locally (it scores with the local ``crmkit score`` and with ``crmkit score --engine spark``).
What runs where:

``validate``
    DATA are cleaned lines (``crmkit validate``'s ``lines.parquet``, a file or a directory of
    Parquet files), read with :func:`crmkit.spark.read_lines`; no cleaning rule is applied.
    ``quality_report.json`` holds the totals of one Spark aggregation (rows, customers, orders,
    revenue, first and last line) and no rules; the input data set is logged with a digest of
    every line (XOR and count of row hashes, computed in Spark).
``features``
    :func:`crmkit.spark.customer_table` and its :func:`crmkit.spark.segment_summary`
    (segment table, metrics and the segment-size plot as locally). The retention KPIs
    (``features/kpis.json``) and the cohort heatmap are not computed: they need every
    customer's cohort on the driver (a note says so).
``clv``
    The purchase model (``clv.model``; ``auto`` is refused: its backtest needs the lines on
    one machine) and Gamma-Gamma fitted on the driver on the unique ``(frequency, recency,
    T)`` patterns and ``(frequency, monetary_value)`` pairs of **every** customer, with their
    weights, aggregated in Spark (:mod:`crmkit.spark.clv`: identical to the local fit on the
    same summary). The CLV totals are sums over every customer's prediction in Spark (no
    intervals on the totals). Metrics ``clv.patterns`` / ``clv.spend_pairs`` /
    ``clv.customers`` record how much the patterns compress the table.
``churn``, ``basket`` and the gate
    Fitted on the driver on the order lines of a **stratified sample of customers**
    (:func:`stratified_sample`): at most ``spark.sample_customers`` customers, drawn without
    replacement in strata of their purchase-order count at the training date
    (``spark.order_bands``), each stratum in proportion to its size (largest remainders, so
    the sample's stratum counts are the exact proportional allocation rounded to whole
    customers), within a stratum the customers with the smallest hash of
    ``(spark.sample_seed, customer_id)`` - deterministic on any cluster. Only the sampled
    customers' lines are collected, in file order, and the local stages run on them unchanged:
    :func:`crmkit.pipelines.churn.compute_churn` (snapshots at every cutoff of the sampled
    customers), the recommender (rules mined with mlxtend on the sample's baskets) and the
    champion gate (challenger and champion evaluated on the sample's lines). With
    ``spark.fpgrowth_check`` the rules are also mined over **every** basket with Spark's
    FP-growth (:func:`fpgrowth_rules`) and the basket run records how the sample's rules
    compare (:func:`compare_rules`). The sampling is logged as ``sample.*`` parameters and
    ``spark/sample.json`` (strata, counts, shares, fraction, seed - never customer ids).

With ``spark.sample_customers`` at least the number of customers the sample is every
customer, and the bundle equals the local engine's on the same cleaned lines (tested: same CLV
parameters, churn booster, rules and scores).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crmkit.errors import ConfigError, DataContractError
from crmkit.pipelines.train import TrainResult

__all__ = [
    "SparkTrainResult",
    "CustomerSample",
    "band_labels",
    "allocate",
    "stratified_sample",
    "collect_lines",
    "fpgrowth_rules",
    "compare_rules",
    "run_train",
]

#: Top rules (by lift, then support) of the full-data FP-growth compared with the sample's.
TOP_RULES = 100
_KEY = "_sample_key"
_STRATUM = "_stratum"


# --------------------------------------------------------------------------------------------
# the stratified sample


@dataclass
class CustomerSample:
    """A stratified sample of customers (:func:`stratified_sample`).

    Attributes
    ----------
    seed, cap
        The sample's seed and its most customers.
    population, size
        Customers in the table and in the sample.
    strata
        One row per stratum (``stratum`` label, ``min_orders``, ``max_orders`` - ``None`` for
        the open last band -, ``customers``, ``sampled``, ``population_share``,
        ``sample_share``, ``fraction``).
    customers
        The sampled customers (a Spark DataFrame with the column ``customer_id``, small).
    """

    seed: int
    cap: int
    population: int
    size: int
    strata: pd.DataFrame
    customers: DataFrame

    @property
    def fraction(self) -> float:
        return self.size / self.population if self.population else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no customer ids)."""
        return {
            "method": "stratified by purchase-order count at the training date, proportional "
            "allocation (largest remainders), within a stratum the smallest "
            "xxhash64(seed, customer_id)",
            "seed": self.seed,
            "cap": self.cap,
            "population": self.population,
            "size": self.size,
            "fraction": self.fraction,
            "strata": [
                {k: (None if pd.isna(v) else v) for k, v in row.items()}
                for row in json.loads(self.strata.to_json(orient="records"))
            ],
        }

    def params(self) -> dict[str, str]:
        """The MLflow parameters of the sample (``sample.*``)."""
        s = self.strata
        return {
            "sample.method": "stratified_orders_hash",
            "sample.seed": str(self.seed),
            "sample.cap": str(self.cap),
            "sample.population": str(self.population),
            "sample.size": str(self.size),
            "sample.fraction": f"{self.fraction:.6g}",
            "sample.strata": ",".join(s["stratum"]),
            "sample.strata_customers": ",".join(str(int(v)) for v in s["customers"]),
            "sample.strata_sampled": ",".join(str(int(v)) for v in s["sampled"]),
        }


def band_labels(bands: Sequence[int]) -> list[str]:
    """Labels of the order-count bands with lower bounds ``bands``: ``[1, 2, 3, 5, 10]`` ->
    ``["1", "2", "3-4", "5-9", "10+"]``."""
    out = []
    for i, lo in enumerate(bands):
        hi = bands[i + 1] - 1 if i + 1 < len(bands) else None
        out.append(f"{lo}+" if hi is None else (str(lo) if hi == lo else f"{lo}-{hi}"))
    return out


def allocate(counts: Sequence[int], cap: int) -> list[int]:
    """Proportional allocation of ``cap`` draws to strata of ``counts`` units by largest
    remainders (Hamilton): each stratum gets ``floor(cap * N_s / N)``, the draws left over go
    one each to the largest remainders (ties: the earlier stratum). The result sums to
    ``min(cap, N)``, never exceeds a stratum, and differs from the exact share ``cap * N_s /
    N`` by less than one. Integer arithmetic throughout."""
    counts = [int(c) for c in counts]
    n = sum(counts)
    if cap >= n:
        return list(counts)
    base = [cap * c // n for c in counts]
    rest = sorted(range(len(counts)), key=lambda i: (-(cap * counts[i] % n), i))
    for i in rest[: cap - sum(base)]:
        base[i] += 1
    return base


def _stratum(bands: Sequence[int]) -> Any:
    n = F.col("n_orders")
    expr = F.lit(0)
    for i, lo in enumerate(bands[1:], start=1):
        expr = F.when(n >= F.lit(int(lo)), F.lit(i)).otherwise(expr)
    return expr


def stratified_sample(
    table: DataFrame, cap: int, *, seed: int = 0, bands: Sequence[int] = (1, 2, 3, 5, 10)
) -> CustomerSample:
    """A deterministic stratified sample of at most ``cap`` customers of a Spark customer
    table (:func:`crmkit.spark.customer_table`; reads ``customer_id`` and ``n_orders``).

    Strata: the bands of ``n_orders`` (purchase orders at the training date) whose lower bounds
    are ``bands`` (the first must be 1). Allocation: :func:`allocate` (proportional, largest
    remainders). Selection: in each stratum the customers with the smallest
    ``xxhash64(seed, customer_id)`` (ties by id), i.e. a simple random sample without
    replacement per stratum that is the same for the same data and seed on any cluster and
    partitioning. Spark first keeps the customers whose hash is below a per-stratum threshold
    that leaves a wide margin above the allocation (checked; a stratum falls back to all its
    customers when the margin was not enough), then ranks only those: the result is exactly
    the smallest hashes. Two small aggregations reach the driver (counts per stratum), then
    the sampled ids (at most ``cap``).
    """
    if cap < 1:
        raise ConfigError(f"spark.sample_customers must be >= 1, got {cap}")
    for col in ("customer_id", "n_orders"):
        if col not in table.columns:
            raise DataContractError(
                f"customer table lacks column {col!r}",
                column=col,
                rule="required_column",
                hint="pass a customer table of crmkit.spark.customer_table",
            )
    bands = [int(b) for b in bands]
    labels = band_labels(bands)
    keyed = table.select(
        F.col("customer_id"),
        _stratum(bands).alias(_STRATUM),
        F.xxhash64(F.lit(int(seed)).cast("long"), F.col("customer_id")).alias(_KEY),
    )
    got = {int(r[0]): int(r[1]) for r in keyed.groupBy(_STRATUM).count().collect()}
    counts = [got.get(i, 0) for i in range(len(bands))]
    take = allocate(counts, int(cap))
    population = sum(counts)
    spark = table.sparkSession
    if sum(take) >= population:
        chosen = keyed.select("customer_id")
    else:
        # keep u < t_s (u: the hash as a number in [0, 1)), t_s well above the stratum's
        # sampling fraction; the smallest hashes of the stratum are all kept when at least
        # take[s] customers are
        u = F.col(_KEY).cast("double") / F.lit(2.0**64) + F.lit(0.5)
        limits = {}
        for i, (n_s, k_s) in enumerate(zip(counts, take, strict=True)):
            if k_s and n_s:
                limits[i] = min(1.0, 1.1 * k_s / n_s + 100.0 / n_s)
        while True:
            cond = F.lit(False)
            for i, t in limits.items():
                cond = cond | ((F.col(_STRATUM) == F.lit(i)) & (u <= F.lit(t)))
            cand = keyed.where(cond)
            have = {int(r[0]): int(r[1]) for r in cand.groupBy(_STRATUM).count().collect()}
            short = [i for i in limits if have.get(i, 0) < take[i] and limits[i] < 1.0]
            if not short:
                break
            for i in short:  # pragma: no cover - a margin of >= 10 standard deviations
                limits[i] = 1.0
        rank = F.row_number().over(Window.partitionBy(_STRATUM).orderBy(_KEY, "customer_id"))
        quota = F.element_at(
            F.create_map(*[x for i in limits for x in (F.lit(i), F.lit(take[i]))]),
            F.col(_STRATUM),
        )
        chosen = cand.withColumn("_rank", rank).where(F.col("_rank") <= quota)
        chosen = chosen.select("customer_id")
    rows = chosen.collect()
    ids = spark.createDataFrame(rows, schema=table.select("customer_id").schema)
    size = len(rows)
    strata = pd.DataFrame(
        {
            "stratum": labels,
            "min_orders": bands,
            "max_orders": pd.array([b - 1 for b in bands[1:]] + [None], dtype="Int64"),
            "customers": counts,
            "sampled": take,
        }
    )
    strata["population_share"] = strata["customers"] / max(population, 1)
    strata["sample_share"] = strata["sampled"] / max(size, 1)
    strata["fraction"] = np.where(
        strata["customers"] > 0, strata["sampled"] / strata["customers"].clip(lower=1), 0.0
    )
    return CustomerSample(
        seed=int(seed),
        cap=int(cap),
        population=population,
        size=size,
        strata=strata,
        customers=ids,
    )


# --------------------------------------------------------------------------------------------
# lines to the driver


def collect_lines(lines: DataFrame, customers: DataFrame) -> pd.DataFrame:
    """The order lines of ``customers`` (a small Spark DataFrame of ``customer_id``) as a
    pandas frame in file order (:data:`crmkit.spark.LINE_ORDER` when present), in the dtypes
    the local loader gives cleaned lines: strings as ``str``, ``order_ts`` as naive
    ``datetime64[ns]`` (Parquet nanoseconds exactly; Spark timestamps in UTC)."""
    from crmkit.spark.features import LINE_ORDER

    cols = [c for c in lines.columns if c != LINE_ORDER]
    sel = lines.join(F.broadcast(customers), "customer_id", "left_semi")
    if LINE_ORDER in lines.columns:
        sel = sel.orderBy(LINE_ORDER)
    sel = sel.select(*cols)
    schema = {f.name: f.dataType for f in sel.schema.fields}
    frame = sel.toArrow().to_pandas()
    for c, dtype in schema.items():
        if isinstance(dtype, T.StringType):
            frame[c] = frame[c].astype("str")
        elif c == "order_ts" and isinstance(dtype, T.LongType):
            frame[c] = pd.to_datetime(frame[c].to_numpy(dtype=np.int64), unit="ns")
        elif isinstance(dtype, T.TimestampType):
            ts = pd.to_datetime(frame[c], utc=True).dt.tz_localize(None)
            frame[c] = ts.astype("datetime64[ns]")
        elif isinstance(dtype, T.TimestampNTZType):
            frame[c] = frame[c].astype("datetime64[ns]")
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# rules over every basket


def fpgrowth_rules(
    lines: DataFrame,
    as_of: object,
    *,
    min_support: float,
    min_confidence: float,
    min_lift: float,
    max_len: int,
) -> tuple[pd.DataFrame, int]:
    """Association rules over **every** basket before ``analysis_cutoff(as_of)`` with Spark's
    FP-growth (:class:`pyspark.ml.fpm.FPGrowth`). Baskets as the recommender's: the distinct
    products of an order's purchase lines (quantity > 0, product id present). Rules with one
    consequent (FP-growth's) and at most ``max_len`` items, confidence and lift at least the
    thresholds. Returns ``(rules, n_baskets)``; ``rules`` has ``antecedents`` and
    ``consequents`` (sorted tuples of product ids as strings), ``support``, ``confidence``
    and ``lift``, sorted by lift, support and items."""
    from pyspark.ml.fpm import FPGrowth

    from crmkit.features.behaviour import _cutoff_ns
    from crmkit.spark.features import _timestamp_ns

    ts = _timestamp_ns(lines)
    baskets = (
        lines.where(
            (ts < F.lit(_cutoff_ns(as_of)))
            & (F.col("quantity") > 0)
            & F.col("product_id").isNotNull()
            & F.col("customer_id").isNotNull()
        )
        .groupBy("order_id")
        .agg(F.array_distinct(F.collect_list(F.col("product_id").cast("string"))).alias("items"))
        .persist()
    )
    try:
        n = baskets.count()
        fp = FPGrowth(
            itemsCol="items", minSupport=float(min_support), minConfidence=float(min_confidence)
        ).fit(baskets)
        rows = (
            fp.associationRules.where(
                (F.size("antecedent") + F.lit(1) <= F.lit(int(max_len)))
                & (F.col("lift") >= F.lit(float(min_lift)))
            )
            .select("antecedent", "consequent", "confidence", "lift", "support")
            .collect()
        )
    finally:
        baskets.unpersist()
    rules = pd.DataFrame(
        {
            "antecedents": [tuple(sorted(r["antecedent"])) for r in rows],
            "consequents": [tuple(sorted(r["consequent"])) for r in rows],
            "support": [float(r["support"]) for r in rows],
            "confidence": [float(r["confidence"]) for r in rows],
            "lift": [float(r["lift"]) for r in rows],
        },
        columns=["antecedents", "consequents", "support", "confidence", "lift"],
    )
    rules = rules.sort_values(
        ["lift", "support", "antecedents", "consequents"], ascending=[False, False, True, True]
    )
    return rules.reset_index(drop=True), int(n)


def _rule_keys(frame: pd.DataFrame) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    def items(x: Iterable[Any]) -> tuple[str, ...]:
        return tuple(sorted(str(v) for v in x))

    return [(items(a), items(c)) for a, c in zip(frame["antecedents"], frame["consequents"])]


def compare_rules(sample: pd.DataFrame, full: pd.DataFrame, top: int = TOP_RULES) -> dict:
    """How the rules of the sample (the recommender's ``rules_``) compare with the rules over
    every basket (:func:`fpgrowth_rules`): counts, the share of the full data's top ``top``
    rules (by lift) and of all its rules found in the sample, the share of the sample's rules
    that hold on the full data, and over the rules found in both the mean and largest absolute
    differences of support and confidence and the mean relative difference of lift."""
    s = dict(zip(_rule_keys(sample), sample[["support", "confidence", "lift"]].to_numpy()))
    f_keys = _rule_keys(full)
    f = dict(zip(f_keys, full[["support", "confidence", "lift"]].to_numpy()))
    both = [k for k in f_keys if k in s]
    head = f_keys[:top]
    out: dict[str, Any] = {
        "rules_full": len(f),
        "rules_sample": len(s),
        "rules_both": len(both),
        "top": len(head),
        "top_recovered": sum(k in s for k in head) / len(head) if head else None,
        "full_recovered": len(both) / len(f) if f else None,
        "sample_confirmed": len(both) / len(s) if s else None,
    }
    if both:
        a = np.array([s[k] for k in both], dtype=np.float64)
        b = np.array([f[k] for k in both], dtype=np.float64)
        diff = np.abs(a - b)
        out |= {
            "support_mean_abs_diff": float(diff[:, 0].mean()),
            "support_max_abs_diff": float(diff[:, 0].max()),
            "confidence_mean_abs_diff": float(diff[:, 1].mean()),
            "confidence_max_abs_diff": float(diff[:, 1].max()),
            "lift_mean_rel_diff": float(np.mean(diff[:, 2] / np.abs(b[:, 2]))),
        }
    return out


# --------------------------------------------------------------------------------------------
# the job


@dataclass
class SparkTrainResult(TrainResult):
    """:class:`~crmkit.pipelines.train.TrainResult` and the Spark engine's choices: the
    customer sample, the number of customers and CLV patterns, and the rule check."""

    sample: CustomerSample | None = None
    n_customers: int = 0
    clv_patterns: dict[str, int] = field(default_factory=dict)
    rules_check: dict[str, Any] | None = None


def _validate_stage(lines: DataFrame, data: str | os.PathLike, config: Any) -> dict[str, Any]:
    """Log the input data set and the totals of the cleaned lines; returns the report."""
    import mlflow

    from crmkit.spark.features import LINE_ORDER, _timestamp_ns

    cols = [c for c in lines.columns if c != LINE_ORDER]
    ts = _timestamp_ns(lines)
    aggs = [
        F.count(F.lit(1)).alias("n"),
        F.bit_xor(F.xxhash64(*[F.col(c) for c in cols])).alias("x"),
        F.count_distinct("customer_id").alias("customers"),
        F.count_distinct("order_id").alias("orders"),
        F.sum(F.col("amount").cast("double")).alias("revenue"),
        F.min(ts).alias("first"),
        F.max(ts).alias("last"),
    ]
    if "product_id" in lines.columns:
        aggs.append(F.count_distinct("product_id").alias("products"))
    row = lines.agg(*aggs).first()
    n = int(row["n"])
    # the digest: MD5 of (row count, XOR of every line's xxhash64, columns) - the same set of
    # lines gives the same digest whatever the partitioning
    digest = hashlib.md5(f"{n}|{row['x']}|{'|'.join(cols)}".encode()).hexdigest()[:8]
    if n == 0 or row["first"] is None:
        raise DataContractError(f"no order lines in {data}", rule="no_rows_left")

    def stamp(v: int) -> str:
        return pd.Timestamp(int(v), unit="ns").isoformat()

    revenue = round(float(row["revenue"] or 0.0), 2)
    totals: dict[str, Any] = {
        "rows_in": n,
        "rows_out": n,
        "customers_in": int(row["customers"]),
        "customers_out": int(row["customers"]),
        "orders_in": int(row["orders"]),
        "orders_out": int(row["orders"]),
        "revenue_in": revenue,
        "revenue_out": revenue,
        "first_order_ts": stamp(row["first"]),
        "last_order_ts": stamp(row["last"]),
    }
    if "product_id" in lines.columns:
        totals["products_out"] = int(row["products"])
    report = {
        "source": str(data),
        "level": "product" if "product_id" in lines.columns else "order",
        "totals": totals,
        "rules": [],
        "notes": [
            "Spark engine: DATA are cleaned lines (crmkit validate's lines.parquet), read as "
            "they are; no cleaning rule was applied"
        ],
        "config": config.cleaning.model_dump(mode="json"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = mlflow.data.from_spark(
            lines.select(*cols), path=str(data), name=Path(data).name, digest=digest
        )
    mlflow.log_input(ds, context="training")
    return report


def _spark_clv(
    table: DataFrame, lines: DataFrame, when: pd.Timestamp, config: Any, notes: list[str]
) -> tuple[Any, dict[str, Any], dict[str, int]]:
    """Fit the CLV models on every customer's patterns and log the clv run; returns the
    :class:`ClvResult` (no customer rows), the scorer's CLV state and the pattern counts."""
    import mlflow

    from crmkit.models import clv_plots
    from crmkit.pipelines.clv import ClvResult, _model_block, _plain, log_clv_to_mlflow
    from crmkit.pipelines.scorer import CustomerScorer
    from crmkit.spark.clv import (
        clv_scores,
        fit_gamma_gamma,
        fit_purchase_model,
        summary_in_unit,
    )

    cfg = config.clv
    summary = summary_in_unit(table, cfg.unit).persist()
    try:
        purchase = fit_purchase_model(summary, cfg.model, penalizer=cfg.penalizer)
        spend = fit_gamma_gamma(summary, penalizer=cfg.penalizer)
        clv_notes: list[str] = []
        for m in (purchase, spend):
            clv_notes += [f"{m._model_name}: {w}" for w in m.convergence_.warnings]
        state = {
            "model": cfg.model,
            "unit": cfg.unit,
            "params": {k: float(v) for k, v in purchase.params_.items()},
            "gamma_gamma": {k: float(v) for k, v in spend.params_.items()},
        }
        scorer = CustomerScorer(config, state, None, None, when, {})
        scores = clv_scores(lines, scorer, when, table=table)
        tot = scores.agg(
            F.count(F.lit(1)).alias("customers"),
            F.sum("expected_purchases").alias("expected_purchases"),
            F.sum(F.col("expected_purchases") * F.col("expected_spend")).alias("revenue"),
            F.sum("clv").alias("clv"),
        ).first()
        t_max = float(summary.agg(F.max("T")).first()[0])
    finally:
        summary.unpersist()
    counts = {
        "customers": int(tot["customers"]),
        "patterns": int(purchase.n_patterns_),
        "spend_pairs": int(spend.n_patterns_),
    }
    if cfg.n_draws:
        clv_notes.append(
            "Spark engine: the CLV totals are sums of every customer's point prediction "
            "(no intervals on the totals)"
        )
    from crmkit.features.rfm import UNIT_DAYS

    settings = {
        "horizon_periods": int(cfg.horizon_periods),
        "period_days": float(cfg.period_days),
        "unit_days": float(UNIT_DAYS[cfg.unit]),
        "discount_rate": float(cfg.discount_rate),
        "margin": float(cfg.margin),
        "n_draws": int(cfg.n_draws),
        "level": float(cfg.level),
        "seed": int(cfg.seed),
    }
    totals = {k: float(tot[k]) for k in ("expected_purchases", "revenue", "clv")}
    params = _plain(
        {
            "as_of": str(when.date()),
            "unit": cfg.unit,
            "purchase_model": cfg.model,
            cfg.model: _model_block(purchase, cfg.model),
            "gamma_gamma": _model_block(spend, "gamma_gamma"),
            "convergence": {
                cfg.model: _asdict(purchase.convergence_),
                "gamma_gamma": _asdict(spend.convergence_),
            },
            "warnings": clv_notes,
            "clv": {"settings": settings, "totals": totals},
            "config": cfg.model_dump(),
            "spark": counts,
        }
    )
    figures = {
        "p_alive.png": clv_plots.plot_p_alive_heatmap(
            purchase, T=t_max if t_max > 0 else 1.0
        ).figure
    }
    result = ClvResult(
        customers=pd.DataFrame(),
        params=params,
        model_name=cfg.model,
        purchase_model=purchase,
        spend_model=spend,
        clv=None,  # type: ignore[arg-type]  # per-customer values stay in Spark
        as_of=when,
        config=cfg,
        figures=figures,
        warnings=clv_notes,
    )
    log_clv_to_mlflow(result)
    mlflow.log_params({"clv.fit": "driver, weighted unique patterns aggregated in Spark"})
    mlflow.log_metrics({f"clv.{k}": float(v) for k, v in counts.items()})
    notes += clv_notes
    return result, state, counts


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


def run_train(
    data: str | os.PathLike,
    config: Any,
    *,
    as_of: object | None = None,
    tracking_uri: str | None = None,
    progress: Callable[[str], None] | None = None,
    register: bool = True,
    spark: SparkSession | None = None,
) -> SparkTrainResult:
    """Run the training job on Spark (module docstring) on the cleaned lines in ``data``.

    Parameters
    ----------
    data
        Cleaned order lines: a Parquet file or a directory of Parquet files (``crmkit
        validate``'s ``lines.parquet``).
    config
        :class:`crmkit.pipelines.config.PipelineConfig` (the sample: its ``spark:`` section).
    as_of
        Training date (default: the last day of the data).
    tracking_uri
        MLflow store (default :func:`crmkit.tracking.default_tracking_uri`).
    progress
        ``callable(str)`` told about each step.
    register
        Register the model and run the gate (``False``: log the model to the run only).
    spark
        The Spark session (default: the active one, or a local one,
        :func:`crmkit.spark.spark_session`).
    """
    import mlflow

    from crmkit.features.kpis import plot_segment_sizes
    from crmkit.pipelines.quality_tracking import tag_quality
    from crmkit.pipelines.train import (
        _flat_params,
        _quality_metrics,
        basket_stage,
        bundle_and_register,
        churn_stage,
        log_segments,
    )
    from crmkit.spark.features import customer_table, default_as_of, read_lines, segment_summary
    from crmkit.spark.session import spark_session
    from crmkit.tracking import configure, log_figure, log_json, stage_run

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    if config.clv.model == "auto":
        raise ConfigError(
            "clv.model auto is not available with the Spark engine (its backtest refits the "
            "models on the lines of several cutoffs); choose bgnbd, mbgnbd or pareto_nbd"
        )
    session = spark or spark_session()
    sc = config.spark
    exp_id = configure(tracking_uri, config.registry.experiment)
    reg = config.registry
    stage_runs: dict[str, str] = {}
    notes: list[str] = []
    prefixes = tuple(config.cleaning.cancellation_prefixes)
    tags = {"crmkit.stage": "train", "crmkit.data": str(data), "crmkit.engine": "spark"}
    with stage_run("train", tags=tags) as parent:
        mlflow.log_dict(config.model_dump(mode="json"), "config.json")
        mlflow.log_params(_flat_params(config.model_dump(mode="json")))
        mlflow.log_params(
            {
                "engine": "spark",
                "spark.version": session.version,
                "spark.master": session.sparkContext.master,
                "churn.fit": "driver, stratified customer sample",
                "basket.rule_miner": "mlxtend on the sample"
                + (" (checked by Spark FP-growth on every basket)" if sc.fpgrowth_check else ""),
                "gate.data": "the sample's lines",
            }
        )

        # 1. validate
        say("validate: reading the cleaned lines")
        lines = read_lines(session, data)
        with stage_run(
            "validate", nested=True, tags={"crmkit.stage": "validate", "crmkit.engine": "spark"}
        ) as run:
            stage_runs["validate"] = run.info.run_id
            report = _validate_stage(lines, data, config)
            log_json(report, "quality_report.json")
            mlflow.log_metrics(_quality_metrics(report))
            tag_quality(report, [run.info.run_id])
            tag_quality(report, [parent.info.run_id], log_report=True)
        when = pd.Timestamp(as_of).normalize() if as_of is not None else default_as_of(lines)
        mlflow.log_param("as_of", str(when.date()))

        # 2. features
        say(f"features at {when.date()} (Spark)")
        with stage_run(
            "features", nested=True, tags={"crmkit.stage": "features", "crmkit.engine": "spark"}
        ) as run:
            stage_runs["features"] = run.info.run_id
            table = customer_table(
                lines, when, config.features, cancellation_prefixes=prefixes
            ).persist()
            segments = segment_summary(table)
            n_customers = int(segments["customers"].sum())
            log_segments(segments, n_customers)
            log_figure(plot_segment_sizes(segments).figure, "segment_sizes.png")
            skipped = (
                "Spark engine: retention KPIs (features/kpis.json) and the cohort heatmap are "
                "not computed (they need every customer's cohort on the driver)"
            )
            mlflow.log_param("features.skipped", "kpis.json, cohort_heatmap.png")
            notes.append(skipped)

        try:
            # 3. CLV on every customer
            say("clv: purchase and spend models on the weighted RFM patterns")
            with stage_run(
                "clv", nested=True, tags={"crmkit.stage": "clv", "crmkit.engine": "spark"}
            ) as run:
                stage_runs["clv"] = run.info.run_id
                _, clv_state, patterns = _spark_clv(table, lines, when, config, notes)

            # the sample of customers for churn, basket and gate
            say(f"sampling at most {sc.sample_customers:,} customers")
            sample = stratified_sample(
                table, sc.sample_customers, seed=sc.sample_seed, bands=sc.order_bands
            )
        finally:
            table.unpersist()
        mlflow.log_params(sample.params())
        log_json(sample.to_dict(), "spark/sample.json")
        mlflow.log_metrics({"sample.size": sample.size, "sample.fraction": sample.fraction})
        say(f"collecting the lines of {sample.size:,} of {sample.population:,} customers")
        local = collect_lines(lines, sample.customers)
        mlflow.log_metric("sample.lines", len(local))
        if sample.size < sample.population:
            notes.append(
                f"Spark engine: churn model, recommender and gate on the lines of a stratified "
                f"sample of {sample.size:,} of {sample.population:,} customers "
                f"({sample.fraction:.2%}, seed {sample.seed}; spark/sample.json)"
            )

        # 4. churn on the sample
        with stage_run(
            "churn", nested=True, tags={"crmkit.stage": "churn", "crmkit.engine": "spark"}
        ) as run:
            stage_runs["churn"] = run.info.run_id
            mlflow.log_params(sample.params())
            churn_scorer = churn_stage(local, when, config, say, notes)

        # 5. basket on the sample (+ FP-growth over every basket)
        rules_check = None
        with stage_run(
            "basket", nested=True, tags={"crmkit.stage": "basket", "crmkit.engine": "spark"}
        ) as run:
            stage_runs["basket"] = run.info.run_id
            mlflow.log_params(
                {
                    **sample.params(),
                    "basket.rule_miner": "mlxtend (the recommender's) on the sample's baskets",
                }
            )
            from crmkit.pipelines.scorer import CustomerScorer

            scores = CustomerScorer(config, clv_state, None, None, when, {}).clv_scores(
                local, when
            )[["p_alive", "clv"]]
            recommender = basket_stage(local, when, config, scores, say, notes)
            if recommender is not None and sc.fpgrowth_check:
                say("basket: FP-growth over every basket (Spark)")
                rc = config.recommend
                full, n_baskets = fpgrowth_rules(
                    lines,
                    when,
                    min_support=rc.min_support,
                    min_confidence=rc.min_confidence,
                    min_lift=rc.min_lift,
                    max_len=rc.max_rule_len,
                )
                rules_check = compare_rules(recommender.rules_, full) | {
                    "baskets_full": n_baskets,
                    "miner_full": "pyspark.ml.fpm.FPGrowth",
                    "miner_sample": f"mlxtend {rc.algorithm}",
                }
                log_json(rules_check, "basket/rules_check.json")
                mlflow.log_metrics(
                    {
                        f"rules_check.{k}": float(v)
                        for k, v in rules_check.items()
                        if isinstance(v, int | float) and v is not None
                    }
                )

        # 6. bundle, register, gate (on the sample's lines)
        scorer, version, promoted, gate = bundle_and_register(
            local, when, config, clv_state, churn_scorer, recommender, register, say, notes
        )
        run_id = parent.info.run_id
    return SparkTrainResult(
        run_id=run_id,
        experiment_id=exp_id,
        as_of=when,
        scorer=scorer,
        model_name=reg.model_name,
        model_version=version,
        promoted=promoted,
        gate=gate,
        stage_runs=stage_runs,
        notes=notes,
        quality=report,
        segments=segments,
        sample=sample,
        n_customers=n_customers,
        clv_patterns=patterns,
        rules_check=rules_check,
    )
