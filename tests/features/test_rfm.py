"""RFM summary: equality with lifetimes, the published CDNOW summary, holdout counts,
leakage and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crmkit.data.clean import clean_lines
from crmkit.data.io import load_transactions
from crmkit.errors import DataContractError
from crmkit.features.rfm import calibration_holdout_summary, rfm_summary

CDNOW_NAMES = ["customer_id", "sample_id", "order_ts", "quantity", "amount"]
MULT = {"D": 1, "W": 7, "M": 30.4375}


def _lifetimes_summary(lines, as_of, unit):
    import warnings

    with warnings.catch_warnings():
        from lifetimes.utils import summary_data_from_transaction_data

        return summary_data_from_transaction_data(
            lines,
            "customer_id",
            "order_ts",
            "amount",
            observation_period_end=as_of,
            freq="D",
            freq_multiplier=MULT[unit],
        ).sort_index()


def _assert_same(ours: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert ours.index.tolist() == ref.index.tolist()
    for col in ("frequency", "recency", "T"):
        # bit for bit
        np.testing.assert_array_equal(ours[col].to_numpy(), ref[col].to_numpy(), err_msg=col)
    # Sums in a different order: equal to floating-point rounding, not necessarily to the bit.
    np.testing.assert_allclose(
        ours["monetary_value"].to_numpy(), ref["monetary_value"].to_numpy(), rtol=1e-12, atol=0
    )


@pytest.fixture(scope="module")
def cdnow_master(shared_data):
    return clean_lines(load_transactions(shared_data / "cdnow" / "CDNOW_master.txt")).lines


@pytest.fixture(scope="module")
def cdnow_sample(shared_data):
    raw = load_transactions(shared_data / "cdnow" / "CDNOW_sample.txt", names=CDNOW_NAMES)
    return clean_lines(raw).lines


@pytest.fixture(scope="module")
def sim_lines():
    from crmkit.data.simulate import simulate_transactions

    return clean_lines(
        load_transactions(simulate_transactions(n_customers=3000, seed=5).lines)
    ).lines


@pytest.mark.parametrize("unit", ["D", "W", "M"])
def test_equals_lifetimes_on_cdnow_master(cdnow_master, unit):
    for as_of in ("1997-09-30", "1998-06-30"):
        _assert_same(
            rfm_summary(cdnow_master, as_of, unit=unit),
            _lifetimes_summary(cdnow_master, as_of, unit),
        )


@pytest.mark.parametrize("unit", ["D", "W"])
def test_equals_lifetimes_on_simulated_lines(sim_lines, unit):
    as_of = "2023-03-31"
    ours = rfm_summary(sim_lines, as_of, unit=unit)
    assert len(ours) > 2000
    _assert_same(ours, _lifetimes_summary(sim_lines, as_of, unit))


def test_reproduces_the_papers_cdnow_summary(shared_data):
    # The paper's ID is the sample id (second column), zero-padded so text order is ID order.
    names = ["master_id", "customer_id", "order_ts", "quantity", "amount"]
    raw = load_transactions(shared_data / "cdnow" / "CDNOW_sample.txt", names=names)
    s = rfm_summary(clean_lines(raw).lines, "1997-09-30", unit="W")
    ref = pd.read_csv(shared_data / "cdnow" / "cdnow_customers_summary_with_transactions.csv")
    assert len(s) == len(ref) == 2357
    np.testing.assert_array_equal(s["frequency"].to_numpy(), ref["x"].to_numpy())
    np.testing.assert_array_equal(s["recency"].round(2).to_numpy(), ref["t_x"].to_numpy())
    np.testing.assert_array_equal(s["T"].round(2).to_numpy(), ref["T"].to_numpy())
    rep = ref["x"] > 0
    np.testing.assert_allclose(
        s["monetary_value"].to_numpy()[rep], ref.loc[rep, "zbar"].to_numpy(), atol=0.005
    )
    first = s.iloc[0]
    assert (first["frequency"], round(first["recency"], 2), round(first["T"], 2)) == (
        2,
        30.43,
        38.86,
    )


def test_calibration_holdout_published_counts(cdnow_sample):
    ch = calibration_holdout_summary(cdnow_sample, "1997-09-30", "1998-06-30", unit="W")
    assert len(ch) == 2357
    assert ch["frequency_cal"].sum() == 2457
    assert ch["frequency_holdout"].sum() == 1882
    assert (ch["duration_holdout"] == 39.0).all()


def test_calibration_holdout_against_an_independent_computation(sim_lines):
    cal_end, hold_end = "2023-03-31", "2023-09-30"
    ch = calibration_holdout_summary(sim_lines, cal_end, hold_end, unit="W")
    # independent: plain Python over customer-day sets
    days: dict[str, set] = {}
    values: dict[tuple[str, pd.Timestamp], float] = {}
    for cust, ts, amt in zip(sim_lines["customer_id"], sim_lines["order_ts"], sim_lines["amount"]):
        d = ts.normalize()
        days.setdefault(cust, set()).add(d)
        values[(cust, d)] = values.get((cust, d), 0.0) + amt
    cal_edge, hold_edge = pd.Timestamp("2023-04-01"), pd.Timestamp("2023-10-01")
    for cust in ch.index[::37]:
        ds = sorted(days[cust])
        cal = [d for d in ds if d < cal_edge]
        hold = [d for d in ds if cal_edge <= d < hold_edge]
        row = ch.loc[cust]
        assert row["frequency_cal"] == len(cal) - 1
        assert row["recency_cal"] == pytest.approx((cal[-1] - cal[0]).days / 7)
        assert row["T_cal"] == pytest.approx((pd.Timestamp(cal_end) - cal[0]).days / 7)
        assert row["frequency_holdout"] == len(hold)
        hv = [values[(cust, d)] for d in hold]
        assert row["monetary_value_holdout"] == pytest.approx(np.mean(hv) if hv else 0.0)
    assert ch["duration_holdout"].iloc[0] == pytest.approx(183 / 7)


def test_no_leakage_from_after_the_cutoff(sim_lines):
    as_of = "2023-03-31"
    before = rfm_summary(sim_lines, as_of, unit="W")
    cust = before.index[0]
    planted = pd.DataFrame(
        {
            "customer_id": [cust, "brand-new"],
            "order_id": ["x1", "x2"],
            "order_ts": [pd.Timestamp("2023-04-01 00:00:01"), pd.Timestamp("2023-04-01")],
            "product_id": ["P0001", "P0001"],
            "quantity": [1.0, 1.0],
            "unit_price": [99.0, 99.0],
            "amount": [99.0, 99.0],
        }
    )
    after = rfm_summary(pd.concat([sim_lines, planted], ignore_index=True), as_of, unit="W")
    pd.testing.assert_frame_equal(before, after)
    # while one second earlier it counts
    planted["order_ts"] = pd.Timestamp("2023-03-31 23:59:59")
    moved = rfm_summary(pd.concat([sim_lines, planted], ignore_index=True), as_of, unit="W")
    assert len(moved) == len(before) + 1
    assert moved.loc[cust, "recency"] >= before.loc[cust, "recency"]


def test_returns_do_not_create_purchase_days():
    lines = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a"],
            "order_ts": pd.to_datetime(["2023-01-01", "2023-01-10", "2023-01-10"]),
            "quantity": [2.0, -1.0, 0.0 + 1.0],
            "amount": [20.0, -10.0, 5.0],
        }
    )
    s = rfm_summary(lines.iloc[:2], "2023-01-31")
    assert s.loc["a", "frequency"] == 0  # the return day is no purchase
    s2 = rfm_summary(lines, "2023-01-31")
    assert s2.loc["a", "frequency"] == 1
    assert s2.loc["a", "monetary_value"] == -5.0  # the day's net value


def test_bad_input():
    lines = pd.DataFrame(
        {"customer_id": ["a"], "order_ts": pd.to_datetime(["2023-01-01"]), "amount": [1.0]}
    )
    with pytest.raises(DataContractError, match="unknown time unit"):
        rfm_summary(lines, "2023-02-01", unit="Y")
    with pytest.raises(DataContractError, match="no purchases on or before") as ei:
        rfm_summary(lines, "2022-12-31")
    assert ei.value.rule == "empty_window"
    with pytest.raises(DataContractError) as ei:
        rfm_summary(lines.drop(columns="amount"), "2023-02-01")
    assert ei.value.column == "amount"
    with pytest.raises(DataContractError, match="missing values"):
        rfm_summary(lines.assign(customer_id=[None]), "2023-02-01")
    with pytest.raises(DataContractError, match="must come after"):
        calibration_holdout_summary(lines, "2023-02-01", "2023-01-15")
