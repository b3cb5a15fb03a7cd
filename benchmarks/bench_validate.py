"""Benchmark: load + validate + clean ~1M simulated order lines from CSV and from Parquet.

Reference, run side by side: the plain pandas notebook recipe (``read_csv`` with a date
column, drop missing customers, 'C' invoices and non-positive quantity / price), which does
less (no recognition, no date-format inference, no report). The ratio shows what crmkit's
checks cost on top of it.

    python benchmarks/bench_validate.py [--lines 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine, measure, table  # noqa: E402


def make_input(n_lines: int, folder: str) -> tuple[str, str, int]:
    from crmkit.data.simulate import customers_for_lines, simulate_transactions

    lines = simulate_transactions(n_customers=customers_for_lines(n_lines), seed=1).lines
    csv = str(Path(folder) / "lines.csv")
    pq = str(Path(folder) / "lines.parquet")
    lines.to_csv(csv, index=False, date_format="%Y-%m-%d %H:%M:%S")
    lines.to_parquet(pq, index=False)
    return csv, pq, len(lines)


def crmkit_validate(path: str) -> dict:
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions

    res = clean_lines(load_transactions(path))
    return {"rows_out": res.report.totals["rows_out"]}


def pandas_recipe(path: str) -> dict:
    import pandas as pd

    df = pd.read_csv(
        path,
        dtype={"customer_id": str, "order_id": str, "product_id": str},
        parse_dates=["order_ts"],
    )
    df = df[df["customer_id"].notna() & ~df["order_id"].str.startswith("C")]
    df = df[(df["quantity"] > 0) & (df["unit_price"] > 0)]
    df = df.assign(amount=df["quantity"] * df["unit_price"])
    return {"rows_out": len(df)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gen = measure("simulate input", make_input, args.lines, tmp)
        csv, pq, n = gen.result
        rows = [
            measure("crmkit load+validate+clean (CSV)", crmkit_validate, csv),
            measure("pandas read_csv + usual filters (CSV)", pandas_recipe, csv),
            measure("crmkit load+validate+clean (Parquet)", crmkit_validate, pq),
        ]
    print(f"bench_validate: {n:,} order lines; {machine()}")
    print(
        table(
            rows,
            {
                "ratio crmkit / pandas recipe (CSV, time)": f"{rows[0].seconds / rows[1].seconds:.2f}x",
                "throughput crmkit CSV": f"{n / rows[0].seconds:,.0f} lines/s",
            },
        )
    )


if __name__ == "__main__":
    main()
