"""Tests of crmkit.models.recommend and the recommend stage: list rules (top-N, no duplicates,
unseen slots, recent purchases, reactivation first, no look-ahead), reasons, scores, the
evaluation and its baselines on simulated data and Online Retail (the issue's reference
numbers), bad input and MLflow logging."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crmkit.data.clean import clean_lines
from crmkit.data.io import load_transactions
from crmkit.data.simulate import simulate_transactions
from crmkit.errors import ConfigError, DataContractError
from crmkit.models.recommend import (
    KINDS,
    RECOMMENDATION_COLUMNS,
    Recommender,
    compare_with_baselines,
    evaluate_recommendations,
    own_items_baseline,
    popularity_baseline,
    recommend,
)
from crmkit.pipelines.basket import RecommendConfig, log_basket_to_mlflow, run_recommend

AS_OF = "2023-06-30"
HOLDOUT_END = "2023-09-28"


@pytest.fixture(scope="module")
def sim_lines():
    sim = simulate_transactions(n_customers=3_000, seed=2)
    return clean_lines(load_transactions(sim.lines)).lines


@pytest.fixture(scope="module")
def sim_recs(sim_lines):
    model = Recommender().fit(sim_lines, AS_OF)
    return model, model.recommend()


# --------------------------------------------------------------------------------------------
# list rules


def test_lists_are_well_formed(sim_lines, sim_recs):
    model, recs = sim_recs
    assert list(recs.columns) == list(RECOMMENDATION_COLUMNS)
    assert set(recs["kind"]) <= set(KINDS) and {"cross_sell", "up_sell", "resell"} <= set(
        recs["kind"]
    )
    assert recs["reason"].str.len().min() > 20
    assert not recs.duplicated(["customer_id", "product_id"]).any()
    ranks = recs.groupby("customer_id")["rank"].agg(["min", "max", "count"])
    assert (ranks["min"] == 1).all() and (ranks["max"] == ranks["count"]).all()
    assert ranks["count"].max() == 10
    # every customer with a purchase before the cutoff gets a list
    past = sim_lines[sim_lines["order_ts"] < "2023-07-01"]
    assert recs["customer_id"].nunique() == past["customer_id"].nunique()
    # ranked by score, reactivation first
    first = recs.groupby("customer_id").head(1)
    react = recs[recs["kind"] == "reactivation"]
    assert (react["rank"] == 1).all() and len(react) > 0
    body = recs[recs["kind"] != "reactivation"].sort_values(["customer_id", "rank"])
    assert (body.groupby("customer_id")["score"].diff().dropna() <= 1e-12).all()
    assert len(first) == recs["customer_id"].nunique()


def test_seen_unseen_and_recent_purchases(sim_lines, sim_recs):
    model, recs = sim_recs
    past = sim_lines[sim_lines["order_ts"] < "2023-07-01"]
    bought = set(zip(past["customer_id"], past["product_id"], strict=True))
    key = list(zip(recs["customer_id"], recs["product_id"], strict=True))
    seen = np.array([k in bought for k in key])
    kind = recs["kind"].to_numpy()
    assert not seen[np.isin(kind, ["cross_sell", "up_sell"])].any()
    assert seen[np.isin(kind, ["resell", "reactivation"])].all()
    # nothing bought in the last 7 days unless it is a due replenishment
    recent = past[past["order_ts"] >= "2023-06-24"]
    recent_keys = set(zip(recent["customer_id"], recent["product_id"], strict=True))
    is_recent = np.array([k in recent_keys for k in key])
    assert recs["reason"][is_recent].str.contains("repurchase is (?:due|overdue)").all()
    # reserved unseen slots: 3 of 10 whenever the list is full
    full = recs.groupby("customer_id").filter(lambda g: len(g) == 10)
    n_unseen = full["kind"].isin(["cross_sell", "up_sell"]).groupby(full["customer_id"]).sum()
    assert (n_unseen >= 3).all()


def test_no_look_ahead(sim_lines, sim_recs):
    _, recs = sim_recs
    cust = recs["customer_id"].iloc[0]
    late = pd.DataFrame(
        {
            "customer_id": [cust] * 2,
            "order_id": ["LATE1", "LATE1"],
            "order_ts": pd.to_datetime(["2023-07-01 00:00:01"] * 2),
            "product_id": recs["product_id"].iloc[:2].tolist(),
            "quantity": [50, 50],
            "unit_price": [99.0, 99.0],
        }
    )
    late["amount"] = late["quantity"] * late["unit_price"]
    more = pd.concat([sim_lines, late], ignore_index=True)
    again = Recommender().fit(more, AS_OF).recommend()
    pd.testing.assert_frame_equal(again, recs)


def test_customers_subset_and_top_n(sim_lines, sim_recs):
    model, recs = sim_recs
    some = recs["customer_id"].drop_duplicates().iloc[:5].tolist()
    sub = model.recommend(some + ["nobody"])
    assert sorted(sub["customer_id"].unique()) == sorted(some)
    short = Recommender(top_n=3, unseen_share=0.0, kinds=("resell",)).fit(sim_lines, AS_OF)
    r3 = short.recommend()
    assert r3.groupby("customer_id").size().max() == 3 and set(r3["kind"]) == {"resell"}
    assert model.recommend([]).empty


# --------------------------------------------------------------------------------------------
# handmade shop: cross-sell and up-sell reasons


def _shop() -> pd.DataFrame:
    """100 customers; a => b (40 of 50 orders with a); cheap c1 (2.00) and premium p1 (10.00)
    in category K bought together by 30 customers; customer T bought a and c1 only."""
    rows = []
    ts0 = pd.Timestamp("2023-01-05 10:00")

    def order(cust, oid, day, items):
        for pid, cat, price in items:
            rows.append((cust, oid, ts0 + pd.Timedelta(days=day), pid, 1, price, cat))

    A, B = ("a", "L", 5.0), ("b", "L", 5.5)
    C, D = ("c", "M", 3.0), ("d", "M", 4.0)
    C1, P1 = ("c1", "K", 2.0), ("p1", "K", 10.0)
    n = 0
    for i in range(100):
        cust = f"U{i:03d}"
        for j in range(3):
            n += 1
            day = (i * 7 + j * 40) % 150
            if j == 0 and i < 50:
                order(cust, f"O{n}", day, [A, B] if i < 40 else [A])
            elif j == 1 and i < 30:
                order(cust, f"O{n}", day, [C1, P1])
            else:
                order(cust, f"O{n}", day, [C] if (i + j) % 2 else [D])
    order("T", "OT1", 120, [A])
    order("T", "OT2", 125, [C1])
    f = pd.DataFrame(
        rows,
        columns=[
            "customer_id",
            "order_id",
            "order_ts",
            "product_id",
            "quantity",
            "unit_price",
            "category",
        ],
    )
    f["amount"] = f["quantity"] * f["unit_price"]
    return f


def test_cross_and_up_sell_reasons():
    lines = _shop()
    model = Recommender(min_lift=1.0).fit(lines, AS_OF)
    recs = model.recommend(["T"]).set_index("product_id")
    assert recs.loc["b", "kind"] == "cross_sell"
    n_orders = lines["order_id"].nunique()
    n_b = lines.loc[lines["product_id"] == "b", "order_id"].nunique()
    n_a = lines.loc[lines["product_id"] == "a", "order_id"].nunique()
    conf = 40 / n_a
    lift = conf / (n_b / n_orders)
    assert recs.loc["b", "reason"] == (
        f"bought a; {round(conf * 100)}% of baskets with a also have b, {lift:.1f}x the usual rate"
    )
    assert recs.loc["p1", "kind"] == "up_sell"
    assert recs.loc["p1", "reason"] == (
        "buys K: 100% of the customers who bought c1 (2.00) also bought the higher-priced p1 "
        "(10.00)"
    )
    assert set(recs.index) >= {"a", "c1"}  # re-sell of what T bought
    assert any("too little history" in n for n in model.notes_)


def test_scores_use_prices_margins_and_customer_scores():
    lines = _shop()
    base = Recommender(min_lift=1.0).fit(lines, AS_OF)
    r0 = base.recommend(["T"]).set_index("product_id")
    # catalogue margins replace prices: p1's margin is a tenth of its price
    cat = pd.DataFrame({"product_id": ["p1"], "margin": [1.0]})
    r1 = Recommender(min_lift=1.0).fit(lines, AS_OF, catalogue=cat).recommend(["T"])
    r1 = r1.set_index("product_id")
    assert r1.loc["p1", "score"] == pytest.approx(r0.loc["p1", "score"] / 10)
    # P(alive) and CLV scale a customer's scores and never reorder the list
    scores = pd.DataFrame({"customer_id": ["T"], "p_alive": [0.5], "clv": [100.0]})
    r2 = Recommender(min_lift=1.0).fit(lines, AS_OF, customer_scores=scores).recommend(["T"])
    r2 = r2.set_index("product_id")
    assert list(r2.index) == list(r0.index)
    assert np.allclose(r2["score"], r0["score"] * 0.5)  # the only CLV, so weight 1
    # value_per="none": ranked by probability, scores are probabilities
    r3 = Recommender(min_lift=1.0, value_per="none").fit(lines, AS_OF).recommend(["T"])
    assert r3["score"].between(0, 1).all() and r3["score"].is_monotonic_decreasing
    with pytest.raises(DataContractError, match="p_alive"):
        Recommender().fit(lines, AS_OF, customer_scores=scores.assign(p_alive=1.5))
    with pytest.raises(DataContractError, match="no prices"):
        Recommender().fit(lines, AS_OF, catalogue=pd.DataFrame({"product_id": ["a"]}))


def test_bad_input_and_parameters():
    lines = _shop()
    with pytest.raises(DataContractError, match="order-level"):
        Recommender().fit(lines.drop(columns=["product_id"]), AS_OF)
    with pytest.raises(DataContractError, match="no purchase before"):
        Recommender().fit(lines, "2020-01-01")
    for bad in ({"top_n": 0}, {"unseen_share": 2.0}, {"kinds": ("nope",)}):
        with pytest.raises(ConfigError):
            Recommender(**bad).fit(lines, AS_OF)
    with pytest.raises(ConfigError):
        Recommender().recommend()
    assert Recommender().set_params(top_n=3).get_params()["top_n"] == 3


# --------------------------------------------------------------------------------------------
# evaluation


def test_evaluate_recommendations_by_hand():
    recs = pd.DataFrame(
        {
            "customer_id": ["1", "1", "1", "2", "2", "3"],
            "rank": [1, 2, 3, 1, 2, 1],
            "product_id": ["a", "b", "c", "a", "d", "e"],
            "kind": ["resell", "cross_sell", "cross_sell", "resell", "resell", "cross_sell"],
        }
    )
    holdout = pd.DataFrame(
        {
            "customer_id": ["1", "1", "2", "4"],
            "product_id": ["a", "x", "z", "a"],
            "amount": [10.0, 30.0, 60.0, 5.0],
            "quantity": [1, 1, 1, 1],
        }
    )
    history = pd.DataFrame({"customer_id": ["1", "2", "2"], "product_id": ["a", "a", "d"]})
    ev = evaluate_recommendations(recs, holdout, 2, history=history)
    o = ev["overall"]
    assert ev["customers"] == 3 and ev["customers_with_purchases"] == 2
    assert o["precision"] == pytest.approx(1 / (2 * 3))  # one hit in 3 lists of 2
    assert o["recall"] == pytest.approx((1 / 2 + 0 / 1) / 2)
    assert o["hit_rate"] == pytest.approx(1 / 3)
    assert o["revenue_captured"] == pytest.approx(10 / 100)
    assert ev["resell"]["hits"] == 1 and ev["unseen"]["hits"] == 0
    assert ev["unseen"]["recall"] == pytest.approx((0 / 1 + 0 / 1) / 2)
    ev4 = evaluate_recommendations(recs, holdout, 2, customers=["1", "2", "3", "4"])
    assert ev4["overall"]["precision"] == pytest.approx(1 / 8)
    assert np.isnan(ev4["unseen"]["recall"])  # no history: parts by kind, recall unknown
    with pytest.raises(ConfigError):
        evaluate_recommendations(recs, holdout, 0)


def test_baselines(sim_lines):
    pop = popularity_baseline(sim_lines, AS_OF, 5)
    assert pop.groupby("customer_id").size().eq(5).all()
    assert pop.groupby("customer_id")["product_id"].apply(tuple).nunique() == 1
    unseen = popularity_baseline(sim_lines, AS_OF, 5, unseen_only=True)
    past = sim_lines[sim_lines["order_ts"] < "2023-07-01"]
    bought = set(zip(past["customer_id"], past["product_id"], strict=True))
    assert not any(k in bought for k in zip(unseen["customer_id"], unseen["product_id"]))
    own = own_items_baseline(sim_lines, AS_OF, 5)
    assert all(k in bought for k in zip(own["customer_id"], own["product_id"], strict=True))


def test_lists_beat_popularity_on_simulated_data():
    sim = simulate_transactions(n_customers=10_000, seed=0)
    lines = clean_lines(load_transactions(sim.lines)).lines
    recs = recommend(lines, AS_OF)
    tab = compare_with_baselines(lines, AS_OF, HOLDOUT_END, recs, 10)
    print("\n" + tab.round(4).T.to_string())
    lists, pop, own = tab.loc["lists"], tab.loc["popularity"], tab.loc["own_items"]
    assert lists["overall_precision"] > 1.05 * pop["overall_precision"]
    assert lists["overall_hit_rate"] > pop["overall_hit_rate"]
    assert lists["overall_revenue_captured"] > pop["overall_revenue_captured"]
    assert lists["overall_precision"] >= own["overall_precision"]
    assert lists["unseen_precision"] > 0.2 * lists["overall_precision"]  # unseen get slots


@pytest.mark.realdata
def test_online_retail_reference_numbers(shared_data):
    """Cutoff 2011-09-09, the next 91 days, all 3,370 customers active before the cutoff."""
    raw = load_transactions(shared_data / "online_retail.parquet")
    lines = clean_lines(raw, {"drop_non_product_lines": False, "drop_exact_duplicates": False})
    lines = lines.lines
    recs = recommend(lines, "2011-09-09")
    tab = compare_with_baselines(lines, "2011-09-09", "2011-12-09", recs, 10)
    print("\n" + tab.round(4).T.to_string())
    assert (tab["customers"] == 3_370).all()
    pop, own = tab.loc["popularity"], tab.loc["own_items"]
    # the issue author's figures
    assert pop["overall_precision"] == pytest.approx(0.065, abs=6e-4)
    assert pop["overall_hit_rate"] == pytest.approx(0.290, abs=5e-4)
    assert tab.loc["popularity_unseen", "overall_precision"] == pytest.approx(0.029, abs=5e-4)
    assert own["overall_precision"] == pytest.approx(0.170, abs=5e-4)
    assert own["overall_hit_rate"] == pytest.approx(0.447, abs=5e-4)
    lists = tab.loc["lists"]
    assert lists["overall_precision"] > 2 * pop["overall_precision"]
    assert lists["overall_hit_rate"] > own["overall_hit_rate"]
    # the unseen slots do better than the best sellers the customer has not bought
    assert (
        lists["unseen_slot_precision"] > 1.3 * tab.loc["popularity_unseen", "unseen_slot_precision"]
    )


# --------------------------------------------------------------------------------------------
# the recommend stage


def test_run_recommend_writes_lists_and_metrics(tmp_path, sim_lines):
    res = run_recommend(sim_lines, AS_OF, tmp_path / "rec", holdout_end=HOLDOUT_END)
    recs = pd.read_parquet(tmp_path / "rec" / "recommendations.parquet")
    assert list(recs.columns) == list(RECOMMENDATION_COLUMNS) and len(recs) == len(
        res.recommendations
    )
    metrics = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    for name in ("lists", "popularity", "popularity_unseen", "own_items"):
        for part in ("overall", "unseen", "resell"):
            assert {"precision", "recall", "hit_rate", "revenue_captured"} <= set(
                metrics[name][part]
            )
    summary = json.loads((tmp_path / "rec" / "summary.json").read_text())
    assert summary["rows"] == len(recs) and summary["rows_by_kind"]["resell"] > 0
    assert not (tmp_path / "norec" / "metrics.json").exists()
    run_recommend(sim_lines, AS_OF, tmp_path / "norec")
    assert not (tmp_path / "norec" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("case", "expect"),
    [("order_level", "order-level log"), ("catalogue", "no prices")],
)
def test_run_recommend_bad_input_gives_empty_well_formed_outputs(tmp_path, case, expect):
    lines = _shop()
    kwargs = {}
    if case == "order_level":
        lines = load_transactions(lines.drop(columns=["product_id", "category"]))
    else:
        kwargs["catalogue"] = pd.DataFrame({"product_id": ["a"], "category": ["L"]})
    res = run_recommend(lines, AS_OF, tmp_path / "out", holdout_end="2023-07-30", **kwargs)
    assert any(expect in m for m in res.messages)
    recs = pd.read_parquet(tmp_path / "out" / "recommendations.parquet")
    assert recs.empty and list(recs.columns) == list(RECOMMENDATION_COLUMNS)
    assert str(recs["customer_id"].dtype) in ("str", "string", "object")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped"] and any(expect in m for m in summary["notes"])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["skipped"]


def test_recommend_config():
    from pydantic import ValidationError

    cfg = RecommendConfig(top_n=5)
    params = cfg.recommender_params()
    assert params["top_n"] == 5 and isinstance(params["kinds"], tuple)
    assert set(params) == set(Recommender().get_params())
    with pytest.raises(ValidationError):
        RecommendConfig(topn=5)


def test_log_recommend_to_mlflow(tmp_path, sim_lines):
    import mlflow

    from crmkit.tracking import configure

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configure(uri, experiment="recommend-test")
    res = run_recommend(sim_lines, AS_OF, tmp_path / "rec", holdout_end=HOLDOUT_END)
    with mlflow.start_run() as run:
        log_basket_to_mlflow(res)
    data = mlflow.MlflowClient(uri).get_run(run.info.run_id).data
    assert data.params["recommend.top_n"] == "10"
    assert data.metrics["recommend.rows"] == len(res.recommendations)
    assert data.metrics["recommend.lists.overall.precision"] == pytest.approx(
        res.metrics["lists"]["overall"]["precision"]
    )
    assert "recommend.popularity.overall.hit_rate" in data.metrics
    mlflow.set_tracking_uri(None)
