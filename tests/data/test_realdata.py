"""The real data sets in ../shared/data load, and the report's counts match the figures
published in its README."""

from __future__ import annotations

import pandas as pd
import pytest

from crmkit.data.clean import clean_lines
from crmkit.data.io import load_baskets, load_transactions

pytestmark = pytest.mark.realdata

USUAL = {"drop_non_product_lines": False, "drop_exact_duplicates": False}


@pytest.fixture(scope="module")
def retail_parquet(shared_data):
    return load_transactions(shared_data / "online_retail.parquet")


def test_online_retail_raw_figures(retail_parquet):
    f = retail_parquet.frame
    assert len(f) == 541_909
    assert f["order_id"].nunique() == 25_900
    assert f["product_id"].nunique() == 4_070
    assert f["customer_id"].nunique() == 4_372
    assert f["customer_id"].isna().sum() == 135_080
    assert f["country"].nunique() == 38
    assert round(f["amount"].sum(), 2) == 9_747_747.93


def test_online_retail_report_counts(retail_parquet):
    rep = clean_lines(retail_parquet).report
    t = rep.rules.set_index("rule")
    # Raw figures from the data set's README, each rule matched on the whole input.
    assert t.loc["missing_customer_id", "matched_in_input"] == 135_080
    assert t.loc["cancellations", "matched_in_input"] == 9_288
    assert t.loc["exact_duplicates", "matched_in_input"] == 5_268
    # crmkit's own sequence, explained rule by rule.
    assert t["rows_dropped"].to_dict() == {
        "invalid_values": 0,
        "implausible_timestamp": 0,
        "missing_customer_id": 135_080,
        "cancellations": 8_905,
        "returns": 0,
        "non_positive_price": 40,
        "non_product_lines": 1_544,
        "exact_duplicates": 5_187,
        "after_analysis_date": 0,
    }
    tot = rep.totals
    assert tot["rows_out"] == 541_909 - t["rows_dropped"].sum() == 391_153
    assert (tot["customers_out"], tot["orders_out"]) == (4_334, 18_402)
    assert tot["revenue_out"] == pytest.approx(8_737_227.64, abs=0.01)
    assert tot["revenue_in"] == pytest.approx(tot["revenue_out"] + t["amount_dropped"].sum())


def test_online_retail_usual_cleaning_reproduced(retail_parquet):
    """Drop missing CustomerID and 'C' invoices, keep Quantity > 0 and UnitPrice > 0, keep
    duplicates: the README's 397,884 rows, 4,338 customers, 18,532 invoices, 8,911,407.90."""
    res = clean_lines(retail_parquet, USUAL)
    tot = res.report.totals
    assert tot["rows_out"] == 397_884
    assert tot["customers_out"] == 4_338
    assert tot["orders_out"] == 18_532
    assert round(tot["revenue_out"], 2) == 8_911_407.90


def test_online_retail_csv_and_parquet_agree(shared_data, retail_parquet):
    from_csv = load_transactions(shared_data / "online_retail.csv.gz")
    assert from_csv.date_format == "ISO8601"
    a = clean_lines(from_csv).lines
    b = clean_lines(retail_parquet).lines
    # The Parquet file writes the 1,454 missing descriptions as the string 'nan'.
    a = a.drop(columns="product_name")
    b = b.drop(columns="product_name")
    pd.testing.assert_frame_equal(a, b)


def test_cdnow_master(shared_data):
    raw = load_transactions(shared_data / "cdnow" / "CDNOW_master.txt")
    assert raw.level == "order"
    res = clean_lines(raw)
    assert res.report.totals["rows_in"] == 69_659
    assert res.report.totals["rows_out"] == 69_659  # zero-value orders and repeats are purchases
    assert res.report.totals["customers_out"] == 23_570


def test_cdnow_sample_headerless(shared_data):
    raw = load_transactions(
        shared_data / "cdnow" / "CDNOW_sample.txt",
        names=["customer_id", "sample_id", "order_ts", "quantity", "amount"],
    )
    res = clean_lines(raw)
    assert len(res.lines) == 6_919
    assert res.lines["customer_id"].nunique() == 2_357
    # customer-days before the end of the 39-week calibration (1997-09-30)
    cal = res.lines[res.lines["order_ts"] <= "1997-09-30"]
    days = cal.groupby("customer_id")["order_ts"].nunique()
    assert int((days - 1).sum()) == 2_457  # repeat transactions in calibration, as published


def test_groceries_baskets(shared_data):
    b = load_baskets(shared_data / "groceries.csv")
    assert b["order_id"].nunique() == 9_835
    assert len(b) == 43_367
    assert b["product_id"].nunique() == 169
    assert {"cream cheese ", "roll products "} <= set(b["product_id"])
