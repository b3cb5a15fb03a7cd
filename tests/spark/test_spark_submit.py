"""The cluster how-to of ``docs/spark.md`` run for real: ``spark-submit`` (PySpark's own, in
local mode) runs ``pipelines/spark_job.py`` - the crmkit CLI as a Spark application - with
``MLFLOW_TRACKING_URI`` pointing at a real ``mlflow server`` process on 127.0.0.1 (the team's
tracking server): the model trained and registered there is loaded by the Spark job, its
scores equal the in-process Spark engine's, and the scoring run is recorded on the server.

In its own xdist group: spark-submit starts its own JVM, so it need not wait for the
``spark`` group's worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.spark.conftest import train_small_model

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark-submit"),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "pipelines" / "spark_job.py"
AS_OF = "2023-06-30"


def _spark_submit() -> str:
    exe = Path(sys.executable).parent / "spark-submit"
    return str(exe) if exe.exists() else (shutil.which("spark-submit") or "spark-submit")


def _submit(args: list[str], cwd: Path, tracking_uri: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, PYSPARK_PYTHON=sys.executable)
    env.pop("PYSPARK_GATEWAY_PORT", None)
    cmd = [
        _spark_submit(),
        "--master",
        "local[2]",
        "--conf",
        "spark.sql.shuffle.partitions=2",
        "--conf",
        "spark.driver.host=127.0.0.1",
        "--conf",
        "spark.ui.enabled=false",
        str(JOB),
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_spark_submit_job_scores_with_the_team_tracking_server(mlflow_server, tmp_path):
    if shutil.which("java") is None:
        pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime")
    train = train_small_model(
        tmp_path,
        mlflow_server,
        customers=500,
        seed=3,
        registry={"model_name": "spark-submit-scorer", "experiment": "spark-submit"},
    )
    assert train.promoted

    # validate locally, then the Spark job: features and score, the model from the server
    from typer.testing import CliRunner

    from crmkit.cli import app

    res = CliRunner().invoke(
        app, ["validate", str(tmp_path / "orders.csv"), "--out", str(tmp_path / "clean")]
    )
    assert res.exit_code == 0, res.output
    model = "models:/spark-submit-scorer@champion"
    got = _submit(
        [
            "score",
            "clean/lines.parquet",
            "--out",
            "scores",
            "--engine",
            "spark",
            "--as-of",
            AS_OF,
            "--model",
            model,
        ],
        tmp_path,
        mlflow_server,
    )
    assert got.returncode == 0, got.stderr[-3000:]
    assert "on Spark" in got.stdout
    customers = pd.read_parquet(tmp_path / "scores" / "customers.parquet")
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert summary["customers"] == len(customers) > 300
    assert summary["model"]["name"] == "spark-submit-scorer"
    assert summary["model"]["version"] == str(train.model_version)

    # the same scores as the local engine with the same model
    from crmkit.pipelines.score import run_score

    mlflow.set_tracking_uri(mlflow_server)
    local = run_score(
        tmp_path / "clean" / "lines.parquet",
        tmp_path / "local",
        model_uri=model,
        as_of=AS_OF,
        track=False,
    )
    want = local.output.customers
    assert customers["customer_id"].tolist() == want["customer_id"].tolist()
    assert customers["segment"].tolist() == want["segment"].astype(str).tolist()
    assert customers["next_best_action"].tolist() == want["next_best_action"].astype(str).tolist()
    assert (customers["clv"] - want["clv"]).abs().max() <= 1e-9 * max(1.0, want["clv"].abs().max())

    # the scoring run is on the team's server, FINISHED and tagged spark
    runs = mlflow.search_runs(
        experiment_names=["crmkit"], filter_string="tags.`crmkit.stage` = 'score'"
    )
    assert len(runs) == 1
    assert runs["status"].iloc[0] == "FINISHED"
    assert runs["tags.crmkit.engine"].iloc[0] == "spark"
    assert runs["metrics.customers"].iloc[0] == len(customers)

    # a crmkit error inside the Spark job: exit code 2 and the error in plain words
    bad = _submit(
        [
            "score",
            "clean/lines.parquet",
            "--out",
            "bad",
            "--engine",
            "spark",
            "--model",
            "models:/no-such-model@champion",
        ],
        tmp_path,
        mlflow_server,
    )
    assert bad.returncode == 2, bad.stderr[-2000:]
    # spark-submit's PythonRunner merges the Python driver's stderr into its stdout
    assert "error: the registry has no version of 'no-such-model'" in bad.stdout
    assert not (tmp_path / "bad").exists()
