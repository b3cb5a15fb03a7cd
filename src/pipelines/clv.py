"""The ``clv`` stage: fit a purchase model (BG/NBD, MBG/NBD, Pareto/NBD, or the backtest
champion) and the Gamma-Gamma spend model at an analysis date, predict each customer's
P(alive), expected purchases, next purchase date, expected spend and discounted CLV with
intervals, and - given a holdout end - score the forecast on the holdout with plots.

Outputs (written all-or-nothing into ``out_dir``)
-------------------------------------------------
``params.json``
    Fitted parameters with standard errors and 95 % intervals, log-likelihoods, convergence
    reports, warnings, CLV settings and totals (``gamma_gamma`` holds ``gamma`` and, as
    lifetimes calls it, ``v``).
``customers.parquet``
    One row per customer: ``customer_id, frequency, recency, T, monetary_value, p_alive,
    expected_purchases[_lower/_upper]`` (over the CLV horizon), ``next_purchase_date``,
    ``expected_spend[_lower/_upper], clv[_lower/_upper]``.
``p_alive.png``
    P(alive) by frequency and recency.
``backtest.json``
    With ``model: auto``: the rolling-origin backtest that chose the model.
``holdout_metrics.json``, ``calibration_vs_holdout.png``, ``tracking_cumulative.png``, ``tracking_weekly.png``, ``clv_deciles.png``
    With ``holdout_end``: holdout accuracy next to the naive baseline, diagnosis and plots.

The stage works on order-level logs as well as line-level ones: CLV needs customers, dates
and amounts, no products. See ``docs/clv.md``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from crmkit.data.io import staged_output, write_parquet

if TYPE_CHECKING:  # the model modules (scipy) load only when the stage runs
    from crmkit.models.clv import GammaGamma
    from crmkit.models.clv_validation import BacktestResult, HoldoutMetrics
    from crmkit.models.clv_value import CLVResult

__all__ = ["ClvConfig", "ClvResult", "run_clv", "log_clv_to_mlflow", "backtest_cutoffs"]

ModelName = Literal["bgnbd", "mbgnbd", "pareto_nbd"]
#: An average month in days (365.25 / 12), the default cash-flow period.
MONTH_DAYS = 365.25 / 12.0


class ClvConfig(BaseModel):
    """Settings of the CLV stage (``clv:`` in the pipeline YAML).

    Attributes
    ----------
    unit
        Time unit of the models: ``D`` days, ``W`` weeks (days / 7), ``M`` months.
    model
        Purchase model, or ``auto`` for the champion of a rolling-origin backtest on the data
        before the analysis date (the best probabilistic model if the naive baseline wins).
    horizon_periods, period_days, discount_rate, margin
        CLV over ``horizon_periods`` periods of ``period_days`` days, discounted at
        ``discount_rate`` per period, times the profit ``margin``.
    penalizer
        L2 penalizer of both models.
    n_draws, level
        Parameter draws and coverage of the intervals (0 draws: no intervals).
    backtest_cutoffs, backtest_holdout_days, backtest_models
        With ``model: auto``: number of cutoffs (stepping back from the analysis date by the
        holdout length), holdout length in days, and the candidates.
    seed
        Seed of the parameter draws.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: Literal["D", "W", "M"] = "W"
    model: Literal["bgnbd", "mbgnbd", "pareto_nbd", "auto"] = "bgnbd"
    horizon_periods: int = Field(12, ge=1)
    period_days: float = Field(MONTH_DAYS, gt=0)
    discount_rate: float = Field(0.01, ge=0)
    margin: float = Field(1.0, ge=0)
    penalizer: float = Field(0.0, ge=0)
    n_draws: int = Field(200, ge=0)
    level: float = Field(0.95, gt=0, lt=1)
    backtest_cutoffs: int = Field(3, ge=1)
    backtest_holdout_days: int = Field(91, ge=1)
    backtest_models: list[ModelName] = ["bgnbd", "mbgnbd", "pareto_nbd"]
    seed: int = 0


@dataclass
class ClvResult:
    """What :func:`run_clv` computed (and wrote).

    Attributes
    ----------
    customers
        The ``customers.parquet`` frame.
    params
        The ``params.json`` content.
    model_name
        Configuration name of the purchase model used.
    purchase_model, spend_model
        The fitted models.
    clv
        The full :class:`~crmkit.models.clv_value.CLVResult` (per-period cash flows).
    holdout
        Holdout metrics (with ``holdout_end``).
    backtest
        The backtest (with ``model: auto``).
    tracking
        Cohort tracking frame (with ``holdout_end``).
    figures
        Plot name (file name) -> matplotlib Figure.
    warnings
        Plain-words warnings of the fits and the model choice.
    """

    customers: pd.DataFrame
    params: dict[str, Any]
    model_name: str
    purchase_model: Any
    spend_model: GammaGamma
    clv: CLVResult
    as_of: pd.Timestamp
    config: ClvConfig
    holdout: HoldoutMetrics | None = None
    backtest: BacktestResult | None = None
    tracking: pd.DataFrame | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _plain(v: Any) -> Any:
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


def backtest_cutoffs(
    lines: pd.DataFrame, as_of: object, holdout_days: int, n: int, *, min_history_days: int = 90
) -> list[pd.Timestamp]:
    """Cutoffs ``as_of - k * holdout_days`` (k = 1..n, ascending) whose holdout ends by
    ``as_of`` and that leave at least ``min_history_days`` of history: the backtest never
    looks past the analysis date."""
    first = lines["order_ts"].min().normalize()
    end = pd.Timestamp(as_of).normalize()
    cuts = [end - pd.Timedelta(days=k * int(holdout_days)) for k in range(1, n + 1)]
    return sorted(c for c in cuts if c >= first + pd.Timedelta(days=min_history_days))


def _model_block(model: Any, key: str) -> dict[str, Any]:
    from crmkit.models.clv_value import population_mean_spend

    out: dict[str, Any] = {k: float(v) for k, v in model.params_.items()}
    if key == "gamma_gamma":
        out["v"] = out["gamma"]  # lifetimes' name
    out["log_likelihood"] = float(model.log_likelihood_)
    out["n_customers"] = model.n_customers_
    out["penalizer"] = float(model.penalizer_)
    se = getattr(model, "standard_errors_", None)
    ci = getattr(model, "confidence_intervals_", None)
    if se is not None:
        out["standard_errors"] = {k: float(v) for k, v in se.items()}
    if ci is not None:
        out["confidence_intervals"] = {
            k: {"lower": float(r["lower 95% bound"]), "upper": float(r["upper 95% bound"])}
            for k, r in ci.iterrows()
        }
    if key == "gamma_gamma":
        for name in ("standard_errors", "confidence_intervals"):
            if name in out and "gamma" in out[name]:
                out[name]["v"] = out[name]["gamma"]
        out["population_mean_spend"] = population_mean_spend(model)
        out["frequency_spend_correlation"] = float(model.frequency_spend_correlation_)
    return out


def _fit_quietly(model: Any, summary: pd.DataFrame) -> Any:
    """Fit; the fit's warnings are kept in ``convergence_.warnings`` (and reported in
    params.json), so the Python warnings are not repeated here."""
    from crmkit.models.clv import DegenerateFitWarning, SpendCorrelationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateFitWarning)
        warnings.simplefilter("ignore", SpendCorrelationWarning)
        return model.fit(summary)


def _next_purchase_dates(as_of: pd.Timestamp, wait_days: np.ndarray) -> pd.Series:
    """``as_of + wait`` as calendar dates; None beyond 200 years (no meaningful date)."""
    ok = np.isfinite(wait_days) & (wait_days < 200 * 365.25)
    days = np.floor(np.where(ok, wait_days, 0.0)).astype(np.int64)
    dates = (as_of.to_datetime64().astype("datetime64[D]") + days).astype(object)
    return pd.Series(np.where(ok, dates, None), dtype=object)


def run_clv(
    lines: pd.DataFrame,
    as_of: object,
    out_dir: str | os.PathLike,
    config: ClvConfig | None = None,
    *,
    holdout_end: object | None = None,
) -> ClvResult:
    """Fit the CLV models on cleaned ``lines`` at ``as_of``, predict every customer and write
    the outputs to ``out_dir`` (all-or-nothing, see the module docstring).

    Parameters
    ----------
    lines
        Cleaned order lines (``customer_id``, ``order_ts``, ``amount``; order-level logs
        are fine).
    as_of
        Analysis date: purchases up to the end of that day are the calibration data.
    out_dir
        Output folder.
    config
        Stage settings (default :class:`ClvConfig`).
    holdout_end
        Optional end of a holdout period after ``as_of`` (within the data): then the forecast
        is scored against what customers did until then (``holdout_metrics.json``, plots).

    Returns
    -------
    ClvResult
    """
    from crmkit.features.rfm import UNIT_DAYS, calibration_holdout_summary, rfm_summary
    from crmkit.models import clv_plots
    from crmkit.models.clv import GammaGamma
    from crmkit.models.clv_validation import (
        backtest,
        holdout_metrics,
        make_model,
        repeat_purchase_tracking,
    )
    from crmkit.models.clv_value import customer_lifetime_value

    cfg = config or ClvConfig()
    when = pd.Timestamp(as_of).normalize()
    ud = UNIT_DAYS[cfg.unit]
    notes: list[str] = []

    bt: BacktestResult | None = None
    model_name = cfg.model
    if model_name == "auto":
        cuts = backtest_cutoffs(lines, when, cfg.backtest_holdout_days, cfg.backtest_cutoffs)
        if not cuts:
            model_name = "bgnbd"
            notes.append(
                f"model auto: no backtest cutoff fits (a {cfg.backtest_holdout_days}-day holdout "
                "needs more history before the analysis date); using bgnbd"
            )
        else:
            bt = backtest(
                lines,
                cuts,
                cfg.backtest_holdout_days,
                cfg.unit,
                tuple(cfg.backtest_models),
                penalizer=cfg.penalizer,
            )
            if bt.best_model is None:
                model_name = "bgnbd"
                notes.append(
                    f"model auto: no model fitted on every cutoff; using bgnbd. {bt.message}"
                )
            else:
                model_name = bt.best_model
                notes.append(f"model auto: {bt.message}; using {model_name}")

    summary = rfm_summary(lines, when, unit=cfg.unit)
    purchase_model = _fit_quietly(make_model(model_name, penalizer=cfg.penalizer), summary)
    spend_model = _fit_quietly(GammaGamma(penalizer=cfg.penalizer), summary)
    for m in (purchase_model, spend_model):
        notes += [f"{m._model_name}: {w}" for w in m.convergence_.warnings]

    value = customer_lifetime_value(
        purchase_model,
        spend_model,
        summary,
        unit_days=ud,
        horizon_periods=cfg.horizon_periods,
        period_days=cfg.period_days,
        discount_rate=cfg.discount_rate,
        margin=cfg.margin,
        n_draws=cfg.n_draws,
        level=cfg.level,
        seed=cfg.seed,
    )
    notes += value.notes
    from crmkit.models.p_alive import p_alive_note, reported_p_alive

    p_alive = reported_p_alive(purchase_model, summary, ud)
    if note := p_alive_note(purchase_model, int(p_alive.isna().sum()), ud):
        notes.append(note)
    with np.errstate(all="ignore"):
        wait = purchase_model.expected_time_to_next_purchase(summary).to_numpy() * ud
    customers = summary[["frequency", "recency", "T", "monetary_value"]].copy()
    customers["p_alive"] = p_alive
    customers = customers.join(value.customers)
    customers.insert(
        customers.columns.get_loc("expected_spend"),
        "next_purchase_date",
        _next_purchase_dates(when, wait).to_numpy(),
    )
    customers.index.name = "customer_id"
    customers = customers.reset_index()

    params: dict[str, Any] = {
        "as_of": str(when.date()),
        "unit": cfg.unit,
        "purchase_model": model_name,
        model_name: _model_block(purchase_model, model_name),
        "gamma_gamma": _model_block(spend_model, "gamma_gamma"),
        "convergence": {
            model_name: asdict(purchase_model.convergence_),
            "gamma_gamma": asdict(spend_model.convergence_),
        },
        "warnings": notes,
        "clv": {"settings": value.settings, "totals": value.totals},
        "config": cfg.model_dump(),
    }
    if bt is not None:
        params["backtest"] = {"champion": bt.champion, "message": bt.message}

    figures: dict[str, Any] = {}
    t_max = float(summary["T"].max())
    figures["p_alive.png"] = clv_plots.plot_p_alive_heatmap(
        purchase_model, T=t_max if t_max > 0 else 1.0
    ).figure

    hm: HoldoutMetrics | None = None
    tracking: pd.DataFrame | None = None
    if holdout_end is not None:
        ch = calibration_holdout_summary(lines, when, holdout_end, unit=cfg.unit)
        hm = holdout_metrics(
            purchase_model, spend_model, ch, calibration_end=when, holdout_end=holdout_end
        )
        tracking = repeat_purchase_tracking(
            purchase_model, lines, when, holdout_end, unit=cfg.unit, period_days=7
        )
        figures["calibration_vs_holdout.png"] = clv_plots.plot_calibration_vs_holdout(
            hm, naive=True
        ).figure
        figures["tracking_cumulative.png"] = clv_plots.plot_tracking_cumulative(tracking).figure
        figures["tracking_weekly.png"] = clv_plots.plot_tracking_incremental(tracking).figure
        figures["clv_deciles.png"] = clv_plots.plot_clv_deciles(hm).figure
        params["holdout"] = {
            "holdout_end": str(pd.Timestamp(holdout_end).date()),
            "diagnosis": hm.diagnosis,
            "flags": hm.flags,
        }

    params = _plain(params)
    with staged_output(out_dir) as stage:
        stage = Path(stage)
        (stage / "params.json").write_text(json.dumps(params, indent=2) + "\n", "utf-8")
        write_parquet(customers, stage / "customers.parquet")
        if bt is not None:
            (stage / "backtest.json").write_text(json.dumps(bt.to_dict(), indent=2) + "\n", "utf-8")
        if hm is not None:
            holdout = hm.to_dict()
            holdout["calibration_end"] = str(when.date())
            holdout["holdout_end"] = str(pd.Timestamp(holdout_end).date())
            (stage / "holdout_metrics.json").write_text(
                json.dumps(holdout, indent=2) + "\n", "utf-8"
            )
        for name, fig in figures.items():
            fig.savefig(stage / name, dpi=110)

    return ClvResult(
        customers=customers,
        params=params,
        model_name=model_name,
        purchase_model=purchase_model,
        spend_model=spend_model,
        clv=value,
        as_of=when,
        config=cfg,
        holdout=hm,
        backtest=bt,
        tracking=tracking,
        figures=figures,
        warnings=notes,
    )


def log_clv_to_mlflow(result: ClvResult) -> None:
    """Log a CLV result into the ACTIVE MLflow run (the caller opens it, e.g. with
    :func:`crmkit.tracking.stage_run`): settings as params; fitted parameters with their
    95 % bounds, log-likelihoods, convergence, CLV totals, holdout and backtest scores as
    metrics; ``params.json``, ``holdout_metrics.json``, ``backtest.json`` and the
    convergence reports as artifacts under ``clv/``; the plots under ``plots/clv_*``.
    Model parameters and aggregates only - never customer rows.

    Raises
    ------
    RuntimeError
        No active run.
    """
    import mlflow

    from crmkit.tracking import flat_metrics, log_figure, log_json

    if mlflow.active_run() is None:
        raise RuntimeError("log_clv_to_mlflow needs an active MLflow run (use stage_run)")
    cfg = result.config
    mlflow.log_params(
        {
            **{
                f"clv.{k}": (",".join(v) if isinstance(v, list) else v)
                for k, v in cfg.model_dump().items()
            },
            "clv.as_of": str(result.as_of.date()),
            "clv.purchase_model": result.model_name,
        }
    )
    p = result.params
    metrics: dict[str, Any] = {}
    for key in (result.model_name, "gamma_gamma"):
        block = p[key]
        m = {
            k: v for k, v in block.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        for name, bounds in (block.get("confidence_intervals") or {}).items():
            m[f"{name}_lower"] = bounds["lower"]
            m[f"{name}_upper"] = bounds["upper"]
        conv = p["convergence"][key]
        m["convergence"] = {
            "success": conv["success"],
            "gradient_norm": conv["gradient_norm"],
            "iterations": conv["iterations"],
            "n_warnings": len(conv["warnings"]),
        }
        metrics[key] = m
    metrics["totals"] = p["clv"]["totals"]
    if result.holdout is not None:
        metrics["holdout"] = result.holdout.metrics
        metrics["holdout"]["flags"] = dict(result.holdout.flags)
    if result.backtest is not None:
        metrics["backtest"] = {
            m: dict(row) for m, row in result.backtest.summary.to_dict(orient="index").items()
        }
    mlflow.log_metrics(flat_metrics(metrics, prefix="clv."))
    log_json(p, "clv/params.json")
    report = "\n".join(
        f"{key}: {text}"
        for key, text in (
            (result.model_name, str(result.purchase_model.convergence_)),
            ("gamma_gamma", str(result.spend_model.convergence_)),
        )
    )
    mlflow.log_text(report + "\n", "clv/convergence.txt")
    if result.holdout is not None:
        log_json(result.holdout.to_dict(), "clv/holdout_metrics.json")
    if result.backtest is not None:
        log_json(result.backtest.to_dict(), "clv/backtest.json")
    for name, fig in result.figures.items():
        log_figure(fig, f"clv_{name}")
