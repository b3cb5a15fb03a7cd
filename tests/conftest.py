"""Shared fixtures: the real data sets beside the checkout, and small file writers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests needing it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (shared/ beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def write(tmp_path: Path):
    """Write text (or bytes) to a file in tmp_path and return its path."""

    def _write(name: str, content: str | bytes, encoding: str = "utf-8") -> Path:
        p = tmp_path / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_bytes(content.encode(encoding))
        return p

    return _write


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` process on 127.0.0.1 with a SQLite backend and served
    artifacts; yields its tracking URI and stops it afterwards."""
    from tests._procs import free_port, mlflow_exe, start_server, stop_server

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        mlflow_exe(),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    uri = f"http://127.0.0.1:{port}"
    proc = start_server(cmd, f"{uri}/health", root / "server.log", cwd=root)
    yield uri
    stop_server(proc)


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")


@pytest.fixture(autouse=True)
def _isolate_mlflow_globals():
    """Put MLflow's process-wide state back after every test.

    ``mlflow.set_tracking_uri`` keeps a module global that wins over ``MLFLOW_TRACKING_URI``;
    a test that points it at a closed port (tests/test_faults.py) or at a server that is
    stopped later would otherwise decide where the next test in the same xdist worker looks
    for its model."""
    import os
    import sys

    saved_env = {k: os.environ.get(k) for k in _MLFLOW_ENV}
    mods = {}
    if "mlflow" in sys.modules:
        import mlflow.tracking._model_registry.utils as reg
        import mlflow.tracking._tracking_service.utils as trk
        import mlflow.tracking.fluent as fluent

        mods = {"trk": trk._tracking_uri, "reg": reg._registry_uri,
                "exp": fluent._active_experiment_id}  # fmt: skip
    yield
    if "mlflow" in sys.modules:
        import mlflow.tracking._model_registry.utils as reg
        import mlflow.tracking._tracking_service.utils as trk
        import mlflow.tracking.fluent as fluent

        trk._tracking_uri = mods.get("trk")
        reg._registry_uri = mods.get("reg")
        fluent._active_experiment_id = mods.get("exp")
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
