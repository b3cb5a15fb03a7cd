"""The ``implausible_timestamp`` rule on Spark equals the local one (issue 15): lines dated
before ``plausible_from`` (1980), far in the future (2200, representable) or outside the
representable years 1678-2261 (2300, 0001, read at the nearest bound with a note naming the
first rows) are dropped and counted alike; the cleaned lines, the report (counts, notes,
totals) and its warnings equal the local ones, and the default analysis date of the cleaned
lines comes from plausible lines only. Before, Spark kept such lines and reported 0: the
2200 line set the last order date, and year 2300 was read as 1715 (CSV) or overflowed
(Parquet). Inputs: a CSV file (timestamps as text) and a Parquet file (native timestamps)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from crmkit.data.simulate import simulate_transactions
from crmkit.pipelines.config import PipelineConfig
from crmkit.pipelines.features import default_as_of as local_default_as_of
from crmkit.pipelines.validate import run_validate as local_validate

if shutil.which("java") is None:
    pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime", allow_module_level=True)

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

#: Row positions (in the written file, 0-based) and the stray timestamps planted there.
STRAY = {40: "2300-01-01 00:00:00", 90: "0001-01-01 00:00:00", 150: "1980-06-01 12:00:00"}
FUTURE = {200: "2200-01-01 00:00:00"}


def sample() -> pd.DataFrame:
    """Simulated lines with timestamps as text, four of them implausible and large (so that
    the rule also removes more than 1 % of the revenue: a warning)."""
    raw = simulate_transactions(n_customers=40, seed=7).lines.iloc[:400].copy()
    raw["quantity"] = raw["quantity"].astype("float64")
    raw = raw[raw["customer_id"].notna()].reset_index(drop=True)
    ts = raw["order_ts"].dt.strftime("%Y-%m-%d %H:%M:%S").astype(object)
    for i, text in {**STRAY, **FUTURE}.items():
        ts.iloc[i] = text
        raw.loc[i, "quantity"] = 50.0
    raw["order_ts"] = ts
    return raw


def check_same(spark, got, loc, case: str) -> None:
    from crmkit.spark.features import default_as_of, read_lines
    from tests.spark.test_spark_clean import assert_same_lines, assert_same_report

    assert_same_lines(pd.read_parquet(got.lines_path), loc.lines, case)
    want = loc.report.to_dict()
    assert_same_report(got.report.to_dict(), want, case)
    assert got.report.warnings == loc.report.warnings, case
    rule = {r["rule"]: r for r in want["rules"]}["implausible_timestamp"]
    assert rule["rows_dropped"] == rule["matched_in_input"] == 4, case
    assert any("implausible_timestamp" in w for w in loc.report.warnings), case
    assert any("outside the representable years 1678-2261" in n for n in want["notes"]), case
    last = pd.Timestamp(want["totals"]["last_order_ts"])
    assert pd.Timestamp("2022-01-01") < last < pd.Timestamp("2024-01-01"), case
    when = default_as_of(read_lines(spark, got.lines_path))
    assert when == local_default_as_of(loc.lines) == last.normalize(), case


def test_implausible_timestamps_csv(spark, tmp_path):
    from crmkit.spark.clean import run_validate

    path = tmp_path / "orders.csv"
    sample().to_csv(path, index=False)
    loc = local_validate(path, tmp_path / "local", PipelineConfig())
    got = run_validate(path, tmp_path / "spark", PipelineConfig())
    check_same(spark, got, loc, "CSV")
    note = next(n for n in loc.report.notes if "representable" in n)
    assert "row 41: '2300-01-01 00:00:00'" in note and "row 91: '0001-01-01" in note


def test_implausible_timestamps_parquet(spark, tmp_path):
    from crmkit.spark.clean import run_validate

    raw = sample()
    raw["order_ts"] = pd.to_datetime(raw["order_ts"], format="%Y-%m-%d %H:%M:%S").astype(
        "datetime64[us]"
    )
    path = tmp_path / "orders.parquet"
    raw.to_parquet(path, index=False)
    loc = local_validate(path, tmp_path / "local", PipelineConfig())
    got = run_validate(path, tmp_path / "spark", PipelineConfig())
    check_same(spark, got, loc, "Parquet")
    note = next(n for n in loc.report.notes if "representable" in n)
    assert "row 41: Timestamp('2300-01-01 00:00:00')" in note
    # a Spark DataFrame in canonical columns (no reader): the same rule, no overflow
    from crmkit.spark.clean import clean_lines

    frame = spark.read.parquet(str(path))
    lines, report = clean_lines(frame.withColumn("amount", frame.quantity * frame.unit_price))
    rule = report.rule("implausible_timestamp")
    assert rule["rows_dropped"] == rule["matched_in_input"] == 4
    assert lines.count() == len(loc.lines)
