"""The crmkit command line, run as a user runs it (a real subprocess for the entry point)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from crmkit.cli import app

runner = CliRunner()

CANON = (
    "customer_id,order_id,order_ts,product_id,quantity,unit_price\n"
    "c1,o1,2023-01-05 10:00:00,p1,2,3.50\n"
    "c1,o1,2023-01-05 10:00:00,p1,2,3.50\n"
    ",o2,2023-01-06 10:00:00,p1,1,3.50\n"
    "c2,C3,2023-02-01 12:30:00,p1,-1,3.50\n"
    "c2,o4,2023-02-01 12:30:00,POST,1,2.00\n"
    "c2,o5,2023-03-01 12:30:00,p2,1,9.00\n"
)


def _crmkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    import os

    exe = Path(sys.executable).with_name("crmkit")
    # mlflow.set_tracking_uri (other tests in this worker) exports MLFLOW_TRACKING_URI: a user's
    # shell has no such leftover, so the subprocess gets the default ./mlruns store.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env
    )


def test_help_everywhere():
    for args in (
        [],
        ["simulate"],
        ["validate"],
        ["features"],
        ["churn"],
        ["train"],
        ["score"],
        ["demo"],
    ):
        res = runner.invoke(app, [*args, "--help"])
        assert res.exit_code == 0, res.output
        assert "Usage" in res.output


def test_validate_writes_lines_and_report(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(CANON)
    out = tmp_path / "out"
    res = _crmkit("validate", str(src), "--out", str(out), "--as-of", "2023-02-15")
    assert res.returncode == 0, res.stderr
    assert "exact_duplicates" in res.stdout and "after_analysis_date" in res.stdout
    lines = pd.read_parquet(out / "lines.parquet")
    assert lines["amount"].tolist() == [7.0]
    rep = json.loads((out / "quality_report.json").read_text())
    dropped = {r["rule"]: r["rows_dropped"] for r in rep["rules"]}
    assert dropped == {
        "invalid_values": 0,
        "implausible_timestamp": 0,
        "missing_customer_id": 1,
        "cancellations": 1,
        "returns": 0,
        "non_positive_price": 0,
        "non_product_lines": 1,
        "exact_duplicates": 1,
        "after_analysis_date": 1,
    }
    assert sorted(p.name for p in out.iterdir()) == ["lines.parquet", "quality_report.json"]
    assert not list(tmp_path.glob(".out.staging-*"))


def test_validate_failure_leaves_no_output(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text(CANON.replace("2023-03-01 12:30:00", "not a date"))
    out = tmp_path / "out"
    res = _crmkit("validate", str(src), "--out", str(out))
    assert res.returncode == 2
    assert "error: [rule 'timestamp_format', column 'order_ts']" in res.stderr
    assert "row 6: 'not a date'" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out.staging-*"))


def test_validate_failure_keeps_previous_outputs(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(CANON)
    out = tmp_path / "out"
    assert runner.invoke(app, ["validate", str(src), "--out", str(out)]).exit_code == 0
    before = (out / "lines.parquet").read_bytes()
    src.write_text("customer_id,order_ts\n")
    res = _crmkit("validate", str(src), "--out", str(out))
    assert res.returncode == 2 and "empty_file" in res.stderr
    assert (out / "lines.parquet").read_bytes() == before


def test_validate_flags_map_names_and_config(tmp_path):
    src = tmp_path / "de.csv"
    src.write_text("Kunde;Datum;Betrag\nk1;03/01/2023;9,50\nk1;04/01/2023;1,00\n")
    out = tmp_path / "o"
    res = _crmkit(
        "validate",
        str(src),
        "--out",
        str(out),
        "--map",
        "Kunde=customer_id",
        "--map",
        "Datum=order_ts",
        "--map",
        "Betrag=amount",
        "--date-format",
        "%d/%m/%Y",
    )
    assert res.returncode == 0, res.stderr
    lines = pd.read_parquet(out / "lines.parquet")
    assert lines["order_ts"].tolist() == [pd.Timestamp("2023-01-03"), pd.Timestamp("2023-01-04")]
    assert lines["amount"].tolist() == [9.5, 1.0]

    cfg = tmp_path / "c.yaml"
    cfg.write_text("cleaning:\n  returns: refund\n")
    res = _crmkit("validate", str(src), "--out", str(tmp_path / "o2"), "--config", str(cfg))
    assert res.returncode == 2
    assert "cleaning.returns" in res.stderr


def test_repo_config_files_load_and_document_the_defaults():
    """pipelines/train.yaml and pipelines/score.yaml load, and the values they show are the
    defaults (so the reference cannot drift from the code)."""
    from crmkit.pipelines.config import load_config, load_score_config

    root = Path(__file__).resolve().parents[1]
    train = load_config(root / "pipelines" / "train.yaml")
    assert train == load_config(None)
    assert train.cleaning.returns == "drop" and "POST" in train.cleaning.non_product_codes
    assert train.churn.window_days == 90 and train.registry.gate_metrics[0] == "churn_roc_auc"
    score = load_score_config(root / "pipelines" / "score.yaml")
    assert score == load_score_config(None)
    assert score.score.model == "models:/crmkit-customer-scorer@champion"
    assert score.score.format == "parquet"


@pytest.mark.parametrize(
    ("kind", "text", "named"),
    [
        ("train", "churn:\n  windw_days: 60\n", "churn.windw_days"),
        ("train", "churn:\n  window_days: soon\n", "churn.window_days"),
        ("train", "clv:\n  model: gompertz\n", "clv.model"),
        ("train", "registry:\n  gate_metrics: [accuracy]\n", "registry.gate_metrics"),
        ("train", "trainer:\n  epochs: 3\n", "trainer"),
        ("score", "score:\n  fromat: csv\n", "score.fromat"),
        ("score", "score:\n  format: xlsx\n", "score.format"),
        ("score", "data:\n  columns: [a, b]\n", "data.columns"),
        ("score", "churn:\n  window_days: 60\n", "churn"),
    ],
)
def test_bad_config_key_or_value_is_a_clear_error(tmp_path, kind, text, named):
    from crmkit.errors import ConfigError
    from crmkit.pipelines.config import load_config, load_score_config

    f = tmp_path / f"{kind}.yaml"
    f.write_text(text)
    load = load_config if kind == "train" else load_score_config
    with pytest.raises(ConfigError, match=f"invalid configuration in {f}") as err:
        load(f)
    assert named in str(err.value)
    if named == "churn" and kind == "score":
        assert "pipelines/train.yaml" in str(err.value)


def test_score_command_rejects_a_bad_config_before_loading_a_model(tmp_path):
    cfg = tmp_path / "score.yaml"
    cfg.write_text("score:\n  format: xlsx\n")
    src = tmp_path / "in.csv"
    src.write_text(CANON)
    res = _crmkit("score", str(src), "--out", str(tmp_path / "o"), "--config", str(cfg))
    assert res.returncode == 2
    assert "score.format" in res.stderr and "'parquet' or 'csv'" in res.stderr
    assert not (tmp_path / "o").exists()


def test_simulate_command(tmp_path):
    out = tmp_path / "sim"
    res = runner.invoke(app, ["simulate", "--customers", "300", "--seed", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = pd.read_parquet(out / "lines.parquet")
    truth = json.loads((out / "truth.json").read_text())
    assert len(lines) > 300
    assert truth["params"]["n_customers"] == 300
    assert (out / "truth_customers.parquet").exists()


@pytest.mark.slow
def test_demo_runs_train_and_score_end_to_end(tmp_path):
    res = _crmkit("demo", "--out", "demo", "--customers", "1000", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Data-quality report" in res.stdout
    assert "Segments at 2023-06-30 (1,000 customers)" in res.stdout
    assert "champions" in res.stdout
    assert "gate: no current champion" in res.stdout
    assert "scored 1,000 customers at 2023-06-30" in res.stdout
    scores = tmp_path / "demo" / "scores"
    customers = pd.read_parquet(scores / "customers.parquet")
    assert len(customers) == 1000 and customers["next_best_action"].notna().all()
    assert (scores / "recommendations.parquet").exists()
    assert (scores / "audiences" / "index.json").exists()
    assert (tmp_path / "mlruns" / "mlflow.db").exists()
    assert "mlflow ui --backend-store-uri sqlite:///" in res.stdout


def test_features_command(tmp_path):
    from crmkit.data.simulate import simulate_transactions

    src = tmp_path / "lines.parquet"
    simulate_transactions(n_customers=400, seed=2).lines.to_parquet(src)
    out = tmp_path / "feat"
    res = runner.invoke(
        app, ["features", str(src), "--as-of", "2023-03-31", "--unit", "W", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "Segments at 2023-03-31 (400 customers)" in res.output
    cust = pd.read_parquet(out / "customers.parquet")
    assert len(cust) == 400 and cust["customer_id"].is_unique
    for col in [
        "customer_id",
        "frequency",
        "recency",
        "T",
        "monetary_value",
        "r_score",
        "f_score",
        "m_score",
        "segment",
        "recency_days",
        "spend_90d",
        "gap_mean_days",
    ]:
        assert col in cust.columns, col
    assert cust["T"].max() <= (pd.Timestamp("2023-03-31") - pd.Timestamp("2022-01-01")).days / 7
    kpis = json.loads((out / "kpis.json").read_text())
    assert kpis["unit"] == "W" and kpis["retention"]["customers"] == 400
    assert sum(s["customers"] for s in kpis["segments"]) == 400
    assert (out / "cohort_heatmap.png").stat().st_size > 10_000
    cohorts = pd.read_parquet(out / "cohorts.parquet")
    assert "cohort_size" in cohorts.columns


def test_clv_command_reproduces_the_paper_on_cdnow(shared_data, tmp_path):
    out = tmp_path / "clv"
    res = runner.invoke(
        app,
        [
            "clv",
            str(shared_data / "cdnow" / "CDNOW_sample.txt"),
            "--names",
            "customer_id,sample_id,order_ts,quantity,amount",
            "--as-of",
            "1997-09-30",
            "--unit",
            "W",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    p = json.loads((out / "params.json").read_text())
    bg, gg = p["bgnbd"], p["gamma_gamma"]
    assert [round(bg[k], 3) for k in ("r", "alpha", "a", "b")] == [0.243, 4.414, 0.793, 2.426]
    assert round(bg["log_likelihood"], 1) == -9582.4
    assert [round(gg[k], 2) for k in ("p", "q", "v")] == [6.25, 3.74, 15.44]
    cust = pd.read_parquet(out / "customers.parquet")
    assert len(cust) == 2357
    assert {"customer_id", "p_alive", "clv", "next_purchase_date"} <= set(cust.columns)


def test_basket_command_on_groceries(shared_data, tmp_path):
    out = tmp_path / "b"
    res = runner.invoke(
        app,
        [
            "basket",
            str(shared_data / "groceries.csv"),
            "--baskets",
            "--min-support",
            "0.001",
            "--min-confidence",
            "0.5",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_rules"] == 5668
    assert len(pd.read_parquet(out / "rules.parquet")) == 5668


def test_recommend_command(tmp_path):
    from crmkit.data.simulate import simulate_transactions

    src = tmp_path / "lines.parquet"
    simulate_transactions(n_customers=600, seed=4).lines.to_parquet(src)
    out = tmp_path / "rec"
    res = runner.invoke(
        app,
        [
            "recommend",
            str(src),
            "--as-of",
            "2023-06-30",
            "--top-n",
            "5",
            "--holdout-end",
            "2023-09-30",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    recs = pd.read_parquet(out / "recommendations.parquet")
    assert list(recs.columns) == ["customer_id", "rank", "product_id", "kind", "score", "reason"]
    assert recs.groupby("customer_id")["rank"].max().max() <= 5
    assert not recs.duplicated(["customer_id", "product_id"]).any()
    assert (out / "metrics.json").exists()


def test_churn_command_writes_metrics_for_the_model_and_every_baseline(tmp_path):
    from crmkit.data.simulate import simulate_transactions

    src = tmp_path / "lines.parquet"
    simulate_transactions(n_customers=1500, seed=4, acquisition_weeks=60).lines.to_parquet(src)
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(
        "churn:\n  n_snapshots: 4\n  snapshot_every: 14\n  shap_sample: 100\n"
        "  lightgbm: {n_estimators: 200, early_stopping_rounds: 20}\n"
    )
    out = tmp_path / "churn"
    res = runner.invoke(
        app,
        [
            "churn",
            str(src),
            "--as-of",
            "2023-03-31",
            "--window-days",
            "60",
            "--config",
            str(cfg),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    for name in ("lightgbm", "recency_rule", "rfm_score", "bgnbd_p_alive"):
        for key in ("roc_auc", "pr_auc", "brier", "log_loss", "top_decile_lift"):
            assert 0 < m[name][key] < 10, (name, key)
    assert m["lightgbm"]["roc_auc"] > m["recency_rule"]["roc_auc"]
    assert m["lightgbm"]["roc_auc"] > 0.75
    customers = pd.read_parquet(out / "customers.parquet")
    assert customers["churn_probability"].between(0, 1).all()
    assert set(customers["risk_band"].astype(str)) <= {"low", "medium", "high"}
    assert "test cutoff 2023-03-31 (window 60 days)" in res.output
    # a cutoff whose label window is not in the data: scored, no metrics, and it says so
    res = runner.invoke(
        app,
        [
            "churn",
            str(src),
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / "late"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "no test metrics at " in res.output and "customers are scored" in res.output
    assert json.loads((tmp_path / "late" / "metrics.json").read_text())["metrics"] is None
    assert len(pd.read_parquet(tmp_path / "late" / "customers.parquet")) > 1000
