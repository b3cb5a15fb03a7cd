"""RFM measures, scores (quantile and fixed) and named segments: exact values on handmade
lines, every fixed boundary, tie handling, leakage, totality on simulated and real data, and
the simulator's ground truth (dead customers land in the lapsed segments)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmkit.data.clean import analysis_cutoff, clean_lines
from crmkit.errors import ConfigError, DataContractError
from crmkit.features.segments import (
    DEFAULT_SEGMENT_RULES,
    MEASURE_COLUMNS,
    SCORE_COLUMNS,
    RFMThresholds,
    SegmentRule,
    assign_segments,
    order_table,
    rfm_measures,
    rfm_scores,
    rfm_segments,
    score_rfm,
    segment_summary,
)

AS_OF = "2023-06-30"
COLS = ["customer_id", "order_id", "order_ts", "quantity", "amount"]
# customer, order, timestamp, quantity, amount                  (as_of 2023-06-30)
TINY = [
    ("a", "a1", "2023-05-10 10:00:00", 1, 10.0),  # a: 2 orders, 51 / 15 days, spend 80
    ("a", "a1", "2023-05-10 10:00:00", 2, 20.0),
    ("a", "a2", "2023-06-15 09:00:00", 1, 50.0),
    ("b", "b1", "2023-05-20 12:00:00", 1, 40.0),  # b: 1 order 41 days ago
    ("c", "c1", "2023-01-05 08:00:00", 1, 100.0),  # c: first 176 days ago,
    ("c", "c2", "2023-06-30 23:59:59", 1, 20.0),  # last on the as-of day (counts)
    ("d", "d1", "2023-06-10 15:00:00", 3, 60.0),  # d: new, 20 days ago
    ("e", "e1", "2023-05-31 23:59:59", 1, 15.0),  # e: 1 order 30 days ago,
    ("e", "r1", "2023-06-05 11:00:00", -1, -15.0),  # returned (return-only order)
]
LATE = [  # after the analysis date: must change nothing
    ("a", "a9", "2023-07-01 00:00:00", 1, 999.0),  # exactly the cutoff
    ("b", "b9", "2023-07-01 00:00:01", 1, 999.0),  # 1 second after
    ("z", "z9", "2023-07-01 00:00:01", 1, 999.0),  # a customer who does not exist yet
]


def make_lines(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLS)
    df["order_ts"] = pd.to_datetime(df["order_ts"]).astype("datetime64[ns]")
    df["quantity"] = df["quantity"].astype(float)
    return df


@pytest.fixture
def tiny() -> pd.DataFrame:
    return make_lines(TINY)


@pytest.fixture(scope="module")
def sim():
    from crmkit.data.simulate import simulate_transactions

    res = simulate_transactions(n_customers=3000, seed=0)
    return clean_lines(res.lines).lines, res.truth


# --------------------------------------------------------------------------------------------
# Raw measures
# --------------------------------------------------------------------------------------------


def test_measures_exact(tiny):
    m = rfm_measures(tiny, AS_OF)
    assert list(m.columns) == list(MEASURE_COLUMNS)
    assert list(m.index) == ["a", "b", "c", "d", "e"] and m.index.name == "customer_id"
    assert m["n_orders"].tolist() == [2, 1, 2, 1, 1]
    assert m["total_spend"].tolist() == [80.0, 40.0, 120.0, 60.0, 0.0]
    assert m["avg_order_value"].tolist() == [40.0, 40.0, 60.0, 60.0, 0.0]
    assert m["days_since_first"].tolist() == [51, 41, 176, 20, 30]
    assert m["days_since_last"].tolist() == [15, 41, 0, 20, 30]
    month = 365.25 / 12
    expected = [2 / (51 / month), 1 / (41 / month), 2 / (176 / month), 1.0, 1.0]
    np.testing.assert_allclose(m["orders_per_month"], expected, rtol=1e-15)
    assert m["n_orders"].dtype == np.int64 and m["days_since_last"].dtype == np.int64


def test_order_table(tiny):
    o = order_table(tiny, AS_OF)
    assert list(o.customers) == ["a", "b", "c", "d", "e"]
    assert len(o.code) == 8 and int(o.purchase.sum()) == 7  # r1 is return-only
    assert sorted(o.value.tolist()) == [-15.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 100.0]
    assert np.bincount(o.code).tolist() == [2, 1, 2, 1, 2]
    assert o.as_of_day == int(np.datetime64(AS_OF, "D").astype(np.int64))


def test_as_of_with_time_is_an_instant(tiny):
    # At 2023-06-30 12:00 c's purchase at 23:59:59 has not happened yet.
    m = rfm_measures(tiny, "2023-06-30 12:00:00")
    assert m.loc["c", "n_orders"] == 1 and m.loc["c", "days_since_last"] == 176


def test_lines_without_quantity_count_every_order(tiny):
    m = rfm_measures(tiny.drop(columns=["quantity"]), AS_OF)
    assert m.loc["e", "n_orders"] == 2  # the return-only order now counts as an order
    assert m.loc["e", "total_spend"] == 0.0


def test_customer_with_only_returns_is_not_scored(tiny):
    extra = make_lines([("x", "rx", "2023-06-01 10:00:00", -1, -5.0)])
    m = rfm_measures(pd.concat([tiny, extra], ignore_index=True), AS_OF)
    assert "x" not in m.index and len(m) == 5


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def test_fixed_scores_exact(tiny):
    s = rfm_scores(tiny, AS_OF, method="fixed")
    assert list(s.columns) == list(MEASURE_COLUMNS) + list(SCORE_COLUMNS)
    assert s["r_score"].tolist() == [5, 4, 5, 5, 5]
    assert s["f_score"].tolist() == [5, 4, 3, 5, 5]
    assert s["m_score"].tolist() == [2, 2, 3, 3, 1]
    assert s["rfm_score"].tolist() == [12, 10, 11, 13, 11]
    assert s["rfm_cell"].tolist() == ["552", "442", "533", "553", "551"]
    for c in ("r_score", "f_score", "m_score", "rfm_score"):
        assert s[c].dtype == np.int64


def test_quantile_scores_exact(tiny):
    s = rfm_scores(tiny, AS_OF)
    # recency: b 41 < e 30 < d 20 < a 15 < c 0 days (fewer days -> higher score)
    assert s["r_score"].to_dict() == {"a": 4, "b": 1, "c": 5, "d": 3, "e": 2}
    # frequency: c < b < d = e (tie: customer id order) < a
    assert s["f_score"].to_dict() == {"a": 5, "b": 2, "c": 1, "d": 3, "e": 4}
    # monetary (avg order value): e 0 < a 40 = b 40 < c 60 = d 60
    assert s["m_score"].to_dict() == {"a": 2, "b": 3, "c": 4, "d": 5, "e": 1}


def test_quantile_total_spend_option(tiny):
    s = rfm_scores(tiny, AS_OF, monetary="total_spend")
    # e 0 < b 40 < d 60 < a 80 < c 120
    assert s["m_score"].to_dict() == {"a": 4, "b": 2, "c": 5, "d": 3, "e": 1}


def _measures(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    base = {"days_since_last": [0] * n, "orders_per_month": [1.0] * n, "avg_order_value": [1.0] * n}
    base.update(cols)
    return pd.DataFrame(base, index=pd.Index([f"c{i:02d}" for i in range(n)], name="customer_id"))


def test_fixed_recency_boundaries():
    days = [0, 30, 31, 90, 91, 180, 181, 240, 241, 5000]
    s = score_rfm(_measures(days_since_last=days), method="fixed")
    assert s["r_score"].tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]


def test_fixed_frequency_boundaries():
    opm = [0.0, 0.0999, 0.1, 0.2499, 0.25, 0.4999, 0.5, 0.9999, 1.0, 7.0]
    s = score_rfm(_measures(orders_per_month=opm), method="fixed")
    assert s["f_score"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_fixed_monetary_boundaries():
    money = [-20.0, 9.99, 10.0, 49.99, 50.0, 99.99, 100.0, 199.99, 200.0, 1e6]
    s = score_rfm(_measures(avg_order_value=money), method="fixed")
    assert s["m_score"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_fixed_boundaries_from_lines():
    """Calendar-day recency and the one-month tenure floor, end to end."""
    rows = [
        ("r30", "o1", "2023-05-31 23:59:59", 1, 5.0),  # 30 days -> R 5
        ("r31", "o2", "2023-05-30 00:00:00", 1, 10.0),  # 31 days -> R 4
        ("r0", "o3", "2023-06-30 23:59:59", 1, 50.0),  # 0 days -> R 5; 1 order/month -> F 5
        ("f304", "o4", "2022-08-30 12:00:00", 1, 200.0),  # 304 days: 0.1001/month -> F 2
        ("f305", "o5", "2022-08-29 12:00:00", 1, 199.99),  # 305 days: 0.0998/month -> F 1
    ]
    s = rfm_scores(make_lines(rows), AS_OF, method="fixed")
    assert s.loc["r30", "days_since_last"] == 30 and s.loc["r31", "days_since_last"] == 31
    assert s["r_score"].to_dict() == {"r30": 5, "r31": 4, "r0": 5, "f304": 1, "f305": 1}
    assert s.loc["r0", "orders_per_month"] == 1.0
    # one order in 31 days: 1 / (31 / 30.4375) = 0.98 per month -> F 4
    assert s["f_score"].to_dict() == {"r30": 5, "r31": 4, "r0": 5, "f304": 2, "f305": 1}
    assert s["m_score"].to_dict() == {"r30": 1, "r31": 2, "r0": 3, "f304": 5, "f305": 4}


def test_custom_thresholds():
    th = RFMThresholds(recency_days=(1, 2, 3, 4), monetary=(1, 2, 3, 4))
    s = score_rfm(
        _measures(days_since_last=[0, 1, 2, 3, 4, 5], avg_order_value=[0, 1, 2, 3, 4, 5]),
        method="fixed",
        thresholds=th,
    )
    assert s["r_score"].tolist() == [5, 5, 4, 3, 2, 1]
    assert s["m_score"].tolist() == [1, 2, 3, 4, 5, 5]
    assert RFMThresholds.from_mapping({"monetary": [1, 2, 3, 4]}).monetary == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recency_days": (30, 90, 90, 240)},
        {"monetary": (10, 50, 100)},
        {"frequency_per_month": (0.1, float("nan"), 0.5, 1.0)},
    ],
)
def test_invalid_thresholds(kwargs):
    with pytest.raises(ConfigError):
        RFMThresholds(**kwargs)


def test_thresholds_frozen():
    with pytest.raises(AttributeError):
        RFMThresholds().monetary = (1, 2, 3, 4)  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown"):
        RFMThresholds.from_mapping({"recency": (1, 2, 3, 4)})


def test_option_errors(tiny):
    with pytest.raises(ConfigError, match="method"):
        rfm_scores(tiny, AS_OF, method="deciles")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fixed"):
        rfm_scores(tiny, AS_OF, thresholds=RFMThresholds())
    with pytest.raises(ConfigError, match="monetary"):
        rfm_scores(tiny, AS_OF, monetary="mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [5, 6, 7, 13, 100, 1001])
def test_quantile_every_score_occurs_even_with_ties(n):
    # All customers identical: ties everywhere, still all five scores, sizes within one.
    meas = _measures(
        days_since_last=[7] * n, orders_per_month=[0.5] * n, avg_order_value=[30.0] * n
    )
    s = score_rfm(meas)
    for c in ("r_score", "f_score", "m_score"):
        counts = s[c].value_counts()
        assert sorted(counts.index) == [1, 2, 3, 4, 5]
        assert counts.max() - counts.min() <= 1


def test_quantile_fewer_than_five_customers():
    s = score_rfm(_measures(days_since_last=[3, 1]))
    assert s["r_score"].tolist() == [1, 3]


def test_quantile_is_monotone_and_row_order_free(sim):
    lines, _ = sim
    a = rfm_scores(lines, AS_OF)
    b = rfm_scores(lines.sample(frac=1.0, random_state=3), AS_OF)
    pd.testing.assert_frame_equal(a, b)
    for score, col, sign in [
        ("r_score", "days_since_last", -1),
        ("f_score", "orders_per_month", 1),
        ("m_score", "avg_order_value", 1),
    ]:
        by = (sign * a[col]).groupby(a[score])
        # a higher score never holds a worse value than a lower one
        assert (by.min().iloc[1:].to_numpy() >= by.max().iloc[:-1].to_numpy()).all()
        assert a[score].value_counts().max() - a[score].value_counts().min() <= 1


def test_input_not_mutated(tiny):
    before = tiny.copy(deep=True)
    rfm_segments(tiny, AS_OF)
    rfm_segments(tiny, AS_OF, method="fixed")
    pd.testing.assert_frame_equal(tiny, before)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_missing_column(tiny):
    with pytest.raises(DataContractError) as e:
        rfm_scores(tiny.drop(columns=["order_id"]), AS_OF)
    assert e.value.column == "order_id" and e.value.rule == "required_column"


def test_missing_customer_id(tiny):
    bad = tiny.assign(customer_id=tiny["customer_id"].where(tiny.index != 2))
    with pytest.raises(DataContractError) as e:
        rfm_scores(bad, AS_OF)
    assert e.value.rule == "missing_customer_id"


def test_string_timestamps(tiny):
    with pytest.raises(DataContractError) as e:
        rfm_scores(tiny.assign(order_ts=tiny["order_ts"].astype(str)), AS_OF)
    assert e.value.column == "order_ts" and e.value.rule == "dtype"


def test_non_finite_amount(tiny):
    with pytest.raises(DataContractError) as e:
        rfm_scores(tiny.assign(amount=tiny["amount"].where(tiny.index != 0)), AS_OF)
    assert e.value.column == "amount"


def test_no_purchase_before_as_of(tiny):
    with pytest.raises(DataContractError) as e:
        rfm_scores(tiny, "2022-01-01")
    assert e.value.rule == "empty_window"


def test_bad_as_of(tiny):
    with pytest.raises(DataContractError) as e:
        rfm_scores(tiny, "not a date")
    assert e.value.rule == "as_of"


def test_not_a_frame():
    with pytest.raises(DataContractError):
        rfm_scores([1, 2, 3], AS_OF)  # type: ignore[arg-type]
    with pytest.raises(DataContractError):
        score_rfm(pd.DataFrame({"x": [1]}))


# --------------------------------------------------------------------------------------------
# Leakage
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["quantile", "fixed"])
def test_late_purchases_change_nothing(tiny, method):
    late = pd.concat([tiny, make_lines(LATE)], ignore_index=True)
    pd.testing.assert_frame_equal(
        rfm_segments(late, AS_OF, method=method), rfm_segments(tiny, AS_OF, method=method)
    )


@pytest.mark.parametrize("method", ["quantile", "fixed"])
def test_simulated_holdout_changes_nothing(sim, method):
    lines, _ = sim
    cutoff = analysis_cutoff(AS_OF)
    past = lines[lines["order_ts"] < cutoff]
    assert len(past) < len(lines)  # the simulator has a holdout after the cutoff
    planted = (
        past.groupby("customer_id")
        .head(1)
        .assign(
            order_id=lambda d: "LATE" + d["order_id"], order_ts=cutoff + pd.Timedelta(seconds=1)
        )
    )
    full = rfm_segments(pd.concat([lines, planted], ignore_index=True), AS_OF, method=method)
    pd.testing.assert_frame_equal(full, rfm_segments(past, AS_OF, method=method))


# --------------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------------


def _check_first_match(scores: pd.DataFrame, segment: pd.Series) -> None:
    """Totality, and every customer is in the first rule that matches them."""
    assert segment.notna().all() and len(segment) == len(scores)
    assert segment.index.equals(scores.index)
    names = [r.name for r in DEFAULT_SEGMENT_RULES]
    assert list(segment.cat.categories) == names
    matched = np.zeros(len(scores), dtype=bool)
    for rule in DEFAULT_SEGMENT_RULES:
        cond = scores.eval(rule.when, engine="python")
        cond = np.full(len(scores), bool(cond)) if np.ndim(cond) == 0 else np.asarray(cond)
        first = cond & ~matched
        assert (segment.to_numpy()[first] == rule.name).all()
        matched |= cond
    assert matched.all()


@pytest.mark.parametrize("method", ["quantile", "fixed"])
def test_segments_total_and_exclusive_simulated(sim, method):
    lines, _ = sim
    s = rfm_segments(lines, AS_OF, method=method)
    _check_first_match(s, s["segment"])
    assert s["segment"].value_counts().sum() == len(s) == s.index.nunique()


HAND = {
    # customer: (segment, [(days before as_of, value), ...])
    "new": ("new", [(10, 30.0)]),
    "champ": ("champions", [(5 + 30 * k, 250.0) for k in range(6)]),
    "loyal": ("loyal", [(5 + 30 * k, 20.0) for k in range(6)]),
    "active": ("active_repeat", [(300, 20.0), (10, 20.0)]),
    "attn": ("need_attention", [(300, 20.0), (120, 20.0)]),
    "prom": ("promising", [(120, 30.0)]),
    "risk_f": ("at_risk", [(200 + 20 * k, 20.0) for k in range(8)]),
    "risk_m": ("at_risk", [(400, 150.0), (300, 150.0)]),
    "hib": ("hibernating", [(200, 30.0)]),
    "lost1": ("lost", [(400, 30.0)]),
    "lost2": ("lost", [(500, 5.0), (400, 5.0)]),
}


def _hand_lines() -> pd.DataFrame:
    day = pd.Timestamp(AS_OF) + pd.Timedelta(hours=12)
    rows = [
        (cust, f"{cust}-{i}", day - pd.Timedelta(days=d), 1, v)
        for cust, (_, orders) in HAND.items()
        for i, (d, v) in enumerate(orders)
    ]
    return make_lines(rows)


def test_hand_built_customers_land_in_each_segment():
    s = rfm_segments(_hand_lines(), AS_OF, method="fixed")
    got = s["segment"].astype(str).to_dict()
    assert got == {c: seg for c, (seg, _) in HAND.items()}
    assert set(got.values()) == {r.name for r in DEFAULT_SEGMENT_RULES}


def test_dead_customers_are_in_lapsed_segments(sim):
    """Ground truth: customers dead at the cutoff sit in at_risk / hibernating / lost far more
    often than alive ones. Among repeat buyers (the only ones the BG/NBD truth can call dead:
    nobody drops out before a first repeat purchase) measured 46 % vs 4 % (quantile) and
    83 % vs 22 % (fixed); over everyone with fixed scores 83 % vs 44 % (the alive one-time
    buyers of 2022 are, sensibly, 'lost')."""
    lines, truth = sim
    alive_all = truth.customers.set_index("customer_id")["alive_at_cutoff"]
    lapsed = ["at_risk", "hibernating", "lost"]
    for method, min_ratio in [("quantile", 5.0), ("fixed", 3.0)]:
        s = rfm_segments(lines, AS_OF, method=method)
        alive = alive_all.reindex(s.index).to_numpy(dtype=bool)
        bad = s["segment"].isin(lapsed).to_numpy()
        rep = s["n_orders"].to_numpy() >= 2
        dead_share, alive_share = bad[~alive & rep].mean(), bad[alive & rep].mean()
        assert dead_share >= min_ratio * alive_share, (method, dead_share, alive_share)
        if method == "fixed":
            assert bad[~alive].mean() >= 1.5 * bad[alive].mean()
            # and a lapsed customer is much more likely dead than a customer in another segment
            assert (~alive[bad]).mean() - (~alive[~bad]).mean() >= 0.3


def test_assign_segments_custom_rules_and_default():
    scores = _measures(days_since_last=[1, 50, 500])
    rules = [
        {"name": "recent", "when": "days_since_last <= 30"},
        SegmentRule("mid", "days_since_last < 100"),
    ]
    seg = assign_segments(scores, rules=rules)
    assert seg.astype(str).tolist() == ["recent", "mid", "other"]
    assert list(seg.cat.categories) == ["recent", "mid", "other"]
    seg = assign_segments(scores, rules=rules, default="rest")
    assert seg.astype(str).tolist()[-1] == "rest"
    # the same name in two rules is one segment
    two = [
        SegmentRule("x", "days_since_last <= 1"),
        SegmentRule("x", "days_since_last >= 500"),
        SegmentRule("y", "True"),
    ]
    seg = assign_segments(scores, rules=two)
    assert seg.astype(str).tolist() == ["x", "y", "x"] and list(seg.cat.categories) == ["x", "y"]


@pytest.mark.parametrize(
    "rules",
    [
        [SegmentRule("bad", "no_such_column > 1")],
        [SegmentRule("bad", "days_since_last +")],
        [SegmentRule("bad", "days_since_last + 1")],  # not boolean
        [],
        ["days_since_last > 1"],
    ],
)
def test_invalid_rules(rules):
    with pytest.raises(ConfigError):
        assign_segments(_measures(days_since_last=[1, 2]), rules=rules)


def test_rule_validation():
    with pytest.raises(ConfigError):
        SegmentRule("", "True")
    with pytest.raises(ConfigError):
        SegmentRule("x", " ")


def test_segment_summary_exact(tiny):
    s = rfm_segments(tiny, AS_OF, method="fixed")
    # a loyal; b, d, e new; c active_repeat
    assert s["segment"].astype(str).to_dict() == {
        "a": "loyal",
        "b": "new",
        "c": "active_repeat",
        "d": "new",
        "e": "new",
    }
    t = segment_summary(s)
    assert list(t.index) == [r.name for r in DEFAULT_SEGMENT_RULES]
    assert list(t.columns) == [
        "customers",
        "share",
        "mean_r_score",
        "mean_f_score",
        "mean_m_score",
        "total_spend",
        "spend_share",
        "mean_spend",
    ]
    new = t.loc["new"]
    assert new["customers"] == 3 and new["share"] == pytest.approx(0.6)
    assert new["mean_r_score"] == pytest.approx(14 / 3)
    assert new["mean_m_score"] == pytest.approx(2.0)
    assert new["total_spend"] == 100.0 and new["spend_share"] == pytest.approx(100 / 300)
    assert new["mean_spend"] == pytest.approx(100 / 3)
    assert t.loc["champions", "customers"] == 0 and np.isnan(t.loc["champions", "mean_spend"])
    assert t["customers"].sum() == 5 and t["share"].sum() == pytest.approx(1.0)
    assert t["total_spend"].sum() == pytest.approx(300.0)


def test_segment_summary_plain_strings(tiny):
    s = rfm_segments(tiny, AS_OF, method="fixed")
    t = segment_summary(s.assign(segment=s["segment"].astype(str)))
    assert list(t.index) == ["new", "loyal", "active_repeat"]  # largest first, no empty rows
    with pytest.raises(DataContractError) as e:
        segment_summary(s.drop(columns=["segment"]))
    assert e.value.column == "segment"


def test_docs_list_every_default_rule():
    doc = Path(__file__).resolve().parents[2] / "docs" / "features_segments_kpis.md"
    text = doc.read_text(encoding="utf-8")
    for rule in DEFAULT_SEGMENT_RULES:
        assert f"`{rule.when}`" in text, rule.name


# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retail(shared_data):
    from crmkit.data.io import load_transactions

    return clean_lines(load_transactions(shared_data / "online_retail.parquet")).lines


@pytest.mark.realdata
@pytest.mark.parametrize("method", ["quantile", "fixed"])
def test_segments_online_retail(retail, method):
    s = rfm_segments(retail, "2011-09-09", method=method)
    past = retail[retail["order_ts"] < analysis_cutoff("2011-09-09")]
    assert len(s) == past["customer_id"].nunique() == 3368
    _check_first_match(s, s["segment"])
    # every named segment is populated on this shop
    assert (s["segment"].value_counts() > 0).all()
    t = segment_summary(s)
    assert t["customers"].sum() == len(s)
    assert t["total_spend"].sum() == pytest.approx(past["amount"].sum())
