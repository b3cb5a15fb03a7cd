"""Diagnostic plots of the CLV models (Fader, Hardie and Lee 2005, figures 2-4; the
``lifetimes.plotting`` and BTYD set).

Every function draws on the ``ax`` it is given, or on a new
:class:`matplotlib.figure.Figure` (never pyplot's global state), and returns the axes. Save
with ``ax.figure.savefig(path)``. The data come from :mod:`crmkit.models.clv_validation`
(:func:`~crmkit.models.clv_validation.holdout_metrics`,
:func:`~crmkit.models.clv_validation.repeat_purchase_tracking`).

References
----------
Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "'Counting your customers' the easy
way: an alternative to the Pareto/NBD model", Marketing Science 24(2), 275-284.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "plot_calibration_vs_holdout",
    "plot_tracking_cumulative",
    "plot_tracking_incremental",
    "plot_p_alive_heatmap",
    "plot_clv_deciles",
]


def _axes(ax: Any, figsize: tuple[float, float] = (7.0, 4.5)) -> Any:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def _by_frequency(data: Any) -> pd.DataFrame:
    frame = getattr(data, "by_frequency", data)
    if not isinstance(frame, pd.DataFrame) or not {"actual", "model"} <= set(frame.columns):
        raise TypeError(
            "pass HoldoutMetrics (from holdout_metrics) or its by_frequency frame with "
            "'actual' and 'model' columns"
        )
    return frame


def plot_calibration_vs_holdout(metrics: Any, ax: Any = None, *, naive: bool = False) -> Any:
    """Mean holdout purchases by calibration frequency: actual vs the model's conditional
    expectation (FHL 2005, figure 4), optionally with the naive baseline.

    Parameters
    ----------
    metrics
        :class:`~crmkit.models.clv_validation.HoldoutMetrics` or its ``by_frequency`` frame.
    ax
        Axes to draw on (default: a new figure).
    naive
        Also draw the naive calibration-rate baseline.

    Returns
    -------
    The axes: one line per series (``actual``, ``model``[, ``naive``]); the last frequency bin
    reads "7+" (or the last bin's value "+").
    """
    frame = _by_frequency(metrics)
    ax = _axes(ax)
    x = np.arange(len(frame))
    ax.plot(x, frame["actual"].to_numpy(), marker="o", color="tab:blue", label="actual")
    ax.plot(
        x,
        frame["model"].to_numpy(),
        marker="s",
        linestyle="--",
        color="tab:orange",
        label="model",
    )
    if naive and "naive" in frame:
        ax.plot(
            x,
            frame["naive"].to_numpy(),
            marker="^",
            linestyle=":",
            color="tab:gray",
            label="naive (calibration rate)",
        )
    labels = [str(int(v)) for v in frame.index]
    if labels:
        labels[-1] += "+"
    ax.set_xticks(x, labels)
    ax.set_xlabel("repeat purchases in the calibration period")
    ax.set_ylabel("mean repeat purchases in the holdout")
    ax.set_title("Calibration vs holdout purchases")
    ax.legend()
    return ax


def _check_tracking(tracking: Any) -> pd.DataFrame:
    need = {"actual", "predicted", "actual_cum", "predicted_cum"}
    if not isinstance(tracking, pd.DataFrame) or not need <= set(tracking.columns):
        raise TypeError("pass the frame of crmkit.models.clv_validation.repeat_purchase_tracking")
    return tracking


def _mark_calibration_end(ax: Any, tracking: pd.DataFrame) -> None:
    end = tracking.attrs.get("calibration_end")
    if end is not None:
        ax.axvline(pd.Timestamp(end), color="black", linestyle=":", linewidth=1, label="_cal_end")
        ax.annotate(
            "end of calibration",
            xy=(pd.Timestamp(end), 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
        )


def plot_tracking_cumulative(tracking: pd.DataFrame, ax: Any = None) -> Any:
    """Cumulative repeat purchases of the calibration cohort, actual vs expected, through
    calibration and holdout (FHL 2005, figure 2).

    Parameters
    ----------
    tracking
        :func:`~crmkit.models.clv_validation.repeat_purchase_tracking` output.
    ax
        Axes to draw on (default: a new figure).

    Returns
    -------
    The axes with two lines (``actual``, ``model``) and a vertical line at the calibration
    end.
    """
    t = _check_tracking(tracking)
    ax = _axes(ax)
    ax.plot(t.index, t["actual_cum"].to_numpy(), color="tab:blue", label="actual")
    ax.plot(
        t.index, t["predicted_cum"].to_numpy(), color="tab:orange", linestyle="--", label="model"
    )
    _mark_calibration_end(ax, t)
    ax.set_ylabel("cumulative repeat purchases")
    ax.set_title("Tracking cumulative repeat purchases")
    ax.legend(loc="upper left")
    ax.figure.autofmt_xdate()
    return ax


def plot_tracking_incremental(tracking: pd.DataFrame, ax: Any = None) -> Any:
    """Repeat purchases per period (weekly by default) of the calibration cohort, actual vs
    expected (FHL 2005, figure 3).

    Parameters
    ----------
    tracking
        :func:`~crmkit.models.clv_validation.repeat_purchase_tracking` output.
    ax
        Axes to draw on (default: a new figure).

    Returns
    -------
    The axes with two lines (``actual``, ``model``) and a vertical line at the calibration
    end.
    """
    t = _check_tracking(tracking)
    ax = _axes(ax)
    days = t.attrs.get("period_days", 7)
    ax.plot(t.index, t["actual"].to_numpy(), color="tab:blue", label="actual")
    ax.plot(t.index, t["predicted"].to_numpy(), color="tab:orange", linestyle="--", label="model")
    _mark_calibration_end(ax, t)
    ax.set_ylabel(f"repeat purchases per {days}-day period")
    ax.set_title("Tracking repeat purchases per period")
    ax.legend(loc="upper left")
    ax.figure.autofmt_xdate()
    return ax


def plot_p_alive_heatmap(
    model: Any,
    *,
    T: float,
    max_frequency: int = 20,
    n_recency: int = 60,
    ax: Any = None,
) -> Any:
    """P(alive) by frequency and recency for customers of age ``T`` (the
    ``plot_probability_alive_matrix`` of lifetimes).

    Parameters
    ----------
    model
        Fitted purchase model.
    T
        Customer age at the analysis date, in the model's time unit (e.g. the largest ``T``
        of the summary).
    max_frequency
        Highest frequency row.
    n_recency
        Number of recency columns spanning ``[0, T]``.
    ax
        Axes to draw on (default: a new figure).

    Returns
    -------
    The axes with one image (values in [0, 1]) and a colour bar.
    """
    if not (T > 0):
        raise ValueError(f"T must be > 0, got {T!r}")
    ax = _axes(ax, (7.0, 5.0))
    freq = np.arange(max_frequency + 1, dtype=np.float64)
    rec = np.linspace(0.0, float(T), n_recency)
    ff, rr = np.meshgrid(freq, rec, indexing="ij")
    rr = np.where(ff == 0, 0.0, rr)  # without repeat purchases the recency is 0
    grid = pd.DataFrame({"frequency": ff.ravel(), "recency": rr.ravel(), "T": float(T)})
    with np.errstate(all="ignore"):
        p = model.conditional_probability_alive(grid).to_numpy().reshape(ff.shape)
    step_f, step_r = 0.5, 0.5 * (rec[1] - rec[0]) if n_recency > 1 else 0.5
    im = ax.imshow(
        p,
        origin="lower",
        aspect="auto",
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        interpolation="nearest",
        extent=(-step_r, float(T) + step_r, -step_f, max_frequency + step_f),
    )
    ax.figure.colorbar(im, ax=ax, label="P(alive)")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("recency (age at the last purchase)")
    ax.set_ylabel("frequency (repeat purchases)")
    ax.set_title(f"Probability alive, customers of age T = {T:g}")
    return ax


def plot_clv_deciles(deciles: Any, ax: Any = None, *, what: str = "holdout spend") -> Any:
    """Mean predicted vs actual value by decile of the prediction (decile 10 = highest).

    Parameters
    ----------
    deciles
        A frame of :func:`~crmkit.models.clv_validation.decile_calibration` (``predicted``,
        ``actual`` by decile), or :class:`~crmkit.models.clv_validation.HoldoutMetrics` (its
        model deciles).
    ax
        Axes to draw on (default: a new figure).
    what
        What the values are, for the axis label.

    Returns
    -------
    The axes with two bar containers (``predicted``, ``actual``).
    """
    frame = deciles.deciles["model"] if hasattr(deciles, "deciles") else deciles
    if not isinstance(frame, pd.DataFrame) or not {"predicted", "actual"} <= set(frame.columns):
        raise TypeError("pass a decile_calibration frame or HoldoutMetrics")
    ax = _axes(ax)
    x = np.arange(len(frame))
    w = 0.4
    ax.bar(x - w / 2, frame["predicted"].to_numpy(), w, color="tab:orange", label="predicted")
    ax.bar(x + w / 2, frame["actual"].to_numpy(), w, color="tab:blue", label="actual")
    ax.set_xticks(x, [str(v) for v in frame.index])
    ax.set_xlabel("decile of the prediction (10 = highest)")
    ax.set_ylabel(f"mean {what} per customer")
    ax.set_title("Decile calibration")
    ax.legend()
    return ax
