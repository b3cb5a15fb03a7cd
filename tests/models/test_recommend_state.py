"""Tests of the recommender's learned state: save_state / load_state / recommend_for.

The state holds parameters and product-level aggregates only; applied to the training lines it
reproduces ``recommend()`` exactly, on simulated data and on Online Retail; applied to later
lines it follows the list rules; bad input fails with crmkit errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from crmkit.data.clean import clean_lines
from crmkit.data.io import load_transactions
from crmkit.data.simulate import simulate_transactions
from crmkit.errors import ConfigError, DataContractError
from crmkit.models.recommend import RECOMMENDATION_COLUMNS, Recommender

AS_OF = "2023-06-30"
LATER = "2023-12-31"
STATE_FILES = {
    "recommender.json",
    "products.parquet",
    "rules.parquet",
    "calibration.parquet",
    "rule_model.npz",
    "upsell_model.npz",
    "calibration.npz",
}


@pytest.fixture(scope="module")
def sim_lines():
    sim = simulate_transactions(n_customers=800, seed=5)
    return clean_lines(load_transactions(sim.lines)).lines


def _scores(lines: pd.DataFrame) -> pd.DataFrame:
    ids = pd.unique(lines["customer_id"])
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "p_alive": rng.uniform(0.1, 1, len(ids)),
            "clv": rng.gamma(2, 50, len(ids)),
        }
    )


def _stored_strings(state: Path) -> set[str]:
    """Every string value stored in the state's Parquet tables and JSON (decoded)."""
    out: set[str] = set()
    for f in state.glob("*.parquet"):
        for col in pq.read_table(f).to_pylist():
            for v in col.values():
                vals = v if isinstance(v, list) else [v]
                out.update(x for x in vals if isinstance(x, str))

    def walk(x: object) -> None:
        if isinstance(x, str):
            out.add(x)
        elif isinstance(x, dict):
            for k, v in x.items():
                out.add(k)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(json.loads((state / "recommender.json").read_text("utf-8")))
    return out


def _assert_no_customer_ids(state: Path, customer_ids: set[str], max_excused: float) -> None:
    """No training customer id in any file's bytes, nor in any decoded string.

    Ids that are substrings of the product-level labels the state must hold (product ids,
    names, category labels, e.g. Online Retail's customer 15036 and stock code 15036) are
    excused in the byte scan, and must be few."""
    files = sorted(state.iterdir())
    assert {f.name for f in files} <= STATE_FILES
    strings = _stored_strings(state)
    labels = "\n".join(strings)
    excused = {c for c in customer_ids if c in labels}
    assert len(excused) <= max_excused * len(customer_ids)
    # decoded: no string value is a customer id unless it is also a product label
    products = set(pq.read_table(state / "products.parquet").column("product_id").to_pylist())
    assert not (strings & customer_ids) - products
    ids = sorted(customer_ids - excused, key=len, reverse=True)
    pattern = re.compile(b"|".join(re.escape(c.encode()) for c in ids))
    for f in files:
        hit = pattern.search(f.read_bytes())
        assert hit is None, f"customer id {hit.group()!r} found in {f.name}"
        assert not f.read_bytes().startswith(b"\x80"), f"{f.name} looks like a pickle"
    # no customer-level rows: no table has a customer column or one row per customer
    for f in state.glob("*.parquet"):
        t = pq.read_table(f)
        assert "customer_id" not in t.column_names
    assert pq.read_table(state / "products.parquet").num_rows != len(customer_ids)


def _bought(lines: pd.DataFrame, as_of: str) -> pd.DataFrame:
    """Per (customer, product) before the end of ``as_of``: orders with it, first and last
    order day, computed directly with pandas."""
    cut = pd.Timestamp(as_of) + pd.Timedelta(days=1)
    past = lines[(lines["order_ts"] < cut) & (lines["quantity"] > 0)]
    day = past.groupby("order_id")["order_ts"].transform("min").dt.floor("D")
    g = past.assign(day=day).groupby(["customer_id", "product_id"])
    return pd.DataFrame(
        {"k": g["order_id"].nunique(), "first": g["day"].min(), "last": g["day"].max()}
    )


def _check_recent_rule(recs: pd.DataFrame, lines: pd.DataFrame, as_of: str, days: int) -> int:
    """Products bought in the last ``days`` days appear only as due replenishments (bought in
    at least two orders and the customer's own typical gap elapsed); cross- and up-sells are
    never bought before. Returns the number of recent-purchase rows checked."""
    hist = _bought(lines, as_of)
    key = pd.MultiIndex.from_arrays([recs["customer_id"], recs["product_id"]])
    seen = key.isin(hist.index)
    assert not seen[recs["kind"].isin(["cross_sell", "up_sell"]).to_numpy()].any()
    h = hist.reindex(key[seen])
    since = (pd.Timestamp(as_of) - h["last"]).dt.days.to_numpy()
    gap = np.maximum((h["last"] - h["first"]).dt.days.to_numpy() / np.maximum(h["k"] - 1, 1), 1)
    recent = since < days
    assert (h["k"].to_numpy()[recent] >= 2).all()
    assert (since[recent] >= gap[recent]).all()
    assert set(recs["kind"].to_numpy()[seen][recent]) <= {"resell", "reactivation"}
    return int(recent.sum())


# --------------------------------------------------------------------------------------------
# simulated data


def test_round_trip_reproduces_recommend_exactly(sim_lines, tmp_path):
    scores = _scores(sim_lines)
    fitted = Recommender(top_n=8).fit(sim_lines, AS_OF, customer_scores=scores)
    expected = fitted.recommend()
    assert {"cross_sell", "up_sell", "resell", "reactivation"} <= set(expected["kind"])
    fitted.save_state(tmp_path / "state")
    assert {f.name for f in (tmp_path / "state").iterdir()} == STATE_FILES
    loaded = Recommender.load_state(tmp_path / "state")
    got = loaded.recommend_for(sim_lines, AS_OF, customer_scores=scores)
    pd.testing.assert_frame_equal(got, expected)
    # the fitted object applies its own state the same way, and a subset too
    pd.testing.assert_frame_equal(fitted.recommend_for(sim_lines, AS_OF, scores), expected)
    some = list(pd.unique(expected["customer_id"]))[:25]
    pd.testing.assert_frame_equal(
        loaded.recommend_for(sim_lines, AS_OF, scores, customers=[*some, "nobody"]),
        fitted.recommend(some),
    )
    # the learned attributes come back
    assert loaded.get_params() == fitted.get_params()
    assert loaded.cutoff_ == fitted.cutoff_ and loaded.notes_ == fitted.notes_
    pd.testing.assert_frame_equal(loaded.products_, fitted.products_)
    pd.testing.assert_frame_equal(loaded.rules_, fitted.rules_)
    pd.testing.assert_frame_equal(loaded.calibration_, fitted.calibration_)
    assert len(loaded.customers_) == 0
    # saving a loaded state again gives the same recommender
    loaded.save_state(tmp_path / "again")
    again = Recommender.load_state(tmp_path / "again")
    pd.testing.assert_frame_equal(again.recommend_for(sim_lines, AS_OF, scores), expected)
    # data protection
    _assert_no_customer_ids(tmp_path / "state", set(sim_lines["customer_id"]), max_excused=0.0)


def test_later_as_of_new_customers_and_products(sim_lines, tmp_path):
    fitted = Recommender().fit(sim_lines, AS_OF)
    before = fitted.recommend()
    fitted.save_state(tmp_path / "state")
    loaded = Recommender.load_state(tmp_path / "state")
    # a new customer who bought a product unseen at training twice, and a known product
    tpl = sim_lines.iloc[[0, 0, 1]].copy()
    tpl["customer_id"] = "NEWCUST"
    tpl["order_id"] = ["XN1", "XN2", "XN3"]
    tpl["order_ts"] = pd.to_datetime(["2023-09-01 10:00", "2023-10-15 10:00", "2023-11-01 09:00"])
    tpl["product_id"] = ["PNEW", "PNEW", sim_lines["product_id"].iloc[1]]
    lines = pd.concat([sim_lines, tpl], ignore_index=True)
    recs = loaded.recommend_for(lines, LATER)
    assert list(recs.columns) == list(RECOMMENDATION_COLUMNS)
    past = lines[lines["order_ts"] < "2024-01-01"]
    assert set(recs["customer_id"]) == set(past["customer_id"])  # everyone, the newcomer too
    assert (recs.groupby("customer_id")["rank"].max() <= 10).all()
    assert not recs.duplicated(["customer_id", "product_id"]).any()
    # a product unseen at training: re-sold to its buyer, never cross- or up-sold
    new = recs[recs["product_id"] == "PNEW"]
    assert new["customer_id"].tolist() == ["NEWCUST"] and new["kind"].tolist() == ["resell"]
    assert new["reason"].iloc[0].startswith("bought ")
    mine = recs[recs["customer_id"] == "NEWCUST"]
    assert len(mine) == 10 and set(mine["kind"]) >= {"cross_sell", "resell"}
    # the list rules at the later date (exclude_recent_days=7 unless a due replenishment)
    _check_recent_rule(recs, lines, LATER, 7)
    # ... and the rule bites: without it, purchases of the last 7 days come back
    loose = Recommender.load_state(tmp_path / "state").set_params(exclude_recent_days=0)
    recs0 = loose.recommend_for(lines, LATER)
    hist = _bought(lines, LATER)
    h = hist.reindex(pd.MultiIndex.from_arrays([recs0["customer_id"], recs0["product_id"]]))
    n_recent = int(((pd.Timestamp(LATER) - h["last"]).dt.days < 7).sum())
    assert n_recent > 20
    strict = Recommender.load_state(tmp_path / "state").set_params(exclude_recent_days=60)
    _check_recent_rule(strict.recommend_for(lines, LATER), lines, LATER, 60)
    # the fitted object is not changed by recommend_for
    fitted.recommend_for(lines, LATER)
    pd.testing.assert_frame_equal(fitted.recommend(), before)


def test_bad_input(sim_lines, tmp_path):
    fitted = Recommender().fit(sim_lines, AS_OF)
    fitted.save_state(tmp_path / "state")
    loaded = Recommender.load_state(tmp_path / "state")
    with pytest.raises(DataContractError, match="'order_id'"):
        loaded.recommend_for(sim_lines.drop(columns=["order_id"]), LATER)
    with pytest.raises(DataContractError, match="order-level"):
        loaded.recommend_for(sim_lines.drop(columns=["product_id"]), LATER)
    with pytest.raises(DataContractError, match="no purchase before the analysis date"):
        loaded.recommend_for(sim_lines, "2020-01-01")
    with pytest.raises(DataContractError, match="as_of must be a date"):
        loaded.recommend_for(sim_lines, "not a date")
    with pytest.raises(DataContractError, match="must be a DataFrame"):
        loaded.recommend_for([1, 2, 3], LATER)
    with pytest.raises(DataContractError, match="p_alive must be in"):
        loaded.recommend_for(sim_lines, LATER, _scores(sim_lines).assign(p_alive=2.0))
    with pytest.raises(ConfigError, match="not fitted"):
        Recommender().recommend_for(sim_lines, LATER)
    with pytest.raises(ConfigError, match="before save_state"):
        Recommender().save_state(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="no customer data"):
        loaded.recommend()
    with pytest.raises(ConfigError, match="top_n"):
        Recommender.load_state(tmp_path / "state").set_params(top_n=0).recommend_for(
            sim_lines, LATER
        )
    # broken states
    with pytest.raises(DataContractError, match="not a saved recommender state"):
        Recommender.load_state(tmp_path / "empty")
    meta_file = tmp_path / "state" / "recommender.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(DataContractError, match="version 99 is not supported"):
        Recommender.load_state(tmp_path / "state")
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "params"}))
    with pytest.raises(DataContractError, match="lacks params"):
        Recommender.load_state(tmp_path / "state")
    meta_file.write_text(json.dumps(meta))
    (tmp_path / "state" / "rule_model.npz").unlink()
    with pytest.raises(DataContractError, match="files missing: rule_model.npz"):
        Recommender.load_state(tmp_path / "state")


# --------------------------------------------------------------------------------------------
# Online Retail


@pytest.mark.realdata
def test_online_retail_state(shared_data, tmp_path):
    """Lines to 2011-10-31: state learned at 2011-08-31 (no categories, so no up-sell),
    applied at the same date (exact) and two months later (new customers and products)."""
    raw = pd.read_parquet(shared_data / "online_retail.parquet")
    raw = raw[raw["InvoiceDate"] < "2011-11-01"]
    lines = clean_lines(load_transactions(raw)).lines
    as_of, later = "2011-08-31", "2011-10-31"
    fitted = Recommender().fit(lines, as_of)
    expected = fitted.recommend()
    assert len(fitted.rules_) > 1000 and "cross_sell" in set(expected["kind"])
    state = tmp_path / "state"
    fitted.save_state(state)
    sizes = {f.name: f.stat().st_size for f in state.iterdir()}
    print("\nstate files (bytes):", sizes)
    assert "upsell_model.npz" not in sizes and sum(sizes.values()) < 5_000_000
    loaded = Recommender.load_state(state)
    pd.testing.assert_frame_equal(loaded.recommend_for(lines, as_of), expected)
    customers = set(lines["customer_id"].astype(str))
    _assert_no_customer_ids(state, customers, max_excused=0.02)

    recs = loaded.recommend_for(lines, later)
    past = lines[lines["order_ts"] < "2011-11-01"]
    assert set(recs["customer_id"]) == set(past["customer_id"])
    assert set(recs["customer_id"]) - set(expected["customer_id"])  # new customers get lists
    assert not recs.duplicated(["customer_id", "product_id"]).any()
    assert _check_recent_rule(recs, lines, later, 7) > 0
    new_products = set(past["product_id"]) - set(fitted.products_.index)
    assert new_products
    unseen_kinds = recs[recs["product_id"].isin(new_products)]["kind"]
    assert set(unseen_kinds) <= {"resell", "reactivation"}
