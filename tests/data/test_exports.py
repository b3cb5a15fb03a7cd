"""Shop exports that do not lose revenue (issue 15, section 2): real Shopify / WooCommerce /
Magento / Shopware export formats written from Online Retail lines, the order-level fields
Shopify writes on an order's first line only, the order-status rule, the cancellation-prefix
convention and the warnings of rules that remove a large share of the data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crmkit.data.clean import clean_lines
from crmkit.data.io import load_transactions
from crmkit.data.orders import cancellation_convention, fill_order_fields
from crmkit.data.presets import PRESETS, resolve_preset
from crmkit.errors import DataContractError
from tests.data.shop_exports import (
    order_statuses,
    retail_slice,
    write_magento,
    write_shopify,
    write_woocommerce,
)

EXCLUDED = {"refunded", "pending", "voided"}


@pytest.fixture(scope="module")
def december(shared_data) -> pd.DataFrame:
    """Online Retail's December 2010 lines that every cleaning rule keeps (25,569 lines, 1,394
    orders, 884 customers, revenue 565,199.56)."""
    return retail_slice(shared_data / "online_retail.parquet", "2010-12-01", "2011-01-01")


def _revenue(lines: pd.DataFrame) -> float:
    return round(float((lines["quantity"] * lines["unit_price"]).sum()), 2)


def _t(report) -> pd.DataFrame:
    return report.rules.set_index("rule")


def test_the_slice_is_what_the_tests_say(december):
    assert (len(december), december["order_id"].nunique()) == (25_569, 1_394)
    assert december["customer_id"].nunique() == 884
    assert _revenue(december) == 565_199.56


@pytest.mark.parametrize("how", ["recognised", "preset", "map"])
def test_shopify_export_keeps_every_line_and_cent(december, tmp_path, how):
    """Before: the suggested --map dropped 24,175 of 25,569 lines as invalid_values (86.7 % of
    the revenue: 490,201.33 of 565,199.56) with exit 0, because Created at and Email are on an
    order's first line only."""
    path = write_shopify(december, tmp_path / "orders_export_1.csv")
    kwargs = {
        "recognised": {},
        "preset": {"preset": "shopify"},
        "map": {
            "mapping": {
                "Name": "order_id",
                "Email": "customer_id",
                "Created at": "order_ts",
                "Lineitem quantity": "quantity",
                "Lineitem price": "unit_price",
                "Lineitem sku": "product_id",
                "Billing Country": "country",
            }
        },
    }[how]
    res = clean_lines(load_transactions(path, **kwargs))
    tot = res.report.totals
    assert (tot["rows_in"], tot["rows_out"]) == (25_569, 25_569)
    assert (tot["orders_out"], tot["customers_out"]) == (1_394, 884)
    assert round(tot["revenue_out"], 2) == _revenue(december) == 565_199.56
    assert _t(res.report)["rows_dropped"].sum() == 0
    # every line of an order but its first was filled, and the note counts them
    fill = [n for n in res.report.notes if n.startswith("order-level fields filled")]
    assert len(fill) == 1 and "customer_id on 24,175 lines" in fill[0]
    assert "order_ts on 24,175 lines" in fill[0]
    # the lines carry their order's customer and time (the order's first line's, as Shopify
    # has one time per order), in the file's order
    out = res.lines
    assert (out["order_id"] == "#" + december["order_id"]).all()
    assert (out["customer_id"] == "customer" + december["customer_id"] + "@example.com").all()
    first_ts = december.groupby("order_id")["order_ts"].transform("first")
    assert (out["order_ts"].to_numpy() == first_ts.to_numpy()).all()
    assert res.report.warnings == []


def test_shopify_order_status_rule(december, tmp_path):
    status = order_statuses(december["order_id"], seed=3)
    paid = status[status == "paid"].index
    cancelled = set(paid[:20])  # paid, then cancelled: Cancelled at is set
    path = write_shopify(december, tmp_path / "orders.csv", status=status, cancelled=cancelled)
    res = clean_lines(load_transactions(path))
    t = _t(res.report)
    line_status = december["order_id"].map(status)
    gone = line_status.isin(EXCLUDED) | december["order_id"].isin(cancelled)
    assert t.loc["order_status", "action"] == "drop"
    assert t.loc["order_status", "rows_dropped"] == int(gone.sum())
    assert round(t.loc["order_status", "amount_dropped"], 2) == _revenue(december[gone])
    # what is left is every purchase, to the cent (partially refunded orders kept)
    assert res.report.totals["rows_out"] == int((~gone).sum())
    assert round(res.report.totals["revenue_out"], 2) == _revenue(december[~gone])
    partial = int((line_status == "partially_refunded").sum())
    assert partial > 0
    assert any(f"{partial:,} lines of partially refunded orders" in n for n in res.report.notes)
    # the rule removes more than 1 % of the revenue: a warning
    assert any(w.startswith("rule order_status removed") for w in res.report.warnings)
    # the status column is not part of the cleaned lines
    assert "order_status" not in res.lines.columns


def test_woocommerce_and_magento_exports(december, tmp_path):
    orders = pd.unique(december["order_id"])
    rng = np.random.default_rng(5)
    woo_words = ["Completed", "Processing", "Cancelled", "Refunded", "Failed", "Pending payment"]
    woo = pd.Series(
        rng.choice(woo_words, len(orders), p=[0.7, 0.1, 0.05, 0.05, 0.05, 0.05]), orders
    )
    woo_path = write_woocommerce(december, tmp_path / "woo.csv", woo)
    mag_words = ["complete", "processing", "closed", "canceled", "pending"]
    mag = pd.Series(rng.choice(mag_words, len(orders), p=[0.7, 0.1, 0.1, 0.05, 0.05]), orders)
    mag_path = write_magento(december, tmp_path / "sales_order_item.csv", mag)
    for path, status, kept, preset in [
        (woo_path, woo, {"Completed", "Processing"}, "woocommerce"),
        (mag_path, mag, {"complete", "processing"}, "magento"),
    ]:
        keep = december["order_id"].map(status).isin(kept)
        for kwargs in ({"preset": preset}, {}):
            raw = load_transactions(path, **kwargs)
            assert f"preset: {preset}" in raw.notes[0]
            res = clean_lines(raw)
            t = _t(res.report)
            assert t.loc["order_status", "rows_dropped"] == int((~keep).sum()), preset
            assert res.report.totals["rows_out"] == int(keep.sum()), preset
            assert round(res.report.totals["revenue_out"], 2) == _revenue(december[keep]), preset


def test_shopware_export_with_numeric_order_states(write):
    # Shopware 5 "orders" profile, one line per position, semicolon separated; status is the
    # numeric order state: -1 cancelled, 4 cancelled/rejected, 2 completed, 0 open
    text = (
        "orderId;number;customerId;status;cleared;orderTime;invoiceAmount;articleId;"
        "articleNumber;articleName;price;quantity;taxRate\n"
        "1;20001;7;2;12;2023-03-01 10:00:00;30.00;11;SW10001;Mug;10.00;3;19\n"
        "2;20002;7;-1;35;2023-03-02 10:00:00;12.50;12;SW10002;Cup;12.50;1;19\n"
        "3;20003;8;0;17;2023-03-03 10:00:00;5.00;11;SW10001;Mug;10.00;1;19\n"
        "3;20003;8;0;17;2023-03-03 10:00:00;5.00;13;SW10003;Spoon;2.25;2;19\n"
        "4;20004;9;4;35;2023-03-04 10:00:00;2.25;13;SW10003;Spoon;2.25;1;19\n"
    )
    path = write("export.orders.csv", text)
    res = clean_lines(load_transactions(path, preset="shopware"))
    t = _t(res.report)
    assert t.loc["order_status", "rows_dropped"] == 2
    assert t.loc["order_status", "amount_dropped"] == pytest.approx(12.50 + 2.25)
    assert res.lines["order_id"].tolist() == ["20001", "20003", "20003"]
    assert res.report.totals["revenue_out"] == pytest.approx(30.0 + 10.0 + 4.5)


def test_unknown_preset_is_a_named_error(write):
    path = write("a.csv", "customer_id,order_ts,amount\nc1,2023-01-01,5\n")
    with pytest.raises(DataContractError) as exc:
        load_transactions(path, preset="bigcommerce")
    assert exc.value.rule == "preset" and "shopify" in str(exc.value)
    assert resolve_preset("Online_Retail") is PRESETS["online-retail"]


def test_order_level_fill_never_overwrites_and_counts():
    frame = pd.DataFrame(
        {
            "order_id": ["1", "1", "1", "2", "2", "3"],
            "customer_id": ["a", None, "b", None, None, "c"],
        }
    )
    out, filled = fill_order_fields(frame)
    assert out["customer_id"].fillna("-").tolist() == ["a", "a", "b", "-", "-", "c"]
    assert filled == {"customer_id": 1}
    assert frame["customer_id"].isna().sum() == 3  # the input is not changed


@pytest.mark.parametrize(
    "ids, qty, applies",
    [
        # Online Retail: C + the digits of an ordinary invoice, negative quantities
        (["536365", "536366", "C536379", "C536383"], [6, 2, -1, -3], True),
        # Superstore order ids: CA-... beside US-..., positive quantities
        (["CA-2019-103800", "US-2019-118983", "CA-2019-152156"], [2, 3, 2], False),
        # customer-style ids, all starting with C, positive quantities
        (["CUST-17", "CUST-18", "CUST-19"], [1, 1, 2], False),
        # a C-prefix of another shape with negative quantities: not the convention either
        (["1001", "1002", "CX-7"], [1, 1, -1], False),
    ],
)
def test_cancellation_prefix_fires_only_on_the_convention(ids, qty, applies):
    frame = pd.DataFrame(
        {
            "customer_id": ["k"] * len(ids),
            "order_id": ids,
            "order_ts": pd.date_range("2020-01-01", periods=len(ids), freq="D"),
            "product_id": [f"p{i}" for i in range(len(ids))],
            "quantity": qty,
            "unit_price": 2.0,
        }
    )
    held, rejected = cancellation_convention(frame["order_id"], np.array(qty, float), ("C",))
    assert (held == ("C",)) is applies and (rejected == ("C",)) is not applies
    res = clean_lines(load_transactions(frame))
    t = _t(res.report)
    prefixed = sum(i.startswith("C") for i in ids)
    if applies:
        assert t.loc["cancellations", "rows_dropped"] == prefixed
    else:
        assert t.loc["cancellations", "rows_dropped"] == 0
        assert t.loc["cancellations", "action"].startswith("skipped")
        assert any("ordinary orders" in n for n in res.report.notes)
        negative = sum(q < 0 for q in qty)
        assert t.loc["returns", "rows_dropped"] == negative
        assert res.report.totals["rows_out"] == len(ids) - negative


@pytest.mark.realdata
def test_online_retail_counts_and_warnings(shared_data, tmp_path):
    """The cancellation rule keeps its Online Retail counts, and the rules removing more than
    1 % of the revenue or 5 % of the lines are warnings in the report and its JSON."""
    rep = clean_lines(load_transactions(shared_data / "online_retail.parquet")).report
    t = _t(rep)
    assert (t.loc["cancellations", "matched_in_input"], t.loc["cancellations", "rows_dropped"]) == (
        9_288,
        8_905,
    )
    assert rep.totals["rows_out"] == 391_153
    assert [w.split()[1] for w in rep.warnings] == [
        "missing_customer_id",
        "cancellations",
        "non_product_lines",
    ]
    assert "24.9% of the lines" in rep.warnings[0] and "(14.9%)" in rep.warnings[0]
    rep.to_json(tmp_path / "q.json")
    assert json.loads((tmp_path / "q.json").read_text())["warnings"] == rep.warnings
    assert rep.render().splitlines()[-1].startswith("  WARNING: rule non_product_lines")


@pytest.mark.realdata
def test_complete_journey_figures(shared_data):
    """Complete Journey (no status column, numeric basket ids): the new rules change nothing;
    its retail-discount-free sales lines keep every cent but the zero-value ones."""
    tx = pd.read_parquet(shared_data / "completejourney" / "transactions.parquet")
    raw = load_transactions(
        tx,
        mapping={
            "household_id": "customer_id",
            "basket_id": "order_id",
            "transaction_timestamp": "order_ts",
            "sales_value": "amount",
        },
    )
    rep = clean_lines(raw).report
    t = _t(rep)
    assert "order_status" not in t.index
    assert t.loc["cancellations", "matched_in_input"] == 0
    assert not any(n.startswith("order-level fields filled") for n in rep.notes)
    assert rep.totals["rows_in"] == 1_469_307
