"""The Spark engine's commands: ``crmkit features --engine spark`` (the customer table from
cleaned lines) and ``crmkit score --engine spark`` (every customer scored with the registered
model)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from crmkit.data.io import staged_output
from crmkit.data.output import write_csv
from crmkit.errors import DataContractError
from crmkit.features.segments import DEFAULT_SEGMENT_RULES
from crmkit.models.actions import ACTIONS
from crmkit.models.p_alive import P_ALIVE_MEANING
from crmkit.pipelines.features import FeaturesConfig
from crmkit.spark.features import (
    customer_table,
    default_as_of,
    read_lines,
    segment_summary,
    write_customers,
)
from crmkit.spark.session import spark_session

__all__ = ["SparkFeaturesResult", "SparkScoreRun", "run_features", "run_score", "score_summary"]


def _check_out(out_dir: str | os.PathLike) -> None:
    """OUT is a folder on a file system the driver and the executors share (local disk in
    local mode, e.g. NFS or a /dbfs mount on a cluster): the all-or-nothing staging renames
    folders, which object stores cannot do."""
    if "://" in str(out_dir):
        raise DataContractError(
            f"--out {out_dir} is a URI: the Spark engine writes OUT all-or-nothing by renaming "
            "a staging folder, which needs a file system path shared by the driver and the "
            "executors (local disk in local mode; NFS or a mounted bucket on a cluster)",
            rule="output_dir",
            hint="pass a mounted path, or call crmkit.spark functions and write the "
            "DataFrames to the object store yourself (docs/spark.md)",
        )


@dataclass
class SparkFeaturesResult:
    """What :func:`run_features` wrote: the analysis date, the number of customers and the
    segment table (small; the customer table itself stays in Parquet)."""

    as_of: pd.Timestamp
    n_customers: int
    segments: pd.DataFrame


def run_features(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: FeaturesConfig,
    as_of: object | None = None,
    *,
    cancellation_prefixes: tuple[str, ...] = ("C",),
) -> SparkFeaturesResult:
    """Compute the customer table of the cleaned lines in ``data`` (a Parquet file or a
    directory of them, e.g. the ``lines.parquet`` of ``crmkit validate``) with Spark and write
    ``out_dir/customers.parquet`` (a Parquet data set, sorted by ``customer_id``) and
    ``out_dir/segments.csv``, all-or-nothing. Uses the active Spark session, or starts one
    (:func:`crmkit.spark.session.spark_session`)."""
    _check_out(out_dir)
    spark = spark_session()
    lines = read_lines(spark, data)
    when = pd.Timestamp(as_of) if as_of is not None else default_as_of(lines)
    table = customer_table(lines, when, config, cancellation_prefixes=cancellation_prefixes)
    with staged_output(out_dir) as stage:
        path = Path(stage) / "customers.parquet"
        write_customers(table, path)
        # summarised from the written table, so that the features are computed once
        segments = segment_summary(spark.read.parquet(str(path)))
        write_csv(segments, Path(stage) / "segments.csv", index=True)
    return SparkFeaturesResult(when, int(segments["customers"].sum()), segments)


# --------------------------------------------------------------------------------------------
# crmkit score --engine spark


@dataclass
class SparkScoreRun:
    """What :func:`run_score` wrote: the summary (``summary.json``), the model, the audience
    sizes, the output folder and the MLflow run (the tables stay in Parquet)."""

    summary: dict
    model: dict
    audiences: dict[str, int]
    out_dir: Path
    run_id: str | None
    notes: list[str]


def score_summary(customers: DataFrame, n_recommendations: int, as_of: pd.Timestamp) -> dict:
    """:meth:`crmkit.pipelines.scorer.ScoreOutput.summary` of a Spark customers table, from
    one aggregation and two small group counts (segments, next best actions; every segment
    rule and action listed, empty ones with 0, as the local categoricals do)."""
    row = customers.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("clv").alias("clv"),
        F.sum("expected_purchases").alias("ep"),
        F.sum((F.col("churn_risk_band") == "high").cast("long")).alias("high"),
    ).first()
    n = int(row["n"])

    def counts(col: str, names: Sequence[str]) -> dict[str, int]:
        # every name of the local categorical (empty ones too), largest first
        got = {str(r[col]): int(r["count"]) for r in customers.groupBy(col).count().collect()}
        full = {name: got.pop(name, 0) for name in names} | got
        return dict(sorted(full.items(), key=lambda kv: -kv[1]))

    clv = float(row["clv"] or 0.0)
    return {
        "as_of": str(as_of.date()),
        "customers": n,
        "segments": counts("segment", [r.name for r in DEFAULT_SEGMENT_RULES]),
        "next_best_action": counts("next_best_action", ACTIONS),
        "clv_total": clv,
        "clv_mean": clv / n if n else 0.0,
        "expected_purchases_total": float(row["ep"] or 0.0),
        "churn_high_risk": int(row["high"] or 0),
        "recommendations": int(n_recommendations),
        "p_alive": P_ALIVE_MEANING,
    }


def _empty_recommendations(spark: Any) -> DataFrame:
    from crmkit.spark.recommend import RECOMMENDATION_SCHEMA

    return spark.createDataFrame([], RECOMMENDATION_SCHEMA)


def run_score(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_uri: str | None = None,
    as_of: object | None = None,
    config: Any = None,
    fmt: str | None = None,
    progress: Callable[[str], None] | None = None,
    track: bool = True,
    trust_model_dir: bool = False,
) -> SparkScoreRun:
    """``crmkit score --engine spark``: score every customer of the cleaned lines in ``data``
    (a Parquet file or a directory of them) with the registered model, on Spark.

    The same model, definitions and outputs as :func:`crmkit.pipelines.score.run_score`:
    the customer scores (:func:`crmkit.spark.score.customer_scores`: features, CLV, churn),
    the ranked recommendation lists (:func:`crmkit.spark.recommend.recommendations`) and the
    next best actions and audiences (:mod:`crmkit.spark.actions`) are computed with Spark
    DataFrame operations and pandas UDFs running the local model code on groups of customers;
    only small tables (fitted parameters, thresholds, counts) reach the driver. ``out_dir``
    gets, all-or-nothing, ``customers.parquet`` and ``recommendations.parquet`` (Parquet data
    sets sorted by customer id, then rank; the local columns, with strings for the local
    categoricals), ``audiences/`` and ``summary.json``. The run is recorded in MLflow as the
    local one (tag ``crmkit.engine=spark``), FAILED when it fails. The model loads under
    the local rules: a model folder only with ``trust_model_dir`` (its fingerprint is
    printed and logged).
    """
    from crmkit.pipelines.score import load_scorer, log_score_run, maybe_run
    from crmkit.pipelines.scorer import CUSTOMER_COLUMNS
    from crmkit.spark.actions import build_audiences, next_best_actions, write_audiences
    from crmkit.spark.recommend import recommendations
    from crmkit.spark.score import customer_scores

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    score_cfg = config.score if config is not None else None
    uri = model_uri or (score_cfg.model if score_cfg else "models:/crmkit-customer-scorer@champion")
    fmt = fmt or (score_cfg.format if score_cfg else "parquet")
    if fmt != "parquet":
        raise DataContractError(
            f"the Spark engine writes Parquet data sets only, got --format {fmt!r}",
            rule="format",
            hint="drop --format, or score with --engine local for CSV files",
        )
    _check_out(out_dir)
    say(f"loading model {uri}")
    scorer, info = load_scorer(uri, trust_model_dir=trust_model_dir)
    if info.get("sha256"):
        say(f"model folder {uri}: sha256 {info['sha256']}")
    with maybe_run(track, info) as run:
        if run is not None:
            import mlflow

            mlflow.set_tag("crmkit.engine", "spark")
        spark = spark_session()
        say(f"reading {data}")
        lines = read_lines(spark, data)
        notes: list[str] = []  # customer_scores checks the input as the local scorer does
        when = pd.Timestamp(as_of).normalize() if as_of is not None else default_as_of(lines)
        with staged_output(out_dir, kind="score") as stage:  # the local score's set
            stage = Path(stage)
            work = stage / "_work"
            say("customer scores: features, CLV, churn")
            scored = customer_scores(lines, scorer, when, notes=notes)
            scored.write.parquet(str(work / "scores.parquet"))
            scores = spark.read.parquet(str(work / "scores.parquet"))
            recs_path = str(stage / "recommendations.parquet")
            if scorer.recommender is not None:
                say("recommendations: ranked lists per customer")
                recs = recommendations(
                    lines, scorer.recommender, when, scores.select("customer_id", "p_alive", "clv")
                )
            else:
                recs = _empty_recommendations(spark)
                notes.append("no recommender in this bundle")
            recs.orderBy("customer_id", "rank").write.parquet(recs_path)
            recs = spark.read.parquet(recs_path)
            say("next best action")
            # a p_alive that is not a measurement is missing; the actions read it as 1, as
            # the local scorer does (crmkit.models.p_alive)
            acts = next_best_actions(
                scores.withColumn("_p_alive", F.col("p_alive")).fillna({"p_alive": 1.0}),
                recs,
                scorer.config.actions,
            ).withColumn("p_alive", F.col("_p_alive"))
            cust_path = str(stage / "customers.parquet")
            acts.select(*CUSTOMER_COLUMNS).orderBy("customer_id").write.parquet(cust_path)
            customers = spark.read.parquet(cust_path)
            unscored = customers.where(F.col("churn_probability").isNull()).count()
            if scorer.churn is not None and unscored:
                notes.append(
                    f"{unscored:,} customers are outside the churn model's scored-customer "
                    "rule and have no churn probability"
                )
            say("audiences")
            audiences = build_audiences(customers)
            index = write_audiences(audiences, stage / "audiences", fmt="parquet")
            summary = score_summary(customers, recs.count(), when)
            summary["model"] = info
            summary["notes"] = notes
            summary["audiences"] = {a: int(v["rows"]) for a, v in index["actions"].items()}
            (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
            shutil.rmtree(work)
            say(f"writing {out_dir}")
        run_id = log_score_run(run, info, summary, fmt)
    return SparkScoreRun(summary, info, summary["audiences"], Path(out_dir), run_id, notes)
