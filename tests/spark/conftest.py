"""One local Spark session per test process, shared by every Spark test module.

Every Spark test module marks itself ``pytest.mark.xdist_group("spark")``: the Makefile runs
``pytest -n 2 --dist loadgroup``, which sends a group to one worker, so the JVM (~15-20 s to
start, ~1 GB) starts once, not once per worker."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def spark():
    if shutil.which("java") is None:
        pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime")
    from crmkit.spark import spark_session

    session = spark_session("local[2]", shuffle_partitions=1)
    session.conf.set("spark.sql.adaptive.enabled", "false")  # tiny data: fewer planning steps
    yield session
    session.stop()


def train_small_model(tmp_path, tracking_uri: str, *, customers: int, seed: int, **sections):
    """Train and register a small crmkit model on simulated orders written to
    ``tmp_path/orders.csv`` (few snapshots and trees: seconds, not minutes); ``sections``
    override config sections (e.g. ``registry={...}``). Returns the TrainResult."""
    from crmkit.data.simulate import simulate_transactions
    from crmkit.pipelines.config import load_config
    from crmkit.pipelines.train import run_train

    sim = simulate_transactions(n_customers=customers, seed=seed, acquisition_weeks=60)
    sim.lines.to_csv(tmp_path / "orders.csv", index=False)
    overrides = {
        "churn": {
            "n_snapshots": 4,
            "snapshot_every": 21,
            "shap_sample": 100,
            "lightgbm": {"n_estimators": 150, "early_stopping_rounds": 20},
        },
        "clv": {"n_draws": 0},
        "recommend": {"top_n": 5, "min_calibration_candidates": 100},
        **sections,
    }
    cfg = load_config(None, overrides=overrides)
    return run_train(tmp_path / "orders.csv", cfg, as_of="2023-06-30", tracking_uri=tracking_uri)
