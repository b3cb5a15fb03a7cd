"""Tests of crmkit.models.actions: every rule on a hand-built table, the priority order and its
configuration, exactly one action per customer on a random 10k-customer table (checked against
a plain-Python reference), audience ranking, Parquet / CSV round trips and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crmkit.errors import DataContractError
from crmkit.models.actions import (
    ACTION_COLUMNS,
    ACTIONS,
    AUDIENCE_ACTIONS,
    AUDIENCE_COLUMNS,
    NextBestActionConfig,
    assign_next_best_action,
    build_audiences,
    read_audience,
    write_audiences,
)
from crmkit.models.recommend import KINDS, empty_recommendations

DUE = "bought X 4 times, last 40 days ago; buys it about every 30 days, so a repurchase is due"
OVERDUE = (
    "bought X 3 times, last 200 days ago; buys it about every 30 days, so a repurchase is overdue"
)
NOT_DUE = "bought X once, last 10 days ago; customers like this buy it again within 90 days 12% of the time"


def _customers(rows: list[tuple]) -> pd.DataFrame:
    cols = ["customer_id", "segment", "p_alive", "clv", "churn_probability", "churn_risk_band"]
    df = pd.DataFrame(rows, columns=cols)
    df["r_score"] = 3
    df["f_score"] = 3
    df["m_score"] = 3
    df["expected_purchases"] = 1.0
    return df


def _recs(rows: list[tuple]) -> pd.DataFrame:
    if not rows:
        return empty_recommendations()
    return pd.DataFrame(
        rows, columns=["customer_id", "rank", "product_id", "kind", "score", "reason"]
    )


# clv values: the median of the 16 customers' clv is (40 + 50) / 2 = 45; the 0.75 quantile 112.5
CUSTOMERS = _customers(
    [
        # id        segment          p_alive clv   churn band
        ("wb1", "at_risk", 0.50, 200.0, 0.60, "medium"),  # lapsed, valuable, alive
        ("wb2", "active_repeat", 0.60, 150.0, 0.85, "high"),  # high risk (band + prob)
        ("wb3", "promising", 0.60, 120.0, 0.30, "high"),  # high risk by band only
        ("dead", "lost", 0.05, 500.0, 0.95, "high"),  # under the p_alive floor -> none
        ("cheap", "hibernating", 0.50, 5.0, 0.70, "medium"),  # lapsed, not valuable -> none
        ("rep", "champions", 0.90, 300.0, 0.05, "low"),  # due resell beats loyalty reward
        ("rep2", "active_repeat", 0.90, 10.0, 0.10, "low"),  # overdue resell
        ("champ", "champions", 0.95, 110.0, 0.05, "low"),
        ("ref", "loyal", 0.90, 250.0, 0.10, "low"),  # loyal, clv >= q75
        ("loyal_low", "loyal", 0.90, 40.0, 0.10, "low"),  # loyal, clv < q75 -> cross_sell
        ("xs", "active_repeat", 0.80, 30.0, 0.20, "low"),
        ("us", "need_attention", 0.70, 20.0, 0.40, "medium"),
        ("notdue", "active_repeat", 0.80, 50.0, 0.20, "low"),  # resell, not due -> none
        ("zero", "active_repeat", 0.80, 50.0, 0.20, "low"),  # cross-sell scored 0 -> none
        ("norecs", "new", 0.90, 15.0, 0.30, "low"),  # no recommendations at all
        ("both", "active_repeat", 0.80, 60.0, 0.20, "low"),  # up-sell ranked above cross-sell
    ]
)
RECS = _recs(
    [
        ("wb1", 1, "P_REACT", "reactivation", 4.0, "lapsed customer (at_risk): win-back offer"),
        ("wb1", 2, "P_X1", "cross_sell", 9.0, "because ..."),
        ("wb2", 1, "P_RS", "resell", 2.0, NOT_DUE),  # no reactivation row: best resell
        ("dead", 1, "P_DEADX", "cross_sell", 0.3, "because ..."),
        ("rep", 1, "P_UP", "up_sell", 8.0, "pricier ..."),
        ("rep", 2, "P_DUE", "resell", 5.0, DUE),
        ("rep", 3, "P_DUE2", "resell", 4.0, DUE),
        ("rep2", 1, "P_OVER", "resell", 1.5, OVERDUE),
        ("champ", 1, "P_C", "cross_sell", 3.0, "because ..."),
        ("ref", 1, "P_R", "cross_sell", 3.0, "because ..."),
        ("loyal_low", 1, "P_LL", "cross_sell", 2.5, "because ..."),
        ("xs", 1, "P_XS", "cross_sell", 2.0, "because ..."),
        ("xs", 2, "P_XS2", "up_sell", 7.0, "pricier ..."),
        ("us", 1, "P_US", "up_sell", 1.25, "pricier ..."),
        ("us", 2, "P_US2", "cross_sell", 1.0, "because ..."),
        ("notdue", 1, "P_ND", "resell", 6.0, NOT_DUE),
        ("zero", 1, "P_Z", "cross_sell", 0.0, "because ..."),
        ("both", 1, "P_B_UP", "up_sell", 1.0, "pricier ..."),
        ("both", 2, "P_B_X", "cross_sell", 9.0, "because ..."),
        ("stranger", 1, "P_S", "cross_sell", 99.0, "not in the customer table"),
    ]
)
EXPECTED = {
    "wb1": ("win_back", 200.0 * 0.60, "P_REACT"),
    "wb2": ("win_back", 150.0 * 0.85, "P_RS"),
    "wb3": ("win_back", 120.0 * 0.30, None),
    # under the p_alive floor; the cross-sell's expected value 0.3 x (1 - 0.95) = 0.015 is
    # below the 0.10 of an e-mail
    "dead": ("none", 0.0, None),
    "cheap": ("none", 0.0, None),
    "rep": ("replenishment", 5.0, "P_DUE"),
    "rep2": ("replenishment", 1.5, "P_OVER"),
    "champ": ("loyalty_reward", 110.0, None),
    "ref": ("referral_ask", 250.0, None),
    "loyal_low": ("cross_sell", 2.5, "P_LL"),
    "xs": ("cross_sell", 2.0, "P_XS"),
    "us": ("up_sell", 1.25, "P_US"),
    "notdue": ("none", 0.0, None),
    "zero": ("none", 0.0, None),
    "norecs": ("none", 0.0, None),
    "both": ("up_sell", 1.0, "P_B_UP"),
}


def _as_dict(out: pd.DataFrame) -> dict[str, tuple]:
    ids = out["customer_id"] if "customer_id" in out.columns else out.index.to_series()
    return {
        str(c): (str(a), float(v), None if pd.isna(p) else str(p))
        for c, a, v, p in zip(
            ids, out["next_best_action"], out["action_value"], out["action_product_id"]
        )
    }


# --------------------------------------------------------------------------------------------
# rules


def test_every_rule_fires_with_the_expected_action():
    before = CUSTOMERS.copy()
    out = assign_next_best_action(CUSTOMERS, RECS)
    got = _as_dict(out)
    for cid, (action, value, product) in EXPECTED.items():
        assert got[cid][0] == action, cid
        assert got[cid][1] == pytest.approx(value), cid
        assert got[cid][2] == product, cid
    # every action of the vocabulary occurs, the input is untouched, columns are appended
    assert set(out["next_best_action"]) == set(ACTIONS)
    pd.testing.assert_frame_equal(CUSTOMERS, before)
    assert list(out.columns) == list(CUSTOMERS.columns) + list(ACTION_COLUMNS)
    assert list(out["next_best_action"].cat.categories) == list(ACTIONS)
    assert out["action_value"].dtype == np.float64


def test_customer_id_as_index_and_risk_band_name_of_the_churn_stage():
    cust = CUSTOMERS.rename(columns={"churn_risk_band": "risk_band"}).set_index("customer_id")
    out = assign_next_best_action(cust, RECS)
    assert out.index.equals(cust.index)
    got = _as_dict(out)
    assert {c: v[0] for c, v in got.items()} == {c: v[0] for c, v in EXPECTED.items()}


def test_without_risk_band_only_probability_and_segment_count():
    cust = CUSTOMERS.drop(columns="churn_risk_band")
    got = _as_dict(assign_next_best_action(cust, RECS))
    assert got["wb2"][0] == "win_back"  # churn 0.85 >= 0.8
    assert got["wb3"][0] == "none"  # churn 0.30, segment promising, no recs


def test_historical_value_makes_a_low_clv_lapsed_customer_valuable():
    cust = CUSTOMERS.assign(total_spend=10.0)
    cust.loc[cust["customer_id"] == "cheap", "total_spend"] = 10_000.0
    got = _as_dict(assign_next_best_action(cust, RECS))
    assert got["cheap"] == ("win_back", pytest.approx(5.0 * 0.70), None)
    off = NextBestActionConfig(historical_value_column=None)
    assert _as_dict(assign_next_best_action(cust, RECS, off))["cheap"][0] == "none"


def test_due_column_takes_precedence_over_reason_text():
    recs = RECS.copy()
    recs["due"] = 0.0
    recs.loc[recs["product_id"] == "P_ND", "due"] = 1.0
    got = _as_dict(assign_next_best_action(CUSTOMERS, recs))
    assert got["notdue"] == ("replenishment", 6.0, "P_ND")
    assert got["rep"][0] == "loyalty_reward"  # its reasons say due, the column says not
    assert got["rep2"][0] == "none"


def test_no_recommendations_at_all():
    out = assign_next_best_action(CUSTOMERS, empty_recommendations())
    got = {c: v[0] for c, v in _as_dict(out).items()}
    assert got == {
        **{c: "none" for c in EXPECTED},
        "wb1": "win_back",
        "wb2": "win_back",
        "wb3": "win_back",
        "rep": "loyalty_reward",
        "champ": "loyalty_reward",
        "ref": "referral_ask",
    }
    assert out.loc[out["next_best_action"] == "win_back", "action_product_id"].isna().all()


def test_empty_customer_table():
    out = assign_next_best_action(CUSTOMERS.iloc[:0], RECS)
    assert len(out) == 0 and set(ACTION_COLUMNS) <= set(out.columns)
    assert all(len(f) == 0 for f in build_audiences(out).values())


# --------------------------------------------------------------------------------------------
# priority


def test_priority_order_first_match_wins():
    # "rep" is a champion with a due re-sell and an up-sell; "wb1" is lapsed with a cross-sell
    cfg = NextBestActionConfig(
        priority=("loyalty_reward", "cross_sell", "up_sell", "replenishment", "win_back")
    )
    got = _as_dict(assign_next_best_action(CUSTOMERS, RECS, cfg))
    assert got["rep"][0] == "loyalty_reward"
    assert got["wb1"] == ("cross_sell", 9.0, "P_X1")
    assert got["ref"] == ("cross_sell", 3.0, "P_R")  # referral_ask switched off
    assert "referral_ask" not in {v[0] for v in got.values()}


def test_leaving_win_back_out_lets_lapsed_customers_fall_through():
    cfg = NextBestActionConfig(
        priority=("replenishment", "loyalty_reward", "referral_ask", "cross_sell", "up_sell")
    )
    got = _as_dict(assign_next_best_action(CUSTOMERS, RECS, cfg))
    assert got["wb1"] == ("cross_sell", 9.0, "P_X1")  # reactivation rows are no offer
    assert got["wb2"][0] == "none"  # only a non-due resell


def test_offer_choice_priority_and_best_rank():
    got = _as_dict(assign_next_best_action(CUSTOMERS, RECS))
    assert (got["xs"][0], got["both"][0]) == ("cross_sell", "up_sell")
    cfg = NextBestActionConfig(offer_choice="priority")
    got = _as_dict(assign_next_best_action(CUSTOMERS, RECS, cfg))
    assert got["both"] == ("cross_sell", 9.0, "P_B_X")
    assert got["us"] == ("cross_sell", 1.0, "P_US2")
    cfg = NextBestActionConfig(
        offer_choice="priority",
        priority=("win_back", "replenishment", "up_sell", "cross_sell"),
    )
    got = _as_dict(assign_next_best_action(CUSTOMERS, RECS, cfg))
    assert got["xs"] == ("up_sell", 7.0, "P_XS2")
    assert got["champ"] == ("cross_sell", 3.0, "P_C")  # loyalty_reward switched off


def test_thresholds_are_configurable():
    cfg = NextBestActionConfig(
        winback_min_p_alive=0.0,
        winback_value_quantile=0.0,
        lapsed_segments=("at_risk", "hibernating", "lost", "need_attention"),
        referral_clv_quantile=0.0,
        min_recommendation_score=1.1,
        high_churn_probability=None,
        high_risk_bands=(),
    )
    got = _as_dict(assign_next_best_action(CUSTOMERS, RECS, cfg))
    assert got["dead"] == ("win_back", pytest.approx(500 * 0.95), None)
    assert got["cheap"][0] == "win_back"
    assert got["us"][0] == "win_back"
    assert got["wb2"][0] == "none" and got["wb3"][0] == "none"  # no risk-based lapse
    assert got["loyal_low"][0] == "referral_ask"
    assert got["rep2"][0] == "replenishment"  # 1.5 > 1.1
    assert got["both"] == ("cross_sell", 9.0, "P_B_X")  # the up-sell (1.0) is below the floor


def test_ties_in_rank_break_on_score_then_product():
    cust = _customers([("t", "active_repeat", 0.9, 10.0, 0.1, "low")])
    recs = _recs(
        [
            ("t", 1, "B", "cross_sell", 2.0, ""),
            ("t", 1, "A", "cross_sell", 2.0, ""),
            ("t", 1, "C", "cross_sell", 1.0, ""),
        ]
    )
    assert _as_dict(assign_next_best_action(cust, recs))["t"] == ("cross_sell", 2.0, "A")


def _reference(cust: pd.DataFrame, recs: pd.DataFrame, cfg: NextBestActionConfig) -> dict:
    """Plain-Python reading of the rules, one customer at a time."""
    clv_cut = np.quantile(cust["clv"], cfg.winback_value_quantile)
    spend_cut = np.quantile(cust["total_spend"], cfg.winback_value_quantile)
    ref_cut = np.quantile(cust["clv"], cfg.referral_clv_quantile)
    by_cust: dict[str, list] = {}
    for r in recs.itertuples(index=False):
        by_cust.setdefault(r.customer_id, []).append(r)

    def best(rows):
        return min(rows, key=lambda r: (r.rank, -r.score, r.product_id)) if rows else None

    out = {}
    for c in cust.itertuples(index=False):
        rows = by_cust.get(c.customer_id, [])
        lapsed = (
            c.segment in cfg.lapsed_segments
            or c.churn_risk_band in cfg.high_risk_bands
            or c.churn_probability >= cfg.high_churn_probability
        )
        valuable = c.clv >= clv_cut or c.total_spend >= spend_cut
        ok = [r for r in rows if r.score > cfg.min_recommendation_score]
        due = best([r for r in ok if r.kind == "resell" and "repurchase is" in r.reason])
        offer = best([r for r in ok if r.kind in ("cross_sell", "up_sell")])
        wb = best([r for r in rows if r.kind == "reactivation"]) or best(
            [r for r in rows if r.kind == "resell"]
        )

        def pays(action: str, value: float, c=c) -> bool:
            cost = getattr(cfg.costs, action)
            p = {"win_back": c.p_alive, "loyalty_reward": c.churn_probability}.get(
                action, 1.0 - c.churn_probability
            )
            return p * value * (1.0 - cost.discount) > cost.contact

        candidates = [
            (
                lapsed and valuable and c.p_alive >= cfg.winback_min_p_alive,
                ("win_back", c.clv * c.churn_probability, wb.product_id if wb else None),
            ),
            (due is not None, ("replenishment", due and due.score, due and due.product_id)),
            (c.segment in cfg.loyalty_segments, ("loyalty_reward", c.clv, None)),
            (
                c.segment in cfg.referral_segments and c.clv >= ref_cut,
                ("referral_ask", c.clv, None),
            ),
            (
                offer is not None,
                (offer and offer.kind, offer and offer.score, offer and offer.product_id),
            ),
        ]
        res = ("none", 0.0, None)
        for ok_rule, cand in candidates:
            if ok_rule and pays(cand[0], cand[1]):
                res = cand
                break
        out[c.customer_id] = res
    return out


@pytest.fixture(scope="module")
def random_tables():
    rng = np.random.default_rng(7)
    n = 10_000
    segments = np.array(
        [
            "new",
            "champions",
            "loyal",
            "active_repeat",
            "need_attention",
            "promising",
            "at_risk",
            "hibernating",
            "lost",
        ],
        dtype=object,
    )
    churn = rng.uniform(0, 1, n)
    cust = pd.DataFrame(
        {
            "customer_id": pd.Series([f"c{i:05d}" for i in rng.permutation(n)], dtype="str"),
            "segment": pd.Categorical(rng.choice(segments, n)),
            "r_score": rng.integers(1, 6, n),
            "f_score": rng.integers(1, 6, n),
            "m_score": rng.integers(1, 6, n),
            "p_alive": rng.uniform(0, 1, n),
            "expected_purchases": rng.gamma(1.0, 1.0, n),
            "clv": np.round(rng.gamma(0.8, 100.0, n), 1),
            "churn_probability": churn,
            "churn_risk_band": pd.Categorical.from_codes(
                np.searchsorted([0.5, 0.8], churn, side="right"), ["low", "medium", "high"]
            ),
            "total_spend": np.round(rng.gamma(1.0, 300.0, n), 2),
        }
    )
    k = rng.integers(0, 6, n)  # 0..5 recommendations each (a sixth have none)
    cid = np.repeat(cust["customer_id"].to_numpy(dtype=object), k)
    rank = np.concatenate([np.arange(1, j + 1) for j in k])
    m = len(cid)
    kind = rng.choice(np.array(KINDS, dtype=object), m, p=[0.4, 0.2, 0.3, 0.1])
    due = (kind == "resell") & (rng.uniform(size=m) < 0.3)
    reason = np.where(due, DUE, np.where(kind == "resell", NOT_DUE, "because ..."))
    recs = pd.DataFrame(
        {
            "customer_id": pd.Series(cid, dtype="str"),
            "rank": rank.astype(np.int64),
            "product_id": pd.Series([f"p{i}" for i in rng.integers(0, 500, m)], dtype="str"),
            "kind": pd.Series(kind, dtype="str"),
            "score": np.where(rng.uniform(size=m) < 0.05, 0.0, rng.gamma(1.0, 5.0, m)),
            "reason": pd.Series(reason, dtype="str"),
        }
    )
    return cust, recs


def test_exactly_one_action_per_customer_on_10k_customers(random_tables):
    cust, recs = random_tables
    out = assign_next_best_action(cust, recs)
    assert len(out) == len(cust)
    assert out["customer_id"].tolist() == cust["customer_id"].tolist()
    assert out["next_best_action"].notna().all()
    assert set(out["next_best_action"].unique()) == set(ACTIONS)
    product_actions = {"replenishment", "cross_sell", "up_sell"}
    has_product = out["action_product_id"].notna()
    assert (has_product[out["next_best_action"].isin(product_actions)]).all()
    assert not has_product[
        out["next_best_action"].isin({"loyalty_reward", "referral_ask", "none"})
    ].any()
    assert (out.loc[out["next_best_action"] == "none", "action_value"] == 0.0).all()
    assert np.isfinite(out["action_value"]).all()
    # audiences partition the customers who have an action
    aud = build_audiences(out)
    assert sum(len(f) for f in aud.values()) == int((out["next_best_action"] != "none").sum())


def test_random_table_matches_a_plain_python_reference(random_tables):
    cust, recs = random_tables
    cfg = NextBestActionConfig()
    got = _as_dict(assign_next_best_action(cust, recs, cfg))
    ref = _reference(cust, recs, cfg)
    assert got.keys() == ref.keys()
    diff = [c for c in ref if got[c][0] != ref[c][0] or got[c][2] != ref[c][2]]
    assert not diff, [(c, got[c], ref[c]) for c in diff[:5]]
    np.testing.assert_allclose([got[c][1] for c in ref], [ref[c][1] for c in ref])


def test_row_order_of_the_lists_does_not_matter(random_tables):
    """Lists as recommend() writes them (grouped, ranked) take a fast path; shuffled lists
    the general sort: both give the same actions, values and products."""
    cust, recs = random_tables
    ordered = assign_next_best_action(cust, recs)
    shuffled = recs.sample(frac=1.0, random_state=3).reset_index(drop=True)
    pd.testing.assert_frame_equal(assign_next_best_action(cust, shuffled), ordered)


# --------------------------------------------------------------------------------------------
# audiences


def test_audiences_are_ranked_by_value_then_customer_id():
    cust = _customers(
        [
            ("b", "champions", 0.9, 100.0, 0.1, "low"),
            ("a", "champions", 0.9, 100.0, 0.1, "low"),
            ("c", "champions", 0.9, 300.0, 0.1, "low"),
            ("d", "champions", 0.9, 0.0, 0.1, "low"),
            ("e", "new", 0.9, 1.0, 0.1, "low"),
        ]
    )
    out = assign_next_best_action(cust, empty_recommendations())
    aud = build_audiences(out.sample(frac=1.0, random_state=3))  # row order must not matter
    assert list(aud) == list(AUDIENCE_ACTIONS)
    lr = aud["loyalty_reward"]
    assert list(lr.columns) == list(AUDIENCE_COLUMNS)
    # d: a reward protecting a CLV of 0 pays nothing -> none
    assert lr["customer_id"].tolist() == ["c", "a", "b"]
    assert lr["rank"].tolist() == [1, 2, 3]
    assert lr["action_value"].tolist() == [300.0, 100.0, 100.0]
    assert out.set_index("customer_id").loc["d", "next_best_action"] == "none"
    assert lr["product_id"].isna().all()
    assert (lr["segment"] == "champions").all()
    assert all(len(aud[a]) == 0 for a in AUDIENCE_ACTIONS if a != "loyalty_reward")
    assert "none" not in aud


def test_audiences_of_the_hand_built_table():
    aud = build_audiences(assign_next_best_action(CUSTOMERS, RECS))
    assert aud["win_back"]["customer_id"].tolist() == ["wb2", "wb1", "wb3"]  # 127.5, 120, 36
    assert aud["cross_sell"]["customer_id"].tolist() == ["loyal_low", "xs"]
    assert aud["cross_sell"]["product_id"].tolist() == ["P_LL", "P_XS"]
    for f in aud.values():
        assert f["action_value"].is_monotonic_decreasing
        assert f["rank"].tolist() == list(range(1, len(f) + 1))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_write_audiences_round_trip(tmp_path, fmt):
    aud = build_audiences(assign_next_best_action(CUSTOMERS, RECS))
    aud["referral_ask"] = aud["referral_ask"].iloc[:0]  # an empty audience is still written
    out_dir = tmp_path / "audiences"
    manifest = write_audiences(aud, out_dir, fmt=fmt)
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == sorted([f"{a}.{fmt}" for a in AUDIENCE_ACTIONS] + ["index.json"])
    index = json.loads((out_dir / "index.json").read_text())
    assert index == manifest
    assert index["format"] == fmt and index["columns"] == list(AUDIENCE_COLUMNS)
    for a in AUDIENCE_ACTIONS:
        back = read_audience(out_dir / index["actions"][a]["file"])
        assert index["actions"][a]["rows"] == len(aud[a]) == len(back)
        assert index["actions"][a]["total_action_value"] == pytest.approx(
            aud[a]["action_value"].sum()
        )
        pd.testing.assert_frame_equal(back, aud[a].reset_index(drop=True), check_dtype=True)


def test_write_audiences_replaces_an_earlier_run(tmp_path):
    aud = build_audiences(assign_next_best_action(CUSTOMERS, RECS))
    write_audiences(aud, tmp_path / "a")
    write_audiences({"win_back": aud["win_back"]}, tmp_path / "a")
    assert len(read_audience(tmp_path / "a" / "cross_sell.parquet")) == 0  # no stale rows
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert {a: v["rows"] for a, v in index["actions"].items()} == {
        a: (3 if a == "win_back" else 0) for a in AUDIENCE_ACTIONS
    }


def test_write_audiences_bad_arguments(tmp_path):
    aud = build_audiences(assign_next_best_action(CUSTOMERS, RECS))
    with pytest.raises(DataContractError, match="fmt must be"):
        write_audiences(aud, tmp_path / "x", fmt="xlsx")  # type: ignore[arg-type]
    with pytest.raises(DataContractError, match=r"unknown audience\(s\) \['none'\]"):
        write_audiences({"none": aud["win_back"]}, tmp_path / "x")
    with pytest.raises(DataContractError, match="lack column"):
        write_audiences({"win_back": aud["win_back"].drop(columns="clv")}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# bad input


def _set(df: pd.DataFrame, col: str, i: int, value) -> pd.DataFrame:
    df = df.copy()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        df[col] = df[col].astype(object) if df[col].dtype == "str" else df[col]
    df.loc[df.index[i], col] = value
    return df


@pytest.mark.parametrize(
    ("col", "i", "value", "rule", "text"),
    [
        ("p_alive", 2, np.nan, "missing_values", "p_alive has missing or infinite values"),
        ("p_alive", 1, 1.2, "out_of_range", r"p_alive must be in \[0, 1\]"),
        ("churn_probability", 0, -0.1, "out_of_range", r"churn_probability must be in \[0, 1\]"),
        ("churn_probability", 3, np.inf, "missing_values", "churn_probability has missing"),
        ("churn_probability", 3, -np.inf, "missing_values", "churn_probability has missing"),
        ("clv", 4, -1.0, "out_of_range", "clv must be >= 0"),
        ("segment", 0, None, "missing_values", "segment has missing values"),
        ("customer_id", 1, "wb1", "unique", "customer_id must be unique"),
        ("customer_id", 1, None, "missing_values", "customer_id has missing values"),
    ],
)
def test_bad_customer_values(col, i, value, rule, text):
    bad = _set(CUSTOMERS, col, i, value)
    with pytest.raises(DataContractError, match=text) as err:
        assign_next_best_action(bad, RECS)
    assert err.value.column == col and err.value.rule == rule
    assert err.value.rows and err.value.rows[0][0] == i + 1
    assert f"rule '{rule}'" in str(err.value) and f"column '{col}'" in str(err.value)


def test_missing_churn_probability_falls_back_to_p_alive_or_raises():
    # the scoring job leaves churn_probability / band missing outside the churn model's rule
    cust = CUSTOMERS.copy()
    cust["churn_risk_band"] = cust["churn_risk_band"].astype(object)
    lost = cust["customer_id"].isin(["wb1", "dead", "cheap"])
    cust.loc[lost, "churn_probability"] = np.nan
    cust.loc[lost, "churn_risk_band"] = None
    # a non-lapsed, valuable customer whose 1 - p_alive is high: win-back through the stand-in
    cust.loc[cust["customer_id"] == "xs", ["p_alive", "clv", "churn_probability"]] = [
        0.15,
        400.0,
        np.nan,
    ]
    got = _as_dict(assign_next_best_action(cust, RECS))
    assert got["wb1"] == ("win_back", pytest.approx(200.0 * 0.5), "P_REACT")  # 1 - p_alive
    assert got["dead"][0] == "none" and got["cheap"][0] == "none"
    assert got["xs"] == ("win_back", pytest.approx(400.0 * 0.85), None)  # no re-sell rows
    assert assign_next_best_action(cust, RECS)["churn_probability"].isna().sum() == 4
    with pytest.raises(DataContractError, match="churn_probability has missing") as e:
        assign_next_best_action(cust, RECS, NextBestActionConfig(missing_churn="error"))
    assert e.value.rule == "missing_values" and e.value.rows[0][0] == 1  # wb1, first row


@pytest.mark.parametrize("col", ["segment", "p_alive", "clv", "churn_probability"])
def test_missing_customer_column(col):
    with pytest.raises(DataContractError, match=rf"customers lack column\(s\) \['{col}'\]") as e:
        assign_next_best_action(CUSTOMERS.drop(columns=col), RECS)
    assert e.value.column == col and e.value.rule == "required_column"


def test_customer_id_neither_column_nor_index():
    with pytest.raises(DataContractError, match="no customer_id column or index"):
        assign_next_best_action(CUSTOMERS.rename(columns={"customer_id": "id"}), RECS)


def test_non_numeric_probability():
    bad = CUSTOMERS.assign(p_alive=CUSTOMERS["p_alive"].astype("str"))
    with pytest.raises(DataContractError, match="p_alive must be numeric") as e:
        assign_next_best_action(bad, RECS)
    assert e.value.rule == "dtype"


@pytest.mark.parametrize(
    ("mutate", "col", "rule", "text"),
    [
        (lambda r: r.drop(columns="score"), "score", "required_column", "lack column"),
        (
            lambda r: r.drop(columns="reason"),
            "reason",
            "required_column",
            "need a due or a reason",
        ),
        (lambda r: r.assign(kind="bundle"), "kind", "allowed_values", "kind must be one of"),
        (lambda r: r.assign(rank=0), "rank", "out_of_range", r"rank must be >= 1"),
        (lambda r: r.assign(rank=1.5), "rank", "integer", "whole number"),
        (lambda r: r.assign(score=np.nan), "score", "missing_values", "score has missing"),
        (lambda r: r.assign(product_id=None), "product_id", "missing_values", "product_id"),
    ],
)
def test_bad_recommendations(mutate, col, rule, text):
    with pytest.raises(DataContractError, match=text) as e:
        assign_next_best_action(CUSTOMERS, mutate(RECS))
    assert e.value.column == col and e.value.rule == rule


def test_not_a_frame():
    with pytest.raises(DataContractError, match="expected a DataFrame of customers"):
        assign_next_best_action(CUSTOMERS.to_dict(), RECS)  # type: ignore[arg-type]
    with pytest.raises(DataContractError, match="expected a DataFrame of recommendations"):
        assign_next_best_action(CUSTOMERS, None)  # type: ignore[arg-type]


def test_build_audiences_needs_actions():
    with pytest.raises(DataContractError, match="next_best_action") as e:
        build_audiences(CUSTOMERS)
    assert e.value.rule == "required_column"
    bad = assign_next_best_action(CUSTOMERS, RECS)
    bad["next_best_action"] = bad["next_best_action"].astype("str").replace("none", "nothing")
    with pytest.raises(DataContractError, match="next_best_action must be one of"):
        build_audiences(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"winback_value_quantile": 1.5},
        {"winback_min_p_alive": -0.1},
        {"priority": ("win_back", "win_back")},
        {"priority": ("none",)},
        {"offer_choice": "random"},
        {"due_reason_pattern": "("},
        {"unknown_threshold": 1},
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        NextBestActionConfig(**kwargs)


def test_csv_round_trip_is_exact_and_keeps_na_like_ids(tmp_path, random_tables):
    cust, recs = random_tables
    out = assign_next_best_action(cust, recs)
    first = int(np.flatnonzero(out["next_best_action"].to_numpy() != "none")[0])
    out["customer_id"] = out["customer_id"].astype(object)
    out.loc[first, "customer_id"] = "NA"  # a real id that the default CSV reader would drop
    aud = build_audiences(out)
    assert "NA" in set().union(*(set(f["customer_id"]) for f in aud.values()))
    write_audiences(aud, tmp_path, fmt="csv")
    for a in AUDIENCE_ACTIONS:
        pd.testing.assert_frame_equal(read_audience(tmp_path / f"{a}.csv"), aud[a])


def test_subsets_scored_with_the_population_thresholds_equal_the_full_run(random_tables):
    """The quantile thresholds are the only population-level inputs: computed once over all
    customers and passed in, every subset of customers (with its own recommendation rows) gets
    exactly the rows of the full run; computed per subset, they would not."""
    from crmkit.models.actions import THRESHOLD_KEYS, action_thresholds

    cust, recs = random_tables
    cfg = NextBestActionConfig(referral_clv_quantile=0.6)
    full = assign_next_best_action(cust, recs, cfg)
    cuts = action_thresholds(cust, cfg)
    assert list(cuts) == list(THRESHOLD_KEYS)
    assert cuts == {
        "winback_clv": np.quantile(cust["clv"], 0.5),
        "winback_history": np.quantile(cust["total_spend"], 0.5),
        "referral_clv": np.quantile(cust["clv"], 0.6),
    }
    group = np.random.default_rng(5).integers(0, 7, len(cust))
    parts, own = [], []
    for g in range(7):
        sub = cust[group == g]
        sub_recs = recs[recs["customer_id"].isin(sub["customer_id"])]
        parts.append(assign_next_best_action(sub, sub_recs, cfg, thresholds=cuts))
        own.append(assign_next_best_action(sub, sub_recs, cfg))
    got = pd.concat(parts).loc[full.index]
    pd.testing.assert_frame_equal(got, full)
    own_actions = pd.concat(own).loc[full.index, "next_best_action"]
    assert (own_actions != full["next_best_action"]).sum() > 10  # the thresholds matter
    # no recommendation row for anyone, and an empty table, with given thresholds
    empty = assign_next_best_action(cust.iloc[:0], empty_recommendations(), cfg, thresholds=cuts)
    assert len(empty) == 0 and list(empty.columns) == list(full.columns)
    assert action_thresholds(cust.iloc[:0], cfg) == dict.fromkeys(THRESHOLD_KEYS)


def test_given_thresholds_must_fit_the_table(random_tables):
    from crmkit.models.actions import action_thresholds

    cust, recs = random_tables
    cuts = action_thresholds(cust)
    with pytest.raises(DataContractError, match="thresholds lack") as e:
        assign_next_best_action(cust, recs, thresholds={"winback_clv": 1.0})
    assert e.value.rule == "thresholds"
    with pytest.raises(DataContractError, match="lacks the historical value") as e:
        assign_next_best_action(cust.drop(columns="total_spend"), recs, thresholds=cuts)
    assert e.value.column == "total_spend"
    no_hist = action_thresholds(cust.drop(columns="total_spend"))
    assert no_hist["winback_history"] is None
    with pytest.raises(DataContractError, match="has the historical value"):
        assign_next_best_action(cust, recs, thresholds=no_hist)
    with pytest.raises(DataContractError, match="referral_clv is inf"):
        assign_next_best_action(cust, recs, thresholds={**cuts, "referral_clv": np.inf})
    with pytest.raises(DataContractError) as e:
        action_thresholds(cust.assign(clv=-cust["clv"]))
    assert e.value.column == "clv" and e.value.rule == "out_of_range"


def test_csv_round_trip_with_missing_churn_probability(tmp_path, random_tables):
    """Customers the churn model did not score (or a bundle without one) have no
    churn_probability: their audience CSV rows have an empty field, read back as NaN."""
    cust, recs = random_tables
    cust = cust.assign(churn_probability=cust["churn_probability"].where(cust.index % 3 > 0))
    aud = build_audiences(assign_next_best_action(cust, recs))
    assert all(f["churn_probability"].isna().any() for f in aud.values())
    write_audiences(aud, tmp_path, fmt="csv")
    for a in AUDIENCE_ACTIONS:
        pd.testing.assert_frame_equal(
            read_audience(tmp_path / f"{a}.csv"), aud[a], check_exact=True
        )
