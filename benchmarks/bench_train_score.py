"""Benchmark: the main job - ``crmkit train`` on ~1M order lines and ``crmkit score`` of
1M customers with ~10M order lines, with the model it registered.

Both run end to end as the CLI runs them (``run_train`` / ``run_score``: reading the Parquet
file, validation and cleaning, every stage, MLflow logging into a local SQLite store, the
registry and the gate; scoring writes customers, recommendations and audiences), each in a
fresh process (``_harness.measure``). The data come from the seeded simulator
(``benchmarks/_data.py``, cached): a shop that keeps acquiring customers up to the analysis
date, ~10 lines per customer, every line on or before it (so every line is used); the scored
file is a different shop of the same kind (another seed), ten times larger.

Memory: scoring forks a second process for the recommendation lists on large inputs, so the
figures are those of the whole process tree (``_harness`` docstring): own peak, the forked
child's peak, their sum (conservative: assumes the peaks coincide and counts shared
copy-on-write pages twice; the target is checked against it) and the sampled peak of the
tree's summed RSS.

Targets (issue 7): train on 1M order lines in under 3 minutes; score 1M customers (10M order
lines) in under 2 minutes with peak memory under 12 GiB.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_train_score.py [--train-lines 1000000]
        [--score-customers 1000000]
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
from _data import SHOP, SHOP_AS_OF, SHOP_LINES_PER_CUSTOMER, simulated_lines_path  # noqa: E402
from _harness import machine, measure  # noqa: E402

AS_OF = SHOP_AS_OF


def _rss_gib() -> float:
    """Current resident memory of this process (VmRSS), GiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


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
        progress=lambda m: print(
            f"  [{time.perf_counter() - t0:6.1f} s, RSS {_rss_gib():5.2f} GiB] score: {m}",
            flush=True,
        ),
    )
    return time.perf_counter() - t0, len(res.output.customers)


def _counts(path: str) -> tuple[int, int]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids = pq.read_table(path, columns=["customer_id"]).column(0)
    return len(ids), len(pc.unique(ids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-lines", type=int, default=1_000_000)
    ap.add_argument("--score-customers", type=int, default=1_000_000)
    args = ap.parse_args()
    n_train_cust = round(args.train_lines / SHOP_LINES_PER_CUSTOMER)
    train_path = str(
        simulated_lines_path(args.train_lines, seed=1, n_customers=n_train_cust, params=SHOP)
    )
    score_lines = round(args.score_customers * SHOP_LINES_PER_CUSTOMER)
    score_path = str(
        simulated_lines_path(score_lines, seed=2, n_customers=args.score_customers, params=SHOP)
    )
    n_train, c_train = _counts(train_path)
    n_score, c_score = _counts(score_path)
    print(f"train file: {n_train:,} clean order lines, {c_train:,} customers ({train_path})")
    print(f"score file: {n_score:,} clean order lines, {c_score:,} customers ({score_path})")
    with tempfile.TemporaryDirectory(prefix="bench-train-score-") as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        tr = measure("train", run_train_job, train_path, store)
        sc = measure("score", run_score_job, score_path, store, f"{tmp}/out")
    gib = 1024.0
    print(f"bench_train_score: {machine()}")
    print(
        f"{'step':<6} {'lines':>11} {'customers':>10} {'seconds':>8} {'own GiB':>8} "
        f"{'child GiB':>9} {'sum GiB':>8} {'tree GiB':>8}"
    )
    for m, n, c in ((tr, n_train, c_train), (sc, n_score, sc.result[1])):
        print(
            f"{m.label:<6} {n:>11,} {c:>10,} {m.result[0]:>8.1f} {m.peak_rss_mb / gib:>8.2f} "
            f"{m.children_peak_mb / gib:>9.2f} {m.conservative_peak_mb / gib:>8.2f} "
            f"{m.tree_peak_mb / gib:>8.2f}"
        )
    print(
        f"targets: train < 180 s ({tr.result[0]:.0f} s), score < 120 s ({sc.result[0]:.0f} s) "
        f"and < 12 GiB (own + child {sc.conservative_peak_mb / gib:.1f} GiB; sampled tree "
        f"{sc.tree_peak_mb / gib:.1f} GiB)"
    )


if __name__ == "__main__":
    main()
