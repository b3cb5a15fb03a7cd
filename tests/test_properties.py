"""Property-based tests (hypothesis): invariants of cleaning, features and the BG/NBD model
that must hold for any order lines (or any purchase histories), not just the hand-made ones."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from crmkit.data.clean import analysis_cutoff, clean_lines
from crmkit.data.io import load_transactions
from crmkit.data.orders import cancellation_convention
from crmkit.errors import DataContractError
from crmkit.features.behaviour import behaviour_features
from crmkit.features.rfm import rfm_summary
from crmkit.features.segments import RFMThresholds, assign_segments, rfm_scores
from crmkit.models.clv import BetaGeo, ConvergenceError, DegenerateFitWarning

T0 = pd.Timestamp("2023-01-01")
AS_OF = pd.Timestamp("2023-03-31")

line = st.fixed_dictionaries(
    {
        "customer_id": st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e", "f"])),
        "order_no": st.integers(0, 12),
        "cancel": st.booleans(),
        "seconds": st.integers(0, 120 * 86_400),
        "product_id": st.sampled_from(["p1", "p2", "p3", "POST", "gift_0001_10"]),
        "quantity": st.one_of(
            st.integers(-5, 20).map(float), st.sampled_from([np.nan, np.inf, 0.0])
        ),
        "unit_price": st.one_of(
            st.floats(-5, 500, allow_nan=False).map(lambda x: round(x, 2)),
            st.sampled_from([0.0, np.nan]),
        ),
    }
)

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,  # no .hypothesis/ folder left in the working directory
    # the same examples on every run and machine: CI is green or red for the code, not for
    # the draw (explore with `--hypothesis-seed=N`; pin what it finds with @example)
    derandomize=True,
)


def _frame(rows: list[dict]) -> pd.DataFrame:
    f = pd.DataFrame(rows)
    f["order_id"] = [("C" if c else "") + f"o{n}" for c, n in zip(f["cancel"], f["order_no"])]
    f["order_ts"] = T0 + pd.to_timedelta(f["seconds"], unit="s")
    return f[["customer_id", "order_id", "order_ts", "product_id", "quantity", "unit_price"]]


@SETTINGS
@given(st.lists(line, min_size=1, max_size=40), st.sampled_from(["drop", "net"]))
@example(  # found by CI: the only C-order is a purchase, so C is no cancellation convention
    [
        dict(
            customer_id=None,
            order_no=0,
            cancel=False,
            seconds=0,
            product_id="p1",
            quantity=0.0,
            unit_price=0.0,
        ),
        dict(
            customer_id="a",
            order_no=0,
            cancel=True,
            seconds=0,
            product_id="p1",
            quantity=1.0,
            unit_price=1.0,
        ),
    ],
    "net",
)
def test_cleaning_accounts_for_every_row_and_every_unit_of_spend(rows, returns):
    raw = load_transactions(_frame(rows))
    res = clean_lines(raw, {"returns": returns, "as_of": AS_OF})
    rep, out = res.report, res.lines
    t = rep.rules
    assert rep.totals["rows_in"] == len(rows)
    assert rep.totals["rows_out"] == len(out) == len(rows) - t["rows_dropped"].sum()
    assert np.isclose(rep.totals["revenue_out"], out["amount"].sum())
    if returns == "drop":
        # spend preserved except for what the rules counted
        assert np.isclose(
            rep.totals["revenue_in"], rep.totals["revenue_out"] + t["amount_dropped"].sum()
        )
        assert (out["quantity"] > 0).all()
    else:
        # net: the purchases are exactly those `drop` keeps (whose spend reconciles above),
        # and every cancellation / return line stays as a negative line reducing that spend
        assert t.loc[t["rule"].isin(["cancellations", "returns"]), "rows_dropped"].sum() == 0
        dropped = clean_lines(raw, {"returns": "drop", "as_of": AS_OF})
        purchases = out[out["quantity"] > 0]
        cols = list(out.columns)
        pd.testing.assert_frame_equal(
            purchases.sort_values(cols).reset_index(drop=True),
            dropped.lines.sort_values(cols).reset_index(drop=True),
        )
        # the prefix marks cancellations only where the lines show that convention (mostly
        # negative, ids shaped like the other orders); else C-orders are ordinary orders
        held, rejected = cancellation_convention(
            raw.frame["order_id"], raw.frame["quantity"].to_numpy(dtype="float64"), ("C",)
        )
        cancelled = out["order_id"].str.startswith("C")
        if held:
            assert (out.loc[cancelled, "quantity"] < 0).all()
        else:
            assert rejected == ("C",)
            assert any("ordinary orders" in n for n in rep.notes)
            assert t.loc[t["rule"] == "cancellations", "rows_dropped"].sum() == 0
    assert out["customer_id"].notna().all()
    assert np.isfinite(out[["quantity", "unit_price", "amount"]].to_numpy()).all()
    assert (out["unit_price"] > 0).all()
    assert (out["order_ts"] < analysis_cutoff(AS_OF)).all()
    assert not out.duplicated().any()
    assert (t["rows_dropped"] <= t["matched_in_input"]).all()
    assert t["customers_lost"].sum() == rep.totals["customers_in"] - rep.totals["customers_out"]


@SETTINGS
@given(st.lists(line, min_size=1, max_size=40), st.sampled_from(["D", "W", "M"]))
@example(  # found in a run: one order of customer a with lines on two days
    [
        dict(
            customer_id="a",
            order_no=0,
            cancel=False,
            seconds=0,
            product_id="p1",
            quantity=1.0,
            unit_price=1.0,
        ),
        dict(
            customer_id="a",
            order_no=0,
            cancel=False,
            seconds=86_400,
            product_id="p1",
            quantity=1.0,
            unit_price=1.0,
        ),
    ],
    "D",
)
def test_rfm_and_segment_invariants(rows, unit):
    out = clean_lines(load_transactions(_frame(rows)), {"returns": "net"}).lines
    if not ((out["quantity"] > 0) & (out["order_ts"] < analysis_cutoff(AS_OF))).any():
        return  # no purchase on or before AS_OF: the features raise empty_window
    s = rfm_summary(out, AS_OF, unit=unit)
    purchases = out[out["quantity"] > 0]
    # a transaction is a customer-day (Fader-Hardie's convention): repeat purchase days, which
    # an order whose lines span midnight can make more than the orders
    days = purchases.groupby("customer_id")["order_ts"].agg(lambda ts: ts.dt.normalize().nunique())
    assert (s["frequency"] >= 0).all()
    assert (s["frequency"] <= days.reindex(s.index) - 1).all()
    assert ((s["recency"] >= 0) & (s["recency"] <= s["T"])).all()
    assert (s.loc[s["frequency"] == 0, "recency"] == 0).all()
    assert (s.loc[s["frequency"] == 0, "monetary_value"] == 0).all()
    scores = rfm_scores(out, AS_OF)
    for col in ("r_score", "f_score", "m_score"):
        assert scores[col].between(1, 5).all()
    seg = assign_segments(scores)
    assert seg.notna().all() and len(seg) == len(scores) == len(s)
    feats = behaviour_features(out, AS_OF)
    assert feats.index.equals(s.index)
    num = feats.select_dtypes("number").to_numpy(dtype=float)
    assert np.isfinite(num).all()


cuts = st.lists(st.floats(0.01, 400, allow_nan=False), min_size=4, max_size=4, unique=True).map(
    sorted
)


@SETTINGS
@given(st.lists(line, min_size=1, max_size=40), cuts, cuts, cuts, st.booleans())
def test_fixed_threshold_rfm_scores_are_1_to_5(rows, rec, freq, mon, total_spend):
    out = clean_lines(load_transactions(_frame(rows)), {"returns": "net"}).lines
    if not ((out["quantity"] > 0) & (out["order_ts"] < analysis_cutoff(AS_OF))).any():
        return  # no purchase on or before AS_OF: the features raise empty_window
    thresholds = RFMThresholds(recency_days=rec, frequency_per_month=freq, monetary=mon)
    monetary = "total_spend" if total_spend else "avg_order_value"
    scores = rfm_scores(out, AS_OF, method="fixed", thresholds=thresholds, monetary=monetary)
    for col in ("r_score", "f_score", "m_score"):
        assert scores[col].notna().all() and scores[col].isin([1, 2, 3, 4, 5]).all()
    # the fixed cut points decide the score on their own: R = 5 exactly within rec[0] days
    assert ((scores["r_score"] == 5) == (scores["days_since_last"] <= rec[0])).all()
    assert assign_segments(scores).notna().all()


# (frequency, recency as a share of T, T) of one customer; recency 0 when frequency is 0
history = st.tuples(st.integers(0, 60), st.floats(0.0, 1.0, allow_nan=False), st.floats(0.1, 300.0))


@settings(SETTINGS, max_examples=25)
@given(st.lists(history, min_size=2, max_size=80), st.floats(0.5, 100.0))
def test_fitted_bgnbd_p_alive_is_a_probability_and_expected_purchases_non_negative(rows, t):
    freq = np.array([r[0] for r in rows], dtype=float)
    T = np.array([r[2] for r in rows])
    recency = np.where(freq > 0, np.array([r[1] for r in rows]) * T, 0.0)
    summary = pd.DataFrame({"frequency": freq, "recency": recency, "T": T})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateFitWarning)  # tiny data: often degenerate
        try:
            model = BetaGeo().fit(summary)
        except (ConvergenceError, DataContractError) as exc:
            # a clear error (no repeat buyer, identical customers, no convergence) is a
            # defined result; there is no estimate to check
            assert exc.rule if isinstance(exc, DataContractError) else str(exc)
            assume(False)
    p = model.conditional_probability_alive(summary)
    assert np.isfinite(p).all() and p.between(0.0, 1.0).all()
    e_t = model.conditional_expected_number_of_purchases_up_to_time(t, summary)
    e_2t = model.conditional_expected_number_of_purchases_up_to_time(2 * t, summary)
    assert np.isfinite(e_t).all() and (e_t >= 0).all()
    assert (e_2t >= e_t - 1e-9 * (1 + e_t)).all()  # more time, no fewer purchases
