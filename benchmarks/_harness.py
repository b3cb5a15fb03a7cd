"""Shared helpers for crmkit benchmarks: run a function in a fresh process and report its
wall time and peak resident memory, print aligned tables and ratios.

Peak memory of a process tree (``crmkit score`` forks a second process for the
recommendation lists on large inputs): :func:`measure` reports

- ``peak_rss_mb``: the measured process's own peak (VmHWM, reset at its start);
- ``children_peak_mb``: the largest peak of its waited-for descendants
  (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, exact, kept by the kernel - no sampling gap);
- ``tree_peak_mb``: the peak of the *sum* of the RSS of the process and all its descendants,
  sampled every 50 ms from outside (psutil) - what the machine really held at once, up to the
  sampling gap;
- ``conservative_peak_mb`` = own peak + children's peak: an upper bound that assumes the two
  peaks coincide, and counts the pages a forked child shares copy-on-write with its parent
  twice. Targets are checked against this figure.

Run benchmarks with ``OMP_WAIT_POLICY=PASSIVE`` (``make bench`` sets it): LightGBM's threads
busy-wait on a shared 2-core machine and make timings swing.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import threading
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
    children_peak_mb: float = 0.0
    tree_peak_mb: float = 0.0

    @property
    def conservative_peak_mb(self) -> float:
        """Own peak + the children's peak (see the module docstring)."""
        return self.peak_rss_mb + self.children_peak_mb


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
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    conn.send((secs, peak_rss_mb(), children, out, err))
    conn.close()


class _TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process and its descendants, sampled every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop_event.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._stop_event.wait(self.every)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak / 2**20


def measure(label: str, fn: Callable[..., Any], *args: Any) -> Measurement:
    """Run ``fn(*args)`` in a fresh spawned process; its peak RSS includes the interpreter and
    imports, so compare measurements taken the same way (peaks of the process tree: module
    docstring). ``fn`` must be importable
    (module-level) and return something picklable and small."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, child))
    proc.start()
    sampler = _TreeSampler(proc.pid)
    sampler.start()
    child.close()
    secs, peak, children, out, err = parent.recv()
    tree = sampler.stop()
    proc.join()
    if err:
        raise RuntimeError(f"{label} failed: {err}")
    return Measurement(label, secs, peak, out, children, tree)


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
