"""The ``features`` stage: one row per customer at an analysis date (RFM summary, RFM scores
and segment, behavioural features), retention KPIs, the cohort table and their plots."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, field_validator

from crmkit.data.io import staged_output, write_parquet
from crmkit.data.output import write_csv
from crmkit.errors import DataContractError

__all__ = [
    "FeaturesConfig",
    "FeaturesResult",
    "customer_table",
    "run_features",
    "default_as_of",
]


class FeaturesConfig(BaseModel):
    """Settings of the feature stage (``features:`` in the pipeline YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: Literal["D", "W", "M"] = "D"
    scoring: Literal["quantile", "fixed"] = "quantile"
    monetary: Literal["avg_order_value", "total_spend"] = "avg_order_value"
    thresholds: dict[str, list[float]] = {}
    windows: list[int] = [30, 90, 180, 365]
    season_windows: list[int] = [30, 90]
    kpi_period: str | int = "M"
    cohort_freq: Literal["M", "Q", "Y"] = "M"

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        from crmkit.features.segments import RFMThresholds

        RFMThresholds.from_mapping(v)  # raises ConfigError with the reason
        return v


def default_as_of(lines: pd.DataFrame) -> pd.Timestamp:
    """The last day with an order line: the natural analysis date of a data set."""
    if lines.empty:
        raise DataContractError("no order lines", rule="empty_window")
    return lines["order_ts"].max().normalize()


def behaviour_settings(
    config: FeaturesConfig, cancellation_prefixes: tuple[str, ...] = ("C",)
) -> dict[str, Any]:
    """Keyword arguments of :func:`crmkit.features.behaviour.behaviour_features` used by
    :func:`customer_table`."""
    return {
        "windows": tuple(config.windows),
        "season_windows": tuple(config.season_windows),
        "cancellation_prefixes": tuple(cancellation_prefixes),
    }


def customer_table(
    lines: pd.DataFrame,
    as_of: object,
    config: FeaturesConfig | None = None,
    *,
    cancellation_prefixes: tuple[str, ...] = ("C",),
    behaviour: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every feature of every customer who bought on or before ``as_of``, indexed by
    ``customer_id``: the RFM summary (``frequency, recency, T, monetary_value`` in
    ``config.unit``), the RFM measures, scores and ``segment``, and the behavioural features.
    """
    from crmkit.features.behaviour import behaviour_features
    from crmkit.features.rfm import rfm_summary
    from crmkit.features.segments import RFMThresholds, assign_segments, rfm_scores

    cfg = config or FeaturesConfig()
    summary = rfm_summary(lines, as_of, unit=cfg.unit)
    scores = rfm_scores(
        lines,
        as_of,
        method=cfg.scoring,
        thresholds=RFMThresholds.from_mapping(cfg.thresholds) if cfg.thresholds else None,
        monetary=cfg.monetary,
    )
    scores["segment"] = assign_segments(scores)
    if behaviour is None:  # else: the caller computed it with behaviour_settings(...)
        behaviour = behaviour_features(
            lines, as_of, **behaviour_settings(cfg, cancellation_prefixes)
        )
    table = summary.join(scores, how="left")
    table = table.join(behaviour.drop(columns=[c for c in behaviour if c in table]), how="left")
    table.index.name = "customer_id"
    return table


@dataclass
class FeaturesResult:
    """What :func:`run_features` computed (and wrote)."""

    customers: pd.DataFrame
    kpis: dict[str, Any]
    segments: pd.DataFrame
    cohorts: pd.DataFrame
    as_of: pd.Timestamp


def compute_features(
    lines: pd.DataFrame,
    as_of: object | None,
    config: FeaturesConfig,
    *,
    cancellation_prefixes: tuple[str, ...] = ("C",),
) -> FeaturesResult:
    """Customer table, retention KPIs, segment summary and cohort table at ``as_of``
    (default: the last day with data)."""
    from crmkit.features.kpis import cohort_table, retention_kpis
    from crmkit.features.segments import segment_summary

    when = pd.Timestamp(as_of) if as_of is not None else default_as_of(lines)
    customers = customer_table(lines, when, config, cancellation_prefixes=cancellation_prefixes)
    segments = segment_summary(customers)
    kpis = {
        "as_of": when.isoformat(),
        "unit": config.unit,
        "retention": retention_kpis(lines, when, period=config.kpi_period),
        "segments": json.loads(segments.reset_index().to_json(orient="records")),
    }
    cohorts = cohort_table(lines, when, freq=config.cohort_freq)
    return FeaturesResult(customers, kpis, segments, cohorts, when)


def write_features(result: FeaturesResult, out_dir: str | os.PathLike) -> None:
    """Write ``customers.parquet``, ``kpis.json``, ``cohorts.parquet``, ``segments.csv`` and
    the plots (``cohort_heatmap.png``, ``segment_sizes.png``) into ``out_dir``,
    all-or-nothing."""
    from crmkit.features.kpis import plot_cohort_heatmap, plot_segment_sizes

    with staged_output(out_dir) as stage:
        stage = Path(stage)
        write_parquet(result.customers.reset_index(), stage / "customers.parquet")
        (stage / "kpis.json").write_text(json.dumps(result.kpis, indent=2) + "\n", "utf-8")
        cohorts = result.cohorts.copy()
        cohorts.columns = [str(c) for c in cohorts.columns]
        cohorts.index = cohorts.index.astype(str)
        write_parquet(cohorts.reset_index(), stage / "cohorts.parquet")
        write_csv(result.segments, stage / "segments.csv", index=True)
        for name, ax in (
            ("cohort_heatmap.png", plot_cohort_heatmap(result.cohorts)),
            ("segment_sizes.png", plot_segment_sizes(result.segments)),
        ):
            ax.figure.savefig(stage / name, dpi=110, bbox_inches="tight")


def run_features(
    lines: pd.DataFrame,
    out_dir: str | os.PathLike,
    config: FeaturesConfig,
    as_of: object | None = None,
    *,
    cancellation_prefixes: tuple[str, ...] = ("C",),
) -> FeaturesResult:
    """Compute the features of cleaned ``lines`` at ``as_of`` and write them to ``out_dir``."""
    result = compute_features(lines, as_of, config, cancellation_prefixes=cancellation_prefixes)
    write_features(result, out_dir)
    return result


def render_segments(segments: pd.DataFrame) -> str:
    """The segment table as plain text for the terminal."""
    cols = ["customers", "share", "mean_r_score", "mean_f_score", "mean_m_score", "total_spend"]
    t = segments[[c for c in cols if c in segments]].copy()
    lines = [
        f"  {'segment':<16} {'customers':>9} {'share':>7} {'R':>5} {'F':>5} {'M':>5} "
        f"{'total spend':>14}"
    ]
    for name, r in t.iterrows():
        lines.append(
            f"  {name!s:<16} {int(r['customers']):>9,} {r['share']:>7.1%} "
            f"{r['mean_r_score']:>5.2f} {r['mean_f_score']:>5.2f} {r['mean_m_score']:>5.2f} "
            f"{r['total_spend']:>14,.2f}"
        )
    return "\n".join(lines)
