"""Benchmark inputs: simulated order lines of a given size, cached as Parquet in
``benchmarks/.cache/`` (git-ignored) so repeated runs do not pay for generation."""

from __future__ import annotations

from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def simulated_lines_path(n_lines: int, seed: int = 1, clean: bool = True) -> Path:
    """Path of a Parquet file with about ``n_lines`` simulated order lines (cleaned when
    ``clean``), generating it on first use."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"sim_{n_lines}_{seed}{'_clean' if clean else ''}.parquet"
    if not path.exists():
        from crmkit.data.clean import clean_lines
        from crmkit.data.io import load_transactions
        from crmkit.data.simulate import customers_for_lines, simulate_transactions

        lines = simulate_transactions(n_customers=customers_for_lines(n_lines), seed=seed).lines
        if clean:
            lines = clean_lines(load_transactions(lines)).lines
        tmp = path.with_suffix(".tmp")
        lines.to_parquet(tmp, index=False)
        tmp.rename(path)
    return path
