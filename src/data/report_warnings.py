"""Warnings of the data-quality report: a cleaning rule that removes a large share of the
revenue or of the lines is not one row among many but a warning, printed at the end of a run,
written in ``quality_report.json`` (``warnings``) and tagged on the MLflow run."""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["REVENUE_SHARE", "LINE_SHARE", "rule_warnings"]

#: A rule removing more than this share of the input revenue is a warning.
REVENUE_SHARE = 0.01
#: A rule removing more than this share of the input lines is a warning.
LINE_SHARE = 0.05


def rule_warnings(rules: pd.DataFrame, totals: dict[str, Any]) -> list[str]:
    """One sentence per rule that dropped more than :data:`REVENUE_SHARE` of ``revenue_in``
    (in absolute value) or more than :data:`LINE_SHARE` of ``rows_in``.

    Parameters
    ----------
    rules
        The report's per-rule table (``rule``, ``rows_dropped``, ``amount_dropped``).
    totals
        The report's totals (``rows_in``, ``revenue_in``).
    """
    if rules is None or rules.empty or "rows_dropped" not in rules.columns:
        return []
    rows_in = float(totals.get("rows_in") or 0)
    revenue_in = float(totals.get("revenue_in") or 0.0)
    out = []
    for r in rules.itertuples(index=False):
        rows = int(r.rows_dropped or 0)
        amount = float(r.amount_dropped or 0.0)
        if rows == 0:
            continue
        line_share = rows / rows_in if rows_in else 0.0
        rev_share = abs(amount) / abs(revenue_in) if revenue_in else 0.0
        if rev_share > REVENUE_SHARE or line_share > LINE_SHARE:
            out.append(
                f"rule {r.rule} removed {rows:,} lines ({line_share:.1%} of the lines) and "
                f"{amount:,.2f} of revenue ({rev_share:.1%}): check that this is intended "
                "(column mapping, --preset, cleaning settings)"
            )
    return out
