"""The Spark engine's recommendation lists equal the local engine's: a recommender fitted
locally, applied by ``Recommender.recommend_for`` and by ``crmkit.spark.recommend.
recommendations`` on groups of customers (several buckets, so customers really are split),
gives identical ids, ranks, products, kinds and reasons and the same scores, on the simulated
sample (new products since training, customer scores with gaps) and on Online Retail read from
a directory of Parquet files; the population-level quantities are the whole population's."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pandas as pd
import pytest

from crmkit.data.clean import clean_lines
from crmkit.data.io import load_transactions
from crmkit.errors import DataContractError
from crmkit.models.recommend import RECOMMENDATION_COLUMNS, Recommender
from tests.models.test_recommend_population import AS_OF, LATER, lines_with_new_products

if shutil.which("java") is None:
    pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime", allow_module_level=True)

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


def spark_lists(spark, lines_path, rec, as_of, tmp, scores_path=None, buckets=5) -> pd.DataFrame:
    """The Spark lists as written (group order), read back with pandas."""
    from crmkit.spark import read_lines
    from crmkit.spark.recommend import recommendations

    scores = spark.read.parquet(str(scores_path)) if scores_path is not None else None
    out = recommendations(read_lines(spark, lines_path), rec, as_of, scores, buckets=buckets)
    assert out.columns == list(RECOMMENDATION_COLUMNS)
    out.write.parquet(str(tmp))
    return pd.read_parquet(tmp)


def assert_same_lists(local: pd.DataFrame, got: pd.DataFrame, case: str) -> None:
    # as written: a customer's rows together, in rank order
    runs = got["customer_id"].ne(got["customer_id"].shift()).cumsum()
    assert runs.iloc[-1] == got["customer_id"].nunique(), case
    first = runs.ne(runs.shift())
    assert (got["rank"].where(first, 1) == 1).all(), case
    assert (got["rank"].diff().where(~first, 1) == 1).all(), case
    got = got.sort_values(["customer_id", "rank"], kind="stable").reset_index(drop=True)
    assert list(got.columns) == list(local.columns) == list(RECOMMENDATION_COLUMNS), case
    assert got["rank"].dtype == np.int64 and got["score"].dtype == np.float64, case
    assert len(got) == len(local), (case, len(got), len(local))
    for col in ("customer_id", "rank", "product_id", "kind", "reason"):
        w, h = local[col].astype(object).tolist(), got[col].astype(object).tolist()
        assert w == h, (case, col, next(i for i, (a, b) in enumerate(zip(w, h)) if a != b))
    # Scores bit for bit, by construction: both engines run Recommender.recommend_for on
    # whole customers with the population's statistics, and every score is computed row by
    # row with elementwise operations in a fixed order - no BLAS product whose summation order
    # depends on the rows scored together (_Logit.predict; a float32 X @ w differed here by
    # up to 1e-6 relative on an AVX-512 CPU) - so ids and ranks cannot flip on a rounding.
    w, h = local["score"].to_numpy(), got["score"].to_numpy()
    assert np.all(np.abs(w - h) <= 1e-9 * np.maximum(1.0, np.abs(w))), case
    assert np.array_equal(w, h), (case, np.abs(w - h).max())


def test_spark_lists_equal_the_local_ones_on_the_sample(spark, tmp_path):
    from crmkit.spark import read_lines
    from crmkit.spark.recommend import recommendations

    # learned at AS_OF, applied at LATER with products renamed since (new products, one with
    # a category unknown at training) and scores with gaps
    lines = lines_with_new_products(1200, 11, 10)
    late = lines["order_ts"] > pd.Timestamp(AS_OF) + pd.Timedelta(days=1)
    lines.to_parquet(tmp_path / "lines.parquet", index=False)
    ids = pd.unique(lines["customer_id"])
    rng = np.random.default_rng(7)
    scores = pd.DataFrame(
        {
            "customer_id": [*ids, "NO-LINES"],
            "p_alive": [*rng.uniform(0.05, 1.0, len(ids)), 0.5],
            "clv": [*rng.gamma(2.0, 80.0, len(ids)), 1e6],  # not a customer: not in the mean
        }
    )
    scores.loc[3, "clv"] = np.nan
    scores.loc[5, "clv"] = -1.0
    scores.loc[8, "p_alive"] = np.nan
    scores = scores.drop(index=11)  # a customer without scores
    scores.to_parquet(tmp_path / "scores.parquet", index=False)
    rec = Recommender().fit(lines[~late], AS_OF, customer_scores=scores)
    size = len(pickle.dumps(rec._learned_only()))
    print(f"\nsample recommender pickled for the executors: {size / 1e6:.2f} MB")
    assert size < 3_000_000
    local = rec.recommend_for(lines, LATER, scores)
    assert {"cross_sell", "up_sell", "resell", "reactivation"} <= set(local["kind"])
    assert local["product_id"].str.endswith("-v2").sum() > 20  # new products are re-sold
    got = spark_lists(
        spark, tmp_path / "lines.parquet", rec, LATER, tmp_path / "s1", tmp_path / "scores.parquet"
    )
    assert_same_lists(local, got, "sample, scores, 5 buckets")
    # the population matters: a group's lines on their own give other lists
    some = set(pd.unique(got["customer_id"])[: got["customer_id"].nunique() // 5])
    alone = rec.recommend_for(lines[lines["customer_id"].isin(some)], LATER, scores)
    mine = local[local["customer_id"].isin(some)].reset_index(drop=True)
    assert len(mine) > 1000 and not alone.equals(mine)

    # clear errors
    sample = read_lines(spark, tmp_path / "lines.parquet")
    with pytest.raises(DataContractError) as err:
        recommendations(sample.drop("product_id"), rec, LATER)
    assert err.value.rule == "order_level_log" and err.value.column == "product_id"
    with pytest.raises(DataContractError) as err:
        recommendations(sample, rec, "2021-06-30")
    assert err.value.rule == "empty_window"
    from pyspark.sql import functions as F

    shared = sample.withColumn("order_id", F.lit("O1"))
    with pytest.raises(DataContractError) as err:
        recommendations(shared, rec, LATER)
    assert err.value.rule == "order_customers" and err.value.column == "order_id"
    twice = spark.read.parquet(str(tmp_path / "scores.parquet"))
    with pytest.raises(DataContractError) as err:
        recommendations(sample, rec, LATER, twice.unionByName(twice.limit(1)))
    assert err.value.rule == "duplicate_customer"


def test_spark_lists_equal_the_local_ones_on_online_retail(spark, tmp_path, shared_data):
    """Learned to 2011-08-31 (value per unit, 8 per list), applied at 2011-12-09 (new
    customers and products), read from a directory of two Parquet files (the lines before and
    from 2011-07-01, in file order), without scores, in 4 buckets."""
    retail = clean_lines(load_transactions(shared_data / "online_retail.parquet")).lines
    parts = tmp_path / "lines"
    parts.mkdir()
    split = int(np.searchsorted(retail["order_ts"].to_numpy(), np.datetime64("2011-07-01")))
    assert retail["order_ts"].is_monotonic_increasing and 0 < split < len(retail)
    retail.iloc[:split].to_parquet(parts / "lines-a.parquet", index=False)
    retail.iloc[split:].to_parquet(parts / "lines-b.parquet", index=False)
    rec = Recommender(value_per="unit", top_n=8)
    rec.fit(retail[retail["order_ts"] < "2011-09-01"], "2011-08-31")
    size = len(pickle.dumps(rec._learned_only()))
    print(f"Online Retail recommender pickled for the executors: {size / 1e6:.2f} MB")
    local = rec.recommend_for(retail, "2011-12-09")
    assert local["customer_id"].nunique() == 4334 and "reactivation" in set(local["kind"])
    new = set(retail["product_id"]) - set(rec.products_.index)
    assert local["product_id"].isin(new).sum() > 20
    got = spark_lists(spark, parts, rec, "2011-12-09", tmp_path / "r", buckets=4)
    assert_same_lists(local, got, "Online Retail, no scores, 4 buckets")
