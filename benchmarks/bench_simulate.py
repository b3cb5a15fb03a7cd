"""Benchmark of the order-line simulator (:func:`crmkit.data.simulate.simulate_transactions`).

Usage::

    python benchmarks/bench_simulate.py [--lines 1000000] [--seed 0] [--repeat 1]

Times the simulation of about ``--lines`` order lines (the customer count comes from
:func:`crmkit.data.simulate.customers_for_lines`) and prints the lines generated, wall-clock
seconds, lines per second and the process's peak resident memory. No reference library does
this job, so there is no speed ratio; the target is 1 000 000 lines in under 30 s.
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import sys
import time

TARGET_LINES = 1_000_000
TARGET_SECONDS = 30.0


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=TARGET_LINES, help="wanted order lines")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs (best is reported)")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd

    from crmkit.data.simulate import customers_for_lines, simulate_transactions

    n_customers = customers_for_lines(args.lines)
    rss_before = _peak_rss_mib()
    timings = []
    n_lines = 0
    frame_mib = 0.0
    for _ in range(max(1, args.repeat)):
        gc.collect()
        start = time.perf_counter()
        result = simulate_transactions(n_customers=n_customers, seed=args.seed)
        timings.append(time.perf_counter() - start)
        n_lines = len(result.lines)
        frame_mib = result.lines.memory_usage(deep=True).sum() / 2**20
        del result
    best = min(timings)
    rows = [
        ("customers", f"{n_customers:,}"),
        ("lines generated", f"{n_lines:,}"),
        (f"seconds (best of {len(timings)})", f"{best:.2f}"),
        ("lines / s", f"{n_lines / best:,.0f}"),
        ("peak RSS (MiB)", f"{_peak_rss_mib():,.0f}"),
        ("RSS before run (MiB)", f"{rss_before:,.0f}"),
        ("lines frame (MiB)", f"{frame_mib:,.0f}"),
    ]
    if args.lines == TARGET_LINES:
        verdict = "met" if best < TARGET_SECONDS else "MISSED"
        rows.append((f"target 1M lines < {TARGET_SECONDS:.0f} s", verdict))
    width = max(len(k) for k, _ in rows)
    print(
        f"simulate_transactions benchmark (python {platform.python_version()}, "
        f"numpy {np.__version__}, pandas {pd.__version__})"
    )
    for key, value in rows:
        print(f"  {key:<{width}}  {value:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
