"""The Spark engine's customer scores equal the local scorer's: a :class:`CustomerScorer`
trained locally (CLV parameters fitted on the local RFM summary, a LightGBM churn model from
``compute_churn`` with few snapshots and trees - the components ``crmkit train`` bundles,
without MLflow and the recommender) scores the same lines with
``CustomerScorer.score`` and with :func:`crmkit.spark.score.customer_scores`; ids, segments,
scores, risk bands and reasons are identical, floats within 1e-9 (relative above 1), on the
simulated sample (churn windows other than the feature windows, a two-order scored-customer
rule, CLV in days with the MBG/NBD) and on Online Retail (the default settings, shared
behaviour features). The BG/NBD of the churn features fitted on the patterns aggregated in
Spark equals the local fit bit for bit, and the Spark churn features equal the local ones.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from crmkit.data.clean import clean_lines
from crmkit.errors import DataContractError
from crmkit.features.rfm import rfm_summary
from crmkit.models.clv import BetaGeo, GammaGamma
from crmkit.models.clv_validation import MODELS
from crmkit.pipelines.churn import ChurnScorer, compute_churn
from crmkit.pipelines.config import load_config
from crmkit.pipelines.scorer import CUSTOMER_COLUMNS, CustomerScorer
from tests.conftest import SHARED_DATA

if shutil.which("java") is None:
    pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime", allow_module_level=True)

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

#: The cheap churn settings of the trained scorers (the model is real, just small).
CHURN = {
    "n_snapshots": 4,
    "snapshot_every": 28,
    "shap_sample": 100,
    "lightgbm": {"n_estimators": 150, "early_stopping_rounds": 20},
}


@pytest.fixture(autouse=True)
def _release_cache(spark):
    """customer_scores persists its per-customer tables (and the tests their scores): free
    them for the next test module sharing the session."""
    yield
    spark.catalog.clearCache()


def train_scorer(lines: pd.DataFrame, as_of: str, **overrides) -> CustomerScorer:
    """What ``crmkit train`` bundles, fitted locally: the CLV models on the RFM summary in the
    CLV unit, the churn scorer of ``compute_churn``; no recommender."""
    cfg = load_config(None, overrides={"clv": {"n_draws": 0}, **overrides})
    summary = rfm_summary(lines, as_of, unit=cfg.clv.unit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        purchase = MODELS[cfg.clv.model](penalizer=cfg.clv.penalizer).fit(summary)
        spend = GammaGamma(penalizer=cfg.clv.penalizer).fit(summary)
    prefixes = tuple(cfg.cleaning.cancellation_prefixes)
    churn = compute_churn(lines, as_of, cfg.churn, cancellation_prefixes=prefixes)
    clv = {
        "model": cfg.clv.model,
        "unit": cfg.clv.unit,
        "params": {k: float(v) for k, v in purchase.params_.items()},
        "gamma_gamma": {k: float(v) for k, v in spend.params_.items()},
    }
    columns = {c: str(t) for c, t in lines.dtypes.items()}
    return CustomerScorer(cfg, clv, ChurnScorer.from_result(churn), None, as_of, columns)


def values(s: pd.Series) -> list:
    return s.astype(object).where(s.notna(), None).tolist()


def assert_same(want: pd.DataFrame, got: pd.DataFrame, case: str) -> None:
    """Identical columns, ids, labels and integers; floats within 1e-9 (relative above 1)
    with NaN in the same places."""
    assert list(got.columns) == list(want.columns), case
    assert got.index.equals(want.index), case
    for col in want.columns:
        w, h = want[col], got[col]
        if pd.api.types.is_float_dtype(w.dtype):
            a, b = w.to_numpy(np.float64), h.to_numpy(np.float64)
            assert np.array_equal(np.isnan(a), np.isnan(b)), (case, col)
            ok = ~np.isnan(a)
            diff = np.abs(a[ok] - b[ok]) / np.maximum(1.0, np.abs(a[ok]))
            assert diff.size == 0 or diff.max() <= 1e-9, (case, col, diff.max())
        elif pd.api.types.is_integer_dtype(w.dtype):
            assert np.array_equal(w.to_numpy(), h.to_numpy(np.int64)), (case, col)
        else:  # segment, risk band (categorical locally), reasons, country, channel
            assert values(w) == values(h), (case, col)


def spark_scores(spark, path, scorer, as_of, notes=None):
    """The Spark scores as pandas (sorted by id) and as the persisted Spark DataFrame."""
    from crmkit.spark import read_lines
    from crmkit.spark.score import customer_scores

    scores = customer_scores(read_lines(spark, path), scorer, as_of, notes=notes).persist()
    got = scores.toPandas().sort_values("customer_id").set_index("customer_id")
    return got, scores


def summary_from_scores(scores, unit: str):
    """The RFM summary in ``unit`` from Spark scores in days (the default feature unit):
    ``recency`` and ``T`` are whole days there, so ``days / unit_days`` is the local
    arithmetic."""
    from pyspark.sql import functions as F

    from crmkit.features.rfm import UNIT_DAYS

    ud = UNIT_DAYS[unit]
    return scores.select(
        "customer_id",
        "frequency",
        (F.col("recency") / F.lit(ud)).alias("recency"),
        (F.col("T") / F.lit(ud)).alias("T"),
        "monetary_value",
    )


def local_scores(scorer, lines, as_of) -> pd.DataFrame:
    cols = list(CUSTOMER_COLUMNS[: CUSTOMER_COLUMNS.index("churn_reasons") + 1])
    return scorer.score(lines, as_of).customers[cols].set_index("customer_id")


def test_sample_scores_features_and_errors_equal_the_local_ones(spark, tmp_path):
    from crmkit.data.simulate import simulate_transactions
    from crmkit.models.churn import churn_features as local_churn_features
    from crmkit.spark import read_lines
    from crmkit.spark.clv import fit_gamma_gamma, fit_purchase_model
    from crmkit.spark.score import SCORE_COLUMNS, churn_features

    raw = simulate_transactions(n_customers=1500, seed=11).lines
    lines = clean_lines(raw).lines
    path = tmp_path / "lines.parquet"
    lines.to_parquet(path, index=False)
    as_of = "2023-06-30"
    churn = {**CHURN, "feature_windows": [30, 90, 180], "min_orders": 2}
    scorer = train_scorer(lines, as_of, churn=churn, clv={"unit": "D", "model": "mbgnbd"})
    assert scorer.churn.behaviour_settings()["windows"] != tuple(scorer.config.features.windows)

    # 1. the customers table
    want = local_scores(scorer, lines, as_of)
    got, scores = spark_scores(spark, path, scorer, as_of)
    assert scorer.config.features.unit == "D"
    assert list(got.reset_index().columns) == list(SCORE_COLUMNS)
    assert_same(want, got, "sample")
    unscored = want["churn_probability"].isna()
    assert 100 < unscored.sum() < len(want) - 100  # the two-order rule leaves some out
    assert got.loc[unscored, ["churn_risk_band", "churn_reasons"]].isna().all().all()
    assert set(got["churn_risk_band"].dropna()) == {"low", "medium", "high"}
    assert (got["churn_reasons"].dropna().str.len() > 0).mean() > 0.9

    # 2. the churn features: same columns, order and values; the BG/NBD fit bit for bit
    sl = read_lines(spark, path)
    ch = scorer.churn
    local_f = local_churn_features(
        lines,
        as_of,
        window_days=ch.window_days,
        windows=ch.feature_windows,
        cancellation_prefixes=ch.cancellation_prefixes,
    )
    notes: list[str] = []
    spark_f = churn_features(sl, as_of, ch, notes=notes).toPandas()
    spark_f = spark_f.sort_values("customer_id").set_index("customer_id")
    assert notes == [] and local_f["bg_p_alive"].notna().all()
    assert_same(local_f, spark_f, "sample churn features")
    # every behavioural feature is the local function's, per customer: bit for bit
    for col in local_f.columns:
        if pd.api.types.is_float_dtype(local_f[col].dtype):
            w, h = local_f[col].to_numpy(), spark_f[col].to_numpy()
            assert np.array_equal(w, h, equal_nan=True), col
    weekly = summary_from_scores(scores, "W")
    local_bg = BetaGeo().fit(rfm_summary(lines, as_of, unit="W"))
    spark_bg = fit_purchase_model(weekly, "bgnbd")
    assert np.array_equal(spark_bg.params_.to_numpy(), local_bg.params_.to_numpy())
    assert spark_bg.log_likelihood_ == local_bg.log_likelihood_
    daily = summary_from_scores(scores, "D")
    local_summary = rfm_summary(lines, as_of, unit="D")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local_mbg = MODELS["mbgnbd"]().fit(local_summary)
        spark_mbg = fit_purchase_model(daily, "mbgnbd")
        local_gg = GammaGamma().fit(local_summary)
        spark_gg = fit_gamma_gamma(daily)
    assert np.array_equal(spark_mbg.params_.to_numpy(), local_mbg.params_.to_numpy())
    np.testing.assert_allclose(spark_gg.params_.to_numpy(), local_gg.params_.to_numpy(), 1e-9)

    # 3. errors as the local scorer's; no churn model as locally
    from crmkit.spark.score import customer_scores

    for drop in ("product_id", "quantity"):
        with pytest.raises(DataContractError) as local_err:
            scorer.score(lines.drop(columns=drop), as_of)
        with pytest.raises(DataContractError) as spark_err:
            customer_scores(sl.drop(drop), scorer, as_of)
        assert (spark_err.value.rule, spark_err.value.column) == (local_err.value.rule, drop)
        assert str(spark_err.value) == str(local_err.value)
    needed = ch.required_columns()[-1]  # a column behind a churn feature (the channel)
    assert needed not in ("customer_id", "order_id", "order_ts", "quantity", "amount")
    with pytest.raises(DataContractError) as local_err:
        ch.score(lines.drop(columns=needed), as_of)
    with pytest.raises(DataContractError) as spark_err:
        churn_features(sl.drop(needed), as_of, ch)
    assert str(spark_err.value) == str(local_err.value) and spark_err.value.column == needed
    with pytest.raises(DataContractError) as err:
        customer_scores(sl, scorer, "2019-01-01")
    assert err.value.rule == "empty_window"
    scorer.churn, saved = None, scorer.churn
    try:
        notes = []
        got, _ = spark_scores(spark, path, scorer, as_of, notes=notes)
        assert_same(local_scores(scorer, lines, as_of), got, "sample, no churn model")
        # the local scorer's notes: missing p_alive values (if any), no churn model
        said = scorer.p_alive_note(int(got["p_alive"].isna().sum()))
        assert notes == [*([said] if said else []), "no churn model in this bundle"]
        assert (got["churn_reasons"] == "").all() and got["churn_probability"].isna().all()
    finally:
        scorer.churn = saved


def test_online_retail_scores_equal_the_local_ones(spark, tmp_path):
    from crmkit.data.io import load_transactions
    from crmkit.spark.clv import weighted_patterns

    if not SHARED_DATA.is_dir():
        pytest.skip(f"Online Retail not found at {SHARED_DATA}")
    lines = clean_lines(load_transactions(SHARED_DATA / "online_retail.parquet")).lines
    parts = tmp_path / "retail_lines"
    parts.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(len(lines)), 2)):
        lines.iloc[chunk].to_parquet(parts / f"part-{i}.parquet", index=False)
    as_of = "2011-12-09"
    scorer = train_scorer(lines, as_of, churn=CHURN)

    want = local_scores(scorer, lines, as_of)
    got, scores = spark_scores(spark, parts, scorer, as_of)
    assert len(want) == 4334 and want["churn_probability"].notna().all()
    assert_same(want, got, "Online Retail")
    assert got["churn_risk_band"].value_counts().min() > 100

    # the churn model's BG/NBD: fitted on the weekly patterns aggregated in Spark, bit for bit
    patterns = weighted_patterns(summary_from_scores(scores, "W"))
    assert len(patterns) < len(want) and patterns["weight"].sum() == len(want)
    local_bg = BetaGeo().fit(rfm_summary(lines, as_of, unit="W"))
    spark_bg = BetaGeo().fit(patterns[["frequency", "recency", "T"]], weights=patterns["weight"])
    assert np.array_equal(spark_bg.params_.to_numpy(), local_bg.params_.to_numpy())
