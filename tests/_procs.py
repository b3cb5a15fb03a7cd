"""Start a real server process (mlflow server, mlflow models serve) and wait until it answers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_exe() -> str:
    return shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"


def start_server(
    cmd: list[str], health_url: str, log_path: Path, *, env: dict | None = None, cwd=None
) -> subprocess.Popen:
    """Start ``cmd`` (output to ``log_path``) and wait up to 120 s for ``health_url`` to
    answer 200; on failure kill it and raise with the end of the log."""
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    proc._crmkit_log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(health_url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"{cmd[:3]} did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    proc._crmkit_log.close()  # type: ignore[attr-defined]
