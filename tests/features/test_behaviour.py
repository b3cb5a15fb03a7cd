"""Behavioural churn features: hand-computed values, leakage, edge cases, a slow reference
implementation on simulated data, and real-data figures."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from crmkit.data.clean import analysis_cutoff, clean_lines
from crmkit.data.simulate import simulate_transactions
from crmkit.errors import DataContractError
from crmkit.features.behaviour import behaviour_features
from crmkit.features.rfm import rfm_summary

NAN = np.nan
COLUMNS = [
    "customer_id",
    "order_id",
    "order_ts",
    "product_id",
    "quantity",
    "unit_price",
    "category",
    "country",
    "channel",
]
# Analysis date 2021-12-31: cutoff C = 2022-01-01 00:00. With windows (30, 90) and season (30,):
#   30d [2021-12-02, C), previous 30d [2021-11-02, 2021-12-02),
#   90d [2021-10-03, C), previous 90d [2021-07-05, 2021-10-03),
#   same 30d last year [2021-01-01, 2021-01-31).
# customer, order, timestamp, product, quantity, unit_price, category, country, channel
ROWS = [
    # A: four purchase orders on four days, a cancellation (C4) and a return (O6)
    ("A", "O1", "2021-01-10 10:00:00", "P1", 2, 5.0, "X", "UK", "web"),  # 10
    ("A", "O2", "2021-07-10 12:00:00", "P2", 1, 20.0, "Y", "UK", "web"),  # 20
    ("A", "O3", "2021-10-10 09:00:00", "P1", 3, 5.0, "X", "UK", "app"),  # 15
    ("A", "O3", "2021-10-10 09:00:00", "P3", 1, 8.0, "X", "UK", "app"),  # 8
    ("A", "C4", "2021-10-12 08:00:00", "P1", -1, 5.0, "X", "UK", "app"),  # -5
    ("A", "O5", "2021-12-20 15:00:00", "P2", 1, 20.0, "Y", "UK", "app"),  # 20
    ("A", "O6", "2021-12-22 16:00:00", "P3", -1, 8.0, "X", "UK", "app"),  # -8
    # B: one order of two lines, late on the analysis date
    ("B", "O7", "2021-12-31 23:00:00", "P1", 1, 5.0, "X", "FR", "store"),  # 5
    ("B", "O7", "2021-12-31 23:00:00", "P4", 2, 2.5, "Z", "FR", "store"),  # 5
    # C: two orders on one day, one of them zero-valued
    ("C", "O8", "2021-06-15 09:00:00", "P2", 1, 20.0, "Y", "DE", "web"),  # 20
    ("C", "O9", "2021-06-15 17:00:00", "P5", 1, 0.0, "Y", "DE", "web"),  # 0
    # D: only zero-value orders, no country
    ("D", "O10", "2020-12-30 10:00:00", "P6", 1, 0.0, "Z", NAN, "app"),
    ("D", "O11", "2021-01-05 10:00:00", "P6", 1, 0.0, "Z", NAN, "app"),
    # E: a return only (no purchase): not a customer at the analysis date
    ("E", "O12", "2021-03-01 10:00:00", "P1", -1, 5.0, "X", "UK", "web"),
]
AS_OF = "2021-12-31"
SMALL = {"windows": (30, 90), "season_windows": (30,)}


def make_lines(rows: list[tuple]) -> pd.DataFrame:
    """Order lines shaped like ``clean_lines(...).lines`` (returns kept as negative lines)."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["order_ts"] = pd.to_datetime(df["order_ts"], format="ISO8601")
    df["quantity"] = df["quantity"].astype("float64")
    df["amount"] = df["quantity"] * df["unit_price"]
    return df[
        [
            "customer_id",
            "order_id",
            "order_ts",
            "product_id",
            "quantity",
            "unit_price",
            "amount",
            "category",
            "country",
            "channel",
        ]
    ]


@pytest.fixture
def lines() -> pd.DataFrame:
    return make_lines(ROWS)


def expected_small() -> pd.DataFrame:
    """Every feature of the handmade lines, computed by hand (see ROWS)."""
    a_gaps = np.array([181.0, 92.0, 71.0])  # 01-10 -> 07-10 -> 10-10 -> 12-20
    cols = {
        "recency_days": [11, 0, 199, 360],
        "tenure_days": [355, 0, 199, 366],
        "n_purchase_days": [4, 1, 1, 2],
        "n_orders": [4, 1, 2, 2],
        "total_items": [8.0, 3.0, 2.0, 2.0],
        "total_spend": [60.0, 10.0, 20.0, 0.0],
        "mean_basket_size": [2.0, 3.0, 1.0, 1.0],
        "mean_basket_value": [73 / 4, 10.0, 10.0, 0.0],
        "orders_30d": [1, 1, 0, 0],
        "items_30d": [1.0, 3.0, 0.0, 0.0],
        "spend_30d": [12.0, 10.0, 0.0, 0.0],  # A: O5 20 - return O6 8
        "orders_90d": [2, 1, 0, 0],
        "items_90d": [5.0, 3.0, 0.0, 0.0],
        "spend_90d": [30.0, 10.0, 0.0, 0.0],  # A: 23 - 5 + 20 - 8
        "orders_trend_30d": [1.0, 1.0, 0.0, 0.0],
        "spend_trend_30d": [1.0, 1.0, 0.0, 0.0],
        "orders_trend_90d": [1 / 3, 1.0, 0.0, 0.0],  # A: (2 - 1) / (2 + 1)
        "spend_trend_90d": [0.2, 1.0, 0.0, 0.0],  # A: (30 - 20) / (30 + 20)
        "has_repeat": [1, 0, 0, 1],
        "gap_mean_days": [344 / 3, 0.0, 199.0, 6.0],
        "gap_std_days": [float(np.std(a_gaps)), 0.0, 0.0, 0.0],
        "days_overdue": [11 - 344 / 3, 0.0, 0.0, 354.0],
        "overdue_ratio": [33 / 344, 0.0, 1.0, 60.0],
        "distinct_products": [3, 2, 2, 1],
        "distinct_categories": [2, 2, 1, 1],
        "return_rate": [1 / 6, 0.0, 0.0, 0.0],
        "cancellation_rate": [1 / 6, 0.0, 0.0, 0.0],
        "share_spend_q4": [43 / 73, 1.0, 0.0, 0.5],  # D: no value, falls back to orders
        "share_orders_q4": [0.5, 1.0, 0.0, 0.5],
        "orders_same_30d_last_year": [1, 0, 0, 1],
        "bought_same_30d_last_year": [1, 0, 0, 1],
        "country": pd.Categorical(["UK", "FR", "DE", NAN], categories=["DE", "FR", "UK"]),
        # A: web on O1, O2 and app on O3, O5: a tie, broken by the smaller value
        "channel": pd.Categorical(
            ["app", "store", "web", "app"], categories=["app", "store", "web"]
        ),
    }
    out = pd.DataFrame(cols, index=pd.Index(["A", "B", "C", "D"], name="customer_id"))
    for c in out.columns:
        if c not in ("country", "channel") and out[c].dtype.kind == "i":
            out[c] = out[c].astype("int64")
    return out


def assert_frames(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        got, want, check_exact=False, rtol=1e-12, atol=1e-12, check_index_type=False
    )


# --------------------------------------------------------------------------------------------
# hand-computed values


def test_every_feature_by_hand(lines):
    got = behaviour_features(lines, AS_OF, **SMALL)
    assert_frames(got, expected_small())
    assert list(got.index) == ["A", "B", "C", "D"]  # E bought nothing: no row


def test_default_columns_and_dtypes(lines):
    f = behaviour_features(lines, AS_OF)
    per_w = [f"{k}_{w}d" for w in (30, 90, 180, 365) for k in ("orders", "items", "spend")]
    trends = [f"{k}_trend_{w}d" for w in (30, 90, 180, 365) for k in ("orders", "spend")]
    season = [f"{k}_same_{h}d_last_year" for h in (30, 90) for k in ("orders", "bought")]
    assert list(f.columns) == [
        "recency_days",
        "tenure_days",
        "n_purchase_days",
        "n_orders",
        "total_items",
        "total_spend",
        "mean_basket_size",
        "mean_basket_value",
        *per_w,
        *trends,
        "has_repeat",
        "gap_mean_days",
        "gap_std_days",
        "days_overdue",
        "overdue_ratio",
        "distinct_products",
        "distinct_categories",
        "return_rate",
        "cancellation_rate",
        "share_spend_q4",
        "share_orders_q4",
        *season,
        "country",
        "channel",
    ]
    ints = {
        "recency_days",
        "tenure_days",
        "n_purchase_days",
        "n_orders",
        "has_repeat",
        "distinct_products",
        "distinct_categories",
        *(c for c in f.columns if c.startswith("orders_") and "trend" not in c),
        *(c for c in f.columns if c.startswith("bought_")),
    }
    for c in f.columns:
        want = "category" if c in ("country", "channel") else ("int64" if c in ints else "float64")
        assert str(f[c].dtype) == want, c
    # the longer windows of the handmade lines, by hand
    assert f["orders_180d"].tolist() == [3, 1, 0, 0]  # [2021-07-05, C)
    assert f["orders_365d"].tolist() == [4, 1, 2, 1]  # [2021-01-01, C)
    assert f["spend_365d"].tolist() == [60.0, 10.0, 20.0, 0.0]
    # previous 180d [2021-01-06, 2021-07-05): A O1, C O8 and O9; D's O11 (01-05) is before it
    assert f["orders_trend_180d"].tolist() == [(3 - 1) / (3 + 1), 1.0, -1.0, 0.0]
    # same 90 days last year [2021-01-01, 2021-04-01)
    assert f["orders_same_90d_last_year"].tolist() == [1, 0, 0, 1]


def test_windows_sorted_and_deduplicated(lines):
    a = behaviour_features(lines, AS_OF, windows=(90, 30, 30), season_windows=(30, 30))
    b = behaviour_features(lines, AS_OF, **SMALL)
    pd.testing.assert_frame_equal(a, b)


def test_window_edges_are_half_open(lines):
    """[C - 30 days, C): a line exactly 30 days before the cutoff is in, 1 ns earlier is out."""
    c = analysis_cutoff(AS_OF)
    rows = [
        ("F", "F1", str(c - pd.Timedelta(days=30)), "P1", 1, 5.0, "X", "UK", "web"),
        ("F", "F2", str(c - pd.Timedelta(days=30, nanoseconds=1)), "P1", 2, 5.0, "X", "UK", "web"),
    ]
    f = behaviour_features(make_lines(rows), AS_OF, **SMALL)
    assert f.loc["F", "orders_30d"] == 1
    assert f.loc["F", "items_30d"] == 1.0
    assert f.loc["F", "orders_trend_30d"] == 0.0  # one order in each 30-day window
    assert f.loc["F", "recency_days"] == 29 and f.loc["F", "tenure_days"] == 30


# --------------------------------------------------------------------------------------------
# leakage


@pytest.mark.parametrize("as_of", [AS_OF, "2021-12-31 12:00:00"])
def test_no_leakage_from_lines_at_or_after_the_cutoff(lines, as_of):
    cutoff = analysis_cutoff(as_of)
    at, later = str(cutoff), str(cutoff + pd.Timedelta(seconds=1))
    future = [
        ("A", "O90", at, "P9", 5, 100.0, "W", "ES", "phone"),  # an existing customer
        ("A", "C91", later, "P1", -2, 5.0, "X", "UK", "app"),  # a later cancellation
        ("D", "O92", later, "P9", 1, 9.0, "W", "ES", "phone"),
        ("NEW", "O93", at, "P9", 1, 9.0, "W", "ES", "phone"),  # a new customer
        ("NEW", "O94", later, "P8", 1, 9.0, "V", "IT", "phone"),
        ("E", "O95", later, "P1", 1, 5.0, "X", "UK", "web"),  # first purchase of E
        ("A", "O3", later, "P7", 1, 1.0, "W", "ES", "phone"),  # a late line of a past order
    ]
    base = behaviour_features(lines, as_of)
    with_future = behaviour_features(make_lines(ROWS + future), as_of)
    pd.testing.assert_frame_equal(with_future, base)
    assert "NEW" not in base.index and "E" not in base.index
    # the instant just before the cutoff does count
    just_before = [
        ("NEW", "O96", str(cutoff - pd.Timedelta(1, "ns")), "P1", 1, 5.0, "X", "UK", "web")
    ]
    assert "NEW" in behaviour_features(make_lines(ROWS + just_before), as_of).index


def test_input_frame_not_modified(lines):
    before = lines.copy(deep=True)
    behaviour_features(lines, AS_OF)
    pd.testing.assert_frame_equal(lines, before)


# --------------------------------------------------------------------------------------------
# edge cases


def test_single_order_customer(lines):
    f = behaviour_features(make_lines(ROWS[7:9]), "2022-01-10", **SMALL)  # B alone, 10 days on
    b = f.loc["B"]
    assert (b["recency_days"], b["tenure_days"], b["n_orders"], b["has_repeat"]) == (10, 10, 1, 0)
    assert (b["gap_mean_days"], b["gap_std_days"]) == (10.0, 0.0)  # the whole tenure
    assert (b["days_overdue"], b["overdue_ratio"]) == (0.0, 1.0)
    assert b["orders_trend_30d"] == 1.0 and b["spend_trend_30d"] == 1.0


def test_all_orders_on_one_day(lines):
    rows = [
        ("G", f"G{i}", f"2021-05-05 {9 + i:02d}:00:00", "P1", 1, 5.0, "X", "UK", "web")
        for i in range(4)
    ]
    g = behaviour_features(make_lines(rows), AS_OF, **SMALL).loc["G"]
    assert (g["n_orders"], g["n_purchase_days"], g["has_repeat"]) == (4, 1, 0)
    assert (g["recency_days"], g["tenure_days"]) == (240, 240)
    assert (g["gap_mean_days"], g["gap_std_days"], g["days_overdue"], g["overdue_ratio"]) == (
        240.0,
        0.0,
        0.0,
        1.0,
    )
    assert (g["mean_basket_size"], g["mean_basket_value"]) == (1.0, 5.0)


def test_zero_value_orders_are_finite(lines):
    f = behaviour_features(lines, AS_OF)
    num = f.select_dtypes("number").to_numpy(dtype=float)
    assert np.isfinite(num).all()
    d = f.loc["D"]
    assert (d["total_spend"], d["mean_basket_value"], d["spend_trend_365d"]) == (0.0, 0.0, 0.0)
    assert d["share_spend_q4"] == d["share_orders_q4"] == 0.5


def test_order_level_log_without_products(lines):
    """Order-level logs (no product_id, no category) omit the breadth columns; every other
    feature is the same as with products."""
    order_level = lines.drop(columns=["product_id", "category"])
    got = behaviour_features(order_level, AS_OF, **SMALL)
    want = expected_small().drop(columns=["distinct_products", "distinct_categories"])
    assert_frames(got, want)
    assert "distinct_products" not in got and "distinct_categories" not in got


def test_order_level_log_through_clean_lines():
    """A CDNOW-style log (customer, date, count, value, with a zero-value order)."""
    raw = pd.DataFrame(
        {
            "customer_id": ["1", "1", "1", "2"],
            "order_ts": pd.to_datetime(["1997-01-01", "1997-01-01", "1997-02-10", "1997-03-01"]),
            "quantity": [1.0, 2.0, 1.0, 3.0],
            "amount": [11.77, 0.0, 20.0, 30.0],
        }
    )
    res = clean_lines(raw)
    assert res.level == "order" and len(res.lines) == 4  # the zero-value order is kept
    f = behaviour_features(res.lines, "1997-03-31", windows=(30,), season_windows=(30,))
    assert "distinct_products" not in f.columns
    assert f["n_purchase_days"].tolist() == [2, 1]
    assert f["n_orders"].tolist() == [2, 1]  # same-day lines share a derived order id
    assert f["total_items"].tolist() == [4.0, 3.0]
    assert f["mean_basket_value"].tolist() == [31.77 / 2, 30.0]
    assert f["gap_mean_days"].tolist() == [40.0, 30.0]
    assert np.isfinite(f.select_dtypes("number").to_numpy(dtype=float)).all()


def test_returns_and_cancellations(lines):
    f = behaviour_features(lines, AS_OF)
    assert f.loc["A", "return_rate"] == 1 / 6  # O6 of O1, O2, O3, C4, O5, O6
    assert f.loc["A", "cancellation_rate"] == 1 / 6  # C4
    # without a cancellation prefix C4 is an ordinary return
    g = behaviour_features(lines, AS_OF, cancellation_prefixes=())
    assert g.loc["A", "return_rate"] == 2 / 6 and g.loc["A", "cancellation_rate"] == 0.0
    # lines cleaned with returns dropped: no negative lines, both rates 0
    kept = lines[lines["quantity"] > 0]
    h = behaviour_features(kept, AS_OF)
    assert (h["return_rate"] == 0).all() and (h["cancellation_rate"] == 0).all()
    assert h.loc["A", "total_spend"] == 73.0 and h.loc["A", "n_orders"] == 4


def test_order_id_shared_by_two_customers(lines):
    rows = [
        ("H", "X1", "2021-12-10 10:00:00", "P1", 1, 5.0, "X", "UK", "web"),
        ("I", "X1", "2021-12-10 10:00:00", "P2", 1, 20.0, "Y", "UK", "web"),
        ("I", "X1", "2021-12-10 10:00:00", "P3", 1, 8.0, "X", "UK", "web"),
    ]
    f = behaviour_features(make_lines(rows), AS_OF, **SMALL)
    assert f["n_orders"].tolist() == [1, 1]
    assert f["mean_basket_value"].tolist() == [5.0, 28.0]
    assert f["orders_30d"].tolist() == [1, 1]


def test_timezone_aware_timestamps_are_read_in_utc(lines):
    aware = lines.assign(order_ts=lines["order_ts"].dt.tz_localize("UTC"))
    pd.testing.assert_frame_equal(
        behaviour_features(aware, AS_OF, **SMALL), behaviour_features(lines, AS_OF, **SMALL)
    )


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda d: d.drop(columns="order_id"), "required_column"),
        (lambda d: d.assign(order_ts=d["order_ts"].astype(str)), "column_type"),
        (
            lambda d: d.assign(customer_id=d["customer_id"].where(d.index != 2)),
            "missing_customer_id",
        ),
        (lambda d: d.assign(quantity=d["quantity"].where(d.index != 2)), "invalid_values"),
        (lambda d: d.assign(amount=d["amount"].replace(20.0, np.inf)), "invalid_values"),
    ],
)
def test_bad_lines_raise_data_contract_error(lines, change, rule):
    with pytest.raises(DataContractError) as err:
        behaviour_features(change(lines), AS_OF)
    assert err.value.rule == rule


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"as_of": "2019-01-01"}, "empty_window"),
        ({"as_of": "not a date"}, "as_of"),
        ({"as_of": AS_OF, "windows": (0,)}, "window_length"),
        ({"as_of": AS_OF, "windows": (30.5,)}, "window_length"),
        ({"as_of": AS_OF, "season_windows": (400,)}, "window_length"),
    ],
)
def test_bad_arguments_raise_data_contract_error(lines, kwargs, rule):
    with pytest.raises(DataContractError) as err:
        behaviour_features(lines, **kwargs)
    assert err.value.rule == rule


# --------------------------------------------------------------------------------------------
# simulated data against a slow, loop-based reference implementation


def reference_features(lines, as_of, windows, season_windows, prefixes=("C",)):
    """The definitions of docs/features_behaviour.md, customer by customer, in plain Python."""
    cutoff = analysis_cutoff(as_of)
    end = (cutoff - pd.Timedelta(1, "ns")).normalize()
    year_back = cutoff - pd.DateOffset(years=1)
    per_cust = defaultdict(list)
    for r in lines.itertuples(index=False):
        if r.order_ts < cutoff:
            per_cust[r.customer_id].append(r)
    out, countries = {}, set()
    for cid in sorted(per_cust):
        rs = per_cust[cid]
        buys = [r for r in rs if r.quantity > 0]
        if not buys:
            continue
        days = sorted({r.order_ts.normalize() for r in buys})
        orders = defaultdict(list)
        for r in rs:
            orders[r.order_id].append(r)
        p_orders = {k: [r for r in v if r.quantity > 0] for k, v in orders.items()}
        p_orders = {k: v for k, v in p_orders.items() if v}
        o_time = {k: min(r.order_ts for r in v) for k, v in p_orders.items()}
        rec = {
            "recency_days": (end - days[-1]).days,
            "tenure_days": (end - days[0]).days,
            "n_purchase_days": len(days),
            "n_orders": len(p_orders),
        }
        items = sum(r.quantity for r in buys)
        gross = sum(r.amount for r in buys)
        rec["total_items"] = items
        rec["total_spend"] = sum(r.amount for r in rs)
        rec["mean_basket_size"] = items / len(p_orders)
        rec["mean_basket_value"] = gross / len(p_orders)

        def n_orders(lo, hi, o_time=o_time):
            return sum(lo <= t < hi for t in o_time.values())

        def spend(lo, hi, rs=rs):
            return sum(r.amount for r in rs if lo <= r.order_ts < hi)

        def trend(x, y):
            return 0.0 if abs(x) + abs(y) == 0 else (x - y) / (abs(x) + abs(y))

        trends = {}
        for w in windows:
            lo, lo2 = cutoff - pd.Timedelta(days=w), cutoff - pd.Timedelta(days=2 * w)
            rec[f"orders_{w}d"] = n_orders(lo, cutoff)
            rec[f"items_{w}d"] = sum(r.quantity for r in buys if r.order_ts >= lo)
            rec[f"spend_{w}d"] = spend(lo, cutoff)
            trends[f"orders_trend_{w}d"] = trend(n_orders(lo, cutoff), n_orders(lo2, lo))
            trends[f"spend_trend_{w}d"] = trend(spend(lo, cutoff), spend(lo2, lo))
        rec.update(trends)
        gaps = np.diff([d.value for d in days]) / 86_400e9
        rec["has_repeat"] = int(len(days) > 1)
        rec["gap_mean_days"] = gaps.mean() if len(gaps) else float(rec["tenure_days"])
        rec["gap_std_days"] = gaps.std() if len(gaps) else 0.0
        rec["days_overdue"] = rec["recency_days"] - rec["gap_mean_days"]
        rec["overdue_ratio"] = rec["recency_days"] / max(rec["gap_mean_days"], 1.0)
        rec["distinct_products"] = len({r.product_id for r in buys})
        rec["distinct_categories"] = len({r.category for r in buys})
        cancel = [k for k in orders if k.startswith(prefixes)] if prefixes else []
        returns = [
            k for k, v in orders.items() if k not in cancel and any(r.quantity < 0 for r in v)
        ]
        rec["return_rate"] = len(returns) / len(orders)
        rec["cancellation_rate"] = len(cancel) / len(orders)
        q4_orders = sum(t.month >= 10 for t in o_time.values()) / len(p_orders)
        q4_value = sum(r.amount for r in buys if r.order_ts.month >= 10)
        rec["share_spend_q4"] = q4_value / gross if gross > 0 else q4_orders
        rec["share_orders_q4"] = q4_orders
        for h in season_windows:
            k = n_orders(year_back, year_back + pd.Timedelta(days=h))
            rec[f"orders_same_{h}d_last_year"] = k
            rec[f"bought_same_{h}d_last_year"] = int(k > 0)
        # the value on each purchase order's first purchase line (lines are in row order)
        votes = Counter(v[0].country for v in p_orders.values())
        countries |= set(votes)
        top = max(votes.values())
        rec["country"] = min(c for c, k in votes.items() if k == top)
        out[cid] = rec
    frame = pd.DataFrame.from_dict(out, orient="index")
    frame.index.name = "customer_id"
    frame["country"] = pd.Categorical(frame["country"], categories=sorted(countries))
    return frame


@pytest.fixture(scope="module")
def simulated():
    sim = simulate_transactions(n_customers=600, seed=3)
    return clean_lines(sim.lines, {"returns": "net"}).lines


@pytest.mark.parametrize("as_of", ["2022-12-24", "2023-03-15 13:30:00", "2023-12-31"])
def test_matches_reference_on_simulated_data(simulated, as_of):
    assert (simulated["quantity"] < 0).any()  # net cleaning kept the cancellations
    kw = {"windows": (7, 30, 90, 180, 365), "season_windows": (30, 90)}
    got = behaviour_features(simulated, as_of, categoricals=("country",), **kw)
    want = reference_features(simulated, as_of, kw["windows"], kw["season_windows"])
    want = want[got.columns]
    pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-9, atol=1e-9)
    assert got["cancellation_rate"].gt(0).any() and got["bought_same_90d_last_year"].any()


def test_simulated_all_finite_and_consistent_with_rfm():
    sim = simulate_transactions(n_customers=3000, seed=0)
    lines = clean_lines(sim.lines, {"returns": "net"}).lines
    f = behaviour_features(lines, "2023-06-30")
    assert np.isfinite(f.select_dtypes("number").to_numpy(dtype=float)).all()
    assert not f[["country", "channel"]].isna().any().any()
    rfm = rfm_summary(lines, "2023-06-30")
    assert f.index.equals(rfm.index)
    np.testing.assert_array_equal(f["n_purchase_days"] - 1, rfm["frequency"])
    np.testing.assert_array_equal(f["tenure_days"], rfm["T"])
    np.testing.assert_array_equal(f["tenure_days"] - f["recency_days"], rfm["recency"])
    assert ((-1 <= f.filter(like="_trend_")) & (f.filter(like="_trend_") <= 1)).all().all()
    for c in ("return_rate", "cancellation_rate", "share_spend_q4", "share_orders_q4"):
        assert f[c].between(0, 1).all(), c


# --------------------------------------------------------------------------------------------
# real data


@pytest.mark.realdata
def test_online_retail_at_2011_09_09(shared_data):
    from crmkit.data.io import load_transactions

    raw = load_transactions(shared_data / "online_retail.parquet")
    lines = clean_lines(raw, {"returns": "net"}).lines
    f = behaviour_features(lines, "2011-09-09")
    assert len(f) == 3_368  # customers with a purchase up to 2011-09-09
    assert f.index.equals(rfm_summary(lines, "2011-09-09").index)
    assert np.isfinite(f.select_dtypes("number").to_numpy(dtype=float)).all()
    assert f["return_rate"].eq(0).all()  # Online Retail's returns are all 'C' cancellations
    assert round(f["cancellation_rate"].mean(), 6) == 0.105835
    assert f["country"].value_counts().head(3).to_dict() == {
        "United Kingdom": 3_033,
        "Germany": 74,
        "France": 70,
    }
    c = f.loc["12347"]
    assert (c["recency_days"], c["tenure_days"], c["n_orders"], c["distinct_products"]) == (
        38,
        276,
        5,
        82,
    )
    assert c["spend_90d"] == pytest.approx(584.91, abs=1e-9)
    assert c["country"] == "Iceland"


@pytest.mark.realdata
def test_cdnow_sample_order_level(shared_data):
    from crmkit.data.io import load_transactions

    raw = load_transactions(
        shared_data / "cdnow" / "CDNOW_sample.txt",
        names=["customer_id", "sample_id", "order_ts", "quantity", "amount"],
    )
    lines = clean_lines(raw).lines
    f = behaviour_features(lines, "1997-09-30")
    assert len(f) == 2_357
    assert int((f["n_purchase_days"] - 1).sum()) == 2_457  # published repeat transactions
    assert "distinct_products" not in f.columns
    assert np.isfinite(f.select_dtypes("number").to_numpy(dtype=float)).all()


def test_prefixed_ordinary_orders_are_not_cancellations():
    """Order ids that merely start with the prefix (Superstore's ``CA-2019-103800``, a
    shop's ``CUST-17``) on ordinary lines are purchases, not cancellations, as the cleaning
    rule decides (issue 15): before, every such order counted, cancellation_rate 1.0."""
    rows = [
        ("k1", "CA-2019-103800", "2021-03-01 10:00:00", "P1", 2, 16.45, "X", "US", "web"),
        ("k1", "CA-2019-152156", "2021-05-05 10:00:00", "P3", 2, 130.98, "X", "US", "web"),
        ("k2", "US-2019-108966", "2021-06-07 10:00:00", "P2", 1, 957.58, "Y", "US", "web"),
        ("k3", "CUST-17", "2021-07-01 10:00:00", "P4", 3, 7.31, "Z", "US", "app"),
        ("k3", "CUST-18", "2021-08-01 10:00:00", "P4", -1, 7.31, "Z", "US", "app"),  # a return
        ("k4", "ORD-5", "2021-09-01 10:00:00", "P1", 1, 5.0, "X", "US", "app"),
    ]
    lines = make_lines(rows)
    cleaned = clean_lines(lines, {"returns": "net"})
    assert cleaned.report.rule("cancellations")["action"].startswith("skipped")
    f = behaviour_features(cleaned.lines, AS_OF)
    assert f["cancellation_rate"].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert f.loc["k3", "return_rate"] == 0.5  # CUST-18 is an ordinary return
    assert f.loc["k1", "n_orders"] == 2
    # the same under returns: drop (the default)
    dropped = clean_lines(lines).lines
    g = behaviour_features(dropped, AS_OF)
    assert (g["cancellation_rate"] == 0).all() and g.loc["k1", "n_orders"] == 2


@pytest.mark.realdata
def test_online_retail_cancellations_unchanged(shared_data):
    """Online Retail's ``C`` orders still count (the convention holds there): the figures
    measured before the convention check, exactly (counts) and to 1e-12 (rate sums)."""
    from crmkit.data.io import load_transactions

    raw = load_transactions(shared_data / "online_retail.parquet")
    lines = clean_lines(raw, {"returns": "net"}).lines
    f = behaviour_features(lines, "2011-09-09")
    assert int((f["cancellation_rate"] > 0).sum()) == 1_132
    assert f["cancellation_rate"].sum() == pytest.approx(356.451451650399, rel=1e-12)
    want = {"12347": 0.0, "12352": 0.2, "14911": 23 / 132, "17841": 31 / 112, "13089": 19 / 90}
    for cust, rate in want.items():
        assert f.loc[cust, "cancellation_rate"] == pytest.approx(rate, rel=1e-12), cust
