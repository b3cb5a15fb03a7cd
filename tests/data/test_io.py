"""Loading: recognition, encodings, delimiters, dates, numbers, and every validation error."""

from __future__ import annotations

import codecs

import numpy as np
import pandas as pd
import pytest

from crmkit.data.io import load_baskets, load_transactions, parse_numbers, parse_timestamps
from crmkit.data.schema import recognise_columns
from crmkit.errors import DataContractError

CANON = (
    "customer_id,order_id,order_ts,product_id,quantity,unit_price\n"
    "c1,o1,2023-01-05 10:00:00,p1,2,3.50\n"
    "c1,o1,2023-01-05 10:00:00,p2,1,10.00\n"
    "c2,o2,2023-02-01 12:30:00,p1,1,3.50\n"
)


def _err(excinfo) -> DataContractError:
    return excinfo.value


# ---------------------------------------------------------------- loads that must work


def test_canonical_csv_loads_without_mapping(write):
    raw = load_transactions(write("lines.csv", CANON))
    f = raw.frame
    assert list(f.columns) == [
        "customer_id",
        "order_id",
        "order_ts",
        "product_id",
        "quantity",
        "unit_price",
        "amount",
    ]
    assert raw.level == "product" and raw.has_products
    assert f["customer_id"].tolist() == ["c1", "c1", "c2"]
    assert f["order_ts"].dtype == "datetime64[ns]"
    assert f["order_ts"].iloc[2] == pd.Timestamp("2023-02-01 12:30:00")
    assert f["amount"].tolist() == [7.0, 10.0, 3.5]
    assert raw.encoding == "utf-8" and raw.delimiter == ","


def test_amount_stands_in_for_unit_price(write):
    raw = load_transactions(
        write("a.csv", "customer_id,order_id,order_ts,quantity,amount\nc1,o1,2023-01-05,4,10.0\n")
    )
    assert raw.frame["unit_price"].tolist() == [2.5]
    assert raw.frame["amount"].tolist() == [10.0]
    assert raw.level == "order"
    assert any("derived as amount / quantity" in n for n in raw.notes)


def test_order_level_log_without_order_id_uses_customer_days(write):
    text = "customer,date,quantity,amount\n7,2023-01-05,1,10\n7,2023-01-05,2,5\n7,2023-01-09,1,4\n"
    raw = load_transactions(write("cdnow_style.csv", text))
    assert raw.level == "order" and not raw.has_products
    assert raw.frame["order_id"].tolist() == ["7@2023-01-05", "7@2023-01-05", "7@2023-01-09"]
    assert "product_id" not in raw.frame


def test_online_retail_headers_recognised(write):
    text = (
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850.0,United Kingdom\n"
        "536366,22633,HAND WARMER UNION JACK,6,12/13/2010 8:28,1.85,17850.0,United Kingdom\n"
    )
    raw = load_transactions(write("or.csv", text))
    f = raw.frame
    assert raw.columns["InvoiceNo"] == "order_id" and raw.columns["StockCode"] == "product_id"
    assert f["customer_id"].tolist() == ["17850", "17850"]  # float id written as 17850.0
    assert f["order_ts"].tolist() == [
        pd.Timestamp("2010-12-01 08:26"),
        pd.Timestamp("2010-12-13 08:28"),
    ]
    assert f["product_name"].iloc[1] == "HAND WARMER UNION JACK"
    assert f["country"].iloc[0] == "United Kingdom"


def test_online_retail_ii_headers_recognised():
    frame = pd.DataFrame(
        {
            "Invoice": ["489434"],
            "StockCode": ["85048"],
            "Description": ["15CM CHRISTMAS GLASS BALL 20 LIGHTS"],
            "Quantity": [12],
            "InvoiceDate": [pd.Timestamp("2009-12-01 07:45")],
            "Price": [6.95],
            "Customer ID": [13085.0],
            "Country": ["United Kingdom"],
        }
    )
    raw = load_transactions(frame)
    assert raw.columns == {
        "Invoice": "order_id",
        "StockCode": "product_id",
        "Description": "product_name",
        "Quantity": "quantity",
        "InvoiceDate": "order_ts",
        "Price": "unit_price",
        "Customer ID": "customer_id",
        "Country": "country",
    }
    assert raw.frame["customer_id"].iloc[0] == "13085"
    assert raw.frame["amount"].iloc[0] == pytest.approx(83.4)


def test_shop_export_headers_recognised():
    headers = ["Order Number", "Created at", "Email", "SKU", "Qty", "Item Price", "Line Total"]
    got = recognise_columns(headers)
    assert got == {
        "Order Number": "order_id",
        "Created at": "order_ts",
        "Email": "customer_id",
        "SKU": "product_id",
        "Qty": "quantity",
        "Item Price": "unit_price",
        "Line Total": "amount",
    }


def test_semicolon_delimiter_and_decimal_comma(write):
    text = "customer_id;order_id;order_ts;product_id;quantity;unit_price\nc1;o1;2023-01-05;p1;2;3,50\nc2;o2;2023-01-06;p1;1;1.234,00\n"
    raw = load_transactions(write("semi.csv", text))
    assert raw.delimiter == ";"
    assert raw.frame["unit_price"].tolist() == [3.5, 1234.0]


def test_thousands_separator_and_currency_symbols():
    vals, notes = parse_numbers(pd.Series(["£1,234.50", "$ 12", "7"]), column="unit_price")
    assert vals.tolist() == [1234.5, 12.0, 7.0]
    assert notes


def test_tab_delimiter_and_quoted_fields(write):
    text = 'customer_id\torder_id\torder_ts\tproduct_id\tquantity\tunit_price\tproduct_name\nc1\to1\t2023-01-05\tp1\t2\t3.5\t"MUG, RED"\n'
    raw = load_transactions(write("t.tsv", text))
    assert raw.delimiter == "\t"
    assert raw.frame["product_name"].iloc[0] == "MUG, RED"


def test_whitespace_separated_file(write):
    text = "customer_id date number_of_cds dollar_value\n 00001 19970101  1   11.77\n 00002 19970112  5   77.00\n"
    raw = load_transactions(write("cdnow.txt", text))
    f = raw.frame
    assert raw.delimiter == "whitespace"
    assert f["customer_id"].tolist() == ["00001", "00002"]  # leading zeros kept
    assert f["order_ts"].tolist() == [pd.Timestamp("1997-01-01"), pd.Timestamp("1997-01-12")]
    assert f["amount"].tolist() == [11.77, 77.0]  # the file's amount, bit for bit


def test_utf8_bom(write):
    raw = load_transactions(write("bom.csv", codecs.BOM_UTF8 + CANON.encode()))
    assert raw.encoding == "utf-8-sig"
    assert raw.frame.columns[0] == "customer_id" and len(raw.frame) == 3


def test_cp1252_file_detected(write):
    text = CANON.replace("p2,1,10.00", "p2,1,10.00") + "c3,o3,2023-02-02,p9,1,2.00\n"
    text = text.replace(
        "product_id,quantity,unit_price", "product_id,quantity,unit_price,product_name"
    )
    lines = text.splitlines()
    lines = [lines[0]] + [ln + ",Caf\u00e9 cr\u00e8me \u00a3" for ln in lines[1:]]
    p = write("legacy.csv", "\n".join(lines) + "\n", encoding="cp1252")
    raw = load_transactions(p)
    assert raw.encoding in {"cp1252", "latin_1", "iso8859_15"}
    assert raw.frame["product_name"].iloc[0] == "Caf\u00e9 cr\u00e8me \u00a3"


def test_utf16_with_bom(write):
    raw = load_transactions(write("u16.csv", CANON, encoding="utf-16"))
    assert raw.encoding == "utf-16"
    assert raw.frame["unit_price"].tolist() == [3.5, 10.0, 3.5]


def test_gzip_csv(tmp_path):
    import gzip

    p = tmp_path / "l.csv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(CANON)
    assert len(load_transactions(p).frame) == 3


def test_parquet_and_excel(tmp_path):
    df = pd.read_csv(__import__("io").StringIO(CANON), dtype=str)
    pq = tmp_path / "l.parquet"
    df.assign(
        quantity=df["quantity"].astype(int),
        unit_price=df["unit_price"].astype(float),
        order_ts=pd.to_datetime(df["order_ts"]),
    ).to_parquet(pq)
    xl = tmp_path / "l.xlsx"
    df.to_excel(xl, index=False)
    a = load_transactions(pq).frame
    b = load_transactions(xl).frame
    assert a["amount"].tolist() == b["amount"].tolist() == [7.0, 10.0, 3.5]
    assert a["order_ts"].tolist() == b["order_ts"].tolist()


def test_mapping_and_headerless_names(write):
    text = "Kunde,Datum,Betrag\nk1,2023-01-05,9.5\n"
    raw = load_transactions(
        write("de.csv", text),
        mapping={"Kunde": "customer_id", "Datum": "order_ts", "Betrag": "amount"},
    )
    assert raw.frame["customer_id"].tolist() == ["k1"]
    headerless = write("nohead.txt", "00004 0001 19970101  2   29.33\n")
    raw = load_transactions(
        headerless, names=["customer_id", "sample_id", "order_ts", "quantity", "amount"]
    )
    assert raw.frame["amount"].tolist() == [29.33]
    assert raw.frame["customer_id"].tolist() == ["00004"]


# ---------------------------------------------------------------- dates


def test_day_first_inferred_from_the_row_that_only_fits_it():
    s = pd.Series(["03/01/19", "30/12/22", "05/02/21"])
    parsed, fmt, _ = parse_timestamps(s)
    assert fmt == "%d/%m/%y"
    assert parsed.tolist() == [
        pd.Timestamp("2019-01-03"),
        pd.Timestamp("2022-12-30"),
        pd.Timestamp("2021-02-05"),
    ]


def test_month_first_inferred():
    parsed, fmt, _ = parse_timestamps(pd.Series(["12/31/2010 08:26", "01/02/2011 10:00"]))
    assert fmt == "%m/%d/%Y %H:%M"
    assert parsed.iloc[1] == pd.Timestamp("2011-01-02 10:00")


def test_ambiguous_dates_refused_and_date_format_resolves(write):
    s = pd.Series(["03/01/19", "05/02/19", "11/12/20"])
    with pytest.raises(DataContractError) as ei:
        parse_timestamps(s)
    assert ei.value.rule == "ambiguous_date_format"
    assert "--date-format" in str(ei.value)
    parsed, fmt, _ = parse_timestamps(s, date_format="%m/%d/%y")
    assert parsed.iloc[0] == pd.Timestamp("2019-03-01")


def test_time_zones_converted_to_utc():
    parsed, _, notes = parse_timestamps(
        pd.Series(["2023-03-01T10:00:00+02:00", "2023-03-01T10:00:00Z"])
    )
    assert parsed.tolist() == [pd.Timestamp("2023-03-01 08:00"), pd.Timestamp("2023-03-01 10:00")]
    assert any("UTC" in n for n in notes)
    aware = pd.Series(pd.to_datetime(["2023-03-01 10:00"]).tz_localize("Europe/Berlin"))
    assert parse_timestamps(aware)[0].iloc[0] == pd.Timestamp("2023-03-01 09:00")


def test_missing_timestamps_stay_missing_for_the_cleaning_rule():
    parsed, _, _ = parse_timestamps(pd.Series(["2023-01-01", "", None, "2023-01-03"]))
    assert parsed.isna().tolist() == [False, True, True, False]


# ---------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    ("name", "content", "rule"),
    [
        ("empty.csv", b"", "empty_file"),
        ("blank.csv", b"\n\n  \n", "empty_file"),
        (
            "header_only.csv",
            b"customer_id,order_id,order_ts,product_id,quantity,unit_price\n",
            "empty_file",
        ),
        ("binary.csv", b"PK\x03\x04\x00\x00garbage\x00\x01", "readable_file"),
        ("bad.parquet", b"not a parquet file at all", "readable_file"),
        ("bad.xlsx", b"not an excel file", "readable_file"),
        ("noheader.csv", b"c1,o1,2023-01-05,p1,2,3.5\n", "header_row"),
    ],
)
def test_unreadable_or_empty_files(write, name, content, rule):
    with pytest.raises(DataContractError) as ei:
        load_transactions(write(name, content))
    assert ei.value.rule == rule
    assert name in str(ei.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataContractError, match="file not found") as ei:
        load_transactions(tmp_path / "nope.csv")
    assert ei.value.rule == "readable_file"
    with pytest.raises(DataContractError, match="is a directory"):
        load_transactions(tmp_path)


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        ("order_id,order_ts,product_id,quantity,unit_price", "customer_id"),
        ("customer_id,order_id,product_id,quantity,unit_price", "order_ts"),
        ("customer_id,order_id,order_ts,product_id,quantity", "unit_price (or amount)"),
        ("customer_id,order_id,order_ts,product_id,unit_price", "quantity"),
    ],
)
def test_missing_required_column_named(write, header, missing):
    n = len(header.split(","))
    with pytest.raises(DataContractError) as ei:
        load_transactions(write("m.csv", header + "\n" + ",".join(["1"] * (n - 1) + ["x"]) + "\n"))
    assert ei.value.rule == "required_column"
    assert ei.value.column == missing
    assert "--map" in str(ei.value)


def test_duplicate_header(write):
    text = "customer_id,order_id,order_ts,order_ts,quantity,unit_price\nc,o,2023-01-01,2023-01-01,1,1\n"
    with pytest.raises(DataContractError) as ei:
        load_transactions(write("d.csv", text))
    # pandas renames the second one order_ts.1: reported as the duplicate it is
    assert ei.value.rule == "duplicate_header"
    assert ei.value.column == "order_ts"
    frame = pd.DataFrame([[1, 2]], columns=["x", "x"])
    with pytest.raises(DataContractError) as ei2:
        recognise_columns(frame.columns)
    assert ei2.value.rule == "duplicate_header"


def test_two_headers_for_one_column(write):
    text = "CustomerID,Email,order_ts,amount\nc1,a@b,2023-01-01,3\n"
    with pytest.raises(DataContractError) as ei:
        load_transactions(write("two.csv", text))
    assert ei.value.rule == "ambiguous_header"
    assert "--map" in str(ei.value)
    raw = load_transactions(write("two.csv", text), mapping={"CustomerID": "customer_id"})
    assert raw.frame["customer_id"].tolist() == ["c1"]
    # A header spelled exactly as the crmkit column wins over synonyms.
    exact = load_transactions(write("exact.csv", text.replace("CustomerID", "customer_id")))
    assert exact.columns == {
        "customer_id": "customer_id",
        "order_ts": "order_ts",
        "amount": "amount",
    }


def test_bad_mapping(write):
    p = write("l.csv", CANON)
    with pytest.raises(DataContractError, match="not a crmkit column") as ei:
        load_transactions(p, mapping={"customer_id": "client"})
    assert ei.value.rule == "column_mapping"
    with pytest.raises(DataContractError, match="does not have"):
        load_transactions(p, mapping={"Kunde": "customer_id"})


def test_unparseable_timestamps_name_rows(write):
    text = CANON.replace("2023-02-01 12:30:00", "yesterday")
    with pytest.raises(DataContractError) as ei:
        load_transactions(write("ts.csv", text))
    e = ei.value
    assert e.rule == "timestamp_format" and e.column == "order_ts"
    assert e.rows == [(3, "yesterday")]
    assert "row 3: 'yesterday'" in str(e)


def test_mixed_date_formats_refused(write):
    text = CANON.replace("2023-02-01 12:30:00", "01/02/2023 12:30")
    with pytest.raises(DataContractError) as ei:
        load_transactions(write("mixed.csv", text))
    assert ei.value.rule == "timestamp_format"
    assert ei.value.rows[0][0] == 3


def test_given_date_format_that_does_not_fit(write):
    with pytest.raises(DataContractError) as ei:
        load_transactions(write("l.csv", CANON), date_format="%d/%m/%Y")
    assert ei.value.rule == "timestamp_format"
    assert len(ei.value.rows) == 3


def test_mixed_time_zones_refused():
    with pytest.raises(DataContractError) as ei:
        parse_timestamps(pd.Series(["2023-03-01T10:00:00+02:00", "2023-03-01T10:00:00"]))
    assert ei.value.rule == "mixed_timezones"
    assert ei.value.rows == [(2, "2023-03-01T10:00:00")]


@pytest.mark.parametrize("column", ["quantity", "unit_price"])
def test_text_in_numeric_column_named(write, column):
    f = pd.read_csv(__import__("io").StringIO(CANON), dtype=str)
    f.loc[1, column] = "two"
    p = write("n.csv", f.to_csv(index=False))
    with pytest.raises(DataContractError) as ei:
        load_transactions(p)
    assert ei.value.rule == "numeric"
    assert ei.value.column == column
    assert ei.value.rows == [(2, "two")]


def test_ragged_rows_give_a_table_error(write):
    text = CANON + "c3,o3,2023-03-01,p1,1,2.0,extra,fields,here\n"
    with pytest.raises(DataContractError) as ei:
        load_transactions(write("ragged.csv", text))
    assert ei.value.rule == "table_format"


def test_wrong_encoding_flag(write):
    p = write("legacy.csv", CANON.replace("p2", "p\u00e92"), encoding="cp1252")
    with pytest.raises(DataContractError) as ei:
        load_transactions(p, encoding="utf-8")
    assert ei.value.rule == "encoding"
    assert "--encoding" in str(ei.value)


def test_nan_and_inf_values_parse_to_non_finite():
    vals, _ = parse_numbers(pd.Series(["1.5", "", "inf", "NaN"]), column="quantity")
    assert vals.iloc[0] == 1.5
    assert np.isnan(vals.iloc[1]) and np.isinf(vals.iloc[2]) and np.isnan(vals.iloc[3])


# ---------------------------------------------------------------- baskets


def test_basket_file(write):
    b = load_baskets(write("b.csv", "milk,bread\nbread\n\nmilk,cream cheese ,milk\n"))
    assert b["order_id"].tolist() == ["B1", "B1", "B2", "B3", "B3"]
    assert b["product_id"].tolist() == ["milk", "bread", "bread", "milk", "cream cheese "]
