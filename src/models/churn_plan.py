"""Churn cutoffs that adapt to short histories.

:func:`crmkit.models.churn.plan_cutoffs` refuses when the configured training snapshots
(``n_snapshots`` cutoffs ``every_days`` apart, each with ``min_history_days`` of data before
it, the latest two label windows before the as-of date) do not fit in the data - e.g. Online
Retail (from 2010-12-01) at 2011-07-01 with a 90-day window leaves 32 days before the last
training cutoff, less than the default 42 days of history. :func:`adaptive_plan` then uses
what fits, and says what it changed:

* history per cutoff: ``min(min_history_days, max(MIN_HISTORY_DAYS, available // 2))``, where
  ``available`` is the number of days from the first day of data to the last possible training
  cutoff (``as_of - 2 * window_days``): half the span is kept as history;
* spacing: ``every_days`` when two cutoffs fit in the rest, else the rest (at least a day);
* the number of cutoffs follows (at most ``n_snapshots``).

It still refuses (the original error) when fewer than :data:`MIN_HISTORY_DAYS` days of history
plus one day of spacing are available: a churn model needs two training cutoffs with two
weeks of behaviour each.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from crmkit.errors import DataContractError

__all__ = ["MIN_HISTORY_DAYS", "adaptive_plan"]

#: Fewest days of history before a training cutoff the adaptation goes down to.
MIN_HISTORY_DAYS = 14


def adaptive_plan(
    lines: pd.DataFrame,
    as_of: object,
    *,
    window_days: int,
    every_days: int,
    n_snapshots: int,
    min_history_days: int,
    adapt: bool = True,
) -> tuple[Any, dict[str, Any] | None]:
    """The cutoff plan of :func:`crmkit.models.churn.plan_cutoffs`, adapted when the
    configured snapshots do not fit the data.

    Returns
    -------
    (plan, adapted)
        ``adapted`` is ``None`` when the configured settings fit, else ``{"requested": {...},
        "used": {...}, "message": str}`` (``every_days``, ``n_snapshots``, ``min_history_days``
        and the number of training cutoffs).

    Raises
    ------
    DataContractError
        Rule ``too_few_cutoffs``: not even the adapted snapshots fit (or ``adapt`` is false and
        the configured ones do not).
    """
    from crmkit.models.churn import _cutoff_day, plan_cutoffs

    requested = {
        "every_days": int(every_days),
        "n_snapshots": int(n_snapshots),
        "min_history_days": int(min_history_days),
    }
    try:
        return plan_cutoffs(lines, as_of, window_days=window_days, **requested), None
    except DataContractError as exc:
        if not adapt or exc.rule != "too_few_cutoffs":
            raise
        first_error = exc
    test = _cutoff_day(as_of, "as_of")
    last_train = test - pd.Timedelta(days=2 * int(window_days))
    data_start = pd.Timestamp(lines["order_ts"].min()).normalize()
    available = int((last_train - data_start).days)
    history = min(int(min_history_days), max(MIN_HISTORY_DAYS, available // 2))
    room = available - history
    if room < 1:
        raise DataContractError(
            f"{first_error.message}; even adapted (two training cutoffs with at least "
            f"{MIN_HISTORY_DAYS} days of history each) the data would need to start by "
            f"{(last_train - pd.Timedelta(days=MIN_HISTORY_DAYS + 1)).date()}",
            rule="too_few_cutoffs",
            hint=first_error.hint,
        ) from None
    every = int(every_days) if room >= int(every_days) else room
    used = {"every_days": every, "n_snapshots": int(n_snapshots), "min_history_days": history}
    plan = plan_cutoffs(lines, as_of, window_days=window_days, **used)
    used["n_snapshots"] = len(plan.train)
    message = (
        f"short history: the configured churn snapshots ({n_snapshots} cutoffs {every_days} days "
        f"apart, {min_history_days} days of history each) do not fit between the start of the "
        f"data ({data_start.date()}) and the last training cutoff ({last_train.date()}); using "
        f"{len(plan.train)} cutoffs {every} days apart with {history} days of history each "
        "(churn.adapt_history)"
    )
    return plan, {"requested": requested, "used": used, "message": message}
