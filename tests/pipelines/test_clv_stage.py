"""Tests of the clv stage (crmkit.pipelines.clv): the CDNOW acceptance figures through
run_clv, the written outputs, all-or-nothing writing, the config, model auto, and logging
into a real local MLflow store."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from crmkit.pipelines.clv import ClvConfig, backtest_cutoffs, log_clv_to_mlflow, run_clv

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cdnow_lines(shared_data) -> pd.DataFrame:
    """CDNOW is an order-level log (no products): CLV needs none."""
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions

    raw = load_transactions(
        shared_data / "cdnow" / "CDNOW_sample.txt",
        names=["customer_id", "sample_id", "order_ts", "quantity", "amount"],
    )
    lines = clean_lines(raw).lines
    assert "product_id" not in lines.columns
    return lines


@pytest.fixture(scope="module")
def cdnow_run(cdnow_lines, tmp_path_factory):
    out = tmp_path_factory.mktemp("clv") / "out"
    res = run_clv(
        cdnow_lines, "1997-09-30", out, ClvConfig(unit="W", n_draws=50), holdout_end="1998-06-30"
    )
    return res, out


@pytest.fixture(scope="module")
def sim_lines():
    from crmkit.data.clean import clean_lines
    from crmkit.data.simulate import simulate_transactions

    return clean_lines(simulate_transactions(n_customers=1500, seed=11).lines).lines


@pytest.mark.realdata
def test_cdnow_acceptance_params_json(cdnow_run):
    """params.json reproduces the published BG/NBD and Gamma-Gamma estimates (Fader, Hardie
    and Lee 2005; Fader and Hardie 2013) to 3 significant figures."""
    _, out = cdnow_run
    p = json.loads((out / "params.json").read_text())
    bg = p["bgnbd"]
    assert p["purchase_model"] == "bgnbd" and p["as_of"] == "1997-09-30" and p["unit"] == "W"
    for name, published in (("r", 0.243), ("alpha", 4.414), ("a", 0.793), ("b", 2.426)):
        assert float(f"{bg[name]:.3g}") == pytest.approx(float(f"{published:.3g}")), name
        lo, hi = (
            bg["confidence_intervals"][name]["lower"],
            bg["confidence_intervals"][name]["upper"],
        )
        assert lo < bg[name] < hi and bg["standard_errors"][name] > 0
    assert bg["log_likelihood"] == pytest.approx(-9582.43, abs=0.01)
    gg = p["gamma_gamma"]
    assert round(gg["p"], 2) == 6.25 and round(gg["q"], 2) == 3.74
    assert round(gg["gamma"], 2) == 15.44 and gg["v"] == gg["gamma"]
    assert gg["confidence_intervals"]["v"] == gg["confidence_intervals"]["gamma"]
    assert gg["log_likelihood"] == pytest.approx(-4055.92, abs=0.01)
    assert gg["n_customers"] == 946
    assert gg["population_mean_spend"] == pytest.approx(35.17, abs=0.01)
    assert p["convergence"]["bgnbd"]["success"] and p["convergence"]["gamma_gamma"]["success"]
    # no fit warning; the one note: BG/NBD's P(alive) of CDNOW's 1,411 one-time buyers is
    # 1 by construction and reported missing
    assert p["warnings"] == [
        "p_alive is missing for 1,411 one-time buyers: BG/NBD gives every one-time buyer "
        "P(alive) = 1 by construction (dropout only after a repeat purchase); use clv.model "
        "mbgnbd or pareto_nbd for a P(alive) of one-time buyers"
    ]
    assert p["clv"]["settings"]["unit_days"] == 7.0
    t = p["clv"]["totals"]
    assert t["clv_lower"] < t["clv"] < t["clv_upper"]
    assert p["holdout"]["holdout_end"] == "1998-06-30"
    assert p["holdout"]["diagnosis"][0].startswith("no problem found")


@pytest.mark.realdata
def test_cdnow_outputs(cdnow_run):
    res, out = cdnow_run
    names = sorted(f.name for f in out.iterdir())
    assert names == [
        "calibration_vs_holdout.png",
        "clv_deciles.png",
        "customers.parquet",
        "holdout_metrics.json",
        "p_alive.png",
        "params.json",
        "tracking_cumulative.png",
        "tracking_weekly.png",
    ]
    for n in names:
        if n.endswith(".png"):
            assert (out / n).read_bytes()[:8] == PNG
    assert not list(out.parent.glob(".out.staging-*"))

    c = pd.read_parquet(out / "customers.parquet")
    assert len(c) == 2357 and c["customer_id"].is_unique
    for col in (
        "p_alive",
        "expected_purchases",
        "expected_purchases_lower",
        "expected_purchases_upper",
        "next_purchase_date",
        "expected_spend",
        "clv",
        "clv_lower",
        "clv_upper",
    ):
        assert col in c.columns, col
    # BG/NBD's P(alive) of a one-time buyer is 1 by construction: reported missing
    once = c["frequency"] == 0
    assert c.loc[~once, "p_alive"].between(0, 1).all() and c.loc[once, "p_alive"].isna().all()
    assert (c["clv"] >= 0).all()
    assert (c["clv_lower"] <= c["clv"] + 1e-9).all() and (c["clv"] <= c["clv_upper"] + 1e-9).all()
    dates = c["next_purchase_date"].dropna()
    assert isinstance(dates.iloc[0], dt.date) and (dates > dt.date(1997, 9, 30)).all()
    # Customer 1 of the paper (x = 2, t_x = 30.43, T = 38.86): expected spend 24.65.
    first = c.set_index("customer_id").loc["00004"]
    assert first["expected_spend"] == pytest.approx(24.65, abs=0.01)
    # The paper's customer: 1.226 purchases in 39 weeks; over 12 months (52.2 weeks) more.
    assert 1.226 < first["expected_purchases"] < 1.7
    assert res.customers["clv"].sum() == pytest.approx(res.params["clv"]["totals"]["clv"])

    h = json.loads((out / "holdout_metrics.json").read_text())
    assert h["metrics"]["model"]["actual_total"] == 1882
    assert h["metrics"]["model"]["aggregate_error_pct"] == pytest.approx(-12.15, abs=0.05)
    assert h["calibration_end"] == "1997-09-30" and h["holdout_end"] == "1998-06-30"
    assert h["flags"]["degenerate_dropout"] is False


def test_all_or_nothing(sim_lines, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def boom(frame, path):
        raise OSError("disk full")

    monkeypatch.setattr("crmkit.pipelines.clv.write_parquet", boom)
    with pytest.raises(OSError, match="disk full"):
        run_clv(sim_lines, "2023-06-30", out, ClvConfig(n_draws=0))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not list(tmp_path.glob(".out.staging-*"))


def test_config_is_strict_and_frozen():
    cfg = ClvConfig()
    from crmkit.models.clv_value import MONTH_DAYS

    assert cfg.unit == "W" and cfg.model == "bgnbd" and cfg.period_days == MONTH_DAYS == 30.4375
    with pytest.raises(ValidationError):
        ClvConfig(modle="bgnbd")
    with pytest.raises(ValidationError):
        ClvConfig(model="nbd")
    with pytest.raises(ValidationError):
        ClvConfig(discount_rate=-0.1)
    with pytest.raises(ValidationError):
        ClvConfig(horizon_periods=0)
    with pytest.raises(ValidationError):
        cfg.model = "auto"


def test_auto_model_and_log_to_mlflow(sim_lines, tmp_path):
    """model auto runs the backtest on data before as_of only, then the result is logged to
    a real SQLite MLflow store and read back: parameters, intervals, metrics, JSON artifacts
    and plots - and no customer rows."""
    import mlflow
    from mlflow import MlflowClient

    from crmkit.tracking import configure, stage_run

    as_of = pd.Timestamp("2023-06-30")
    cuts = backtest_cutoffs(sim_lines, as_of, 91, 2)
    assert [str(c.date()) for c in cuts] == ["2022-12-30", "2023-03-31"]
    cfg = ClvConfig(model="auto", backtest_cutoffs=2, backtest_holdout_days=91, n_draws=20)
    res = run_clv(sim_lines, as_of, tmp_path / "out", cfg, holdout_end="2023-09-30")
    assert res.backtest is not None and res.model_name == res.backtest.best_model
    assert res.model_name in {"bgnbd", "mbgnbd", "pareto_nbd"}
    assert res.params["purchase_model"] == res.model_name and res.model_name in res.params
    assert (tmp_path / "out" / "backtest.json").is_file()
    assert res.warnings[0].startswith("model auto: champion:")
    assert res.backtest.scores["cutoff"].max() + pd.Timedelta(days=91) <= as_of

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configure(uri, experiment="clv-test")
    try:
        with pytest.raises(RuntimeError, match="active MLflow run"):
            log_clv_to_mlflow(res)
        with stage_run("clv") as run:
            log_clv_to_mlflow(res)
        client = MlflowClient(uri)
        got = client.get_run(run.info.run_id)
        assert got.info.status == "FINISHED"
        assert got.data.params["clv.model"] == "auto"
        assert got.data.params["clv.purchase_model"] == res.model_name
        metrics = got.data.metrics
        key = res.model_name
        first_param = list(res.purchase_model.params_.index)[0]
        assert metrics[f"clv.{key}.{first_param}"] == pytest.approx(
            float(res.purchase_model.params_.iloc[0])
        )
        assert f"clv.{key}.{first_param}_lower" in metrics
        assert f"clv.{key}.log_likelihood" in metrics
        assert metrics["clv.gamma_gamma.q"] == pytest.approx(float(res.spend_model.params_["q"]))
        assert metrics[f"clv.{key}.convergence.success"] == 1.0
        assert "clv.holdout.model.mae" in metrics and "clv.holdout.naive.mae" in metrics
        assert "clv.backtest.naive.mean_mae" in metrics
        assert "clv.totals.clv_upper" in metrics

        def walk(path=None):
            for f in client.list_artifacts(run.info.run_id, path):
                if f.is_dir:
                    yield from walk(f.path)
                else:
                    yield f.path

        arts = set(walk())
        assert {
            "clv/params.json",
            "clv/holdout_metrics.json",
            "clv/backtest.json",
            "clv/convergence.txt",
            "plots/clv_p_alive.png",
            "plots/clv_tracking_cumulative.png",
            "plots/clv_calibration_vs_holdout.png",
        } <= arts
        assert not any(a.endswith((".parquet", ".csv")) for a in arts)  # no customer rows
        local = client.download_artifacts(run.info.run_id, "clv/params.json", str(tmp_path))
        logged = json.loads(open(local).read())
        assert logged[key] == res.params[key]
        ids = set(res.customers["customer_id"].astype(str))
        text = (
            json.dumps(logged)
            + open(
                client.download_artifacts(
                    run.info.run_id, "clv/holdout_metrics.json", str(tmp_path)
                )
            ).read()
        )
        assert not any(f'"{i}"' in text for i in list(ids)[:200])
    finally:
        mlflow.set_tracking_uri(None)


def test_next_purchase_date_far_future_is_missing():
    from crmkit.pipelines.clv import _next_purchase_dates

    s = _next_purchase_dates(pd.Timestamp("2023-06-30"), np.array([0.4, 10.0, 1e9, np.inf]))
    assert s.iloc[0] == dt.date(2023, 6, 30) and s.iloc[1] == dt.date(2023, 7, 10)
    assert s.iloc[2] is None and s.iloc[3] is None
