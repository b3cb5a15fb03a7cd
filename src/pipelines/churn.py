"""The ``churn`` stage: train a calibrated LightGBM churn model on rolling snapshots before an
as-of date, score every customer at the as-of date, and - when the data go on past the as-of
date's label window - evaluate it against three baselines.

:func:`run_churn` writes, all-or-nothing (:func:`crmkit.data.io.staged_output`):

* ``metrics.json`` - test metrics of LightGBM and the baselines (``lightgbm``,
  ``recency_rule``, ``rfm_score``, ``bgnbd`` - per metric the better of ``bgnbd_p_alive``,
  scored by 1 - P(alive), and ``bgnbd_p_no_purchase``, P(no purchase in the window)), metrics
  per split, counts, the cutoffs used, the scored-customer rule and the risk bands;
  ``"metrics": null`` with a ``reason`` when the as-of date's label window is not (fully) in
  the data or holds one class only;
* ``customers.parquet`` - ``customer_id, churn_probability, risk_band, top_reasons`` of every
  scored customer at the as-of date;
* plots: ``roc.png``, ``pr.png``, ``calibration.png``, ``lift.png``, ``importance.png``,
  ``shap_summary.png``.

The rules (label, cutoffs, scored customers, features, calibration, metrics) are in
``docs/churn.md``; the settings are :class:`ChurnConfig` (``churn:`` in the pipeline YAML).
:class:`ChurnScorer` is the fitted model in portable form (JSON state + LightGBM text model)
that scores order lines at any as-of date, for batch scoring.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crmkit.errors import DataContractError

__all__ = [
    "LightGBMSettings",
    "ChurnConfig",
    "ChurnResult",
    "RISK_BANDS",
    "compute_churn",
    "write_churn",
    "run_churn",
    "log_churn_run",
    "ChurnScorer",
]

#: Names of the risk bands, lowest first.
RISK_BANDS: tuple[str, str, str] = ("low", "medium", "high")
BASELINES: tuple[str, ...] = ("recency_rule", "rfm_score", "bgnbd")
#: The two BG/NBD scores behind the ``bgnbd`` baseline, the preferred one on ties first.
BGNBD_SCORES: tuple[str, ...] = ("bgnbd_p_no_purchase", "bgnbd_p_dead")
#: +1: higher is better, -1: lower is better.
METRIC_DIRECTION: dict[str, int] = {
    "roc_auc": 1,
    "pr_auc": 1,
    "brier": -1,
    "log_loss": -1,
    "top_decile_lift": 1,
    "top_decile_capture": 1,
}
PLOT_FILES: tuple[str, ...] = (
    "roc.png",
    "pr.png",
    "calibration.png",
    "lift.png",
    "importance.png",
    "shap_summary.png",
)


class LightGBMSettings(BaseModel):
    """LightGBM settings of the churn model (``churn.lightgbm:``); see
    :class:`crmkit.models.churn.ChurnModel` for each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_estimators: int = Field(1000, ge=1)
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(4, ge=2)
    max_depth: int = -1
    min_child_samples: int = Field(200, ge=1)
    reg_lambda: float = Field(10.0, ge=0)
    reg_alpha: float = Field(0.0, ge=0)
    feature_fraction: float = Field(0.5, gt=0, le=1)
    bagging_fraction: float = Field(0.5, gt=0, le=1)
    bagging_freq: int = Field(1, ge=0)
    min_split_gain: float = Field(0.0, ge=0)
    max_bin: int = Field(63, ge=3)
    class_weight: Literal["balanced", "none"] = "balanced"
    monotone_recency: bool = True
    early_stopping_rounds: int = Field(100, ge=1)
    early_stopping_metric: Literal["binary_logloss", "auc"] = "binary_logloss"
    n_jobs: int = Field(2, ge=1)


class ChurnConfig(BaseModel):
    """Settings of the churn stage (``churn:`` in the pipeline YAML).

    Attributes
    ----------
    window_days
        Label window H: churned = no purchase in the H days after the cutoff.
    snapshot_every
        Days between training cutoffs.
    n_snapshots
        Most training cutoffs (the latest ones).
    min_history_days
        Days of data every training cutoff needs before it.
    adapt_history
        When the configured snapshots do not fit the data (a short history), use fewer,
        closer cutoffs with less history each (down to 14 days,
        :func:`crmkit.models.churn_plan.adaptive_plan`) and say so in the progress output,
        ``notes`` and ``metrics.json`` (``history_adapted``); ``False``: refuse instead.
    min_orders, active_within_days
        The scored-customer rule (at every cutoff): customers with at least ``min_orders``
        purchase orders on or before the cutoff and, unless ``None``, a purchase in its last
        ``active_within_days`` days.
    feature_windows
        Trailing windows (days) of the behavioural features.
    bgnbd_features
        Add the BG/NBD outputs (fitted per cutoff on its own RFM summary) as features.
    lightgbm
        :class:`LightGBMSettings`.
    calibration
        ``sigmoid`` (Platt), ``isotonic`` or ``none``; fitted on the validation cutoff.
    bgnbd_prior
        Boost from the BG/NBD log-odds of no purchase in the window (``always``), not
        (``never``), or whichever scores the better validation ROC-AUC (``auto``; above
        100,000 training rows decided on a sample of that size, see
        :class:`crmkit.models.churn.ChurnModel` ``prior_sample_rows``).
    search, search_trials
        Bounded random search (``search_trials`` trials, selected on validation ROC-AUC).
    risk_thresholds
        ``[medium, high]``: risk band ``low`` below ``medium``, ``high`` from ``high`` on (on
        the calibrated churn probability).
    top_reasons
        Reasons per customer in ``customers.parquet``.
    min_class_count
        Fewest churners and non-churners each in the training and the validation snapshots.
    shap_sample
        Customers in the SHAP summary plot (a seeded sample).
    seed
        Seed of LightGBM and of the search; same data + seed give identical probabilities.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_days: int = Field(90, ge=1, le=730)
    snapshot_every: int = Field(7, ge=1)
    n_snapshots: int = Field(24, ge=2)
    min_history_days: int = Field(42, ge=0)
    adapt_history: bool = True
    min_orders: int = Field(1, ge=1)
    active_within_days: int | None = Field(None, ge=0)
    feature_windows: list[int] = [30, 90, 180, 365]
    bgnbd_features: bool = True
    lightgbm: LightGBMSettings = LightGBMSettings()
    calibration: Literal["sigmoid", "isotonic", "none"] = "sigmoid"
    bgnbd_prior: Literal["auto", "always", "never"] = "auto"
    search: bool = False
    search_trials: int = Field(10, ge=1, le=100)
    risk_thresholds: tuple[float, float] = (0.5, 0.8)
    top_reasons: int = Field(3, ge=0, le=10)
    min_class_count: int = Field(20, ge=1)
    shap_sample: int = Field(2000, ge=10)
    seed: int = 0

    @field_validator("feature_windows")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v):
            raise ValueError("feature_windows must be a non-empty list of days >= 1")
        return v

    @model_validator(mode="after")
    def _thresholds(self) -> ChurnConfig:
        lo, hi = self.risk_thresholds
        if not 0.0 < lo < hi < 1.0:
            raise ValueError(f"risk_thresholds must satisfy 0 < medium < high < 1, got {lo}, {hi}")
        return self

    def model_params(self) -> dict[str, Any]:
        """Keyword arguments of :class:`crmkit.models.churn.ChurnModel`."""
        lg = self.lightgbm.model_dump()
        monotone = lg.pop("monotone_recency")
        lg["class_weight"] = None if lg["class_weight"] == "none" else "balanced"
        return {
            **lg,
            "monotone_constraints": {"recency_days": 1} if monotone else {},
            "calibration": self.calibration,
            "prior_feature": f"bg_p_no_purchase_{self.window_days}d"
            if self.bgnbd_features
            else None,
            "prior": self.bgnbd_prior,
            "search_trials": self.search_trials if self.search else 0,
            "random_state": self.seed,
            "min_class_count": self.min_class_count,
        }


@dataclass
class ChurnResult:
    """What :func:`compute_churn` produced.

    Attributes
    ----------
    customers
        ``customer_id, churn_probability, risk_band, top_reasons`` at the as-of date.
    metrics
        The content of ``metrics.json``.
    model
        The fitted :class:`crmkit.models.churn.ChurnModel`.
    plan
        The cutoffs (:class:`crmkit.models.churn.CutoffPlan`).
    figures
        ``{"roc.png": Figure, ...}``.
    test_features
        Features of the scored customers at the as-of date (the model's input).
    config
        The settings used.
    notes
        Feature and model remarks (failed BG/NBD fits, constant features dropped); also in
        ``metrics["notes"]``.
    cancellation_prefixes
        Order-id prefixes of cancelled orders the features were built with.
    """

    customers: pd.DataFrame
    metrics: dict[str, Any]
    model: Any
    plan: Any
    figures: dict[str, Any]
    test_features: pd.DataFrame
    config: ChurnConfig
    notes: list[str] = field(default_factory=list)
    cancellation_prefixes: tuple[str, ...] = ("C",)


def _best_bgnbd(metrics: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The BG/NBD baseline: per metric, the better of ``bgnbd_p_no_purchase`` and
    ``bgnbd_p_dead`` (1 - P(alive)) in ``metrics`` (higher ROC-AUC, PR-AUC, lift and
    capture, lower Brier score and log loss; ties go to P(no purchase)); ``score`` names the
    variant behind each metric. ``None`` when neither was computed."""
    present = [n for n in BGNBD_SCORES if n in metrics]
    if not present:
        return None
    out: dict[str, Any] = dict(metrics[present[0]])
    score: dict[str, str] = {}
    for m, sign in METRIC_DIRECTION.items():
        pick = max(present, key=lambda n: sign * metrics[n][m])
        out[m] = metrics[pick][m]
        score[m] = pick
    out["score"] = score
    return out


def _risk_band(p: np.ndarray, thresholds: tuple[float, float]) -> pd.Categorical:
    codes = np.searchsorted(np.asarray(thresholds), p, side="right")
    return pd.Categorical.from_codes(codes, categories=list(RISK_BANDS), ordered=True)


def _baseline_transform(name: str, s: np.ndarray) -> np.ndarray:
    """A monotone transform of a baseline score before Platt scaling."""
    if name == "recency_rule":
        return np.log1p(np.maximum(s, 0.0))
    if name.startswith("bgnbd"):
        p = np.clip(s, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))
    return s


def _class_check(y: pd.Series, what: str, minimum: int) -> None:
    n1 = int(y.sum())
    n0 = int(len(y) - n1)
    if min(n0, n1) < minimum:
        raise DataContractError(
            f"{what} has {n1:,} churners and {n0:,} non-churners among {len(y):,} customers; "
            f"a churn model needs at least {minimum} of each",
            rule="too_few_per_class",
            hint="use more customers, another window_days / as_of, or lower min_class_count",
        )


def _say(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def compute_churn(
    lines: pd.DataFrame,
    as_of: object,
    config: ChurnConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    cancellation_prefixes: tuple[str, ...] = ("C",),
) -> ChurnResult:
    """Plan the cutoffs, build the snapshots, fit, score, explain and evaluate (no files are
    written; see :func:`run_churn`).

    Parameters
    ----------
    lines
        Cleaned order lines (:func:`crmkit.data.clean.clean_lines` ``.lines``), possibly going
        on past ``as_of`` (then only used to label the as-of date and evaluate).
    as_of
        The scoring date (the test cutoff).
    config
        :class:`ChurnConfig`; default settings when ``None``.
    progress
        Called with a short message at each step.
    cancellation_prefixes
        Order-id prefixes of cancelled orders (as the cleaning config's).
    """
    from crmkit.models import churn_plots as cp
    from crmkit.models.churn import (
        ChurnModel,
        _Calibrator,
        baseline_scores,
        churn_snapshots,
        classification_metrics,
    )
    from crmkit.models.churn_plan import adaptive_plan

    cfg = config or ChurnConfig()
    H = cfg.window_days
    plan, adapted = adaptive_plan(
        lines,
        as_of,
        window_days=H,
        every_days=cfg.snapshot_every,
        n_snapshots=cfg.n_snapshots,
        min_history_days=cfg.min_history_days,
        adapt=cfg.adapt_history,
    )
    if adapted is not None:
        _say(progress, f"note: {adapted['message']}")
    cutoffs = [*plan.train, plan.validation, plan.test]
    _say(
        progress,
        f"cutoffs: {len(plan.train)} training ({plan.train[0].date()} .. {plan.train[-1].date()}),"
        f" validation {plan.validation.date()}, test {plan.test.date()}",
    )

    def step(i: int, n: int, ts: pd.Timestamp) -> None:
        _say(progress, f"features {i}/{n} at {ts.date()}")

    snaps = churn_snapshots(
        lines,
        cutoffs,
        window_days=H,
        min_orders=cfg.min_orders,
        active_within_days=cfg.active_within_days,
        progress=step,
        windows=tuple(cfg.feature_windows),
        cancellation_prefixes=tuple(cancellation_prefixes),
        bgnbd=cfg.bgnbd_features,
    )
    notes = list(snaps.attrs.get("notes", []))
    if adapted is not None:
        notes.insert(0, adapted["message"])
    present = set(snaps.index.get_level_values("cutoff"))
    for c, what in ((plan.validation, "validation"), (plan.test, "test (as-of)")):
        if c not in present:
            raise DataContractError(
                f"no customer matches the scored-customer rule at the {what} cutoff {c.date()}",
                rule="empty_window",
            )
    level = snaps.index.get_level_values("cutoff")
    feature_cols = [c for c in snaps.columns if c != "churned"]
    train = snaps[level.isin(plan.train)]
    val = snaps.loc[plan.validation]
    test = snaps.loc[plan.test]
    y_train = train["churned"].astype(np.int64)
    y_val = val["churned"].astype(np.int64)
    _class_check(
        y_train, f"the training snapshots ({len(plan.train)} cutoffs)", cfg.min_class_count
    )
    _class_check(y_val, f"the validation cutoff {plan.validation.date()}", cfg.min_class_count)
    if len(train.index.get_level_values("cutoff").unique()) < 2:
        raise DataContractError(
            "only one training cutoff has scored customers; the model needs several",
            rule="too_few_cutoffs",
        )

    _say(
        progress,
        f"training LightGBM on {len(train):,} snapshot rows x {len(feature_cols)} features",
    )
    model = ChurnModel(**cfg.model_params()).fit(
        train[feature_cols], y_train, X_val=val[feature_cols], y_val=y_val
    )
    if model.dropped_features_:
        notes.append(
            "constant in the training snapshots, not used: " + ", ".join(model.dropped_features_)
        )

    _say(progress, f"scoring {len(test):,} customers at {plan.test.date()}")
    X_test = test[feature_cols]
    proba = model.predict_proba(X_test)[:, 1]
    raw_test = model.decision_function(X_test)
    reasons = (
        model.top_reasons(X_test, k=cfg.top_reasons)
        if cfg.top_reasons
        else pd.Series([[] for _ in range(len(X_test))], index=X_test.index)
    )
    customers = pd.DataFrame(
        {
            "customer_id": X_test.index.to_numpy(),
            "churn_probability": proba,
            "risk_band": _risk_band(proba, cfg.risk_thresholds),
            "top_reasons": reasons.to_numpy(),
        }
    )

    # ---- metrics ---------------------------------------------------------------------------
    lo, hi = cfg.risk_thresholds
    y_test = test["churned"]
    labelled = plan.test_labelled and not y_test.isna().any()
    counts = {
        "train_rows": int(len(train)),
        "train_cutoffs": len(plan.train),
        "train_customers": int(train.index.get_level_values("customer_id").nunique()),
        "train_churn_rate": float(y_train.mean()),
        "validation_customers": int(len(val)),
        "validation_churn_rate": float(y_val.mean()),
        "test_customers": int(len(test)),
        "features": int(model.n_features_in_),
        "risk_bands": {b: int((customers["risk_band"] == b).sum()) for b in RISK_BANDS},
    }
    val_base = baseline_scores(val, H)
    test_base = baseline_scores(test, H)
    raw_val = model.decision_function(val[feature_cols])
    metrics: dict[str, Any] = {
        "as_of": str(plan.test.date()),
        "window_days": H,
        "cutoffs": plan.to_dict(),
        "history_adapted": adapted,
        "counts": counts,
        "scored_customers": {
            "min_orders": cfg.min_orders,
            "active_within_days": cfg.active_within_days,
            "rule": f"customers with >= {cfg.min_orders} purchase order(s) on or before the cutoff"
            + (
                f" and a purchase in its last {cfg.active_within_days} days"
                if cfg.active_within_days is not None
                else ""
            ),
        },
        "risk_bands": {
            "low": f"churn_probability < {lo:g}",
            "medium": f"{lo:g} <= churn_probability < {hi:g}",
            "high": f"churn_probability >= {hi:g}",
        },
        "model": {
            "best_iteration": model.best_iteration_,
            "validation_auc_at_stop": model.validation_auc_,
            "bgnbd_prior_used": model.prior_used_,
            "candidates": model.prior_results_.to_dict(orient="records"),
            "calibration": model.calibrator_,
            "dropped_features": model.dropped_features_,
            "search": None
            if model.search_results_ is None
            else model.search_results_.to_dict(orient="records"),
        },
        "notes": notes,
    }

    def baseline_metrics(y_v: pd.Series, y_t: pd.Series | None) -> tuple[dict, dict]:
        """Per baseline: validation-calibrated test metrics (Platt on a monotone transform of
        the score; the ranking metrics are those of the raw score). ``bgnbd`` is the better
        BG/NBD score per metric (:func:`_best_bgnbd`)."""
        out_t, out_v = {}, {}
        for name in ("recency_rule", "rfm_score", *BGNBD_SCORES):
            if name not in test_base or test_base[name].isna().any() or val_base[name].isna().any():
                continue
            sv = val_base[name].to_numpy(dtype=np.float64)
            st = test_base[name].to_numpy(dtype=np.float64)
            cal = _Calibrator.fit("sigmoid", _baseline_transform(name, sv), y_v.to_numpy())
            out_v[name] = classification_metrics(y_v, cal(_baseline_transform(name, sv)), sv)
            if y_t is not None:
                out_t[name] = classification_metrics(y_t, cal(_baseline_transform(name, st)), st)
        for d in (out_t, out_v):
            best = _best_bgnbd(d)
            if best is not None:
                d["bgnbd"] = best
        return out_t, out_v

    val_metrics = {"lightgbm": classification_metrics(y_val, model._calibrator(raw_val), raw_val)}
    train_raw = model.decision_function(train[feature_cols])
    train_metrics = {
        "lightgbm": classification_metrics(y_train, model._calibrator(train_raw), train_raw)
    }
    undefined = None
    if labelled:
        y_t = y_test.astype(np.int64)
        if y_t.nunique() < 2:
            labelled = False
            undefined = (
                f"every scored customer at {plan.test.date()} is "
                f"{'churned' if y_t.iloc[0] == 1 else 'active'}: ranking metrics are undefined"
            )
    if labelled:
        test_metrics = {"lightgbm": classification_metrics(y_t, proba, raw_test)}
        base_t, base_v = baseline_metrics(y_val, y_t)
        test_metrics.update(base_t)
        val_metrics.update(base_v)
        counts["test_churn_rate"] = float(y_t.mean())
        for name in ("lightgbm", *BASELINES):
            if name in test_metrics:
                metrics[name] = test_metrics[name]
        # the names for the two BG/NBD scores ("bgnbd" is the better of them per metric)
        for key, name in (
            ("bgnbd_p_alive", "bgnbd_p_dead"),
            ("bgnbd_p_no_purchase", "bgnbd_p_no_purchase"),
        ):
            if name in test_metrics:
                metrics[key] = {
                    **test_metrics[name],
                    "score": f"{name} (1 - P(alive))" if name == "bgnbd_p_dead" else name,
                }
        metrics["bgnbd_score"] = test_metrics["bgnbd"]["score"] if "bgnbd" in test_metrics else None
        metrics["beats_baselines"] = {
            m: all(
                test_metrics["lightgbm"][m] > test_metrics[b][m]
                for b in BASELINES
                if b in test_metrics
            )
            for m in ("roc_auc", "pr_auc")
        }
        metrics["metrics"] = {
            "test": test_metrics,
            "validation": val_metrics,
            "train": train_metrics,
        }
        metrics["reason"] = None
    else:
        _, base_v = baseline_metrics(y_val, None)
        val_metrics.update(base_v)
        metrics["metrics"] = None
        metrics["reason"] = undefined or (
            f"the data end {plan.data_end.date()}, before the end of the as-of date's "
            f"{H}-day label window ({(plan.test + pd.Timedelta(days=H)).date()}): customers are "
            "scored, test metrics are skipped"
        )
        metrics["validation_metrics"] = val_metrics
    metrics["validation_note"] = (
        "validation metrics of lightgbm are optimistic: the validation cutoff chose the number "
        "of boosting rounds and fitted the calibration"
    )

    # ---- plots -------------------------------------------------------------------------------
    _say(progress, "plots and explanations")
    if labelled:
        ev_y, ev_raw, ev_p, ev_base, where = (
            y_t,
            raw_test,
            proba,
            test_base,
            f"test {plan.test.date()}",
        )
    else:
        ev_y, ev_raw, ev_p = y_val, raw_val, model._calibrator(raw_val)
        ev_base, where = val_base, f"validation {plan.validation.date()} (test not labelled)"
    curves = {"LightGBM": (ev_y, ev_raw)}
    labels = {
        "recency_rule": "recency rule",
        "rfm_score": "RFM quintile sum",
        "bgnbd_p_no_purchase": "BG/NBD P(no purchase)",
        "bgnbd_p_dead": "BG/NBD 1 - P(alive)",
    }
    for name, label in labels.items():
        if name in ev_base and not ev_base[name].isna().any():
            curves[label] = (ev_y, ev_base[name].to_numpy())
    figures = {
        "roc.png": cp.plot_roc(curves, title=f"ROC, {where}").figure,
        "pr.png": cp.plot_pr(curves, title=f"Precision-recall, {where}").figure,
        "lift.png": cp.plot_lift(curves, title=f"Cumulative gains, {where}").figure,
    }
    cal_curves = {"validation (calibration set)": (y_val, model._calibrator(raw_val))}
    if labelled:
        cal_curves[f"test {plan.test.date()}"] = (ev_y, ev_p)
    figures["calibration.png"] = cp.plot_calibration(
        cal_curves, title=f"Reliability of calibrated LightGBM ({model.calibrator_['method']})"
    ).figure
    figures["importance.png"] = cp.plot_importance(
        model.feature_importance("gain"), title="LightGBM gain importance"
    ).figure
    rng = np.random.default_rng(cfg.seed)
    take = np.sort(rng.choice(len(X_test), min(cfg.shap_sample, len(X_test)), replace=False))
    sample = X_test.iloc[take]
    figures["shap_summary.png"] = cp.plot_shap_summary(
        model.shap_values(sample), sample, max_points=cfg.shap_sample
    ).figure
    return ChurnResult(
        customers=customers,
        metrics=metrics,
        model=model,
        plan=plan,
        figures=figures,
        test_features=X_test,
        config=cfg,
        notes=notes,
        cancellation_prefixes=tuple(cancellation_prefixes),
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _finite(obj: Any) -> Any:
    """NaN / inf -> None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating) and not math.isfinite(float(obj)):
        return None
    return obj


def write_churn(result: ChurnResult, out_dir: str | os.PathLike) -> None:
    """Write ``metrics.json``, ``customers.parquet`` and the plots into ``out_dir``,
    all-or-nothing."""
    from crmkit.data.io import staged_output, write_parquet

    with staged_output(out_dir) as stage:
        stage = Path(stage)
        text = json.dumps(_finite(result.metrics), indent=2, default=_json_default)
        (stage / "metrics.json").write_text(text + "\n", "utf-8")
        customers = result.customers.copy()
        customers["top_reasons"] = [list(r) for r in customers["top_reasons"]]
        write_parquet(customers, stage / "customers.parquet")
        for name, fig in result.figures.items():
            fig.savefig(stage / name, dpi=110)


def run_churn(
    lines: pd.DataFrame,
    as_of: object,
    out_dir: str | os.PathLike,
    config: ChurnConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    cancellation_prefixes: tuple[str, ...] = ("C",),
) -> ChurnResult:
    """Train, score and evaluate at ``as_of`` (:func:`compute_churn`), then write the outputs
    to ``out_dir`` (:func:`write_churn`). Nothing is written when anything fails."""
    result = compute_churn(
        lines, as_of, config, progress=progress, cancellation_prefixes=cancellation_prefixes
    )
    _say(progress, f"writing {out_dir}")
    write_churn(result, out_dir)
    return result


def log_churn_run(result: ChurnResult, *, log_model: bool = True) -> str | None:
    """Log a churn result into the active MLflow run (open it with
    :func:`crmkit.tracking.stage_run`): the config as params, metrics per split
    (``test.lightgbm.roc_auc``, ``validation.rfm_score.pr_auc``, ...; validation only when
    the test is not labelled), counts, the plots and - with ``log_model`` - the booster.
    Returns the model URI (``None`` without ``log_model``)."""
    import mlflow

    from crmkit.models.churn import log_churn_model
    from crmkit.tracking import flat_metrics, log_figure, log_json

    cfg = result.config.model_dump()
    lg = cfg.pop("lightgbm")
    params: dict[str, Any] = {f"churn.{k}": v for k, v in cfg.items()}
    params.update({f"churn.lightgbm.{k}": v for k, v in lg.items()})
    params["churn.as_of"] = result.metrics["as_of"]
    params["churn.train_cutoffs"] = ",".join(result.metrics["cutoffs"]["train"])
    params["churn.validation_cutoff"] = result.metrics["cutoffs"]["validation"]
    splits = result.metrics.get("metrics") or {
        "validation": result.metrics.get("validation_metrics", {})
    }
    metrics = {**splits, "counts": result.metrics["counts"]}
    extra = {"cutoffs": result.metrics["cutoffs"], "reason": result.metrics.get("reason")}
    if log_model:
        return log_churn_model(
            result.model,
            example=result.test_features.head(200),
            params=params,
            metrics=metrics,
            figures=result.figures,
            extra=extra,
        )
    params = {
        k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in params.items()
    }
    mlflow.log_params(params)
    mlflow.log_metrics(flat_metrics(metrics))
    for name, fig in result.figures.items():
        log_figure(fig, name)
    log_json(_finite(extra), "churn_run.json")
    return None


# --------------------------------------------------------------------------------------------
# the portable scorer
# --------------------------------------------------------------------------------------------

#: Order-line columns behind features that only exist when the column does.
_OPTIONAL_SOURCES: dict[str, str] = {
    "distinct_products": "product_id",
    "distinct_categories": "category",
    "country": "country",
    "channel": "channel",
}
_BASE_LINE_COLUMNS: tuple[str, ...] = ("customer_id", "order_id", "order_ts", "quantity", "amount")


class ChurnScorer:
    """A fitted churn model that scores cleaned order lines at any as-of date.

    It bundles what turns order lines into ``churn_probability``: the feature settings
    (label window, trailing windows, BG/NBD features, cancellation prefixes), the
    scored-customer rule, the LightGBM booster with its feature list and category code tables,
    the BG/NBD prior's offset, the calibration map, the risk thresholds and the number of
    reasons. :meth:`save` writes it as ``churn_scorer.json`` (parameters and aggregates only:
    no customer id and no customer-level row) plus ``booster.txt`` (LightGBM's text model).

    :meth:`score` builds the features with the training code
    (:func:`crmkit.models.churn.churn_features`) from the lines before the as-of date only.
    Two feature groups are refitted on the scoring data at that date, as in training, where
    they were fitted per cutoff: the RFM quintile scores (ranks among the customers scored)
    and, with ``bgnbd_features``, the BG/NBD model (a deterministic maximum-likelihood fit on
    the as-of date's RFM summary, so the same lines and date give the same scores). On the
    training lines at the training as-of date the scorer reproduces
    :attr:`ChurnResult.customers` exactly.

    Build it with :meth:`from_result` or :meth:`load`.
    """

    STATE_FILE = "churn_scorer.json"
    BOOSTER_FILE = "booster.txt"
    FORMAT = 1

    def __init__(
        self,
        *,
        model: Any,
        window_days: int,
        feature_windows: Sequence[int],
        bgnbd_features: bool,
        min_orders: int,
        active_within_days: int | None,
        risk_thresholds: tuple[float, float],
        top_reasons: int,
        cancellation_prefixes: Sequence[str] = ("C",),
        trained_as_of: str | None = None,
    ) -> None:
        self.model = model
        self.window_days = int(window_days)
        self.feature_windows = tuple(int(w) for w in feature_windows)
        self.bgnbd_features = bool(bgnbd_features)
        self.min_orders = int(min_orders)
        self.active_within_days = None if active_within_days is None else int(active_within_days)
        self.risk_thresholds = (float(risk_thresholds[0]), float(risk_thresholds[1]))
        self.top_reasons = int(top_reasons)
        self.cancellation_prefixes = tuple(cancellation_prefixes)
        self.trained_as_of = trained_as_of

    def __repr__(self) -> str:
        return (
            f"ChurnScorer(window_days={self.window_days}, features={self.model.n_features_in_}, "
            f"trained_as_of={self.trained_as_of!r})"
        )

    @classmethod
    def from_result(cls, result: ChurnResult) -> ChurnScorer:
        """The scorer of a :func:`compute_churn` result (its fitted model and settings)."""
        cfg = result.config
        result.model._check_is_fitted()
        return cls(
            model=result.model,
            window_days=cfg.window_days,
            feature_windows=cfg.feature_windows,
            bgnbd_features=cfg.bgnbd_features,
            min_orders=cfg.min_orders,
            active_within_days=cfg.active_within_days,
            risk_thresholds=cfg.risk_thresholds,
            top_reasons=cfg.top_reasons,
            cancellation_prefixes=result.cancellation_prefixes,
            trained_as_of=result.metrics.get("as_of"),
        )

    # ---- persistence ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The JSON state (what :meth:`save` writes beside the booster)."""
        import lightgbm

        m = self.model
        return {
            "format": self.FORMAT,
            "kind": "crmkit churn scorer",
            "lightgbm_version": lightgbm.__version__,
            "trained_as_of": self.trained_as_of,
            "features": {
                "window_days": self.window_days,
                "feature_windows": list(self.feature_windows),
                "bgnbd_features": self.bgnbd_features,
                "cancellation_prefixes": list(self.cancellation_prefixes),
            },
            "scored_customers": {
                "min_orders": self.min_orders,
                "active_within_days": self.active_within_days,
            },
            "model": {
                "feature_names": [str(c) for c in m.feature_names_in_],
                "categories": {k: list(v) for k, v in m.categories_.items()},
                "best_iteration": int(m.best_iteration_),
                "prior": {
                    "used": bool(m.prior_used_),
                    "feature": m.prior_feature,
                    "fill": float(m.prior_fill_),
                    "shift": float(m.prior_shift_),
                },
                "calibrator": m._calibrator.to_dict(),
                "params": m.get_params(),
            },
            "risk_thresholds": list(self.risk_thresholds),
            "risk_bands": list(RISK_BANDS),
            "top_reasons": self.top_reasons,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``churn_scorer.json`` and ``booster.txt`` into ``directory`` (created if
        needed; the two files are replaced); returns the directory."""
        from crmkit.models.churn import _jsonable

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_jsonable(self.state()), indent=2, allow_nan=False)
        booster = self.model.booster_.model_to_string(num_iteration=self.model.best_iteration_)
        for name, content in ((self.STATE_FILE, text + "\n"), (self.BOOSTER_FILE, booster)):
            tmp = d / f".{name}.tmp"
            tmp.write_text(content, "utf-8")
            os.replace(tmp, d / name)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ChurnScorer:
        """A scorer saved by :meth:`save`.

        Raises
        ------
        DataContractError
            A file is missing or not a churn scorer of a known format.
        """
        import lightgbm as lgb

        from crmkit.models.churn import ChurnModel, _Calibrator

        d = Path(directory)
        paths = [d / cls.STATE_FILE, d / cls.BOOSTER_FILE]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise DataContractError(
                f"{d} is not a saved churn scorer: {', '.join(missing)} missing",
                rule="scorer_files",
            )
        try:
            state = json.loads(paths[0].read_text("utf-8"))
            fmt = state["format"]
            feats, rule, ms = state["features"], state["scored_customers"], state["model"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataContractError(
                f"{paths[0]} is not a churn scorer state ({exc})", rule="scorer_files"
            ) from None
        if fmt != cls.FORMAT:
            raise DataContractError(
                f"{paths[0]} has format {fmt!r}; this crmkit reads format {cls.FORMAT}",
                rule="scorer_files",
            )
        model = ChurnModel(**ms["params"])
        model.booster_ = lgb.Booster(model_str=paths[1].read_text("utf-8"))
        model.best_iteration_ = int(ms["best_iteration"])
        model.feature_names_in_ = np.asarray(ms["feature_names"], dtype=object)
        model.n_features_in_ = len(model.feature_names_in_)
        model.categories_ = {k: list(v) for k, v in ms["categories"].items()}
        prior = ms["prior"]
        model.prior_used_ = bool(prior["used"])
        model.prior_feature = prior["feature"]
        model.prior_fill_ = float(prior["fill"])
        model.prior_shift_ = float(prior["shift"])
        model._calibrator = _Calibrator.from_dict(ms["calibrator"])
        model.calibrator_ = model._calibrator.to_dict()
        model.classes_ = np.array([0, 1])
        model.dropped_features_ = []
        return cls(
            model=model,
            window_days=feats["window_days"],
            feature_windows=feats["feature_windows"],
            bgnbd_features=feats["bgnbd_features"],
            min_orders=rule["min_orders"],
            active_within_days=rule["active_within_days"],
            risk_thresholds=tuple(state["risk_thresholds"]),
            top_reasons=state["top_reasons"],
            cancellation_prefixes=feats["cancellation_prefixes"],
            trained_as_of=state.get("trained_as_of"),
        )

    # ---- scoring -------------------------------------------------------------------------------

    def required_columns(self) -> list[str]:
        """Order-line columns :meth:`score` needs (the base contract plus the columns behind
        the optional features the model uses)."""
        used = set(self.model.feature_names_in_)
        extra = [col for feat, col in _OPTIONAL_SOURCES.items() if feat in used]
        return [*_BASE_LINE_COLUMNS, *extra]

    def behaviour_settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`crmkit.features.behaviour.behaviour_features`
        behind this model's features (callers that already computed that frame can pass it
        to :meth:`score`)."""
        from crmkit.models.churn import churn_season_windows

        return {
            "windows": tuple(self.feature_windows),
            "season_windows": churn_season_windows(self.window_days),
            "cancellation_prefixes": tuple(self.cancellation_prefixes),
        }

    def score(
        self, lines: pd.DataFrame, as_of: object, *, behaviour: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Churn scores of the customers matching the scored-customer rule at ``as_of``.

        Parameters
        ----------
        lines
            Cleaned order lines (:func:`crmkit.data.clean.clean_lines` ``.lines``); only the
            lines before the end of the ``as_of`` day are read.
        as_of
            The scoring date.
        behaviour
            Optional precomputed behaviour features of ``lines`` at ``as_of`` with
            :meth:`behaviour_settings` (saves recomputing them).

        Returns
        -------
        DataFrame indexed by ``customer_id`` (sorted) with ``churn_probability`` (calibrated),
        ``churn_risk_band`` (``low`` / ``medium`` / ``high``, ordered categorical) and
        ``churn_reasons`` (the top reasons joined by ``"; "``, empty when none).

        Raises
        ------
        DataContractError
            Not a DataFrame, missing columns, no purchase line on or before ``as_of``, or no
            customer matching the scored-customer rule.
        """
        from crmkit.data.clean import analysis_cutoff
        from crmkit.models.churn import _cutoff_day, churn_features, select_customers

        if not isinstance(lines, pd.DataFrame):
            raise DataContractError(
                f"expected a DataFrame of cleaned order lines, got {type(lines).__name__}",
                rule="input_type",
            )
        need = self.required_columns()
        missing = [c for c in need if c not in lines.columns]
        if missing:
            raise DataContractError(
                f"order lines lack column(s) {missing} that the churn scorer needs "
                f"(it needs {need})",
                column=missing[0],
                rule="required_column",
                hint="pass cleaned lines: crmkit.data.clean.clean_lines(...).lines",
            )
        cut = _cutoff_day(as_of, "as_of")
        ts = lines["order_ts"]
        if isinstance(ts.dtype, pd.DatetimeTZDtype):
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        before = ts < analysis_cutoff(cut)
        purchases = before & (pd.to_numeric(lines["quantity"], errors="coerce") > 0)
        if not bool(purchases.any()):
            start = ts.min()
            raise DataContractError(
                f"as_of {cut.date()} is before every purchase line (the data start "
                f"{'-' if pd.isna(start) else pd.Timestamp(start).date()}): no customer to score",
                rule="empty_window",
                hint="use an as_of on or after the first order date",
            )
        f = churn_features(
            lines,
            cut,
            window_days=self.window_days,
            windows=self.feature_windows,
            cancellation_prefixes=self.cancellation_prefixes,
            bgnbd=self.bgnbd_features,
            behaviour=behaviour,
        )
        f.attrs = {}
        f = f[
            select_customers(
                f, min_orders=self.min_orders, active_within_days=self.active_within_days
            )
        ]
        if f.empty:
            raise DataContractError(
                f"no customer matches the scored-customer rule at {cut.date()}",
                rule="empty_window",
            )
        proba = self.model.predict_proba(f)[:, 1]
        if self.top_reasons:
            reasons = self.model.top_reasons(f, k=self.top_reasons).map("; ".join)
        else:
            reasons = pd.Series("", index=f.index)
        return pd.DataFrame(
            {
                "churn_probability": proba,
                "churn_risk_band": _risk_band(proba, self.risk_thresholds),
                "churn_reasons": reasons.to_numpy(dtype=object),
            },
            index=pd.Index(f.index, name="customer_id"),
        )
