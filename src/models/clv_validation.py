"""Validation of the CLV models on a holdout period: accuracy next to a naive baseline, a
plain-words diagnosis, rolling-origin backtests and cohort tracking of repeat purchases.

The naive baseline
------------------
Each customer keeps buying at their calibration rate: ``frequency_cal / T_cal x
duration_holdout`` repeat purchases in the holdout (0 for a customer first seen on the last
calibration day), and spends their own mean repeat spend ``monetary_value_cal`` per purchase.
It knows nothing about dropout. A purchase model that cannot beat it on per-customer error is
not worth its assumptions; a holdout that neither predicts well is unlike the calibration
period.

Metrics
-------
``aggregate_error_pct``
    ``100 (sum predicted - sum actual) / sum actual`` holdout repeat purchases (negative:
    under-forecast). The figure of the "tracking" comparisons of Fader, Hardie and Lee (2005).
``mae``, ``rmse``
    Per-customer mean absolute and root mean squared error of holdout purchases.
``gini``
    Normalised Gini coefficient of the predicted value against the actual holdout spend: the
    Gini of the actual spend ordered by the prediction divided by that of the perfect ordering
    (1: perfect ranking, 0: random). Tied predictions count as randomly ordered (each tie
    group gets its mean actual value), so a baseline that predicts 0 for many customers is not
    rewarded for an arbitrary order among them.
``decile_mae``
    Customers ranked by predicted value into deciles (10 = highest); mean absolute difference
    of the mean predicted and mean actual holdout value over the deciles.

The predicted value is the expected holdout spend: expected holdout purchases x Gamma-Gamma
expected spend per purchase (for the model) or the baseline purchases x own mean spend.

References
----------
Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "'Counting your customers' the easy
way: an alternative to the Pareto/NBD model", Marketing Science 24(2), 275-284 (holdout
tracking and conditional expectations by calibration frequency). Schmittlein, D. C. and
Peterson, R. A. (1994), "Customer base analysis: an industrial purchase process
application", Marketing Science 13(1), 41-67 (the calibration-vs-holdout comparison).
Tashman, L. J. (2000), "Out-of-sample tests of forecasting accuracy: an analysis and review",
International Journal of Forecasting 16(4), 437-450 (rolling-origin evaluation).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from crmkit.errors import DataContractError
from crmkit.features.rfm import UNIT_DAYS, calibration_holdout_summary, purchase_days
from crmkit.models.clv import (
    BetaGeo,
    ConvergenceError,
    DegenerateFitWarning,
    GammaGamma,
    ModifiedBetaGeo,
    ParetoNBD,
)

__all__ = [
    "MODELS",
    "AGGREGATE_TOLERANCE",
    "HoldoutMetrics",
    "BacktestResult",
    "make_model",
    "calibration_columns",
    "naive_holdout_purchases",
    "normalized_gini",
    "decile_calibration",
    "holdout_metrics",
    "backtest",
    "repeat_purchase_tracking",
]

#: Purchase models by their configuration name.
MODELS: dict[str, type] = {"bgnbd": BetaGeo, "mbgnbd": ModifiedBetaGeo, "pareto_nbd": ParetoNBD}
#: An aggregate holdout error beyond this share (either way) is called "far off".
AGGREGATE_TOLERANCE = 0.20


def make_model(name: str, **params: Any) -> Any:
    """An unfitted purchase model by configuration name (``bgnbd``, ``mbgnbd``,
    ``pareto_nbd``)."""
    try:
        return MODELS[name](**params)
    except KeyError:
        raise ValueError(f"unknown purchase model {name!r}; use one of {sorted(MODELS)}") from None


def _model_key(model: Any) -> str:
    for k, cls in MODELS.items():
        if type(model) is cls:
            return k
    return type(model).__name__


def calibration_columns(cal_holdout: pd.DataFrame) -> pd.DataFrame:
    """The calibration part of :func:`crmkit.features.rfm.calibration_holdout_summary`
    renamed to ``frequency, recency, T[, monetary_value]`` (what the models take)."""
    need = ["frequency_cal", "recency_cal", "T_cal", "frequency_holdout", "duration_holdout"]
    missing = [c for c in need if c not in cal_holdout.columns]
    if missing:
        raise DataContractError(
            f"the calibration/holdout summary lacks column(s) {missing}",
            column=missing[0],
            rule="required_column",
            hint="pass the output of crmkit.features.rfm.calibration_holdout_summary",
        )
    cols = [c for c in cal_holdout.columns if c.endswith("_cal")]
    return cal_holdout[cols].rename(columns=lambda c: c.removesuffix("_cal"))


def naive_holdout_purchases(cal_holdout: pd.DataFrame) -> pd.Series:
    """The naive baseline: ``frequency_cal / T_cal x duration_holdout`` (0 where ``T_cal`` is
    0)."""
    f = cal_holdout["frequency_cal"].to_numpy(dtype=np.float64)
    T = cal_holdout["T_cal"].to_numpy(dtype=np.float64)
    d = cal_holdout["duration_holdout"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(T > 0, f / T, 0.0)
    return pd.Series(rate * d, index=cal_holdout.index, name="naive_purchases")


def normalized_gini(actual: Any, predicted: Any) -> float:
    """Normalised Gini of ``predicted`` as a ranking of ``actual`` (1 perfect, 0 random;
    ties in ``predicted`` count as randomly ordered). NaN when ``actual`` sums to 0."""
    a = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)

    def gini(values: np.ndarray, by: np.ndarray) -> float:
        n = len(values)
        order = np.argsort(-by, kind="stable")
        v, b = values[order], by[order]
        # Tie groups: replace each value by its group mean (expected order under random ties).
        start = np.r_[True, b[1:] != b[:-1]]
        grp = np.cumsum(start) - 1
        means = np.bincount(grp, weights=v) / np.bincount(grp)
        v = means[grp]
        total = v.sum()
        lorenz = np.cumsum(v) / total
        return float(lorenz.sum() / n - (n + 1) / (2.0 * n))

    if len(a) < 2 or not a.sum() > 0:
        return math.nan
    best = gini(a, a)
    return gini(a, p) / best if best > 0 else math.nan


def decile_calibration(actual: Any, predicted: Any, *, n_bins: int = 10) -> pd.DataFrame:
    """Mean predicted and actual value by decile of the prediction (``n_bins`` = highest).

    Customers are ranked by ``predicted`` (ties in order of appearance) and cut into
    ``n_bins`` groups of (nearly) equal size.

    Returns
    -------
    DataFrame indexed by ``decile`` with ``customers``, ``predicted``, ``actual`` (means) and
    ``predicted_total``, ``actual_total``.
    """
    a = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    n = len(a)
    bins = min(n_bins, max(n, 1))
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(p, kind="stable")] = np.arange(n)
    decile = (ranks * bins // max(n, 1)) + 1
    frame = pd.DataFrame({"decile": decile, "predicted": p, "actual": a})
    g = frame.groupby("decile")
    out = pd.DataFrame(
        {
            "customers": g.size(),
            "predicted": g["predicted"].mean(),
            "actual": g["actual"].mean(),
            "predicted_total": g["predicted"].sum(),
            "actual_total": g["actual"].sum(),
        }
    )
    return out


def _scores(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    err = predicted - actual
    total = float(actual.sum())
    return {
        "predicted_total": float(predicted.sum()),
        "actual_total": total,
        "aggregate_error_pct": 100.0 * (float(predicted.sum()) - total) / total
        if total > 0
        else math.nan,
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
    }


def _plain(v: Any) -> Any:
    """JSON-friendly: numpy scalars to Python, non-finite floats to None."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.bool_ | bool):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(float(v)) else None
    return v


@dataclass
class HoldoutMetrics:
    """Holdout accuracy of a purchase (and spend) model next to the naive baseline.

    Attributes
    ----------
    model
        Configuration name of the purchase model (``bgnbd``, ...).
    metrics
        ``{"model": {...}, "naive": {...}}``: ``predicted_total``, ``actual_total``,
        ``aggregate_error_pct``, ``mae``, ``rmse`` (holdout repeat purchases) and ``gini``,
        ``decile_mae``, ``value_predicted_total``, ``value_actual_total`` (holdout spend).
    deciles
        ``{"model": frame, "naive": frame}`` from :func:`decile_calibration` of the predicted
        holdout spend.
    by_frequency
        Mean holdout purchases by calibration frequency ``0 .. max_frequency`` (the last bin
        is "or more"): ``customers``, ``actual``, ``model``, ``naive``.
    predictions
        Per customer: ``actual``, ``model``, ``naive`` holdout purchases and ``actual_value``,
        ``model_value``, ``naive_value`` holdout spend (kept in memory, never logged).
    diagnosis
        Plain-words findings (always at least one sentence).
    flags
        ``degenerate_dropout``, ``holdout_unlike_calibration``, ``model_off_naive_ok``,
        ``naive_beats_model``.
    duration_holdout
        Holdout length in the summary's time unit.
    """

    model: str
    metrics: dict[str, dict[str, float]]
    deciles: dict[str, pd.DataFrame]
    by_frequency: pd.DataFrame
    predictions: pd.DataFrame
    diagnosis: list[str]
    flags: dict[str, bool]
    duration_holdout: float
    n_customers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly aggregate results (no customer rows)."""
        return _plain(
            {
                "model": self.model,
                "n_customers": self.n_customers,
                "duration_holdout": self.duration_holdout,
                "metrics": self.metrics,
                "diagnosis": self.diagnosis,
                "flags": self.flags,
                "deciles": {
                    k: d.reset_index().to_dict(orient="records") for k, d in self.deciles.items()
                },
                "by_frequency": self.by_frequency.reset_index().to_dict(orient="records"),
                **self.extra,
            }
        )


def holdout_metrics(
    model: Any,
    spend_model: GammaGamma | None,
    cal_holdout: pd.DataFrame,
    *,
    max_frequency: int = 7,
    tolerance: float = AGGREGATE_TOLERANCE,
    calibration_end: object | None = None,
    holdout_end: object | None = None,
) -> HoldoutMetrics:
    """Score a fitted purchase model (and spend model) on the holdout of ``cal_holdout``.

    Parameters
    ----------
    model
        Purchase model fitted on the calibration columns of ``cal_holdout``.
    spend_model
        Fitted :class:`~crmkit.models.clv.GammaGamma`, or ``None`` to rank by purchases (then
        the "value" metrics are about holdout purchases instead of spend).
    cal_holdout
        :func:`crmkit.features.rfm.calibration_holdout_summary` output.
    max_frequency
        Last calibration-frequency bin of :attr:`HoldoutMetrics.by_frequency`.
    tolerance
        An aggregate error beyond ``+-tolerance`` is "far off" in the diagnosis.
    calibration_end, holdout_end
        Dates, only used to name the periods in the diagnosis.

    Returns
    -------
    HoldoutMetrics
    """
    cal = calibration_columns(cal_holdout)
    duration = cal_holdout["duration_holdout"].to_numpy(dtype=np.float64)
    actual = cal_holdout["frequency_holdout"].to_numpy(dtype=np.float64)
    with np.errstate(all="ignore"):
        pred = model.conditional_expected_number_of_purchases_up_to_time(duration, cal).to_numpy()
    naive = naive_holdout_purchases(cal_holdout).to_numpy()
    has_value = spend_model is not None and "monetary_value_holdout" in cal_holdout.columns
    if has_value:
        spend = spend_model.conditional_expected_average_profit(cal).to_numpy(dtype=np.float64)
        own = np.where(cal["frequency"].to_numpy() > 0, cal["monetary_value"].to_numpy(), 0.0)
        actual_value = actual * cal_holdout["monetary_value_holdout"].to_numpy(dtype=np.float64)
        model_value, naive_value = pred * spend, naive * own
    else:
        actual_value, model_value, naive_value = actual, pred, naive

    metrics: dict[str, dict[str, float]] = {}
    deciles: dict[str, pd.DataFrame] = {}
    for name, p, v in (("model", pred, model_value), ("naive", naive, naive_value)):
        m = _scores(actual, p)
        d = decile_calibration(actual_value, v)
        m["gini"] = normalized_gini(actual_value, v)
        m["decile_mae"] = float(np.mean(np.abs(d["predicted"] - d["actual"])))
        m["value_predicted_total"] = float(np.sum(v))
        m["value_actual_total"] = float(np.sum(actual_value))
        metrics[name], deciles[name] = m, d

    freq = cal["frequency"].to_numpy()
    fbin = np.minimum(freq, max_frequency).astype(np.int64)
    by = (
        pd.DataFrame({"frequency": fbin, "actual": actual, "model": pred, "naive": naive})
        .groupby("frequency")
        .agg(
            customers=("actual", "size"),
            actual=("actual", "mean"),
            model=("model", "mean"),
            naive=("naive", "mean"),
        )
    )
    predictions = pd.DataFrame(
        {
            "actual": actual,
            "model": pred,
            "naive": naive,
            "actual_value": actual_value,
            "model_value": model_value,
            "naive_value": naive_value,
        },
        index=cal_holdout.index,
    )
    diagnosis, flags = _diagnose(
        model, metrics, tolerance, float(duration[0]) if len(duration) else 0.0
    )
    if calibration_end is not None and holdout_end is not None:
        span = (
            f"calibration up to {pd.Timestamp(calibration_end).date()}, holdout to "
            f"{pd.Timestamp(holdout_end).date()}"
        )
        diagnosis = [f"{d} ({span})" if i == 0 else d for i, d in enumerate(diagnosis)]
    return HoldoutMetrics(
        model=_model_key(model),
        metrics=metrics,
        deciles=deciles,
        by_frequency=by,
        predictions=predictions,
        diagnosis=diagnosis,
        flags=flags,
        duration_holdout=float(duration[0]) if len(duration) else 0.0,
        n_customers=len(cal_holdout),
    )


def _diagnose(
    model: Any, metrics: dict[str, dict[str, float]], tol: float, duration: float
) -> tuple[list[str], dict[str, bool]]:
    m, nv = metrics["model"], metrics["naive"]
    em, en = m["aggregate_error_pct"], nv["aggregate_error_pct"]
    notes: list[str] = []
    warns = list(getattr(getattr(model, "convergence_", None), "warnings", []) or [])
    degenerate = any("dropout process degenerate" in w for w in warns)
    far_m = math.isfinite(em) and abs(em) > 100 * tol
    far_n = math.isfinite(en) and abs(en) > 100 * tol
    unlike = far_m and far_n and (em > 0) == (en > 0)
    model_off = far_m and not far_n
    naive_wins = nv["mae"] < m["mae"]
    if unlike:
        more = "fewer" if em > 0 else "more"
        notes.append(
            f"the holdout period behaves unlike the calibration period (seasonality?): "
            f"customers made {m['actual_total']:,.0f} repeat purchases in the holdout, {more} "
            f"than the model predicts ({em:+.1f} %) and than their own calibration purchase "
            f"rates imply ({en:+.1f} %, the naive baseline). Nothing fitted on the calibration "
            "period can foresee that: a seasonal peak (e.g. Christmas), a campaign or a slump "
            "in the holdout. Compare with a holdout at the same time of year, or backtest over "
            "several cutoffs"
        )
    if degenerate:
        notes.append(
            "degenerate dropout process: the fitted model says (almost) nobody ever drops out, "
            "so P(alive) is about 1 for everyone and the forecast is essentially each "
            "customer's calibration purchase rate carried forward, with no decay "
            f"(aggregate error {em:+.1f} % vs {en:+.1f} % for the naive baseline). Consider a "
            "longer calibration period, ParetoNBD, or a penalizer"
        )
    if model_off:
        notes.append(
            f"the model's aggregate holdout forecast is off by {em:+.1f} % while the naive "
            f"baseline is within +-{100 * tol:.0f} % ({en:+.1f} %): the model's dropout/decay "
            "assumption does not fit this customer base; check the convergence warnings or try "
            "another model"
        )
    if naive_wins:
        notes.append(
            f"the naive calibration-rate baseline beats the model on per-customer error (MAE "
            f"{nv['mae']:.3f} vs {m['mae']:.3f} holdout purchases)"
        )
    if not notes:
        notes.append(
            f"no problem found: the aggregate holdout forecast is within +-{100 * tol:.0f} % "
            f"({em:+.1f} %, naive {en:+.1f} %) and the model beats the naive baseline on "
            f"per-customer error (MAE {m['mae']:.3f} vs {nv['mae']:.3f}) over "
            f"{duration:g} time units"
        )
    flags = {
        "degenerate_dropout": degenerate,
        "holdout_unlike_calibration": unlike,
        "model_off_naive_ok": model_off,
        "naive_beats_model": naive_wins,
    }
    return notes, flags


# --------------------------------------------------------------------------------------------
# Rolling-origin backtest
# --------------------------------------------------------------------------------------------


@dataclass
class BacktestResult:
    """Scores of each model and the naive baseline on each cutoff.

    Attributes
    ----------
    scores
        One row per (cutoff, model): ``cutoff``, ``model``, ``n_customers``, ``actual``,
        ``predicted``, ``aggregate_error_pct``, ``mae``, ``rmse``, ``degenerate`` (the fit
        warned of a degenerate dropout process), ``error`` (why a fit failed, else None).
    summary
        Per model: ``mean_mae``, ``mean_rmse``, ``mean_abs_aggregate_error_pct``,
        ``cutoffs_ok``; sorted by ``mean_mae``.
    champion
        Lowest mean MAE among the candidates that fitted on every cutoff (``"naive"`` when the
        baseline wins).
    best_model
        The best probabilistic model (the champion unless the naive baseline won; ``None``
        when no model fitted on every cutoff).
    message
        The verdict in plain words.
    """

    scores: pd.DataFrame
    summary: pd.DataFrame
    champion: str
    best_model: str | None
    message: str
    holdout_days: int = 0
    unit: str = "D"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly result."""
        scores = self.scores.copy()
        scores["cutoff"] = scores["cutoff"].dt.strftime("%Y-%m-%d")
        return _plain(
            {
                "champion": self.champion,
                "best_model": self.best_model,
                "message": self.message,
                "holdout_days": self.holdout_days,
                "unit": self.unit,
                "summary": self.summary.reset_index().to_dict(orient="records"),
                "scores": scores.to_dict(orient="records"),
            }
        )


def backtest(
    lines: pd.DataFrame,
    cutoffs: Sequence[object],
    holdout_days: int,
    unit: str = "W",
    models: Sequence[str] = ("bgnbd", "mbgnbd", "pareto_nbd"),
    *,
    penalizer: float = 0.0,
) -> BacktestResult:
    """Rolling-origin backtest: at each cutoff fit every model on the history up to it and
    score its forecast of the next ``holdout_days`` days, next to the naive baseline.

    Parameters
    ----------
    lines
        Cleaned order lines (``customer_id``, ``order_ts``; ``quantity`` if present).
    cutoffs
        Calibration end dates (e.g. :func:`crmkit.features.split.rolling_cutoffs` with
        ``horizon_days=holdout_days``); each needs ``holdout_days`` of data after it.
    holdout_days
        Holdout length in days.
    unit
        Time unit of the summaries (``"D"``, ``"W"``, ``"M"``).
    models
        Configuration names of the candidates (:data:`MODELS`).
    penalizer
        Passed to every model.

    Returns
    -------
    BacktestResult
        The champion has the lowest mean per-customer MAE of holdout purchases over the
        cutoffs; the naive baseline can win, and the message says so.
    """
    if not (isinstance(holdout_days, int | np.integer) and holdout_days >= 1):
        raise ValueError(f"holdout_days must be an integer >= 1, got {holdout_days!r}")
    if not cutoffs:
        raise ValueError("backtest needs at least one cutoff")
    for m in models:
        if m not in MODELS:
            raise ValueError(f"unknown purchase model {m!r}; use one of {sorted(MODELS)}")
    last_day = lines["order_ts"].max().normalize()
    rows: list[dict[str, Any]] = []
    for c in cutoffs:
        cut = pd.Timestamp(c).normalize()
        end = cut + pd.Timedelta(days=int(holdout_days))
        if end > last_day:
            raise DataContractError(
                f"cutoff {cut.date()} plus the {holdout_days}-day holdout runs past the data, "
                f"which ends {last_day.date()}",
                rule="time_split",
            )
        ch = calibration_holdout_summary(lines, cut, end, unit=unit, value_col=None)
        cal = calibration_columns(ch)
        duration = ch["duration_holdout"].to_numpy(dtype=np.float64)
        actual = ch["frequency_holdout"].to_numpy(dtype=np.float64)
        base = {"cutoff": cut, "n_customers": len(ch)}
        naive = naive_holdout_purchases(ch).to_numpy()
        rows.append({**base, "model": "naive", **_row(actual, naive), "degenerate": False})
        for name in models:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fitted = make_model(name, penalizer=penalizer).fit(cal)
                with np.errstate(all="ignore"):
                    pred = fitted.conditional_expected_number_of_purchases_up_to_time(
                        duration, cal
                    ).to_numpy()
            except (ConvergenceError, DataContractError) as exc:
                rows.append({**base, "model": name, "error": str(exc).splitlines()[0]})
                continue
            degenerate = any(
                issubclass(w.category, DegenerateFitWarning)
                and "dropout process degenerate" in str(w.message)
                for w in caught
            )
            rows.append({**base, "model": name, **_row(actual, pred), "degenerate": degenerate})
    cols = [
        "cutoff",
        "model",
        "n_customers",
        "actual",
        "predicted",
        "aggregate_error_pct",
        "mae",
        "rmse",
        "degenerate",
        "error",
    ]
    scores = pd.DataFrame(rows).reindex(columns=cols)
    scores["error"] = scores["error"].astype(object).where(scores["error"].notna(), None)
    scores["degenerate"] = scores["degenerate"].fillna(False).astype(bool)
    n_cut = len(cutoffs)
    summary = (
        scores.assign(abs_agg=scores["aggregate_error_pct"].abs())
        .groupby("model", sort=False)
        .agg(
            mean_mae=("mae", "mean"),
            mean_rmse=("rmse", "mean"),
            mean_abs_aggregate_error_pct=("abs_agg", "mean"),
            cutoffs_ok=("mae", "count"),
        )
    )
    complete = summary[summary["cutoffs_ok"] == n_cut].sort_values("mean_mae")
    summary = summary.sort_values("mean_mae", na_position="last")
    champion = str(complete.index[0])
    models_ok = [m for m in complete.index if m != "naive"]
    best_model = models_ok[0] if models_ok else None
    failed = [m for m in summary.index if summary.loc[m, "cutoffs_ok"] < n_cut]
    naive_mae = float(summary.loc["naive", "mean_mae"])
    if champion == "naive":
        message = (
            f"the naive calibration-rate baseline wins (mean MAE {naive_mae:.4f} over {n_cut} "
            "cutoff(s)): no probabilistic model beats carrying each customer's purchase rate "
            "forward"
        )
        if best_model is not None:
            message += (
                f"; the best model is {best_model} (mean MAE "
                f"{float(complete.loc[best_model, 'mean_mae']):.4f})"
            )
    else:
        message = (
            f"champion: {champion} (mean MAE {float(complete.loc[champion, 'mean_mae']):.4f} "
            f"vs {naive_mae:.4f} for the naive baseline over {n_cut} cutoff(s))"
        )
    if failed:
        message += f"; not considered (failed on some cutoff): {', '.join(failed)}"
    return BacktestResult(
        scores=scores,
        summary=summary,
        champion=champion,
        best_model=best_model,
        message=message,
        holdout_days=int(holdout_days),
        unit=unit,
    )


def _row(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    s = _scores(actual, predicted)
    return {
        "actual": s["actual_total"],
        "predicted": s["predicted_total"],
        "aggregate_error_pct": s["aggregate_error_pct"],
        "mae": s["mae"],
        "rmse": s["rmse"],
    }


# --------------------------------------------------------------------------------------------
# Cohort tracking
# --------------------------------------------------------------------------------------------


def repeat_purchase_tracking(
    model: Any,
    lines: pd.DataFrame,
    calibration_end: object,
    holdout_end: object,
    *,
    unit: str = "W",
    period_days: int = 7,
) -> pd.DataFrame:
    """Actual and expected repeat purchases of the calibration cohort, period by period,
    through calibration and holdout (the tracking plots of Fader, Hardie and Lee 2005).

    The cohort is every customer whose first purchase falls on or before ``calibration_end``.
    The expectation at the end of day ``e`` is ``sum_i E[X((e - b_i) / unit_days)]`` over the
    cohort, with ``b_i`` customer ``i``'s first purchase day and ``E[X(t)]`` the model's
    repeat purchases of a new customer by age ``t``
    (:meth:`~crmkit.models.clv.BetaGeo.expected_number_of_purchases_up_to_time`): an
    unconditional forecast that uses the calibration data only through the parameters.
    Periods of ``period_days`` days are laid back and forth from the end of
    ``calibration_end``, so one period boundary is the calibration end (the first and last
    periods can be shorter: they are clipped to the first purchase and to ``holdout_end``).

    Returns
    -------
    DataFrame indexed by ``period_end`` (the last day of each period) with ``actual``,
    ``predicted`` (per period), ``actual_cum``, ``predicted_cum`` and ``holdout`` (whether the
    period lies after the calibration end).
    """
    from crmkit.data.clean import analysis_cutoff

    if not (isinstance(period_days, int | np.integer) and period_days >= 1):
        raise ValueError(f"period_days must be an integer >= 1, got {period_days!r}")
    try:
        ud = UNIT_DAYS[unit]
    except KeyError:
        raise ValueError(f"unknown time unit {unit!r}; use one of {sorted(UNIT_DAYS)}") from None
    cal_day = _day_number(calibration_end)
    hold_day = _day_number(holdout_end)
    if hold_day <= cal_day:
        raise DataContractError(
            f"holdout_end {holdout_end} must come after calibration_end {calibration_end}",
            rule="time_split",
        )
    days = purchase_days(lines, value_col=None, end=analysis_cutoff(holdout_end))
    first, _ = days.first_and_last_day()
    has = days.days_per_customer() > 0
    cohort = has & (first <= cal_day)
    if not cohort.any():
        raise DataContractError(
            f"no customer bought on or before {calibration_end}", rule="empty_window"
        )
    repeat = cohort[days.day_code] & (days.day != first[days.day_code])
    start = int(first[cohort].min())
    k_back = -(-(cal_day - start) // period_days)
    k_fwd = -(-(hold_day - cal_day) // period_days)
    ends = cal_day + period_days * np.arange(-k_back, k_fwd + 1, dtype=np.int64)
    ends = np.unique(np.clip(ends, start, hold_day))
    actual_cum = np.searchsorted(np.sort(days.day[repeat]), ends, side="right").astype(float)
    births, counts = np.unique(first[cohort], return_counts=True)
    ages = np.maximum(ends[None, :] - births[:, None], 0).astype(np.float64) / ud
    with np.errstate(all="ignore"):
        expected = np.asarray(model.expected_number_of_purchases_up_to_time(ages))
    predicted_cum = counts.astype(np.float64) @ expected
    index = pd.DatetimeIndex(
        pd.to_datetime(ends.astype("datetime64[D]")).as_unit("ns"), name="period_end"
    )
    frame = pd.DataFrame(
        {
            "actual": np.diff(actual_cum, prepend=0.0),
            "predicted": np.diff(predicted_cum, prepend=0.0),
            "actual_cum": actual_cum,
            "predicted_cum": predicted_cum,
            "holdout": ends > cal_day,
        },
        index=index,
    )
    frame.attrs["calibration_end"] = pd.Timestamp(calibration_end).normalize()
    frame.attrs["unit"] = unit
    frame.attrs["period_days"] = int(period_days)
    return frame


def _day_number(when: object) -> int:
    """Day number (days since 1970-01-01) of the last day a date covers."""
    from crmkit.data.clean import analysis_cutoff

    last_instant = analysis_cutoff(when) - pd.Timedelta(1, "ns")
    return int(np.datetime64(last_instant, "D").astype(np.int64))
