"""``crmkit validate --engine spark`` equals the local ``validate``: the same cleaned lines
(rows, order, columns, dtypes, values bit for bit, read back with pandas), the same quality
report (counts and customers identical, float sums within 1e-9), the same customer table from
``crmkit features --engine spark`` on either output, and the same error rules for bad input.
Data: the simulated sample (with its planted dirty lines and a few more) as CSV through the
CLI and as a directory of Parquet files with ``returns: net`` and ``as_of``, and the raw Online
Retail Parquet file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from crmkit.cli import app
from crmkit.data.clean import CleaningConfig
from crmkit.data.clean import clean_lines as local_clean
from crmkit.data.io import load_transactions
from crmkit.errors import DataContractError
from crmkit.pipelines.config import PipelineConfig
from crmkit.pipelines.validate import run_validate as local_validate
from tests.conftest import SHARED_DATA

if shutil.which("java") is None:
    pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime", allow_module_level=True)

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


def assert_same_report(got: dict, want: dict, case: str) -> None:
    """Equal reports: every field identical but the float sums, within 1e-9 (relative)."""
    assert got.keys() == want.keys(), case
    for key in ("source", "level", "notes", "config"):
        assert got[key] == want[key], (case, key)
    assert got["totals"].keys() == want["totals"].keys(), case
    for k, w in want["totals"].items():
        h = got["totals"][k]
        if isinstance(w, float):
            assert abs(h - w) <= 1e-9 * max(1.0, abs(w)), (case, k, h, w)
        else:
            assert h == w, (case, k, h, w)
    assert [r["rule"] for r in got["rules"]] == [r["rule"] for r in want["rules"]], case
    for g, w in zip(got["rules"], want["rules"], strict=True):
        for k, v in w.items():
            if k == "amount_dropped":
                assert abs(g[k] - v) <= 1e-9 * max(1.0, abs(v)), (case, w["rule"], g[k], v)
            else:
                assert g[k] == v, (case, w["rule"], k, g[k], v)


def assert_same_lines(got: pd.DataFrame, want: pd.DataFrame, case: str) -> None:
    assert list(got.columns) == list(want.columns), case
    assert got.dtypes.to_dict() == want.dtypes.to_dict(), case
    pd.testing.assert_frame_equal(got, want, check_exact=True, obj=case)


def dirty_sample(n_customers: int, seed: int) -> pd.DataFrame:
    """The simulator's lines (planted dirty rows included) plus the other rules' cases: a
    return, a gift voucher, a missing quantity and timestamp, ids padded with white space."""
    from crmkit.data.simulate import simulate_transactions

    raw = simulate_transactions(n_customers=n_customers, seed=seed).lines
    raw["quantity"] = raw["quantity"].astype("float64")
    extra = raw.iloc[[5, 50, 500, 700, 900]].copy()
    extra["order_id"] = extra["order_id"] + "R"
    extra.iloc[0, extra.columns.get_loc("quantity")] = -2.0  # return (no C prefix)
    extra.iloc[1, extra.columns.get_loc("product_id")] = "gift_0001_20"
    extra.iloc[2, extra.columns.get_loc("quantity")] = np.nan
    extra.iloc[3, extra.columns.get_loc("order_ts")] = pd.NaT
    extra.iloc[4, extra.columns.get_loc("customer_id")] = "  " + extra.iloc[4]["customer_id"]
    return pd.concat([raw.iloc[:300], extra, raw.iloc[300:]], ignore_index=True)


def test_spark_validate_equals_local(spark, tmp_path):
    from crmkit.spark.clean import _WS, clean_lines, read_raw, run_validate, write_lines
    from crmkit.spark.features import LINE_ORDER, read_lines

    assert set(_WS) == {chr(i) for i in range(0x110000) if chr(i).isspace()}
    runner = CliRunner()
    raw = dirty_sample(250, seed=11)

    # 1. the sample as a shop exports it (CSV), through the CLI: local vs spark, then features
    raw.to_csv(tmp_path / "orders.csv", index=False, date_format="%Y-%m-%d %H:%M:%S")
    outs = {}
    for engine in ("local", "spark"):
        outs[engine] = tmp_path / f"v_{engine}"
        args = ["validate", str(tmp_path / "orders.csv"), "--out", str(outs[engine])]
        res = runner.invoke(app, [*args, "--engine", engine])
        assert res.exit_code == 0, res.output
        assert "Data-quality report" in res.output
    want = pd.read_parquet(outs["local"] / "lines.parquet")
    assert (outs["spark"] / "lines.parquet").is_dir()
    assert_same_lines(pd.read_parquet(outs["spark"] / "lines.parquet"), want, "sample CSV")
    reports = {e: json.loads((outs[e] / "quality_report.json").read_text()) for e in outs}
    assert_same_report(reports["spark"], reports["local"], "sample CSV")
    dropped = {r["rule"]: r["rows_dropped"] for r in reports["local"]["rules"]}
    assert dropped["invalid_values"] == 2 and dropped["returns"] == 1
    planted = ("missing_customer_id", "cancellations", "non_positive_price", "exact_duplicates")
    assert min(dropped[r] for r in planted) >= 8 and dropped["non_product_lines"] >= 9
    assert any(c.startswith(" ") for c in raw["customer_id"].dropna())  # trimmed alike
    feats = {}
    for engine, out in outs.items():
        feats[engine] = tmp_path / f"f_{engine}"
        args = ["features", str(out / "lines.parquet"), "--engine", "spark", "--as-of"]
        res = runner.invoke(app, [*args, "2023-06-30", "--out", str(feats[engine])])
        assert res.exit_code == 0, res.output
    # the same Spark features on lines stored as one file or as a directory of part files:
    # Spark's sums over differently partitioned input may differ in the last bits, so floats
    # within 1e-12 (relative); ids, counts, scores and segments identical
    pd.testing.assert_frame_equal(
        pd.read_parquet(feats["spark"] / "customers.parquet"),
        pd.read_parquet(feats["local"] / "customers.parquet"),
        check_exact=False,
        rtol=1e-12,
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(feats["spark"] / "segments.csv"),
        pd.read_csv(feats["local"] / "segments.csv"),
        check_exact=False,
        rtol=1e-12,
    )

    # 2. a directory of Parquet files (read in path order), returns kept, an analysis date;
    #    the output written as 3 part files, read back exactly by read_lines
    parts = tmp_path / "raw_parts"
    parts.mkdir()
    cut = [0, 1200, 2500, len(raw)]
    for i in range(3):
        raw.iloc[cut[i] : cut[i + 1]].to_parquet(parts / f"p{i}.parquet", index=False)
    cfg = CleaningConfig(returns="net", as_of="2023-06-30")
    local = local_clean(load_transactions(raw), cfg)
    lines, report = clean_lines(read_raw(spark, parts), cfg, persist=True)
    assert write_lines(lines, tmp_path / "net", partitions=3) == len(local.lines)
    assert len(list((tmp_path / "net").glob("part-*.parquet"))) == 3
    assert_same_lines(pd.read_parquet(tmp_path / "net"), local.lines, "sample parquet net")
    assert (local.lines["quantity"] < 0).sum() >= 8
    want_report = local.report.to_dict() | {"source": str(parts)}
    assert_same_report(report.to_dict(), want_report, "sample parquet net")
    back = read_lines(spark, tmp_path / "net").orderBy(LINE_ORDER).select("order_ts")
    ns = np.array([r[0] for r in back.collect()], dtype="int64")
    assert np.array_equal(ns, local.lines["order_ts"].to_numpy().view("int64"))

    # 3. Online Retail as published (Parquet), through run_validate
    if not SHARED_DATA.is_dir():
        pytest.skip(f"Online Retail not found at {SHARED_DATA}; the sample data checks passed")
    path = SHARED_DATA / "online_retail.parquet"
    got = run_validate(path, tmp_path / "or_spark", PipelineConfig())
    loc = local_validate(path, tmp_path / "or_local", PipelineConfig())
    assert got.rows_out == len(loc.lines) == 391_153
    assert_same_lines(pd.read_parquet(got.lines_path), loc.lines, "Online Retail")
    assert_same_report(got.report.to_dict(), loc.report.to_dict(), "Online Retail")
    saved = json.loads((tmp_path / "or_spark" / "quality_report.json").read_text())
    assert saved == got.report.to_dict() | {"totals": saved["totals"]}


HEADER = "customer_id,order_id,order_ts,product_id,quantity,unit_price"
BAD = {
    "required_column": ["order_id,order_ts,product_id,quantity,unit_price", "o1,2023-01-05,p1,1,2"],
    "timestamp_format": [HEADER, "c1,o1,2023-01-05,p1,1,2", "c1,o2,yesterday,p1,1,2"],
    "ambiguous_date_format": [HEADER, "c1,o1,03/01/2023,p1,1,2", "c1,o2,04/02/2023,p1,1,2"],
    "mixed_timezones": [HEADER, "c1,o1,2023-01-05T10:00:00Z,p1,1,2", "c1,o2,2023-01-06,p1,1,2"],
    "numeric": [HEADER, "c1,o1,2023-01-05,p1,1,2", "c1,o2,2023-01-06,p1,one,2"],
    "no_rows_left": [HEADER, "c1,C1,2023-01-05,p1,-1,2", "c2,o2,2023-01-06,POST,1,2"],
    "header_row": ["c1,o1,2023-01-05,p1,1,2", "c1,o2,2023-01-06,p1,1,2"],
}


def test_bad_inputs_give_the_local_errors(spark, tmp_path):
    from crmkit.spark.clean import run_validate

    for rule, rows in BAD.items():
        path = tmp_path / f"{rule}.csv"
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        errors = []
        for engine, run in (("local", local_validate), ("spark", run_validate)):
            with pytest.raises(DataContractError) as err:
                run(path, tmp_path / f"out_{engine}_{rule}", PipelineConfig())
            errors.append(err.value)
            assert not (tmp_path / f"out_{engine}_{rule}").exists(), (rule, engine)
        assert errors[1].rule == errors[0].rule == rule, (rule, str(errors[1]))
        assert errors[1].column == errors[0].column, (rule, str(errors[1]))
    # a decimal comma is read, not refused, and says so as locally
    path = tmp_path / "comma.csv"
    path.write_text(
        "customer_id;order_id;order_ts;product_id;quantity;unit_price\n"
        "c1;o1;2023-01-05;p1;1;2,50\nc2;o2;2023-01-06;p1;2;€ 1.234,50\n",
        encoding="utf-8",
    )
    got = run_validate(path, tmp_path / "comma", PipelineConfig())
    loc = local_validate(path, tmp_path / "comma_local", PipelineConfig())
    assert_same_lines(pd.read_parquet(got.lines_path), loc.lines, "decimal comma")
    assert got.report.notes == loc.report.notes and "unit_price: read with decimal comma" in (
        got.report.notes
    )
    assert Path(got.lines_path).is_dir()
