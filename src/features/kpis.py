"""Retention KPIs, cohort retention tables and their plots.

Pure functions of cleaned order lines and an analysis date ``as_of``; only lines with
``order_ts < analysis_cutoff(as_of)`` are read. Orders, purchase orders and order values are
those of :func:`crmkit.features.segments.order_table`: an order is a distinct
``(customer_id, order_id)``; it is a *purchase* when one of its lines has ``quantity > 0``; its
timestamp is its earliest line's; its value is the sum of its lines' ``amount`` (negative for
return-only orders, which count in revenue but not as orders). A customer is *active* in a
period when they placed a purchase order in it.

Periods of :func:`retention_kpis`
---------------------------------
With ``cutoff = analysis_cutoff(as_of)`` (the first instant after the analysis date) and a
period length ``L`` (``"M"`` one calendar month, ``"Q"`` three, ``"Y"`` twelve, an int ``n``
that many days):

* current period = ``[cutoff - L, cutoff)``, the window ending with the analysis date;
* previous period = ``[cutoff - 2L, cutoff - L)``.

Month arithmetic is calendar arithmetic (:class:`pandas.DateOffset`; the day is clipped to the
month's length): for ``as_of = 2011-09-09`` and ``"M"`` the current period is
``[2011-08-10, 2011-09-10)`` and the previous one ``[2011-07-10, 2011-08-10)``.

Plot functions take an optional matplotlib ``ax`` and return it; without one they draw on a new
:class:`matplotlib.figure.Figure` (no pyplot state). Save with ``ax.figure.savefig(path)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from crmkit.errors import ConfigError, DataContractError
from crmkit.features.segments import OrderTable, order_table, segment_summary

__all__ = [
    "PERIOD_MONTHS",
    "period_bounds",
    "retention_kpis",
    "kpis_by_segment",
    "cohort_table",
    "plot_cohort_heatmap",
    "plot_segment_sizes",
]

#: Calendar months per named period of :func:`retention_kpis`.
PERIOD_MONTHS: dict[str, int] = {"M": 1, "Q": 3, "Y": 12}
#: Cohort frequencies of :func:`cohort_table`, in months.
_COHORT_MONTHS: dict[str, int] = {"M": 1, "Q": 3, "Y": 12}


def _offset(period: str | int, k: int) -> pd.DateOffset | pd.Timedelta:
    if isinstance(period, bool):
        raise ConfigError(f"period must be 'M', 'Q', 'Y' or a number of days, got {period!r}")
    if isinstance(period, (int, np.integer)):
        if period <= 0:
            raise ConfigError(f"period in days must be positive, got {period}")
        return pd.Timedelta(days=int(period) * k)
    if isinstance(period, str) and period in PERIOD_MONTHS:
        return pd.DateOffset(months=PERIOD_MONTHS[period] * k)
    raise ConfigError(f"period must be 'M', 'Q', 'Y' or a number of days, got {period!r}")


def period_bounds(
    cutoff: pd.Timestamp, period: str | int = "M"
) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:
    """``(previous_start, current_start, cutoff)``: the previous period is
    ``[previous_start, current_start)``, the current one ``[current_start, cutoff)``.

    Parameters
    ----------
    cutoff
        ``analysis_cutoff(as_of)``.
    period
        ``"M"``, ``"Q"``, ``"Y"`` (1, 3, 12 calendar months) or a positive int (days).
    """
    return cutoff - _offset(period, 2), cutoff - _offset(period, 1), cutoff


def _ns(ts: pd.Timestamp) -> np.datetime64:
    return ts.as_unit("ns").asm8


def _active(orders: OrderTable, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    """Boolean per customer code: a purchase order in ``[start, end)``."""
    inside = orders.purchase & (orders.ts >= _ns(start)) & (orders.ts < _ns(end))
    return np.bincount(orders.code[inside], minlength=len(orders.customers)) > 0


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def retention_kpis(
    lines: pd.DataFrame, as_of: object, *, period: str | int = "M"
) -> dict[str, Any]:
    """Retention and base KPIs at ``as_of`` (JSON-ready).

    Parameters
    ----------
    lines
        Cleaned order lines.
    as_of
        Analysis date; later lines are ignored.
    period
        Length of the current and previous periods (see the module docstring): ``"M"``,
        ``"Q"``, ``"Y"`` or a positive number of days.

    Returns
    -------
    dict
        Period bounds (ISO strings, start inclusive, end exclusive): ``as_of``, ``period``,
        ``previous_start``, ``current_start``, ``current_end``.

        Period activity: ``customers_previous`` / ``customers_current`` (customers with a
        purchase order in the previous / current period), ``customers_retained`` (in both),
        ``retention_rate`` = retained / previous, ``churn_rate`` = 1 - retention_rate (both
        ``None`` when no customer was active in the previous period), ``new_customers``
        (first purchase order ever - in the past lines - falls in the current period),
        ``orders_current``, ``revenue_current`` (values of all orders in the period, returns
        included) and ``average_order_value_current`` (revenue_current / orders_current,
        ``None`` without orders).

        Whole history up to ``as_of``: ``customers`` (with at least one purchase order),
        ``orders`` (purchase orders), ``revenue`` (sum of all past line amounts, net of
        returns), ``repeat_purchase_rate`` (share of customers with >= 2 orders),
        ``purchase_frequency`` (orders / customers) and ``average_order_value``
        (revenue / orders).
    """
    _offset(period, 1)  # validate before reading the lines
    orders = order_table(lines, as_of)
    cutoff = orders.cutoff
    prev_start, cur_start, cur_end = period_bounds(cutoff, period)
    prev = _active(orders, prev_start, cur_start)
    cur = _active(orders, cur_start, cur_end)
    retained = int((prev & cur).sum())
    n_prev = int(prev.sum())

    p = orders.purchase
    n_cust_orders = np.bincount(orders.code[p], minlength=len(orders.customers))
    first_ts = np.full(len(orders.customers), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_ts, orders.code[p], orders.ts[p].view(np.int64))
    is_new = (first_ts >= _ns(cur_start).astype(np.int64)) & (n_cust_orders > 0)

    in_cur = (orders.ts >= _ns(cur_start)) & (orders.ts < _ns(cur_end))
    orders_cur = int((in_cur & p).sum())
    revenue_cur = float(orders.value[in_cur].sum())
    n_customers = int((n_cust_orders > 0).sum())
    n_orders = int(p.sum())
    revenue = float(orders.value.sum())
    retention = _ratio(retained, n_prev)
    return {
        "as_of": pd.Timestamp(as_of).isoformat(),  # type: ignore[arg-type]
        "period": period if isinstance(period, str) else f"{int(period)}D",
        "previous_start": prev_start.isoformat(),
        "current_start": cur_start.isoformat(),
        "current_end": cur_end.isoformat(),
        "customers_previous": n_prev,
        "customers_current": int(cur.sum()),
        "customers_retained": retained,
        "retention_rate": retention,
        "churn_rate": None if retention is None else 1.0 - retention,
        "new_customers": int(is_new.sum()),
        "orders_current": orders_cur,
        "revenue_current": revenue_cur,
        "average_order_value_current": _ratio(revenue_cur, orders_cur),
        "customers": n_customers,
        "orders": n_orders,
        "revenue": revenue,
        "repeat_purchase_rate": _ratio(int((n_cust_orders >= 2).sum()), n_customers),
        "purchase_frequency": _ratio(n_orders, n_customers),
        "average_order_value": _ratio(revenue, n_orders),
    }


def kpis_by_segment(
    scores_with_segment: pd.DataFrame, *, segment_col: str = "segment"
) -> pd.DataFrame:
    """Customers and revenue per segment (a view of
    :func:`crmkit.features.segments.segment_summary`).

    Returns
    -------
    DataFrame
        Indexed by segment: ``customers``, ``customer_share``, ``revenue`` (sum of
        ``total_spend``), ``revenue_share`` and ``revenue_per_customer``.
    """
    s = segment_summary(scores_with_segment, segment_col=segment_col)
    return pd.DataFrame(
        {
            "customers": s["customers"],
            "customer_share": s["share"],
            "revenue": s["total_spend"],
            "revenue_share": s["spend_share"],
            "revenue_per_customer": s["mean_spend"],
        }
    )


def _period_numbers(ts: np.ndarray, months: int) -> np.ndarray:
    """Calendar period ordinal (pandas ``Period`` ordinal for M, Q, Y) of timestamps."""
    return ts.astype("datetime64[M]").astype(np.int64) // months


def cohort_table(lines: pd.DataFrame, as_of: object, *, freq: str = "M") -> pd.DataFrame:
    """Cohort retention table: share of each first-purchase cohort active k periods later.

    Parameters
    ----------
    lines
        Cleaned order lines.
    as_of
        Analysis date; later lines are ignored.
    freq
        Calendar period: ``"M"`` (months, default), ``"Q"`` or ``"Y"``.

    Returns
    -------
    DataFrame
        Index ``cohort`` (a :class:`pandas.PeriodIndex`: calendar period of the customer's
        first purchase order in the past lines; periods without new customers are absent).
        Column ``cohort_size`` (customers), then integer columns ``0, 1, 2, ...`` (calendar
        periods since the cohort period): the share of the cohort with a purchase order in
        that period (column 0 is 1.0). Cells after the period containing ``as_of`` are NaN;
        the period containing ``as_of`` is partial (it ends with the analysis date). The first
        cohort also holds every customer who bought before the data starts.
    """
    if freq not in _COHORT_MONTHS:
        raise ConfigError(f"freq must be one of {sorted(_COHORT_MONTHS)}, got {freq!r}")
    months = _COHORT_MONTHS[freq]
    orders = order_table(lines, as_of)
    p = orders.purchase
    code = orders.code[p]
    per = _period_numbers(orders.ts[p], months)
    n = len(orders.customers)
    cohort = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(cohort, code, per)
    age = per - cohort[code]
    last_per = int(
        _period_numbers(np.array([_ns(orders.cutoff - pd.Timedelta(1, "ns"))]), months)[0]
    )

    # One count per (customer, age): distinct pairs, then customers per (cohort, age).
    width = last_per - int(cohort[code].min()) + 1
    pair = pd.unique(code.astype(np.int64) * width + age)  # hash-based, order irrelevant
    p_code, p_age = pair // width, pair % width
    p_cohort = cohort[p_code]
    c0 = int(p_cohort.min())
    counts = np.zeros((width, width), dtype=np.int64)
    np.add.at(counts, (p_cohort - c0, p_age), 1)
    sizes = counts[:, 0]
    rows = np.flatnonzero(sizes > 0)
    shares = counts[rows] / sizes[rows, None]
    cohort_per = c0 + rows
    observable = cohort_per[:, None] + np.arange(width)[None, :] <= last_per
    shares = np.where(observable, shares, np.nan)
    index = pd.PeriodIndex.from_ordinals(cohort_per, freq=freq).rename("cohort")
    table = pd.DataFrame(shares, index=index, columns=pd.RangeIndex(width, name="period"))
    table.insert(0, "cohort_size", sizes[rows].astype(np.int64))
    return table


def _new_ax(ax: Any, figsize: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def plot_cohort_heatmap(
    table: pd.DataFrame,
    ax: Any = None,
    *,
    annotate: bool = True,
    cmap: str = "Blues",
    colorbar: bool = True,
) -> Any:
    """Annotated heatmap of a :func:`cohort_table`.

    Parameters
    ----------
    table
        Output of :func:`cohort_table` (``cohort_size`` is used in the row labels if present).
    ax
        Matplotlib Axes to draw on; a new figure's when ``None``.
    annotate
        Write the share (as a whole percentage) in every observed cell.
    cmap
        Colormap name.
    colorbar
        Add a colour bar beside ``ax``.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax``: one image, and one text per non-NaN cell when ``annotate``.
    """
    if not isinstance(table, pd.DataFrame):
        raise DataContractError(
            "expected a cohort table (DataFrame)",
            rule="input_type",
            hint="pass crmkit.features.kpis.cohort_table(lines, as_of)",
        )
    cells = table.drop(columns=["cohort_size"], errors="ignore")
    values = cells.to_numpy(dtype=np.float64)
    n_rows, n_cols = values.shape
    ax = _new_ax(ax, (max(6.0, 0.55 * n_cols + 2.5), max(4.0, 0.4 * n_rows + 1.5)))
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    if annotate:
        for i, j in zip(*np.nonzero(np.isfinite(values)), strict=True):
            v = values[i, j]
            ax.text(
                j,
                i,
                f"{v:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > 0.6 else "black",
            )
    labels = [str(c) for c in table.index]
    if "cohort_size" in table.columns:
        labels = [f"{c} (n={int(s):,})" for c, s in zip(labels, table["cohort_size"], strict=True)]
    ax.set_yticks(np.arange(n_rows), labels=labels)
    ax.set_xticks(np.arange(n_cols), labels=[str(c) for c in cells.columns])
    ax.set_xlabel("periods since first purchase")
    ax.set_ylabel("cohort (first purchase)")
    ax.set_title("Cohort retention: share of customers active")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="share active")
    return ax


def plot_segment_sizes(summary: pd.DataFrame, ax: Any = None, *, column: str = "customers") -> Any:
    """Bar chart of segment sizes from :func:`crmkit.features.segments.segment_summary`.

    Parameters
    ----------
    summary
        The segment table (index = segment).
    ax
        Matplotlib Axes to draw on; a new figure's when ``None``.
    column
        Column to plot (``"customers"`` by default; e.g. ``"total_spend"``).

    Returns
    -------
    matplotlib.axes.Axes
        ``ax``: one bar (patch) and one label (text: value and share) per segment.
    """
    if not isinstance(summary, pd.DataFrame) or column not in summary.columns:
        raise DataContractError(
            f"expected a segment summary with a {column!r} column",
            column=column,
            rule="required_column",
            hint="pass crmkit.features.segments.segment_summary(scores_with_segment)",
        )
    values = summary[column].to_numpy(dtype=np.float64)
    total = float(np.nansum(values))
    ax = _new_ax(ax, (max(6.0, 0.8 * len(summary) + 2.0), 4.5))
    x = np.arange(len(summary))
    bars = ax.bar(x, values, color="tab:blue")
    labels = [
        f"{v:,.0f}\n({v / total:.0%})" if total else f"{v:,.0f}" for v in np.nan_to_num(values)
    ]
    ax.bar_label(bars, labels=labels, fontsize=8, padding=2)
    ax.set_xticks(x, labels=[str(i) for i in summary.index], rotation=30, ha="right")
    ax.set_ylabel(column.replace("_", " "))
    ax.set_title(f"Segment sizes ({column.replace('_', ' ')})")
    ax.margins(y=0.15)
    return ax
