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


def _id_series(kind: str) -> pd.Series:
    rng = np.random.default_rng(11)
    if kind == "fixed width":
        ids = ["C" + str(v).zfill(6) for v in rng.integers(0, 300, 2000)]
    elif kind == "width 8":
        ids = ["".join(rng.choice(list("aZ09é"), 4)) + "-x" for _ in range(2000)]
    elif kind == "varying length":  # prefixes, NUL, multi-byte UTF-8, the empty id
        ids = [
            "".join(rng.choice(["a", "b", "\x00", "é", "中"], rng.integers(0, 4)))
            for _ in range(2000)
        ]
    elif kind == "unpadded numbers":
        ids = [str(v) for v in rng.integers(0, 10**6, 2000)]
    else:  # longer than 8 bytes: pandas' factorize
        ids = [f"customer-{v}@example.org" for v in rng.integers(0, 300, 2000)]
    return pd.Series(ids, dtype="str")


@pytest.mark.parametrize(
    "kind", ["fixed width", "width 8", "varying length", "unpadded numbers", "long"]
)
@pytest.mark.parametrize("storage", ["str", "string[pyarrow]", "string[python]", "object"])
def test_customer_codes_equal_pandas_factorize(kind, storage):
    import pyarrow as pa

    from crmkit.features.rfm import factorize_customers

    base = _id_series(kind)
    chunked = pa.chunked_array(
        [
            pa.array(base[:700].tolist(), pa.large_string()),
            pa.array(base[700:].tolist(), pa.large_string()),
        ]
    )
    variants = [base.astype(storage), base.astype(storage).iloc[5:-5]]
    if storage == "str":
        variants.append(pd.Series(pd.array(chunked, dtype="str")))
    for ids in variants:
        codes, uniques = factorize_customers(ids)
        ref_codes, ref_uniques = pd.factorize(ids, sort=True)
        np.testing.assert_array_equal(codes, ref_codes)
        pd.testing.assert_index_equal(uniques, pd.Index(ref_uniques, name="customer_id"))
        assert uniques.tolist() == sorted(set(ids))


@pytest.mark.parametrize("ordered", [False, True])
def test_categorical_ids_give_the_same_summary_in_category_order(sim_lines, ordered):
    from crmkit.features.rfm import factorize_customers

    as_of = "2023-03-31"
    plain = rfm_summary(sim_lines, as_of, unit="W")
    rng = np.random.default_rng(2)
    cats = np.concatenate([sim_lines["customer_id"].unique(), ["never-bought-1", "zz-unused"]])
    rng.shuffle(cats)
    dtype = pd.CategoricalDtype(cats, ordered=ordered)
    ids = sim_lines["customer_id"].astype(dtype)
    codes, uniques = factorize_customers(ids)
    ref_codes, ref_uniques = pd.factorize(ids, sort=True)
    np.testing.assert_array_equal(codes, ref_codes)
    pd.testing.assert_index_equal(uniques, pd.Index(ref_uniques, name="customer_id"), exact=True)

    ours = rfm_summary(sim_lines.assign(customer_id=ids), as_of, unit="W")
    buyers = set(plain.index)
    order = [c for c in cats if c in buyers]  # category order, buyers only
    assert isinstance(ours.index, pd.CategoricalIndex) and ours.index.dtype == dtype
    assert ours.index.tolist() == order
    pd.testing.assert_frame_equal(
        ours.set_axis(ours.index.astype("str")), plain.loc[order], check_exact=True
    )


@pytest.mark.parametrize("ids", ["varying length", "long", "object"])
def test_equals_lifetimes_with_other_customer_id_encodings(sim_lines, ids):
    as_of = "2023-03-31"
    if ids == "varying length":  # "C000012" -> "12": keys with a length byte
        cust = sim_lines["customer_id"].str.lstrip("C0")
    elif ids == "long":  # over 8 bytes: pandas' factorize
        cust = "customer-" + sim_lines["customer_id"]
    else:
        cust = sim_lines["customer_id"].astype(object)
    lines = sim_lines.assign(customer_id=cust)
    ours = rfm_summary(lines, as_of, unit="D")
    assert ours.index.dtype == cust.dtype
    _assert_same(ours, _lifetimes_summary(lines, as_of, "D"))
