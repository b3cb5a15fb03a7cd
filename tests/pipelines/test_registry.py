"""One champion per shop (issue 15): real trainings on two shops' data - the demo sample and a
slice of Online Retail - into one real MLflow SQLite store.

- each ``--project`` gets its own registered model and its own champion;
- a model trained on another shop's data under the same name is not gated against that
  shop's champion and is not promoted, and the decision says so;
- a gate metric that cannot be computed never promotes over a holder;
- the reason is tagged on the model version and on the training run.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from crmkit.data.simulate import simulate_transactions
from crmkit.pipelines.registry import decide, registered_model_name
from crmkit.pipelines.train import run_train
from tests.test_faults import _config as small_config
from tests.test_faults import _restore_mlflow_state  # noqa: F401 - autouse


def _cfg(project: str | None, **registry):
    cfg = small_config()
    reg = {"project": project, **registry}
    return cfg.model_copy(update={"registry": type(cfg.registry)(**reg)})


@pytest.fixture(scope="module")
def shops(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("shops")
    sim = simulate_transactions(n_customers=1500, seed=0, acquisition_weeks=75)
    demo = root / "demo_lines.parquet"
    sim.lines.to_parquet(demo, index=False)
    raw = pd.read_parquet(shared_data / "online_retail.parquet")
    ids = raw["CustomerID"].dropna().unique()
    keep = set(sorted(ids)[::4])  # every 4th customer: about 1,100 customers, the whole year
    retail = root / "online_retail_slice.parquet"
    raw[raw["CustomerID"].isin(keep)].to_parquet(retail, index=False)
    return {
        "demo": (demo, str(sim.truth.params.cutoff)),
        "retail": (retail, "2011-12-09"),
        "store": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
    }


@pytest.fixture(scope="module")
def runs(shops):
    """demo (project demo); retail under project demo (wrong shop); retail (project retail);
    demo again with a CLV holdout longer than the data (its gate metric cannot be computed)."""
    store = shops["store"]
    out = {}
    out["demo"] = run_train(
        shops["demo"][0], _cfg("demo"), as_of=shops["demo"][1], tracking_uri=store
    )
    out["retail_in_demo"] = run_train(
        shops["retail"][0], _cfg("demo"), as_of=shops["retail"][1], tracking_uri=store
    )
    out["retail"] = run_train(
        shops["retail"][0], _cfg("retail"), as_of=shops["retail"][1], tracking_uri=store
    )
    out["demo_nan"] = run_train(
        shops["demo"][0],
        _cfg("demo", holdout_days=3000),
        as_of=shops["demo"][1],
        tracking_uri=store,
    )
    return out


def _client(shops):
    import mlflow

    return mlflow.MlflowClient(shops["store"])


def test_each_project_has_its_own_registered_model_and_champion(shops, runs):
    client = _client(shops)
    assert runs["demo"].model_name == "crmkit-demo" and runs["demo"].model_version == "1"
    assert runs["retail"].model_name == "crmkit-retail" and runs["retail"].model_version == "1"
    assert runs["demo"].promoted and runs["retail"].promoted
    demo = client.get_model_version_by_alias("crmkit-demo", "champion")
    retail = client.get_model_version_by_alias("crmkit-retail", "champion")
    # neither run moved the other's alias
    assert (str(demo.version), str(retail.version)) == ("1", "1")
    assert demo.tags["crmkit.project"] == "demo" and retail.tags["crmkit.project"] == "retail"
    assert demo.tags["crmkit.data.source"] == "demo_lines.parquet"
    assert retail.tags["crmkit.data.source"] == "online_retail_slice.parquet"
    assert int(retail.tags["crmkit.data.products"]) > 1000


def test_another_shops_data_is_not_gated_against_the_champion(shops, runs):
    """Online Retail trained under the demo project: registered as crmkit-demo version 2, not
    compared with (and not promoted over) the demo shop's champion, and it says why."""
    res = runs["retail_in_demo"]
    client = _client(shops)
    assert res.model_name == "crmkit-demo" and res.model_version == "2"
    assert not res.promoted
    g = res.gate
    assert g["comparable"] is False and g["champion_metrics"] is None and g["comparison"] == []
    assert "not a comparable holder" in g["decision"]
    assert "trained on another data source: 0 of its" in g["decision"]
    assert "--project" in g["decision"]
    assert str(client.get_model_version_by_alias("crmkit-demo", "champion").version) == "1"
    mv = client.get_model_version("crmkit-demo", "2")
    assert mv.tags["crmkit.gate"] == g["decision"]
    assert client.get_run(res.run_id).data.tags["crmkit.gate"] == g["decision"]
    print("decision:", g["decision"])


def test_a_metric_that_cannot_be_computed_does_not_promote_over_a_holder(shops, runs):
    """A CLV holdout of 3,000 days (longer than the data): clv_purchases_neg_mae cannot be
    computed for either model - before, such a metric was skipped ("n/a") and the version was
    promoted on the others; now it is not promoted and the reason names the metric."""
    res = runs["demo_nan"]
    client = _client(shops)
    assert res.model_version == "3" and not res.promoted
    assert "clv_purchases_neg_mae" not in res.gate["challenger_metrics"]
    assert "churn_roc_auc" in res.gate["challenger_metrics"]
    assert res.gate["comparable"] is True
    d = res.gate["decision"]
    assert d.startswith("gate metric(s) could not be computed: clv_purchases_neg_mae")
    assert "not promoted over the champion (version 1)" in d
    assert str(client.get_model_version_by_alias("crmkit-demo", "champion").version) == "1"
    assert client.get_model_version("crmkit-demo", "3").tags["crmkit.gate"] == d
    assert client.get_run(res.run_id).data.tags["crmkit.gate"] == d
    # the first version of each project says why it was promoted, on the version and the run
    for r in (runs["demo"], runs["retail"]):
        why = client.get_model_version(r.model_name, r.model_version).tags["crmkit.gate"]
        assert why.startswith("no current champion: the new version becomes the champion")
        assert client.get_run(r.run_id).data.tags["crmkit.gate"] == why


@pytest.mark.parametrize(
    ("challenger", "champion", "promoted", "text"),
    [
        ({"a": 0.8, "b": math.nan}, {"a": 0.7, "b": 0.5}, False, "b (new version nan)"),
        ({"a": 0.8, "b": 0.6}, {"a": 0.7, "b": math.nan}, False, "b (champion nan)"),
        ({"a": 0.8}, {"a": 0.7, "b": 0.5}, False, "b (new version missing)"),
        ({"a": 0.8, "b": 0.6}, {"a": 0.7, "b": 0.5}, True, "no gate metric is worse"),
        ({"a": 0.8, "b": math.nan}, None, True, "b could not be computed on this data"),
    ],
)
def test_decide_never_promotes_on_a_nan_metric_over_a_holder(challenger, champion, promoted, text):
    ok, _, why = decide(challenger, champion, ["a", "b"], 0.0, holder="the champion (version 4)")
    assert ok is promoted and text in why


def test_model_name_from_the_project():
    assert registered_model_name(None) == "crmkit-customer-scorer"
    assert registered_model_name("acme") == "crmkit-acme"
    assert registered_model_name("acme", "custom") == "custom"


def test_score_cli_project_scores_with_that_shops_champion(shops, runs, tmp_path):
    """`crmkit score --project demo` uses crmkit-demo@champion (version 1, not the retail
    shop's model nor the demo project's unpromoted versions); a bad name is exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    crmkit = str(Path(sys.executable).with_name("crmkit"))
    data, as_of = shops["demo"]
    args = [crmkit, "score", str(data), "--as-of", as_of, "--tracking-uri", shops["store"]]
    run = subprocess.run(
        [*args, "--project", "demo", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "with models:/crmkit-demo@champion (version 1)" in run.stdout, run.stdout[-2000:]
    bad = subprocess.run(
        [*args, "--project", "two words", "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "registry.project" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr
