"""Probabilistic customer-lifetime models: purchase counts (BG/NBD, MBG/NBD, Pareto/NBD) and
spend per purchase (Gamma-Gamma), fitted by maximum likelihood.

All four estimators follow scikit-learn conventions: parameters are keywords of ``__init__``,
data only enters :meth:`fit`, which returns ``self``; fitted state ends in ``_``. They take
the per-customer summary of :func:`crmkit.features.rfm.rfm_summary` - columns ``frequency``
(repeat purchases ``x``), ``recency`` (age at the last purchase ``t_x``), ``T`` (age at the
analysis date) and, for :class:`GammaGamma`, ``monetary_value`` - in one time unit; every
time argument and result is in that unit.

Fitting
-------
The log-likelihood is crmkit's own, vectorised and in log space (``gammaln``, ``betaln``,
softplus / ``logaddexp``; the Pareto/NBD hypergeometric term as a tanh-sinh integral), with
exact gradients (:mod:`crmkit.models._clv_math`) and, for the (M)BG/NBD, an exact Hessian.
Customers with equal ``(frequency, recency, T)`` are always collapsed into one weighted
pattern first (and terms that depend on ``x`` or ``T`` alone are summed once per value).
The mean negative log-likelihood is minimised over log-parameters with L-BFGS-B from up to
``n_starts`` starting points (stopping once two agree), with a Nelder-Mead restart as
fallback, then refined by Newton steps, so estimates are reproducible to ~1e-10. Above 50,000
patterns the starts run on a weighted random thinning of ~20,000 patterns and only the best
is refined on all of them: a 1M-customer BG/NBD fit takes ~0.4 s
(``benchmarks/bench_clv.py``).

If no start converges, the penalizer is raised step by step (``escalate_penalizer``) and the
fit says so in ``convergence_.warnings``; if that fails too, :class:`ConvergenceError`
reports the gradient norm, iterations, the parameter that ran away and a likely cause in the
data. A fit that ends in a degenerate corner of the parameter space (e.g. BG/NBD ``a -> 0``
with ``b`` huge: "nobody ever drops out"), including one the optimiser can only approach
along a flat ridge or up to the search bound, is accepted with plain-words
``convergence_.warnings`` and a :class:`DegenerateFitWarning`.

``standard_errors_`` come from the inverse Hessian of the (penalised) negative
log-likelihood at the optimum, in the natural parameters (analytic for the (M)BG/NBD, central
differences of the exact gradient otherwise); ``confidence_intervals_`` are 95 % Wald
intervals on the log scale (always positive).

What lifetimes does differently
-------------------------------
``lifetimes`` (the reference in the tests, never imported here) evaluates every customer
row, with autograd and BFGS from a single start (BG/NBD, MBG/NBD, Gamma-Gamma) or unseeded
Nelder-Mead with a loose tolerance and no standard errors (Pareto/NBD, whose ``hyp2f1`` terms
can overflow); it raises a bare ``ConvergenceError`` without diagnosis, says nothing about
degenerate fits (on Online Retail it ends near ``a ~ 3e-7, b ~ 2e4`` and either returns
that or raises its bare error about "precision loss", depending on the run), leaves
filtering repeat buyers for Gamma-Gamma to the user and calls its ``gamma`` ``v``, and
importing it silences every ``FutureWarning`` in the process. Its confidence intervals are
symmetric (they can go negative). Its penalizer is the same as crmkit's (L2 on the
parameters with time measured in units of the largest ``T``). crmkit's log-likelihoods and
predictions agree with lifetimes' to 1e-10 and its estimates to ~1e-6 (see the tests).

Extending
---------
Discounted CLV, prediction intervals and backtests can be built on the public pieces:
:meth:`expected_purchases_in_window` (cash-flow periods), ``covariance_`` (parameter
uncertainty, e.g. sampling log-parameters from ``N(log params_, log_covariance_)``),
:meth:`from_params` (a model with given parameters, e.g. each draw) and :meth:`score`
(holdout log-likelihood); :meth:`to_dict` gives JSON-friendly results for tracking.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from crmkit.errors import CrmkitError, DataContractError
from crmkit.models import _clv_math as cm

__all__ = [
    "BetaGeo",
    "ModifiedBetaGeo",
    "ParetoNBD",
    "GammaGamma",
    "Convergence",
    "ConvergenceError",
    "DegenerateFitWarning",
    "SpendCorrelationWarning",
    "NotFittedError",
    "PURCHASE_COLUMNS",
    "SPEND_COLUMNS",
]

#: Columns a purchase model needs in its summary frame.
PURCHASE_COLUMNS: tuple[str, ...] = ("frequency", "recency", "T")
#: Columns :class:`GammaGamma` needs.
SPEND_COLUMNS: tuple[str, ...] = ("frequency", "monetary_value")

#: Penalizers tried in turn when a fit does not converge (``escalate_penalizer=True``).
_PENALIZER_LADDER: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
#: Log-parameters are bounded to ``[-_LOG_BOUND, _LOG_BOUND]`` (times the data scale for time
#: and money parameters): beyond 1e8 a parameter has run away and the fit is degenerate.
_LOG_BOUND = math.log(1e8)
_Z95 = 1.959963984540054
#: Above this many distinct patterns, starting points are explored on a weighted random
#: thinning of about ``_EXPLORE_PATTERNS`` patterns and only the best is refined on all.
_EXPLORE_MAX_PATTERNS = 50_000
_EXPLORE_PATTERNS = 20_000


class DegenerateFitWarning(UserWarning):
    """The fit converged to a corner of the parameter space (or needed a penalizer to
    converge); ``convergence_.warnings`` says what it means in plain words."""


class SpendCorrelationWarning(UserWarning):
    """Gamma-Gamma's independence assumption looks violated: spend per transaction is
    correlated with the number of transactions among repeat buyers."""


class NotFittedError(CrmkitError, ValueError, AttributeError):
    """A prediction method was called before :meth:`fit`."""


@dataclass
class Convergence:
    """How a fit went.

    Attributes
    ----------
    success
        Whether the fit was accepted: the gradient tolerance was reached, or - at a degenerate
        corner the optimiser cannot reach - several starts ended on the same log-likelihood
        along a flat ridge (then ``warnings`` says so and ``gradient_norm`` may exceed ``tol``).
    iterations
        Optimiser iterations of the retained solution (L-BFGS-B + fallback + Newton steps).
    gradient_norm
        Largest absolute projected gradient of the mean negative log-likelihood with respect
        to the log-parameters, at the solution.
    message
        The optimiser's message.
    warnings
        Plain-words warnings (degenerate corner, penalizer escalation, spend correlation, ...).
    optimizer
        Optimisation path of the retained solution.
    n_starts
        Starting points tried.
    penalizer
        Penalizer of the retained fit (larger than requested after an escalation).
    """

    success: bool
    iterations: int
    gradient_norm: float
    message: str
    warnings: list[str] = field(default_factory=list)
    optimizer: str = "L-BFGS-B"
    n_starts: int = 0
    penalizer: float = 0.0

    def __str__(self) -> str:
        state = "converged" if self.success else "did NOT converge"
        text = (
            f"{state} after {self.iterations} iterations ({self.optimizer}, {self.n_starts} "
            f"start(s), penalizer {self.penalizer:g}); gradient norm {self.gradient_norm:.2e}; "
            f"{self.message}"
        )
        for w in self.warnings:
            text += f"\n  warning: {w}"
        return text


class ConvergenceError(CrmkitError, RuntimeError):
    """A model could not be fitted.

    Attributes
    ----------
    report
        The :class:`Convergence` of the best attempt.
    runaway
        Name of the parameter that ran away (``None`` if none did).
    data_cause
        The most likely cause in the data, in plain words.
    """

    def __init__(
        self, message: str, *, report: Convergence, runaway: str | None, data_cause: str
    ) -> None:
        self.report = report
        self.runaway = runaway
        self.data_cause = data_cause
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _offending(index: pd.Index, mask: np.ndarray, describe: Callable[[int], str]) -> list:
    pos = np.flatnonzero(mask)
    return [(int(i) + 1, f"customer {index[i]!r}: {describe(int(i))}") for i in pos[:20]]


def _numeric_columns(summary: Any, columns: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    if not isinstance(summary, pd.DataFrame):
        raise DataContractError(
            f"{what} must be a pandas DataFrame with columns {list(columns)} (the output of "
            f"crmkit.features.rfm.rfm_summary), got {type(summary).__name__}",
            rule="summary_frame",
        )
    missing = [c for c in columns if c not in summary.columns]
    if missing:
        hint = "pass the output of crmkit.features.rfm.rfm_summary"
        if any(f"{c}_cal" in summary.columns for c in missing):
            hint = (
                "for calibration_holdout_summary output use the calibration columns: "
                "summary.rename(columns=lambda c: c.removesuffix('_cal'))"
            )
        raise DataContractError(
            f"{what} lacks column(s) {missing}",
            column=missing[0],
            rule="required_column",
            hint=hint,
        )
    out = {}
    for c in columns:
        col = summary[c]
        if not (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
            raise DataContractError(
                f"column '{c}' must be numeric, got dtype {col.dtype}", column=c, rule="numeric"
            )
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataContractError(
                f"{int(bad.sum())} value(s) of '{c}' are missing or infinite",
                column=c,
                rule="finite_values",
                rows=_offending(summary.index, bad, lambda i, v=values, c=c: f"{c}={v[i]!r}"),
                hint="drop or fix these customers before fitting/predicting",
            )
        out[c] = values
    return out


def _purchase_arrays(summary: Any, what: str = "summary") -> tuple[np.ndarray, ...]:
    """Validated ``frequency, recency, T`` arrays of a summary frame."""
    cols = _numeric_columns(summary, PURCHASE_COLUMNS, what)
    x, t_x, T = cols["frequency"], cols["recency"], cols["T"]
    idx = summary.index
    bad = (x < 0) | (x != np.round(x))
    if bad.any():
        raise DataContractError(
            "frequency (number of repeat purchases) must be a whole number >= 0",
            column="frequency",
            rule="frequency_nonnegative_integer",
            rows=_offending(idx, bad, lambda i: f"frequency={x[i]!r}"),
        )
    for name, v in (("recency", t_x), ("T", T)):
        bad = v < 0
        if bad.any():
            raise DataContractError(
                f"{name} must be >= 0 (ages since the first purchase)",
                column=name,
                rule="nonnegative",
                rows=_offending(idx, bad, lambda i, v=v, name=name: f"{name}={v[i]!r}"),
            )
    bad = t_x > T * (1.0 + 1e-12) + 1e-12
    if bad.any():
        raise DataContractError(
            "recency (age at the last purchase) must not exceed T (age at the analysis date)",
            column="recency",
            rule="recency_le_T",
            rows=_offending(idx, bad, lambda i: f"recency={t_x[i]!r} > T={T[i]!r}"),
            hint="were recency and T computed at the same analysis date and in the same unit?",
        )
    bad = (x == 0) & (t_x != 0)
    if bad.any():
        raise DataContractError(
            "recency must be 0 for customers without repeat purchases (frequency 0)",
            column="recency",
            rule="recency_without_repeat",
            rows=_offending(idx, bad, lambda i: f"frequency=0, recency={t_x[i]!r}"),
        )
    return x, np.minimum(t_x, T), T


def _weights_array(weights: Any, n: int, index: pd.Index) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    if isinstance(weights, pd.Series) and not weights.index.equals(index):
        raise DataContractError("weights must have the same index as the summary", rule="weights")
    w = np.asarray(weights, dtype=np.float64).ravel()
    if len(w) != n:
        raise DataContractError(f"weights has {len(w)} values for {n} customers", rule="weights")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        raise DataContractError(
            "weights must be finite and >= 0",
            rule="weights",
            rows=_offending(index, bad, lambda i: f"weight={w[i]!r}"),
        )
    if not w.sum() > 0:
        raise DataContractError("weights sum to 0", rule="weights")
    return w


def _check_fit_size(n_weight: float, n_patterns: int, n_repeat: float, what: str) -> None:
    if n_weight == 0:
        raise DataContractError(f"cannot fit on an empty {what}", rule="empty_summary")
    if n_weight < 2:
        raise DataContractError(
            f"cannot fit a population model on {n_weight:g} customer(s); it needs many customers",
            rule="too_few_customers",
        )
    if n_repeat == 0:
        raise DataContractError(
            "no customer made a repeat purchase (frequency is 0 everywhere): the data say "
            "nothing about the purchase rate or dropout",
            column="frequency",
            rule="no_repeat_buyers",
            hint="use a longer calibration period, or check the customer ids and cleaning",
        )
    if n_patterns < 2:
        raise DataContractError(
            "all customers are identical (one distinct frequency/recency/T pattern): the "
            "model parameters are not identifiable",
            rule="identical_customers",
        )


def _time_arg(value: Any, name: str) -> np.ndarray:
    t = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise DataContractError(
            f"{name} must be finite and >= 0 (in the time unit of the summary), got {value!r}",
            rule="time_horizon",
        )
    return t


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


@dataclass
class _Attempt:
    u: np.ndarray
    f: float
    g: np.ndarray
    pg: float
    nit: int
    message: str
    path: str
    u0: np.ndarray
    hessian: np.ndarray | None = None  # of the mean objective in log-parameters, near u
    ridge_note: str | None = None


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run BLAS on one thread for the duration of a fit.

    L-BFGS-B makes a few tiny BLAS calls per iteration; with OpenBLAS' threads they cost
    milliseconds each on a busy machine (thread hand-over) and dominated a 1M-customer fit
    (measured: 0.65 s -> 0.33 s). The likelihoods themselves are element-wise numpy and
    single-threaded anyway. threadpoolctl comes with scikit-learn; without it, nothing changes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn (a dependency) requires it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _projected_grad(u: np.ndarray, g: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
    pg = g.copy()
    pg[(u <= lb + 1e-12) & (g > 0)] = 0.0
    pg[(u >= ub - 1e-12) & (g < 0)] = 0.0
    return pg


def _num_hessian(fun: Callable, u: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Hessian by central differences of the exact gradient (2k gradient evaluations)."""
    k = len(u)
    H = np.empty((k, k))
    for j in range(k):
        e = np.zeros(k)
        e[j] = eps
        H[:, j] = (fun(u + e)[1] - fun(u - e)[1]) / (2 * eps)
    return 0.5 * (H + H.T)


def _newton_polish(fun, hess, u, f, g, lb, ub, *, fgh=None, H0=None, steps: int = 10):
    """Damped Newton steps on the free (not at a bound) log-parameters.

    With ``fgh`` (value, gradient and analytic Hessian in one pass) every trial point comes
    with its Hessian. Otherwise ``hess(u)`` (finite differences) serves several steps and is
    refreshed only when a step gains less than a factor 10, at most three times. Returns the
    point, its value and gradient, the number of steps and the Hessian at (or next to) the
    point (``None`` if none was computed), which is reused for the standard errors. ``H0``
    (e.g. the Hessian on a thinning of the data) serves the first step.
    """
    n = 0
    free = (u > lb + 1e-9) & (u < ub - 1e-9)
    if not free.any():
        return u, f, g, n, None
    cheap = fgh is not None
    H = H0 if H0 is not None else (fgh(u)[2] if cheap else None)
    exact = H0 is None and H is not None  # H is this data's Hessian (not H0's stand-in)
    chol, n_hess = None, 0
    for _ in range(steps):
        gnorm = np.max(np.abs(g[free]))
        if gnorm < 1e-13:
            break
        if chol is None:
            if H is None:
                if n_hess >= 3:
                    break
                H = hess(u)
                n_hess += 1
                exact = True
            try:
                chol = np.linalg.cholesky(H[np.ix_(free, free)])
            except np.linalg.LinAlgError:
                if exact:
                    break
                H, exact = None, True  # the stand-in failed: use this data's Hessian
                continue
        step = -np.linalg.solve(chol.T, np.linalg.solve(chol, g[free]))
        big = np.max(np.abs(step))
        if big > 2.0:
            step *= 2.0 / big
        accepted = False
        for damp in (1.0, 0.5, 0.25, 0.1):
            un = u.copy()
            un[free] = np.clip(u[free] + damp * step, lb[free], ub[free])
            if cheap:
                fn, gn, Hn = fgh(un)
            else:
                (fn, gn), Hn = fun(un), None
            if not (np.isfinite(fn) and np.all(np.isfinite(gn))):
                continue
            descent = fn <= f + 1e-4 * damp * float(g[free] @ step)
            flat = abs(fn - f) <= 1e-14 * max(1.0, abs(f))  # differences at rounding level
            if descent or (flat and np.max(np.abs(gn[free])) < gnorm):
                gain = gnorm / max(np.max(np.abs(gn[free])), 1e-300)
                u, f, g = un, fn, gn
                n += 1
                accepted = True
                if cheap:
                    H, chol, exact = Hn, None, True
                elif gain < 10.0 or not exact:
                    H, chol = None, None  # slow progress (or a stand-in): refresh the Hessian
                break
        if not accepted:
            if not cheap and H is not None and n_hess < 3:
                H, chol = None, None
                continue
            break
    return u, f, g, n, (H if exact else None)


# --------------------------------------------------------------------------------------------
# Base estimator
# --------------------------------------------------------------------------------------------


class _ClvModel:
    """Shared fitting machinery (not public)."""

    _param_names: ClassVar[tuple[str, ...]] = ()
    _model_name: ClassVar[str] = ""
    _aggregate: ClassVar[bool] = True  # collapse equal rows (tests switch it off to compare)

    # ---- scikit-learn style parameter handling ----------------------------------------------

    @classmethod
    def _init_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (scikit-learn API; ``sklearn.clone`` works)."""
        return {name: getattr(self, name) for name in self._init_names()}

    def set_params(self, **params: Any) -> _ClvModel:
        """Set constructor parameters; returns ``self``."""
        valid = set(self._init_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"invalid parameter {k!r} for {type(self).__name__}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        parts = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if sig.parameters[k].default is inspect.Parameter.empty
            or v != sig.parameters[k].default
        ]
        return f"{type(self).__name__}({', '.join(parts)})"

    def _check_settings(self) -> None:
        if not (isinstance(self.penalizer, int | float) and self.penalizer >= 0):
            raise ValueError(f"penalizer must be a number >= 0, got {self.penalizer!r}")
        if not (isinstance(self.n_starts, int | np.integer) and self.n_starts >= 1):
            raise ValueError(f"n_starts must be an integer >= 1, got {self.n_starts!r}")
        if not (isinstance(self.max_iter, int | np.integer) and self.max_iter >= 1):
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if not (isinstance(self.tol, int | float) and self.tol > 0):
            raise ValueError(f"tol must be a number > 0, got {self.tol!r}")

    # ---- fitted state -----------------------------------------------------------------------

    def _check_is_fitted(self) -> np.ndarray:
        if not hasattr(self, "params_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(summary) first "
                "(or build one with from_params)"
            )
        return self.params_.to_numpy(dtype=np.float64)

    @classmethod
    def from_params(cls, params: Mapping[str, float], **init_params: Any) -> _ClvModel:
        """A model with the given parameters, ready to predict (no fit, no standard errors).

        Use it for published parameters, parameters loaded from a tracking server, or draws
        of the parameters for prediction intervals.
        """
        model = cls(**init_params)
        missing = [p for p in cls._param_names if p not in params]
        if missing:
            raise ValueError(f"{cls.__name__}.from_params needs {list(cls._param_names)}")
        values = [float(params[p]) for p in cls._param_names]
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"parameters must be finite and > 0, got {dict(params)}")
        model.params_ = pd.Series(values, index=list(cls._param_names), dtype=np.float64)
        return model

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fit results: model, settings, parameters, standard errors,
        log-likelihood and convergence report."""
        self._check_is_fitted()
        out: dict[str, Any] = {
            "model": self._model_name,
            "settings": self.get_params(),
            "params": {k: float(v) for k, v in self.params_.items()},
        }
        for attr in ("standard_errors_",):
            if hasattr(self, attr):
                out[attr.rstrip("_")] = {k: float(v) for k, v in getattr(self, attr).items()}
        for attr in ("log_likelihood_", "n_customers_", "n_patterns_"):
            if hasattr(self, attr):
                out[attr.rstrip("_")] = float(getattr(self, attr))
        if hasattr(self, "convergence_"):
            out["convergence"] = asdict(self.convergence_)
        return out

    # ---- subclass hooks ---------------------------------------------------------------------

    def _objective(self, u: np.ndarray, data: Any, penalizer: float) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    def _start(self, data: Any) -> np.ndarray:
        raise NotImplementedError

    def _scales(self, data: Any) -> np.ndarray:
        raise NotImplementedError

    def _degeneracy(self, theta: np.ndarray, data: Any) -> list[str]:
        return []

    def _data_cause(self, data: Any) -> str:
        return ""

    # ---- the fit ----------------------------------------------------------------------------

    def _bounds(self, data: Any) -> tuple[np.ndarray, np.ndarray]:
        shift = -np.log(self._scales(data))  # log of the data scale of each parameter
        return shift - _LOG_BOUND, shift + _LOG_BOUND

    def _run_start(self, fun, u0, lb, ub) -> _Attempt:
        from scipy.optimize import minimize

        opts = {"maxiter": self.max_iter, "ftol": 1e-13, "gtol": 0.1 * self.tol, "maxcor": 20}
        bounds = list(zip(lb, ub, strict=True))
        res = minimize(fun, u0, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
        u, nit, path, msg = (
            np.asarray(res.x, dtype=np.float64),
            int(res.nit),
            "L-BFGS-B",
            str(res.message),
        )
        f, g = fun(u)
        pg = float(np.max(np.abs(_projected_grad(u, g, lb, ub))))
        if not (np.isfinite(f) and pg <= 1e-3):
            # Fallback: derivative-free restart, then L-BFGS-B again from where it ended.
            with np.errstate(invalid="ignore"):  # inf - inf in the simplex test
                nm = minimize(
                    lambda v: fun(v)[0],
                    u if np.isfinite(f) else u0,
                    method="Nelder-Mead",
                    bounds=bounds,
                    options={"maxiter": self.max_iter, "xatol": 1e-8, "fatol": 1e-12},
                )
            res = minimize(fun, nm.x, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
            u2 = np.asarray(res.x, dtype=np.float64)
            f2, g2 = fun(u2)
            if np.isfinite(f2) and (not np.isfinite(f) or f2 < f):
                u, f, g, msg = u2, f2, g2, str(res.message)
            nit += int(nm.nit) + int(res.nit)
            path = "L-BFGS-B, Nelder-Mead fallback, L-BFGS-B"
        pg = float(np.max(np.abs(_projected_grad(u, g, lb, ub)))) if np.isfinite(f) else np.inf
        return _Attempt(u, float(f), g, pg, nit, msg, path, u0)

    def _wrap(self, data: Any, penalizer: float) -> Callable:
        def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
            with np.errstate(all="ignore"):
                f, g = self._objective(u, data, penalizer)
            if not (np.isfinite(f) and np.all(np.isfinite(g))):
                return np.inf, np.zeros_like(u)
            return f, g

        return fun

    def _hessian_fn(self, data: Any, penalizer: float, fun: Callable) -> tuple[Callable, Any]:
        """``u -> Hessian`` of the mean objective in log-parameters, and ``u -> (value,
        gradient, Hessian)`` in one pass when the model has an analytic Hessian (else
        ``None``). Default: central differences of the exact gradient."""
        return (lambda u: _num_hessian(fun, u)), None

    def _thinned(self, data: Any) -> Any:
        """A weighted random thinning of the patterns (Horvitz-Thompson weights): pattern
        ``i`` is kept with probability ``min(1, w_i * target / W)`` and reweighted by its
        inverse, so heavy patterns are always kept and the thinned likelihood is unbiased."""
        n = len(data.w)
        if n <= _EXPLORE_MAX_PATTERNS:
            return data
        rng = np.random.default_rng(self.random_state)
        prob = np.minimum(1.0, data.w * (_EXPLORE_PATTERNS / data.total_weight))
        keep = rng.random(n) < prob
        w = data.w[keep] / prob[keep]
        if isinstance(data, cm.SpendData):
            return cm.spend_data(data.x[keep], data.m[keep], w, aggregate=False)
        return cm.purchase_data(data.x[keep], data.t_x[keep], data.T[keep], w, aggregate=False)

    def _optimise(self, data: Any, penalizer: float) -> tuple[_Attempt, int, bool]:
        """Multi-start L-BFGS-B (on a thinning of very large data), then Newton refinement of
        the best candidates on all patterns."""
        lb, ub = self._bounds(data)
        fun = self._wrap(data, penalizer)
        hess, fgh = self._hessian_fn(data, penalizer, fun)
        explore = self._thinned(data)
        thinned = explore is not data
        fun_x = self._wrap(explore, penalizer) if thinned else fun

        rng = np.random.default_rng(self.random_state)
        base = np.clip(self._start(data), lb + 1.0, ub - 1.0)
        attempts: list[_Attempt] = []
        for k in range(self.n_starts):
            u0 = base if k == 0 else np.clip(base + rng.normal(0.0, 1.0, base.size), lb + 1, ub - 1)
            attempts.append(self._run_start(fun_x, u0, lb, ub))
            close = sorted((a for a in attempts if a.pg <= 1e-3), key=lambda z: z.f)
            if len(close) >= 2 and abs(close[0].f - close[1].f) <= 1e-9 * max(1.0, abs(close[0].f)):
                break  # two starts reached the same optimum
        n_run = len(attempts)
        hess_x = self._hessian_fn(explore, penalizer, fun_x)[0] if thinned else None

        def to_full(att: _Attempt) -> None:  # re-evaluate a thinning's candidate on all data
            if thinned and not att.path.startswith("starts on"):
                att.f, att.g = fun(att.u)
                att.pg = float(np.max(np.abs(_projected_grad(att.u, att.g, lb, ub))))
                att.path = f"starts on a {len(explore.w):,}-pattern thinning ({att.path}), then all patterns"

        ranked = sorted(attempts, key=lambda z: (not np.isfinite(z.f), z.f))
        for att in ranked[:2]:
            if not np.isfinite(att.f):
                break
            H0 = hess_x(att.u) if thinned else None
            to_full(att)
            if not np.isfinite(att.f):
                continue
            self._refine(att, fun, hess, fgh, lb, ub, H0)
            if att.pg > self.tol and thinned:
                full = self._run_start(fun, att.u, lb, ub)
                att.u, att.f, att.g, att.pg = full.u, full.f, full.g, full.pg
                att.nit += full.nit
                att.path += " + L-BFGS-B"
                self._refine(att, fun, hess, fgh, lb, ub)
            if att.pg <= self.tol:
                return att, n_run, True
        for att in attempts:
            to_full(att)
        corner = self._degenerate_corner(attempts, data, lb, ub)
        if corner is not None:
            return corner, n_run, True
        return ranked[0], n_run, False

    def _refine(self, att: _Attempt, fun, hess, fgh, lb, ub, H0=None) -> None:
        u, f, g, n_newton, H = _newton_polish(
            fun, hess, att.u, att.f, att.g, lb, ub, fgh=fgh, H0=H0
        )
        att.u, att.f, att.g = u, f, g
        if H is not None:
            att.hessian = H
        if n_newton:
            att.nit += n_newton
            att.path += f" + {n_newton} Newton step(s)"
            if "Newton" not in att.message:
                att.message += "; then refined by Newton steps"
        att.pg = float(np.max(np.abs(_projected_grad(u, g, lb, ub))))

    def _degenerate_corner(
        self, attempts: list[_Attempt], data: Any, lb: np.ndarray, ub: np.ndarray
    ) -> _Attempt | None:
        """Accept a degenerate corner the optimiser cannot reach exactly, at a point the
        model's degeneracy checks flag, when either

        * a parameter ran to the edge of the search range and the gradient is small (the
          remaining parameters keep drifting with it along the ridge), or
        * at least two starts end at the same log-likelihood (1e-7 relative) with very
          different parameters: the likelihood is flat along a ridge towards infinity.

        The parameters along the ridge are arbitrary; the fitted log-likelihood is not.
        """
        near = sorted((a for a in attempts if np.isfinite(a.f) and a.pg <= 1e-2), key=lambda z: z.f)
        near = [a for a in near if self._degeneracy(np.exp(a.u), data)]
        at_edge = [
            a for a in near if a.pg <= 1e-3 and np.any((a.u <= lb + 1e-6) | (a.u >= ub - 1e-6))
        ]
        if at_edge:
            best = at_edge[0]
            best.ridge_note = (
                f"the optimiser stopped at the edge of the search range with gradient norm "
                f"{best.pg:.1e}: the likelihood keeps improving towards a degenerate corner"
            )
            best.message += "; accepted as a degenerate corner (search bound)"
            return best
        if len(near) < 2:
            return None
        best = near[0]
        same = [a for a in near if abs(a.f - best.f) <= 1e-7 * max(1.0, abs(best.f))]
        if len(same) < 2:
            return None
        spread = np.ptp(np.array([a.u for a in same]), axis=0)
        j = int(np.argmax(spread))
        if spread[j] < math.log(2.0):
            return None
        vals = [float(np.exp(a.u[j])) for a in same]
        best.ridge_note = (
            f"the log-likelihood is flat along a ridge to a degenerate corner: {len(same)} "
            f"starts reached the same value (to 1e-7) with '{self._param_names[j]}' between "
            f"{min(vals):.3g} and {max(vals):.3g}; the optimiser stopped at gradient norm "
            f"{best.pg:.1e}, so the parameters are arbitrary along the ridge"
        )
        best.message += "; accepted as a degenerate corner (flat ridge)"
        return best

    def _fit_data(self, data: Any) -> None:
        self._check_settings()
        ladder = [float(self.penalizer)]
        if self.escalate_penalizer:
            ladder += [p for p in _PENALIZER_LADDER if p > self.penalizer]
        with _single_threaded_blas():
            self._fit_ladder(data, ladder)

    def _fit_ladder(self, data: Any, ladder: list[float]) -> None:
        first_fail: tuple[_Attempt, int] | None = None
        for pen in ladder:
            att, n_run, ok = self._optimise(data, pen)
            if ok:
                break
            if first_fail is None:
                first_fail = (att, n_run)
        else:
            self._raise_convergence_error(first_fail[0], first_fail[1], data, ladder)

        notes: list[str] = [att.ridge_note] if att.ridge_note else []
        if pen != self.penalizer:
            notes.append(
                f"the fit did not converge with penalizer={self.penalizer:g}; it converged "
                f"after raising it to {pen:g}, which shrinks the parameters towards 0 - treat "
                "them with care"
            )
        theta = np.exp(att.u)
        lb, ub = self._bounds(data)
        for name, u, lo, hi in zip(self._param_names, att.u, lb, ub, strict=True):
            if u <= lo + 1e-6 or u >= hi - 1e-6:
                notes.append(
                    f"parameter '{name}' ran to the edge of the search range ({np.exp(u):.3g}); "
                    "the likelihood keeps improving as it runs away, so its value is arbitrary"
                )
        notes += self._degeneracy(theta, data)

        W = data.total_weight
        pen_value = self._penalty_value(theta, data, pen)
        self.params_ = pd.Series(theta, index=list(self._param_names), dtype=np.float64)
        self.log_likelihood_ = float(-(att.f - pen_value) * W)
        self.n_customers_ = int(W) if float(W).is_integer() else float(W)
        self.n_patterns_ = len(data.w)
        self.penalizer_ = pen
        self._set_uncertainty(att, data, pen, notes)
        self.convergence_ = Convergence(
            success=True,
            iterations=att.nit,
            gradient_norm=att.pg,
            message=att.message,
            warnings=notes,
            optimizer=att.path,
            n_starts=n_run,
            penalizer=pen,
        )
        for note in notes:
            warnings.warn(f"{self._model_name}: {note}", DegenerateFitWarning, stacklevel=4)

    def _penalty_value(self, theta: np.ndarray, data: Any, pen: float) -> float:
        return float(pen * np.sum((theta * self._scales(data)) ** 2))

    def _set_uncertainty(self, att: _Attempt, data: Any, pen: float, notes: list[str]) -> None:
        names = list(self._param_names)
        theta = np.exp(att.u)
        W = data.total_weight

        def fun(u):
            with np.errstate(all="ignore"):
                return self._objective(u, data, pen)

        hess, _ = self._hessian_fn(data, pen, fun)
        H_mean = att.hessian if att.hessian is not None else hess(att.u)
        H_log = H_mean * W  # Hessian of the total (penalised) NLL in log-params
        # Natural parameterisation: H_nat = D^-1 (H_log - diag(grad_log)) D^-1, D = diag(theta).
        H_nat = (H_log - np.diag(att.g * W)) / np.outer(theta, theta)
        cov = np.full((len(names), len(names)), np.nan)
        cov_log = cov.copy()
        try:
            if not np.all(np.isfinite(H_nat)):
                raise np.linalg.LinAlgError
            np.linalg.cholesky(H_nat)
            cov = np.linalg.inv(H_nat)
            cov_log = np.linalg.inv(H_log)
        except np.linalg.LinAlgError:
            notes.append(
                "the Hessian at the optimum is not positive definite (flat likelihood), so "
                "standard errors are not available"
            )
        self.covariance_ = pd.DataFrame(cov, index=names, columns=names)
        self.log_covariance_ = pd.DataFrame(cov_log, index=names, columns=names)
        se = np.sqrt(np.diag(cov))
        se_log = np.sqrt(np.diag(cov_log))
        self.standard_errors_ = pd.Series(se, index=names, dtype=np.float64)
        self.confidence_intervals_ = pd.DataFrame(
            {
                "lower 95% bound": theta * np.exp(-_Z95 * se_log),
                "upper 95% bound": theta * np.exp(_Z95 * se_log),
            },
            index=names,
        )

    def _raise_convergence_error(self, att: _Attempt, n_run: int, data: Any, ladder: list) -> None:
        lb, ub = self._bounds(data)
        moved = np.abs(att.u - att.u0)
        at_edge = (att.u <= lb + 1e-6) | (att.u >= ub - 1e-6)
        runaway = None
        if at_edge.any():
            j = int(np.argmax(np.where(at_edge, moved, -1.0)))
            runaway = self._param_names[j]
        elif np.max(moved) > math.log(100.0):
            j = int(np.argmax(moved))
            runaway = self._param_names[j]
        report = Convergence(
            success=False,
            iterations=att.nit,
            gradient_norm=att.pg,
            message=att.message,
            optimizer=att.path,
            n_starts=n_run,
            penalizer=float(self.penalizer),
        )
        cause = self._data_cause(data) or (
            "the data may not follow the model (e.g. no visible dropout or a very short "
            "observation window)"
        )
        if runaway is None:
            ran = (
                "no parameter ran away (the likelihood is flat or badly scaled near the end point)"
            )
        else:
            j = self._param_names.index(runaway)
            ran = (
                f"parameter '{runaway}' ran away to {np.exp(att.u[j]):.3g} "
                f"(started at {np.exp(att.u0[j]):.3g})"
            )
        tried = ", ".join(f"{p:g}" for p in ladder)
        message = (
            f"{self._model_name} fit did not converge: gradient norm {att.pg:.2e} (tolerance "
            f"{self.tol:g}) after {att.nit} iterations ({att.path}; {n_run} start(s); "
            f"penalizers tried: {tried}). {ran}. Likely data cause: {cause}. "
            "Try a larger penalizer, more max_iter, another model, or check the summary."
        )
        raise ConvergenceError(message, report=report, runaway=runaway, data_cause=cause)


# --------------------------------------------------------------------------------------------
# Purchase models
# --------------------------------------------------------------------------------------------


class _PurchaseModel(_ClvModel):
    """Prediction API shared by the purchase-count models."""

    def fit(self, summary: pd.DataFrame, *, weights: Any = None) -> _PurchaseModel:
        """Fit by maximum likelihood.

        Parameters
        ----------
        summary
            One row per customer with ``frequency``, ``recency`` and ``T`` (extra columns are
            ignored), e.g. :func:`crmkit.features.rfm.rfm_summary`.
        weights
            Optional non-negative weight per row (e.g. the number of customers a row stands
            for). Equal rows are always collapsed internally; weights add up.

        Returns
        -------
        self

        Raises
        ------
        DataContractError
            Invalid summary (missing columns, NaN, negative values, recency > T, no repeat
            buyers, fewer than two customers or a single distinct pattern).
        ConvergenceError
            No starting point converged, even with an escalated penalizer.
        """
        x, t_x, T = _purchase_arrays(summary)
        w = _weights_array(weights, len(x), summary.index)
        data = cm.purchase_data(x, t_x, T, w, aggregate=self._aggregate)
        n_patterns = len(cm.purchase_data(x, t_x, T, w).w) if not self._aggregate else len(data.w)
        _check_fit_size(float(w.sum()), n_patterns, float(w[x > 0].sum()), "summary")
        self._fit_data(data)
        return self

    # ---- model hooks ------------------------------------------------------------------------

    def _p_alive(self, theta, x, t_x, T):
        raise NotImplementedError

    def _given_alive(self, theta, t, x, T):
        raise NotImplementedError

    def _new_customer(self, theta, t):
        raise NotImplementedError

    def _window(self, theta, x, t_x, T, t1, t2):
        raise NotImplementedError

    def _loglik(self, theta, x, t_x, T):
        raise NotImplementedError

    def _start(self, data: cm.PurchaseData) -> np.ndarray:
        # r = 1, alpha from the mean purchase rate, a = 1, b = 3 (s = 1, beta = mean T).
        rate = cm._dot(data.w, data.x) / max(cm._dot(data.w, data.T), 1e-300)
        if not rate > 0:
            rate = 1.0 / max(float(data.T.max()), 1e-12)
        return np.log(np.array([1.0, 1.0 / rate, 1.0, 3.0]))

    def _data_cause(self, data: cm.PurchaseData) -> str:
        W = data.total_weight
        rep = float(data.w[data.x > 0].sum())
        tmax = float(data.T.max())
        causes = []
        if rep / W < 0.02:
            causes.append(
                f"only {rep:,.0f} of {W:,.0f} customers ({rep / W:.1%}) made a repeat purchase"
            )
        if tmax > 5000:
            causes.append(
                f"ages are very large (max T = {tmax:,.0f}): is the summary in hours or "
                "seconds? use days or weeks"
            )
        rep_mask = data.x > 0
        if rep_mask.any():
            at_end = float(data.w[rep_mask & (data.t_x >= data.T)].sum()) / rep
            if at_end > 0.5:
                causes.append(
                    f"{at_end:.0%} of repeat buyers bought on the analysis date (recency == T)"
                )
            xmax = float(data.x.max())
            if xmax > 1000:
                causes.append(
                    f"extreme frequencies (max {xmax:,.0f} repeat purchases): wholesale "
                    "accounts or bots?"
                )
        return "; ".join(causes)

    # ---- predictions ------------------------------------------------------------------------

    def _prepare(self, summary: pd.DataFrame):
        theta = self._check_is_fitted()
        x, t_x, T = _purchase_arrays(summary)
        return theta, x, t_x, T, summary.index

    def conditional_probability_alive(self, summary: pd.DataFrame) -> pd.Series:
        """P(customer still alive at ``T`` | frequency, recency, T).

        Returns
        -------
        Series ``p_alive`` indexed like ``summary``.
        """
        theta, x, t_x, T, idx = self._prepare(summary)
        return pd.Series(self._p_alive(theta, x, t_x, T), index=idx, name="p_alive")

    def conditional_expected_number_of_purchases_up_to_time(
        self, t: float, summary: pd.DataFrame
    ) -> pd.Series:
        """Expected number of purchases in ``(T, T + t]`` given each customer's history.

        Parameters
        ----------
        t
            Horizon in the time unit of the summary (scalar, or one value per row).
        summary
            Customers to predict for.

        Returns
        -------
        Series ``expected_purchases`` indexed like ``summary``.
        """
        theta, x, t_x, T, idx = self._prepare(summary)
        t = _time_arg(t, "t")
        val = self._p_alive(theta, x, t_x, T) * self._given_alive(theta, t, x, T)
        return pd.Series(val, index=idx, name="expected_purchases")

    def expected_purchases_in_window(
        self, summary: pd.DataFrame, t1: float, t2: float
    ) -> pd.Series:
        """Expected number of purchases in ``(T + t1, T + t2]`` given each history, i.e.
        ``E[N(t2)] - E[N(t1)]`` of :meth:`conditional_expected_number_of_purchases_up_to_time`
        (expectations add up). The building block of discounted CLV over cash-flow periods.

        Returns
        -------
        Series ``expected_purchases`` indexed like ``summary``.
        """
        theta, x, t_x, T, idx = self._prepare(summary)
        t1, t2 = _window_args(t1, t2)
        given = self._given_alive(theta, t2, x, T) - self._given_alive(theta, t1, x, T)
        val = self._p_alive(theta, x, t_x, T) * np.maximum(given, 0.0)
        return pd.Series(val, index=idx, name="expected_purchases")

    def probability_of_purchases_in_window(
        self, summary: pd.DataFrame, t1: float, t2: float
    ) -> pd.Series:
        """P(at least one purchase in ``(T + t1, T + t2]``) given each history.

        The derivation (for each model) is in the docstrings of
        :func:`crmkit.models._clv_math.bg_prob_purchase_in_window` and
        :func:`crmkit.models._clv_math.pareto_prob_purchase_in_window`; it accounts for the
        customer dropping out before ``T + t1``.

        Returns
        -------
        Series ``p_purchase`` indexed like ``summary``.
        """
        theta, x, t_x, T, idx = self._prepare(summary)
        t1, t2 = _window_args(t1, t2)
        return pd.Series(self._window(theta, x, t_x, T, t1, t2), index=idx, name="p_purchase")

    def expected_number_of_purchases_up_to_time(self, t: Any) -> Any:
        """Expected repeat purchases in ``(0, t]`` of a customer who just made their first
        purchase.

        Parameters
        ----------
        t
            Scalar or array of horizons.

        Returns
        -------
        float or ndarray (same shape as ``t``).
        """
        theta = self._check_is_fitted()
        t_arr = _time_arg(t, "t")
        val = self._new_customer(theta, t_arr)
        return float(val) if np.ndim(val) == 0 else val

    def expected_time_to_next_purchase(
        self, summary: pd.DataFrame, *, quantile: float = 0.5
    ) -> pd.Series:
        """Median (or another quantile) waiting time from ``T`` to the next purchase of a
        customer who is alive at ``T``.

        Definition: given alive, the posterior purchase rate is
        ``lambda ~ Gamma(r + x, alpha + T)`` in all three purchase models and the wait for the
        next purchase is exponential, so the posterior predictive wait is Lomax with
        ``P(W > w) = ((alpha + T)/(alpha + T + w))**(r + x)`` and quantile
        ``(alpha + T) * ((1 - quantile)**(-1/(r + x)) - 1)``. This is finite and well defined
        for every customer (the mean is infinite when ``r + x <= 1``). In the (M)BG/NBD an
        alive customer cannot drop out before their next purchase, so this is the exact
        conditional waiting time; in the Pareto/NBD it is the wait on the purchase clock,
        assuming the customer stays alive. Combine with
        :meth:`conditional_probability_alive` for the unconditional picture.

        Parameters
        ----------
        summary
            Customers to predict for.
        quantile
            In ``(0, 1)``; 0.5 is the median.

        Returns
        -------
        Series ``time_to_next_purchase`` (time unit of the summary) indexed like ``summary``.
        """
        if not (isinstance(quantile, int | float) and 0.0 < quantile < 1.0):
            raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
        theta, x, t_x, T, idx = self._prepare(summary)
        val = cm.median_time_to_next_purchase(theta[0], theta[1], x, T, quantile)
        return pd.Series(val, index=idx, name="time_to_next_purchase")

    def score(self, summary: pd.DataFrame) -> float:
        """Mean log-likelihood per customer of ``summary`` under the fitted parameters
        (higher is better; e.g. to compare models or check a holdout cohort)."""
        theta, x, t_x, T, idx = self._prepare(summary)
        return float(np.mean(self._loglik(theta, x, t_x, T)))


def _window_args(t1: Any, t2: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _time_arg(t1, "t1"), _time_arg(t2, "t2")
    if np.any(b <= a):
        raise DataContractError(
            f"the window needs t1 < t2, got t1={t1!r}, t2={t2!r}", rule="time_horizon"
        )
    return a, b


class _BetaGeoBase(_PurchaseModel):
    _param_names = ("r", "alpha", "a", "b")
    _modified: ClassVar[bool] = False

    def __init__(
        self,
        penalizer: float = 0.0,
        n_starts: int = 4,
        max_iter: int = 1000,
        tol: float = 1e-7,
        random_state: int = 0,
        escalate_penalizer: bool = True,
    ) -> None:
        self.penalizer = penalizer
        self.n_starts = n_starts
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.escalate_penalizer = escalate_penalizer

    def _objective(self, u, data, penalizer):
        return cm.bg_objective(u, data, modified=self._modified, penalizer=penalizer)

    def _hessian_fn(self, data, penalizer, fun):
        def fgh(u):
            with np.errstate(all="ignore"):
                return cm.bg_objective(
                    u, data, modified=self._modified, penalizer=penalizer, hessian=True
                )

        return (lambda u: fgh(u)[2]), fgh

    def _scales(self, data):
        return np.array([1.0, data.time_scale, 1.0, 1.0])

    def _loglik(self, theta, x, t_x, T):
        return cm.bg_loglik(theta, x, t_x, T, modified=self._modified)

    def _p_alive(self, theta, x, t_x, T):
        return cm.bg_p_alive(theta, x, t_x, T, modified=self._modified)

    def _given_alive(self, theta, t, x, T):
        return cm.bg_expected_given_alive(theta, t, x, T, modified=self._modified)

    def _new_customer(self, theta, t):
        return cm.bg_expected_new(theta, t, modified=self._modified)

    def _window(self, theta, x, t_x, T, t1, t2):
        return cm.bg_prob_purchase_in_window(theta, x, t_x, T, t1, t2, modified=self._modified)

    def _degeneracy(self, theta, data):
        r, alpha, a, b = theta
        notes = []
        chances = cm._dot(data.w, data.x + (1.0 if self._modified else 0.0))
        mean_p = a / (a + b)
        if mean_p * chances < 1.0:
            notes.append(
                f"dropout process degenerate: the model says nobody ever drops out (a = {a:.3g}, "
                f"b = {b:.3g}, mean dropout probability per purchase a/(a+b) = {mean_p:.2g}, "
                f"fewer than one expected dropout in all {chances:,.0f} dropout opportunities of "
                "the data). P(alive) will be close to 1 for everyone and forecasts will not decay. "
                "Likely causes: an observation window too short to see customers go quiet, or "
                "customers who never stop buying (e.g. wholesale accounts); consider a penalizer, "
                "ParetoNBD, or a longer history"
            )
        elif b / (a + b) < 1e-3:
            notes.append(
                f"dropout process degenerate: the model says nearly every customer drops out "
                f"right after their next purchase (a = {a:.3g}, b = {b:.3g})"
            )
        if r > 1e4:
            notes.append(
                f"purchase-rate heterogeneity collapsed (r = {r:.3g}): the model says every "
                f"customer buys at the same rate r/alpha = {r / alpha:.3g} per time unit"
            )
        return notes


class BetaGeo(_BetaGeoBase):
    """BG/NBD model of repeat purchases (Fader, Hardie and Lee 2005).

    While alive a customer buys as a Poisson process with rate ``lambda ~ Gamma(r, alpha)``
    (shape ``r``, rate ``alpha``); right after each repeat purchase they drop out for good
    with probability ``p ~ Beta(a, b)``.

    Parameters
    ----------
    penalizer
        L2 penalty ``penalizer * (r^2 + (alpha/max T)^2 + a^2 + b^2)`` added to the mean
        negative log-likelihood (the convention of ``lifetimes``' ``penalizer_coef``).
    n_starts
        Maximum number of starting points (a data-based one, then random perturbations of it
        in log space); stops as soon as two starts reach the same log-likelihood (to 1e-9
        relative) and keeps the best. With more than 50,000 distinct patterns the starts run
        on a weighted random thinning of ~20,000 patterns and only the best is refined (Newton
        steps) on all of them.
    max_iter
        Iteration limit of each L-BFGS-B (and Nelder-Mead fallback) run.
    tol
        Convergence tolerance: largest absolute gradient of the mean negative log-likelihood
        with respect to the log-parameters.
    random_state
        Seed of the random starting points and of the thinning.
    escalate_penalizer
        If no start converges, retry with penalizers 1e-4, 1e-3, 1e-2, 0.1 (above
        ``penalizer``) and report it in ``convergence_.warnings``.

    Attributes
    ----------
    params_ : Series
        ``r, alpha, a, b``.
    log_likelihood_ : float
        Log-likelihood of the training data at ``params_`` (without the penalty).
    n_customers_ : int or float
        Number of customers (sum of weights).
    n_patterns_ : int
        Distinct ``(frequency, recency, T)`` rows the likelihood was evaluated on.
    penalizer_ : float
        Penalizer of the retained fit.
    covariance_, log_covariance_ : DataFrame
        Inverse Hessian of the penalised negative log-likelihood in the natural and the log
        parameters.
    standard_errors_ : Series
    confidence_intervals_ : DataFrame
        95 % Wald intervals on the log scale (``lower 95% bound``, ``upper 95% bound``).
    convergence_ : Convergence

    References
    ----------
    Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "'Counting your customers' the easy
    way: an alternative to the Pareto/NBD model", Marketing Science 24(2), 275-284.

    Examples
    --------
    Fit on a summary (``lines`` are cleaned order lines) and predict:

    >>> from crmkit.features.rfm import rfm_summary
    >>> summary = rfm_summary(lines, "1997-09-30", unit="W")  # doctest: +SKIP
    >>> model = BetaGeo().fit(summary)  # doctest: +SKIP

    With the published CDNOW parameters, the paper's customer with ``x = 2``,
    ``t_x = 30.43``, ``T = 38.86`` weeks expects 1.226 purchases in the next 39 weeks:

    >>> model = BetaGeo.from_params({"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426})
    >>> one = pd.DataFrame({"frequency": [2.0], "recency": [30.43], "T": [38.86]})
    >>> round(float(model.conditional_expected_number_of_purchases_up_to_time(39, one).iloc[0]), 3)
    1.226
    >>> round(float(model.conditional_probability_alive(one).iloc[0]), 3)
    0.727
    """

    _model_name = "BG/NBD"
    _modified = False


class ModifiedBetaGeo(_BetaGeoBase):
    """MBG/NBD model (Batislam, Denizel and Filiztekin 2007; Wagner and Hoppe 2008).

    As :class:`BetaGeo`, except that a customer may also drop out right after the first
    purchase (probability ``p`` at time 0 and after each repeat purchase), so customers
    without repeat purchases can be dead. Same convention as
    ``lifetimes.ModifiedBetaGeoFitter``; parameters, attributes and methods as
    :class:`BetaGeo`.

    References
    ----------
    Batislam, E. P., Denizel, M. and Filiztekin, A. (2007), "Empirical validation and
    comparison of models for customer base analysis", IJRM 24(3), 201-209; Wagner, U. and
    Hoppe, D. (2008), "Erratum on the MBG/NBD model", IJRM 25(3), 225-226.
    """

    _model_name = "MBG/NBD"
    _modified = True


class ParetoNBD(_PurchaseModel):
    """Pareto/NBD model of repeat purchases (Schmittlein, Morrison and Colombo 1987).

    While alive a customer buys as a Poisson process with rate ``lambda ~ Gamma(r, alpha)``;
    their lifetime is exponential with rate ``mu ~ Gamma(s, beta)``.

    Parameters
    ----------
    penalizer, n_starts, max_iter, tol, random_state, escalate_penalizer
        As :class:`BetaGeo` (time-scale parameters ``alpha`` and ``beta`` are penalised in
        units of ``max T``).

    Attributes
    ----------
    params_ : Series
        ``r, alpha, s, beta``. Other attributes as :class:`BetaGeo`.

    Notes
    -----
    The likelihood (Fader and Hardie 2005, eq. 18) contains Gauss hypergeometric functions
    that overflow for frequent customers; crmkit evaluates that term as the equivalent
    integral over the dropout time with a tanh-sinh rule in log space
    (:func:`crmkit.models._clv_math.log_power_integral`), which also gives exact gradients.

    References
    ----------
    Schmittlein, D. C., Morrison, D. G. and Colombo, R. (1987), "Counting your customers: who
    are they and what will they do next?", Management Science 33(1), 1-24. Fader, P. S. and
    Hardie, B. G. S. (2005), "A note on deriving the Pareto/NBD model and related
    expressions", http://brucehardie.com/notes/009/.
    """

    _param_names = ("r", "alpha", "s", "beta")
    _model_name = "Pareto/NBD"

    def __init__(
        self,
        penalizer: float = 0.0,
        n_starts: int = 4,
        max_iter: int = 1000,
        tol: float = 1e-7,
        random_state: int = 0,
        escalate_penalizer: bool = True,
    ) -> None:
        self.penalizer = penalizer
        self.n_starts = n_starts
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.escalate_penalizer = escalate_penalizer

    def _objective(self, u, data, penalizer):
        return cm.pareto_objective(u, data, penalizer=penalizer)

    def _start(self, data):
        start = super()._start(data)
        start[3] = np.log(max(cm._dot(data.w, data.T) / data.total_weight, 1e-12))
        return start

    def _scales(self, data):
        return np.array([1.0, data.time_scale, 1.0, data.time_scale])

    def _loglik(self, theta, x, t_x, T):
        return cm.pareto_loglik(theta, x, t_x, T)

    def _p_alive(self, theta, x, t_x, T):
        return cm.pareto_p_alive(theta, x, t_x, T)

    def _given_alive(self, theta, t, x, T):
        return cm.pareto_expected_given_alive(theta, t, x, T)

    def _new_customer(self, theta, t):
        return cm.pareto_expected_new(theta, t)

    def _window(self, theta, x, t_x, T, t1, t2):
        return cm.pareto_prob_purchase_in_window(theta, x, t_x, T, t1, t2)

    def _degeneracy(self, theta, data):
        r, alpha, s, beta = theta
        notes = []
        expected_dropouts = cm._dot(data.w, -np.expm1(s * (np.log(beta) - np.log(beta + data.T))))
        if expected_dropouts < 1.0:
            notes.append(
                f"dropout process degenerate: the model says nobody ever drops out (s = {s:.3g}, "
                f"beta = {beta:.3g}: fewer than one expected dropout among all "
                f"{data.total_weight:,.0f} customers over the observed period). P(alive) will be "
                "close to 1 for everyone. Likely causes: an observation window too short to see "
                "customers go quiet; consider a penalizer or a longer history"
            )
        if r > 1e4:
            notes.append(
                f"purchase-rate heterogeneity collapsed (r = {r:.3g}): every customer buys at "
                f"the same rate r/alpha = {r / alpha:.3g} per time unit"
            )
        if s > 1e4:
            notes.append(
                f"dropout-rate heterogeneity collapsed (s = {s:.3g}): every customer has the "
                f"same dropout rate s/beta = {s / beta:.3g} per time unit"
            )
        return notes


# --------------------------------------------------------------------------------------------
# Spend model
# --------------------------------------------------------------------------------------------


class GammaGamma(_ClvModel):
    """Gamma-Gamma model of the spend per transaction (Colombo and Jiang 1999; Fader, Hardie
    and Lee 2005b; Fader and Hardie 2013).

    Each transaction of a customer has value ``z ~ Gamma(p, nu)`` (shape ``p``, rate ``nu``),
    and ``nu ~ Gamma(q, gamma)`` across customers. Fitted on repeat buyers only
    (``frequency > 0``; ``monetary_value`` is the mean value of their repeat transactions),
    assuming spend is independent of the number of transactions - checked at fit time.

    Parameters
    ----------
    penalizer
        L2 penalty ``penalizer * (p^2 + q^2 + (gamma/mean spend)^2)`` on the mean negative
        log-likelihood.
    n_starts, max_iter, tol, random_state, escalate_penalizer
        As :class:`BetaGeo`.
    max_abs_correlation
        Warn (:class:`SpendCorrelationWarning`) when the Pearson correlation of
        ``frequency`` and ``monetary_value`` among repeat buyers exceeds this in absolute
        value.

    Attributes
    ----------
    params_ : Series
        ``p, q, gamma``.
    frequency_spend_correlation_ : float
        The correlation checked at fit time.
    log_likelihood_, n_customers_, n_patterns_, penalizer_, covariance_,
    log_covariance_, standard_errors_, confidence_intervals_, convergence_
        As :class:`BetaGeo` (``n_customers_`` counts repeat buyers).

    References
    ----------
    Colombo, R. and Jiang, W. (1999), "A stochastic RFM model", Journal of Interactive
    Marketing 13(3), 2-12. Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005b), "RFM and
    CLV: using iso-value curves for customer base analysis", JMR 42(4), 415-430. Fader, P. S.
    and Hardie, B. G. S. (2013), "The Gamma-Gamma model of monetary value",
    http://brucehardie.com/notes/025/.
    """

    _param_names = ("p", "q", "gamma")
    _model_name = "Gamma-Gamma"

    def __init__(
        self,
        penalizer: float = 0.0,
        n_starts: int = 4,
        max_iter: int = 1000,
        tol: float = 1e-7,
        random_state: int = 0,
        escalate_penalizer: bool = True,
        max_abs_correlation: float = 0.3,
    ) -> None:
        self.penalizer = penalizer
        self.n_starts = n_starts
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.escalate_penalizer = escalate_penalizer
        self.max_abs_correlation = max_abs_correlation

    def fit(self, summary: pd.DataFrame, *, weights: Any = None) -> GammaGamma:
        """Fit by maximum likelihood on the repeat buyers of ``summary``.

        Parameters
        ----------
        summary
            One row per customer with ``frequency`` and ``monetary_value`` (e.g.
            :func:`crmkit.features.rfm.rfm_summary`); rows with ``frequency == 0`` are ignored.
        weights
            Optional non-negative weight per row.

        Returns
        -------
        self

        Raises
        ------
        DataContractError
            Missing columns, NaN/inf, negative frequency, a repeat buyer with spend <= 0, no
            repeat buyers, fewer than two or only identical repeat buyers.
        ConvergenceError
            No starting point converged.
        """
        x, m = self._spend_arrays(summary)
        w = _weights_array(weights, len(x), summary.index)
        rep = (x > 0) & (w > 0)
        bad = rep & (m <= 0)
        if bad.any():
            raise DataContractError(
                "monetary_value must be > 0 for repeat buyers (Gamma-Gamma models positive "
                "spend per transaction)",
                column="monetary_value",
                rule="positive_spend",
                rows=_offending(summary.index, bad, lambda i: f"monetary_value={m[i]!r}"),
                hint="drop customers whose repeat purchases net to zero or less (returns)",
            )
        xr, mr, wr = x[rep], m[rep], w[rep]
        if len(x) and not len(xr):
            raise DataContractError(
                "no customer made a repeat purchase (frequency is 0 everywhere); Gamma-Gamma "
                "is fitted on the spend of repeat buyers",
                column="frequency",
                rule="no_repeat_buyers",
            )
        data = cm.spend_data(xr, mr, wr, aggregate=self._aggregate)
        n_patterns = len(data.w) if self._aggregate else len(cm.spend_data(xr, mr, wr).w)
        _check_fit_size(float(wr.sum()), n_patterns, float(wr.sum()), "summary")
        self._fit_data(data)
        corr = _weighted_corr(xr, mr, wr)
        self.frequency_spend_correlation_ = corr
        if np.isfinite(corr) and abs(corr) > self.max_abs_correlation:
            note = (
                f"the model assumes the spend per transaction does not depend on how often a "
                f"customer buys, but among the {wr.sum():,.0f} repeat buyers corr(frequency, "
                f"monetary_value) = {corr:.2f} (|corr| > {self.max_abs_correlation:g}); expected "
                "spends will be biased for frequent or rare buyers"
            )
            self.convergence_.warnings.append(note)
            warnings.warn(f"{self._model_name}: {note}", SpendCorrelationWarning, stacklevel=2)
        return self

    @staticmethod
    def _spend_arrays(summary: Any) -> tuple[np.ndarray, np.ndarray]:
        cols = _numeric_columns(summary, SPEND_COLUMNS, "summary")
        x, m = cols["frequency"], cols["monetary_value"]
        bad = (x < 0) | (x != np.round(x))
        if bad.any():
            raise DataContractError(
                "frequency (number of repeat purchases) must be a whole number >= 0",
                column="frequency",
                rule="frequency_nonnegative_integer",
                rows=_offending(summary.index, bad, lambda i: f"frequency={x[i]!r}"),
            )
        return x, m

    def _objective(self, u, data, penalizer):
        return cm.gg_objective(u, data, penalizer=penalizer)

    def _scales(self, data):
        return np.array([1.0, 1.0, data.money_scale])

    def _start(self, data):
        return np.log(np.array([1.0, 2.0, 1.0 / data.money_scale]))

    def _degeneracy(self, theta, data):
        p, q, gamma = theta
        notes = []
        if q <= 1.0:
            notes.append(
                f"spend model degenerate: q = {q:.3g} <= 1, so the population mean spend "
                "p*gamma/(q-1) is infinite; customers without repeat purchases get an infinite "
                "expected spend. Likely cause: a few extreme monetary values"
            )
        if p > 1e4:
            notes.append(
                f"spend variability within customers collapsed (p = {p:.3g}): the model says a "
                "customer spends the same amount on every transaction"
            )
        if q > 1e4:
            notes.append(
                f"spend heterogeneity across customers collapsed (q = {q:.3g}): the model says "
                "every customer has the same mean spend"
            )
        return notes

    def _data_cause(self, data: cm.SpendData) -> str:
        causes = []
        med = float(np.median(data.m))
        if med > 0 and float(data.m.max()) / med > 1e4:
            causes.append(f"extreme monetary values (max {data.m.max():,.2f} vs median {med:,.2f})")
        if data.total_weight < 10:
            causes.append(f"only {data.total_weight:g} repeat buyers")
        return "; ".join(causes)

    def conditional_expected_average_profit(
        self, frequency: Any, monetary_value: Any = None
    ) -> Any:
        """Expected spend per transaction given ``frequency`` repeat transactions with mean
        value ``monetary_value`` (Fader and Hardie 2013, eq. 5)::

            E[Z | x, m] = p (gamma + x m) / (p x + q - 1)

        Parameters
        ----------
        frequency
            Numbers of repeat purchases (array-like or Series), or a summary frame with
            ``frequency`` and ``monetary_value`` columns (then omit ``monetary_value``).
        monetary_value
            Mean value of the repeat purchases (ignored where ``frequency == 0``, which get the
            population mean ``p gamma / (q - 1)``).

        Returns
        -------
        Series indexed like the input when given a Series or frame, else ndarray.
        """
        theta = self._check_is_fitted()
        if isinstance(frequency, pd.DataFrame):
            if monetary_value is not None:
                raise ValueError("pass either a summary frame or frequency and monetary_value")
            x, m = self._spend_arrays(frequency)
            index = frequency.index
        else:
            if monetary_value is None:
                raise ValueError("monetary_value is required with an array of frequencies")
            index = frequency.index if isinstance(frequency, pd.Series) else None
            frame = pd.DataFrame(
                {
                    "frequency": np.asarray(frequency, dtype=np.float64).ravel(),
                    "monetary_value": np.asarray(monetary_value, dtype=np.float64).ravel(),
                },
                index=index,
            )
            x, m = self._spend_arrays(frame)
        bad = m < 0
        if bad.any():
            raise DataContractError(
                "monetary_value must be >= 0",
                column="monetary_value",
                rule="nonnegative",
                rows=[(int(i) + 1, float(m[i])) for i in np.flatnonzero(bad)[:20]],
            )
        val = cm.gg_conditional_expected_average_profit(theta, x, m)
        if index is not None:
            return pd.Series(val, index=index, name="expected_average_profit")
        return val

    def score(self, summary: pd.DataFrame) -> float:
        """Mean log-likelihood per repeat buyer of ``summary`` under the fitted parameters."""
        theta = self._check_is_fitted()
        x, m = self._spend_arrays(summary)
        rep = x > 0
        return float(np.mean(cm.gg_loglik(theta, x[rep], m[rep])))


def _weighted_corr(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    W = w.sum()
    mx, my = cm._dot(w, x) / W, cm._dot(w, y) / W
    cov = cm._dot(w, (x - mx) * (y - my)) / W
    vx, vy = cm._dot(w, (x - mx) ** 2) / W, cm._dot(w, (y - my) ** 2) / W
    if vx <= 0 or vy <= 0:
        return float("nan")
    return float(cov / math.sqrt(vx * vy))
