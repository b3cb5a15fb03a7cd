"""Benchmark: BG/NBD fit and predictions on 1M customers, crmkit vs lifetimes.

The 1M-customer summary is sampled directly from the BG/NBD process in numpy (not through
the order-line simulator, which would mean ~16M lines): ``lambda ~ Gamma(r, alpha)``,
``p ~ Beta(a, b)``, first purchase on a uniform day of a 26-week acquisition window, ages ``T``
in whole days / 7 up to a 78-week horizon; repeat purchases ``x = min(N, K)`` with
``N ~ Poisson(lambda T)`` (immortal arrivals) and ``K ~ Geometric(p)`` (the purchase after which
the customer drops out), ``t_x = T * U_(x)`` with ``U_(x) ~ Beta(x, N - x + 1)`` the x-th of
``N`` sorted uniform arrival times, floored to whole days as in real day-level data. True
parameters are the simulator's defaults (r, alpha, a, b) = (0.75, 4, 0.8, 2.5).

Each step runs in a fresh process (``_harness.measure``); the timed part excludes loading
the summary from disk and follows a warm-up call on 2,000 customers (lazy imports and first-call
costs, for both libraries). Wall and CPU time (all threads) are both reported: on a shared
machine wall time swings with other processes, CPU time much less. lifetimes' ``BetaGeoFitter().fit(frequency, recency, T)`` is its plain
call (one row per customer, as its documentation shows).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_clv.py [--customers 1000000] [--no-lifetimes]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine, measure, table  # noqa: E402

TRUE = {"r": 0.75, "alpha": 4.0, "a": 0.8, "b": 2.5}


def sample_bgnbd_summary(n: int, seed: int = 0) -> dict:
    """``frequency, recency, T`` (weeks) of ``n`` customers drawn from the BG/NBD process."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lam = rng.gamma(TRUE["r"], 1.0 / TRUE["alpha"], n)
    p = rng.beta(TRUE["a"], TRUE["b"], n)
    T_days = 546 - rng.integers(0, 182, n)
    T = T_days / 7.0
    N = rng.poisson(lam * T)
    K = rng.geometric(p)
    x = np.minimum(N, K)
    u = rng.beta(np.maximum(x, 1), np.maximum(N - x + 1, 1))
    t_x = np.where(x > 0, np.minimum(np.floor(T * u * 7.0), T_days) / 7.0, 0.0)
    return {"frequency": x.astype(np.float64), "recency": t_x, "T": T}


def make_input(n: int, folder: str) -> str:
    import numpy as np

    path = str(Path(folder) / "summary.npz")
    np.savez(path, **sample_bgnbd_summary(n))
    return path


def _load(path: str):
    import numpy as np
    import pandas as pd

    with np.load(path) as z:
        return pd.DataFrame({k: z[k] for k in ("frequency", "recency", "T")})


def _timed(fn):
    """Wall and CPU seconds (all threads) of ``fn()``, and its result."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def crmkit_fit(path: str) -> dict:
    from crmkit.models.clv import BetaGeo

    summary = _load(path)
    BetaGeo().fit(summary.iloc[:2000])  # warm-up: lazy imports and first-call costs
    secs, cpu, model = _timed(lambda: BetaGeo().fit(summary))
    return {
        "seconds": secs,
        "cpu": cpu,
        "params": model.params_.to_dict(),
        "patterns": model.n_patterns_,
        "convergence": str(model.convergence_).splitlines()[0],
    }


def crmkit_predict(path: str) -> dict:
    from crmkit.models.clv import BetaGeo

    summary = _load(path)
    model = BetaGeo.from_params(TRUE)
    model.conditional_expected_number_of_purchases_up_to_time(52.0, summary.iloc[:2000])  # warm-up
    secs, cpu, (p_alive, expected) = _timed(
        lambda: (
            model.conditional_probability_alive(summary),
            model.conditional_expected_number_of_purchases_up_to_time(52.0, summary),
        )
    )
    return {
        "seconds": secs,
        "cpu": cpu,
        "mean_p_alive": float(p_alive.mean()),
        "mean_e52": float(expected.mean()),
    }


def lifetimes_fit(path: str) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter

    summary = _load(path)
    small = summary.iloc[:2000]
    BetaGeoFitter().fit(small["frequency"], small["recency"], small["T"])  # warm-up
    secs, cpu, model = _timed(
        lambda: BetaGeoFitter().fit(summary["frequency"], summary["recency"], summary["T"])
    )
    return {"seconds": secs, "cpu": cpu, "params": {k: float(v) for k, v in model.params_.items()}}


def lifetimes_predict(path: str) -> dict:
    import warnings

    import pandas as pd

    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter

    summary = _load(path)
    model = BetaGeoFitter()
    model.params_ = pd.Series(TRUE)
    x, t_x, T = (summary[c].to_numpy() for c in ("frequency", "recency", "T"))
    model.conditional_expected_number_of_purchases_up_to_time(52.0, x[:2000], t_x[:2000], T[:2000])
    secs, cpu, (p_alive, expected) = _timed(
        lambda: (
            model.conditional_probability_alive(x, t_x, T),
            model.conditional_expected_number_of_purchases_up_to_time(52.0, x, t_x, T),
        )
    )
    return {
        "seconds": secs,
        "cpu": cpu,
        "mean_p_alive": float(p_alive.mean()),
        "mean_e52": float(expected.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--no-lifetimes", action="store_true", help="skip the (slow) lifetimes runs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = measure("sample summary", make_input, args.customers, tmp).result
        fit = measure("crmkit BetaGeo.fit", crmkit_fit, path)
        pred = measure("crmkit P(alive) + E[N(52)]", crmkit_predict, path)
        rows = [fit, pred]
        if not args.no_lifetimes:
            lt_fit = measure("lifetimes BetaGeoFitter.fit", lifetimes_fit, path)
            lt_pred = measure("lifetimes P(alive) + E[N(52)]", lifetimes_predict, path)
            rows += [lt_fit, lt_pred]
    # Report the timed section of each child (excludes imports and loading the summary).
    for m in rows:
        m.seconds = m.result["seconds"]
    extra = {
        "CPU seconds (all threads)": ", ".join(f"{m.label}: {m.result['cpu']:.2f}" for m in rows),
        "distinct (frequency, recency, T) patterns": f"{fit.result['patterns']:,}",
        "crmkit params": ", ".join(f"{k}={v:.4f}" for k, v in fit.result["params"].items()),
        "true params": ", ".join(f"{k}={v:g}" for k, v in TRUE.items()),
        "crmkit convergence": fit.result["convergence"],
        "fit target < 5 s": "met" if fit.seconds < 5 else "MISSED",
        "predict target < 5 s": "met" if pred.seconds < 5 else "MISSED",
    }
    if not args.no_lifetimes:
        rel = max(abs(fit.result["params"][k] / lt_fit.result["params"][k] - 1) for k in TRUE)
        ratio = lt_fit.seconds / fit.seconds
        extra["lifetimes params"] = ", ".join(
            f"{k}={v:.4f}" for k, v in lt_fit.result["params"].items()
        )
        extra["max relative parameter difference"] = f"{rel:.1e}"
        extra["fit speed-up crmkit vs lifetimes"] = (
            f"{ratio:.1f}x wall (target >= 20x: {'met' if ratio >= 20 else 'MISSED'}), "
            f"{lt_fit.result['cpu'] / fit.result['cpu']:.1f}x CPU"
        )
        extra["predict speed-up crmkit vs lifetimes"] = (
            f"{lt_pred.seconds / pred.seconds:.1f}x wall, "
            f"{lt_pred.result['cpu'] / pred.result['cpu']:.1f}x CPU"
        )
    extra["load average at the end (1 min)"] = f"{os.getloadavg()[0]:.2f}"
    print(f"bench_clv: {args.customers:,} customers; {machine()}")
    print(table(rows, extra))


if __name__ == "__main__":
    main()
