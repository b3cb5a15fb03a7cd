"""``crmkit score --engine spark`` end to end: the same registered model scores the same
cleaned lines with the local and the Spark engine, and every output agrees - the customers
table (identical ids, segments, scores, risk bands, reasons, next best actions and action
products; numbers within 1e-9), the recommendation lists, the audiences and summary.json - and
the Spark run is recorded in MLflow with the local run's metrics.

Uses the session's ``spark`` fixture (tests/spark/conftest.py): the engine picks up the active
session, as under spark-submit."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from crmkit.cli import app
from crmkit.errors import DataContractError
from crmkit.pipelines.scorer import CUSTOMER_COLUMNS
from tests.spark.conftest import train_small_model

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

AS_OF = "2023-06-30"


def _same(local: pd.DataFrame, got: pd.DataFrame, what: str) -> None:
    assert list(got.columns) == list(local.columns), what
    assert len(got) == len(local), what
    for col in local.columns:
        want, have = local[col], got[col]
        if pd.api.types.is_float_dtype(want.dtype):
            w, h = want.to_numpy(np.float64), have.to_numpy(np.float64)
            assert np.array_equal(np.isnan(w), np.isnan(h)), (what, col)
            ok = ~np.isnan(w)
            tol = 1e-9 * np.maximum(1.0, np.abs(w[ok]))
            assert np.all(np.abs(w[ok] - h[ok]) <= tol), (what, col)
        else:
            w = want.astype(object).where(want.notna(), None).tolist()
            h = have.astype(object).where(have.notna(), None).tolist()
            assert w == h, (what, col)


def test_spark_score_equals_local_score(spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    train = train_small_model(tmp_path, store, customers=800, seed=5)
    assert train.promoted
    runner = CliRunner()
    res = runner.invoke(app, ["validate", "orders.csv", "--out", "clean"])
    assert res.exit_code == 0, res.output
    lines = "clean/lines.parquet"
    res = runner.invoke(app, ["score", lines, "--out", "local", "--as-of", AS_OF])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["score", lines, "--out", "spark", "--as-of", AS_OF, "--engine", "spark"]
    )
    assert res.exit_code == 0, res.output
    assert "on Spark" in res.output

    # customers: same columns, rows, labels and numbers
    local = pd.read_parquet(tmp_path / "local/customers.parquet")
    got = pd.read_parquet(tmp_path / "spark/customers.parquet")
    assert list(local.columns) == list(CUSTOMER_COLUMNS)
    assert len(local) > 500
    assert local["churn_probability"].notna().sum() > 100
    assert local["next_best_action"].nunique() >= 3
    _same(local, got, "customers")

    # recommendation lists
    lrec = pd.read_parquet(tmp_path / "local/recommendations.parquet")
    grec = pd.read_parquet(tmp_path / "spark/recommendations.parquet")
    assert len(lrec) > 1000
    _same(lrec, grec, "recommendations")

    # audiences, one list per action, same index (action values summed within 1e-9)
    lidx = json.loads((tmp_path / "local/audiences/index.json").read_text())
    gidx = json.loads((tmp_path / "spark/audiences/index.json").read_text())
    assert gidx["columns"] == lidx["columns"]
    assert list(gidx["actions"]) == list(lidx["actions"])
    assert sum(v["rows"] for v in lidx["actions"].values()) > 300
    for action, want_meta in lidx["actions"].items():
        have_meta = gidx["actions"][action]
        assert have_meta["rows"] == want_meta["rows"], action
        assert have_meta["total_action_value"] == pytest.approx(
            want_meta["total_action_value"], rel=1e-9
        )
        want = pd.read_parquet(tmp_path / "local/audiences" / want_meta["file"])
        have = pd.read_parquet(tmp_path / "spark/audiences" / have_meta["file"])
        _same(want, have, f"audience {action}")

    # summary.json: the same figures (sums within 1e-9)
    ls = json.loads((tmp_path / "local/summary.json").read_text())
    gs = json.loads((tmp_path / "spark/summary.json").read_text())
    for key in ("as_of", "customers", "segments", "next_best_action", "churn_high_risk"):
        assert gs[key] == ls[key], key
    for key in ("recommendations", "audiences", "model", "p_alive"):
        assert gs[key] == ls[key], key
    for key in ("clv_total", "clv_mean", "expected_purchases_total"):
        assert gs[key] == pytest.approx(ls[key], rel=1e-9), key

    # the MLflow run: FINISHED, tagged, the same metrics as the local run
    scoring = "tags.`crmkit.stage` = 'score'"
    runs = mlflow.search_runs(
        experiment_names=["crmkit"], filter_string=scoring, order_by=["attributes.start_time ASC"]
    )
    assert len(runs) == 2
    assert runs["status"].tolist() == ["FINISHED", "FINISHED"]
    assert runs["tags.crmkit.engine"].tolist()[1] == "spark"
    metric_cols = [c for c in runs.columns if c.startswith("metrics.")]
    for col in metric_cols:
        assert runs[col].iloc[1] == pytest.approx(runs[col].iloc[0], rel=1e-9), col

    # a failed Spark run: the error names the rule, no output folder, the MLflow run FAILED
    # (CliRunner calls the app without main(), which maps a CrmkitError to exit code 2)
    res = runner.invoke(
        app, ["score", lines, "--out", "bad", "--engine", "spark", "--format", "csv"]
    )
    assert isinstance(res.exception, DataContractError), res.output
    assert res.exception.rule == "format"
    res = runner.invoke(
        app, ["score", lines, "--out", "early", "--as-of", "2000-01-01", "--engine", "spark"]
    )
    assert isinstance(res.exception, DataContractError), res.output
    assert res.exception.rule == "empty_window"
    assert not (tmp_path / "early").exists()
    assert not list(tmp_path.glob(".early.staging-*"))
    failed = mlflow.search_runs(
        experiment_names=["crmkit"], filter_string=f"{scoring} and attributes.status = 'FAILED'"
    )
    assert len(failed) == 1
    assert failed["tags.crmkit.engine"].tolist() == ["spark"]
