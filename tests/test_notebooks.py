"""Every notebook in notebooks/ runs top to bottom on the sample data (executed with
nbclient in this environment's kernel) with the working directory Jupyter gives it, the
``notebooks/`` folder; outputs are kept out of git and nothing is written there.

The kernel reads a real MLflow store holding one small ``crmkit train`` run, so the cells
that read the latest run (notebooks 03 and 04) execute for real and must show that run: its
id, when it finished and the store. The store is named by ``MLFLOW_TRACKING_URI``, or - as
in a fresh clone after ``make demo`` - found as the project's ``mlruns/`` from
``notebooks/``."""

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
    return SimpleNamespace(uri=uri, run_id=res.run_id, root=root)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2
    assert READS_MLFLOW <= {p.name for p in NOTEBOOKS}


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    data = output.get("data", {})
    return data.get("text/plain", "") + data.get("text/html", "")


def _execute(nb, cwd: Path) -> list:
    """Run ``nb`` with the kernel's working directory ``cwd``; its code cells."""
    from nbclient import NotebookClient

    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, [e.get("evalue") for e in errors]
    return code


def _shows_the_run(code: list, train_store) -> None:
    """The cells reading the latest run found it and show which run, when and which store."""
    for cell in [c for c in code if "latest_train_run(" in c.source]:
        text = "".join(_text(o) for o in cell.outputs)
        assert f"train run {train_store.run_id} (as_of " in text, text[:2000]
        assert "finished 20" in text and " UTC, store sqlite:///" in text, text[:2000]
        assert str(train_store.root / "mlruns" / "mlflow.db") in text, text[:2000]
        assert "no finished `train` run" not in text
        assert sum(o.output_type == "display_data" for o in cell.outputs) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped_and_runs(path: Path, monkeypatch, train_store):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs in git"
    folder = path.parent  # Jupyter's working directory: the notebook's folder
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", train_store.uri)  # inherited by the kernel
    code = _execute(nb, folder)
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no plot"
    mlflow_cells = [c for c in code if "latest_train_run(" in c.source]
    assert bool(mlflow_cells) == (path.name in READS_MLFLOW)
    _shows_the_run(code, train_store)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written in notebooks/


@pytest.mark.parametrize("name", sorted(READS_MLFLOW))
def test_opened_from_notebooks_the_project_store_is_found(name, tmp_path, monkeypatch, train_store):
    """A fresh clone after `make demo`: the store is the project's mlruns/ and Jupyter runs
    the notebook in notebooks/ without MLFLOW_TRACKING_URI. Before, the notebook looked in
    notebooks/mlruns/ and showed "no finished `train` run"."""
    folder = train_store.root / "notebooks"  # beside the store's mlruns/
    folder.mkdir(exist_ok=True)
    copy = folder / name
    copy.write_bytes((NOTEBOOKS[0].parent / name).read_bytes())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(folder)
    code = _execute(nbformat.read(copy, as_version=4), folder)
    _shows_the_run(code, train_store)
    copy.unlink()
    assert list(folder.iterdir()) == []  # nothing written in notebooks/
