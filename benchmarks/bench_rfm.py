"""Benchmark: the RFM summary (frequency, recency, T, monetary_value) on ~10M order lines,
crmkit against lifetimes' ``summary_data_from_transaction_data``, side by side, and every
customer feature for one cutoff (``crmkit.pipelines.features.customer_table``: RFM summary,
scores, segment, behavioural features).

Each runs in a fresh process on the same cleaned lines (read from a cached Parquet file; the
read is not timed). Targets: the summary at least 5x faster than lifetimes; all features in
under 60 s and 8 GiB peak.

    python benchmarks/bench_rfm.py [--lines 10000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import simulated_lines_path  # noqa: E402
from _harness import Measurement, machine, measure, table  # noqa: E402

AS_OF = "2023-06-30"


def _load(path: str):
    import pandas as pd

    return pd.read_parquet(path, columns=["customer_id", "order_ts", "quantity", "amount"])


def run_crmkit(path: str) -> tuple[float, int]:
    from crmkit.features.rfm import rfm_summary

    lines = _load(path)
    t0 = time.perf_counter()
    s = rfm_summary(lines, AS_OF, unit="D")
    return time.perf_counter() - t0, len(s)


def run_all_features(path: str) -> tuple[float, int]:
    import pandas as pd

    from crmkit.pipelines.features import customer_table

    lines = pd.read_parquet(path)
    t0 = time.perf_counter()
    table = customer_table(lines, AS_OF)
    return time.perf_counter() - t0, len(table)


def run_lifetimes(path: str) -> tuple[float, int]:
    from lifetimes.utils import summary_data_from_transaction_data

    lines = _load(path)
    t0 = time.perf_counter()
    s = summary_data_from_transaction_data(
        lines, "customer_id", "order_ts", "amount", observation_period_end=AS_OF, freq="D"
    )
    return time.perf_counter() - t0, len(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10_000_000)
    args = ap.parse_args()
    path = str(simulated_lines_path(args.lines))
    import pyarrow.parquet as pq

    n = pq.ParquetFile(path).metadata.num_rows
    rows = []
    for label, fn in [
        ("crmkit rfm_summary", run_crmkit),
        ("lifetimes summary_data", run_lifetimes),
        ("crmkit all features (customer_table)", run_all_features),
    ]:
        m = measure(label, fn, path)
        secs, n_cust = m.result
        rows.append(Measurement(label, secs, m.peak_rss_mb, n_cust))
    assert rows[0].result == rows[1].result == rows[2].result, "different customer counts"
    print(f"bench_rfm: {n:,} cleaned order lines, {rows[0].result:,} customers; {machine()}")
    print("(seconds: the summary call only; peak RSS: the whole process incl. the data)")
    ratio = rows[1].seconds / rows[0].seconds
    feats = rows[2]
    print(
        table(
            rows,
            {
                "speed-up crmkit vs lifetimes": f"{ratio:.1f}x "
                f"(target >= 5x: {'met' if ratio >= 5 else 'NOT met'})",
                "all features": f"{feats.seconds:.1f} s, {feats.peak_rss_mb / 1024:.2f} GiB peak "
                f"(target < 60 s and < 8 GiB: "
                f"{'met' if feats.seconds < 60 and feats.peak_rss_mb < 8 * 1024 else 'NOT met'})",
            },
        )
    )


if __name__ == "__main__":
    main()
