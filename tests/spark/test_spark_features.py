"""The Spark engine's customer table equals the local engine's: identical customer ids,
counts, days, scores and segments, the float sums behind the quantile scores bit for bit, and
every other number within 1e-9 (relative above 1), on the simulated sample (through
``crmkit validate`` and ``crmkit features --engine spark``, and with returns kept, fixed
scores and weeks) and on Online Retail read from a directory of Parquet files.

The ``spark`` fixture (``tests/spark/conftest.py``) is one session per test process; every
Spark test is in the ``xdist_group`` "spark", so under ``pytest -n 2 --dist loadgroup`` they
all run on one worker and the session starts once (~15-20 s)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from crmkit.cli import app
from crmkit.data.clean import CleaningConfig, clean_lines
from crmkit.errors import DataContractError
from crmkit.features.segments import segment_summary as local_segment_summary
from crmkit.pipelines.features import FeaturesConfig
from crmkit.pipelines.features import customer_table as local_customer_table
from tests.conftest import SHARED_DATA

if shutil.which("java") is None:
    pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime", allow_module_level=True)

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
    # PySpark 4.3 warns on import that pandas 3 is "not yet fully supported"; the engine uses
    # no pandas UDF, and toPandas only on the small segment table (checked below).
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

#: Float sums that feed a quantile score: computed in the local engine's order, bit-identical.
EXACT_FLOATS = ("total_spend", "avg_order_value", "frequency", "recency", "T")


def assert_same_table(local: pd.DataFrame, got: pd.DataFrame, case: str) -> None:
    """``got`` (read back from the Spark engine's Parquet) equals the local customer table."""
    loc = local.reset_index()
    assert list(got.columns) == list(loc.columns), case
    assert got["customer_id"].tolist() == loc["customer_id"].tolist(), case
    for col in loc.columns:
        want, have = loc[col], got[col]
        if pd.api.types.is_float_dtype(want.dtype):
            assert have.dtype == np.float64, (case, col, have.dtype)
            w, h = want.to_numpy(), have.to_numpy()
            if col in EXACT_FLOATS:
                assert np.array_equal(w, h), (case, col, np.abs(w - h).max())
            diff = np.abs(w - h) / np.maximum(1.0, np.abs(w))
            assert diff.max() <= 1e-9, (case, col, diff.max())
        elif pd.api.types.is_integer_dtype(want.dtype):
            assert have.dtype == np.int64, (case, col, have.dtype)
            assert np.array_equal(want.to_numpy(), have.to_numpy()), (case, col)
        else:  # rfm_cell, segment, country, channel (categoricals are strings in Spark)
            w = want.astype(object).where(want.notna(), None).tolist()
            h = have.astype(object).where(have.notna(), None).tolist()
            assert w == h, (case, col)


def spark_table(spark, lines_path, as_of, config, out, **kwargs) -> pd.DataFrame:
    from crmkit.spark import customer_table, read_lines, write_customers

    write_customers(customer_table(read_lines(spark, lines_path), as_of, config, **kwargs), out)
    return pd.read_parquet(out)


def test_spark_customer_table_equals_the_local_one(spark, tmp_path):
    from crmkit.data.simulate import simulate_transactions
    from crmkit.spark import customer_table, read_lines

    runner = CliRunner()
    raw = simulate_transactions(n_customers=1500, seed=11).lines

    # 1. the sample data through the CLI: validate (local), then features --engine spark
    raw.to_csv(tmp_path / "orders.csv", index=False)
    res = runner.invoke(
        app, ["validate", str(tmp_path / "orders.csv"), "--out", str(tmp_path / "v")]
    )
    assert res.exit_code == 0, res.output
    lines_file = tmp_path / "v" / "lines.parquet"
    out = tmp_path / "feat"
    args = ["features", str(lines_file), "--engine", "spark", "--as-of", "2023-06-30"]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = pd.read_parquet(lines_file)
    local = local_customer_table(lines, "2023-06-30")
    assert f"Segments at 2023-06-30 ({len(local):,} customers)" in res.output
    assert_same_table(local, pd.read_parquet(out / "customers.parquet"), "sample, CLI")
    segments = pd.read_csv(out / "segments.csv", index_col="segment")
    pd.testing.assert_frame_equal(
        segments, local_segment_summary(local), check_dtype=False, rtol=1e-12
    )
    assert segments["customers"].sum() == len(local) and len(segments) == 9

    # 2. returns kept (negative lines, cancelled orders), fixed scores on total spend, weeks,
    #    an analysis instant inside a day
    net = clean_lines(raw, CleaningConfig(returns="net")).lines
    assert (net["quantity"] < 0).sum() > 20
    net.to_parquet(tmp_path / "net.parquet", index=False)
    cfg = FeaturesConfig(unit="W", scoring="fixed", monetary="total_spend")
    as_of = "2023-09-30 12:30:00"
    got = spark_table(spark, tmp_path / "net.parquet", as_of, cfg, tmp_path / "net_out")
    local = local_customer_table(net, as_of, cfg)
    assert (local["cancellation_rate"] > 0).sum() > 10  # the cancelled-order path is exercised
    assert_same_table(local, got, "sample, returns net")

    # 3. clear errors, as the local engine's
    sample = read_lines(spark, lines_file)
    with pytest.raises(DataContractError) as err:
        customer_table(sample.drop("amount"), "2023-06-30")
    assert err.value.column == "amount" and err.value.rule == "required_column"
    with pytest.raises(DataContractError, match="no purchases on or before") as err:
        customer_table(sample, "2021-06-30")
    assert err.value.rule == "empty_window"

    # 4. Online Retail, cleaned as usual, read from a directory of three Parquet files
    if not SHARED_DATA.is_dir():
        pytest.skip(f"Online Retail not found at {SHARED_DATA}; the sample data checks passed")
    from crmkit.data.io import load_transactions

    retail = clean_lines(load_transactions(SHARED_DATA / "online_retail.parquet")).lines
    parts = tmp_path / "retail_lines"
    parts.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(len(retail)), 3)):
        retail.iloc[chunk].to_parquet(parts / f"part-{i}.parquet", index=False)
    got = spark_table(spark, parts, "2011-12-09", None, tmp_path / "retail_out")
    local = local_customer_table(retail, "2011-12-09")
    assert len(local) == 4334
    assert local["avg_order_value"].duplicated().sum() > 10  # ties at score boundaries matter
    assert_same_table(local, got, "Online Retail")


def test_quantile_scores_are_exact_over_many_range_partitions(spark, tmp_path):
    """The distributed quantile ranking (range partitions, local positions, offsets from the
    rows per partition) gives the local engine's scores with heavy ties, -0.0 and customers
    spread over many partitions, and the former one-window ranking's scores with nulls and
    NaN (which the local engine rejects); the customer table is unchanged on 7 partitions."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from crmkit.features.segments import _quintile_scores as local_quintiles
    from crmkit.spark.features import _quintile_scores, _with_quintile

    def one_window(df, name, worst_first):  # the former ranking: one task over all rows
        ranked = Window.orderBy(*worst_first, F.col("customer_id").asc())
        return (
            df.withColumn("_rank", F.row_number().over(ranked) - 1)
            .withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy()))
            .withColumn(name, F.expr("((cast(_rank AS BIGINT) * 5) div _n) + 1"))
        )

    rng = np.random.default_rng(3)
    n = 4003
    ids = np.array([f"c{i:05d}" for i in range(n)])
    frame = pd.DataFrame(
        {
            "customer_id": ids[rng.permutation(n)],
            "days": rng.integers(0, 6, n),  # 6 values: ~670 ties each
            "spend": np.round(rng.gamma(1.0, 20.0, n), 0) * rng.choice([-1.0, 1.0], n),
        }
    )
    frame.loc[frame["spend"] == 0, "spend"] = rng.choice([0.0, -0.0], (frame["spend"] == 0).sum())
    assert np.signbit(frame["spend"]).sum() > np.signbit(frame["spend"][frame["spend"] != 0]).sum()
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "7")
    try:
        df = spark.createDataFrame(frame).repartition(5)
        specs = {"r": [F.col("days").desc()], "m": [F.col("spend").asc()]}
        got = _quintile_scores(df, specs).toPandas().set_index("customer_id").sort_index()
        want = frame.set_index("customer_id").sort_index()  # local: ties in id order
        assert list(got.columns) == ["days", "spend", "r", "m"]
        assert np.array_equal(got["r"], local_quintiles(-want["days"].to_numpy(np.float64)))
        assert np.array_equal(got["m"], local_quintiles(want["spend"].to_numpy()))
        assert np.bincount(got["r"])[1:].tolist() == [801, 801, 800, 801, 800]

        # nulls and NaN, several sort keys: as the former one-window ranking
        frame.loc[rng.choice(n, 60, replace=False), "spend"] = np.nan
        holes = spark.createDataFrame(frame).withColumn(
            "days", F.when(F.col("customer_id") < "c00100", None).otherwise(F.col("days"))
        )
        for worst_first in (
            [F.col("spend").desc()],
            [F.col("days").asc(), F.col("spend").desc_nulls_first()],
            [F.col("days").desc_nulls_last(), F.col("spend").asc_nulls_last()],
        ):
            got = _with_quintile(holes, "s", worst_first).toPandas().set_index("customer_id")
            ref = one_window(holes, "s", worst_first).toPandas().set_index("customer_id")
            assert got["s"].sort_index().tolist() == ref["s"].sort_index().tolist()
        with pytest.raises(DataContractError) as err:
            _with_quintile(holes.withColumn("customer_id", F.lit(None).cast("string")), "s", [])
        assert err.value.column == "customer_id"
        empty = _with_quintile(holes.where(F.lit(False)), "s", [F.col("spend").asc()])
        assert empty.columns == [*holes.columns, "s"] and empty.count() == 0

        # the customer table on 7 range partitions equals the local one
        from crmkit.data.simulate import simulate_transactions

        lines = clean_lines(simulate_transactions(n_customers=800, seed=4).lines).lines
        lines.to_parquet(tmp_path / "lines.parquet", index=False)
        cfg = FeaturesConfig(monetary="total_spend")
        got = spark_table(spark, tmp_path / "lines.parquet", "2023-06-30", cfg, tmp_path / "o")
        assert_same_table(local_customer_table(lines, "2023-06-30", cfg), got, "7 partitions")
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
