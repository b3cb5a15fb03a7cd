"""Every notebook in notebooks/ runs top to bottom on the sample data (executed with
nbclient in this environment's kernel); outputs are kept out of git.

The kernel reads a real MLflow store (``MLFLOW_TRACKING_URI``) holding one small
``crmkit train`` run, so the cells that read the latest run (notebooks 03 and 04) execute
for real and must show that run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from tests.test_faults import _restore_mlflow_state  # noqa: F401 - autouse: run_train's global state

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
#: notebooks with a cell reading the latest `train` run
READS_MLFLOW = {"03_clv_model_review.ipynb", "04_churn_model_review.ipynb"}


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    """One small, fast `crmkit train` run (1,000 simulated customers, short settings)."""
    from crmkit.data.simulate import simulate_transactions
    from crmkit.pipelines.train import run_train
    from tests.test_faults import _config as small_train_config

    root = tmp_path_factory.mktemp("nb-store")
    sim = simulate_transactions(n_customers=1000, seed=3, acquisition_weeks=60)
    data = root / "orders.parquet"
    sim.lines.to_parquet(data, index=False)
    cfg = small_train_config()  # the fault tests' short settings
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    res = run_train(data, cfg, as_of=str(sim.truth.params.cutoff), tracking_uri=uri)
    return SimpleNamespace(uri=uri, run_id=res.run_id)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2
    assert READS_MLFLOW <= {p.name for p in NOTEBOOKS}


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    data = output.get("data", {})
    return data.get("text/plain", "") + data.get("text/html", "")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped_and_runs(path: Path, tmp_path: Path, monkeypatch, train_store):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs in git"
    monkeypatch.chdir(tmp_path)  # any mlruns/ or out/ a notebook writes stays in tmp
    monkeypatch.setenv("MLFLOW_TRACKING_URI", train_store.uri)  # inherited by the kernel
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no plot"
    mlflow_cells = [c for c in code if "latest_train_run(" in c.source]
    assert bool(mlflow_cells) == (path.name in READS_MLFLOW)
    for cell in mlflow_cells:  # the cell found the run and showed its tables
        text = "".join(_text(o) for o in cell.outputs)
        assert train_store.run_id in text, text[:2000]
        assert "no finished `train` run" not in text
        assert sum(o.output_type == "display_data" for o in cell.outputs) >= 2
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory
