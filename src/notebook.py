"""Helpers of the notebooks in ``notebooks/``: which MLflow store they read, and a caption
saying which run they show.

Jupyter starts a notebook's kernel in the notebook's folder (``notebooks/``), not in the
project root where ``crmkit train`` / ``make demo`` wrote ``mlruns/``; :func:`notebook_store`
therefore looks for the store from the working directory upwards.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["notebook_store", "run_caption"]

_ROOT_MARKERS = ("pyproject.toml", ".git")


def notebook_store(start: str | os.PathLike | None = None) -> str:
    """The tracking URI a notebook reads: ``MLFLOW_TRACKING_URI`` when set, else the first
    ``mlruns/mlflow.db`` found in ``start`` (default: the working directory) or a parent
    folder, stopping at the project root (a folder with ``pyproject.toml`` or ``.git``);
    without one, the project root's (or ``start``'s) ``mlruns/mlflow.db``, which may not exist
    yet."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        db = folder / "mlruns" / "mlflow.db"
        if db.is_file():
            return f"sqlite:///{db}"
        if any((folder / m).exists() for m in _ROOT_MARKERS):
            return f"sqlite:///{db}"
    return f"sqlite:///{here / 'mlruns' / 'mlflow.db'}"


def run_caption(run: Any, store: str) -> str:
    """``train run <id> (as_of ..., model version ...), finished <UTC time>, store <uri>``."""
    info = run.info
    end = info.end_time or info.start_time
    when = datetime.fromtimestamp(end / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    as_of = run.data.params.get("as_of", "?")
    version = run.data.tags.get("crmkit.model_version", "?")
    return (
        f"train run {info.run_id} (as_of {as_of}, model version {version}), "
        f"finished {when}, store {store}"
    )
