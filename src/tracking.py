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
    "sqlite_database_path",
    "configure",
    "check_reachable",
    "latest_train_run",
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


def sqlite_database_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (``None`` for other stores and for
    an in-memory database).

    Handles the forms SQLAlchemy accepts: ``sqlite:///relative/mlflow.db``,
    ``sqlite:////absolute/mlflow.db``, query parameters (``?timeout=20``) and SQLite's URI
    filenames, ``sqlite:///file:/abs/mlflow.db?mode=ro&uri=true`` (``file:`` with an optional
    empty or ``localhost`` authority, percent-encoded; https://www.sqlite.org/uri.html) -
    there ``file:`` is a scheme, not a folder.
    """
    from urllib.parse import parse_qs, unquote

    prefix = "sqlite:///"
    if not uri.lower().startswith(prefix):
        return None
    rest = uri[len(prefix) :]
    path, _, query = rest.partition("?")
    params = {k.lower(): v[-1].lower() for k, v in parse_qs(query).items()}
    if params.get("uri") in ("true", "1") and path.lower().startswith("file:"):
        if params.get("mode") == "memory":
            return None
        name = path[len("file:") :].partition("#")[0]
        if name.startswith("//"):  # an authority: empty or localhost only (SQLite's rule)
            authority, slash, tail = name[2:].partition("/")
            if authority.lower() not in ("", "localhost"):
                return None
            name = slash + tail
        path = unquote(name)
    if path in ("", ":memory:"):
        return None
    return Path(path)


def _fix_mlflow_sqlite_parent_dirs() -> None:
    """Make MLflow create a SQLite store's folder where the database really is.

    MLflow 3 (``mlflow.store.db.utils._make_parent_dirs_if_sqlite``, mlflow/mlflow#19205)
    strips ``sqlite:///`` and creates the parent of what is left, so a SQLite URI filename
    (``sqlite:///file:/srv/m/mlflow.db?mode=ro&uri=true``) leaves a folder named ``file:`` in
    the working directory. Route it through :func:`sqlite_database_path`; idempotent, and a
    no-op when MLflow has no such helper.
    """
    try:
        import mlflow.store.db.utils as db_utils
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return
    current = getattr(db_utils, "_make_parent_dirs_if_sqlite", None)
    if current is None or getattr(current, "_crmkit", False):
        return

    def _make_parent_dirs_if_sqlite(db_uri: str) -> None:
        db = sqlite_database_path(db_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)

    _make_parent_dirs_if_sqlite._crmkit = True  # type: ignore[attr-defined]
    db_utils._make_parent_dirs_if_sqlite = _make_parent_dirs_if_sqlite


def _artifact_root(uri: str) -> str | None:
    db = sqlite_database_path(uri)
    if db is not None:
        return (db.parent / "artifacts").resolve().as_uri()
    return None  # a server or other store decides itself


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` at once when nothing answers at an ``http(s)://`` store.

    MLflow's own HTTP client retries a refused connection with backoff for minutes; one short
    ``GET <uri>/health`` tells a store that is down from one that answers. Any HTTP answer
    (also 401/403/404 from an authenticating proxy) and any TLS error (a custom CA MLflow is
    configured for) count as reachable and are left to MLflow. Other stores are not checked.
    """
    _fix_mlflow_sqlite_parent_dirs()  # every MLflow entry point of crmkit passes here
    if not uri.lower().startswith(("http://", "https://")):
        return
    import ssl
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # something answered
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):
            return
        reason: object = exc.reason
    except ssl.SSLError:
        return
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URI
        reason = exc
    raise TrackingError(
        f"the MLflow tracking store {uri} cannot be used: nothing answers there ({reason}); "
        "start the tracking server, or point MLFLOW_TRACKING_URI / --tracking-uri at a store "
        "that is up"
    )


def _describe(exc: BaseException) -> str:
    msg = str(getattr(exc, "message", None) or exc)
    # SQLAlchemy errors put the cause on a later line ("(sqlite3.OperationalError) ...")
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    first = next((ln for ln in lines if ln.startswith("(") and "Error)" in ln), None)
    return f"{type(exc).__name__}: {first or (lines[0] if lines else '')}"


@contextmanager
def _quiet_db_errors() -> Iterator[None]:
    """MLflow's SQL stores log a full traceback before they raise a database error; the
    error is re-raised here as a one-line :class:`TrackingError`, so keep the log quiet."""
    import logging

    log = logging.getLogger("mlflow.store.db.utils")
    was = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = was


def configure(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at ``tracking_uri`` (default :func:`default_tracking_uri`) and select (or
    create) ``experiment``; returns the experiment id. Errors become :class:`TrackingError`;
    an ``http(s)://`` store that does not answer fails within seconds
    (:func:`check_reachable`)."""
    import mlflow

    uri = tracking_uri or default_tracking_uri()
    check_reachable(uri)
    try:
        db = sqlite_database_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        with _quiet_db_errors():
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = client.create_experiment(experiment, artifact_location=_artifact_root(uri))
            else:
                exp_id = exp.experiment_id
            mlflow.set_experiment(experiment_id=exp_id)
    except Exception as exc:  # MlflowException, OSError, sqlalchemy errors, connection errors
        raise TrackingError(
            f"the MLflow tracking store {uri} cannot be used: {_describe(exc)}"
        ) from None
    return exp_id


@contextmanager
def stage_run(
    name: str, *, nested: bool = False, tags: dict[str, str] | None = None
) -> Iterator[Any]:
    """Open an MLflow run for a pipeline stage; an exception inside marks it FAILED (and is
    re-raised), success marks it FINISHED. Interruptions are exceptions too: Ctrl-C
    (``KeyboardInterrupt``) and, in the CLI, SIGTERM (:class:`crmkit.signals.Terminated`),
    so a stopped job leaves no run RUNNING. A store that cannot record the run (read-only,
    unreachable) raises :class:`TrackingError` naming the store."""
    import mlflow

    from crmkit.signals import block_sigterm, sigterm_deferred, unblock_sigterm

    # SIGTERM is held back while MLflow starts or ends the run, so that it never leaves a
    # run half-started or half-ended (RUNNING); it is delivered right after.
    held = block_sigterm()
    try:
        with _quiet_db_errors():
            run = mlflow.start_run(run_name=name, nested=nested, tags=tags)
    except Exception as exc:  # MlflowException, sqlalchemy / connection errors
        unblock_sigterm(held)
        raise TrackingError(
            f"the MLflow tracking store {mlflow.get_tracking_uri()} cannot record the "
            f"{name!r} run: {_describe(exc)}"
        ) from None
    except BaseException:
        unblock_sigterm(held)
        raise
    try:
        unblock_sigterm(held)  # a SIGTERM held back is raised here, inside the run
        yield run
    except BaseException:
        with sigterm_deferred():
            mlflow.end_run(status="FAILED")
        raise
    with sigterm_deferred():
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


def latest_train_run(
    tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT
) -> dict[str, Any] | None:
    """The latest finished ``crmkit train`` run and its nested stage runs, for notebooks and
    reports: ``{"train": run, "validate": run, "features": run, "clv": run, ...}`` (MLflow
    ``Run`` objects keyed by their ``crmkit.stage`` tag), or ``None`` when the store has no
    such run. A local SQLite store that does not exist yet is not created.

    Raises :class:`TrackingError` when the store cannot be read.
    """
    uri = tracking_uri or default_tracking_uri()
    db = sqlite_database_path(uri)
    if db is not None and not db.is_file():
        return None
    check_reachable(uri)
    import mlflow

    try:
        client = mlflow.MlflowClient(uri)
        with _quiet_db_errors():
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                return None
            runs = client.search_runs(
                [exp.experiment_id],
                filter_string="tags.`crmkit.stage` = 'train' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if not runs:
                return None
            parent = runs[0]
            children = client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            )
    except Exception as exc:  # MlflowException, sqlalchemy / connection errors
        raise TrackingError(
            f"the MLflow tracking store {uri} cannot be read: {_describe(exc)}"
        ) from None
    out: dict[str, Any] = {"train": parent}
    for child in children:
        out.setdefault(child.data.tags.get("crmkit.stage", child.info.run_name), child)
    return out
