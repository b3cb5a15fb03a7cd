"""Tests of the churn model (crmkit.models.churn, crmkit.models.churn_plots) and the churn
stage (crmkit.pipelines.churn): label and cutoff rules, leakage, the estimator's contract,
explanations, metrics against the baselines on simulated and Online Retail data, outputs,
MLflow, the portable scorer. CDNOW (slow) is in test_churn_realdata.py.

Speed: each expensive result is computed once per module (fixtures); the contract tests use
a 2,000-customer shop and a short config (4 training cutoffs, at most 200 rounds); only the
headline simulated test and Online Retail use the default config."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crmkit.errors import DataContractError
from crmkit.models.churn import (
    ChurnModel,
    churn_features,
    churn_labels,
    classification_metrics,
    describe_feature,
    label_window_observed,
    plan_cutoffs,
    select_customers,
    top_decile,
)
from crmkit.pipelines.churn import ChurnConfig, ChurnScorer, compute_churn, run_churn

SIM_AS_OF = "2023-06-30"
OR_AS_OF = "2011-09-09"
CDNOW_AS_OF = "1998-03-31"
# a quicker config for the contract tests (the default config is tested on the demo shop)
SMALL = {
    "n_snapshots": 4,
    "snapshot_every": 14,
    "lightgbm": {"n_estimators": 200, "early_stopping_rounds": 20},
}
SMALL_CUSTOMERS = 2000


def _lines(rows: list[tuple]) -> pd.DataFrame:
    """Handmade cleaned lines: (customer, order, timestamp, quantity, amount)."""
    df = pd.DataFrame(rows, columns=["customer_id", "order_id", "order_ts", "quantity", "amount"])
    df["order_ts"] = pd.to_datetime(df["order_ts"], format="ISO8601")
    return df


@pytest.fixture(scope="module")
def sim():
    """The demo shop: 5,000 customers acquired over 75 weeks (as `make demo`), with its truth."""
    from crmkit.data.simulate import simulate_transactions

    return simulate_transactions(n_customers=5000, seed=0, acquisition_weeks=75)


@pytest.fixture(scope="module")
def sim_lines(sim) -> pd.DataFrame:
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions

    return clean_lines(load_transactions(sim.lines)).lines


@pytest.fixture(scope="module")
def sim_result(sim_lines):
    """The demo shop with the default config (24 cutoffs): the headline simulated result."""
    return compute_churn(sim_lines, SIM_AS_OF, ChurnConfig())


@pytest.fixture(scope="module")
def small_lines() -> pd.DataFrame:
    """A smaller shop (2,000 customers) for the contract tests."""
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions
    from crmkit.data.simulate import simulate_transactions

    res = simulate_transactions(n_customers=SMALL_CUSTOMERS, seed=0, acquisition_weeks=75)
    return clean_lines(load_transactions(res.lines)).lines


@pytest.fixture(scope="module")
def small_result(small_lines):
    return compute_churn(small_lines, SIM_AS_OF, ChurnConfig(**SMALL))


@pytest.fixture(scope="module")
def or_lines(shared_data) -> pd.DataFrame:
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions

    return clean_lines(load_transactions(shared_data / "online_retail.parquet")).lines


@pytest.fixture(scope="module")
def or_result(or_lines):
    """Online Retail at 2011-09-09 with the default config (about 4 s)."""
    return compute_churn(or_lines, OR_AS_OF, ChurnConfig())


def _report(name: str, metrics: dict) -> str:
    rows = [f"{name} at {metrics['as_of']} (H = {metrics['window_days']} days):"]
    for model in ("lightgbm", "recency_rule", "rfm_score", "bgnbd"):
        m = metrics[model]
        rows.append(f"  {model:13s} ROC-AUC {m['roc_auc']:.5f}  PR-AUC {m['pr_auc']:.5f}")
    return "\n".join(rows)


def assert_beats_every_baseline(m: dict) -> None:
    """LightGBM's test ROC-AUC and PR-AUC above the recency rule, the RFM sum and, per metric,
    the better of BG/NBD's 1 - P(alive) and P(no purchase in the window)."""
    for metric in ("roc_auc", "pr_auc"):
        best_bg = max(m["bgnbd_p_alive"][metric], m["bgnbd_p_no_purchase"][metric])
        assert m["bgnbd"][metric] == best_bg, metric
        for base in ("recency_rule", "rfm_score", "bgnbd_p_alive", "bgnbd_p_no_purchase"):
            assert m["lightgbm"][metric] > m[base][metric], (metric, base)
    assert m["beats_baselines"] == {"roc_auc": True, "pr_auc": True}


# --------------------------------------------------------------------------------------------
# labels and cutoffs
# --------------------------------------------------------------------------------------------


def test_label_window_is_the_h_days_after_the_cutoff_day():
    lines = _lines(
        [
            ("a", "1", "2023-01-05 10:00", 1, 10.0),
            ("a", "2", "2023-03-10 23:59:59", 1, 10.0),  # on the cutoff day: the past
            ("b", "3", "2023-01-05 10:00", 1, 10.0),
            ("b", "4", "2023-03-11 00:00", 1, 10.0),  # first instant of the window
            ("c", "5", "2023-01-05 10:00", 1, 10.0),
            ("c", "6", "2023-04-09 23:59:59", 1, 10.0),  # last instant of day 30
            ("d", "7", "2023-01-05 10:00", 1, 10.0),
            ("d", "8", "2023-04-10 00:00", 1, 10.0),  # day 31: outside
            ("e", "9", "2023-01-05 10:00", 1, 10.0),
            ("e", "10", "2023-03-20 10:00", -1, -10.0),  # a return is no purchase
            ("f", "11", "2023-03-15 10:00", 1, 10.0),  # first purchase after the cutoff
            ("g", "12", "2023-05-01 10:00", 1, 10.0),
        ]
    )
    y = churn_labels(lines, "2023-03-10", window_days=30)
    assert y.to_dict() == {"a": 1, "b": 0, "c": 0, "d": 1, "e": 1}
    assert label_window_observed(lines, "2023-03-10", 30)  # data end 2023-05-01
    assert not label_window_observed(lines, "2023-04-10", 30)
    with pytest.raises(DataContractError, match="window_days"):
        churn_labels(lines, "2023-03-10", window_days=0)


def test_plan_keeps_every_label_window_before_the_next_split(sim_lines):
    plan = plan_cutoffs(sim_lines, SIM_AS_OF, window_days=90, every_days=14, n_snapshots=10)
    h = pd.Timedelta(days=90)
    assert plan.test == pd.Timestamp(SIM_AS_OF)
    assert plan.validation + h == plan.test
    assert len(plan.train) == 10
    assert all(c + h <= plan.validation for c in plan.train)
    assert plan.train[-1] + h == plan.validation
    assert set(np.diff(np.array(plan.train)).astype("timedelta64[D]").astype(int)) == {14}
    assert plan.test_labelled
    assert plan.to_dict()["validation"] == "2023-04-01"


def test_plan_errors_name_the_history_needed(sim_lines):
    with pytest.raises(DataContractError, match="not enough history") as exc:
        plan_cutoffs(sim_lines, "2022-06-01", window_days=90)
    assert exc.value.rule == "too_few_cutoffs" and "data start 2022-01-01" in str(exc.value)
    # a single training cutoff fits: refused
    with pytest.raises(DataContractError, match="only 1 training cutoff"):
        plan_cutoffs(sim_lines, "2022-08-05", window_days=90, min_history_days=30)


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------


def test_features_ignore_everything_after_the_cutoff(sim_lines):
    cut = pd.Timestamp("2023-02-01")
    before = churn_features(sim_lines, cut)
    future = sim_lines.iloc[:3].copy()
    future["order_ts"] = cut + pd.Timedelta(days=1, seconds=1)
    future["quantity"] = 1000.0
    future["amount"] = 1e6
    future["customer_id"] = [sim_lines["customer_id"].iloc[0], "brand-new", "brand-new"]
    planted = pd.concat([sim_lines, future], ignore_index=True)
    after = churn_features(planted, cut)
    pd.testing.assert_frame_equal(before, after)
    assert {"bg_p_alive", "bg_p_no_purchase_90d", "bg_expected_purchases_90d"} <= set(before)
    assert before["window_q4_share"].iloc[0] == 0.0
    assert churn_features(sim_lines, "2023-09-15")["window_q4_share"].iloc[0] == pytest.approx(
        1 - 15 / 90
    )
    assert isinstance(before["country"].dtype, pd.CategoricalDtype)
    assert before["rfm_score"].between(3, 15).all()


def test_scored_customer_rule():
    f = pd.DataFrame({"n_orders": [1, 2, 5, 3], "recency_days": [10, 200, 30, 31]})
    assert select_customers(f).tolist() == [True] * 4
    assert select_customers(f, min_orders=2).tolist() == [False, True, True, True]
    assert select_customers(f, min_orders=2, active_within_days=30).tolist() == [
        False,
        False,
        True,
        False,
    ]


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def test_top_decile_shares_ties_at_their_average_rate():
    y = np.array([1] * 8 + [0] * 2 + [1] * 12 + [0] * 78)  # 20 churners, 8 in rows 0..9
    score = np.arange(100)[::-1].astype(float)  # the top decile is rows 0..9
    lift, capture = top_decile(y, score)
    assert capture == pytest.approx(8 / 20) and lift == pytest.approx(0.8 / 0.2)
    tied = score.copy()
    tied[5:15] = 90.0  # rows 5..14 tie across the boundary: 5 of the 10 places go to them
    lift, capture = top_decile(y, tied)
    assert capture == pytest.approx((5 + 5 * 8 / 10) / 20)  # the tied rows churn at 0.8
    flat = np.zeros(100)
    assert top_decile(y, flat) == pytest.approx((1.0, 0.1))  # all tied: random targeting


def test_classification_metrics_on_a_known_case():
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(y, np.array([0.1, 0.4, 0.35, 0.8]))
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx(np.mean((np.array([0.1, 0.4, 0.35, 0.8]) - y) ** 2))
    assert m["n"] == 4 and m["churn_rate"] == 0.5
    with pytest.raises(DataContractError, match="one class"):
        classification_metrics(np.ones(4), np.full(4, 0.5))


# --------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------


def _toy(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "recency_days": rng.integers(0, 300, n).astype(float),
            "n_orders": rng.integers(1, 20, n).astype(float),
            "noise": rng.normal(size=n),
            "country": pd.Categorical(rng.choice(["UK", "FR", "DE"], n)),
        }
    )
    logit = 0.012 * X["recency_days"] - 0.15 * X["n_orders"] + 0.4 * (X["country"] == "FR")
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def test_model_contract_calibration_and_shap():
    X, y = _toy(seed=1)
    Xv, yv = _toy(seed=2)
    model = ChurnModel(n_estimators=300, min_child_samples=50)
    assert model.get_params()["num_leaves"] == 4
    assert model.fit(X, y, X_val=Xv, y_val=yv) is model
    assert list(model.feature_names_in_) == ["recency_days", "n_orders", "noise", "country"]
    assert model.categories_ == {"country": ["DE", "FR", "UK"]}
    proba = model.predict_proba(Xv)
    assert proba.shape == (len(Xv), 2) and np.allclose(proba.sum(axis=1), 1)
    # Platt scaling keeps the ranking: ROC-AUC of the probabilities == of the raw scores
    raw = model.decision_function(Xv)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(yv, proba[:, 1]) == pytest.approx(roc_auc_score(yv, raw))
    # calibrated on the validation set: mean prediction close to its churn rate
    assert abs(proba[:, 1].mean() - yv.mean()) < 0.02
    shap = model.shap_values(Xv)
    assert list(shap.columns) == [*model.feature_names_in_, "bias"]
    np.testing.assert_allclose(shap.sum(axis=1), raw, atol=1e-8)
    assert shap["recency_days"].corr(Xv["recency_days"]) > 0.8
    # a string column instead of a category, and an unseen category, still score
    Xs = Xv.head(5).astype({"country": str})
    Xs.loc[Xs.index[0], "country"] = "Atlantis"
    assert np.isfinite(model.predict_proba(Xs)).all()
    imp = model.feature_importance()
    assert imp.index[0] == "recency_days" and imp["noise"] < imp["recency_days"]
    reasons = model.top_reasons(Xv.head(20), k=2)
    assert all(len(r) <= 2 for r in reasons)


def test_model_isotonic_and_bounded_search():
    X, y = _toy(seed=3)
    Xv, yv = _toy(seed=4)
    quick = {"n_estimators": 200, "early_stopping_rounds": 20}
    iso = ChurnModel(**quick, calibration="isotonic").fit(X, y, X_val=Xv, y_val=yv)
    assert iso.calibrator_["method"] == "isotonic"
    p = iso.predict_proba(Xv)[:, 1]
    assert p.min() >= 0 and p.max() <= 1
    search = ChurnModel(**quick, search_trials=3, random_state=5).fit(X, y, X_val=Xv, y_val=yv)
    res = search.search_results_
    assert len(res) == 3 and res["validation_auc"].max() == pytest.approx(search.validation_auc_)


def test_prior_decided_on_a_sample_trains_the_chosen_variant_alone():
    """prior="auto" with more rows than prior_sample_rows: both variants on a sample, then only
    the winner on all rows - exactly the model that prior="always" trains; and the full
    comparison (both variants on one shared Dataset) keeps exactly that model too."""
    X, _ = _toy(seed=5)
    Xv, _ = _toy(seed=6)
    labels = []
    for frame, seed in ((X, 7), (Xv, 8)):  # churn also driven by a part only the prior knows
        rng = np.random.default_rng(seed)
        logit = (
            0.012 * frame["recency_days"]
            - 0.15 * frame["n_orders"]
            + 0.4 * (frame["country"] == "FR")
            + rng.normal(0, 1.5, len(frame))
        )
        frame["p_prior"] = 1 / (1 + np.exp(-logit))
        labels.append((rng.random(len(frame)) < frame["p_prior"]).astype(int).to_numpy())
    y, yv = labels
    quick = {"n_estimators": 100, "early_stopping_rounds": 10, "prior_feature": "p_prior"}
    sampled = ChurnModel(**quick, prior_sample_rows=1000).fit(X, y, X_val=Xv, y_val=yv)
    r = sampled.prior_results_
    assert r["stage"].tolist() == ["prior decision (subsample)"] * 2 + ["final"]
    assert r["train_rows"].tolist() == [1000, 1000, len(X)]
    assert r["prior"].tolist() == [False, True, True] and sampled.prior_used_
    alone = ChurnModel(**quick, prior="always").fit(X, y, X_val=Xv, y_val=yv)
    both = ChurnModel(**quick).fit(X, y, X_val=Xv, y_val=yv)
    assert both.prior_results_["train_rows"].tolist() == [len(X), len(X)] and both.prior_used_
    for model in (sampled, both):
        np.testing.assert_array_equal(model.decision_function(Xv), alone.decision_function(Xv))
    with pytest.raises(ValueError, match="prior_sample_rows"):
        ChurnModel(prior_sample_rows=10).fit(X, y, X_val=Xv, y_val=yv)


def test_model_refuses_bad_input_with_clear_errors():
    X, y = _toy(n=500)
    from crmkit.models.clv import NotFittedError

    with pytest.raises(NotFittedError):
        ChurnModel().predict_proba(X)
    few = np.zeros(len(y), dtype=int)
    few[:5] = 1
    with pytest.raises(DataContractError, match="5 churners") as exc:
        ChurnModel().fit(X, few, X_val=X, y_val=y)
    assert exc.value.rule == "too_few_per_class"
    with pytest.raises(DataContractError, match="validation set"):
        ChurnModel().fit(X, y, X_val=X, y_val=np.ones(len(y)))
    const = pd.DataFrame({"a": np.ones(len(y)), "b": pd.Categorical(["x"] * len(y))})
    with pytest.raises(DataContractError, match="every feature is constant"):
        ChurnModel().fit(const, y, X_val=const, y_val=y)
    with pytest.raises(DataContractError, match="DataFrame"):
        ChurnModel().fit(X.to_numpy(), y, X_val=X, y_val=y)
    with pytest.raises(DataContractError, match="0/1"):
        ChurnModel().fit(X, y * 2, X_val=X, y_val=y)


def test_readable_reasons():
    row = {"recency_days": 120, "gap_mean_days": 35.2, "has_repeat": 1, "n_purchase_days": 4}
    assert describe_feature("recency_days", row) == "no purchase for 120 days (usual gap 35)"
    assert describe_feature("days_overdue", row) == describe_feature("recency_days", row)
    once = {"recency_days": 80, "has_repeat": 0, "n_purchase_days": 1, "orders_90d": 0}
    assert describe_feature("recency_days", once) == "no purchase for 80 days (bought only once)"
    assert describe_feature("spend_90d", {**once, "spend_90d": 0.0}) == (
        "no purchases in the last 90 days"
    )
    assert describe_feature("orders_30d", {"orders_30d": 1, "orders_trend_30d": -0.5}) == (
        "only 1 order in the last 30 days"
    )
    assert describe_feature("bg_p_no_purchase_90d", {"bg_p_no_purchase_90d": 0.81}) == (
        "BG/NBD: 81% chance of no purchase in the next 90 days"
    )


# --------------------------------------------------------------------------------------------
# the pipeline on simulated data
# --------------------------------------------------------------------------------------------


def test_simulated_demo_beats_the_rule_baselines_and_ties_bgnbd(sim_result, sim, sim_lines):
    """The simulator draws purchases from the BG/NBD process itself, so BG/NBD's P(no purchase
    in the window) is the Bayes-optimal ranking there and no model can beat it beyond noise:
    BG/NBD with the simulator's *true* parameters scores the same as the fitted one (seeds
    0-4: differences -0.0001 to +0.0002 ROC-AUC, docs/churn.md). LightGBM must beat the
    recency rule and the RFM score clearly and match BG/NBD within 0.002 (ten times the
    bootstrap standard error of the difference): the validation cutoff picks the booster that
    starts from the BG/NBD log-odds, whose trees barely move it."""
    m = sim_result.metrics
    print("\n" + _report("simulated demo", m))
    lgb = m["lightgbm"]
    for base in ("recency_rule", "rfm_score"):
        assert lgb["roc_auc"] > m[base]["roc_auc"] + 0.02, base
        assert lgb["pr_auc"] > m[base]["pr_auc"] + 0.02, base
    assert m["model"]["bgnbd_prior_used"]
    assert abs(lgb["roc_auc"] - m["bgnbd"]["roc_auc"]) < 0.002
    assert abs(lgb["pr_auc"] - m["bgnbd"]["pr_auc"]) < 0.002
    assert m["bgnbd_score"]["roc_auc"] == m["bgnbd_score"]["pr_auc"] == "bgnbd_p_no_purchase"
    assert lgb["top_decile_lift"] > m["rfm_score"]["top_decile_lift"]
    assert lgb["brier"] <= m["recency_rule"]["brier"]
    assert m["counts"]["train_cutoffs"] == 24
    assert set(m["metrics"]) == {"test", "validation", "train"}
    # why a tie is the best possible: BG/NBD with the simulator's true parameters (the
    # Bayes-optimal score given the customer-day summary) ranks no better than the fitted one
    from sklearn.metrics import average_precision_score, roc_auc_score

    from crmkit.features.rfm import rfm_summary
    from crmkit.models.clv import BetaGeo

    truth = sim.truth.params
    oracle = BetaGeo.from_params({k: getattr(truth, k) for k in ("r", "alpha", "a", "b")})
    test = sim_result.test_features
    summary = rfm_summary(sim_lines, pd.Timestamp(SIM_AS_OF), unit="W").reindex(test.index)
    p_none = 1 - oracle.probability_of_purchases_in_window(summary, 0.0, 90 / 7).to_numpy()
    y = churn_labels(sim_lines, SIM_AS_OF, 90).reindex(test.index)
    assert abs(roc_auc_score(y, p_none) - m["bgnbd"]["roc_auc"]) < 0.0005
    assert abs(average_precision_score(y, p_none) - m["bgnbd"]["pr_auc"]) < 0.0005


def test_returns_world_lightgbm_beats_every_baseline():
    """A world where dropout also depends on observable behaviour: the simulator's optional
    bad experiences (10 % of orders; each is followed by the return of a line, and 60 % of
    them make the customer quit at once, on top of BG/NBD's dropout). BG/NBD sees only the
    purchase days, so it is no longer the Bayes-optimal score; LightGBM sees the returns
    (cleaning with ``returns: net`` keeps them) and must beat every baseline on ROC-AUC and
    PR-AUC, BG/NBD by at least 0.01 and 0.003 (measured margins on seeds 0-2 with this
    config: ROC-AUC +0.013 to +0.017, PR-AUC +0.0047 to +0.0064)."""
    from crmkit.data.clean import CleaningConfig, clean_lines
    from crmkit.data.io import load_transactions
    from crmkit.data.simulate import simulate_transactions

    sim = simulate_transactions(
        n_customers=5000,
        seed=0,
        acquisition_weeks=75,
        bad_experience_rate=0.1,
        bad_experience_dropout=0.6,
    )
    lines = clean_lines(load_transactions(sim.lines), CleaningConfig(returns="net")).lines
    res = compute_churn(lines, SIM_AS_OF, ChurnConfig(n_snapshots=8, snapshot_every=14))
    m = res.metrics
    print("\n" + _report("simulated shop with bad experiences", m))
    assert_beats_every_baseline(m)
    lgb = m["lightgbm"]
    assert lgb["roc_auc"] > m["bgnbd"]["roc_auc"] + 0.01
    assert lgb["pr_auc"] > m["bgnbd"]["pr_auc"] + 0.003
    for base in ("recency_rule", "rfm_score"):
        assert lgb["roc_auc"] > m[base]["roc_auc"] + 0.03, base
        assert lgb["pr_auc"] > m[base]["pr_auc"] + 0.005, base
    assert "return_rate" in res.model.feature_importance("gain").index[:3]


def test_run_writes_outputs_all_or_nothing(small_result, small_lines, tmp_path):
    from crmkit.pipelines.churn import PLOT_FILES, write_churn

    out = tmp_path / "churn"
    write_churn(small_result, out)
    names = {p.name for p in out.iterdir()}
    assert names == {"metrics.json", "customers.parquet", *PLOT_FILES}
    m = json.loads((out / "metrics.json").read_text())
    for model in ("lightgbm", "recency_rule", "rfm_score", "bgnbd"):
        assert set(m[model]) >= {
            "roc_auc",
            "pr_auc",
            "brier",
            "log_loss",
            "top_decile_lift",
            "top_decile_capture",
        }
    assert m["cutoffs"]["test"] == SIM_AS_OF and m["reason"] is None
    assert m["counts"]["test_customers"] == SMALL_CUSTOMERS
    c = pd.read_parquet(out / "customers.parquet")
    assert list(c.columns) == ["customer_id", "churn_probability", "risk_band", "top_reasons"]
    assert c["churn_probability"].between(0, 1).all()
    assert set(c["risk_band"].astype(str)) <= {"low", "medium", "high"}
    hi = c["risk_band"].astype(str) == "high"
    assert (c.loc[hi, "churn_probability"] >= 0.8).all()
    assert all(isinstance(r, str) for rs in c["top_reasons"] for r in rs)
    assert c["top_reasons"].map(len).max() == 3
    # a failure leaves the output folder as it was
    out2 = tmp_path / "failed"
    with pytest.raises(DataContractError):
        run_churn(small_lines, "2022-06-01", out2, ChurnConfig(**SMALL))
    assert not out2.exists()


def test_same_data_and_seed_give_identical_probabilities(small_lines, small_result):
    again = compute_churn(small_lines, SIM_AS_OF, ChurnConfig(**SMALL))
    pd.testing.assert_frame_equal(small_result.customers, again.customers)
    other = compute_churn(small_lines, SIM_AS_OF, ChurnConfig(**SMALL, seed=1))
    assert not np.array_equal(
        other.customers["churn_probability"], small_result.customers["churn_probability"]
    )


def test_unlabelled_as_of_is_scored_without_metrics(small_lines, tmp_path):
    cut = small_lines[small_lines["order_ts"] < "2023-08-01"]
    res = run_churn(cut, SIM_AS_OF, tmp_path / "o", ChurnConfig(**SMALL))
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["metrics"] is None and "label window" in m["reason"]
    assert "lightgbm" not in m and m["validation_metrics"]["lightgbm"]["roc_auc"] > 0.7
    assert len(res.customers) == SMALL_CUSTOMERS


def test_single_class_test_cutoff_is_scored_without_metrics(small_lines, tmp_path):
    """Nobody buys in the as-of date's label window (the data go on after it): every scored
    customer is churned, ROC-AUC and PR-AUC are undefined, so the customers are scored, the
    metrics are skipped with the reason, and the validation metrics are still reported."""
    window = (small_lines["order_ts"] >= "2023-07-01") & (small_lines["order_ts"] < "2023-09-29")
    lines = small_lines[~window]
    assert lines["order_ts"].max() >= pd.Timestamp("2023-09-28")  # the window is observed
    res = run_churn(lines, SIM_AS_OF, tmp_path / "o", ChurnConfig(**SMALL))
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["metrics"] is None
    assert m["reason"] == (
        "every scored customer at 2023-06-30 is churned: ranking metrics are undefined"
    )
    assert not {"lightgbm", "bgnbd", "beats_baselines"} & set(m)
    v = m["validation_metrics"]
    assert {"lightgbm", "recency_rule", "rfm_score", "bgnbd"} <= set(v)
    assert v["lightgbm"]["roc_auc"] > v["rfm_score"]["roc_auc"]
    assert len(res.customers) == SMALL_CUSTOMERS
    assert res.customers["churn_probability"].between(0, 1).all()


def test_bad_input_raises_data_contract_errors(sim_lines):
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions
    from crmkit.data.simulate import simulate_transactions

    tiny = clean_lines(
        load_transactions(simulate_transactions(n_customers=60, seed=2, acquisition_weeks=75).lines)
    ).lines
    with pytest.raises(DataContractError, match="churners and") as exc:
        compute_churn(tiny, SIM_AS_OF, ChurnConfig(**SMALL))
    assert exc.value.rule == "too_few_per_class"
    # a short history refuses when adapt_history is off (adapting: test_churn_short_history)
    with pytest.raises(DataContractError, match="training cutoff"):
        compute_churn(
            sim_lines, "2022-08-05", ChurnConfig(min_history_days=30, adapt_history=False)
        )
    with pytest.raises(ValueError):
        ChurnConfig(unknown_key=1)
    with pytest.raises(ValueError):
        ChurnConfig(risk_thresholds=(0.8, 0.5))


def test_active_within_days_restricts_every_cutoff(small_lines):
    res = compute_churn(small_lines, SIM_AS_OF, ChurnConfig(**SMALL, active_within_days=180))
    assert (res.test_features["recency_days"] <= 180).all()
    assert res.metrics["counts"]["test_customers"] < SMALL_CUSTOMERS
    assert "last 180 days" in res.metrics["scored_customers"]["rule"]


def test_plots_use_no_global_pyplot_state(small_result):
    import matplotlib.pyplot as plt

    from crmkit.models import churn_plots as cp

    before = plt.get_fignums()
    X = small_result.test_features.head(300)
    sv = small_result.model.shap_values(X)
    y = np.arange(len(X)) % 2
    s = small_result.model.decision_function(X)
    for ax in (
        cp.plot_roc({"m": (y, s)}),
        cp.plot_pr({"m": (y, s)}),
        cp.plot_lift({"m": (y, s)}),
        cp.plot_calibration({"m": (y, 1 / (1 + np.exp(-s)))}),
        cp.plot_importance(small_result.model.feature_importance()),
        cp.plot_shap_summary(sv, X, top=10),
    ):
        assert ax.figure is not None and ax.has_data()
    assert plt.get_fignums() == before
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert cp.plot_roc({"m": (y, s)}, ax=ax) is ax


def test_mlflow_logging_into_a_local_store(small_result, tmp_path):
    import mlflow

    from crmkit import tracking
    from crmkit.pipelines.churn import PLOT_FILES, log_churn_run

    tracking.configure(f"sqlite:///{tmp_path}/mlflow.db", experiment="churn-test")
    with tracking.stage_run("churn") as run:
        uri = log_churn_run(small_result)
    client = mlflow.MlflowClient()
    data = client.get_run(run.info.run_id).data
    test = small_result.metrics["metrics"]["test"]
    assert data.metrics["test.lightgbm.roc_auc"] == pytest.approx(test["lightgbm"]["roc_auc"])
    assert data.metrics["test.bgnbd.pr_auc"] == pytest.approx(test["bgnbd"]["pr_auc"])
    assert "validation.lightgbm.log_loss" in data.metrics
    assert data.params["churn.window_days"] == "90"
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {f"plots/{p}" for p in PLOT_FILES}
    info = json.loads(
        open(client.download_artifacts(run.info.run_id, "churn_model.json", str(tmp_path))).read()
    )
    assert info["features"] == list(small_result.model.feature_names_in_)
    assert info["calibrator"]["method"] == "sigmoid"
    loaded = mlflow.pyfunc.load_model(uri)
    X = small_result.model.encode(small_result.test_features.head(20))
    np.testing.assert_allclose(
        loaded.predict(X),
        small_result.model.booster_.predict(X, num_iteration=small_result.model.best_iteration_),
    )
    sig = loaded.metadata.get_input_schema()
    assert sig.input_names() == list(small_result.model.feature_names_in_)


# --------------------------------------------------------------------------------------------
# the portable scorer
# --------------------------------------------------------------------------------------------


def _json_strings(obj) -> set[str]:
    """Every string (keys and values) in a parsed JSON document."""
    if isinstance(obj, dict):
        return set(map(str, obj)).union(*(_json_strings(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_json_strings(v) for v in obj))
    return {obj} if isinstance(obj, str) else set()


def test_scorer_round_trip_reproduces_the_training_scores(small_result, small_lines, tmp_path):
    scorer = ChurnScorer.from_result(small_result)
    assert scorer.save(tmp_path / "s") == tmp_path / "s"
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == sorted([ChurnScorer.STATE_FILE, ChurnScorer.BOOSTER_FILE])
    loaded = ChurnScorer.load(tmp_path / "s")
    out = loaded.score(small_lines, SIM_AS_OF)
    assert list(out.columns) == ["churn_probability", "churn_risk_band", "churn_reasons"]
    assert out.index.name == "customer_id"
    c = small_result.customers.set_index("customer_id")
    assert out.index.equals(c.index) and len(out) == SMALL_CUSTOMERS
    np.testing.assert_allclose(out["churn_probability"], c["churn_probability"], rtol=1e-12)
    assert (out["churn_risk_band"].astype(str) == c["risk_band"].astype(str)).all()
    assert (out["churn_reasons"] == c["top_reasons"].map("; ".join)).all()
    assert out["churn_reasons"].str.contains("; ").any()
    lo, hi = small_result.config.risk_thresholds
    band = out["churn_risk_band"].astype(str)
    assert (out.loc[band == "low", "churn_probability"] < lo).all()
    assert (out.loc[band == "high", "churn_probability"] >= hi).all()
    assert set(band) == {"low", "medium", "high"}
    # the saved state: parameters and aggregates only, not one customer id anywhere
    ids = small_lines["customer_id"].astype(str).unique()
    for name in files:
        text = (tmp_path / "s" / name).read_text()
        assert not [i for i in ids if i in text], name
    state = json.loads((tmp_path / "s" / ChurnScorer.STATE_FILE).read_text())
    assert state["model"]["prior"]["used"] is small_result.model.prior_used_
    assert state["model"]["feature_names"] == list(small_result.model.feature_names_in_)
    assert state["features"]["window_days"] == 90 and state["trained_as_of"] == SIM_AS_OF


def test_scorer_reads_only_the_lines_up_to_as_of(small_result, small_lines):
    scorer = ChurnScorer.from_result(small_result)
    later = "2023-09-30"  # not labelled in the data, but scoreable
    past = small_lines[small_lines["order_ts"] < pd.Timestamp(later) + pd.Timedelta(days=1)]
    a = scorer.score(small_lines, later)
    b = scorer.score(past, later)
    pd.testing.assert_frame_equal(a, b)
    assert a["churn_probability"].between(0, 1).all() and len(a) == SMALL_CUSTOMERS
    # not the training date's scores: time moved on
    assert not np.allclose(
        a["churn_probability"].reindex(small_result.customers["customer_id"]),
        small_result.customers["churn_probability"],
    )


def test_scorer_refuses_bad_input(small_result, small_lines, tmp_path):
    scorer = ChurnScorer.from_result(small_result)
    with pytest.raises(DataContractError, match=r"lack column\(s\) \['amount'\]") as exc:
        scorer.score(small_lines.drop(columns="amount"), SIM_AS_OF)
    assert exc.value.rule == "required_column"
    with pytest.raises(DataContractError, match="before every purchase line") as exc:
        scorer.score(small_lines, "2021-06-30")
    assert "data start 2022-01-01" in str(exc.value) and exc.value.rule == "empty_window"
    with pytest.raises(DataContractError, match="DataFrame"):
        scorer.score(small_lines.to_numpy(), SIM_AS_OF)
    with pytest.raises(DataContractError, match="not a saved churn scorer"):
        ChurnScorer.load(tmp_path)


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_online_retail_beats_every_baseline(or_result):
    """UCI Online Retail at 2011-09-09, H = 90, default config: the test window holds the
    Christmas season, the training windows (Jan-Mar 2011) do not."""
    m = or_result.metrics
    print("\n" + _report("Online Retail", m))
    assert_beats_every_baseline(m)
    assert m["lightgbm"]["roc_auc"] == pytest.approx(0.7435, abs=0.002)
    assert m["counts"]["test_customers"] == 3368
    assert m["cutoffs"]["validation"] == "2011-06-11"


@pytest.mark.realdata
def test_online_retail_scorer_round_trip(or_result, or_lines, tmp_path):
    """The plain booster (no BG/NBD prior) and a real categorical (country) survive the save;
    the state holds no customer id."""
    assert not or_result.model.prior_used_ and "country" in or_result.model.categories_
    ChurnScorer.from_result(or_result).save(tmp_path)
    out = ChurnScorer.load(tmp_path).score(or_lines, OR_AS_OF)
    c = or_result.customers.set_index("customer_id")
    assert out.index.equals(c.index)
    np.testing.assert_allclose(out["churn_probability"], c["churn_probability"], rtol=1e-12)
    ids = set(or_lines["customer_id"].astype(str))
    strings = _json_strings(json.loads((tmp_path / ChurnScorer.STATE_FILE).read_text()))
    assert "United Kingdom" in strings and not strings & ids


def _reasons_row_by_row(features, contributions, k=3):
    """The reference: describe_feature on every row's candidates, one by one (those with a
    true sentence, up to 3 k of them)."""
    cols = [c for c in contributions.columns if c != "bias"]
    vals = contributions[cols].to_numpy(dtype=np.float64).copy()
    for i, rec in enumerate(features.to_dict("records")):
        for j, c in enumerate(cols):
            if describe_feature(c, rec) is None:
                vals[i, j] = -np.inf
    order = np.argsort(-vals, axis=1, kind="stable")[:, : 3 * k]
    out = []
    for i, rec in enumerate(features.to_dict("records")):
        reasons = []
        for j in order[i]:
            if vals[i, j] <= 0 or len(reasons) >= k:
                break
            text = describe_feature(cols[j], rec)
            if text is None:  # not true / meaningful for this customer: skipped
                continue
            if text not in reasons:
                reasons.append(text)
        out.append(reasons)
    return out


def test_vectorised_reasons_equal_the_row_by_row_descriptions(sim_result):
    """explain_reasons (column-wise) gives exactly the texts of describe_feature per row, for
    every feature, with real SHAP values and with random signed contributions that put every
    feature (and missing values) into the top k."""
    from crmkit.models.churn import explain_reasons

    X = sim_result.test_features.head(1500).copy()
    X.iloc[::7, X.columns.get_loc("gap_mean_days")] = np.nan
    shap = sim_result.model.shap_values(X)
    got = explain_reasons(X, shap, k=3)
    assert got.tolist() == _reasons_row_by_row(X, shap, 3)
    feats = [c for c in shap.columns if c != "bias"]
    rng = np.random.default_rng(5)
    rand = pd.DataFrame(rng.normal(size=(len(X), len(feats))), index=X.index, columns=feats)
    got = explain_reasons(X, rand, k=5)
    assert got.tolist() == _reasons_row_by_row(X, rand, 5)
    assert got.map(len).max() == 5
