"""Benchmark: market-basket rules and recommendation lists at scale, against mlxtend's usual
dense path.

1. **Mining**: ~10M cleaned simulated order lines with a 5,000-product catalogue
   (``simulate_transactions(n_products=5000)``, about 3.9M baskets), encoded into crmkit's
   sparse basket matrix and mined at min support 0.001 (fpgrowth, rules at confidence 0.5).
   Target: under 60 s and 4 GiB peak.
2. **Dense reference**: mlxtend's usual path (``TransactionEncoder`` -> dense one-hot ->
   ``fpgrowth`` / ``apriori``) on the first N baskets for increasing N, each in a fresh process
   capped with ``RLIMIT_AS`` (``--mem-limit-gib``, default 6) and a time limit, beside crmkit on
   the same baskets: the ratio, or the size at which the dense path fails.
3. **Recommendations** for 1M customers (``simulate_transactions(n_customers=1_000_000,
   n_products=5000)``, ~16M lines): ``Recommender.fit`` and ``.recommend`` timed separately.
   Target: the lists in under 60 s.

Inputs are cached in ``benchmarks/.cache/`` (generation is not timed; the Parquet read is not
timed either). Peak RSS is the whole process (interpreter, imports, the data, the step).

    python benchmarks/bench_basket.py [--lines 10000000] [--customers 1000000]
        [--dense-sizes 10000,30000,100000,300000] [--mem-limit-gib 6] [--skip-dense]
        [--skip-recommend]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import CACHE  # noqa: E402
from _harness import Measurement, machine, measure, table  # noqa: E402

N_PRODUCTS = 5_000
MIN_SUPPORT = 0.001
AS_OF = "2023-06-30"


# --------------------------------------------------------------------------------------------
# inputs


def _cached(path: Path, make) -> Path:  # noqa: ANN001
    CACHE.mkdir(exist_ok=True)
    if not path.exists():
        print(f"  generating {path.name} (once; not timed) ...", flush=True)
        frame = make()
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.rename(path)
    return path


def _simulate_clean(n_customers: int, seed: int):
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions
    from crmkit.data.simulate import simulate_transactions

    lines = simulate_transactions(n_customers=n_customers, n_products=N_PRODUCTS, seed=seed).lines
    return clean_lines(load_transactions(lines)).lines


def lines_path(n_lines: int, seed: int = 1) -> Path:
    """Cleaned simulated lines (about ``n_lines``) with a 5,000-product catalogue."""
    from crmkit.data.simulate import customers_for_lines

    path = CACHE / f"basket_lines_{n_lines}_{N_PRODUCTS}p_{seed}.parquet"
    return _cached(path, lambda: _simulate_clean(customers_for_lines(n_lines), seed))


def customers_path(n_customers: int, seed: int = 1) -> Path:
    """Cleaned simulated lines of ``n_customers`` customers, 5,000 products."""
    path = CACHE / f"basket_customers_{n_customers}_{N_PRODUCTS}p_{seed}.parquet"
    return _cached(path, lambda: _simulate_clean(n_customers, seed))


# --------------------------------------------------------------------------------------------
# steps (module-level: each runs in a fresh process)


def _limited(limit_bytes: int, seconds: int, fn, *args):  # noqa: ANN001
    """Run ``fn(*args)`` under an address-space cap and a time limit (this process only)."""
    import resource
    import signal

    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    def _timeout(signum, frame):  # noqa: ANN001, ARG001
        raise TimeoutError(f"over {seconds} s")

    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        return fn(*args)
    finally:
        signal.alarm(0)


def _read_orders(path: str, n_baskets: int | None = None):
    import pandas as pd

    lines = pd.read_parquet(path, columns=["order_id", "product_id"])
    if n_baskets is not None:
        codes, _ = pd.factorize(lines["order_id"])
        lines = lines[codes < n_baskets]
    return lines


def run_crmkit_mining(path: str, n_baskets: int | None = None) -> dict:
    from crmkit.models.rules import AssociationRules, basket_matrix

    lines = _read_orders(path, n_baskets)
    t0 = time.perf_counter()
    bm = basket_matrix(lines)
    t1 = time.perf_counter()
    model = AssociationRules(min_support=MIN_SUPPORT, min_confidence=0.5).fit(bm)
    t2 = time.perf_counter()
    by_len = model.itemsets_["length"].value_counts().sort_index()
    return {
        "encode_s": t1 - t0,
        "mine_s": t2 - t1,
        "seconds": t2 - t0,
        "baskets": bm.n_baskets,
        "items": bm.n_items,
        "nnz": int(bm.matrix.nnz),
        "itemsets": {int(k): int(v) for k, v in by_len.items()},
        "rules": len(model.rules_),
        "itemset_keys": sorted(
            (tuple(s), round(float(v), 12))
            for s, v in zip(model.itemsets_["itemsets"], model.itemsets_["support"], strict=True)
        )
        if n_baskets is not None
        else None,
    }


def run_mlxtend_dense(path: str, n_baskets: int, algorithm: str) -> dict:
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlxtend.frequent_patterns import apriori, fpgrowth
        from mlxtend.preprocessing import TransactionEncoder

    lines = _read_orders(path, n_baskets)
    t0 = time.perf_counter()
    tx = lines.groupby("order_id", sort=False)["product_id"].apply(list).tolist()
    te = TransactionEncoder()
    onehot = pd.DataFrame(te.fit(tx).transform(tx), columns=te.columns_)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if algorithm == "fpgrowth":
            fi = fpgrowth(onehot, min_support=MIN_SUPPORT, use_colnames=True, max_len=10)
        else:
            fi = apriori(onehot, min_support=MIN_SUPPORT, use_colnames=True, max_len=10)
    t2 = time.perf_counter()
    return {
        "encode_s": t1 - t0,
        "mine_s": t2 - t1,
        "seconds": t2 - t0,
        "itemset_keys": sorted(
            (tuple(sorted(s)), round(float(v), 12))
            for s, v in zip(fi["itemsets"], fi["support"], strict=True)
        ),
    }


def run_recommender(path: str) -> dict:
    import pandas as pd

    from crmkit.models.recommend import Recommender

    lines = pd.read_parquet(path)
    t0 = time.perf_counter()
    model = Recommender().fit(lines, AS_OF)
    t1 = time.perf_counter()
    recs = model.recommend()
    t2 = time.perf_counter()
    return {
        "fit_s": t1 - t0,
        "recommend_s": t2 - t1,
        "lines": len(lines),
        "customers": int(recs["customer_id"].nunique()),
        "rows": len(recs),
        "kinds": recs["kind"].value_counts().to_dict(),
    }


# --------------------------------------------------------------------------------------------


def bench_mining(n_lines: int) -> None:
    path = str(lines_path(n_lines))
    m = measure("crmkit encode + mine", run_crmkit_mining, path)
    r = m.result
    print(
        f"\n[1] mining: {n_lines:,} lines -> {r['baskets']:,} baskets x {r['items']:,} products "
        f"({r['nnz']:,} basket-product pairs), min support {MIN_SUPPORT}; {machine()}"
    )
    rows = [
        Measurement("encode (sparse basket matrix)", r["encode_s"], m.peak_rss_mb),
        Measurement("mine itemsets + rules", r["mine_s"], m.peak_rss_mb),
        Measurement("total", r["seconds"], m.peak_rss_mb),
    ]
    print(table(rows, {"itemsets by length": str(r["itemsets"]), "rules (conf 0.5)": r["rules"]}))
    ok = r["seconds"] < 60 and m.peak_rss_mb < 4 * 1024
    print(f"target < 60 s and < 4 GiB peak: {'met' if ok else 'MISSED'}")


def bench_dense(n_lines: int, sizes: list[int], limit_gib: float, seconds: int) -> None:
    path = str(lines_path(n_lines))
    limit = int(limit_gib * 2**30)
    print(
        f"\n[2] mlxtend's dense path (TransactionEncoder + fpgrowth / apriori) vs crmkit on the "
        f"first N baskets, min support {MIN_SUPPORT}; dense runs capped at {limit_gib:g} GiB "
        f"address space and {seconds} s"
    )
    head = f"{'baskets':>9}  {'crmkit s':>9} {'MB':>6}  {'algorithm':>9}  {'dense s':>9} {'MB':>6}"
    print(head + f"  {'ratio':>7}  same itemsets")
    failed = {"fpgrowth": False, "apriori": False}
    for n in sizes:
        ours = measure(f"crmkit {n}", run_crmkit_mining, path, n)
        for algo in ("fpgrowth", "apriori"):
            if failed[algo]:
                continue
            cell = f"{n:>9,}  {ours.result['seconds']:>9.2f} {ours.peak_rss_mb:>6.0f}  {algo:>9}"
            try:
                ref = measure(
                    f"{algo} {n}", _limited, limit, seconds, run_mlxtend_dense, path, n, algo
                )
            except (RuntimeError, EOFError) as exc:
                failed[algo] = True
                print(f"{cell}  FAILED: {str(exc).splitlines()[0][:90]}")
                continue
            same = ref.result["itemset_keys"] == ours.result["itemset_keys"]
            ratio = ref.result["seconds"] / max(ours.result["seconds"], 1e-9)
            print(
                f"{cell}  {ref.result['seconds']:>9.2f} {ref.peak_rss_mb:>6.0f}  {ratio:>6.1f}x"
                f"  {same}"
            )


def bench_recommend(n_customers: int) -> None:
    path = str(customers_path(n_customers))
    m = measure("recommend", run_recommender, path)
    r = m.result
    print(
        f"\n[3] recommendations: {r['customers']:,} customers, {r['lines']:,} lines, "
        f"{N_PRODUCTS:,} products -> {r['rows']:,} rows {r['kinds']}"
    )
    rows = [
        Measurement("Recommender.fit (rules, up-sell, calibration)", r["fit_s"], m.peak_rss_mb),
        Measurement("Recommender.recommend (lists + reasons)", r["recommend_s"], m.peak_rss_mb),
        Measurement("total", r["fit_s"] + r["recommend_s"], m.peak_rss_mb),
    ]
    print(table(rows))
    print(f"target: lists in < 60 s: {'met' if r['recommend_s'] < 60 else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--dense-sizes", default="10000,30000,100000,300000")
    ap.add_argument("--mem-limit-gib", type=float, default=6.0)
    ap.add_argument("--dense-seconds", type=int, default=300)
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--skip-recommend", action="store_true")
    args = ap.parse_args()
    bench_mining(args.lines)
    if not args.skip_dense:
        sizes = [int(x) for x in args.dense_sizes.split(",") if x]
        bench_dense(args.lines, sizes, args.mem_limit_gib, args.dense_seconds)
    if not args.skip_recommend:
        bench_recommend(args.customers)


if __name__ == "__main__":
    main()
