"""Shared helpers for crmkit benchmarks: run a function in a fresh process and report its
wall time and peak resident memory, print aligned tables and ratios.

Run benchmarks with ``OMP_WAIT_POLICY=PASSIVE`` (``make bench`` sets it): LightGBM's threads
busy-wait on a shared 2-core machine and make timings swing.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Measurement:
    label: str
    seconds: float
    peak_rss_mb: float
    result: Any = None


def _reset_peak() -> None:
    """Forget the peak RSS inherited from the parent across fork/exec (Linux: writing 5 to
    /proc/self/clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(fn: Callable[..., Any], args: tuple, conn) -> None:  # noqa: ANN001
    _reset_peak()
    t0 = time.perf_counter()
    try:
        out = fn(*args)
        err = None
    except BaseException as exc:  # report failures (e.g. MemoryError) as figures
        out, err = None, f"{type(exc).__name__}: {exc}"
    secs = time.perf_counter() - t0
    conn.send((secs, peak_rss_mb(), out, err))
    conn.close()


def measure(label: str, fn: Callable[..., Any], *args: Any) -> Measurement:
    """Run ``fn(*args)`` in a fresh spawned process; its peak RSS includes the interpreter and
    imports, so compare measurements taken the same way. ``fn`` must be importable
    (module-level) and return something picklable and small."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, child))
    proc.start()
    child.close()
    secs, peak, out, err = parent.recv()
    proc.join()
    if err:
        raise RuntimeError(f"{label} failed: {err}")
    return Measurement(label, secs, peak, out)


def machine() -> str:
    import os

    return f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores"


def table(rows: list[Measurement], extra: dict[str, str] | None = None) -> str:
    w = max(len(r.label) for r in rows)
    lines = [f"{'step':<{w}}  {'seconds':>9}  {'peak RSS MB':>11}"]
    for r in rows:
        lines.append(f"{r.label:<{w}}  {r.seconds:>9.2f}  {r.peak_rss_mb:>11.0f}")
    for k, v in (extra or {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)
