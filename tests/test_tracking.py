"""crmkit.tracking against a local SQLite store and a real ``mlflow server`` process."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from crmkit.tracking import (
    TrackingError,
    configure,
    default_tracking_uri,
    flat_metrics,
    sqlite_database_path,
    stage_run,
)


def test_default_store_is_sqlite_under_mlruns(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert default_tracking_uri() == "http://127.0.0.1:5999"


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("sqlite:////srv/mlruns/mlflow.db", "/srv/mlruns/mlflow.db"),
        ("sqlite:///mlruns/mlflow.db", "mlruns/mlflow.db"),
        ("sqlite:///mlruns/mlflow.db?timeout=20", "mlruns/mlflow.db"),
        # SQLite URI filenames (https://www.sqlite.org/uri.html): file: is a scheme
        ("sqlite:///file:/srv/m/mlflow.db?mode=ro&uri=true", "/srv/m/mlflow.db"),
        ("sqlite:///file:///srv/m/my%20db.db?uri=true&mode=ro", "/srv/m/my db.db"),
        ("sqlite:///file://localhost/srv/m/mlflow.db?uri=true", "/srv/m/mlflow.db"),
        ("sqlite:///file:rel/mlflow.db?uri=true", "rel/mlflow.db"),
        # without uri=true SQLite reads "file:..." as a plain file name
        ("sqlite:///file:/srv/m/mlflow.db", "file:/srv/m/mlflow.db"),
        ("sqlite:///:memory:", None),
        ("sqlite:///file:mem?mode=memory&uri=true", None),
        ("http://127.0.0.1:5000", None),
    ],
)
def test_sqlite_database_path(uri, path):
    assert sqlite_database_path(uri) == (None if path is None else Path(path))


def test_read_only_uri_filename_store_creates_nothing_in_the_working_directory(
    tmp_path, monkeypatch
):
    """``sqlite:///file:<db>?mode=ro&uri=true`` once made a folder named ``file:`` in the
    working directory (its parent, read as a relative path)."""
    from crmkit.tracking import _artifact_root

    db = tmp_path / "store" / "mlflow.db"
    exp = configure(f"sqlite:///{db}", experiment="ro")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    ro = f"sqlite:///file:{db}?mode=ro&uri=true"
    assert configure(ro, experiment="ro") == exp
    assert _artifact_root(ro) == (db.parent / "artifacts").as_uri()
    assert mlflow.MlflowClient(ro).get_experiment(exp).artifact_location == _artifact_root(ro)
    with pytest.raises(TrackingError, match="readonly database"):
        with stage_run("refused"):
            pass
    assert list(cwd.iterdir()) == []


def test_runs_nested_failed_and_artifacts_local(tmp_path):
    exp = configure(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t")
    with stage_run("parent"):
        with stage_run("child", nested=True):
            mlflow.log_metrics(flat_metrics({"a": {"b": 1.5, "skip": None}, "n": 3}))
    with pytest.raises(ValueError):
        with stage_run("broken"):
            raise ValueError("boom")
    runs = {r.info.run_name: r for r in mlflow.MlflowClient().search_runs([exp])}
    assert runs["broken"].info.status == "FAILED"
    assert runs["child"].data.metrics == {"a.b": 1.5, "n": 3.0}
    assert runs["child"].data.tags["mlflow.parentRunId"] == runs["parent"].info.run_id
    assert runs["parent"].info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())


def test_unusable_store_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(TrackingError, match="cannot be used"):
        configure(f"sqlite:///{blocker / 'mlruns' / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(TrackingError, match="cannot be used"):
        configure("http://127.0.0.1:9/")  # nothing listens on the discard port


def test_against_a_real_mlflow_server(mlflow_server):
    exp = configure(mlflow_server, experiment="server-test")
    with stage_run("served"):
        mlflow.log_metric("m", 2.0)
        mlflow.log_dict({"k": 1}, "d.json")
    client = mlflow.MlflowClient(mlflow_server)
    (run,) = client.search_runs([exp])
    assert run.data.metrics["m"] == 2.0
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["d.json"]


def test_latest_train_run_without_a_run_is_none_and_creates_nothing(tmp_path):
    from crmkit.tracking import latest_train_run

    missing = tmp_path / "nowhere" / "mlflow.db"
    assert latest_train_run(f"sqlite:///{missing}") is None
    assert not (tmp_path / "nowhere").exists()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configure(uri, experiment="crmkit")
    with stage_run("validate", tags={"crmkit.stage": "validate"}):
        pass
    assert latest_train_run(uri) is None  # runs, but no finished `train` run
    with stage_run("train", tags={"crmkit.stage": "train"}) as parent:
        with stage_run("clv", nested=True, tags={"crmkit.stage": "clv"}) as child:
            mlflow.log_metric("clv.bgnbd.r", 0.25)
    runs = latest_train_run(uri)
    assert runs["train"].info.run_id == parent.info.run_id
    assert runs["clv"].info.run_id == child.info.run_id
    assert runs["clv"].data.metrics == {"clv.bgnbd.r": 0.25}
