"""Churn model: LightGBM on behavioural snapshots, leak-free time splits, calibrated.

The pieces, each usable on its own (``docs/churn.md`` has the full story and the measured
numbers; :func:`crmkit.pipelines.churn.run_churn` puts them together):

* :func:`churn_labels` - who churned after a cutoff: a customer with a purchase on or before
  the cutoff is *churned* when they make no purchase in the ``window_days`` days after it.
* :func:`plan_cutoffs` - the training, validation and test cutoffs for an as-of date, such
  that no label window of a training cutoff reaches past the validation cutoff and no label
  window of a validation cutoff past the test cutoff (the as-of date).
* :func:`churn_features` - one row per customer at a cutoff, from the lines before it only:
  :func:`crmkit.features.behaviour.behaviour_features`, classic RFM quintile scores, BG/NBD
  outputs fitted on that cutoff's own RFM summary, and the label window's calendar position.
* :func:`churn_snapshots` - features (and labels, when observed) at many cutoffs, stacked.
* :class:`ChurnModel` - the estimator (scikit-learn style): LightGBM with class weights,
  monotone recency, early stopping and calibration on the validation cutoff, an optional
  bounded random search, gain importance, SHAP values (LightGBM's ``pred_contrib``) and
  readable per-customer reasons (:mod:`crmkit.models.churn_reasons`: true sentences only).
* :func:`baseline_scores`, :func:`classification_metrics` - the three baselines (recency rule,
  RFM quintile sum, BG/NBD) and the metrics they are compared on.
* :func:`log_churn_model` - everything into the active MLflow run.

Time conventions follow :func:`crmkit.data.clean.analysis_cutoff`: a cutoff date covers that
whole day; the label window of cutoff ``C`` holds the lines with ``order_ts`` in
``[analysis_cutoff(C), analysis_cutoff(C) + window_days days)``, i.e. the ``window_days``
calendar days after ``C``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from crmkit.data.clean import analysis_cutoff
from crmkit.errors import DataContractError
from crmkit.models.churn_reasons import describe_column, describe_feature, explain_reasons

__all__ = [
    "DEFAULT_WINDOWS",
    "DEFAULT_MONOTONE",
    "SEARCH_SPACE",
    "CutoffPlan",
    "ChurnModel",
    "churn_labels",
    "label_window_observed",
    "plan_cutoffs",
    "churn_features",
    "churn_snapshots",
    "select_customers",
    "baseline_scores",
    "classification_metrics",
    "top_decile",
    "explain_reasons",
    "describe_feature",
    "describe_column",
    "log_churn_model",
]

#: Trailing windows (days) of the behavioural features.
DEFAULT_WINDOWS: tuple[int, ...] = (30, 90, 180, 365)
#: Monotone constraints of :class:`ChurnModel` (+1: churn risk never falls as the feature
#: grows): a customer silent for longer is never scored safer, all else equal.
DEFAULT_MONOTONE: dict[str, int] = {"recency_days": 1}
#: The bounded random search of :class:`ChurnModel` (``search_trials > 0``) draws each
#: parameter uniformly from these values.
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "learning_rate": (0.02, 0.03, 0.05),
    "num_leaves": (4, 7, 15, 31),
    "min_child_samples": (50, 100, 200, 500, 1000),
    "feature_fraction": (0.5, 0.7, 0.9),
    "reg_lambda": (0.0, 1.0, 10.0, 50.0),
}

_DAY = pd.Timedelta(days=1)
_BG_PREFIX = "bg_"


# --------------------------------------------------------------------------------------------
# labels and cutoffs
# --------------------------------------------------------------------------------------------


def _cutoff_day(cutoff: object, name: str = "cutoff") -> pd.Timestamp:
    """A cutoff as a date (midnight); cutoffs are whole days."""
    try:
        ts = pd.Timestamp(cutoff)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise DataContractError(f"{name} {cutoff!r} is not a date ({exc})", rule="as_of") from None
    if pd.isna(ts):
        raise DataContractError(f"{name} is missing", rule="as_of")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.normalize()


def _check_window(window_days: int) -> int:
    if isinstance(window_days, bool) or not isinstance(window_days, int | np.integer):
        raise DataContractError(
            f"window_days must be a whole number of days, got {window_days!r}",
            rule="window_length",
        )
    if window_days < 1:
        raise DataContractError(
            f"window_days must be >= 1, got {window_days}", rule="window_length"
        )
    return int(window_days)


def _require_lines(lines: pd.DataFrame) -> None:
    if not isinstance(lines, pd.DataFrame):
        raise DataContractError(
            f"expected a DataFrame of order lines, got {type(lines).__name__}",
            rule="input_type",
            hint="pass cleaned lines: crmkit.data.clean.clean_lines(...).lines",
        )
    missing = [c for c in ("customer_id", "order_ts", "quantity") if c not in lines.columns]
    if missing:
        raise DataContractError(
            f"order lines lack column(s) {missing}",
            column=missing[0],
            rule="required_column",
            hint="pass cleaned lines: crmkit.data.clean.clean_lines(...).lines",
        )
    if lines.empty:
        raise DataContractError("no order lines", rule="empty_window")


class _PurchaseIndex:
    """Customer codes and timestamps of the purchase lines (``quantity > 0``), for labelling
    many cutoffs without touching the frame again."""

    def __init__(self, lines: pd.DataFrame) -> None:
        _require_lines(lines)
        pos = lines["quantity"].to_numpy(dtype=np.float64) > 0
        codes, self.customers = pd.factorize(lines["customer_id"], sort=True)
        ts = lines["order_ts"]
        if isinstance(ts.dtype, pd.DatetimeTZDtype):
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        self.code = codes[pos]
        self.ts = ts.to_numpy(dtype="datetime64[ns]")[pos].view(np.int64)
        self.last_day = pd.Timestamp(lines["order_ts"].max()).normalize()

    def labels(self, cutoff: pd.Timestamp, window_days: int) -> pd.Series:
        start = analysis_cutoff(cutoff)
        end = start + pd.Timedelta(days=window_days)
        s, e = start.as_unit("ns").value, end.as_unit("ns").value
        n = len(self.customers)
        before = np.bincount(self.code[self.ts < s], minlength=n) > 0
        inside = np.bincount(self.code[(self.ts >= s) & (self.ts < e)], minlength=n) > 0
        churned = (~inside[before]).astype(np.int8)
        return pd.Series(
            churned, index=pd.Index(self.customers[before], name="customer_id"), name="churned"
        )


def churn_labels(lines: pd.DataFrame, cutoff: object, window_days: int = 90) -> pd.Series:
    """Churn label of every customer with a purchase on or before ``cutoff``.

    A customer is churned (1) when they have no purchase line (``quantity > 0``) with
    ``order_ts`` in ``[analysis_cutoff(cutoff), analysis_cutoff(cutoff) + window_days days)``
    - the ``window_days`` calendar days after the cutoff day - and active (0) otherwise.
    Returns and cancellations (negative lines) are not purchases.

    The label is only meaningful when the data cover the whole window: check
    :func:`label_window_observed`.

    Returns
    -------
    Series ``churned`` (int8 0/1) indexed by ``customer_id`` (sorted).
    """
    window = _check_window(window_days)
    idx = _PurchaseIndex(lines)
    return idx.labels(_cutoff_day(cutoff), window)


def label_window_observed(lines: pd.DataFrame, cutoff: object, window_days: int = 90) -> bool:
    """Whether the data reach the last day of the label window of ``cutoff`` (the data end on
    the day of the latest ``order_ts``)."""
    window = _check_window(window_days)
    _require_lines(lines)
    last_day = pd.Timestamp(lines["order_ts"].max()).normalize()
    return bool(_cutoff_day(cutoff) + pd.Timedelta(days=window) <= last_day)


@dataclass(frozen=True)
class CutoffPlan:
    """The cutoffs of one churn model.

    Attributes
    ----------
    train
        Training cutoffs, ascending; the label window of each ends on or before the validation
        cutoff.
    validation
        ``test - window_days``: early stopping and calibration; its label window ends on the
        test cutoff.
    test
        The as-of date: the customers scored, and evaluated when its label window is observed.
    window_days
        Label window length.
    data_start, data_end
        First and last day with order lines.
    test_labelled
        Whether the data cover the test cutoff's label window.
    """

    train: tuple[pd.Timestamp, ...]
    validation: pd.Timestamp
    test: pd.Timestamp
    window_days: int
    data_start: pd.Timestamp
    data_end: pd.Timestamp
    test_labelled: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (dates as ``YYYY-MM-DD``)."""
        return {
            "train": [str(c.date()) for c in self.train],
            "validation": str(self.validation.date()),
            "test": str(self.test.date()),
            "window_days": self.window_days,
            "data_start": str(self.data_start.date()),
            "data_end": str(self.data_end.date()),
            "test_labelled": self.test_labelled,
        }


def plan_cutoffs(
    lines: pd.DataFrame,
    as_of: object,
    *,
    window_days: int = 90,
    every_days: int = 7,
    n_snapshots: int = 24,
    min_history_days: int = 42,
    min_train_cutoffs: int = 2,
) -> CutoffPlan:
    """Training, validation and test cutoffs for a churn model at ``as_of``.

    * test = ``as_of`` (a date);
    * validation = ``as_of - window_days``, so its label window ends on the test cutoff;
    * training = up to ``n_snapshots`` cutoffs every ``every_days`` days stepping back from
      ``validation - window_days`` (their label windows end by the validation cutoff, so the
      validation score used for early stopping and calibration is out of time), each with at
      least ``min_history_days`` days of data before it
      (:func:`crmkit.features.split.rolling_cutoffs`).

    Raises
    ------
    DataContractError
        Fewer than ``min_train_cutoffs`` training cutoffs fit in the data (the message says
        how much history is needed), or bad arguments.
    """
    from crmkit.features.split import rolling_cutoffs

    window = _check_window(window_days)
    _require_lines(lines)
    for name, v, lo in (
        ("every_days", every_days, 1),
        ("n_snapshots", n_snapshots, 1),
        ("min_history_days", min_history_days, 0),
        ("min_train_cutoffs", min_train_cutoffs, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise DataContractError(f"{name} must be a whole number >= {lo}, got {v!r}", rule=name)
    test = _cutoff_day(as_of, "as_of")
    validation = test - pd.Timedelta(days=window)
    last_train = validation - pd.Timedelta(days=window)
    data_start = pd.Timestamp(lines["order_ts"].min()).normalize()
    data_end = pd.Timestamp(lines["order_ts"].max()).normalize()
    need_start = data_start + pd.Timedelta(days=min_history_days)
    needed = (
        f"a churn model at {test.date()} with a {window}-day window needs training cutoffs "
        f"on or before {last_train.date()} (two label windows before the as-of date) with "
        f"{min_history_days} days of history each, and {min_train_cutoffs} of them "
        f"{every_days} days apart: data from {(last_train - pd.Timedelta(days=(min_train_cutoffs - 1) * every_days + min_history_days)).date()} "
        f"or earlier; the data start {data_start.date()}"
    )
    if last_train < need_start:
        raise DataContractError(
            f"not enough history: {needed}",
            rule="too_few_cutoffs",
            hint="use a later as_of, a shorter window_days or a smaller min_history_days",
        )
    try:
        train = rolling_cutoffs(
            lines,
            last=last_train,
            every=f"{every_days}D",
            n=n_snapshots,
            min_history_days=min_history_days,
        )
    except DataContractError as exc:
        raise DataContractError(
            f"not enough history ({exc.message}): {needed}", rule="too_few_cutoffs"
        ) from None
    if len(train) < min_train_cutoffs:
        raise DataContractError(
            f"only {len(train)} training cutoff fits ({', '.join(str(c.date()) for c in train)}), "
            f"at least {min_train_cutoffs} are needed: {needed}",
            rule="too_few_cutoffs",
            hint="use a later as_of, a smaller snapshot step (every_days) or min_history_days",
        )
    return CutoffPlan(
        train=tuple(pd.Timestamp(c) for c in train),
        validation=validation,
        test=test,
        window_days=window,
        data_start=data_start,
        data_end=data_end,
        test_labelled=bool(test + pd.Timedelta(days=window) <= data_end),
    )


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------


def _q4_share(cutoff: pd.Timestamp, window_days: int) -> float:
    """Share of the label window's days that fall in October-December."""
    days = pd.date_range(cutoff + _DAY, periods=window_days, freq="D")
    return float(np.mean(days.month >= 10))


def _rfm_quintiles(recency_days: pd.Series, n_orders: pd.Series, spend: pd.Series) -> pd.DataFrame:
    """Classic RFM quintile scores: R from days since the last purchase, F from the number of
    orders, M from total spend, each 1..5 (5 best) by crmkit's quintile rule
    (:func:`crmkit.features.segments.score_rfm`: stable ranks, ties in customer_id order)."""
    from crmkit.features.segments import score_rfm

    measures = pd.DataFrame(
        {
            "days_since_last": recency_days.astype(np.float64),
            # score_rfm's F column; here the classic F, the number of orders
            "orders_per_month": n_orders.astype(np.float64),
            "total_spend": spend.astype(np.float64),
        }
    )
    s = score_rfm(measures, method="quantile", monetary="total_spend")
    return s[["r_score", "f_score", "m_score", "rfm_score"]].astype(np.int64)


def _bgnbd_columns(window_days: int) -> tuple[str, str, str]:
    return (
        "bg_p_alive",
        f"bg_expected_purchases_{window_days}d",
        f"bg_p_no_purchase_{window_days}d",
    )


def churn_season_windows(window_days: int) -> tuple[int, ...]:
    """The season windows of :func:`churn_features` (default ``season_windows``)."""
    return (30, min(int(window_days), 365))


def churn_features(
    lines: pd.DataFrame,
    as_of: object,
    *,
    window_days: int = 90,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    season_windows: Sequence[int] | None = None,
    cancellation_prefixes: Sequence[str] = ("C",),
    bgnbd: bool = True,
    behaviour: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Churn features of every customer with a purchase on or before ``as_of``.

    ``behaviour``: the :func:`crmkit.features.behaviour.behaviour_features` frame of the same
    lines, date, windows, season windows and cancellation prefixes, when the caller already
    has it (batch scoring computes it once for the customer table and the churn model); it is
    copied, not modified.

    Only lines with ``order_ts < analysis_cutoff(as_of)`` are read. Columns (definitions in
    ``docs/churn.md`` and ``docs/features_behaviour.md``):

    * every column of :func:`crmkit.features.behaviour.behaviour_features` (``country`` and
      ``channel`` as ``category``);
    * ``active_span_days`` (first to last purchase day), ``orders_per_month`` (orders per
      average month of tenure, tenure floored at one month), ``monetary_value`` (mean value of
      the repeat purchase days, as :func:`crmkit.features.rfm.rfm_summary`);
    * ``r_score, f_score, m_score, rfm_score``: classic RFM quintiles (R days since the last
      purchase, F number of orders, M total spend; the RFM baseline is ``15 - rfm_score``);
    * with ``bgnbd``: ``bg_p_alive``, ``bg_expected_purchases_{H}d`` and
      ``bg_p_no_purchase_{H}d`` of a :class:`crmkit.models.clv.BetaGeo` fitted on this
      cutoff's own RFM summary (weeks), ``H = window_days``; NaN when the fit fails (noted in
      ``frame.attrs["notes"]``);
    * ``window_q4_share``: share of the label window's days in October-December (the same for
      every customer of a cutoff; it lets the model tell seasons apart across cutoffs).
    """
    from crmkit.features.behaviour import behaviour_features
    from crmkit.features.rfm import rfm_summary

    window = _check_window(window_days)
    cut = _cutoff_day(as_of, "as_of")
    seasons = tuple(season_windows) if season_windows is not None else churn_season_windows(window)
    if behaviour is not None:
        f = behaviour.copy()
    else:
        f = behaviour_features(
            lines,
            cut,
            windows=tuple(windows),
            season_windows=seasons,
            cancellation_prefixes=tuple(cancellation_prefixes),
        )
    notes: list[str] = []
    tenure = f["tenure_days"].to_numpy(dtype=np.float64)
    f["active_span_days"] = f["tenure_days"] - f["recency_days"]
    f["orders_per_month"] = f["n_orders"] / np.maximum(tenure / (365.25 / 12.0), 1.0)
    summary = rfm_summary(lines, cut, unit="W").reindex(f.index)
    f["monetary_value"] = summary["monetary_value"].fillna(0.0).to_numpy()
    f = f.join(_rfm_quintiles(f["recency_days"], f["n_orders"], f["total_spend"]))
    if bgnbd:
        cols = _bgnbd_columns(window)
        try:
            from crmkit.models.clv import BetaGeo

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = BetaGeo().fit(summary)
                h = window / 7.0
                f[cols[0]] = model.conditional_probability_alive(summary).to_numpy()
                f[cols[1]] = model.conditional_expected_number_of_purchases_up_to_time(
                    h, summary
                ).to_numpy()
                f[cols[2]] = (
                    1.0 - model.probability_of_purchases_in_window(summary, 0.0, h).to_numpy()
                )
            bad = ~np.isfinite(f[list(cols)].to_numpy(dtype=np.float64))
            if bad.any():
                raise ValueError(f"{int(bad.sum())} non-finite BG/NBD outputs")
        except Exception as exc:  # the features degrade to NaN, the model still trains
            for c in cols:
                f[c] = np.nan
            first = str(exc).splitlines()[0] if str(exc) else ""
            notes.append(
                f"BG/NBD features at {cut.date()} are missing: {type(exc).__name__}: {first}"
            )
    f["window_q4_share"] = _q4_share(cut, window)
    f.attrs["notes"] = notes
    return f


def select_customers(
    features: pd.DataFrame, *, min_orders: int = 1, active_within_days: int | None = None
) -> np.ndarray:
    """The scored-customer rule: a boolean mask of the customers with at least ``min_orders``
    purchase orders on or before the cutoff and, with ``active_within_days``, a purchase in
    the last ``active_within_days`` days (``recency_days <= active_within_days``)."""
    if min_orders < 1:
        raise DataContractError(f"min_orders must be >= 1, got {min_orders}", rule="min_orders")
    keep = features["n_orders"].to_numpy() >= min_orders
    if active_within_days is not None:
        if active_within_days < 0:
            raise DataContractError(
                f"active_within_days must be >= 0, got {active_within_days}",
                rule="active_within_days",
            )
        keep &= features["recency_days"].to_numpy() <= active_within_days
    return keep


def churn_snapshots(
    lines: pd.DataFrame,
    cutoffs: Sequence[object],
    *,
    window_days: int = 90,
    min_orders: int = 1,
    active_within_days: int | None = None,
    progress: Callable[[int, int, pd.Timestamp], None] | None = None,
    **feature_kwargs: Any,
) -> pd.DataFrame:
    """Features at each cutoff (via :func:`crmkit.features.split.snapshots`, which hands
    :func:`churn_features` only the lines before the cutoff) for the scored customers, plus
    the label column ``churned`` where the cutoff's label window is observed (else NA).

    Returns
    -------
    DataFrame indexed by ``(cutoff, customer_id)``; ``frame.attrs["notes"]`` lists feature
    problems (e.g. a BG/NBD fit that failed).
    """
    from crmkit.features.split import snapshots

    window = _check_window(window_days)
    cuts = [_cutoff_day(c) for c in cutoffs]
    notes: list[str] = []

    def features(past: pd.DataFrame, cutoff: pd.Timestamp, **kw: Any) -> pd.DataFrame:
        f = churn_features(past, cutoff, window_days=window, **kw)
        notes.extend(f.attrs.get("notes", []))
        f.attrs = {}
        return f[select_customers(f, min_orders=min_orders, active_within_days=active_within_days)]

    frame = snapshots(lines, cuts, features, progress=progress, **feature_kwargs)
    index = _PurchaseIndex(lines)
    values = np.zeros(len(frame), dtype=np.int8)
    known = np.zeros(len(frame), dtype=bool)
    level = frame.index.get_level_values("cutoff")
    ids = frame.index.get_level_values("customer_id")
    for c in level.unique():
        if c + pd.Timedelta(days=window) > index.last_day:
            continue  # the label window runs past the data: unlabelled
        rows = np.flatnonzero(level == c)
        lab = index.labels(c, window)
        values[rows] = lab.reindex(ids[rows]).to_numpy()
        known[rows] = True
    frame["churned"] = pd.arrays.IntegerArray(values, ~known)
    frame.attrs["notes"] = notes
    return frame


# --------------------------------------------------------------------------------------------
# metrics and baselines
# --------------------------------------------------------------------------------------------


def top_decile(y: Any, score: Any, fraction: float = 0.1) -> tuple[float, float]:
    """Lift and capture rate of the top ``fraction`` of customers by ``score``.

    Ties at the boundary are shared out at their average churn rate (the expected value of a
    random tie-break), so a score with many ties (RFM sums) is neither helped nor hurt by the
    row order. Returns ``(lift, capture)``: churn rate in the top group / overall churn rate,
    and share of all churners in the top group.
    """
    yv = np.asarray(y, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    n = len(yv)
    k = max(1, int(round(fraction * n)))
    total = yv.sum()
    if n == 0 or total == 0:
        return float("nan"), float("nan")
    t = np.sort(s)[::-1][k - 1]
    above = s > t
    at = s == t
    hits = yv[above].sum() + (k - above.sum()) * yv[at].mean()
    return float((hits / k) / (total / n)), float(hits / total)


def classification_metrics(y: Any, proba: Any, score: Any = None) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), Brier score, log loss, top-decile lift and
    capture, plus ``n`` and ``churn_rate``.

    ``proba`` are churn probabilities (Brier, log loss); ``score`` (default ``proba``) ranks
    the customers (ROC-AUC, PR-AUC, lift), for scores that are not probabilities.
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    yv = np.asarray(y, dtype=np.int64)
    p = np.clip(np.asarray(proba, dtype=np.float64), 1e-7, 1 - 1e-7)
    s = p if score is None else np.asarray(score, dtype=np.float64)
    if len(np.unique(yv)) < 2:
        raise DataContractError(
            "metrics need churners and non-churners; the labels hold one class only",
            rule="single_class",
        )
    lift, capture = top_decile(yv, s)
    return {
        "roc_auc": float(roc_auc_score(yv, s)),
        "pr_auc": float(average_precision_score(yv, s)),
        "brier": float(brier_score_loss(yv, p)),
        "log_loss": float(log_loss(yv, p, labels=[0, 1])),
        "top_decile_lift": lift,
        "top_decile_capture": capture,
        "n": int(len(yv)),
        "churn_rate": float(yv.mean()),
    }


def baseline_scores(features: pd.DataFrame, window_days: int = 90) -> pd.DataFrame:
    """Scores of the three baselines (higher = more likely to churn) from
    :func:`churn_features` at one cutoff:

    * ``recency_rule``: days since the last purchase;
    * ``rfm_score``: ``15 - rfm_score`` (classic R + F + M quintile sum);
    * ``bgnbd_p_dead``: ``1 - P(alive)`` and ``bgnbd_p_no_purchase``: P(no purchase in the
      window), of the BG/NBD fitted on the cutoff's own RFM summary (no labels used).
    """
    cols = _bgnbd_columns(window_days)
    out = pd.DataFrame(
        {
            "recency_rule": features["recency_days"].astype(np.float64),
            "rfm_score": 15.0 - features["rfm_score"].astype(np.float64),
        },
        index=features.index,
    )
    if cols[0] in features:
        out["bgnbd_p_dead"] = 1.0 - features[cols[0]].astype(np.float64)
        out["bgnbd_p_no_purchase"] = features[cols[2]].astype(np.float64)
    return out


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------


@dataclass
class _Calibrator:
    """Maps raw scores (log-odds) to probabilities: Platt (``a * s + b`` through the logistic
    function), isotonic (piecewise linear through ``x``/``y``) or the plain logistic."""

    method: str
    a: float = 1.0
    b: float = 0.0
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def fit(cls, method: str, score: np.ndarray, y: np.ndarray) -> _Calibrator:
        if method == "sigmoid":
            from scipy.optimize import minimize

            yv = y.astype(np.float64)
            # Platt's targets (avoid 0/1 so that a separable validation set stays finite)
            n1, n0 = yv.sum(), len(yv) - yv.sum()
            t = np.where(yv > 0, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))

            def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
                z = w[0] * score + w[1]
                ll = np.logaddexp(0, z) - t * z
                g = 1 / (1 + np.exp(-z)) - t
                return float(ll.mean()), np.array([(g * score).mean(), g.mean()])

            res = minimize(nll, np.array([1.0, 0.0]), jac=True, method="BFGS")
            return cls("sigmoid", a=float(res.x[0]), b=float(res.x[1]))
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(score, y)
            return cls("isotonic", x=iso.X_thresholds_.copy(), y=iso.y_thresholds_.copy())
        return cls("none")

    def __call__(self, score: np.ndarray) -> np.ndarray:
        if self.method == "sigmoid":
            return 1.0 / (1.0 + np.exp(-(self.a * score + self.b)))
        if self.method == "isotonic":
            return np.interp(score, self.x, self.y)
        return 1.0 / (1.0 + np.exp(-score))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Calibrator:
        """The inverse of :meth:`to_dict`."""
        method = d.get("method")
        if method == "sigmoid":
            return cls("sigmoid", a=float(d["a"]), b=float(d["b"]))
        if method == "isotonic":
            return cls(
                "isotonic",
                x=np.asarray(d["x"], dtype=np.float64),
                y=np.asarray(d["y"], dtype=np.float64),
            )
        if method == "none":
            return cls("none")
        raise ValueError(f"unknown calibration method {method!r}")

    def to_dict(self) -> dict[str, Any]:
        if self.method == "sigmoid":
            return {"method": "sigmoid", "a": self.a, "b": self.b}
        if self.method == "isotonic":
            return {"method": "isotonic", "x": self.x.tolist(), "y": self.y.tolist()}
        return {"method": "none"}


# --------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------


def _check_binary(y: Any, name: str, min_class_count: int) -> np.ndarray:
    arr = pd.Series(y).to_numpy()
    try:
        v = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataContractError(f"{name} must be 0/1 churn labels", rule="labels") from None
    if np.isnan(v).any() or not np.isin(v, (0.0, 1.0)).all():
        raise DataContractError(
            f"{name} must be 0/1 churn labels without missing values", rule="labels"
        )
    n1 = int(v.sum())
    n0 = len(v) - n1
    if min(n0, n1) < min_class_count:
        raise DataContractError(
            f"{name} has {n1:,} churners and {n0:,} non-churners; at least {min_class_count} of "
            "each are needed to train and calibrate a churn model",
            rule="too_few_per_class",
            hint="use more customers, a different window_days, or more / other cutoffs",
        )
    return v.astype(np.int64)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(q / (1 - q))


def _balance_shift(y: np.ndarray) -> float:
    n1 = float(y.sum())
    return float(np.log((len(y) - n1) / n1))


def _set_init_score(data: Any, init_score: np.ndarray | None) -> None:
    """Set (or clear, with ``None``) the init scores of a LightGBM Dataset, constructed or
    not (``Dataset.set_init_score(None)`` leaves a constructed Dataset's scores in place)."""
    data.set_init_score(init_score)
    if init_score is None and data._handle is not None:  # constructed (no public flag)
        data.set_field("init_score", None)


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    n1 = float(y.sum())
    n0 = float(len(y) - n1)
    return np.where(y == 1, len(y) / (2.0 * n1), len(y) / (2.0 * n0))


class ChurnModel:
    """LightGBM churn classifier with early stopping and calibration on a validation set.

    Parameters
    ----------
    n_estimators
        Maximum boosting rounds (early stopping on the validation set picks the number).
    learning_rate, num_leaves, max_depth, min_child_samples, reg_lambda, reg_alpha,
    feature_fraction, bagging_fraction, bagging_freq, min_split_gain, max_bin
        LightGBM parameters (``min_child_samples`` is ``min_data_in_leaf``, ``reg_lambda``
        ``lambda_l2``, ``reg_alpha`` ``lambda_l1``). The defaults - few leaves, large leaves,
        L2 penalty, column and row subsampling - are deliberately conservative: churn
        snapshots of neighbouring cutoffs repeat the same customers, and the test period may
        be a different season.
    class_weight
        ``"balanced"``: training rows weighted so that churners and non-churners weigh the
        same; ``None``: unweighted. The calibration undoes the shift of the base rate.
    monotone_constraints
        ``{feature: +1 | -1}``; features absent from ``X`` are ignored. Default
        :data:`DEFAULT_MONOTONE`.
    early_stopping_rounds
        Stop when the validation metric has not improved for this many rounds.
    early_stopping_metric
        ``"binary_logloss"`` (default; class-weighted like the training loss, smoother than
        the AUC and so a steadier stopping point) or ``"auc"``.
    calibration
        ``"sigmoid"`` (Platt scaling), ``"isotonic"`` or ``"none"``, fitted on the validation
        set's raw scores. Platt keeps the ranking (ROC-AUC, PR-AUC and lift are those of the
        raw scores); isotonic is more flexible but makes ties.
    prior_feature
        A probability column of ``X`` to boost from (e.g. ``bg_p_no_purchase_90d``, the
        BG/NBD probability of no purchase in the window): its log-odds are the starting score
        (LightGBM's ``init_score``), so the trees learn corrections to it. ``None``: none.
    prior
        With a ``prior_feature``: ``"auto"`` trains the model with and without the prior and
        keeps the one with the better validation ROC-AUC; ``"always"`` / ``"never"``.
        Where the data follow the BG/NBD process the prior model matches BG/NBD, which the
        plain trees trail slightly; on real data the plain model usually wins.
    prior_sample_rows
        With ``prior="auto"`` and more training rows than this, the two variants are compared
        on a seeded random sample of this many training rows (validated on all of ``X_val``)
        and only the winner is trained on all rows: one full-size booster instead of two.
    search_trials
        ``0``: no search. ``k > 0``: a random search of ``k`` trials (the first the given
        parameters, the others drawn from :data:`SEARCH_SPACE`), each with early stopping;
        the best validation ROC-AUC wins.
    random_state
        Seed of LightGBM's bagging / feature sampling and of the search.
    n_jobs
        LightGBM threads.
    min_class_count
        Fewest churners and non-churners each in the training and validation sets.

    Attributes
    ----------
    booster_ : lightgbm.Booster
    best_iteration_ : int
    feature_names_in_ : ndarray of str
        Columns of ``X`` used, in order (constant columns dropped, see ``dropped_features_``).
    n_features_in_ : int
    categories_ : dict[str, list]
        Category lists of the categorical features; the model feeds LightGBM their integer
        codes (unknown or missing values: missing), so the booster takes only numbers.
    dropped_features_ : list[str]
        Features constant in the training set (they cannot be split on).
    calibrator_ : dict
        The calibration map (``method`` and its parameters).
    params_ : dict
        The LightGBM parameters of the final booster.
    prior_results_ : DataFrame
        One row per booster trained: ``trial``, ``prior``, ``train_rows``, ``best_iteration``,
        ``validation_auc`` and ``stage`` (``"prior decision (subsample)"`` or ``"final"``).
    search_results_ : DataFrame or None
        One row per search trial: parameters, best iteration, validation ROC-AUC.
    validation_auc_ : float
    prior_used_ : bool
        Whether the booster starts from ``prior_feature``; then
        :meth:`decision_function` = booster raw score + ``logit(prior_feature)`` (clipped to
        ``[1e-4, 1 - 1e-4]``; missing values use ``prior_fill_``) + ``prior_shift_``.
    prior_shift_ : float
        ``log(n0 / n1)`` of the training labels with ``class_weight="balanced"`` (the shift of
        the optimum log-odds under balanced weights), else 0.
    prior_fill_ : float
        Log-odds used where the prior feature is missing (its training mean).
    classes_ : ndarray
        ``[0, 1]``.
    """

    def __init__(
        self,
        *,
        n_estimators: int = 1000,
        learning_rate: float = 0.05,
        num_leaves: int = 4,
        max_depth: int = -1,
        min_child_samples: int = 200,
        reg_lambda: float = 10.0,
        reg_alpha: float = 0.0,
        feature_fraction: float = 0.5,
        bagging_fraction: float = 0.5,
        bagging_freq: int = 1,
        min_split_gain: float = 0.0,
        max_bin: int = 63,
        class_weight: Literal["balanced"] | None = "balanced",
        monotone_constraints: Mapping[str, int] | None = None,
        early_stopping_rounds: int = 100,
        early_stopping_metric: Literal["auc", "binary_logloss"] = "binary_logloss",
        calibration: Literal["sigmoid", "isotonic", "none"] = "sigmoid",
        prior_feature: str | None = None,
        prior: Literal["auto", "always", "never"] = "auto",
        prior_sample_rows: int = 100_000,
        search_trials: int = 0,
        random_state: int = 0,
        n_jobs: int = 2,
        min_class_count: int = 20,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.reg_lambda = reg_lambda
        self.reg_alpha = reg_alpha
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.bagging_freq = bagging_freq
        self.min_split_gain = min_split_gain
        self.max_bin = max_bin
        self.class_weight = class_weight
        self.monotone_constraints = monotone_constraints
        self.early_stopping_rounds = early_stopping_rounds
        self.early_stopping_metric = early_stopping_metric
        self.calibration = calibration
        self.prior_feature = prior_feature
        self.prior = prior
        self.prior_sample_rows = prior_sample_rows
        self.search_trials = search_trials
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.min_class_count = min_class_count

    # ---- scikit-learn plumbing ---------------------------------------------------------------

    _PARAMS = (
        "n_estimators",
        "learning_rate",
        "num_leaves",
        "max_depth",
        "min_child_samples",
        "reg_lambda",
        "reg_alpha",
        "feature_fraction",
        "bagging_fraction",
        "bagging_freq",
        "min_split_gain",
        "max_bin",
        "class_weight",
        "monotone_constraints",
        "early_stopping_rounds",
        "early_stopping_metric",
        "calibration",
        "prior_feature",
        "prior",
        "prior_sample_rows",
        "search_trials",
        "random_state",
        "n_jobs",
        "min_class_count",
    )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._PARAMS}

    def set_params(self, **params: Any) -> ChurnModel:
        for k, v in params.items():
            if k not in self._PARAMS:
                raise ValueError(f"unknown parameter {k!r} of ChurnModel")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        default = ChurnModel()
        changed = [
            f"{k}={getattr(self, k)!r}"
            for k in self._PARAMS
            if getattr(self, k) != getattr(default, k)
        ]
        return f"ChurnModel({', '.join(changed)})"

    def _check_settings(self) -> None:
        if self.calibration not in ("sigmoid", "isotonic", "none"):
            raise ValueError(
                f"calibration must be 'sigmoid', 'isotonic' or 'none', got {self.calibration!r}"
            )
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        if self.early_stopping_metric not in ("auc", "binary_logloss"):
            raise ValueError(
                "early_stopping_metric must be 'auc' or 'binary_logloss', got "
                f"{self.early_stopping_metric!r}"
            )
        if self.prior not in ("auto", "always", "never"):
            raise ValueError(f"prior must be 'auto', 'always' or 'never', got {self.prior!r}")
        if not (isinstance(self.prior_sample_rows, int) and self.prior_sample_rows >= 1000):
            raise ValueError(
                f"prior_sample_rows must be an int >= 1000, got {self.prior_sample_rows!r}"
            )
        if not (isinstance(self.search_trials, int) and self.search_trials >= 0):
            raise ValueError(f"search_trials must be an int >= 0, got {self.search_trials!r}")

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            from crmkit.models.clv import NotFittedError

            raise NotFittedError("this ChurnModel is not fitted yet; call fit(X, y, ...) first")

    # ---- input preparation -------------------------------------------------------------------

    @staticmethod
    def _is_categorical(col: pd.Series) -> bool:
        return isinstance(col.dtype, pd.CategoricalDtype) or not (
            pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)
        )

    def _encode(self, X: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
        """The numeric matrix LightGBM sees: numbers as float64, categoricals as integer codes
        of ``categories_`` (NaN, i.e. missing, for unknown or missing values)."""
        if not isinstance(X, pd.DataFrame):
            raise DataContractError(
                f"X must be a pandas DataFrame of features, got {type(X).__name__}",
                rule="input_type",
            )
        missing = [c for c in columns if c not in X.columns]
        if missing:
            raise DataContractError(
                f"X lacks feature column(s) {missing[:10]}", column=missing[0], rule="features"
            )
        out = {}
        for c in columns:
            col = X[c]
            if c in self.categories_:
                cats = pd.Index(self.categories_[c])
                codes = cats.get_indexer(col.astype(object).where(col.notna(), None))
                out[c] = np.where(codes >= 0, codes, np.nan)
            else:
                try:
                    out[c] = col.to_numpy(dtype=np.float64, na_value=np.nan)
                except (TypeError, ValueError):
                    raise DataContractError(
                        f"feature {c!r} must be numeric, got dtype {col.dtype}",
                        column=c,
                        rule="features",
                    ) from None
        return pd.DataFrame(out, index=X.index)

    def _lgb_params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        p = {
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_child_samples": self.min_child_samples,
            "reg_lambda": self.reg_lambda,
            "reg_alpha": self.reg_alpha,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "min_split_gain": self.min_split_gain,
        }
        p.update(overrides or {})
        return {
            "objective": "binary",
            "metric": [self.early_stopping_metric],
            "learning_rate": float(p["learning_rate"]),
            "num_leaves": int(p["num_leaves"]),
            "max_depth": int(p["max_depth"]),
            "min_data_in_leaf": int(p["min_child_samples"]),
            "lambda_l2": float(p["reg_lambda"]),
            "lambda_l1": float(p["reg_alpha"]),
            "feature_fraction": float(p["feature_fraction"]),
            "bagging_fraction": float(p["bagging_fraction"]),
            "bagging_freq": int(p["bagging_freq"]),
            "min_gain_to_split": float(p["min_split_gain"]),
            "max_bin": int(self.max_bin),
            "seed": int(self.random_state),
            "num_threads": int(self.n_jobs),
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
        }

    def _train(self, params: dict[str, Any], dtrain: Any, dval: Any) -> tuple[Any, dict]:
        import lightgbm as lgb

        record: dict = {}
        booster = lgb.train(
            params,
            dtrain,
            num_boost_round=int(self.n_estimators),
            valid_sets=[dval],
            valid_names=["validation"],
            callbacks=[
                lgb.early_stopping(
                    int(self.early_stopping_rounds), first_metric_only=True, verbose=False
                ),
                lgb.record_evaluation(record),
            ],
        )
        return booster, record

    # ---- fit / predict -------------------------------------------------------------------------

    def fit(self, X: pd.DataFrame, y: Any, *, X_val: pd.DataFrame, y_val: Any) -> ChurnModel:
        """Fit on training snapshots ``X, y`` with early stopping and calibration on the
        validation snapshots ``X_val, y_val`` (a later cutoff, see :func:`plan_cutoffs`).

        Raises
        ------
        DataContractError
            Not DataFrames, labels not 0/1, too few churners or non-churners in either set,
            every feature constant, mismatched columns.
        """
        import lightgbm as lgb
        from sklearn.metrics import roc_auc_score

        self._check_settings()
        for name, frame in (("X", X), ("X_val", X_val)):
            if not isinstance(frame, pd.DataFrame):
                raise DataContractError(
                    f"{name} must be a pandas DataFrame of features, got {type(frame).__name__}",
                    rule="input_type",
                )
        if len(X) != len(pd.Series(y)) or len(X_val) != len(pd.Series(y_val)):
            raise DataContractError("X and y (X_val and y_val) differ in length", rule="labels")
        yt = _check_binary(y, "the training set", self.min_class_count)
        yv = _check_binary(y_val, "the validation set", self.min_class_count)

        self.categories_ = {}
        used, dropped = [], []
        for c in X.columns:
            col = X[c]
            if self._is_categorical(col):
                values = col.dropna()
                cats = (
                    list(col.cat.categories)
                    if isinstance(col.dtype, pd.CategoricalDtype)
                    else sorted(values.astype(str).unique().tolist())
                )
                if values.nunique() <= 1:
                    dropped.append(str(c))
                    continue
                self.categories_[str(c)] = cats
            elif col.nunique(dropna=False) <= 1:
                dropped.append(str(c))
                continue
            used.append(str(c))
        if not used:
            raise DataContractError(
                f"every feature is constant in the training set ({len(dropped)} columns): "
                "there is nothing to learn from",
                rule="constant_features",
                hint="check that the snapshots hold different customers and cutoffs",
            )
        self.dropped_features_ = dropped
        self.feature_names_in_ = np.asarray(used, dtype=object)
        self.n_features_in_ = len(used)
        Xt = self._encode(X, used)
        Xv = self._encode(X_val, used)
        cat_cols = [c for c in used if c in self.categories_]
        # "balanced": churners and non-churners weigh the same, in training and in the
        # validation loss that early stopping watches (so both see the same base rate)
        w = _balanced_weights(yt) if self.class_weight == "balanced" else None
        wv = _balanced_weights(yv) if self.class_weight == "balanced" else None
        mono = dict(
            DEFAULT_MONOTONE if self.monotone_constraints is None else self.monotone_constraints
        )
        constraints = [int(mono.get(c, 0)) for c in used]

        pf = self.prior_feature
        can_prior = pf is not None and pf in used and pf not in self.categories_
        if pf is not None and self.prior == "always" and not can_prior:
            raise DataContractError(
                f"prior_feature {pf!r} is not a usable numeric feature of X", rule="features"
            )
        self.prior_fill_ = 0.0
        if can_prior:
            lt = _logit(Xt[pf].to_numpy())
            self.prior_fill_ = float(np.nanmean(lt)) if np.isfinite(lt).any() else 0.0
        variants = [False]
        if can_prior and self.prior == "always":
            variants = [True]
        elif can_prior and self.prior == "auto":
            variants = [False, True]

        # class weights move the optimum log-odds by log(w1 / w0) = log(n0 / n1): shift the
        # prior by it, so that the trees start from the prior, not from a base-rate correction
        self.prior_shift_ = _balance_shift(yt) if self.class_weight == "balanced" else 0.0
        val_shift = _balance_shift(yv) if self.class_weight == "balanced" else 0.0

        # the prior's starting scores (LightGBM init_score) of the training / validation rows
        init_t = self._offset(Xt, True) if can_prior else None
        init_v = self._offset(Xv, True) - self.prior_shift_ + val_shift if can_prior else None

        def datasets(params: dict[str, Any]) -> tuple[Any, Any]:
            dtrain = lgb.Dataset(
                Xt,
                label=yt,
                weight=w,
                categorical_feature=cat_cols,
                free_raw_data=False,
                params=params,
            )
            dval = lgb.Dataset(
                Xv, label=yv, weight=wv, categorical_feature=cat_cols, reference=dtrain
            )
            return dtrain, dval

        def train(params: dict[str, Any], dtrain: Any, dval: Any, with_prior: bool) -> tuple:
            # one binned Dataset serves both variants: only the init scores change
            idx = dtrain.used_indices
            it = init_t if with_prior and idx is None else None
            if with_prior and idx is not None:
                it = init_t[idx]  # type: ignore[index]
            _set_init_score(dtrain, it)
            _set_init_score(dval, init_v if with_prior else None)
            booster, record = self._train(params, dtrain, dval)
            raw_v = booster.predict(
                Xv, raw_score=True, num_iteration=booster.best_iteration
            ) + self._offset(Xv, with_prior)
            rows = len(Xt) if idx is None else len(idx)
            return float(roc_auc_score(yv, raw_v)), booster, record, rows

        trials: list[dict[str, Any]] = [{}]
        if self.search_trials > 1:
            rng = np.random.default_rng(self.random_state)
            for _ in range(self.search_trials - 1):
                trials.append({k: v[int(rng.integers(len(v)))] for k, v in SEARCH_SPACE.items()})
        # prior "auto" on many rows: the two variants are compared on a seeded subsample of
        # the training rows (same validation set), and only the winner is trained on all rows
        decide_on_sample = len(variants) == 2 and len(Xt) > self.prior_sample_rows
        results = []
        best = None
        for i, overrides in enumerate(trials):
            params = self._lgb_params(overrides)
            if any(constraints):
                params["monotone_constraints"] = constraints
            dtrain, dval = datasets(params)
            todo = [(v, dtrain) for v in variants]
            if decide_on_sample:
                rng_s = np.random.default_rng(self.random_state)
                idx = np.sort(rng_s.choice(len(Xt), self.prior_sample_rows, replace=False))
                dsub = dtrain.construct().subset(idx.astype(np.int32)).construct()
                sample = []
                for with_prior in variants:
                    auc, sub_booster, _, rows = train(params, dsub, dval, with_prior)
                    sample.append((auc, with_prior))
                    results.append(
                        {
                            "trial": i,
                            **overrides,
                            "prior": with_prior,
                            "train_rows": rows,
                            "best_iteration": int(sub_booster.best_iteration),
                            "validation_auc": auc,
                            "stage": "prior decision (subsample)",
                        }
                    )
                todo = [(max(sample, key=lambda t: t[0])[1], dtrain)]
            for with_prior, data in todo:
                auc, booster, record, rows = train(params, data, dval, with_prior)
                results.append(
                    {
                        "trial": i,
                        **overrides,
                        "prior": with_prior,
                        "train_rows": rows,
                        "best_iteration": int(booster.best_iteration),
                        "validation_auc": auc,
                        "stage": "final",
                    }
                )
                if best is None or auc > best[0]:
                    best = (auc, booster, record, params, with_prior)
        auc, booster, record, params, with_prior = best  # type: ignore[misc]
        self.prior_used_ = bool(with_prior)
        self.prior_results_ = pd.DataFrame(results)
        self.search_results_ = pd.DataFrame(results) if self.search_trials else None
        self.booster_ = booster
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        self.params_ = params
        self.evals_result_ = record
        self.validation_auc_ = auc
        raw_val = self._raw(Xv)
        cal = _Calibrator.fit(self.calibration, raw_val, yv)
        self._calibrator = cal
        self.calibrator_ = cal.to_dict()
        self.classes_ = np.array([0, 1])
        self.train_churn_rate_ = float(yt.mean())
        self.validation_churn_rate_ = float(yv.mean())
        return self

    def _offset(self, Xenc: pd.DataFrame, with_prior: bool | None = None) -> np.ndarray | float:
        """The prior's log-odds per row (0 without a prior)."""
        use = self.prior_used_ if with_prior is None else with_prior
        if not use:
            return 0.0
        lo = _logit(Xenc[self.prior_feature].to_numpy())
        return np.where(np.isfinite(lo), lo, self.prior_fill_) + self.prior_shift_

    def _raw(self, Xenc: pd.DataFrame) -> np.ndarray:
        raw = self.booster_.predict(Xenc, raw_score=True, num_iteration=self.best_iteration_)
        return raw + self._offset(Xenc)

    def encode(self, X: pd.DataFrame) -> pd.DataFrame:
        """The numeric matrix the booster takes (the input of the logged MLflow model)."""
        self._check_is_fitted()
        return self._encode(X, list(self.feature_names_in_))

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Raw LightGBM scores (log-odds, before calibration; with ``class_weight="balanced"``
        they are centred on a 50 % base rate), including the prior's log-odds when
        ``prior_used_``."""
        return self._raw(self.encode(X))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities, shape ``(n, 2)``: column 1 is P(churn)."""
        raw = self.decision_function(X)
        p = self._calibrator(raw)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: pd.DataFrame, threshold: float = 0.5) -> np.ndarray:
        """1 where the calibrated churn probability is at least ``threshold``."""
        return (self.predict_proba(X)[:, 1] >= threshold).astype(np.int64)

    # ---- explanations --------------------------------------------------------------------------

    def feature_importance(self, kind: Literal["gain", "split"] = "gain") -> pd.Series:
        """Global importance per feature (total gain of its splits, or split count), sorted."""
        self._check_is_fitted()
        imp = self.booster_.feature_importance(importance_type=kind, iteration=self.best_iteration_)
        return pd.Series(imp, index=list(self.feature_names_in_), name=kind).sort_values(
            ascending=False
        )

    def shap_values(self, X: pd.DataFrame) -> pd.DataFrame:
        """SHAP values (exact TreeSHAP, LightGBM's ``pred_contrib``) in raw-score units: one
        column per feature plus ``bias`` (the expected raw score); rows sum to
        :meth:`decision_function`. With a prior, its centred log-odds are added to the prior
        feature's column."""
        enc = self.encode(X)
        contrib = self.booster_.predict(enc, pred_contrib=True, num_iteration=self.best_iteration_)
        out = pd.DataFrame(contrib, index=X.index, columns=[*self.feature_names_in_, "bias"])
        if self.prior_used_:
            # the prior's log-odds, centred on its training mean (which goes to the bias), are
            # one more additive term of the prior feature
            centre = self.prior_fill_ + self.prior_shift_
            out[self.prior_feature] = out[self.prior_feature] + self._offset(enc) - centre
            out["bias"] = out["bias"] + centre
        return out

    def top_reasons(self, X: pd.DataFrame, k: int = 3) -> pd.Series:
        """Per customer, up to ``k`` features pushing the churn score up most (positive SHAP
        values) whose sentence is true for the customer, as readable strings (see
        :func:`crmkit.models.churn_reasons.explain_reasons`)."""
        return explain_reasons(X, self.shap_values(X), k=k)


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------


def log_churn_model(
    model: ChurnModel,
    *,
    example: pd.DataFrame,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    figures: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Log a fitted model into the active MLflow run (open one with
    :func:`crmkit.tracking.stage_run`); returns the logged model's URI.

    Logged: ``params`` (flattened, plus the model's own), ``metrics`` (nested dicts such as
    ``{"test": {"lightgbm": {"roc_auc": ...}}}`` become ``test.lightgbm.roc_auc``), each
    figure under ``plots/<name>``, ``churn_model.json`` (features, category code tables,
    calibration map, best iteration, dropped features, search trials, plus ``extra``), and
    the booster with ``mlflow.lightgbm.log_model(..., name="model", signature=...)``. The
    booster takes :meth:`ChurnModel.encode` matrices (numbers only: categoricals as integer
    codes of ``categories_``), so its signature is inferred from ``model.encode(example)``
    and the logged model serves exactly what it was trained on; its output is the
    uncalibrated probability of the trees (add the ``prior`` log-odds when ``churn_model.json``
    names one, then apply its ``calibrator``).
    """
    import mlflow
    from mlflow.models import infer_signature

    from crmkit.tracking import flat_metrics, log_figure, log_json

    model._check_is_fitted()
    if mlflow.active_run() is None:
        raise RuntimeError("no active MLflow run; open one with crmkit.tracking.stage_run(...)")
    flat_params: dict[str, Any] = {}
    for k, v in {
        **{f"model.{k}": v for k, v in model.get_params().items()},
        **dict(params or {}),
    }.items():
        flat_params[k] = v if isinstance(v, int | float | str | bool) or v is None else str(v)
    flat_params["model.best_iteration"] = model.best_iteration_
    flat_params["model.n_features"] = model.n_features_in_
    mlflow.log_params({k: ("None" if v is None else v) for k, v in flat_params.items()})
    if metrics:
        mlflow.log_metrics(flat_metrics(dict(metrics)))
    for name, fig in (figures or {}).items():
        log_figure(fig, name if name.endswith(".png") else f"{name}.png")
    info = {
        "features": list(model.feature_names_in_),
        "categories": model.categories_,
        "calibrator": model.calibrator_,
        "best_iteration": model.best_iteration_,
        "prior": {
            "feature": model.prior_feature,
            "transform": "logit(clip(p, 1e-4, 1 - 1e-4)) (missing: fill) + shift",
            "fill": model.prior_fill_,
            "shift": model.prior_shift_,
        }
        if model.prior_used_
        else None,
        "dropped_features": model.dropped_features_,
        "lightgbm_params": {
            k: v for k, v in model.params_.items() if not isinstance(v, list) or len(v) < 200
        },
        "search": None
        if model.search_results_ is None
        else model.search_results_.to_dict(orient="records"),
        **dict(extra or {}),
    }
    log_json(_jsonable(info), "churn_model.json")
    enc = model.encode(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signature = infer_signature(
            enc, model.booster_.predict(enc, num_iteration=model.best_iteration_)
        )
        logged = mlflow.lightgbm.log_model(model.booster_, name="model", signature=signature)
    return logged.model_uri


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    return obj
