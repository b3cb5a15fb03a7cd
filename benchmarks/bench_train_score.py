"""Benchmark: the main job - ``crmkit train`` on ~1M order lines and ``crmkit score`` of
~1M customers (~10M order lines) with the model it registered.

Both run end to end as the CLI runs them (``run_train`` / ``run_score``: reading the Parquet
file, validation and cleaning, every stage, MLflow logging into a local SQLite store, the
registry and the gate; scoring writes customers, recommendations and audiences), each in a
fresh process (``_harness.measure``: wall time and peak RSS of the whole process). The data
come from the seeded simulator (``benchmarks/_data.py``, cached); the scored file is a
different simulated shop of the same kind (same catalogue), ten times larger.

Targets (issue 7): train on 1M order lines in under 3 minutes; score 1M customers (10M order
lines) in under 2 minutes with peak memory under 12 GiB.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_train_score.py [--train-lines 1000000]
        [--score-lines 10000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import simulated_lines_path  # noqa: E402
from _harness import Measurement, machine, measure, table  # noqa: E402

AS_OF = "2023-06-30"


def run_train_job(path: str, store: str) -> tuple[float, int]:
    from crmkit.pipelines.config import load_config
    from crmkit.pipelines.train import run_train

    t0 = time.perf_counter()
    res = run_train(
        path,
        load_config(None),
        as_of=AS_OF,
        tracking_uri=store,
        progress=lambda m: print(f"  [{time.perf_counter() - t0:6.1f} s] train: {m}", flush=True),
    )
    return time.perf_counter() - t0, len(res.scorer.input_columns)


def run_score_job(path: str, store: str, out: str) -> tuple[float, int]:
    import mlflow

    from crmkit.pipelines.config import load_config
    from crmkit.pipelines.score import run_score
    from crmkit.tracking import configure

    t0 = time.perf_counter()
    configure(store, "crmkit")
    mlflow.set_tracking_uri(store)
    res = run_score(
        path,
        out,
        as_of=AS_OF,
        config=load_config(None),
        progress=lambda m: print(f"  [{time.perf_counter() - t0:6.1f} s] score: {m}", flush=True),
    )
    return time.perf_counter() - t0, len(res.output.customers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-lines", type=int, default=1_000_000)
    ap.add_argument("--score-lines", type=int, default=10_000_000)
    args = ap.parse_args()
    train_path = str(simulated_lines_path(args.train_lines, seed=1))
    score_path = str(simulated_lines_path(args.score_lines, seed=1))
    import pyarrow.parquet as pq

    n_train = pq.ParquetFile(train_path).metadata.num_rows
    n_score = pq.ParquetFile(score_path).metadata.num_rows
    with tempfile.TemporaryDirectory(prefix="bench-train-score-") as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        rows = []
        m = measure(f"train ({n_train:,} lines)", run_train_job, train_path, store)
        rows.append(Measurement(m.label, m.result[0], m.peak_rss_mb, n_train))
        m = measure(f"score ({n_score:,} lines)", run_score_job, score_path, store, f"{tmp}/out")
        rows.append(Measurement(m.label, m.result[0], m.peak_rss_mb, m.result[1]))
    print(f"bench_train_score: {machine()}")
    print(table(rows))
    print(
        f"targets: train < 180 s ({rows[0].seconds:.0f} s), score < 120 s "
        f"({rows[1].seconds:.0f} s) and < 12 GiB ({rows[1].peak_rss_mb / 1024:.1f} GiB)"
    )


if __name__ == "__main__":
    main()
