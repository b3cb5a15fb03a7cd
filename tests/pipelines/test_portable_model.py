"""The registered model outside this checkout (issue 15, serving):

- it carries crmkit's own code (``code_paths``) and pinned requirements, so it loads and
  scores in a Python that cannot import crmkit from this checkout (``python -I -S`` in a
  temp folder: no site processing, so the editable install's finder, which maps ``crmkit`` to
  ``src/``, is not installed; only the plain site-packages folder is on ``sys.path``);
- the README's ``mlflow models serve`` command, taken from the README text and run as written
  (from the folder holding ``mlruns/``, the venv's ``bin/`` on PATH, another port), answers
  the documented JSON with the scores of ``crmkit score``;
- optional input columns are optional in the signature.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmkit.data.simulate import simulate_transactions
from crmkit.pipelines.train import run_train
from tests.test_faults import _config as small_config
from tests.test_faults import _restore_mlflow_state  # noqa: F401 - autouse

ROOT = Path(__file__).resolve().parents[2]
MODEL = "models:/crmkit-customer-scorer@champion"


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A project folder with its mlruns/ store holding one trained, registered model."""
    root = tmp_path_factory.mktemp("shop")
    sim = simulate_transactions(n_customers=800, seed=5, acquisition_weeks=60)
    data = root / "orders.parquet"
    sim.lines.to_parquet(data, index=False)
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    as_of = str(sim.truth.params.cutoff)
    res = run_train(data, small_config(), as_of=as_of, tracking_uri=uri)
    assert res.promoted
    from crmkit.pipelines.score import score_frame

    want = score_frame(res.scorer, sim.lines, as_of)
    return {"root": root, "uri": uri, "as_of": as_of, "lines": sim.lines, "want": want}


def _request_frame(lines: pd.DataFrame) -> dict:
    frame = lines.astype({"quantity": "float64", "unit_price": "float64"})
    frame["order_ts"] = frame["order_ts"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return json.loads(frame.to_json(orient="split", index=False))


_OUTSIDE = r"""
import importlib.util, json, sys
sys.path.append({site!r})
assert importlib.util.find_spec("crmkit") is None, "crmkit importable before loading"
assert not any({src!r} in p for p in sys.path), sys.path
import mlflow
import pandas as pd
mlflow.set_tracking_uri({uri!r})
model = mlflow.pyfunc.load_model({model!r})
import crmkit
frame = pd.DataFrame(**json.loads(open("request.json").read()))
frame["order_ts"] = pd.to_datetime(frame["order_ts"])
out = model.predict(frame, params={{"as_of": {as_of!r}}})
out.to_parquet("customers.parquet")
print(json.dumps({{"crmkit": crmkit.__file__, "path0": sys.path[0]}}))
"""


def test_the_registered_model_loads_and_scores_outside_the_checkout(shop, tmp_path):
    (tmp_path / "request.json").write_text(json.dumps(_request_frame(shop["lines"])))
    script = _OUTSIDE.format(
        site=sysconfig.get_paths()["purelib"],
        src=str(ROOT / "src"),
        uri=shop["uri"],
        model=MODEL,
        as_of=shop["as_of"],
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    # crmkit came from the model's own code folder, not from this checkout
    assert "/code/crmkit/" in info["crmkit"] and str(ROOT) not in info["crmkit"], info
    got = pd.read_parquet(tmp_path / "customers.parquet")
    want = shop["want"].customers
    assert got["customer_id"].tolist() == want["customer_id"].tolist()
    for col in ("expected_purchases", "clv", "churn_probability"):
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-9)
    assert (
        got["next_best_action"].astype(str).tolist()
        == want["next_best_action"].astype(str).tolist()
    )


def test_model_requirements_are_pinned_and_optional_columns_optional(shop):
    from importlib.metadata import version

    import mlflow

    mlflow.set_tracking_uri(shop["uri"])
    local = Path(mlflow.artifacts.download_artifacts(f"{MODEL}"))
    reqs = (local / "requirements.txt").read_text().split()
    pins = dict(r.split("==") for r in reqs if "==" in r)
    for pkg in ("mlflow", "pandas", "numpy", "scikit-learn", "lightgbm", "lifetimes", "pyarrow"):
        assert pins.get(pkg) == version(pkg), (pkg, reqs)
    assert not [r for r in reqs if "==" not in r and not r.startswith("-")], reqs
    assert (local / "code" / "crmkit" / "pipelines" / "scorer.py").is_file()
    info = mlflow.models.get_model_info(MODEL)
    required = {c.name for c in info.signature.inputs.inputs if c.required}
    optional = {c.name for c in info.signature.inputs.inputs if not c.required}
    assert required >= {"customer_id", "order_id", "order_ts", "product_id", "quantity"}
    assert {"amount", "product_name"} <= optional, optional


def _readme_serve_command() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"`(MLFLOW_TRACKING_URI=\S+\s+mlflow models serve[^`]*)`", text)
    assert m, "the README's mlflow models serve command"
    return " ".join(m.group(1).split())


@pytest.mark.skipif(os.environ.get("CRMKIT_SKIP_SERVE") == "1", reason="serve test disabled")
def test_readme_serve_command_works_as_written(shop, tmp_path):
    from tests._procs import free_port, start_server, stop_server

    cmd = _readme_serve_command()
    assert "-h 127.0.0.1" in cmd and "-p 5001" in cmd
    port = free_port()
    cmd = cmd.replace("-p 5001", f"-p {port}")
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    url = f"http://127.0.0.1:{port}"
    # from the project folder, as the README says ($PWD/mlruns/mlflow.db)
    proc = start_server(["bash", "-c", cmd], f"{url}/ping", tmp_path / "serve.log", env=env,
                        cwd=shop["root"])  # fmt: skip
    try:
        answers = {}
        for output in ("customers", "recommendations"):
            body = {
                "dataframe_split": _request_frame(shop["lines"]),
                "params": {"as_of": shop["as_of"], "output": output},
            }
            req = urllib.request.Request(
                f"{url}/invocations",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=300) as r:
                answers[output] = pd.DataFrame(json.loads(r.read())["predictions"])
    finally:
        stop_server(proc)
    want = shop["want"]
    got = answers["customers"]
    assert got["customer_id"].tolist() == want.customers["customer_id"].tolist()
    np.testing.assert_allclose(
        got["clv"].to_numpy(float), want.customers["clv"].to_numpy(float), rtol=1e-9
    )
    recs = answers["recommendations"]
    assert recs[["customer_id", "rank", "product_id"]].astype(str).values.tolist() == (
        want.recommendations[["customer_id", "rank", "product_id"]].astype(str).values.tolist()
    )
