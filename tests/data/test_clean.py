"""Every cleaning rule on a handmade file, with exact counts, and the report's reconciliation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crmkit.data.clean import CleaningConfig, analysis_cutoff, clean_lines
from crmkit.data.io import load_transactions
from crmkit.errors import ConfigError

NAN = np.nan
# customer, order, timestamp, product, quantity, unit_price       line amount / rule hit
ROWS = [
    ("c1", "o1", "2023-01-01 10:00:00", "p1", 2, 5.0),  # 1  10    kept
    ("c1", "o1", "2023-01-01 10:00:00", "p2", 1, 20.0),  # 2  20    kept
    ("c1", "o1", "2023-01-01 10:00:00", "p2", 1, 20.0),  # 3  20    exact_duplicates
    (NAN, "o2", "2023-01-02 09:00:00", "p1", 1, 5.0),  # 4   5    missing_customer_id
    ("c2", "C3", "2023-01-03 11:00:00", "p1", -1, 5.0),  # 5  -5    cancellations
    ("c2", "o4", "2023-01-03 12:00:00", "p3", -2, 4.0),  # 6  -8    returns
    ("c2", "o5", "2023-01-04 13:00:00", "p1", 1, 0.0),  # 7   0    non_positive_price
    ("c3", "o6", "2023-01-05 14:00:00", "POST", 1, 3.95),  # 8  3.95  non_product_lines
    ("c3", "o6", "2023-01-05 14:00:00", "gift_0001_20", 1, 20.0),  # 9  20    non_product_lines
    ("c3", "o6", "2023-01-05 14:00:00", "p1", 3, 5.0),  # 10 15    kept
    ("c4", "o7", "2023-01-10 00:00:00", "p1", 1, 5.0),  # 11  5    after_analysis_date
    ("c4", "o8", "2023-01-09 23:59:59", "p2", 1, 20.0),  # 12 20    kept (same day)
    ("c5", "o9", NAN, "p1", 1, 5.0),  # 13  5    invalid_values
    ("c5", "o10", "2023-01-06 10:00:00", "p1", NAN, 5.0),  # 14 NaN   invalid_values
    ("c5", "o11", "2023-01-06 10:00:00", "p1", 0, 5.0),  # 15  0    invalid_values
]
COLS = ["customer_id", "order_id", "order_ts", "product_id", "quantity", "unit_price"]


@pytest.fixture
def raw():
    return load_transactions(pd.DataFrame(ROWS, columns=COLS))


def _table(report):
    return report.rules.set_index("rule")


def test_every_rule_counted_exactly(raw):
    res = clean_lines(raw, {"as_of": "2023-01-09"})
    t = _table(res.report)
    expected = {
        # rule: (matched_in_input, rows_dropped, customers_lost, amount_dropped)
        "invalid_values": (3, 3, 1, 5.0),
        "implausible_timestamp": (0, 0, 0, 0.0),
        "missing_customer_id": (1, 1, 0, 5.0),
        "cancellations": (1, 1, 0, -5.0),
        "returns": (1, 1, 0, -8.0),
        "non_positive_price": (1, 1, 1, 0.0),
        "non_product_lines": (2, 2, 0, 23.95),
        "exact_duplicates": (1, 1, 0, 20.0),
        "after_analysis_date": (1, 1, 0, 5.0),
    }
    assert list(t.index) == list(expected)
    for rule, (matched, dropped, lost, amount) in expected.items():
        row = t.loc[rule]
        assert (row.matched_in_input, row.rows_dropped, row.customers_lost) == (
            matched,
            dropped,
            lost,
        ), rule
        assert row.amount_dropped == pytest.approx(amount), rule
        assert row.action == "drop"
    assert t.loc["non_positive_price", "customers_affected"] == 1
    out = res.lines
    assert len(out) == 4
    assert out["amount"].tolist() == [10.0, 20.0, 15.0, 20.0]
    tot = res.report.totals
    assert (tot["rows_in"], tot["rows_out"]) == (15, 4)
    assert (tot["customers_in"], tot["customers_out"]) == (5, 3)
    assert (tot["orders_in"], tot["orders_out"]) == (11, 3)
    assert tot["revenue_in"] == pytest.approx(110.95)
    assert tot["revenue_out"] == pytest.approx(65.0)
    # Spend is preserved except for what the rules counted.
    assert tot["revenue_in"] == pytest.approx(tot["revenue_out"] + t["amount_dropped"].sum())


def test_output_contract(raw):
    out = clean_lines(raw).lines
    assert list(out.columns) == [
        "customer_id",
        "order_id",
        "order_ts",
        "product_id",
        "quantity",
        "unit_price",
        "amount",
    ]
    assert out["customer_id"].notna().all()
    assert out["order_ts"].dtype == "datetime64[ns]"
    assert (out["quantity"] > 0).all() and (out["unit_price"] > 0).all()
    assert not out.duplicated().any()
    assert out.index.equals(pd.RangeIndex(len(out)))


def test_without_as_of_the_date_rule_is_skipped(raw):
    t = _table(clean_lines(raw).report)
    assert t.loc["after_analysis_date", "action"] == "skipped (no as_of)"
    assert t.loc["after_analysis_date", "rows_dropped"] == 0


def test_returns_net_reduce_spend(raw):
    res = clean_lines(raw, {"returns": "net", "as_of": "2023-01-09"})
    t = _table(res.report)
    assert t.loc["cancellations", "action"] == "net (reduce spend)"
    assert (t.loc["cancellations", "rows_changed"], t.loc["returns", "rows_changed"]) == (1, 1)
    assert (t.loc["cancellations", "rows_dropped"], t.loc["returns", "rows_dropped"]) == (0, 0)
    c2 = res.lines[res.lines["customer_id"] == "c2"]
    assert c2["amount"].tolist() == [-5.0, -8.0]
    assert res.report.totals["revenue_out"] == pytest.approx(65.0 - 13.0)
    assert res.report.totals["customers_out"] == 4  # c2 stays, with negative spend


def test_net_mode_makes_positive_cancellation_lines_negative():
    frame = pd.DataFrame(
        [("c1", "o1", "2023-01-01", "p1", 2, 5.0), ("c1", "C1", "2023-01-02", "p1", 2, 5.0)],
        columns=COLS,
    )
    # an export writing cancellations with positive quantities: the prefix is configured as
    # the shop's convention ("always"), as the data alone does not show it
    cfg = {"returns": "net", "cancellation_convention": "always"}
    out = clean_lines(load_transactions(frame), cfg).lines
    assert out["amount"].tolist() == [10.0, -10.0]


def test_rules_can_be_switched_off(raw):
    res = clean_lines(
        raw,
        {
            "drop_missing_customer_id": False,
            "drop_non_positive_price": False,
            "drop_non_product_lines": False,
            "drop_exact_duplicates": False,
        },
    )
    t = _table(res.report)
    for rule in [
        "missing_customer_id",
        "non_positive_price",
        "non_product_lines",
        "exact_duplicates",
    ]:
        assert t.loc[rule, "action"] == "keep"
        assert t.loc[rule, "rows_dropped"] == 0
    # 15 - 3 invalid - 2 cancellations/returns
    assert len(res.lines) == 10


def test_custom_non_product_codes_and_prefixes():
    frame = pd.DataFrame(
        [
            ("c1", "X-1", "2023-01-01", "SHIP-EXPRESS", 1, 9.0),
            ("c1", "R-2", "2023-01-02", "p1", 1, 5.0),
            ("c1", "X-3", "2023-01-03", "p1", 1, 5.0),
        ],
        columns=COLS,
    )
    res = clean_lines(
        load_transactions(frame),
        {
            "non_product_patterns": ["^SHIP-"],
            "cancellation_prefixes": ["R-"],
            "cancellation_convention": "always",
        },
    )
    t = _table(res.report)
    assert t.loc["non_product_lines", "rows_dropped"] == 1
    assert t.loc["cancellations", "rows_dropped"] == 1
    assert res.lines["order_id"].tolist() == ["X-3"]


def test_order_level_log_keeps_zero_value_orders_and_repeated_lines():
    frame = pd.DataFrame(
        {
            "customer": ["1", "1", "1", "2", "2"],
            "date": ["19970101", "19970101", "19970301", "19970105", "19970110"],
            "quantity": [1, 1, 2, 1, 1],
            "amount": [11.77, 11.77, 0.0, -3.0, 9.0],
        }
    )
    res = clean_lines(load_transactions(frame))
    t = _table(res.report)
    assert t.loc["exact_duplicates", "action"] == "keep (no order ids)"
    assert t.loc["exact_duplicates", "matched_in_input"] == 1
    assert t.loc["non_product_lines", "action"] == "skipped (no products)"
    assert t.loc["non_positive_price", "rows_dropped"] == 1  # only the negative one
    assert res.lines["amount"].tolist() == [11.77, 11.77, 0.0, 9.0]
    forced = clean_lines(
        load_transactions(frame), {"drop_non_positive_price": True, "drop_exact_duplicates": True}
    )
    assert forced.lines["amount"].tolist() == [11.77, 9.0]


def test_analysis_cutoff_semantics():
    assert analysis_cutoff("2023-01-09") == pd.Timestamp("2023-01-10")
    assert analysis_cutoff("2023-01-09 12:00") == pd.Timestamp("2023-01-09 12:00") + pd.Timedelta(
        1, "ns"
    )
    assert analysis_cutoff(pd.Timestamp("2023-01-09 12:00", tz="Europe/Berlin")) == pd.Timestamp(
        "2023-01-09 11:00"
    ) + pd.Timedelta(1, "ns")


def test_invalid_config_named():
    with pytest.raises(ConfigError, match=r"cleaning\.returns"):
        CleaningConfig.from_mapping({"returns": "refund"})
    with pytest.raises(ConfigError, match=r"cleaning\.drop_everything"):
        CleaningConfig.from_mapping({"drop_everything": True})
    with pytest.raises(ConfigError, match="not a valid regex"):
        CleaningConfig.from_mapping({"non_product_patterns": ["(unclosed"]})


def test_report_outputs(raw, tmp_path):
    rep = clean_lines(raw, {"as_of": "2023-01-09"}).report
    path = tmp_path / "r.json"
    rep.to_json(path)
    d = json.loads(path.read_text())
    assert d["totals"]["rows_out"] == 4
    assert [r["rule"] for r in d["rules"]][:4] == [
        "invalid_values",
        "implausible_timestamp",
        "missing_customer_id",
        "cancellations",
    ]
    assert d["config"]["as_of"].startswith("2023-01-09")
    text = rep.render()
    assert "exact_duplicates" in text and "110.95" in text
    assert rep.to_frame().shape == (9, 9)  # rules x report columns
