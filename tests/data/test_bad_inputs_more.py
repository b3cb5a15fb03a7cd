"""More bad inputs (issue 15, "no silently wrong numbers"): files and options that used to give
wrong numbers without a word or a traceback. Each gives exit 2 naming the rule, column and
rows, or is a counted, documented cleaning rule. Most run the real ``crmkit`` command."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmkit.data.simulate import simulate_transactions
from crmkit.errors import DataContractError, shorten
from crmkit.pipelines.config import load_config
from crmkit.pipelines.validate import load_and_clean

CRMKIT = str(Path(sys.executable).with_name("crmkit"))
HEADER = "customer_id,order_id,order_ts,product_id,quantity,unit_price"
GOOD_ROWS = [
    "c1,o1,2023-01-05 10:00:00,p1,2,3.50",
    "c1,o2,2023-02-05 10:00:00,p2,1,10.00",
    "c2,o3,2023-02-06 12:30:00,p1,1,3.50",
]


def crmkit(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CRMKIT, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def write_csv(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def assert_clean_exit_2(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "Aborted" not in res.stderr, res.stderr
    flat = " ".join(res.stderr.replace("│", " ").split())  # typer's usage box wraps lines
    for n in needles:
        assert n in flat, (n, res.stderr)


def report_rule(out: Path, rule: str) -> dict:
    report = json.loads((out / "quality_report.json").read_text())
    return next(r for r in report["rules"] if r["rule"] == rule)


# ---------------------------------------------------------------------------------------------
# 1. timestamps outside the representable or plausible range


def test_out_of_range_years_are_counted_not_wrapped(tmp_path):
    # before: 2300 and 0001 were read as 1715-07-18 and 1754-10-06 (nanosecond overflow)
    data = write_csv(
        tmp_path / "years.csv",
        GOOD_ROWS[0],
        "c1,o2,2300-02-05 10:00:00,p2,1,10.00",
        "c2,o3,0001-02-06 12:30:00,p1,1,3.50",
    )
    res = crmkit("validate", data, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    lines = pd.read_parquet(tmp_path / "out" / "lines.parquet")
    assert lines["order_ts"].tolist() == [pd.Timestamp("2023-01-05 10:00:00")]
    rule = report_rule(tmp_path / "out", "implausible_timestamp")
    assert (rule["matched_in_input"], rule["rows_dropped"]) == (2, 2)
    assert rule["amount_dropped"] == pytest.approx(13.5, abs=1e-9)
    assert "timestamps outside the representable years 1678-2261" in res.stdout
    assert "row 2: '2300-02-05 10:00:00'" in res.stdout


def test_out_of_range_years_in_parquet_are_counted(tmp_path):
    # before: OutOfBoundsDatetime traceback on a microsecond Parquet column
    ts = np.array(["2023-01-05T10:00", "2300-01-01T00:00", "1200-05-05T00:00"], "M8[us]")
    frame = pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3"],
            "order_id": ["o1", "o2", "o3"],
            "order_ts": ts,
            "product_id": ["p1", "p1", "p2"],
            "quantity": [1.0, 2.0, 3.0],
            "unit_price": [2.0, 3.0, 4.0],
        }
    )
    path = tmp_path / "lines.parquet"
    frame.to_parquet(path)
    res = load_and_clean(path, load_config(None))
    assert res.lines["customer_id"].tolist() == ["c1"]
    assert res.report.rule("implausible_timestamp")["rows_dropped"] == 2
    assert res.report.rule("implausible_timestamp")["amount_dropped"] == pytest.approx(18.0)


def test_plausible_range_is_configurable(tmp_path):
    data = write_csv(tmp_path / "o.csv", *GOOD_ROWS)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cleaning:\n  plausible_from: 2023-02-01\n  plausible_to: 2023-02-05 23:59:59\n")
    res = crmkit("validate", data, "--out", tmp_path / "out", "--config", cfg)
    assert res.returncode == 0, res.stderr
    lines = pd.read_parquet(tmp_path / "out" / "lines.parquet")
    assert lines["order_id"].tolist() == ["o2"]
    rule = report_rule(tmp_path / "out", "implausible_timestamp")
    assert rule["rows_dropped"] == 2
    assert "2023-02-01" in rule["description"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("cleaning:\n  plausible_to: 2300-01-01\n")
    assert_clean_exit_2(
        crmkit("validate", data, "--out", tmp_path / "o2", "--config", bad), "plausible_to"
    )


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> tuple[Path, Path]:
    """A simulated shop's CSV export, and the same with one stray 2200-01-01 line."""
    root = tmp_path_factory.mktemp("shop")
    lines = simulate_transactions(n_customers=300, seed=5).lines
    clean = root / "orders.csv"
    lines.to_csv(clean, index=False, date_format="%Y-%m-%d %H:%M:%S")
    stray = lines.iloc[[0]].copy()
    stray["order_id"] = "O-STRAY"
    stray["order_ts"] = pd.Timestamp("2200-01-01")
    far = root / "orders_far.csv"
    pd.concat([lines, stray]).to_csv(far, index=False, date_format="%Y-%m-%d %H:%M:%S")
    return clean, far


def test_a_far_future_row_does_not_move_the_analysis_date_of_features(shop, tmp_path):
    # before: "Segments at 2200-01-01", every customer's recency ~176 years
    clean, far = shop
    a = crmkit("features", clean, "--out", tmp_path / "a")
    b = crmkit("features", far, "--out", tmp_path / "b")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    last_day = pd.read_csv(clean, usecols=["order_ts"])["order_ts"].max()[:10]
    assert f"Segments at {last_day}" in a.stdout
    assert f"Segments at {last_day}" in b.stdout
    ca = pd.read_parquet(tmp_path / "a" / "customers.parquet")
    cb = pd.read_parquet(tmp_path / "b" / "customers.parquet")
    pd.testing.assert_frame_equal(ca, cb, rtol=1e-12)


def test_a_far_future_row_does_not_move_the_scoring_date(shop, tmp_path):
    # before (demo sample, model v1): scored at 2200-01-01, CLV total 282,021.16 -> 97.51
    clean, far = shop
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "clv:\n  n_draws: 0\nchurn:\n  n_snapshots: 4\n  lightgbm:\n    n_estimators: 60\n"
    )
    tr = crmkit("train", clean, "--config", cfg, "--tracking-uri", store, cwd=tmp_path)
    assert tr.returncode == 0, tr.stderr[-3000:]
    model = "models:/crmkit-customer-scorer/1"
    outs = {}
    for name, data in (("clean", clean), ("far", far)):
        res = crmkit(
            "score", data, "--out", tmp_path / name, "--model", model, "--tracking-uri", store
        )
        assert res.returncode == 0, res.stderr[-3000:]
        outs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    assert outs["far"]["as_of"] == outs["clean"]["as_of"]
    assert report_rule(tmp_path / "far", "implausible_timestamp")["rows_dropped"] == 1
    assert report_rule(tmp_path / "clean", "implausible_timestamp")["rows_dropped"] == 0
    assert not outs["far"]["as_of"].startswith("2200")
    a = pd.read_parquet(tmp_path / "clean" / "customers.parquet")
    b = pd.read_parquet(tmp_path / "far" / "customers.parquet")
    assert a["customer_id"].tolist() == b["customer_id"].tolist()
    np.testing.assert_allclose(b["clv"].sum(), a["clv"].sum(), rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# 2. mixed decimal conventions


def test_mixed_decimal_conventions_are_refused(tmp_path):
    # before: '€1.234,56' -> 1234.56 but '1,234.56' -> 1.23456 and '3.50' -> 350.0
    data = write_csv(
        tmp_path / "mixed.csv",
        'c1,o1,2023-01-05,p1,2,"€1.234,56"',
        'c1,o2,2023-02-05,p2,1,"1,234.56"',
        "c2,o3,2023-02-06,p1,1,3.50",
    )
    res = crmkit("validate", data, "--out", tmp_path / "out")
    assert_clean_exit_2(
        res,
        "rule 'mixed_decimal_separators'",
        "column 'unit_price'",
        "row 1: '€1.234,56'",
        "row 2: '1,234.56'",
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "values, expected",
    [
        (["€1.234,56", "3,50", "1.234"], [1234.56, 3.5, 1234.0]),
        (["$1,234.56", "3.50", "1,234"], [1234.56, 3.5, 1234.0]),
        (["1.234.567,5", "12"], [1234567.5, 12.0]),
    ],
)
def test_one_decimal_convention_is_read(values, expected):
    from crmkit.data.parse import parse_numbers

    got, _ = parse_numbers(pd.Series(values, dtype="str"), column="unit_price")
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# 3. unterminated quotes, Excel sheets


def test_a_stray_quote_that_swallows_lines_is_refused(tmp_path):
    # before: exit 0, 2 rows instead of 5, the product id holding four lines of the file
    data = write_csv(
        tmp_path / "q.csv",
        'c1,o1,2023-01-05,"p1,2,3.50',
        "c1,o2,2023-02-05,p2,1,10",
        "c2,o3,2023-02-06,p1,1,3.50",
        'c2,o4,2023-02-07,"p1",1,3.50',
        "c3,o5,2023-02-07,p1,1,3.50",
    )
    res = crmkit("validate", data, "--out", tmp_path / "out")
    assert_clean_exit_2(
        res, "rule 'unterminated_quote'", "column 'product_id'", "data row 1 (line 2 of the file)"
    )


def test_a_quote_never_closed_names_its_line(tmp_path):
    data = write_csv(tmp_path / "q.csv", *GOOD_ROWS, 'c3,o9,2023-03-01,"p1,1,2', "c4,o10,x,p,1,1")
    res = crmkit("validate", data, "--out", tmp_path / "out")
    assert_clean_exit_2(res, "rule 'unterminated_quote'", "line 5")


def test_a_quoted_line_break_in_a_field_is_kept(tmp_path):
    # an address or product name with a line break is legitimate
    data = write_csv(
        tmp_path / "ok.csv",
        *GOOD_ROWS,
        'c3,o4,2023-03-01,p1,1,2,"12 Main St\nApt 4"',
        header=HEADER + ",address",
    )
    res = load_and_clean(data, load_config(None))
    assert len(res.lines) == 4


@pytest.fixture
def workbook(tmp_path) -> Path:
    cols = HEADER.split(",")
    first = pd.DataFrame([r.split(",") for r in GOOD_ROWS[:2]], columns=cols)
    second = pd.DataFrame([r.split(",") for r in GOOD_ROWS], columns=cols)
    path = tmp_path / "book.xlsx"
    with pd.ExcelWriter(path) as w:
        pd.DataFrame({"About": []}).to_excel(w, sheet_name="Cover", index=False)
        first.to_excel(w, sheet_name="2023", index=False)
        second.to_excel(w, sheet_name="Orders 2024", index=False)
    return path


@pytest.mark.parametrize(
    "option, rows, read, other",
    [
        ((), 2, "'2023' read (sheet 1 of 3)", "'Orders 2024' also holds data"),
        (("--sheet", "1"), 2, "'2023' read (sheet 1 of 3)", "'Orders 2024' also holds data"),
        (("--sheet", "2"), 3, "'Orders 2024' read (sheet 2 of 3)", "'2023' also holds data"),
        (("--sheet", "Orders 2024"), 3, "'Orders 2024' read", "'2023' also holds data"),
        (("--sheet", "2023"), 2, "'2023' read", "'Orders 2024' also holds data"),
    ],
)
def test_excel_sheet_read_is_named(workbook, tmp_path, option, rows, read, other):
    # before: the empty first sheet was read ("no data rows"), --sheet 1 was "not found"
    res = crmkit("validate", workbook, "--out", tmp_path / "out", *option)
    assert res.returncode == 0, res.stderr
    assert len(pd.read_parquet(tmp_path / "out" / "lines.parquet")) == rows
    assert f"note: sheet: {read}" in res.stdout
    assert other in res.stdout and other in res.stderr


def test_unknown_excel_sheet_lists_the_sheets(workbook, tmp_path):
    res = crmkit("validate", workbook, "--out", tmp_path / "out", "--sheet", "Nope")
    assert_clean_exit_2(res, "rule 'sheet'", "'Cover', '2023', 'Orders 2024'")
    res = crmkit("validate", workbook, "--out", tmp_path / "out", "--sheet", "7")
    assert_clean_exit_2(res, "rule 'sheet'", "sheet index 7 does not exist")


# ---------------------------------------------------------------------------------------------
# 4. former tracebacks


@pytest.mark.parametrize(
    "command", ["validate", "features", "clv", "churn", "recommend", "train", "score"]
)
def test_impossible_as_of_date_is_a_usage_error(command, tmp_path):
    data = write_csv(tmp_path / "o.csv", *GOOD_ROWS)
    args = [command, data, "--as-of", "2023-02-30"]
    if command != "train":
        args += ["--out", tmp_path / "out"]
    res = crmkit(*args, cwd=tmp_path)
    assert_clean_exit_2(res, "--as-of", "2023-02-30", "day is out of range for month")


def test_impossible_holdout_end_is_a_usage_error(tmp_path):
    data = write_csv(tmp_path / "o.csv", *GOOD_ROWS)
    res = crmkit("clv", data, "--out", tmp_path / "o", "--holdout-end", "2023-13-01")
    assert_clean_exit_2(res, "--holdout-end", "2023-13-01")


@pytest.mark.parametrize("fmt", ["%", "%Y-%m-%d %", "%Q"])
def test_invalid_date_format_is_refused(fmt, tmp_path):
    data = write_csv(tmp_path / "o.csv", *GOOD_ROWS)
    res = crmkit("validate", data, "--out", tmp_path / "out", "--date-format", fmt)
    assert_clean_exit_2(res, "rule 'date_format'", "column 'order_ts'", "not a valid strptime")


@pytest.fixture(scope="module")
def big_gzip(tmp_path_factory) -> bytes:
    """A gzipped CSV whose data (about 3 MB) is larger than the 1 MB sample read first."""
    lines = simulate_transactions(n_customers=2000, seed=1).lines
    return gzip.compress(lines.to_csv(index=False).encode(), mtime=0)


def test_truncated_gzip_is_refused(big_gzip, tmp_path):
    # before: "Aborted." with exit 1 (an EOFError taken for Ctrl-D)
    for size in (40, len(big_gzip) // 2):
        path = tmp_path / f"cut{size}.csv.gz"
        path.write_bytes(big_gzip[:size])
        res = crmkit("validate", path, "--out", tmp_path / "out")
        assert_clean_exit_2(res, "rule 'readable_file'", "truncated gzip file")


def test_gzip_with_a_garbage_tail_is_refused(big_gzip, tmp_path):
    # before: a BadGzipFile traceback once the data ran past the 1 MB sample
    path = tmp_path / "tail.csv.gz"
    path.write_bytes(big_gzip + b"\x89garbage after the stream" * 10)
    res = crmkit("validate", path, "--out", tmp_path / "out")
    assert_clean_exit_2(res, "rule 'readable_file'", "not a valid gzip file")
    ok = tmp_path / "ok.csv.gz"
    ok.write_bytes(big_gzip)
    assert load_and_clean(ok, load_config(None)).report.totals["rows_in"] > 30_000


def _mount(target: Path, options: str) -> None:
    target.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    target = tmp_path / "small"
    _mount(target, "size=64k")
    yield target
    subprocess.run(["umount", str(target)], check=True)


@pytest.fixture
def read_only_disk(tmp_path):
    target = tmp_path / "ro"
    _mount(target, "size=1m,ro")
    yield target
    subprocess.run(["umount", str(target)], check=True)


def test_disk_full_while_writing_outputs(big_gzip, small_disk, tmp_path):
    # before: OSError [Errno 28] traceback from pyarrow
    data = tmp_path / "orders.csv.gz"
    data.write_bytes(big_gzip)
    res = crmkit("validate", data, "--out", small_disk / "out")
    assert_clean_exit_2(res, "[ENOSPC]", "No space left on device", "the disk is full")
    assert not (small_disk / "out").exists()


def test_read_only_out(read_only_disk, tmp_path):
    # before: OSError [Errno 30] traceback from mkdtemp
    data = write_csv(tmp_path / "o.csv", *GOOD_ROWS)
    for out in (read_only_disk / "out", read_only_disk):
        res = crmkit("validate", data, "--out", out)
        assert_clean_exit_2(res, "Read-only file system")


def test_config_that_is_not_utf8(tmp_path):
    # before: UnicodeDecodeError traceback
    data = write_csv(tmp_path / "o.csv", *GOOD_ROWS)
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"data:\n  sheet: Bestellungen M\xe4rz\n")
    res = crmkit("validate", data, "--out", tmp_path / "out", "--config", cfg)
    assert_clean_exit_2(res, "is not UTF-8 text", "line 2", "save the config as UTF-8")


def test_an_error_does_not_echo_a_50_mb_header(tmp_path):
    # before: the required_column error printed all 50,000,392 characters of the header
    data = tmp_path / "huge.csv"
    data.write_text("order_ts,quantity," + "Y" * 50_000_000 + "\n2023-01-01,2,3\n")
    res = crmkit("validate", data, "--out", tmp_path / "out")
    assert_clean_exit_2(res, "rule 'required_column'", "... (50,000,000 characters)")
    assert len(res.stderr) < 2000


def test_long_values_are_cut_in_every_error():
    assert shorten("x" * 201) == "x" * 200 + "... (201 characters)"
    assert shorten("x" * 200) == "x" * 200
    err = DataContractError("bad", column="c" * 300, rule="r", rows=[(1, "v" * 10_000)])
    text = str(err)
    assert "c" * 200 + "... (300 characters)" in text
    assert "(10,002 characters)" in text  # repr adds the quotes
    assert len(text) < 1000


def test_unrepresentable_years_are_dropped_by_the_widest_plausible_range():
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions

    frame = pd.DataFrame(
        [r.split(",") for r in [*GOOD_ROWS, "c3,o4,2300-01-01,p1,1,1", "c4,o5,0001-01-01,p1,1,1"]],
        columns=HEADER.split(","),
    )
    widest = {"plausible_from": "1678-01-02", "plausible_to": "2261-12-30"}
    res = clean_lines(load_transactions(frame), widest)
    assert res.lines["order_id"].tolist() == ["o1", "o2", "o3"]
    assert res.report.rule("implausible_timestamp")["rows_dropped"] == 2
    # the bounds themselves are where unrepresentable years are read: never plausible
    from crmkit.errors import ConfigError

    for key, bound in (("plausible_from", "1678-01-01"), ("plausible_to", "2261-12-31")):
        with pytest.raises(ConfigError, match=key):
            clean_lines(load_transactions(frame), {**widest, key: bound})
