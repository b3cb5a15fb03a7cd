"""Faults and reproducibility of the train / score job (issue 9).

One module-scoped fixture trains the customer scorer twice on the same data and seed into a
temporary SQLite store (versions 1 and 2, ``champion`` on 2). The faults:

1. ``crmkit score`` killed with SIGKILL while it writes: the previous outputs stay
   byte-identical, and the next run succeeds and removes the killed run's staging folder;
2. an interruption at every step of the output commit: the previous or the new output set,
   never a mix;
3. two ``crmkit score`` processes scoring into different folders at once (both caught in
   the middle of writing at the same moment);
4. an unreachable MLflow store (``http://127.0.0.1:<closed port>``): a clear error within
   seconds from ``configure``, ``run_train``, ``run_score`` and the CLI;
5. a read-only MLflow store: a clear error from ``run_train``, ``run_score`` and the CLI;
6. a store whose folder cannot be created: a clear error from ``configure``, ``run_train``
   and the CLI;
7. the registry alias never set, and pointing at a deleted version: CLI exit 2 naming the
   model and the alias.

Reproducibility: the two separately trained versions score the same data identically.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from crmkit.data.simulate import simulate_transactions
from crmkit.pipelines.config import load_config
from crmkit.pipelines.score import ModelLoadError, run_score
from crmkit.pipelines.train import run_train
from crmkit.tracking import TrackingError, configure

MODEL = "crmkit-customer-scorer"
CRMKIT = Path(sys.executable).with_name("crmkit")


def _config():
    """Small, fast settings (the approach of tests/pipelines/test_train_score.py)."""
    return load_config(
        None,
        overrides={
            "churn": {
                "n_snapshots": 3,
                "snapshot_every": 14,
                "shap_sample": 50,
                "bgnbd_prior": "always",
                "lightgbm": {"n_estimators": 60, "early_stopping_rounds": 10, "n_jobs": 1},
            },
            "clv": {"n_draws": 0},
            "recommend": {"top_n": 5, "min_calibration_candidates": 200},
        },
    )


@pytest.fixture(scope="module", autouse=True)
def _restore_mlflow_state():
    """mlflow.set_tracking_uri / set_experiment export MLFLOW_TRACKING_URI and
    MLFLOW_EXPERIMENT_ID and keep process-wide state: put it back for later modules."""
    import mlflow
    import mlflow.tracking.fluent as fluent

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    saved_uri = mlflow.get_tracking_uri() if saved_env["MLFLOW_TRACKING_URI"] else None
    saved_exp = fluent._active_experiment_id
    yield
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    mlflow.set_tracking_uri(saved_uri)
    if saved_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    fluent._active_experiment_id = saved_exp


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data (1,500 and 30,000 customers) and a store with two identical trainings."""
    root = tmp_path_factory.mktemp("faults")
    sim = simulate_transactions(n_customers=1500, seed=11, acquisition_weeks=60)
    lines = sim.lines.copy()
    lines["customer_id"] = "CUSTX-" + lines["customer_id"].astype(str)
    small = root / "orders.parquet"
    lines.to_parquet(small, index=False)
    big_sim = simulate_transactions(n_customers=30_000, seed=12, acquisition_weeks=60)
    big_lines = big_sim.lines.copy()
    big_lines["customer_id"] = "BIG-" + big_lines["customer_id"].astype(str)
    big = root / "big.parquet"
    big_lines.to_parquet(big, index=False)
    as_of = str(sim.truth.params.cutoff)
    store_dir = root / "store"
    store = f"sqlite:///{store_dir / 'mlflow.db'}"
    cfg = _config()
    first = run_train(small, cfg, as_of=as_of, tracking_uri=store)
    second = run_train(small, cfg, as_of=as_of, tracking_uri=store)
    assert (first.model_version, second.model_version) == ("1", "2") and second.promoted
    return SimpleNamespace(
        root=root,
        small=small,
        big=big,
        as_of=as_of,
        store=store,
        store_dir=store_dir,
        first=first,
        second=second,
        cfg=cfg,
    )


def _env(store: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = store
    return env


def _score_cmd(data: Path, out: Path, as_of: str, *extra: str) -> list[str]:
    return [str(CRMKIT), "score", str(data), "--out", str(out), "--as-of", as_of, *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _stagings(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.staging-*"))


def _has_files(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except FileNotFoundError:
        return False


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the console-script entry point in-process; returns (exit code, stderr)."""
    from crmkit.cli import main

    monkeypatch.setattr(sys, "argv", ["crmkit", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def _error_line(err: str) -> str:
    """The CLI's one-line error (progress lines come before it); no traceback anywhere."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last


def _closed_port() -> int:
    from tests._procs import free_port

    return free_port()  # bound and released: nothing listens there


# --------------------------------------------------------------------------------------------
# 1. SIGKILL while writing


def test_sigkill_during_score_keeps_previous_outputs_and_next_run_succeeds(
    world, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.store)
    out = tmp_path / "out"
    run_score(world.small, out, as_of=world.as_of, config=world.cfg, track=False)
    before = _snapshot(out)
    assert "customers.parquet" in before and "audiences/index.json" in before

    proc = subprocess.Popen(
        _score_cmd(world.big, out, world.as_of),
        env=_env(world.store),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    killed_in = None
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        stages = _stagings(out)
        if stages and _has_files(stages[0]):  # writing its first output
            proc.send_signal(signal.SIGKILL)
            killed_in = stages[0]
            break
        time.sleep(0.001)
    rc = proc.wait(timeout=60)
    log = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    assert killed_in is not None, f"the run ended before it wrote anything (rc {rc}):\n{log}"
    assert rc == -signal.SIGKILL
    assert "writing" in log  # it was killed in the write phase
    assert _snapshot(out) == before, "the killed run changed the previous outputs"
    stale = _stagings(out)
    assert stale == [killed_in]  # SIGKILL leaves its own staging folder, nothing else

    # The next run succeeds beside the stale staging folder and replaces the outputs.
    res = subprocess.run(
        _score_cmd(world.big, out, world.as_of),
        env=_env(world.store),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    customers = pd.read_parquet(out / "customers.parquet")
    assert len(customers) == 30_000 and customers["customer_id"].str.startswith("BIG-").all()
    # its own staging folder is gone, and so is the killed run's (removed under the lock)
    assert _stagings(out) == []


# --------------------------------------------------------------------------------------------
# 2. an interruption at each step of the commit


class _Died(BaseException):
    """Stands in for the process dying at a given step (nothing after it runs normally)."""


def test_interrupted_commit_leaves_previous_or_new_outputs_never_a_mix(tmp_path, monkeypatch):
    import crmkit.data.output as io

    def previous_set(out: Path) -> None:
        if out.exists():
            shutil.rmtree(out)
        (out / "audiences").mkdir(parents=True)
        for name in ("customers.parquet", "recommendations.parquet", "summary.json"):
            (out / name).write_text(f"old {name}")
        (out / "audiences" / "win_back.parquet").write_text("old win_back")
        (out / "customers.csv").write_text("old csv output this run does not write")

    def write_new(stage: Path) -> None:
        (stage / "audiences").mkdir()
        for name in ("customers.parquet", "recommendations.parquet", "summary.json"):
            (stage / name).write_text(f"new {name}")
        (stage / "audiences" / "cross_sell.parquet").write_text("new cross_sell")

    out = tmp_path / "out"
    previous_set(out)
    old = _snapshot(out)
    with io.staged_output(out) as stage:
        write_new(stage)
    new = _snapshot(out)
    assert new["customers.parquet"] == b"new customers.parquet"
    assert "audiences/win_back.parquet" not in new  # a folder is replaced as a whole
    assert new["customers.csv"] == old["customers.csv"]  # other files are kept

    real = {
        "replace": os.replace,
        "rename": os.rename,
        "rmtree": shutil.rmtree,
        "exchange": getattr(io, "_exchange", None),
    }
    mixes = []
    for when in ("before", "after"):
        for k in range(1, 10):
            previous_set(out)
            calls = {"n": 0}

            def step(name, *a, _k=k, _when=when, _calls=calls, **kw):
                _calls["n"] += 1
                if _calls["n"] == _k and _when == "before":
                    raise _Died(name)
                r = real[name](*a, **kw)
                if _calls["n"] == _k:
                    raise _Died(name)
                return r

            with monkeypatch.context() as m:
                m.setattr(os, "replace", lambda *a, **kw: step("replace", *a, **kw))
                m.setattr(os, "rename", lambda *a, **kw: step("rename", *a, **kw))
                m.setattr(shutil, "rmtree", lambda *a, **kw: step("rmtree", *a, **kw))
                if real["exchange"] is not None:
                    m.setattr(io, "_exchange", lambda *a, **kw: step("exchange", *a, **kw))
                try:
                    with io.staged_output(out) as stage:
                        write_new(stage)
                except _Died:
                    pass
            got = _snapshot(out)
            if got not in (old, new):
                mixes.append((when, k, sorted(got.items())))
    assert not mixes, f"an interrupted commit left a mix of old and new outputs: {mixes[:2]}"


# --------------------------------------------------------------------------------------------
# 3. two jobs at once


def test_two_scoring_jobs_at_once_both_succeed_with_identical_outputs(world, tmp_path):
    """The jobs are made to overlap, not left to chance (on a busy machine one job can
    finish before the other starts): each is paused (SIGSTOP) as soon as its staging
    folder appears, so both are caught in the middle of writing at the same moment; then
    both resume and must finish cleanly."""
    import mlflow

    client = mlflow.MlflowClient(world.store)
    started_ms = int(time.time() * 1000)
    outs = [tmp_path / "a" / "out", tmp_path / "b" / "out"]
    procs = [
        subprocess.Popen(
            _score_cmd(world.small, out, world.as_of),
            env=_env(world.store),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    paused = [False, False]
    try:
        deadline = time.monotonic() + 240
        while not all(paused) and time.monotonic() < deadline:
            for i, (p, out) in enumerate(zip(procs, outs)):
                if not paused[i] and p.poll() is None and _stagings(out):
                    p.send_signal(signal.SIGSTOP)
                    paused[i] = True
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.001)
        both_alive = [p.poll() is None for p in procs]
        both_writing = [len(_stagings(out)) == 1 for out in outs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
    results = [(p.communicate(timeout=300), p.returncode) for p in procs]
    assert paused == [True, True] and both_alive == [True, True], (paused, both_alive, results)
    assert both_writing == [True, True]  # both in the middle of writing at the same moment
    # MLflow saw it too: each job's `score` run started before the other one's ended.
    runs = client.search_runs(
        [world.first.experiment_id],
        filter_string=f"tags.`crmkit.stage` = 'score' and attributes.start_time >= {started_ms}",
    )
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), runs
    (s1, e1), (s2, e2) = ((r.info.start_time, r.info.end_time) for r in runs)
    assert max(s1, s2) < min(e1, e2), (s1, e1, s2, e2)
    for (stdout, stderr), rc in results:
        assert rc == 0, stderr
        assert "scored 1,500 customers" in stdout
    a, b = (pd.read_parquet(o / "customers.parquet") for o in outs)
    assert len(a) == 1500
    pd.testing.assert_frame_equal(a, b)
    assert (outs[0] / "customers.parquet").read_bytes() == (
        outs[1] / "customers.parquet"
    ).read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(outs[0] / "recommendations.parquet"),
        pd.read_parquet(outs[1] / "recommendations.parquet"),
    )
    for o in outs:
        assert not _stagings(o)


# --------------------------------------------------------------------------------------------
# 4.-6. the MLflow store unavailable


def test_unreachable_store_is_a_clear_error_within_seconds(world, tmp_path, monkeypatch, capsys):
    import mlflow

    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)  # MLflow's defaults: minutes of retries
    uri = f"http://127.0.0.1:{_closed_port()}"
    out = tmp_path / "out"

    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=f"store {uri} cannot be used: nothing answers"):
        configure(uri)
    with pytest.raises(TrackingError, match=f"store {uri} cannot be used: nothing answers"):
        run_train(world.small, world.cfg, as_of=world.as_of, tracking_uri=uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    with pytest.raises(ModelLoadError, match=f"store {uri} cannot be used: nothing answers"):
        run_score(world.small, out, as_of=world.as_of, config=world.cfg)
    code, err = _cli(
        monkeypatch, capsys, "score", str(world.small), "--out", str(out), "--tracking-uri", uri
    )
    assert code == 2 and uri in _error_line(err)
    code, err = _cli(
        monkeypatch, capsys, "train", str(world.small), "--as-of", world.as_of,
        "--tracking-uri", uri,
    )  # fmt: skip
    assert code == 2 and uri in _error_line(err)
    assert time.monotonic() - t0 < 30  # not MLflow's minutes of retries
    assert not out.exists()


@pytest.fixture
def read_only_store(world, tmp_path):
    """A copy of the trained store that cannot be written. chmod when it works; as root
    (or with CAP_DAC_OVERRIDE) file modes stop nothing, so SQLite is asked to open the
    database read-only instead (``file:...?mode=ro&uri=true``)."""
    ro_dir = tmp_path / "ro-store"
    shutil.copytree(world.store_dir, ro_dir)
    db = ro_dir / "mlflow.db"
    db.chmod(0o444)
    ro_dir.chmod(0o555)
    try:
        with open(db, "ab"):
            writable = True
    except OSError:
        writable = False
    uri = f"sqlite:///file:{db}?mode=ro&uri=true" if writable else f"sqlite:///{db}"
    yield SimpleNamespace(uri=uri, db=db, how="mode=ro" if writable else "chmod")
    ro_dir.chmod(0o755)
    db.chmod(0o644)


def test_read_only_store_is_a_clear_error(world, read_only_store, tmp_path, monkeypatch, capsys):
    import mlflow

    uri = read_only_store.uri
    cwd = tmp_path / "cwd"  # a SQLite URI filename once left a folder "file:" in the cwd
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    out.mkdir()
    (out / "customers.parquet").write_bytes(b"previous")
    before = read_only_store.db.read_bytes()

    with pytest.raises(TrackingError, match="cannot record the 'train' run") as exc:
        run_train(world.small, world.cfg, as_of=world.as_of, tracking_uri=uri)
    assert "readonly database" in str(exc.value) and str(read_only_store.db) in str(exc.value)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    with pytest.raises(TrackingError, match="cannot record the 'score' run") as exc:
        run_score(world.small, out, as_of=world.as_of, config=world.cfg)
    assert str(read_only_store.db) in str(exc.value)

    code, err = _cli(
        monkeypatch, capsys, "score", str(world.small), "--out", str(out), "--as-of",
        world.as_of, "--tracking-uri", uri,
    )  # fmt: skip
    assert code == 2 and str(read_only_store.db) in _error_line(err)
    assert _snapshot(out) == {"customers.parquet": b"previous"} and not _stagings(out)
    assert read_only_store.db.read_bytes() == before
    assert list(cwd.iterdir()) == []


def test_store_folder_that_cannot_be_created_is_a_clear_error(world, tmp_path, monkeypatch, capsys):
    """Works as root too: no permission bit is involved, the parent is a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    uri = f"sqlite:///{blocker / 'mlruns' / 'mlflow.db'}"
    with pytest.raises(TrackingError, match="cannot be used"):
        configure(uri)
    with pytest.raises(TrackingError, match=f"store {uri} cannot be used"):
        run_train(world.small, world.cfg, as_of=world.as_of, tracking_uri=uri)
    code, err = _cli(
        monkeypatch, capsys, "score", str(world.small), "--out", str(tmp_path / "out"),
        "--tracking-uri", uri,
    )  # fmt: skip
    assert code == 2 and str(blocker) in _error_line(err)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# 7. the registry alias


def test_alias_never_set_or_on_a_deleted_version_is_reported(world, tmp_path, monkeypatch, capsys):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.store)
    client = mlflow.MlflowClient(world.store)
    out = tmp_path / "out"
    args = ("score", str(world.small), "--out", str(out), "--as-of", world.as_of)

    code, err = _cli(monkeypatch, capsys, *args, "--model", f"models:/{MODEL}@never_set")
    assert code == 2 and f"'{MODEL}'" in _error_line(err) and "'never_set'" in _error_line(err)

    # An alias whose version is deleted (a model of its own: the shared one stays intact).
    ghost = "crmkit-faults-ghost"
    v1 = client.get_model_version(MODEL, "1")
    client.create_registered_model(ghost)
    mv = client.create_model_version(ghost, v1.source, run_id=v1.run_id)
    client.set_registered_model_alias(ghost, "champion", mv.version)
    assert str(client.get_model_version_by_alias(ghost, "champion").version) == str(mv.version)
    client.delete_model_version(ghost, mv.version)
    code, err = _cli(monkeypatch, capsys, *args, "--model", f"models:/{ghost}@champion")
    assert code == 2 and f"'{ghost}'" in _error_line(err) and "'champion'" in _error_line(err)
    assert not out.exists()
    # the shared champion is untouched
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"


# --------------------------------------------------------------------------------------------
# reproducibility


def test_two_trainings_on_the_same_data_and_seed_score_identically(world, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.store)
    assert world.first.run_id != world.second.run_id
    runs = [
        run_score(
            world.small,
            tmp_path / f"v{v}",
            model_uri=f"models:/{MODEL}/{v}",
            as_of=world.as_of,
            config=world.cfg,
            track=False,
        )
        for v in ("1", "2")
    ]
    assert [r.model["version"] for r in runs] == ["1", "2"]
    a, b = runs
    assert len(a.output.customers) == 1500 and len(a.output.recommendations) > 0
    pd.testing.assert_frame_equal(a.output.customers, b.output.customers)
    pd.testing.assert_frame_equal(a.output.recommendations, b.output.recommendations)
    for name in ("customers.parquet", "recommendations.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "v1" / name), pd.read_parquet(tmp_path / "v2" / name)
        )
