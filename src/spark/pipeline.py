"""``crmkit features --engine spark``: the customer table from cleaned lines, on Spark."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from crmkit.data.io import staged_output
from crmkit.pipelines.features import FeaturesConfig
from crmkit.spark.features import (
    customer_table,
    default_as_of,
    read_lines,
    segment_summary,
    write_customers,
)
from crmkit.spark.session import spark_session

__all__ = ["SparkFeaturesResult", "run_features"]


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
    spark = spark_session()
    lines = read_lines(spark, data)
    when = pd.Timestamp(as_of) if as_of is not None else default_as_of(lines)
    table = customer_table(lines, when, config, cancellation_prefixes=cancellation_prefixes)
    with staged_output(out_dir) as stage:
        path = Path(stage) / "customers.parquet"
        write_customers(table, path)
        # summarised from the written table, so that the features are computed once
        segments = segment_summary(spark.read.parquet(str(path)))
        segments.to_csv(Path(stage) / "segments.csv")
    return SparkFeaturesResult(when, int(segments["customers"].sum()), segments)
