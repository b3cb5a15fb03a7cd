"""The ``basket`` and ``recommend`` stages: association rules for product teams, and ranked
per-customer recommendation lists with their holdout evaluation.

Both write their outputs all-or-nothing (:func:`crmkit.data.io.staged_output`). Input that
cannot give a result - an order-level log without products, no basket with two or more
items, thresholds that no rule reaches, a catalogue without prices - is not an error: the
stage says why in plain words (``result.messages`` and the JSON it writes) and writes
*empty but well-formed* outputs (the right columns, zero rows), so that a scheduled job
downstream reads the same schema every time. Errors in the data contract itself (missing
columns, unreadable dates, no purchase before ``as_of``) still raise
:class:`~crmkit.errors.DataContractError`.

Outputs of :func:`run_basket` (``out_dir``)
    ``itemsets.parquet`` (``itemsets`` list<string>, ``support``, ``count``, ``length``),
    ``rules.parquet`` (``antecedents``, ``consequents`` list<string>, ``antecedent_support``,
    ``consequent_support``, ``support``, ``confidence``, ``lift``, ``leverage``,
    ``conviction``, ``count``, ``length``), ``summary.json`` (counts of baskets, items,
    itemsets and rules, by length; the settings; messages; the top rules by lift as text) and
    ``rules.png`` (support / confidence coloured by lift).
Outputs of :func:`run_recommend`
    ``recommendations.parquet`` (``customer_id, rank, product_id, kind, score, reason``),
    ``summary.json`` (customers, rows by kind, notes, the calibration table) and, with
    ``holdout_end``, ``metrics.json`` (precision@N, recall@N, hit rate@N and revenue captured,
    overall and for unseen / re-sell products, for the lists and the baselines).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from crmkit.data.io import staged_output, write_parquet
from crmkit.errors import DataContractError

__all__ = [
    "BasketConfig",
    "RecommendConfig",
    "BasketResult",
    "RecommendResult",
    "run_basket",
    "run_recommend",
    "log_basket_to_mlflow",
    "ITEMSETS_FILE",
    "RULES_FILE",
    "SUMMARY_FILE",
    "PLOT_FILE",
    "RECOMMENDATIONS_FILE",
    "METRICS_FILE",
]

ITEMSETS_FILE = "itemsets.parquet"
RULES_FILE = "rules.parquet"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "rules.png"
RECOMMENDATIONS_FILE = "recommendations.parquet"
METRICS_FILE = "metrics.json"

_ORDER_LEVEL_MESSAGE = (
    "the lines are an order-level log (no product column): basket rules and product "
    "recommendations need products and are skipped"
)


class BasketConfig(BaseModel):
    """Settings of the basket stage (``basket:`` in the pipeline YAML).

    Thresholds are inclusive (arules conventions, see :mod:`crmkit.models.rules`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: Literal["product", "category"] = "product"
    min_support: float = Field(0.001, gt=0.0, le=1.0)
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    min_lift: float = Field(0.0, ge=0.0)
    min_len: int = Field(2, ge=1)
    max_len: int = Field(10, ge=1)
    algorithm: Literal["fpgrowth", "apriori"] = "fpgrowth"
    include_antecedents: list[str] = []
    exclude_antecedents: list[str] = []
    include_consequents: list[str] = []
    exclude_consequents: list[str] = []
    max_dense_mib: int = Field(256, ge=1)
    plot_max_points: int = Field(20_000, ge=1)
    top_rules_in_summary: int = Field(10, ge=0)


class RecommendConfig(BaseModel):
    """Settings of the recommend stage (``recommend:`` in the pipeline YAML); every field is a
    parameter of :class:`crmkit.models.recommend.Recommender`, ``popular_days`` also sets the
    popularity baseline's window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_n: int = Field(10, ge=1)
    unseen_share: float = Field(0.3, ge=0.0, le=1.0)
    exclude_recent_days: int = Field(7, ge=0)
    horizon_days: int = Field(90, ge=1)
    kinds: list[Literal["cross_sell", "up_sell", "resell", "reactivation"]] = [
        "cross_sell",
        "up_sell",
        "resell",
        "reactivation",
    ]
    min_support: float = Field(0.001, gt=0.0, le=1.0)
    min_confidence: float = Field(0.05, ge=0.0, le=1.0)
    min_lift: float = Field(3.0, ge=0.0)
    max_rule_len: int = Field(2, ge=2)
    algorithm: Literal["fpgrowth", "apriori"] = "fpgrowth"
    max_rules_per_item: int = Field(20, ge=1)
    max_upsells_per_item: int = Field(5, ge=1)
    popular_days: int = Field(90, ge=1)
    popular_candidates: int | None = Field(None, ge=0)
    upsell_min_step: float = Field(0.2, ge=0.0)
    upsell_min_customers: int = Field(5, ge=1)
    upsell_min_share: float = Field(0.02, ge=0.0, le=1.0)
    reactivation_segments: list[str] = ["at_risk", "hibernating", "lost"]
    reactivation_min_value_quantile: float = Field(0.5, ge=0.0, le=1.0)
    calibrate: bool = True
    min_calibration_candidates: int = Field(1000, ge=1)
    max_calibration_customers: int = Field(100_000, ge=100)
    value: Literal["auto", "price", "margin"] = "auto"
    value_per: Literal["line", "unit", "none"] = "line"

    def recommender_params(self) -> dict[str, Any]:
        """Keyword arguments of :class:`crmkit.models.recommend.Recommender`."""
        d = self.model_dump()
        d["kinds"] = tuple(d["kinds"])
        d["reactivation_segments"] = tuple(d["reactivation_segments"])
        return d


@dataclass
class BasketResult:
    """What :func:`run_basket` computed (and wrote)."""

    itemsets: pd.DataFrame
    rules: pd.DataFrame
    summary: dict[str, Any]
    config: BasketConfig
    messages: list[str] = field(default_factory=list)
    figure: Any = None
    out_dir: Path | None = None


@dataclass
class RecommendResult:
    """What :func:`run_recommend` computed (and wrote)."""

    recommendations: pd.DataFrame
    summary: dict[str, Any]
    config: RecommendConfig
    metrics: dict[str, Any] | None = None
    messages: list[str] = field(default_factory=list)
    out_dir: Path | None = None


# --------------------------------------------------------------------------------------------
# basket


def _is_order_level(data: Any) -> bool:
    if hasattr(data, "frame") and hasattr(data, "level"):
        return data.level != "product"
    if isinstance(data, pd.DataFrame):
        return "product_id" not in data.columns
    return False


def _by_length(frame: pd.DataFrame) -> dict[str, int]:
    if frame.empty:
        return {}
    counts = frame["length"].value_counts().sort_index()
    return {str(int(k)): int(v) for k, v in counts.items()}


def _rule_text(ants: Any, cons: Any) -> str:
    a = ", ".join(str(x) for x in ants)
    c = ", ".join(str(x) for x in cons)
    return f"{{{a}}} => {{{c}}}"


def _no_rules_message(model: Any, cfg: BasketConfig) -> str:
    """Why no rule came out, with the strongest pair as a hint."""
    from crmkit.models.rules import frequent_itemsets

    hint = ""
    try:
        pairs = frequent_itemsets(model.baskets_, 1.0 / max(model.n_baskets_, 1), max_len=2)
        pairs = pairs[pairs["length"] == 2]
        if len(pairs):
            best = pairs.iloc[0]
            hint = (
                f"; the most frequent pair {{{', '.join(best['itemsets'])}}} has support "
                f"{best['support']:.4g}"
            )
    except DataContractError:  # pragma: no cover - the baskets were valid a moment ago
        pass
    return (
        f"no association rule reaches min_support={cfg.min_support}, "
        f"min_confidence={cfg.min_confidence}, min_lift={cfg.min_lift} "
        f"(rule length {cfg.min_len}..{cfg.max_len}){hint}: lower the thresholds"
    )


def run_basket(
    lines_or_baskets: Any,
    out_dir: str | os.PathLike,
    config: BasketConfig | None = None,
) -> BasketResult:
    """Mine frequent itemsets and association rules and write them to ``out_dir``.

    Parameters
    ----------
    lines_or_baskets
        Cleaned order lines (DataFrame or :class:`~crmkit.data.io.RawLines`), the long frame
        of :func:`crmkit.data.io.load_baskets`, a :class:`crmkit.models.rules.BasketMatrix`,
        or a sequence of baskets (lists of item labels).
    out_dir
        Output folder (written all-or-nothing).
    config
        :class:`BasketConfig` (defaults when ``None``).

    Returns
    -------
    BasketResult
    """
    from crmkit.models.rules import (
        ITEMSET_COLUMNS,
        RULE_COLUMNS,
        AssociationRules,
        plot_rules,
    )

    cfg = config or BasketConfig()
    messages: list[str] = []
    empty_itemsets = pd.DataFrame({c: [] for c in ITEMSET_COLUMNS})
    empty_rules = pd.DataFrame({c: [] for c in RULE_COLUMNS})
    summary: dict[str, Any] = {
        "level": cfg.level,
        "skipped": False,
        "n_baskets": 0,
        "n_items": 0,
        "n_multi_item_baskets": 0,
        "n_itemsets": 0,
        "itemsets_by_length": {},
        "n_rules": 0,
        "rules_by_length": {},
        "top_rules": [],
        "settings": cfg.model_dump(),
    }
    if _is_order_level(lines_or_baskets):
        messages.append(_ORDER_LEVEL_MESSAGE)
        summary["skipped"] = True
        itemsets, rules = empty_itemsets, empty_rules
    else:
        model = AssociationRules(
            min_support=cfg.min_support,
            min_confidence=cfg.min_confidence,
            min_lift=cfg.min_lift,
            min_len=cfg.min_len,
            max_len=cfg.max_len,
            algorithm=cfg.algorithm,
            level=cfg.level,
            include_antecedents=cfg.include_antecedents or None,
            exclude_antecedents=cfg.exclude_antecedents or None,
            include_consequents=cfg.include_consequents or None,
            exclude_consequents=cfg.exclude_consequents or None,
            max_dense_bytes=cfg.max_dense_mib * 2**20,
        ).fit(lines_or_baskets)
        itemsets, rules = model.itemsets_, model.rules_
        summary.update(
            n_baskets=model.n_baskets_,
            n_items=model.n_items_,
            n_multi_item_baskets=model.n_multi_item_baskets_,
        )
        if model.n_multi_item_baskets_ == 0:
            messages.append(
                "no basket holds two or more items: there is nothing to associate, so no "
                "rules (every order has a single "
                f"{'product' if cfg.level == 'product' else 'category'})"
            )
        elif rules.empty:
            messages.append(_no_rules_message(model, cfg))
    summary["n_itemsets"] = len(itemsets)
    summary["itemsets_by_length"] = _by_length(itemsets)
    summary["n_rules"] = len(rules)
    summary["rules_by_length"] = _by_length(rules)
    top = rules.head(cfg.top_rules_in_summary)
    summary["top_rules"] = [
        {
            "rule": _rule_text(r.antecedents, r.consequents),
            "support": float(r.support),
            "confidence": float(r.confidence),
            "lift": float(r.lift),
        }
        for r in top.itertuples(index=False)
    ]
    summary["messages"] = messages
    ax = plot_rules(rules, max_points=cfg.plot_max_points)
    result = BasketResult(itemsets, rules, summary, cfg, messages, ax.figure, Path(out_dir))
    _write_basket(result, out_dir)
    return result


def _write_basket(result: BasketResult, out_dir: str | os.PathLike) -> None:
    import pyarrow.parquet as pq

    from crmkit.models.rules import itemsets_table, rules_table

    with staged_output(out_dir) as stage:
        stage = Path(stage)
        pq.write_table(itemsets_table(result.itemsets), stage / ITEMSETS_FILE)
        pq.write_table(rules_table(result.rules), stage / RULES_FILE)
        (stage / SUMMARY_FILE).write_text(
            json.dumps(result.summary, indent=2, default=_json_default) + "\n", "utf-8"
        )
        result.figure.savefig(stage / PLOT_FILE, dpi=110)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    return str(obj)


def _finite(d: Any) -> Any:
    """JSON-safe copy: non-finite floats become ``None``."""
    if isinstance(d, dict):
        return {k: _finite(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_finite(v) for v in d]
    if isinstance(d, float | np.floating):
        v = float(d)
        return v if np.isfinite(v) else None
    if isinstance(d, np.integer):
        return int(d)
    return d


# --------------------------------------------------------------------------------------------
# recommend


def run_recommend(
    lines: Any,
    as_of: Any,
    out_dir: str | os.PathLike,
    config: RecommendConfig | None = None,
    *,
    holdout_end: Any = None,
    customer_scores: pd.DataFrame | None = None,
    catalogue: pd.DataFrame | None = None,
) -> RecommendResult:
    """Ranked lists per customer at ``as_of`` (and, with ``holdout_end``, their evaluation
    against the baselines on the lines after ``as_of`` up to and including ``holdout_end``),
    written to ``out_dir``.

    Parameters
    ----------
    lines
        Cleaned order lines (DataFrame or :class:`~crmkit.data.io.RawLines`); lines after
        ``as_of`` are only used for the evaluation.
    as_of
        Analysis date.
    out_dir
        Output folder (written all-or-nothing).
    config
        :class:`RecommendConfig` (defaults when ``None``).
    holdout_end
        Last day of the evaluation window; ``None``: no evaluation, no ``metrics.json``.
    customer_scores
        Optional per-customer ``p_alive`` / ``clv`` (see
        :meth:`crmkit.models.recommend.Recommender.fit`).
    catalogue
        Optional per-product prices / margins / categories / names.

    Returns
    -------
    RecommendResult
    """
    from crmkit.models.recommend import (
        KINDS,
        Recommender,
        empty_recommendations,
        evaluate_against_baselines,
    )

    cfg = config or RecommendConfig()
    messages: list[str] = []
    summary: dict[str, Any] = {
        "as_of": str(pd.Timestamp(as_of).date()) if as_of is not None else None,
        "holdout_end": str(pd.Timestamp(holdout_end).date()) if holdout_end is not None else None,
        "skipped": False,
        "customers": 0,
        "rows": 0,
        "rows_by_kind": {k: 0 for k in KINDS},
        "notes": [],
        "calibration": [],
        "settings": cfg.model_dump(),
    }
    recs = empty_recommendations()
    metrics = None
    frame = getattr(lines, "frame", lines)
    if _is_order_level(lines):
        messages.append(_ORDER_LEVEL_MESSAGE)
        summary["skipped"] = True
    else:
        model = Recommender(**cfg.recommender_params())
        try:
            model.fit(frame, as_of, catalogue=catalogue, customer_scores=customer_scores)
        except DataContractError as exc:
            if exc.rule != "catalogue_prices":
                raise
            messages.append(exc.message + " - no recommendations were made")
            summary["skipped"] = True
        else:
            recs = model.recommend()
            messages.extend(model.notes_)
            summary["calibration"] = _finite(model.calibration_.to_dict(orient="records"))
            if holdout_end is not None:
                metrics = {
                    "n": cfg.top_n,
                    "as_of": summary["as_of"],
                    "holdout_end": summary["holdout_end"],
                    **evaluate_against_baselines(
                        frame, as_of, holdout_end, recs, cfg.top_n, popular_days=cfg.popular_days
                    ),
                }
                metrics = _finite(metrics)
    if holdout_end is not None and metrics is None:
        metrics = {"n": cfg.top_n, "skipped": True, "messages": list(messages)}
    summary["customers"] = int(recs["customer_id"].nunique())
    summary["rows"] = len(recs)
    counts = recs["kind"].value_counts()
    summary["rows_by_kind"] = {k: int(counts.get(k, 0)) for k in KINDS}
    summary["notes"] = list(messages)
    result = RecommendResult(recs, summary, cfg, metrics, messages, Path(out_dir))
    with staged_output(out_dir) as stage:
        stage = Path(stage)
        write_parquet(recs, stage / RECOMMENDATIONS_FILE)
        (stage / SUMMARY_FILE).write_text(
            json.dumps(_finite(summary), indent=2, default=_json_default) + "\n", "utf-8"
        )
        if metrics is not None:
            (stage / METRICS_FILE).write_text(
                json.dumps(metrics, indent=2, default=_json_default) + "\n", "utf-8"
            )
    return result


# --------------------------------------------------------------------------------------------
# tracking


def log_basket_to_mlflow(result: BasketResult | RecommendResult) -> None:
    """Log a basket or recommend result into the active MLflow run (the caller opens it, e.g.
    with :func:`crmkit.tracking.stage_run`): the settings as params, the counts and evaluation
    metrics as metrics (``basket.*`` / ``recommend.*``), the rules plot as ``plots/rules.png``
    and the summary as ``basket_summary.json`` / ``recommend_summary.json``. Never logs
    customer-level rows."""
    import mlflow

    from crmkit.tracking import flat_metrics, log_figure, log_json

    if mlflow.active_run() is None:
        raise RuntimeError("log_basket_to_mlflow needs an active MLflow run (mlflow.start_run)")
    cfg = result.config.model_dump()
    prefix = "basket" if isinstance(result, BasketResult) else "recommend"
    mlflow.log_params(
        {
            f"{prefix}.{k}": (",".join(map(str, v)) if isinstance(v, list) else v)
            for k, v in cfg.items()
        }
    )
    s = result.summary
    if isinstance(result, BasketResult):
        counts = {
            "n_baskets": s["n_baskets"],
            "n_items": s["n_items"],
            "n_multi_item_baskets": s["n_multi_item_baskets"],
            "n_itemsets": s["n_itemsets"],
            "n_rules": s["n_rules"],
            "itemsets_by_length": s["itemsets_by_length"],
            "rules_by_length": s["rules_by_length"],
        }
        rules = result.rules
        if len(rules):
            counts["max_lift"] = float(rules["lift"].max())
            counts["median_lift"] = float(rules["lift"].median())
            counts["median_confidence"] = float(rules["confidence"].median())
        mlflow.log_metrics(flat_metrics(counts, prefix="basket."))
        log_figure(result.figure, PLOT_FILE)
        log_json(_finite(s), "basket_summary.json")
    else:
        counts = {"customers": s["customers"], "rows": s["rows"], "rows_by_kind": s["rows_by_kind"]}
        mlflow.log_metrics(flat_metrics(counts, prefix="recommend."))
        if result.metrics:
            ev = {
                name: {part: result.metrics[name][part] for part in ("overall", "unseen", "resell")}
                for name in ("lists", "popularity", "popularity_unseen", "own_items")
                if name in result.metrics
            }
            mlflow.log_metrics(flat_metrics(ev, prefix="recommend."))
        log_json(_finite(s), "recommend_summary.json")
