"""The training job, the model registry and the batch-scoring entry point, end to end on real
MLflow stores (a local SQLite store, and a real ``mlflow server`` process on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmkit.data.simulate import simulate_transactions
from crmkit.errors import DataContractError
from crmkit.pipelines.config import load_config
from crmkit.pipelines.score import ModelLoadError, load_scorer, run_score, score_frame
from crmkit.pipelines.scorer import CUSTOMER_COLUMNS
from crmkit.pipelines.train import run_train

#: Every customer id of the training data starts with this: no artifact may contain it.
ID_PREFIX = "CUSTX-"

ACTIONS = {
    "win_back",
    "replenishment",
    "cross_sell",
    "up_sell",
    "loyalty_reward",
    "referral_ask",
    "none",
}


def _config(**extra):
    overrides = {
        "churn": {
            "n_snapshots": 6,
            "snapshot_every": 14,
            "shap_sample": 200,
            "lightgbm": {"n_estimators": 300, "early_stopping_rounds": 30},
        },
        "clv": {"n_draws": 0},
        "recommend": {"top_n": 5, "min_calibration_candidates": 200},
    }
    for k, v in extra.items():
        overrides.setdefault(k, {}).update(v)
    return load_config(None, overrides=overrides)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, str, pd.DataFrame]:
    sim = simulate_transactions(n_customers=1500, seed=11, acquisition_weeks=60)
    lines = sim.lines.copy()
    lines["customer_id"] = ID_PREFIX + lines["customer_id"].astype(str)
    path = tmp_path_factory.mktemp("train-data") / "orders.parquet"
    lines.to_parquet(path, index=False)
    return path, str(sim.truth.params.cutoff), lines


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("mlruns-local")
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained(sample, local_store):
    """Two trainings on the same data and seed in one local store."""
    path, as_of, _ = sample
    cfg = _config()
    first = run_train(path, cfg, as_of=as_of, tracking_uri=local_store)
    second = run_train(path, cfg, as_of=as_of, tracking_uri=local_store)
    return first, second


@pytest.fixture(scope="module")
def scored(trained, sample, local_store, tmp_path_factory):
    import mlflow

    path, as_of, _ = sample
    mlflow.set_tracking_uri(local_store)
    out = tmp_path_factory.mktemp("scores") / "out"
    res = run_score(path, out, as_of=as_of, config=_config())
    return res, out


def test_parent_run_with_nested_stage_runs_and_logged_input(trained, local_store):
    import mlflow

    first, _ = trained
    client = mlflow.MlflowClient(local_store)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    children = client.search_runs(
        [first.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{first.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == [
        "basket",
        "churn",
        "clv",
        "features",
        "validate",
    ]
    assert all(c.info.status == "FINISHED" for c in children)
    validate = next(c for c in children if c.info.run_name == "validate")
    inputs = validate.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest
    assert inputs[0].dataset.name == "orders.parquet"
    churn = next(c for c in children if c.info.run_name == "churn")
    assert 0.5 < churn.data.metrics["validation.lightgbm.roc_auc"] <= 1.0
    # the churn booster, logged with the lightgbm flavour and a numbers-only signature
    booster = mlflow.models.get_model_info(f"runs:/{churn.info.run_id}/model")
    assert "lightgbm" in booster.flavors
    assert "recency_days" in booster.signature.inputs.input_names()
    assert {c.type.name for c in booster.signature.inputs.inputs} <= {"double", "long"}
    assert run.data.params["as_of"] == first.as_of.strftime("%Y-%m-%d")
    for k in ("churn_roc_auc", "churn_pr_auc", "clv_purchases_neg_mae"):
        assert f"gate.challenger.{k}" in run.data.metrics


def test_registered_with_champion_alias_and_gate(trained, local_store):
    import mlflow

    first, second = trained
    client = mlflow.MlflowClient(local_store)
    assert (first.model_version, second.model_version) == ("1", "2")
    assert first.promoted and first.gate["decision"].startswith("no current champion")
    # Same data and seed: identical metrics, so the second version is "no worse" and wins.
    assert second.gate["champion_version"] == "1"
    assert second.gate["champion_metrics"] == pytest.approx(first.scorer.metrics, abs=1e-12)
    assert second.promoted
    mv = client.get_model_version_by_alias("crmkit-customer-scorer", "champion")
    assert str(mv.version) == "2"
    assert mv.tags["crmkit.gate"].startswith("no gate metric is worse")
    # A stricter gate on a worse challenger keeps the alias where it is.
    from crmkit.pipelines.train import _decide

    ok, rows, why = _decide(
        {"churn_roc_auc": 0.70}, {"churn_roc_auc": 0.71}, ["churn_roc_auc"], 0.0
    )
    assert not ok and rows[0]["verdict"] == "worse" and "churn_roc_auc" in why
    ok, _, _ = _decide({"churn_roc_auc": 0.705}, {"churn_roc_auc": 0.71}, ["churn_roc_auc"], 0.01)
    assert ok


def test_reproducible_training(trained):
    first, second = trained
    a, b = first.scorer, second.scorer
    assert a.clv == b.clv
    assert a.metrics == b.metrics
    assert first.gate["challenger_metrics"] == second.gate["challenger_metrics"]


def test_no_customer_id_in_any_artifact(trained, local_store, tmp_path):
    """Data protection: runs, nested runs and the registered model hold no customer id."""
    import mlflow

    first, _ = trained
    client = mlflow.MlflowClient(local_store)
    runs = client.search_runs([first.experiment_id])
    assert len(runs) >= 12
    scanned = 0
    for i, r in enumerate(runs):
        dest = tmp_path / f"run{i}"
        dest.mkdir()
        local = mlflow.artifacts.download_artifacts(
            run_id=r.info.run_id, dst_path=str(dest), tracking_uri=local_store
        )
        for f in Path(local).rglob("*"):
            if f.is_file():
                scanned += 1
                assert ID_PREFIX.encode() not in f.read_bytes(), f"customer id found in {f}"
        assert not any(ID_PREFIX in str(v) for v in r.data.params.values())
    model_dir = mlflow.artifacts.download_artifacts(
        artifact_uri="models:/crmkit-customer-scorer/1",
        dst_path=str(tmp_path / "model"),
        tracking_uri=local_store,
    )
    files = [f for f in Path(model_dir).rglob("*") if f.is_file()]
    assert any(f.name == "scorer.json" for f in files)
    for f in files:
        scanned += 1
        assert ID_PREFIX.encode() not in f.read_bytes(), f"customer id found in {f}"
    assert scanned > 30


def test_score_outputs(scored, sample):
    res, out = scored
    _, as_of, lines = sample
    customers = pd.read_parquet(out / "customers.parquet")
    assert list(customers.columns) == list(CUSTOMER_COLUMNS)
    upto = lines[lines["order_ts"] < pd.Timestamp(as_of) + pd.Timedelta(days=1)]
    assert customers["customer_id"].is_unique
    assert len(customers) == upto["customer_id"].nunique()
    assert set(customers["next_best_action"]) <= ACTIONS
    assert customers["next_best_action"].notna().all()
    once = customers["frequency"] == 0  # BG/NBD: P(alive) 1 by construction, reported missing
    assert customers.loc[~once, "p_alive"].between(0, 1).all()
    assert customers.loc[once, "p_alive"].isna().all() and once.any()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["p_alive"].startswith("probability that the customer is still active")
    said = summary["notes"]
    assert f"p_alive is missing for {int(once.sum()):,} one-time buyers" in " ".join(said)
    assert (customers["clv"] >= 0).all() and customers["clv"].sum() > 0
    assert customers["churn_probability"].between(0, 1).all()
    assert set(customers["churn_risk_band"]) <= {"low", "medium", "high"}
    assert customers[["r_score", "f_score", "m_score"]].stack().between(1, 5).all()
    recs = pd.read_parquet(out / "recommendations.parquet")
    assert {"customer_id", "rank", "product_id", "kind", "score", "reason"} <= set(recs.columns)
    assert len(recs) > 0 and set(recs["customer_id"]) <= set(customers["customer_id"])
    index = json.loads((out / "audiences" / "index.json").read_text())
    acted = customers[customers["next_best_action"] != "none"]
    counts = acted["next_best_action"].astype(str).value_counts()
    assert len(counts) >= 3
    for action, n in counts.items():
        aud = pd.read_parquet(out / "audiences" / f"{action}.parquet")
        assert len(aud) == n
        assert aud["action_value"].is_monotonic_decreasing
    assert sum(v for v in _counts(index).values()) == len(acted)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["customers"] == len(customers)
    assert summary["clv_total"] == pytest.approx(customers["clv"].sum())
    assert (out / "quality_report.json").is_file()


def _counts(index: dict) -> dict[str, int]:
    return {k: v["rows"] for k, v in index["actions"].items()}


def test_pyfunc_predict_equals_score(scored, sample, local_store):
    import mlflow

    res, _ = scored
    _, as_of, lines = sample
    mlflow.set_tracking_uri(local_store)
    model = mlflow.pyfunc.load_model("models:/crmkit-customer-scorer@champion")
    frame = lines.astype({"quantity": "float64", "unit_price": "float64"})
    got = model.predict(frame, params={"as_of": as_of})
    want = res.output.customers
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False
    )


def test_scoring_errors_are_clear(trained, sample, local_store, tmp_path):
    import mlflow

    path, as_of, lines = sample
    mlflow.set_tracking_uri(local_store)
    with pytest.raises(
        ModelLoadError, match="no version of 'crmkit-customer-scorer' with the alias 'gold'"
    ):
        load_scorer("models:/crmkit-customer-scorer@gold")
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        load_scorer("models:/no-such-model/1")
    scorer, _ = load_scorer("models:/crmkit-customer-scorer@champion")
    with pytest.raises(DataContractError, match="product_id"):
        score_frame(scorer, lines.drop(columns=["product_id"]), as_of)
    # A failed run leaves an earlier output folder untouched.
    out = tmp_path / "out"
    out.mkdir()
    (out / "customers.parquet").write_bytes(b"previous")
    bad = tmp_path / "bad.csv"
    bad.write_text("customer_id,order_ts\nx,2020-01-01\n")
    with pytest.raises(DataContractError):
        run_score(bad, out, as_of=as_of, config=_config(), track=False)
    assert (out / "customers.parquet").read_bytes() == b"previous"
    assert sorted(p.name for p in out.iterdir()) == ["customers.parquet"]


def test_train_against_a_real_mlflow_server(mlflow_server, sample, tmp_path):
    import mlflow

    path, as_of, _ = sample
    cfg = _config(registry={"experiment": "crmkit-server-test"})
    res = run_train(path, cfg, as_of=as_of, tracking_uri=mlflow_server)
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["gate.challenger.churn_roc_auc"] == pytest.approx(
        res.scorer.metrics["churn_roc_auc"]
    )
    mv = client.get_model_version_by_alias("crmkit-customer-scorer", "champion")
    assert str(mv.version) == res.model_version and mv.run_id == res.run_id
    mlflow.set_tracking_uri(mlflow_server)
    out = run_score(path, tmp_path / "scores", as_of=as_of, config=cfg)
    assert out.model["version"] == res.model_version
    assert len(out.output.customers) > 1000
    score_run = client.get_run(out.run_id)
    assert score_run.data.metrics["customers"] == len(out.output.customers)


@pytest.mark.skipif(os.environ.get("CRMKIT_SKIP_SERVE") == "1", reason="serve test disabled")
def test_rest_scoring_with_mlflow_models_serve(trained, scored, sample, local_store, tmp_path):
    """`mlflow models serve` on 127.0.0.1 answers with the same scores as `crmkit score`."""
    import sys
    import urllib.request

    from tests._procs import free_port, mlflow_exe, start_server, stop_server

    res, _ = scored
    _, as_of, lines = sample
    port = free_port()
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": local_store,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
    }
    cmd = [
        mlflow_exe(),
        "models",
        "serve",
        "-m",
        "models:/crmkit-customer-scorer@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    proc = start_server(cmd, f"{url}/ping", tmp_path / "serve.log", env=env)
    try:
        frame = lines.astype({"quantity": "float64", "unit_price": "float64"})
        frame["order_ts"] = frame["order_ts"].dt.strftime("%Y-%m-%dT%H:%M:%S")
        body = {
            "dataframe_split": json.loads(frame.to_json(orient="split", index=False)),
            "params": {"as_of": as_of},
        }
        req = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=300) as r:
            payload = json.loads(r.read())
        got = pd.DataFrame(payload["predictions"])
        want = res.output.customers
        assert list(got["customer_id"]) == list(want["customer_id"])
        for col in ("p_alive", "expected_purchases", "clv", "churn_probability"):
            np.testing.assert_allclose(
                got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-9
            )
        assert list(got["next_best_action"]) == list(want["next_best_action"])
        assert list(got["segment"]) == list(want["segment"])
    finally:
        stop_server(proc)


def test_shared_behaviour_features_give_the_churn_scores_of_a_fresh_computation(
    scored, sample, local_store
):
    """Batch scoring computes the behaviour features once for the customer table and the
    churn model: the same churn scores as the churn scorer on its own."""
    import mlflow

    from crmkit.data.clean import clean_lines

    mlflow.set_tracking_uri(local_store)
    res, _ = scored
    _, as_of, lines = sample
    scorer, _ = load_scorer("models:/crmkit-customer-scorer@champion")
    cleaned = clean_lines(lines, scorer.config.cleaning).lines
    alone = scorer.churn.score(cleaned, as_of)
    got = res.output.customers.set_index("customer_id").loc[alone.index]
    np.testing.assert_array_equal(got["churn_probability"], alone["churn_probability"])
    assert got["churn_reasons"].tolist() == alone["churn_reasons"].tolist()


def test_recommendations_in_a_second_process_are_identical(trained, sample):
    """Large inputs build the lists in a forked process while features and churn run: the
    outputs are the same as one process computes."""
    from crmkit.data.clean import clean_lines

    first, _ = trained
    _, as_of, lines = sample
    scorer = first.scorer
    cleaned = clean_lines(lines, scorer.config.cleaning).lines
    one = scorer.score(cleaned, as_of, parallel=False)
    two = scorer.score(cleaned, as_of, parallel=True)
    assert len(one.recommendations) > 1000
    pd.testing.assert_frame_equal(two.recommendations, one.recommendations)
    pd.testing.assert_frame_equal(two.customers, one.customers)


def _crmkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed ``crmkit`` entry point in a subprocess (as a user runs it)."""
    exe = Path(sys.executable).with_name("crmkit")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env
    )


def test_score_cli_rejects_text_in_a_numeric_column(trained, sample, local_store, tmp_path):
    """Input whose types do not match the model's: exit status 2 and a message naming the
    column and the row; nothing is written."""
    _, as_of, lines = sample
    few = lines[lines["customer_id"].isin(lines["customer_id"].unique()[:40])].copy()
    few["quantity"] = few["quantity"].astype(str)
    few.iloc[3, few.columns.get_loc("quantity")] = "two"
    src = tmp_path / "orders.csv"
    few.to_csv(src, index=False)
    out = tmp_path / "out"
    res = _crmkit("score", str(src), "--out", str(out), "--tracking-uri", local_store)
    assert res.returncode == 2, res.stderr
    assert "column 'quantity'" in res.stderr and "'two'" in res.stderr
    assert not out.exists()
    # the in-process (pyfunc / REST) path: the same rule
    scorer, _ = load_scorer(f"models:/crmkit-customer-scorer/{trained[1].model_version}")
    with pytest.raises(DataContractError, match="column 'quantity'"):
        score_frame(scorer, few, as_of)


def test_optional_columns_the_model_was_trained_with(scored, sample, local_store):
    """A column behind a churn feature (category: distinct categories bought) is required when
    the model was trained with it: a clear error naming it before any work. product_name
    (display only) may be left out: the model's catalogue has it - identical outputs and a
    note saying so."""
    import mlflow

    from crmkit.data.clean import clean_lines

    res, _ = scored
    _, as_of, lines = sample
    mlflow.set_tracking_uri(local_store)
    scorer, _ = load_scorer("models:/crmkit-customer-scorer@champion")
    assert {"category", "product_name"} <= set(scorer.input_columns)
    assert "category" in scorer.churn.required_columns()
    cleaned = clean_lines(lines, scorer.config.cleaning).lines
    with pytest.raises(DataContractError, match=r"lacks the column\(s\) \['category'\]") as e:
        scorer.score(cleaned.drop(columns=["category"]), as_of, parallel=False)
    assert e.value.column == "category"
    got = scorer.score(cleaned.drop(columns=["product_name"]), as_of, parallel=False)
    pd.testing.assert_frame_equal(got.customers, res.output.customers)
    pd.testing.assert_frame_equal(got.recommendations, res.output.recommendations)
    assert any("no product_name column" in n for n in got.notes)
    assert not any("product_name" in n for n in res.output.notes)


def test_score_cli_csv_outputs_equal_the_parquet_outputs(scored, sample, local_store, tmp_path):
    """`crmkit score --format csv` writes customers.csv, recommendations.csv and
    audiences/*.csv with the content of the Parquet run's files."""
    from typer.testing import CliRunner

    from crmkit.cli import app

    _, pq_out = scored
    path, as_of, _ = sample
    out = tmp_path / "csv"
    res = CliRunner().invoke(
        app,
        [
            "score",
            str(path),
            "--out",
            str(out),
            "--as-of",
            as_of,
            "--format",
            "csv",
            "--tracking-uri",
            local_store,
        ],
    )
    assert res.exit_code == 0, res.output
    assert not list(out.rglob("*.parquet"))

    def same(csv: Path, parquet: Path) -> int:
        want = pd.read_parquet(parquet)
        text = want.to_csv(index=False)  # the Parquet content, as CSV
        got = pd.read_csv(csv)
        pd.testing.assert_frame_equal(got, pd.read_csv(io.StringIO(text)))
        return len(got)

    assert same(out / "customers.csv", pq_out / "customers.parquet") > 1000
    assert same(out / "recommendations.csv", pq_out / "recommendations.parquet") > 1000
    csvs = sorted(p.stem for p in (out / "audiences").glob("*.csv"))
    assert csvs == sorted(p.stem for p in (pq_out / "audiences").glob("*.parquet"))
    assert len(csvs) >= 6
    rows = sum(
        same(out / "audiences" / f"{a}.csv", pq_out / "audiences" / f"{a}.parquet") for a in csvs
    )
    assert rows == int((pd.read_csv(out / "customers.csv")["next_best_action"] != "none").sum())
    index = json.loads((out / "audiences" / "index.json").read_text())
    want = json.loads((pq_out / "audiences" / "index.json").read_text())
    assert _counts(index) == _counts(want)


def test_a_worse_challenger_leaves_the_champion_alias_and_the_gate_is_logged(
    trained, sample, local_store, tmp_path
):
    """Against the real SQLite registry: a challenger made worse on purpose (a churn model of
    one split, without the BG/NBD features) is registered but does not get the alias; the decision and both sets of numbers are logged on its run and
    tagged on its version."""
    import mlflow

    _, second = trained
    path, as_of, _ = sample
    cfg = _config(
        churn={
            "n_snapshots": 3,
            "bgnbd_features": False,
            "bgnbd_prior": "never",
            "lightgbm": {"n_estimators": 1, "num_leaves": 2, "early_stopping_rounds": 1},
        },
    )
    res = run_train(path, cfg, as_of=as_of, tracking_uri=local_store)
    client = mlflow.MlflowClient(local_store)
    assert res.model_version == str(int(second.model_version) + 1)
    assert not res.promoted
    mv = client.get_model_version_by_alias("crmkit-customer-scorer", "champion")
    assert str(mv.version) == second.model_version
    g = res.gate
    assert g["champion_version"] == second.model_version
    worse = [r for r in g["comparison"] if r["verdict"] == "worse"]
    assert "churn_roc_auc" in [r["metric"] for r in worse]
    assert all(r["challenger"] < r["champion"] for r in worse)
    assert g["decision"].startswith("worse than the champion on " + worse[0]["metric"])
    assert g["champion_metrics"] == pytest.approx(second.scorer.metrics, abs=1e-12)
    # logged: gate.json, gate metrics, the version's tag
    run = client.get_run(res.run_id)
    assert run.data.metrics["gate.promoted"] == 0
    for r in g["comparison"]:
        m = r["metric"]
        assert run.data.metrics[f"gate.challenger.{m}"] == pytest.approx(r["challenger"])
        assert run.data.metrics[f"gate.champion.{m}"] == pytest.approx(r["champion"])
    local = mlflow.artifacts.download_artifacts(
        run_id=res.run_id,
        artifact_path="registry/gate.json",
        dst_path=str(tmp_path),
        tracking_uri=local_store,
    )
    logged = json.loads(Path(local).read_text())
    assert logged["promoted"] is False and logged["decision"] == g["decision"]
    tags = client.get_model_version("crmkit-customer-scorer", res.model_version).tags
    assert tags["crmkit.gate"] == g["decision"]


def test_recommendations_built_in_chunks_of_customers_are_identical(trained, sample, monkeypatch):
    """Large inputs build the lists a chunk of customers at a time (bounded memory): the same
    rows in the same order as in one piece - population-level quantities (product repurchase
    gaps, segments, the reactivation spend quantile) come from every customer."""
    import crmkit.models.recommend as rec
    from crmkit.data.clean import clean_lines

    first, _ = trained
    _, as_of, lines = sample
    scorer = first.scorer
    cleaned = clean_lines(lines, scorer.config.cleaning).lines
    scores = scorer.clv_scores(cleaned, pd.Timestamp(as_of))[["p_alive", "clv"]]
    one = scorer.recommender.recommend_for(cleaned, as_of, customer_scores=scores)
    monkeypatch.setattr(rec, "CHUNK_CUSTOMERS", 250)
    chunked = scorer.recommender.recommend_for(cleaned, as_of, customer_scores=scores)
    assert one["customer_id"].nunique() > 4 * 250
    pd.testing.assert_frame_equal(chunked, one)
    # streamed chunk by chunk to Parquet from the forked process: the same lists again
    streamed = scorer.score(cleaned, as_of, parallel=True).recommendations
    pd.testing.assert_frame_equal(streamed, one)
