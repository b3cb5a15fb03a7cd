"""Benchmark: behavioural churn features (and RFM beside them) on simulated order lines.

Simulates ``--lines`` order lines (``simulate_transactions(n_customers=customers_for_lines(n))``),
cleans them keeping returns as negative lines (``returns: net``, so the return and
cancellation features have work to do) and writes them to Parquet. Each feature step then runs
in a fresh process that reads the Parquet file and times only the feature call; peak RSS is the
whole process (interpreter, imports, the loaded lines and the step). The analysis date is 90
days before the last order, so every window and last year's windows hold data.

    python benchmarks/bench_behaviour.py [--lines 10000000] [--as-of 2023-10-02]

Target for the whole feature set (RFM + behaviour) on 10M lines: under 60 s and 8 GiB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Measurement, machine, measure, table  # noqa: E402
from _harness import peak_rss_mb as _peak_mb  # noqa: E402


def make_input(n_lines: int, folder: str) -> dict:
    """Simulate, clean (returns kept, net) and write the lines; return path and figures."""
    import pandas as pd

    from crmkit.data.clean import clean_lines
    from crmkit.data.simulate import customers_for_lines, simulate_transactions

    n_customers = customers_for_lines(n_lines)
    raw = simulate_transactions(n_customers=n_customers, seed=1).lines
    n_raw = len(raw)
    lines = clean_lines(raw, {"returns": "net"}).lines
    del raw
    path = str(Path(folder) / "lines.parquet")
    lines.to_parquet(path, index=False)
    last = lines["order_ts"].max().normalize()
    return {
        "path": path,
        "n_customers": n_customers,
        "raw_lines": n_raw,
        "lines": len(lines),
        "as_of": str((last - pd.Timedelta(days=90)).date()),
    }


def run_step(step: str, path: str, as_of: str) -> dict:
    """Read the lines, then time one feature step on them."""
    import pandas as pd

    from crmkit.features.behaviour import behaviour_features
    from crmkit.features.rfm import rfm_summary

    lines = pd.read_parquet(path)
    loaded_mb = _peak_mb()
    t0 = time.perf_counter()
    shape: tuple[int, int] = (0, 0)
    if step in ("rfm", "both"):
        shape = rfm_summary(lines, as_of).shape
    if step in ("behaviour", "both"):
        shape = behaviour_features(lines, as_of).shape
    return {"seconds": time.perf_counter() - t0, "loaded_mb": loaded_mb, "shape": shape}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--as-of", default=None, help="analysis date (default: last day - 90)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gen = measure("simulate + clean (net) + write", make_input, args.lines, tmp)
        info = gen.result
        as_of = args.as_of or info["as_of"]
        rows = [gen]
        shapes = {}
        for step, label in (
            ("behaviour", "behaviour_features"),
            ("rfm", "rfm_summary"),
            ("both", "rfm_summary + behaviour_features"),
        ):
            m = measure(label, run_step, step, info["path"], as_of)
            rows.append(Measurement(label, m.result["seconds"], m.peak_rss_mb))
            shapes[label] = m.result["shape"]
            loaded_mb = m.result["loaded_mb"]
    print(
        f"bench_behaviour: {info['lines']:,} clean order lines ({info['raw_lines']:,} simulated, "
        f"{info['n_customers']:,} customers), as_of {as_of}; {machine()}"
    )
    beh = rows[1]
    print("feature steps: seconds exclude reading the Parquet file; peak RSS is the whole process")
    print(
        table(
            rows,
            {
                "RSS after reading the lines (before features)": f"{loaded_mb:,.0f} MB",
                "behaviour_features frame": f"{shapes['behaviour_features'][0]:,} customers x "
                f"{shapes['behaviour_features'][1]} columns",
                "behaviour_features throughput": f"{info['lines'] / beh.seconds:,.0f} lines/s",
            },
        )
    )


if __name__ == "__main__":
    main()
