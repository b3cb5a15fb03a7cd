"""Outputs and runs that survive faults (issue 15, section 4), with real processes, real
files, real file systems and real signals.

1. ``--out`` on another file system (a symlink to a folder on tmpfs, a tmpfs mount point):
   the previous outputs are replaced, never deleted first (once: EXDEV after deleting
   ``audiences/``);
2. one ``--out`` never mixes two runs: a CSV score after a Parquet one, and two concurrent
   scores, leave exactly one run's set; other files are kept, owner and mode too;
3. SIGTERM marks the MLflow runs FAILED (exit 143), none stays RUNNING;
4. CSV outputs neutralise cells a spreadsheet would run as formulas;
5. ``--model`` on a local folder runs that folder's code: refused unless
   ``--trust-model-dir``, and then its hash is printed and logged.
"""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from crmkit.data.simulate import simulate_transactions
from crmkit.pipelines.config import load_config
from crmkit.pipelines.train import run_train

CRMKIT = Path(sys.executable).with_name("crmkit")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PARQUET_SET = {
    "customers.parquet",
    "recommendations.parquet",
    "audiences",
    "summary.json",
    "quality_report.json",
}
CSV_SET = {n.replace(".parquet", ".csv") for n in PARQUET_SET}
HOSTILE = [  # customer ids a spreadsheet would run as formulas, and one plain number
    '=HYPERLINK("http://x","y")',
    "+SUM(1+1)",
    "-2+3",
    "@A1",
    "-42",
]


@pytest.fixture(scope="module", autouse=True)
def _restore_mlflow_state():
    """run_train sets process-wide MLflow state: put it back for later modules."""
    import mlflow
    import mlflow.tracking.fluent as fluent

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    saved_exp = fluent._active_experiment_id
    yield
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    mlflow.set_tracking_uri(saved_env["MLFLOW_TRACKING_URI"])
    fluent._active_experiment_id = saved_exp


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """1,500 simulated customers (a few with hostile ids, a product with a hostile id) and
    one small trained model in a SQLite store."""
    root = tmp_path_factory.mktemp("faults4")
    sim = simulate_transactions(n_customers=1500, seed=11, acquisition_weeks=60)
    lines = sim.lines.copy()
    lines["customer_id"] = "CUSTX-" + lines["customer_id"].astype(str)
    first = sorted(lines["customer_id"].dropna().unique())[: len(HOSTILE)]
    lines["customer_id"] = lines["customer_id"].replace(dict(zip(first, HOSTILE)))
    top = lines["product_id"].value_counts().index[0]
    lines["product_id"] = lines["product_id"].astype(str).replace({str(top): "=cmd|'/C calc'!A0"})
    data = root / "orders.parquet"
    lines.to_parquet(data, index=False)
    store = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    cfg = load_config(
        None,
        overrides={
            "churn": {
                "n_snapshots": 3,
                "snapshot_every": 14,
                "shap_sample": 50,
                "bgnbd_prior": "always",
                "lightgbm": {"n_estimators": 40, "early_stopping_rounds": 10, "n_jobs": 1},
            },
            "clv": {"n_draws": 0},
            "recommend": {"top_n": 5, "min_calibration_candidates": 200},
        },
    )
    as_of = str(sim.truth.params.cutoff)
    trained = run_train(data, cfg, as_of=as_of, tracking_uri=store)
    return SimpleNamespace(root=root, data=data, store=store, as_of=as_of, trained=trained)


def _env(store: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = store
    return env


def _score(world, out: Path, *extra: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [str(CRMKIT), "score", str(world.data), "--out", str(out), "--as-of", world.as_of]
    return subprocess.run(
        [*cmd, *extra],
        env=_env(world.store),
        cwd=cwd or world.root,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _check_complete(out: Path, fmt: str) -> pd.DataFrame:
    """The set of one run: every table present and whole, audiences listed in the index."""
    import json

    customers = (
        pd.read_parquet(out / "customers.parquet")
        if fmt == "parquet"
        else pd.read_csv(out / "customers.csv", dtype={"customer_id": str})
    )
    assert len(customers) == 1500
    index = json.loads((out / "audiences" / "index.json").read_text())
    assert index["format"] == fmt
    files = {v["file"] for v in index["actions"].values()}
    assert {p.name for p in (out / "audiences").iterdir()} == files | {"index.json"}
    return customers


# --------------------------------------------------------------------------------------------
# 1. another file system


@pytest.fixture
def shm_dir(tmp_path):
    """A folder on /dev/shm (tmpfs), another file system than the tests' temporary folder."""
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same file system as the temporary folder")
    d = Path(f"/dev/shm/crmkit-test-{os.getpid()}-{tmp_path.name}")
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.fixture
def mount_point(tmp_path):
    """A tmpfs mounted at ``tmp_path/mnt`` (needs root or CAP_SYS_ADMIN)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    got = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True
    )
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_out_symlinked_to_another_filesystem_is_replaced_not_lost(world, tmp_path, shm_dir):
    real = shm_dir / "scores"
    real.mkdir()
    link = tmp_path / "scores"
    link.symlink_to(real, target_is_directory=True)
    first = _score(world, link)
    assert first.returncode == 0, first.stderr
    assert _names(real) == PARQUET_SET
    (real / "audiences" / "index.json").write_text('{"format": "parquet", "old": 1}')
    again = _score(world, link)
    assert again.returncode == 0, again.stderr  # once: EXDEV after deleting audiences/
    assert "Traceback" not in again.stderr
    assert link.is_symlink() and _names(real) == PARQUET_SET
    _check_complete(link, "parquet")
    assert "old" not in (real / "audiences" / "index.json").read_text()
    assert not list(shm_dir.glob(".scores.staging-*")) and not list(tmp_path.glob(".*staging*"))


def test_out_on_a_mount_point_is_replaced_not_lost(world, mount_point):
    (mount_point / "notes.txt").write_text("mine")
    first = _score(world, mount_point)
    assert first.returncode == 0, first.stderr
    assert _names(mount_point) >= PARQUET_SET
    again = _score(world, mount_point, "--format", "csv")
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert os.path.ismount(mount_point)
    # the CSV set, the user's file and the folder's lock; the Parquet set is gone
    assert _names(mount_point) == CSV_SET | {"notes.txt", ".crmkit-lock"}
    assert (mount_point / "notes.txt").read_text() == "mine"
    _check_complete(mount_point, "csv")


# --------------------------------------------------------------------------------------------
# 2. one run's set


def test_csv_after_parquet_leaves_one_set_and_keeps_owner_and_mode(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    os.chown(out, 4321, 4322)
    out.chmod(0o750)
    first = _score(world, out)
    assert first.returncode == 0, first.stderr
    assert _names(out) == PARQUET_SET | {"notes.txt"}
    second = _score(world, out, "--format", "csv")
    assert second.returncode == 0, second.stderr
    assert _names(out) == CSV_SET | {"notes.txt"}  # no customers.parquet of the first run
    _check_complete(out, "csv")
    st = out.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4321, 4322, 0o750)
    third = _score(world, out)
    assert third.returncode == 0, third.stderr
    assert _names(out) == PARQUET_SET | {"notes.txt"}
    st = out.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4321, 4322, 0o750)


def test_only_the_previous_set_of_the_same_kind_is_removed(tmp_path):
    """Another command's outputs in the folder (kind None: kept) survive two scores."""
    from crmkit.data.output import staged_output

    out = tmp_path / "out"
    with staged_output(out) as stage:  # e.g. crmkit validate
        (stage / "lines.parquet").write_text("lines")
    with staged_output(out, kind="score") as stage:
        (stage / "customers.parquet").write_text("p")
        (stage / "summary.json").write_text("p")
    with staged_output(out, kind="score") as stage:
        (stage / "customers.csv").write_text("c")
        (stage / "summary.json").write_text("c")
    assert _names(out) == {"lines.parquet", "customers.csv", "summary.json"}
    with staged_output(out) as stage:  # another command takes summary.json over
        (stage / "summary.json").write_text("other")
    with staged_output(out, kind="score") as stage:
        (stage / "customers.parquet").write_text("p")
    assert _names(out) == {"lines.parquet", "customers.parquet", "summary.json"}
    assert (out / "summary.json").read_text() == "other"


def test_two_concurrent_scores_into_one_folder_leave_one_complete_set(world, tmp_path):
    """A Parquet and a CSV score start into one folder while the folder is busy (its lock
    held, as a third writer would), so both reach the commit at the same time; they must
    take turns and leave one run's complete set. Without a lock both committed and the
    second kept the first one's files: a mix of both sets."""
    import fcntl

    out = tmp_path / "out"
    env = _env(world.store)
    base = [str(CRMKIT), "score", str(world.data), "--out", str(out), "--as-of", world.as_of]
    logs = {k: tmp_path / f"{k}.log" for k in ("parquet", "csv")}
    busy = os.open(tmp_path / ".out.crmkit-lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(busy, fcntl.LOCK_EX)
    procs = {}
    try:
        for fmt, log in logs.items():
            with open(log, "w") as f:
                procs[fmt] = subprocess.Popen(
                    [*base, "--format", fmt], env=env, cwd=tmp_path, stdout=f, stderr=f
                )
        deadline = time.monotonic() + 400
        waiting = {}
        while time.monotonic() < deadline:
            waiting = {
                k: "waiting: another crmkit run is writing" in v.read_text()
                for k, v in logs.items()
            }
            if all(waiting.values()) or any(p.poll() is not None for p in procs.values()):
                break
            time.sleep(0.1)
    finally:
        os.close(busy)
    codes = {k: p.wait(timeout=300) for k, p in procs.items()}
    assert codes == {"parquet": 0, "csv": 0}, {k: v.read_text()[-2000:] for k, v in logs.items()}
    assert waiting == {"parquet": True, "csv": True}, waiting
    names = _names(out)
    assert names in (PARQUET_SET, CSV_SET), names  # one run's set, nothing of the other
    _check_complete(out, "csv" if names == CSV_SET else "parquet")
    assert not list(tmp_path.glob(".out.staging-*"))


# --------------------------------------------------------------------------------------------
# 3. SIGTERM


def test_sigterm_marks_the_training_runs_failed(tmp_path):
    """``crmkit train`` on Online Retail, terminated while a nested stage run is open."""
    import mlflow

    src = DATA / "online_retail.parquet"
    if not src.is_file():
        pytest.skip(f"{src} is absent")
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    proc = subprocess.Popen(
        [str(CRMKIT), "train", str(src), "--as-of", "2011-09-01"],
        env=_env(store),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = tmp_path / "store" / "mlflow.db"
    running: list = []
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        # read-only SQL while it runs: an MLflow client here would race the process's own
        # creation of the tables
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
                running = con.execute("select name from runs where status = 'RUNNING'").fetchall()
        except sqlite3.Error:
            running = []
        if len(running) >= 2:  # the train run and a nested stage run
            break
        time.sleep(0.2)
    assert len(running) >= 2 and proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "terminated (SIGTERM)" in stderr.strip().splitlines()[-1]
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("crmkit")
    runs = client.search_runs([exp.experiment_id])
    statuses = {r.info.run_name: r.info.status for r in runs}
    assert len(runs) >= 2 and set(statuses.values()) == {"FAILED"}, statuses


# --------------------------------------------------------------------------------------------
# 4. CSV injection

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cells(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_csv_outputs_neutralise_formula_cells(world, tmp_path):
    import re

    out = tmp_path / "out"
    got = _score(world, out, "--format", "csv")
    assert got.returncode == 0, got.stderr
    number = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
    files = [out / "customers.csv", out / "recommendations.csv"]
    files += sorted((out / "audiences").glob("*.csv"))
    dangerous, ids = [], set()
    for path in files:
        rows = _csv_cells(path)
        for row in rows[1:]:
            for cell in row:
                if cell.startswith(TRIGGERS) and not number.fullmatch(cell):
                    dangerous.append((path.name, cell))
            if path.name == "customers.csv":
                ids.add(row[0])
    assert not dangerous, dangerous[:5]
    assert {'\'=HYPERLINK("http://x","y")', "'+SUM(1+1)", "'-2+3", "'@A1", "-42"} <= ids
    recs = pd.read_csv(out / "recommendations.csv", dtype=str)
    assert (recs["product_id"] == "'=cmd|'/C calc'!A0").sum() > 0
    customers = pd.read_csv(out / "customers.csv", dtype={"customer_id": str})
    assert customers["clv"].dtype == "float64" and customers["p_alive"].dtype == "float64"

    from crmkit.data.output import write_csv

    frame = pd.DataFrame({"amount": [-12.5, 3.0], "note": ["-12.5", "=1+2"]})
    assert write_csv(frame, None).splitlines() == ["amount,note", "-12.5,-12.5", "3.0,'=1+2"]


# --------------------------------------------------------------------------------------------
# 5. --model on a local folder


def _folder_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*"), key=lambda q: q.relative_to(folder).as_posix()):
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            h.update(f"{p.relative_to(folder).as_posix()}\0{digest}\n".encode())
    return h.hexdigest()


def test_model_folder_needs_trust_and_is_logged_with_its_hash(world, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(world.store)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/crmkit-customer-scorer/{world.trained.model_version}",
            dst_path=str(tmp_path / "model"),
        )
    )
    marker = tmp_path / "code-ran"
    code = next(folder.rglob("scorer_model.py"))
    code.write_text(code.read_text() + f"\nopen({str(marker)!r}, 'w').close()\n")
    want = _folder_sha256(folder)

    refused = _score(world, tmp_path / "out", "--model", str(folder))
    assert refused.returncode == 2, refused.stderr
    assert not marker.exists()  # its code never ran
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--trust-model-dir" in last and str(folder) in last
    assert not (tmp_path / "out").exists()

    trusted = _score(world, tmp_path / "out", "--model", str(folder), "--trust-model-dir")
    assert trusted.returncode == 0, trusted.stderr
    assert marker.exists()
    assert f"sha256 {want}" in trusted.stdout + trusted.stderr
    client = mlflow.MlflowClient(world.store)
    exp = client.get_experiment_by_name("crmkit")
    runs = client.search_runs(
        [exp.experiment_id], filter_string="tags.`crmkit.stage` = 'score'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    assert runs[0].data.params["model_dir_sha256"] == want
    assert runs[0].info.status == "FINISHED"
