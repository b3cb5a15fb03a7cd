"""Benchmark inputs: simulated order lines of a given size, cached as Parquet in
``benchmarks/.cache/`` (git-ignored) so repeated runs do not pay for generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CACHE = Path(__file__).resolve().parent / ".cache"

#: A shop that keeps acquiring customers up to the analysis date, with data ending there:
#: every line of the file is on or before :data:`SHOP_AS_OF`, about 10 lines per customer.
SHOP = {"acquisition_weeks": 78.0, "end": "2023-07-01", "price_level": 9.5}
SHOP_AS_OF = "2023-07-01"
SHOP_LINES_PER_CUSTOMER = 10.0


def simulated_lines_path(
    n_lines: int,
    seed: int = 1,
    clean: bool = True,
    *,
    n_customers: int | None = None,
    params: dict[str, Any] | None = None,
) -> Path:
    """Path of a Parquet file with simulated order lines (cleaned when ``clean``), generating
    it on first use.

    By default about ``n_lines`` lines with the simulator's default shop
    (``customers_for_lines``). ``n_customers`` fixes the number of customers instead, and
    ``params`` overrides :class:`crmkit.data.simulate.SimulationParams` fields (e.g.
    :data:`SHOP`); both are part of the cache key.
    """
    CACHE.mkdir(exist_ok=True)
    key = "" if n_customers is None else f"_c{n_customers}"
    key += "".join(f"_{k}{v}" for k, v in sorted((params or {}).items()))
    path = CACHE / f"sim_{n_lines}_{seed}{key}{'_clean' if clean else ''}.parquet"
    if not path.exists():
        from crmkit.data.clean import clean_lines
        from crmkit.data.io import load_transactions
        from crmkit.data.simulate import customers_for_lines, simulate_transactions

        n = n_customers if n_customers is not None else customers_for_lines(n_lines)
        lines = simulate_transactions(n_customers=n, seed=seed, **(params or {})).lines
        if clean:
            lines = clean_lines(load_transactions(lines)).lines
        tmp = path.with_suffix(".tmp")
        lines.to_parquet(tmp, index=False)
        tmp.rename(path)
    return path
