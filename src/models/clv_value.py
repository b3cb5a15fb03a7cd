"""Discounted customer lifetime value from a purchase model and a spend model, with intervals
from the parameters' sampling uncertainty.

The CLV of a customer over ``horizon_periods`` cash-flow periods of ``period_days`` days is
(Fader, Hardie and Lee 2005b, eq. 2, discrete-time version; the convention of
``lifetimes.GammaGammaFitter.customer_lifetime_value``)::

    CLV = margin * E[Z | x, m] * sum_{k=1..N} E[purchases in period k | x, t_x, T] / (1 + d)**k

where ``E[purchases in period k]`` is the purchase model's
:meth:`~crmkit.models.clv.BetaGeo.expected_purchases_in_window` over
``((k-1) L, k L]`` after the analysis date (``L = period_days / unit_days`` in the model's time
unit), ``E[Z | x, m]`` is the Gamma-Gamma expected spend per purchase
(:meth:`~crmkit.models.clv.GammaGamma.conditional_expected_average_profit`) and ``d`` the
discount rate per period. Each period's cash flow is discounted at the end of the period.

Conventions
-----------
* Customers without repeat purchases (``frequency == 0``) get the Gamma-Gamma population mean
  spend ``p gamma / (q - 1)`` (their own first purchase is not used: Gamma-Gamma is fitted on
  repeat purchases only). If ``q <= 1`` that mean is infinite and :func:`customer_lifetime_value`
  raises.
* ``lifetimes`` measures a "month" as 4.345 weeks (30.415 days) with ``freq="W"``, 30 days with
  ``freq="D"`` and 1 unit with ``freq="M"``; crmkit's default month is 365.25 / 12 = 30.4375
  days. With ``period_days=7 * 4.345, unit_days=7`` (or ``period_days=30, unit_days=1``) crmkit
  reproduces lifetimes' CLV to ~1e-10 (see the tests). lifetimes loops over the periods and
  needs pandas Series; crmkit evaluates every period boundary of every distinct
  ``(frequency, recency, T)`` pattern in one vectorised call.
* CLV is never negative: each period's expected purchases are clipped at 0 (they are
  differences of a non-decreasing function, so this only removes rounding noise).

Uncertainty
-----------
With ``n_draws > 0`` the log-parameters of each model are drawn from their asymptotic normal
distribution ``N(log params_, log_covariance_)`` (the inverse Hessian of the fit), the two
models independently (Gamma-Gamma assumes spend independent of the purchase process), and
every prediction is recomputed for every draw. The ``level`` percentile interval of the draws
is reported for each customer's expected purchases, expected spend and CLV, and for the
totals. These are *confidence* intervals of the expected values given the model (parameter
uncertainty), not prediction intervals of what a customer will actually buy: a customer's
realised purchases scatter around the expectation far more (Poisson noise, dropout), so
per-customer realised values fall outside these intervals often; totals over many customers
are where the intervals are informative. A model whose Hessian is not positive definite (a
degenerate fit) or that was built with ``from_params`` has no covariance: its intervals are
NaN and :attr:`CLVResult.notes` says why.

References
----------
Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005b), "RFM and CLV: using iso-value curves
for customer base analysis", Journal of Marketing Research 42(4), 415-430. Fader, P. S. and
Hardie, B. G. S. (2013), "The Gamma-Gamma model of monetary value",
http://brucehardie.com/notes/025/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from crmkit.errors import DataContractError
from crmkit.models import _clv_math as cm
from crmkit.models.clv import GammaGamma, _purchase_arrays

__all__ = [
    "MONTH_DAYS",
    "CLVResult",
    "customer_lifetime_value",
    "population_mean_spend",
    "sample_params",
]

#: An average month in days (365.25 / 12), crmkit's default cash-flow period.
MONTH_DAYS: float = 365.25 / 12.0


@dataclass
class CLVResult:
    """What :func:`customer_lifetime_value` computed.

    Attributes
    ----------
    customers
        One row per customer (index of the summary): ``expected_purchases`` (over the whole
        horizon), ``expected_spend`` (per purchase), ``clv``; with draws also
        ``expected_purchases_lower/upper``, ``expected_spend_lower/upper``,
        ``clv_lower/upper``.
    expected_purchases_by_period
        Expected purchases in each period, columns ``1..horizon_periods``.
    cash_flows
        Discounted margin per period, columns ``1..horizon_periods``: expected purchases in
        period ``k`` x expected spend x margin / (1 + d)**k. Rows sum to ``clv``.
    totals
        ``expected_purchases``, ``revenue`` (undiscounted expected spend, before margin) and
        ``clv`` summed over customers; with draws also ``*_lower`` / ``*_upper``.
    settings
        The arguments (horizon, period, unit, discount rate, margin, draws, level, seed).
    notes
        Plain-words remarks (e.g. why intervals are missing).
    """

    customers: pd.DataFrame
    expected_purchases_by_period: pd.DataFrame
    cash_flows: pd.DataFrame
    totals: dict[str, float]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def clv(self) -> pd.Series:
        """Per-customer discounted CLV."""
        return self.customers["clv"]


def population_mean_spend(spend_model: GammaGamma) -> float:
    """The Gamma-Gamma population mean spend per transaction ``p gamma / (q - 1)`` (Fader and
    Hardie 2013, eq. 3): the expected spend of a customer with no repeat purchase (``inf``
    when ``q <= 1``)."""
    p, q, gamma = (float(v) for v in spend_model._check_is_fitted())
    return p * gamma / (q - 1.0) if q > 1.0 else math.inf


def sample_params(model: Any, n_draws: int, rng: np.random.Generator) -> np.ndarray | None:
    """Draws of a fitted model's parameters from ``N(log params_, log_covariance_)``.

    Returns
    -------
    ndarray of shape ``(n_draws, n_params)`` (natural parameters, always positive), or
    ``None`` when the model has no usable covariance (``from_params``, or a Hessian that is
    not positive definite).
    """
    theta = model._check_is_fitted()
    cov = getattr(model, "log_covariance_", None)
    if cov is None:
        return None
    cov = cov.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(cov)):
        return None
    cov = 0.5 * (cov + cov.T)
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return None
    z = rng.standard_normal((n_draws, len(theta)))
    return np.exp(np.log(theta)[None, :] + z @ chol.T)


def _check_settings(
    horizon_periods: Any,
    period_days: Any,
    unit_days: Any,
    discount_rate: Any,
    margin: Any,
    n_draws: Any,
    level: Any,
) -> None:
    def number(v: Any) -> bool:
        return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)

    if not (isinstance(horizon_periods, int | np.integer) and horizon_periods >= 1):
        raise ValueError(f"horizon_periods must be an integer >= 1, got {horizon_periods!r}")
    for name, v in (("period_days", period_days), ("unit_days", unit_days)):
        if not (number(v) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if not (number(discount_rate) and math.isfinite(discount_rate) and discount_rate >= 0):
        raise ValueError(f"discount_rate must be a finite number >= 0, got {discount_rate!r}")
    if not (number(margin) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    if not (isinstance(n_draws, int | np.integer) and n_draws >= 0):
        raise ValueError(f"n_draws must be an integer >= 0, got {n_draws!r}")
    if not (number(level) and 0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _patterns(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of one row per distinct combination of ``cols`` and each row's number."""
    if len(cols[0]) == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    _, first, inverse = np.unique(
        np.column_stack(cols), axis=0, return_index=True, return_inverse=True
    )
    return first, inverse.ravel()


def _cumulative(
    model: Any, theta: np.ndarray, x, t_x, T, times: np.ndarray, pairs: tuple | None = None
) -> np.ndarray:
    """``E[purchases in (T, T + times[j]]]`` for each row and boundary, shape ``(n, k)``:
    P(alive) once per row times the expectation given alive, which depends on ``(x, T)``
    only and is evaluated once per distinct pair and boundary (``pairs``: index of one row
    per pair and each row's pair number)."""
    p_alive = model._p_alive(theta, x, t_x, T)
    first, inverse = pairs if pairs is not None else (np.arange(len(x)), np.arange(len(x)))
    xu, Tu = x[first], T[first]
    given = np.zeros((len(xu), len(times)))
    for j, t in enumerate(times):
        if t > 0:
            given[:, j] = model._given_alive(theta, np.full(len(xu), t), xu, Tu)
    return p_alive[:, None] * given[inverse]


def _period_purchases(cum: np.ndarray) -> np.ndarray:
    """Expected purchases per period from cumulative expectations at ``0, L, 2L, ...``."""
    return np.maximum(np.diff(cum, axis=1), 0.0)


def customer_lifetime_value(
    purchase_model: Any,
    spend_model: GammaGamma,
    summary: pd.DataFrame,
    *,
    unit_days: float,
    horizon_periods: int = 12,
    period_days: float = MONTH_DAYS,
    discount_rate: float = 0.01,
    margin: float = 1.0,
    n_draws: int = 0,
    level: float = 0.95,
    seed: int = 0,
) -> CLVResult:
    """Discounted CLV of each customer over ``horizon_periods`` periods of ``period_days``.

    Parameters
    ----------
    purchase_model
        A fitted :class:`~crmkit.models.clv.BetaGeo`, :class:`~crmkit.models.clv.ModifiedBetaGeo`
        or :class:`~crmkit.models.clv.ParetoNBD` (or one from ``from_params``).
    spend_model
        A fitted :class:`~crmkit.models.clv.GammaGamma`.
    summary
        One row per customer with ``frequency``, ``recency``, ``T`` (in the purchase model's
        time unit) and ``monetary_value`` (e.g. :func:`crmkit.features.rfm.rfm_summary`).
    unit_days
        Days per time unit of the summary and model: 7 for ``unit="W"``, 1 for ``"D"``,
        30.4375 for ``"M"`` (:data:`crmkit.features.rfm.UNIT_DAYS`).
    horizon_periods
        Number of cash-flow periods.
    period_days
        Length of a period in days (default an average month, 30.4375).
    discount_rate
        Discount rate per period (e.g. 0.01 a month, about 12.7 % a year).
    margin
        Share of the spend that is profit (1.0: CLV is discounted revenue).
    n_draws
        Parameter draws for the intervals (0: none). See the module docstring.
    level
        Coverage of the percentile intervals.
    seed
        Seed of the parameter draws.

    Returns
    -------
    CLVResult

    Raises
    ------
    DataContractError
        Invalid summary (see :meth:`crmkit.models.clv.BetaGeo.fit`), or an infinite
        population mean spend (Gamma-Gamma ``q <= 1``).
    ValueError
        Invalid settings.

    References
    ----------
    Fader, Hardie and Lee (2005b), "RFM and CLV: using iso-value curves for customer base
    analysis", JMR 42(4), 415-430.
    """
    _check_settings(horizon_periods, period_days, unit_days, discount_rate, margin, n_draws, level)
    theta = purchase_model._check_is_fitted()
    spend_theta = spend_model._check_is_fitted()
    x_all, t_x_all, T_all = _purchase_arrays(summary)
    spend = spend_model.conditional_expected_average_profit(summary).to_numpy(dtype=np.float64)
    if np.any(~np.isfinite(spend)):
        raise DataContractError(
            "the expected spend is infinite: the Gamma-Gamma population mean spend "
            f"p*gamma/(q-1) does not exist (q = {spend_theta[1]:.3g} <= 1), so customers without "
            "repeat purchases have no finite value; refit the spend model with a penalizer or "
            "cap extreme monetary values",
            rule="infinite_spend",
        )
    m_all = np.where(x_all > 0, summary["monetary_value"].to_numpy(dtype=np.float64), 0.0)

    length = float(period_days) / float(unit_days)
    times = length * np.arange(horizon_periods + 1, dtype=np.float64)
    disc = (1.0 + float(discount_rate)) ** -np.arange(1, horizon_periods + 1, dtype=np.float64)

    first, inverse = _patterns(x_all, t_x_all, T_all)
    x, t_x, T = x_all[first], t_x_all[first], T_all[first]
    counts = np.bincount(inverse, minlength=len(first)).astype(np.float64)
    pairs = _patterns(x, T)

    with np.errstate(all="ignore"):
        per_period = _period_purchases(_cumulative(purchase_model, theta, x, t_x, T, times, pairs))
    purchases_rows = per_period[inverse]
    cash = purchases_rows * (spend * float(margin))[:, None] * disc[None, :]
    clv = cash.sum(axis=1)
    total_purchases = purchases_rows.sum(axis=1)

    idx = summary.index
    periods = pd.RangeIndex(1, horizon_periods + 1, name="period")
    customers = pd.DataFrame(
        {"expected_purchases": total_purchases, "expected_spend": spend, "clv": clv}, index=idx
    )
    totals = {
        "expected_purchases": float(total_purchases.sum()),
        "revenue": float(np.sum(total_purchases * spend)),
        "clv": float(clv.sum()),
    }
    notes: list[str] = []
    if n_draws > 0:
        rng = np.random.default_rng(seed)
        draws_p = sample_params(purchase_model, n_draws, rng)
        draws_s = sample_params(spend_model, n_draws, rng)
        names = ("expected_purchases", "expected_spend", "clv")
        if draws_p is None or draws_s is None:
            which = [
                type(m).__name__
                for m, d in ((purchase_model, draws_p), (spend_model, draws_s))
                if d is None
            ]
            notes.append(
                f"no intervals: {', '.join(which)} has no usable parameter covariance (a "
                "degenerate fit whose Hessian is not positive definite, or a model built with "
                "from_params)"
            )
            for n in names:
                customers[f"{n}_lower"] = np.nan
                customers[f"{n}_upper"] = np.nan
            for n in ("expected_purchases", "revenue", "clv"):
                totals[f"{n}_lower"] = totals[f"{n}_upper"] = math.nan
        else:
            _add_intervals(
                purchase_model,
                customers,
                totals,
                draws_p,
                draws_s,
                (x, t_x, T, counts, inverse, pairs),
                (x_all, m_all),
                times,
                disc,
                float(margin),
                float(level),
                notes,
            )
    order = [
        f"{n}{suffix}"
        for n in ("expected_purchases", "expected_spend", "clv")
        for suffix in ("", "_lower", "_upper")
    ]
    customers = customers[[c for c in order if c in customers.columns]]
    settings = {
        "horizon_periods": int(horizon_periods),
        "period_days": float(period_days),
        "unit_days": float(unit_days),
        "discount_rate": float(discount_rate),
        "margin": float(margin),
        "n_draws": int(n_draws),
        "level": float(level),
        "seed": int(seed),
    }
    return CLVResult(
        customers=customers,
        expected_purchases_by_period=pd.DataFrame(purchases_rows, index=idx, columns=periods),
        cash_flows=pd.DataFrame(cash, index=idx, columns=periods),
        totals=totals,
        settings=settings,
        notes=notes,
    )


def _add_intervals(
    purchase_model: Any,
    customers: pd.DataFrame,
    totals: dict[str, float],
    draws_p: np.ndarray,
    draws_s: np.ndarray,
    patterns: tuple[np.ndarray, ...],
    spend_data: tuple[np.ndarray, np.ndarray],
    times: np.ndarray,
    disc: np.ndarray,
    margin: float,
    level: float,
    notes: list[str],
) -> None:
    """Recompute the predictions for every parameter draw and add percentile intervals."""
    x, t_x, T, counts, inverse, pairs = patterns
    x_all, m_all = spend_data
    n_draws = len(draws_p)
    # Spend depends on (x, m) only; purchases on the pattern. Draw-by-draw, float32 storage.
    purch = np.empty((n_draws, len(x)), dtype=np.float32)
    disc_purch = np.empty((n_draws, len(x)), dtype=np.float32)
    spend = np.empty((n_draws, len(x_all)), dtype=np.float32)
    tot = np.empty((n_draws, 3))
    with np.errstate(all="ignore"):
        for i in range(n_draws):
            per = _period_purchases(
                _cumulative(purchase_model, draws_p[i], x, t_x, T, times, pairs)
            )
            purch[i] = per.sum(axis=1)
            disc_purch[i] = per @ disc
            spend[i] = cm.gg_conditional_expected_average_profit(draws_s[i], x_all, m_all)
            rows_p = purch[i][inverse].astype(np.float64)
            rows_spend = spend[i].astype(np.float64)
            tot[i] = (
                float(counts @ purch[i].astype(np.float64)),
                float(rows_p @ rows_spend),
                float(disc_purch[i][inverse].astype(np.float64) @ rows_spend) * margin,
            )
    lo_q, hi_q = 50.0 * (1.0 - level), 50.0 * (1.0 + level)
    bad = int(np.sum(~np.isfinite(tot[:, 1])))
    if bad:
        notes.append(
            f"{bad} of {n_draws} draws of the Gamma-Gamma parameters have q <= 1 (infinite "
            "population mean spend); the upper spend and CLV bounds may be infinite"
        )
    with np.errstate(invalid="ignore"):
        pl, pu = np.percentile(purch, [lo_q, hi_q], axis=0)
        customers["expected_purchases_lower"] = pl.astype(np.float64)[inverse]
        customers["expected_purchases_upper"] = pu.astype(np.float64)[inverse]
        sl, su = np.percentile(spend, [lo_q, hi_q], axis=0)
        customers["expected_spend_lower"] = sl.astype(np.float64)
        customers["expected_spend_upper"] = su.astype(np.float64)
        # CLV per customer and draw, one chunk of customers at a time (bounded memory).
        n = len(x_all)
        cl, cu = np.empty(n), np.empty(n)
        step = max(1, 4_000_000 // max(n_draws, 1))
        for s in range(0, n, step):
            rows = slice(s, min(n, s + step))
            vals = disc_purch[:, inverse[rows]].astype(np.float64) * spend[:, rows] * margin
            cl[rows], cu[rows] = np.percentile(vals, [lo_q, hi_q], axis=0)
        customers["clv_lower"] = cl
        customers["clv_upper"] = cu
        for j, name in enumerate(("expected_purchases", "revenue", "clv")):
            lo, hi = np.percentile(tot[:, j], [lo_q, hi_q])
            totals[f"{name}_lower"] = float(lo)
            totals[f"{name}_upper"] = float(hi)
