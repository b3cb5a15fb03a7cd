"""Tests of crmkit.models.rules and the basket stage: the published Groceries counts (arules
conventions), exact equality with plain mlxtend, planted affinities in simulated data,
conventions on handmade baskets, outputs, bad input and MLflow logging."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crmkit.data.clean import clean_lines
from crmkit.data.io import load_baskets, load_transactions
from crmkit.data.simulate import simulate_transactions
from crmkit.errors import ConfigError, DataContractError
from crmkit.models.rules import (
    ITEMSET_COLUMNS,
    RULE_COLUMNS,
    AssociationRules,
    association_rules,
    basket_matrix,
    frequent_itemsets,
    plot_rules,
    rules_table,
)
from crmkit.pipelines.basket import BasketConfig, log_basket_to_mlflow, run_basket


def _lengths(rules: pd.DataFrame) -> dict[int, int]:
    return {int(k): int(v) for k, v in rules["length"].value_counts().sort_index().items()}


def _as_dict(itemsets: pd.DataFrame) -> dict[frozenset, float]:
    return dict(zip(itemsets["itemsets"].map(frozenset), itemsets["support"], strict=True))


# --------------------------------------------------------------------------------------------
# Groceries: the published reference counts


@pytest.fixture(scope="module")
def groceries(shared_data):
    return basket_matrix(load_baskets(shared_data / "groceries.csv"))


@pytest.fixture(scope="module")
def groceries_001(groceries):
    return AssociationRules(min_support=0.001, min_confidence=0.5).fit(groceries)


@pytest.mark.realdata
def test_groceries_matrix(groceries):
    assert (groceries.n_baskets, groceries.n_items) == (9_835, 169)
    assert groceries.matrix.nnz == 43_367
    assert groceries.matrix.dtype == bool
    assert "cream cheese " in groceries.items  # trailing space kept, as in arules


@pytest.mark.realdata
def test_groceries_5668_rules(groceries_001):
    rules = groceries_001.rules_
    assert len(rules) == 5_668
    assert _lengths(rules) == {2: 11, 3: 1_461, 4: 3_211, 5: 939, 6: 46}
    top = rules.nlargest(3, "lift")
    got = [(set(r.antecedents), r.consequents[0]) for r in top.itertuples()]
    assert got == [
        ({"Instant food products", "soda"}, "hamburger meat"),
        ({"popcorn", "soda"}, "salty snack"),
        ({"baking powder", "flour"}, "sugar"),
    ]
    assert top["lift"].round(3).tolist() == [18.996, 16.698, 16.408]
    first = top.iloc[0]
    assert first["support"] == pytest.approx(0.00122, abs=5e-6)
    assert first["confidence"] == pytest.approx(0.632, abs=5e-4)
    # every rule has one consequent and consistent metrics
    assert (rules["consequents"].map(len) == 1).all()
    assert np.allclose(rules["lift"], rules["confidence"] / rules["consequent_support"])
    assert np.allclose(
        rules["leverage"],
        rules["support"] - rules["antecedent_support"] * rules["consequent_support"],
    )


@pytest.mark.realdata
def test_groceries_410_rules_ties_count(groceries):
    rules = AssociationRules(min_support=0.001, min_confidence=0.8).fit(groceries).rules_
    assert len(rules) == 410
    assert _lengths(rules) == {3: 29, 4: 229, 5: 140, 6: 12}
    assert int((rules["lift"] > 5).sum()) == 32
    at_08 = int(np.isclose(rules["confidence"], 0.8, atol=1e-12).sum())
    assert 37 <= at_08 <= 40  # the floating-point ties, counted with ">="
    assert 371 <= len(rules) - at_08 <= 373  # a strict ">" would give these


@pytest.mark.realdata
def test_groceries_463_rules(groceries):
    rules = AssociationRules(min_support=0.006, min_confidence=0.25, min_len=2).fit(groceries)
    r = rules.rules_
    assert len(r) == 463
    assert _lengths(r) == {2: 150, 3: 297, 4: 16}
    assert (r.iloc[0]["antecedents"], r.iloc[0]["consequents"]) == (
        ["herbs"],
        ["root vegetables"],
    )
    assert r.iloc[0]["lift"] == pytest.approx(3.956, abs=5e-4)
    # arules' default minlen = 1 adds the one rule with an empty left-hand side
    default = AssociationRules(min_support=0.006, min_confidence=0.25).fit(groceries).rules_
    extra = default[default["antecedents"].map(len) == 0]
    assert len(default) == 464
    assert extra["consequents"].tolist() == [["whole milk"]]
    assert extra["lift"].iloc[0] == pytest.approx(1.0)


@pytest.mark.realdata
def test_groceries_63_itemsets(groceries):
    fi = frequent_itemsets(groceries, 0.02)
    assert int((fi["length"] >= 2).sum()) == 63
    assert list(fi.columns) == list(ITEMSET_COLUMNS)


@pytest.mark.realdata
def test_groceries_equal_to_plain_mlxtend(groceries, groceries_001, shared_data):
    """Itemsets and supports equal mlxtend's dense TransactionEncoder + fpgrowth path, for
    both miners and for the per-item projections used above the memory budget."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlxtend.frequent_patterns import fpgrowth
        from mlxtend.preprocessing import TransactionEncoder

        long = load_baskets(shared_data / "groceries.csv")
        tx = long.groupby("order_id", sort=False)["product_id"].apply(list).tolist()
        te = TransactionEncoder()
        onehot = pd.DataFrame(te.fit(tx).transform(tx), columns=te.columns_)
        ref = _as_dict(fpgrowth(onehot, min_support=0.001, use_colnames=True))
    ours = _as_dict(groceries_001.itemsets_)
    assert ours.keys() == ref.keys()
    assert max(abs(ours[k] - ref[k]) for k in ref) == 0.0
    assert _as_dict(frequent_itemsets(groceries, 0.001, algorithm="apriori")) == ours
    assert _as_dict(frequent_itemsets(groceries, 0.001, max_dense_bytes=1)) == ours


# --------------------------------------------------------------------------------------------
# simulated data: the planted affinities come out on top


def test_planted_affinities_among_top_rules():
    sim = simulate_transactions(n_customers=4_000, seed=3)
    lines = clean_lines(load_transactions(sim.lines)).lines
    rules = association_rules(lines, min_support=0.001, min_confidence=0.3, min_len=2, max_len=2)
    planted = set(zip(sim.truth.rules["antecedent"], sim.truth.rules["consequent"], strict=True))
    n = len(planted)
    top = rules.nlargest(2 * n, "lift")  # both directions of each planted pair
    found = {(r.antecedents[0], r.consequents[0]) for r in top.itertuples()}
    assert planted <= found
    conf = rules.set_index(rules["antecedents"].str[0] + ">" + rules["consequents"].str[0])
    for a, b in planted:  # the planted confidence is 0.6
        assert conf.loc[f"{a}>{b}", "confidence"] == pytest.approx(0.6, abs=0.1)


def test_category_level_and_returns_ignored():
    lines = pd.DataFrame(
        {
            "order_id": ["1", "1", "2", "2", "3", "3", "4"],
            "product_id": ["a", "b", "a", "c", "b", "c", "a"],
            "category": ["X", "Y", "X", "Y", "Y", "Y", "X"],
            "quantity": [1, 1, 1, 1, 1, -1, 1],
        }
    )
    bm = basket_matrix(lines, level="category")
    assert list(bm.items) == ["X", "Y"]
    assert bm.n_baskets == 4
    assert bm.matrix.nnz == 6  # order 3's return line is no purchase
    r = association_rules(lines, 0.25, 0.5, level="category", min_len=2)
    assert {(tuple(a), c[0]) for a, c in zip(r["antecedents"], r["consequents"], strict=True)} == {
        (("X",), "Y"),
        (("Y",), "X"),
    }


# --------------------------------------------------------------------------------------------
# conventions on handmade baskets

BASKETS = [
    ["a", "b"],
    ["a", "b"],
    ["a", "b"],
    ["a", "b"],
    ["a", "c"],
    ["b", "c"],
    ["b", "c"],
    ["c"],
]


def test_inclusive_thresholds_and_metrics():
    # a => b: support 4/8, confidence 4/5 = 0.8 exactly (b => a: 4/6)
    r = association_rules(BASKETS, 0.5, 0.8, min_len=2)
    assert [(x.antecedents, x.consequents) for x in r.itertuples()] == [(["a"], ["b"])]
    row = r.iloc[0]
    assert row["confidence"] == 0.8 and row["count"] == 4 and row["length"] == 2
    assert row["lift"] == pytest.approx(0.8 / (6 / 8))
    assert row["conviction"] == pytest.approx((1 - 6 / 8) / (1 - 0.8))
    assert association_rules(BASKETS, 0.5 + 1e-6, 0.8, min_len=2).empty
    assert association_rules(BASKETS, 0.5, 0.8 + 1e-6, min_len=2).empty
    assert len(association_rules(BASKETS, 0.5, 0.8, min_len=2, min_lift=1.07)) == 0
    sure = association_rules([["x", "y"], ["x", "y"], ["z"]], 0.5, 1.0, min_len=2)
    assert np.isinf(sure["conviction"]).all()


def test_item_constraints_and_max_len():
    baskets = [["a", "b", "c"]] * 3 + [["a", "b"], ["c", "d"], ["d"]]
    r = association_rules(baskets, 0.3, 0.5, min_len=2)
    assert r["length"].max() == 3
    assert association_rules(baskets, 0.3, 0.5, min_len=2, max_len=2)["length"].max() == 2
    only_c = association_rules(baskets, 0.3, 0.5, min_len=2, include_consequents=["c"])
    assert set(only_c["consequents"].str[0]) == {"c"}
    no_a = association_rules(baskets, 0.3, 0.5, min_len=2, exclude_antecedents=["a"])
    assert not any("a" in x for x in no_a["antecedents"])
    with_b = association_rules(baskets, 0.3, 0.5, min_len=2, include_antecedents=["b"])
    assert all("b" in x for x in with_b["antecedents"]) and len(with_b)
    no_d = association_rules(baskets, 0.1, 0.1, min_len=2, exclude_consequents=["d"])
    assert "d" not in set(no_d["consequents"].str[0])
    assert association_rules(baskets, 0.3, 0.5, include_consequents=["nope"]).empty


def test_sparse_encoding_matches_transaction_encoder():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlxtend.preprocessing import TransactionEncoder

    rng = np.random.default_rng(0)
    baskets = [
        list(rng.choice(list("abcdefgh"), size=rng.integers(1, 5), replace=True))
        for _ in range(200)
    ]
    te = TransactionEncoder()
    dense = te.fit(baskets).transform(baskets)
    bm = basket_matrix(baskets)
    assert list(bm.items) == list(te.columns_)
    assert (bm.matrix.toarray() == dense).all()


def test_order_level_log_and_bad_parameters():
    raw = load_transactions(
        pd.DataFrame(
            {"customer_id": ["1", "2"], "order_ts": ["2023-01-01", "2023-01-02"], "amount": [5, 6]}
        )
    )
    assert raw.level == "order"
    with pytest.raises(DataContractError, match="order-level"):
        basket_matrix(raw)
    with pytest.raises(DataContractError, match="order-level"):
        basket_matrix(pd.DataFrame({"order_id": ["1"], "amount": [1.0]}))
    with pytest.raises(ConfigError):
        AssociationRules(min_support=0).fit(BASKETS)
    with pytest.raises(ConfigError):
        AssociationRules(algorithm="eclat").fit(BASKETS)
    with pytest.raises(ConfigError):
        AssociationRules(max_len=0).fit(BASKETS)
    est = AssociationRules().set_params(min_support=0.2)
    assert est.get_params()["min_support"] == 0.2
    with pytest.raises(ConfigError):
        est.set_params(nope=1)


def test_plot_rules_returns_ax():
    from matplotlib.figure import Figure

    rules = association_rules(BASKETS, 0.1, 0.1, min_len=2)
    ax = plot_rules(rules)
    assert isinstance(ax.figure, Figure)
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == len(rules)
    fig = Figure()
    ax2 = fig.add_subplot()
    assert plot_rules(rules.iloc[:0], ax=ax2) is ax2
    assert ax2.texts[0].get_text() == "no rules"
    with pytest.raises(DataContractError):
        plot_rules(pd.DataFrame({"support": [0.1]}))


def test_rules_parquet_roundtrip(tmp_path):
    import pyarrow.parquet as pq

    rules = association_rules(BASKETS, 0.1, 0.1, min_len=2)
    pq.write_table(rules_table(rules), tmp_path / "r.parquet")
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert list(back.columns) == list(RULE_COLUMNS)
    assert [list(x) for x in back["antecedents"]] == rules["antecedents"].tolist()
    empty = rules_table(rules.iloc[:0])
    assert (
        empty.num_rows == 0 and str(empty.schema.field("antecedents").type) == "list<item: string>"
    )


# --------------------------------------------------------------------------------------------
# the basket stage


def _read_outputs(out):
    return (
        pd.read_parquet(out / "itemsets.parquet"),
        pd.read_parquet(out / "rules.parquet"),
        json.loads((out / "summary.json").read_text()),
    )


def test_run_basket_writes_outputs(tmp_path):
    sim = simulate_transactions(n_customers=1_500, seed=1)
    lines = clean_lines(load_transactions(sim.lines)).lines
    res = run_basket(
        lines, tmp_path / "basket", BasketConfig(min_support=0.002, min_confidence=0.3)
    )
    itemsets, rules, summary = _read_outputs(tmp_path / "basket")
    assert (tmp_path / "basket" / "rules.png").stat().st_size > 1000
    assert summary["n_rules"] == len(rules) == len(res.rules) > 0
    assert summary["n_itemsets"] == len(itemsets)
    assert summary["n_baskets"] == lines["order_id"].nunique()
    assert summary["top_rules"][0]["rule"].startswith("{")
    assert not res.messages
    assert rules.columns[:9].tolist() == [
        "antecedents",
        "consequents",
        "antecedent_support",
        "consequent_support",
        "support",
        "confidence",
        "lift",
        "leverage",
        "conviction",
    ]


@pytest.mark.parametrize(
    ("data", "config", "expect"),
    [
        ([["a"], ["b"], ["a"]], BasketConfig(), "no basket holds two or more items"),
        (BASKETS, BasketConfig(min_support=0.9), "no association rule reaches"),
        (
            load_transactions(
                pd.DataFrame({"customer_id": ["1"], "order_ts": ["2023-01-01"], "amount": [5.0]})
            ),
            BasketConfig(),
            "order-level log",
        ),
    ],
)
def test_run_basket_bad_input_gives_empty_well_formed_outputs(tmp_path, data, config, expect):
    res = run_basket(data, tmp_path / "out", config)
    assert any(expect in m for m in res.messages)
    itemsets, rules, summary = _read_outputs(tmp_path / "out")
    assert rules.empty and list(rules.columns) == list(RULE_COLUMNS)
    assert list(itemsets.columns) == list(ITEMSET_COLUMNS)
    assert summary["n_rules"] == 0 and any(expect in m for m in summary["messages"])
    assert (tmp_path / "out" / "rules.png").exists()


def test_basket_config_forbids_unknown_keys():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        BasketConfig(min_suport=0.1)
    with pytest.raises(ValidationError):
        BasketConfig(min_support=0)


def test_log_basket_to_mlflow(tmp_path):
    import mlflow

    from crmkit.tracking import configure

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configure(uri, experiment="basket-test")
    res = run_basket(BASKETS, tmp_path / "out", BasketConfig(min_support=0.1, min_confidence=0.1))
    with mlflow.start_run() as run:
        log_basket_to_mlflow(res)
    client = mlflow.MlflowClient(uri)
    data = client.get_run(run.info.run_id).data
    assert data.params["basket.min_support"] == "0.1"
    assert data.metrics["basket.n_rules"] == len(res.rules)
    assert data.metrics["basket.n_baskets"] == 8
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/rules.png" in arts
    assert "basket_summary.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    mlflow.set_tracking_uri(None)
