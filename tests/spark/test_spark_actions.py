"""The Spark engine's next best actions and audiences equal the local ones: the quantile
thresholds bit for bit (numpy's linear interpolation of order statistics found by exact rank
on Spark), every customer's action, product and value, and the audiences' members, ranks,
files and ``index.json``, on the simulated sample scored locally (features, a BG/NBD fit,
recommendation lists; many ties in CLV and spend), with the customers split over 7 groups and
the value ranges over several tasks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from crmkit.errors import DataContractError
from crmkit.models.actions import (
    AUDIENCE_ACTIONS,
    AUDIENCE_COLUMNS,
    NextBestActionConfig,
    action_thresholds,
    assign_next_best_action,
    build_audiences,
    read_audience,
    write_audiences,
)

if shutil.which("java") is None:
    pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime", allow_module_level=True)

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    # PySpark's pandas conversion passes pandas 3's deprecated copy= keyword
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

AS_OF = "2023-06-30"
#: Small value ranges and several customer groups, so that the distributed paths really split.
RANGE_ROWS = 97
GROUPS = 7


@pytest.fixture(scope="module")
def scored() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The customer table and recommendation lists of a local scoring of the sample data."""
    from crmkit.data.clean import clean_lines
    from crmkit.data.simulate import simulate_transactions
    from crmkit.models.clv import BetaGeo
    from crmkit.models.recommend import recommend
    from crmkit.pipelines.features import customer_table

    lines = clean_lines(simulate_transactions(n_customers=1500, seed=11).lines).lines
    table = customer_table(lines, AS_OF)
    bg = BetaGeo().fit(table)
    cust = table.reset_index()[
        ["customer_id", "segment", "r_score", "f_score", "m_score", "frequency", "recency"]
        + ["T", "monetary_value", "total_spend"]
    ]
    cust["segment"] = cust["segment"].astype("str")
    cust["p_alive"] = bg.conditional_probability_alive(table).to_numpy()
    cust["expected_purchases"] = bg.conditional_expected_number_of_purchases_up_to_time(
        12.0, table
    ).to_numpy()
    # rounded to the cent: ties, and a block of zeros (one-time buyers' monetary value is 0)
    cust["clv"] = np.round(cust["expected_purchases"] * cust["monetary_value"], 2)
    rng = np.random.default_rng(3)
    churn = np.round(np.clip(1 - cust["p_alive"] + rng.normal(0, 0.1, len(cust)), 0, 1), 2)
    churn[rng.uniform(size=len(cust)) < 0.1] = np.nan  # outside the churn model: 1 - p_alive
    cust["churn_probability"] = churn
    band = pd.Series(np.where(churn >= 0.8, "high", np.where(churn >= 0.5, "medium", "low")))
    cust["churn_risk_band"] = band.where(~np.isnan(churn), None).astype("str")
    recs = recommend(
        lines, AS_OF, customer_scores=cust.set_index("customer_id")[["p_alive", "clv"]]
    )
    # a product id that CSV must quote, and a row of a customer outside the table
    top = recs.loc[recs["rank"] == 1, "product_id"].value_counts().index[0]
    recs["product_id"] = recs["product_id"].replace(top, 'P,"quoted"')
    stranger = recs.iloc[[0]].assign(customer_id="STRANGER", score=1e6)
    recs = pd.concat([recs, stranger], ignore_index=True)
    assert cust["clv"].duplicated().sum() > 300 and cust["total_spend"].duplicated().sum() > 10
    return cust, recs


@pytest.fixture(scope="module", autouse=True)
def arrow(spark):
    """Arrow for createDataFrame / toPandas in this module (restored after it)."""
    key = "spark.sql.execution.arrow.pyspark.enabled"
    before = spark.conf.get(key, "false")
    spark.conf.set(key, "true")
    yield
    spark.conf.set(key, before)


def _spark_frames(spark, cust: pd.DataFrame, recs: pd.DataFrame):
    c = cust.astype({"churn_risk_band": object})
    c["churn_risk_band"] = c["churn_risk_band"].where(cust["churn_risk_band"].notna(), None)
    return spark.createDataFrame(c), spark.createDataFrame(recs)


def test_numpy_interpolation_of_two_order_statistics_is_numpy_quantile():
    """The driver-side formula on the two order statistics equals np.quantile bit for bit."""
    from crmkit.spark.actions import _lerp, _linear_ranks

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(3000):
        n = int(rng.integers(1, 60))
        v = np.sort(rng.choice([rng.normal(), rng.gamma(0.5, 1e3), 0.1, -0.0], n))
        for q in (
            float(rng.uniform()),
            0.0,
            1.0,
            0.5,
            0.75,
            float(rng.integers(0, n)) / max(n - 1, 1),
        ):
            i, j, t = _linear_ranks(n, q)
            got = _lerp(v[i], v[j], t)
            want = np.quantile(v, q)
            assert got == want or (np.isnan(got) and np.isnan(want)), (n, q, got, want)
            checked += 1
    assert checked == 18000


def test_exact_quantiles_on_spark(spark):
    from crmkit.spark.actions import exact_quantiles

    rng = np.random.default_rng(1)
    v = np.concatenate([np.round(rng.gamma(0.7, 50.0, 900), 1), np.zeros(300), np.full(50, 123.4)])
    rng.shuffle(v)
    w = rng.normal(0, 1, len(v))  # no ties, negative values
    df = spark.createDataFrame(pd.DataFrame({"v": v, "w": w, "k": np.arange(len(v))}))
    qs = [0.0, 0.1, 0.25, 0.3, 0.5, 2 / 3, 0.75, 0.9, 0.999, 1.0, 600 / 1249]
    want = {
        "v": [float(np.quantile(v, q)) for q in qs],
        "w": [float(np.quantile(w, q)) for q in qs],
    }
    for rows in (40, 10**6):  # 32 value ranges; one
        assert exact_quantiles(df, {"v": qs, "w": qs}, rows_per_bucket=rows) == want, rows
    one = spark.createDataFrame(pd.DataFrame({"v": [2.5]}))
    assert exact_quantiles(one, {"v": [0.0, 0.5, 1.0]}) == {"v": [2.5, 2.5, 2.5]}
    assert exact_quantiles(df.where("k < 0"), {"v": [0.5]}) == {"v": [None]}


def test_next_best_actions_and_audiences_equal_the_local_ones(spark, scored, tmp_path):
    from crmkit.spark import actions as sa

    cust, recs = scored
    s_cust, s_recs = _spark_frames(spark, cust, recs)
    configs = {
        "default": NextBestActionConfig(),
        # quantiles that land inside blocks of tied values, offers by priority
        "ties": NextBestActionConfig(
            winback_value_quantile=0.3,
            referral_clv_quantile=0.55,
            offer_choice="priority",
            priority=("replenishment", "win_back", "referral_ask", "up_sell", "cross_sell"),
        ),
    }
    for case, cfg in configs.items():
        local = assign_next_best_action(cust, recs, cfg)
        cuts = sa.action_thresholds(s_cust, cfg, rows_per_bucket=RANGE_ROWS)
        assert cuts == action_thresholds(cust, cfg), case
        got_sdf = sa.next_best_actions(s_cust, s_recs, cfg, thresholds=cuts, buckets=GROUPS)
        assert got_sdf.columns == list(local.columns), case
        got = got_sdf.toPandas().sort_values("customer_id").reset_index(drop=True)
        want = local.sort_values("customer_id").reset_index(drop=True)
        assert got["customer_id"].tolist() == want["customer_id"].tolist(), case
        assert got["next_best_action"].tolist() == want["next_best_action"].astype(str).tolist()
        assert (
            got["action_product_id"]
            .astype(object)
            .where(got["action_product_id"].notna(), None)
            .tolist()
            == want["action_product_id"]
            .astype(object)
            .where(want["action_product_id"].notna(), None)
            .tolist()
        ), case
        assert got["action_value"].dtype == np.float64
        assert np.array_equal(got["action_value"].to_numpy(), want["action_value"].to_numpy())
        for col in ("p_alive", "clv", "total_spend", "r_score"):
            assert np.array_equal(got[col].to_numpy(), want[col].to_numpy()), (case, col)
        counts = want["next_best_action"].value_counts()
        assert (counts[list(cfg.priority)] > 0).all(), (case, counts)  # every rule fires

    # the groups really split the customers and their lists
    buckets = s_cust.select(sa._customer_bucket(GROUPS).alias("b")).distinct().count()
    assert buckets == GROUPS

    # audiences of the last case, ranked over several value ranges
    local_aud = build_audiences(local)
    assert any(f["action_value"].duplicated().sum() > 5 for f in local_aud.values())  # ties
    s_aud = sa.build_audiences(spark.createDataFrame(got), rows_per_bucket=RANGE_ROWS)
    assert list(s_aud) == list(AUDIENCE_ACTIONS)
    assert all(s_aud[a].columns == list(AUDIENCE_COLUMNS) for a in AUDIENCE_ACTIONS)

    # written: the local files, read back the same way; an empty audience included
    s_aud["referral_ask"] = s_aud["referral_ask"].limit(0)
    local_aud["referral_ask"] = local_aud["referral_ask"].iloc[:0]
    for fmt in ("parquet", "csv"):
        s_dir, l_dir = tmp_path / f"spark_{fmt}", tmp_path / f"local_{fmt}"
        # an empty frame (Parquet), a missing key (CSV): both a zero-row file
        given = {a: f for a, f in s_aud.items() if fmt == "parquet" or a != "referral_ask"}
        s_index = sa.write_audiences(given, s_dir, fmt=fmt)
        l_index = write_audiences(local_aud, l_dir, fmt=fmt)
        assert json.loads((s_dir / "index.json").read_text()) == s_index
        assert sorted(p.name for p in s_dir.iterdir()) == sorted(p.name for p in l_dir.iterdir())
        for a in AUDIENCE_ACTIONS:
            s_entry, l_entry = s_index["actions"][a], l_index["actions"][a]
            assert s_entry["file"] == l_entry["file"] and s_entry["rows"] == l_entry["rows"]
            assert s_entry["total_action_value"] == pytest.approx(
                l_entry["total_action_value"], rel=1e-12, abs=1e-12
            )
            file = s_dir / s_entry["file"]
            assert file.is_dir() == (fmt == "parquet")
            if fmt == "parquet":  # a Parquet data set, read by pandas as the local frame
                back = pd.read_parquet(file)
                pd.testing.assert_frame_equal(back, local_aud[a], check_exact=True, obj=a)
            pd.testing.assert_frame_equal(
                read_audience(file), read_audience(l_dir / l_entry["file"]), check_exact=True
            )
        assert {k: v for k, v in s_index.items() if k != "actions"} == {
            k: v for k, v in l_index.items() if k != "actions"
        }
    quoted = {  # the product id with a comma and quotes, quoted as pandas does
        d: [
            a
            for a in AUDIENCE_ACTIONS
            if '"P,""quoted"""' in (tmp_path / d / f"{a}.csv").read_text()
        ]
        for d in ("spark_csv", "local_csv")
    }
    assert quoted["spark_csv"] == quoted["local_csv"] and quoted["local_csv"]


def test_groups_without_customers_or_without_lists(spark, scored):
    """Buckets holding only lists of customers outside the table, customers without lists."""
    from crmkit.spark.actions import build_audiences as s_build
    from crmkit.spark.actions import next_best_actions

    cust, recs = scored
    few = cust.iloc[:4]
    mine = recs[recs["customer_id"].isin(few["customer_id"].iloc[:3])]
    strangers = pd.concat(
        [mine.iloc[:2].assign(customer_id=f"S{i}", score=50.0) for i in range(30)]
    )
    lists = pd.concat([mine, strangers], ignore_index=True)
    local = assign_next_best_action(few, lists)
    s_few, s_lists = _spark_frames(spark, few, lists)
    got = next_best_actions(s_few, s_lists, buckets=40).toPandas()
    got = got.sort_values("customer_id").reset_index(drop=True)
    assert got["customer_id"].tolist() == local["customer_id"].tolist()
    assert got["next_best_action"].tolist() == local["next_best_action"].astype(str).tolist()
    assert got["action_value"].tolist() == local["action_value"].tolist()
    assert (
        got["action_product_id"].fillna("-").tolist()
        == local["action_product_id"].fillna("-").tolist()
    )
    # nobody with an action: six empty audiences
    nobody = got.assign(next_best_action="none", action_value=0.0)
    s_empty = s_build(spark.createDataFrame(nobody))
    assert [s_empty[a].count() for a in AUDIENCE_ACTIONS] == [0] * 6
    assert all(s_empty[a].columns == list(AUDIENCE_COLUMNS) for a in AUDIENCE_ACTIONS)


def test_clear_errors_before_any_group_runs(spark, scored):
    from pyspark.sql import functions as F

    from crmkit.spark.actions import build_audiences as s_build
    from crmkit.spark.actions import next_best_actions

    cust, recs = scored
    small_c, small_r = _spark_frames(spark, cust.iloc[:50], recs.iloc[:200])
    dup = small_c.unionByName(small_c.limit(1))
    cases = [
        (dup, small_r, "customer_id", "unique"),
        (small_c.drop("clv"), small_r, "clv", "required_column"),
        (small_c.withColumn("clv", small_c["clv"] - 1e6), small_r, "clv", "out_of_range"),
        (
            small_c.withColumn("p_alive", F.lit(float("inf"))),
            small_r,
            "p_alive",
            "missing_values",
        ),
        (
            small_c,
            small_r.withColumn("kind", small_r["kind"].substr(1, 3)),
            "kind",
            "allowed_values",
        ),
        (small_c, small_r.withColumn("rank", small_r["rank"] + 0.5), "rank", "integer"),
        (small_c, small_r.drop("reason"), "reason", "required_column"),
    ]
    for c, r, col, rule in cases:
        with pytest.raises(DataContractError) as err:
            next_best_actions(c, r)
        assert (err.value.column, err.value.rule) == (col, rule), str(err.value)
    strict = NextBestActionConfig(missing_churn="error")
    with pytest.raises(DataContractError) as err:
        next_best_actions(small_c, small_r, strict)
    assert (err.value.column, err.value.rule) == ("churn_probability", "missing_values")
    with pytest.raises(DataContractError, match="next_best_action"):
        s_build(small_c)
