"""Plots of churn models: ROC and precision-recall curves, reliability diagram, cumulative
gains (lift), gain importance and a SHAP beeswarm summary.

Every function takes an optional matplotlib ``ax`` and returns the ``Axes`` it drew on; without
one it draws on a new :class:`matplotlib.figure.Figure` (never pyplot's global state, so it is
safe in threads and servers). Save with ``ax.figure.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "plot_roc",
    "plot_pr",
    "plot_calibration",
    "plot_lift",
    "plot_importance",
    "plot_shap_summary",
]

Curves = Mapping[str, tuple[Any, Any]]


def _axes(ax: Any, size: tuple[float, float] = (6.0, 5.0)) -> Any:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig.add_subplot()


def plot_roc(curves: Curves, *, ax: Any = None, title: str = "ROC curve") -> Any:
    """ROC curves of several scores on the same labels: ``{"name": (y, score), ...}``; the
    legend shows each ROC-AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    ax = _axes(ax)
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate (churners found)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    return ax


def plot_pr(curves: Curves, *, ax: Any = None, title: str = "Precision-recall curve") -> Any:
    """Precision-recall curves (``{"name": (y, score)}``), legend with each average
    precision; the dotted line is the churn rate (a random score)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    ax = _axes(ax)
    rate = None
    for name, (y, s) in curves.items():
        prec, rec, _ = precision_recall_curve(y, s)
        ax.plot(rec, prec, lw=1.6, label=f"{name} (AP {average_precision_score(y, s):.3f})")
        rate = float(np.mean(y))
    if rate is not None:
        ax.axhline(rate, ls=":", c="grey", lw=1, label=f"churn rate {rate:.2f}")
    ax.set(xlabel="recall (share of churners found)", ylabel="precision", title=title)
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    return ax


def plot_calibration(
    curves: Curves,
    *,
    n_bins: int = 10,
    ax: Any = None,
    title: str = "Reliability diagram",
) -> Any:
    """Reliability diagram: per bin of predicted churn probability (equal-count bins), the
    observed churn rate against the mean prediction, for ``{"name": (y, probability)}``. On
    the diagonal means calibrated; the legend gives each Brier score."""
    from sklearn.metrics import brier_score_loss

    ax = _axes(ax)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="perfectly calibrated")
    for name, (y, p) in curves.items():
        yv = np.asarray(y, dtype=np.float64)
        pv = np.asarray(p, dtype=np.float64)
        order = np.argsort(pv, kind="stable")
        bins = np.array_split(order, min(n_bins, len(pv)))
        mp = [pv[b].mean() for b in bins if len(b)]
        my = [yv[b].mean() for b in bins if len(b)]
        ax.plot(
            mp, my, marker="o", ms=4, lw=1.4, label=f"{name} (Brier {brier_score_loss(yv, pv):.3f})"
        )
    ax.set(xlabel="predicted churn probability", ylabel="observed churn rate", title=title)
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_lift(curves: Curves, *, ax: Any = None, title: str = "Cumulative gains") -> Any:
    """Cumulative gains: share of all churners among the top x % of customers by score, for
    ``{"name": (y, score)}``; the legend gives the top-decile lift. The diagonal is a random
    ranking."""
    from crmkit.models.churn import top_decile

    ax = _axes(ax)
    for name, (y, s) in curves.items():
        yv = np.asarray(y, dtype=np.float64)
        sv = np.asarray(s, dtype=np.float64)
        # average over tied scores so that ties do not depend on the row order
        order = np.argsort(-sv, kind="stable")
        ys, ss = yv[order], sv[order]
        _, start, counts = np.unique(-ss, return_index=True, return_counts=True)
        group_mean = np.repeat(np.add.reduceat(ys, start) / counts, counts)
        gains = np.concatenate(([0.0], np.cumsum(group_mean) / yv.sum()))
        share = np.linspace(0, 1, len(gains))
        lift, _ = top_decile(yv, sv)
        ax.plot(share, gains, lw=1.6, label=f"{name} (top-decile lift {lift:.2f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="random")
    ax.axvline(0.1, c="grey", lw=0.6, ls="--")
    ax.set(xlabel="share of customers targeted (highest risk first)")
    ax.set(ylabel="share of churners captured", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    return ax


def plot_importance(
    importance: pd.Series, *, top: int = 20, ax: Any = None, title: str = "Feature importance"
) -> Any:
    """Horizontal bars of the ``top`` features by importance (e.g.
    :meth:`crmkit.models.churn.ChurnModel.feature_importance`), as shares of the total."""
    imp = importance.sort_values(ascending=False).head(top)[::-1]
    total = float(importance.sum()) or 1.0
    ax = _axes(ax, (6.5, max(3.0, 0.28 * len(imp) + 1.0)))
    ax.barh(range(len(imp)), imp.to_numpy() / total, color="#4c72b0")
    ax.set_yticks(range(len(imp)), [str(i) for i in imp.index], fontsize=8)
    ax.set(xlabel=f"share of total {importance.name or 'importance'}", title=title)
    return ax


def _swarm_offsets(x: np.ndarray, n_bins: int = 80, width: float = 0.4) -> np.ndarray:
    """Vertical offsets that spread points with similar x into a beeswarm: points are binned on
    x and stacked alternately above and below the axis, scaled so the densest bin spans
    ``width``."""
    if len(x) == 0:
        return np.zeros(0)
    lo, hi = float(x.min()), float(x.max())
    b = (
        np.zeros(len(x), dtype=np.int64)
        if hi <= lo
        else ((x - lo) / (hi - lo) * n_bins).astype(int)
    )
    order = np.lexsort((x, b))
    rank = np.empty(len(x), dtype=np.int64)
    sb = b[order]
    start = np.r_[0, np.flatnonzero(sb[1:] != sb[:-1]) + 1]
    pos = np.arange(len(x)) - np.repeat(start, np.diff(np.r_[start, len(x)]))
    rank[order] = pos
    offset = ((rank + 1) // 2) * np.where(rank % 2 == 0, 1.0, -1.0)
    peak = max(float(np.abs(offset).max()), 1.0)
    return offset / peak * width


def plot_shap_summary(
    shap_values: pd.DataFrame,
    features: pd.DataFrame,
    *,
    top: int = 15,
    max_points: int = 2000,
    seed: int = 0,
    ax: Any = None,
    title: str = "SHAP summary (raw-score units; > 0 pushes towards churn)",
) -> Any:
    """Beeswarm summary of SHAP values (e.g. :meth:`ChurnModel.shap_values`): one row per
    feature (the ``top`` by mean absolute SHAP value, most important on top), one dot per
    customer at its SHAP value, coloured by the customer's feature value (its rank within the
    feature: blue low, red high; grey for categorical or missing values). At most
    ``max_points`` customers are drawn (a seeded random sample)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cols = [c for c in shap_values.columns if c != "bias"]
    sv = shap_values[cols]
    if len(sv) > max_points:
        take = np.sort(np.random.default_rng(seed).choice(len(sv), max_points, replace=False))
        sv = sv.iloc[take]
    feats = features.loc[sv.index] if len(features) != len(sv) else features
    rank = sv.abs().mean().sort_values(ascending=False).head(top)
    names = list(rank.index)[::-1]
    ax = _axes(ax, (7.5, max(3.5, 0.38 * len(names) + 1.2)))
    cmap = "coolwarm"
    for i, name in enumerate(names):
        x = sv[name].to_numpy(dtype=np.float64)
        col = feats[name] if name in feats else pd.Series(np.nan, index=sv.index)
        y = i + _swarm_offsets(x)
        if pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype):
            v = col.to_numpy(dtype=np.float64, na_value=np.nan)
            c = pd.Series(v).rank(pct=True).to_numpy()
            ok = ~np.isnan(c)
            ax.scatter(x[ok], y[ok], c=c[ok], cmap=cmap, vmin=0, vmax=1, s=6, lw=0, alpha=0.8)
            ax.scatter(x[~ok], y[~ok], c="#999999", s=6, lw=0, alpha=0.6)
        else:
            ax.scatter(x, y, c="#999999", s=6, lw=0, alpha=0.6)
    ax.axvline(0, c="grey", lw=0.8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(ylim=(-0.7, len(names) - 0.3), xlabel="SHAP value (effect on the churn log-odds)")
    ax.set_title(title, fontsize=10)
    sm = ScalarMappable(norm=Normalize(0, 1), cmap=cmap)
    cb = ax.figure.colorbar(sm, ax=ax, pad=0.01, aspect=40)
    cb.set_ticks([0, 1], labels=["low", "high"])
    cb.set_label("feature value", fontsize=8)
    return ax
