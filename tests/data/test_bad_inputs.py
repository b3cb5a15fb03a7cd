"""The bad-input suite: malformed transaction files through the ``validate`` stage, each with
its expected clear error (rule named, no output written) or its defined result.

Each case is a file a real export could produce. Counted in the README ("Reliability")."""

from __future__ import annotations

import codecs
import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from crmkit.errors import CrmkitError, DataContractError
from crmkit.pipelines.config import load_config
from crmkit.pipelines.validate import run_validate

HEADER = "customer_id,order_id,order_ts,product_id,quantity,unit_price"
GOOD_ROWS = [
    "c1,o1,2023-01-05 10:00:00,p1,2,3.50",
    "c1,o2,2023-02-05 10:00:00,p2,1,10.00",
    "c2,o3,2023-02-06 12:30:00,p1,1,3.50",
]


def csv(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


@dataclass
class Case:
    name: str
    content: bytes
    error: str | None = None  # expected DataContractError rule
    rows_out: int | None = None  # expected cleaned rows when it loads
    dropped: dict[str, int] = field(default_factory=dict)  # rule -> rows dropped
    suffix: str = ".csv"
    options: dict[str, Any] = field(default_factory=dict)  # config overrides
    check: Any = None  # extra assertion on the cleaned lines


LONG = "x" * 10_000

CASES = [
    Case("empty file", b"", error="empty_file"),
    Case("only white space", b" \n\n\t\n", error="empty_file"),
    Case("header only", csv(), error="empty_file"),
    Case("binary garbage", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", error="readable_file"),
    Case("not parquet", b"PAR1 but not really", error="readable_file", suffix=".parquet"),
    Case("not excel", b"<html>an error page</html>", error="readable_file", suffix=".xlsx"),
    Case("no header row", "\n".join(GOOD_ROWS).encode() + b"\n", error="header_row"),
    Case(
        "duplicated header",
        csv("c1,o1,2023-01-05,2023-01-05,1,2", header=HEADER.replace("product_id", "order_ts")),
        error="duplicate_header",
    ),
    Case(
        "missing customer column",
        csv("o1,2023-01-05,p1,1,2", header="order_id,order_ts,product_id,quantity,unit_price"),
        error="required_column",
    ),
    Case(
        "two customer-like columns",
        csv(
            "c1,a@b.c,o1,2023-01-05,p1,1,2",
            header="CustomerID,Email,order_id,order_ts,product_id,quantity,unit_price",
        ),
        error="ambiguous_header",
    ),
    Case(
        "wrong delimiter given",
        csv(*GOOD_ROWS),
        error="required_column",
        options={"data": {"delimiter": ";"}},
    ),
    Case(
        "semicolons and decimal commas",
        csv(
            *[
                r.replace(",", ";").replace("3.50", "3,50").replace("10.00", "10,00")
                for r in GOOD_ROWS
            ],
            header=HEADER.replace(",", ";"),
        ),
        rows_out=3,
        check=lambda f: f["unit_price"].tolist() == [3.5, 10.0, 3.5],
    ),
    Case("UTF-8 byte-order mark", codecs.BOM_UTF8 + csv(*GOOD_ROWS), rows_out=3),
    Case("UTF-16 export", csv(*GOOD_ROWS).decode().encode("utf-16"), rows_out=3),
    Case(
        "cp1252 bytes (not UTF-8)",
        csv("c\xe9,o1,2023-01-05,p\xa31,1,2".encode("latin-1").decode("latin-1"))
        .decode()
        .encode("cp1252"),
        rows_out=1,
        check=lambda f: f["customer_id"].tolist() == ["c\u00e9"],
    ),
    Case(
        "one stray invalid byte",
        csv(*GOOD_ROWS) + b"c3,o9,2023-02-07,p\xff9,1,2\n",
        rows_out=4,
        check=lambda f: f["product_id"].iloc[-1] == "p\u00ff9",
    ),
    Case(
        "mixed date formats",
        csv(GOOD_ROWS[0], "c1,o2,05/02/2023 10:00,p2,1,10.00"),
        error="timestamp_format",
    ),
    Case(
        "ambiguous day/month",
        csv("c1,o1,03/01/2023,p1,1,2", "c1,o2,04/02/2023,p1,1,2"),
        error="ambiguous_date_format",
    ),
    Case(
        "ambiguous day/month resolved by --date-format",
        csv("c1,o1,03/01/2023,p1,1,2", "c1,o2,04/02/2023,p1,1,2"),
        rows_out=2,
        options={"data": {"date_format": "%d/%m/%Y"}},
        check=lambda f: (
            f["order_ts"].tolist() == [pd.Timestamp("2023-01-03"), pd.Timestamp("2023-02-04")]
        ),
    ),
    Case(
        "time zones, mixed offsets",
        csv("c1,o1,2023-01-05T10:00:00+01:00,p1,1,2", "c1,o2,2023-01-05T10:00:00-05:00,p1,1,2"),
        rows_out=2,
        check=lambda f: (
            f["order_ts"].tolist()
            == [pd.Timestamp("2023-01-05 09:00"), pd.Timestamp("2023-01-05 15:00")]
        ),
    ),
    Case(
        "time zone on some rows only",
        csv("c1,o1,2023-01-05T10:00:00+01:00,p1,1,2", "c1,o2,2023-01-05T10:00:00,p1,1,2"),
        error="mixed_timezones",
    ),
    Case("epoch seconds as timestamps", csv("c1,o1,1672531200,p1,1,2"), error="timestamp_format"),
    Case(
        "unparseable timestamp",
        csv(GOOD_ROWS[0], "c1,o2,tomorrow,p2,1,10.00"),
        error="timestamp_format",
    ),
    Case("text in quantity", csv(GOOD_ROWS[0], "c1,o2,2023-02-05,p2,two,10.00"), error="numeric"),
    Case("text in price", csv(GOOD_ROWS[0], "c1,o2,2023-02-05,p2,1,ten"), error="numeric"),
    Case(
        "NaN and inf values",
        csv(
            *GOOD_ROWS,
            "c3,o4,2023-02-07,p1,NaN,2",
            "c3,o5,2023-02-07,p1,1,inf",
            "c3,o6,2023-02-07,p1,-inf,2",
        ),
        rows_out=3,
        dropped={"invalid_values": 3},
    ),
    Case(
        "zero quantity",
        csv(*GOOD_ROWS, "c3,o4,2023-02-07,p1,0,2"),
        rows_out=3,
        dropped={"invalid_values": 1},
    ),
    Case(
        "negative quantity without cancellation mark",
        csv(*GOOD_ROWS, "c1,o4,2023-02-07,p1,-2,3.5"),
        rows_out=3,
        dropped={"returns": 1},
    ),
    Case(
        "negative and zero prices",
        csv(*GOOD_ROWS, "c1,o4,2023-02-07,p1,1,-3.5", "c1,o5,2023-02-07,p1,1,0"),
        rows_out=3,
        dropped={"non_positive_price": 2},
    ),
    Case(
        "huge but finite values kept",
        csv(*GOOD_ROWS, "c9,o9,2023-02-07,p1,1000000,1e9"),
        rows_out=4,
        check=lambda f: f["amount"].max() == 1e15,
    ),
    Case(
        "overflowing line amount",
        csv(*GOOD_ROWS, "c9,o9,2023-02-07,p1,1e300,1e300"),
        rows_out=3,
        dropped={"invalid_values": 1},
    ),
    Case(
        "scientific notation",
        csv("c1,o1,2023-01-05,p1,1E1,2.5e-1"),
        rows_out=1,
        check=lambda f: f["amount"].tolist() == [2.5],
    ),
    Case(
        "ragged rows",
        csv(*GOOD_ROWS, "c1,o4,2023-02-07,p1,1,2,surplus,fields"),
        error="table_format",
    ),
    Case(
        "quoted line breaks",
        csv('c1,o1,2023-01-05,p1,1,2,"MUG\nRED"', header=HEADER + ",product_name"),
        rows_out=1,
        check=lambda f: f["product_name"].tolist() == ["MUG\nRED"],
    ),
    Case(
        "10,000-character strings",
        csv(f"{LONG},o1,2023-01-05,{LONG},1,2,{LONG}", header=HEADER + ",product_name"),
        rows_out=1,
        check=lambda f: (
            len(f["customer_id"].iloc[0]) == 10_000 and len(f["product_name"].iloc[0]) == 10_000
        ),
    ),
    Case(
        "ids padded with spaces",
        csv(" c1 ,o1,2023-01-05,p1,1,2", "c1,o2,2023-01-06,p1,1,2"),
        rows_out=2,
        check=lambda f: f["customer_id"].nunique() == 1,
    ),
    Case("one customer, one order", csv(GOOD_ROWS[0]), rows_out=1),
    Case(
        "all customer ids missing",
        csv(",o1,2023-01-05,p1,1,2", ",o2,2023-01-06,p1,1,2"),
        error="no_rows_left",
    ),
    Case(
        "lines after the analysis date",
        csv(*GOOD_ROWS, "c1,o9,2023-03-01 00:00:00,p1,1,2"),
        rows_out=3,
        dropped={"after_analysis_date": 1},
        options={"cleaning": {"as_of": "2023-02-28"}},
    ),
    Case("gzip file", gzip.compress(csv(*GOOD_ROWS)), rows_out=3, suffix=".csv.gz"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path):
    src = tmp_path / f"input{case.suffix}"
    src.write_bytes(case.content)
    out = tmp_path / "out"
    cfg = load_config(None, overrides=case.options)
    if case.error:
        with pytest.raises(DataContractError) as ei:
            run_validate(src, out, cfg)
        assert ei.value.rule == case.error, str(ei.value)
        assert "Traceback" not in str(ei.value)
        assert not out.exists(), "a failed run must write no output"
        return
    result = run_validate(src, out, cfg)
    lines = pd.read_parquet(out / "lines.parquet")
    assert len(lines) == case.rows_out
    dropped = result.report.rules.set_index("rule")["rows_dropped"]
    for rule, n in case.dropped.items():
        assert dropped[rule] == n, rule
    assert dropped.sum() == result.report.totals["rows_in"] - case.rows_out
    if case.check is not None:
        assert case.check(lines)


def test_the_suite_is_large_enough():
    assert len(CASES) >= 25
    assert sum(c.error is not None for c in CASES) >= 15


def test_errors_are_crmkit_errors():
    assert issubclass(DataContractError, CrmkitError)
