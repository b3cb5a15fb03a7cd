"""MLflow tracking helpers: one place that decides where runs go and how a stage's run is
opened, closed and marked FAILED.

Default store: ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts in ``<cwd>/mlruns/artifacts``
(embedded, no server, works on a fresh machine). ``MLFLOW_TRACKING_URI`` is honoured (a
``http://127.0.0.1:5000`` server, a team's tracking server, another database).

MLflow is imported lazily: importing :mod:`crmkit.tracking` is cheap.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crmkit.errors import CrmkitError

__all__ = [
    "TrackingError",
    "default_tracking_uri",
    "configure",
    "stage_run",
    "log_figure",
    "log_json",
    "log_frame_artifact",
    "flat_metrics",
]

DEFAULT_EXPERIMENT = "crmkit"


class TrackingError(CrmkitError):
    """The MLflow store cannot be reached or written."""


def default_tracking_uri(root: str | os.PathLike | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the SQLite store under ``<root>/mlruns``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = Path(root) if root is not None else Path.cwd()
    return f"sqlite:///{(base / 'mlruns' / 'mlflow.db').resolve()}"


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "artifacts").resolve().as_uri()
    return None  # a server or other store decides itself


def configure(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at ``tracking_uri`` (default :func:`default_tracking_uri`) and select (or
    create) ``experiment``; returns the experiment id. Errors become :class:`TrackingError`."""
    import mlflow

    uri = tracking_uri or default_tracking_uri()
    try:
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = client.create_experiment(experiment, artifact_location=_artifact_root(uri))
        else:
            exp_id = exp.experiment_id
        mlflow.set_experiment(experiment_id=exp_id)
    except Exception as exc:  # MlflowException, OSError, sqlalchemy errors, connection errors
        raise TrackingError(
            f"the MLflow tracking store {uri} cannot be used: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    return exp_id


@contextmanager
def stage_run(
    name: str, *, nested: bool = False, tags: dict[str, str] | None = None
) -> Iterator[Any]:
    """Open an MLflow run for a pipeline stage; an exception inside marks it FAILED (and is
    re-raised), success marks it FINISHED."""
    import mlflow

    run = mlflow.start_run(run_name=name, nested=nested, tags=tags)
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def flat_metrics(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested dicts of numbers into ``{"a.b": 1.0}`` MLflow metrics (None, text and
    non-finite values are left out)."""
    import math

    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_metrics(v, prefix=f"{key}."))
        elif isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, int | float) and math.isfinite(float(v)):
            out[key] = float(v)
    return out


def log_figure(fig: Any, name: str) -> None:
    """Log a matplotlib figure as a PNG artifact under ``plots/``."""
    import mlflow

    mlflow.log_figure(fig, f"plots/{name}")


def log_json(obj: Any, name: str) -> None:
    """Log a JSON-serialisable object as an artifact."""
    import mlflow

    mlflow.log_dict(obj, name)


def log_frame_artifact(frame: Any, name: str) -> None:
    """Log an aggregate table (never customer-level rows) as a Parquet artifact."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / name
        frame.to_parquet(p, index=False)
        mlflow.log_artifact(str(p))
