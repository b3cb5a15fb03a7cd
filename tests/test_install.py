"""The install is the one the lock describes: every package in ``constraints.txt`` is installed
at its locked version, and the package alone (``make demo``) pulls in none of the test, notebook
or Spark tools."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DEV_ONLY = {"pytest", "pytest-xdist", "hypothesis", "ruff", "pyspark", "ipykernel", "nbclient"}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"constraints.txt: not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_venv_matches_the_lock():
    pins = _lock()
    assert len(pins) > 50
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n) != v}
    assert not wrong, f"installed versions differ from constraints.txt (locked, installed): {wrong}"


def _closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        n, ex = todo.pop()
        if canonicalize_name(n) in seen:
            continue
        seen.add(canonicalize_name(n))
        for spec in metadata.requires(n) or []:
            req = Requirement(spec)
            envs = [{"extra": e} for e in ex] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_the_main_job_needs_no_dev_tools():
    main = _closure("crmkit")
    dev = _closure("crmkit", frozenset({"dev"}))
    assert {"mlflow", "lightgbm", "pandas", "pyarrow"} <= main
    assert not (main & DEV_ONLY), main & DEV_ONLY
    assert DEV_ONLY <= dev  # the dev extra is what `make test` adds
    pins = _lock()
    missing = sorted(n for n in dev if n != "crmkit" and n not in pins)
    assert not missing, f"needed by crmkit[dev] but not locked: {missing}"
