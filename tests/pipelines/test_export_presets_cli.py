"""A Shopify export end to end through the command line (issue 15 §2): ``validate`` and
``train --preset shopify`` on the raw export, then ``score`` of the same raw export with no
flags - the column mapping and reading options travel with the registered model - and the
data-quality warnings at the end of each run, in its report and on its MLflow runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.data.shop_exports import order_statuses, retail_slice, write_shopify

CRMKIT = str(Path(sys.executable).with_name("crmkit"))
TRAIN_YAML = """\
churn:
  n_snapshots: 4
  snapshot_every: 14
  shap_sample: 100
  lightgbm: {n_estimators: 150, early_stopping_rounds: 20}
clv: {n_draws: 0}
recommend: {top_n: 5, min_calibration_candidates: 200}
"""


def _crmkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [CRMKIT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def shop(shared_data, tmp_path_factory):
    """A Shopify Orders export of one customer in eight of Online Retail's year (statuses:
    mostly paid, some refunded / pending / voided), and what the order_status rule removes."""
    root = tmp_path_factory.mktemp("shopify")
    lines = retail_slice(shared_data / "online_retail.parquet", "2010-12-01", "2011-12-10")
    lines = lines[lines["customer_id"].astype(int) % 8 == 0].reset_index(drop=True)
    status = order_statuses(lines["order_id"], seed=1)
    path = write_shopify(lines, root / "orders_export_1.csv", status=status)
    gone = lines["order_id"].map(status).isin({"refunded", "pending", "voided"})
    return root, path, lines, gone


def test_validate_prints_the_warning_last_and_writes_it(shop):
    root, path, lines, gone = shop
    res = _crmkit("validate", str(path), "--out", str(root / "v"), cwd=root)
    assert res.returncode == 0, res.stderr
    report = json.loads((root / "v" / "quality_report.json").read_text())
    rules = {r["rule"]: r for r in report["rules"]}
    assert rules["order_status"]["rows_dropped"] == int(gone.sum())
    assert report["totals"]["rows_out"] == int((~gone).sum())
    amount = (lines["quantity"] * lines["unit_price"])[~gone].sum()
    assert round(report["totals"]["revenue_out"], 2) == round(amount, 2)
    assert report["notes"][0] == "preset: shopify (recognised from the file's headers)"
    assert len(report["warnings"]) == 1 and report["warnings"][0].startswith(
        "rule order_status removed"
    )
    # printed at the very end of the run, after the summary
    assert res.stderr.rstrip().splitlines()[-1] == "warning: " + report["warnings"][0]


def test_train_with_preset_then_score_the_raw_export_with_no_flags(shop):
    import mlflow

    root, path, lines, gone = shop
    (root / "train.yaml").write_text(TRAIN_YAML)
    store = f"sqlite:///{root / 'mlflow.db'}"
    tr = _crmkit(
        "train",
        str(path),
        "--preset",
        "shopify",
        "--map",
        "Shipping Country=country",
        "--config",
        str(root / "train.yaml"),
        "--tracking-uri",
        store,
        cwd=root,
    )
    assert tr.returncode == 0, tr.stderr
    assert tr.stderr.rstrip().splitlines()[-1].startswith("warning: rule order_status removed")

    sc = _crmkit(
        "score", str(path), "--out", str(root / "scores"), "--tracking-uri", store, cwd=root
    )
    assert sc.returncode == 0, sc.stderr
    q = json.loads((root / "scores" / "quality_report.json").read_text())
    # the preset and the mapping given at training were used, not re-detected
    assert q["notes"][0] == "preset: shopify"
    assert "'Shipping Country' -> country" in q["notes"][3]
    assert q["totals"]["rows_out"] == int((~gone).sum())
    customers = pd.read_parquet(root / "scores" / "customers.parquet")
    kept = lines[~gone]
    assert set(customers["customer_id"]) <= set("customer" + kept["customer_id"] + "@example.com")
    assert sc.stderr.rstrip().splitlines()[-1].startswith("warning: rule order_status removed")

    # an explicit flag still overrides what the model brings
    sc2 = _crmkit(
        "score",
        str(path),
        "--out",
        str(root / "scores2"),
        "--map",
        "Billing Country=country",
        "--tracking-uri",
        store,
        cwd=root,
    )
    assert sc2.returncode == 0, sc2.stderr
    q2 = json.loads((root / "scores2" / "quality_report.json").read_text())
    assert "'Billing Country' -> country" in q2["notes"][3]
    assert "Shipping Country" not in q2["notes"][3]

    # the warning is a tag of the training and scoring runs, with the report as an artifact
    mlflow.set_tracking_uri(store)
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`crmkit.quality_warnings` = '1'",
    )
    stages = sorted(r.data.tags.get("crmkit.stage") for r in runs)
    assert stages == ["score", "score", "train", "validate"]
    for r in runs:
        assert r.data.tags["crmkit.quality_warning"].startswith("rule order_status removed")
        if r.data.tags["crmkit.stage"] != "validate":
            local = client.download_artifacts(r.info.run_id, "quality_report.json", str(root))
            assert json.loads(Path(local).read_text())["warnings"] == q["warnings"]


def test_score_config_keys_left_null_keep_the_models_reading_options():
    """pipelines/score.yaml spells every data: key as null: the model's options stay, and only
    a key given a value (a flag, a YAML value) replaces the model's."""
    from crmkit.pipelines.config import DataConfig, load_score_config
    from crmkit.pipelines.score import reading_options

    trained = DataConfig(preset="shopify", columns={"Shipping Country": "country"}, delimiter=";")
    repo_yaml = Path(__file__).resolve().parents[2] / "pipelines" / "score.yaml"
    assert reading_options(trained, load_score_config(repo_yaml)) == trained
    flags = load_score_config(repo_yaml, overrides={"data": {"delimiter": ",", "preset": None}})
    got = reading_options(trained, flags)
    assert (got.delimiter, got.preset, got.columns) == (",", "shopify", trained.columns)


def test_unknown_preset_exits_2_naming_the_rule(tmp_path):
    src = tmp_path / "orders.csv"
    src.write_text("customer_id,order_ts,amount\nc1,2023-01-01,5\n")
    res = _crmkit(
        "validate", str(src), "--out", str(tmp_path / "v"), "--preset", "bigcommerce", cwd=tmp_path
    )
    assert res.returncode == 2
    assert "rule 'preset'" in res.stderr and "shopify" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "v").exists()
