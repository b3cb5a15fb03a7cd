"""``crmkit train``: the whole training job as one MLflow parent run.

Nested runs, in data-flow order:

1. ``validate`` - load, check and clean the file; the input data set is logged with
   ``mlflow.data`` (source, digest, schema, row count - no rows), the data-quality report as
   ``quality_report.json`` and per-rule counts as metrics;
2. ``features`` - RFM summary, scores, segments, behavioural features and retention KPIs at
   the as-of date (segment table, KPIs and plots);
3. ``clv`` - BG/NBD (or the configured purchase model) and Gamma-Gamma at the as-of date;
4. ``churn`` - the LightGBM churn model on rolling cutoffs, calibrated, with baselines;
5. ``basket`` - cross-sell rules, up-sell pairs and purchase-probability calibration of the
   recommender (product-level state only).

The parent run then bundles every fitted component into one pyfunc model
(:mod:`crmkit.pipelines.scorer_model`, logged as models-from-code with a signature and a
synthetic input example), registers it as ``registry.model_name`` and runs the **champion
gate**: challenger and current champion are evaluated on the same data - churn ROC-AUC /
PR-AUC at ``as_of - churn.window_days`` (labels from the window up to the as-of date) and
CLV holdout purchase error over the last ``registry.holdout_days`` - and the challenger gets
the alias only when no gate metric is worse than the champion's by more than
``registry.tolerance``. The decision and both sets of numbers are printed, logged as
``registry/gate.json`` and ``gate.*`` metrics, and tagged on the model version.

Caveat of the gate: the challenger was fitted on data that includes the evaluation windows
(as the champion may have been), so the numbers compare models, they are not unbiased
estimates of future accuracy; the stages' own held-out metrics are logged in their runs.

Data protection: only parameters, aggregates and plots are logged - never customer rows or
customer ids (tested by scanning every artifact).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crmkit.errors import DataContractError
from crmkit.pipelines.registry import decide as _decide  # noqa: F401 - the gate, re-exported
from crmkit.pipelines.registry import log_and_register

__all__ = ["TrainResult", "run_train", "gate_metrics", "synthetic_input_example"]


@dataclass
class TrainResult:
    """What :func:`run_train` did."""

    run_id: str
    experiment_id: str
    as_of: pd.Timestamp
    scorer: Any
    model_name: str
    model_version: str | None
    promoted: bool
    gate: dict[str, Any]
    stage_runs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    quality: Any = None  # the QualityReport of the training data
    segments: pd.DataFrame | None = None  # segment summary at the training date


def synthetic_input_example(
    columns: list[str] | None = None, n_customers: int = 60, seed: int = 7
) -> pd.DataFrame:
    """Made-up order lines (simulated, ids prefixed ``example-``) in ``columns`` (default:
    the required ones) for the model's input example: it never holds a real customer id."""
    from crmkit.data.simulate import simulate_transactions

    sim = simulate_transactions(n_customers=n_customers, seed=seed, dirty_fraction=0.0)
    lines = sim.lines.copy()
    lines["customer_id"] = "example-" + lines["customer_id"].astype(str)
    lines["order_id"] = "example-" + lines["order_id"].astype(str)
    lines["quantity"] = lines["quantity"].astype("float64")
    lines["amount"] = lines["quantity"] * lines["unit_price"]
    want = columns or [
        "customer_id",
        "order_id",
        "order_ts",
        "product_id",
        "quantity",
        "unit_price",
    ]
    cols = [c for c in want if c in lines.columns]
    return lines[cols].reset_index(drop=True)


def gate_metrics(
    scorer: Any, lines: pd.DataFrame, as_of: pd.Timestamp, config: Any
) -> dict[str, float]:
    """The gate's metrics of ``scorer`` on ``lines`` (all higher-is-better; see the module
    docstring). Metrics that cannot be computed (too little history) are left out."""
    from crmkit.features.rfm import UNIT_DAYS, calibration_holdout_summary
    from crmkit.models.churn import churn_labels, classification_metrics

    out: dict[str, float] = {}
    window = int(config.churn.window_days)
    cut = as_of - pd.Timedelta(days=window)
    if scorer.churn is not None and lines["order_ts"].min() < cut:
        try:
            y = churn_labels(lines, cut, window)
            p = scorer.churn.score(lines, cut)["churn_probability"]
            both = pd.concat([y.rename("y"), p.rename("p")], axis=1, join="inner").dropna()
            m = classification_metrics(both["y"], both["p"])
            out["churn_roc_auc"] = float(m["roc_auc"])
            out["churn_pr_auc"] = float(m["pr_auc"])
        except DataContractError:
            pass
    hold = int(config.registry.holdout_days)
    cal_end = as_of - pd.Timedelta(days=hold)
    if lines["order_ts"].min() < cal_end:
        unit = scorer.clv["unit"]
        ch = calibration_holdout_summary(lines, cal_end, as_of, unit=unit)
        summary = ch.rename(
            columns={
                "frequency_cal": "frequency",
                "recency_cal": "recency",
                "T_cal": "T",
                "monetary_value_cal": "monetary_value",
            }
        )
        purchase, _ = scorer.clv_models()
        with np.errstate(all="ignore"):
            pred = purchase.conditional_expected_number_of_purchases_up_to_time(
                hold / UNIT_DAYS[unit], summary
            ).to_numpy()
        actual = ch["frequency_holdout"].to_numpy(dtype=np.float64)
        out["clv_purchases_neg_mae"] = -float(np.mean(np.abs(pred - actual)))
        if np.std(pred) > 0 and np.std(actual) > 0:
            out["clv_purchases_corr"] = float(np.corrcoef(pred, actual)[0, 1])
    return out


def run_train(
    data: str | os.PathLike,
    config: Any,
    *,
    as_of: object | None = None,
    tracking_uri: str | None = None,
    progress: Callable[[str], None] | None = None,
    register: bool = True,
) -> TrainResult:
    """Run the training job (module docstring) on the transaction file ``data``.

    Parameters
    ----------
    data
        Transaction file (any format :func:`crmkit.data.io.load_transactions` reads).
    config
        :class:`crmkit.pipelines.config.PipelineConfig`.
    as_of
        Training date (default: the last day of the data).
    tracking_uri
        MLflow store (default :func:`crmkit.tracking.default_tracking_uri`).
    progress
        ``callable(str)`` told about each step.
    register
        Register the model and run the gate (``False``: log the model to the run only).
    """
    import mlflow

    from crmkit.tracking import configure, log_figure, log_json, stage_run

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    exp_id = configure(tracking_uri, config.registry.experiment)
    reg = config.registry
    stage_runs: dict[str, str] = {}
    notes: list[str] = []
    with stage_run("train", tags={"crmkit.stage": "train", "crmkit.data": str(data)}) as parent:
        mlflow.log_dict(config.model_dump(mode="json"), "config.json")
        mlflow.log_params(_flat_params(config.model_dump(mode="json")))

        # 1. validate
        say("validate: loading and cleaning")
        from crmkit.pipelines.validate import load_and_clean

        with stage_run("validate", nested=True, tags={"crmkit.stage": "validate"}) as run:
            stage_runs["validate"] = run.info.run_id
            cleaned = load_and_clean(data, config)
            lines = cleaned.lines
            if lines.empty:
                raise DataContractError(
                    f"no order lines are left after cleaning {data}; the report:\n"
                    + cleaned.report.render(),
                    rule="no_rows_left",
                )
            _log_input(lines, data)
            report = cleaned.report.to_dict()
            log_json(report, "quality_report.json")
            mlflow.log_metrics(_quality_metrics(report))
            from crmkit.pipelines.quality_tracking import tag_quality

            tag_quality(cleaned.report, [run.info.run_id])
            tag_quality(cleaned.report, [parent.info.run_id], log_report=True)
        when = (
            pd.Timestamp(as_of).normalize()
            if as_of is not None
            else lines["order_ts"].max().normalize()
        )
        mlflow.log_param("as_of", str(when.date()))
        prefixes = tuple(config.cleaning.cancellation_prefixes)

        # 2. features
        say(f"features at {when.date()}")
        from crmkit.features.kpis import plot_cohort_heatmap, plot_segment_sizes
        from crmkit.pipelines.features import compute_features

        with stage_run("features", nested=True, tags={"crmkit.stage": "features"}) as run:
            stage_runs["features"] = run.info.run_id
            feats = compute_features(lines, when, config.features, cancellation_prefixes=prefixes)
            log_json(json.loads(json.dumps(feats.kpis, default=str)), "features/kpis.json")
            log_segments(feats.segments, len(feats.customers))
            log_figure(plot_cohort_heatmap(feats.cohorts).figure, "cohort_heatmap.png")
            log_figure(plot_segment_sizes(feats.segments).figure, "segment_sizes.png")

        # 3. CLV
        say("clv: purchase and spend models")
        from crmkit.pipelines.clv import log_clv_to_mlflow, run_clv

        with stage_run("clv", nested=True, tags={"crmkit.stage": "clv"}) as run:
            stage_runs["clv"] = run.info.run_id
            with tempfile.TemporaryDirectory(prefix="crmkit-clv-") as tmp:
                clv = run_clv(lines, when, Path(tmp) / "clv", config.clv)
            log_clv_to_mlflow(clv)
            notes += clv.warnings
        clv_state = {
            "model": clv.model_name,
            "unit": config.clv.unit,
            "params": {k: float(v) for k, v in clv.purchase_model.params_.items()},
            "gamma_gamma": {k: float(v) for k, v in clv.spend_model.params_.items()},
        }

        # 4. churn
        with stage_run("churn", nested=True, tags={"crmkit.stage": "churn"}) as run:
            stage_runs["churn"] = run.info.run_id
            churn_scorer = churn_stage(lines, when, config, say, notes)

        # 5. basket / recommender
        with stage_run("basket", nested=True, tags={"crmkit.stage": "basket"}) as run:
            stage_runs["basket"] = run.info.run_id
            scores = clv.customers.set_index("customer_id")[["p_alive", "clv"]]
            recommender = basket_stage(lines, when, config, scores, say, notes)

        # 6. bundle, register, gate
        scorer, version, promoted, gate = bundle_and_register(
            lines,
            when,
            config,
            clv_state,
            churn_scorer,
            recommender,
            register,
            say,
            notes,
            data_source=Path(data).name,
        )
        run_id = parent.info.run_id
    return TrainResult(
        run_id=run_id,
        experiment_id=exp_id,
        as_of=when,
        scorer=scorer,
        model_name=reg.model_name,
        model_version=version,
        promoted=promoted,
        gate=gate,
        stage_runs=stage_runs,
        notes=notes,
        quality=cleaned.report,
        segments=feats.segments,
    )


def log_segments(segments: pd.DataFrame, n_customers: int) -> None:
    """Log the segment table (``features/segments.csv``) and the ``segment.<name>`` and
    ``customers`` metrics into the active (features) run."""
    import mlflow

    from crmkit.data.output import write_csv

    seg = segments.copy()
    seg.index = seg.index.astype(str)
    mlflow.log_text(write_csv(seg, None, index=True), "features/segments.csv")
    mlflow.log_metrics(
        {f"segment.{k}": int(v) for k, v in segments["customers"].items()}
        | {"customers": n_customers}
    )


def churn_stage(
    lines: pd.DataFrame,
    when: pd.Timestamp,
    config: Any,
    say: Callable[[str], None],
    notes: list[str],
) -> Any:
    """The churn stage inside the active (churn) run: fit on ``lines``, log the run and the
    booster, add the notes to ``notes``; returns the :class:`ChurnScorer`."""
    from crmkit.pipelines.churn import ChurnScorer, compute_churn, log_churn_run

    churn = compute_churn(
        lines,
        when,
        config.churn,
        progress=say,
        cancellation_prefixes=tuple(config.cleaning.cancellation_prefixes),
    )
    log_churn_run(churn)  # booster with the lightgbm flavour and a signature
    notes += churn.notes
    return ChurnScorer.from_result(churn)


def basket_stage(
    lines: pd.DataFrame,
    when: pd.Timestamp,
    config: Any,
    scores: pd.DataFrame,
    say: Callable[[str], None],
    notes: list[str],
) -> Any:
    """The basket stage inside the active (basket) run: fit the recommender on ``lines``
    with the customers' ``p_alive`` / ``clv`` ``scores`` and log it; ``None`` for
    order-level data."""
    import mlflow

    from crmkit.tracking import log_json

    if "product_id" not in lines.columns:
        notes.append("order-level data (no product ids): no recommendations")
        mlflow.log_param("basket.skipped", "order-level data")
        return None
    say("basket: rules, up-sells, calibration")
    from crmkit.models.recommend import Recommender

    recommender = Recommender(**config.recommend.recommender_params())
    recommender.fit(lines, when, customer_scores=scores)
    mlflow.log_params({f"recommend.{k}": str(v) for k, v in config.recommend.model_dump().items()})
    mlflow.log_metrics(
        {
            "rules": len(recommender.rules_),
            "products": len(recommender.products_),
        }
        | {
            f"calibration.{r['kind']}.auc": r["auc"]
            for r in recommender.calibration_.to_dict(orient="records")
            if np.isfinite(r.get("auc", np.nan))
        }
    )
    log_json({"notes": list(recommender.notes_)}, "basket/notes.json")
    notes += list(recommender.notes_)
    return recommender


def bundle_and_register(
    lines: pd.DataFrame,
    when: pd.Timestamp,
    config: Any,
    clv_state: dict[str, Any],
    churn_scorer: Any,
    recommender: Any,
    register: bool,
    say: Callable[[str], None],
    notes: list[str],
    *,
    data_source: str | None = None,
) -> tuple[Any, str | None, bool, dict[str, Any]]:
    """Bundle the fitted parts into a :class:`CustomerScorer`, measure its gate metrics on
    ``lines``, log (and register) it and run the champion gate
    (:mod:`crmkit.pipelines.registry`), in the active parent run; logs ``registry/gate.json``
    and ``notes.json``. ``data_source`` (the file name) is tagged on the version. Returns the
    scorer, the version, whether it was promoted, and the gate."""
    import mlflow

    from crmkit.pipelines.scorer import CustomerScorer
    from crmkit.tracking import log_json

    scorer = CustomerScorer(
        config=config,
        clv=clv_state,
        churn=churn_scorer,
        recommender=recommender,
        trained_as_of=when,
        input_columns={c: str(t) for c, t in lines.dtypes.items()},
    )
    say("gate: evaluating the new model")
    challenger = gate_metrics(scorer, lines, when, config)
    scorer.metrics = challenger
    mlflow.log_metrics({f"gate.challenger.{k}": v for k, v in challenger.items()})

    say("logging the model")
    version, promoted, gate = log_and_register(
        scorer, lines, when, config, register, say, data_source=data_source
    )
    log_json(gate, "registry/gate.json")
    if gate.get("champion_metrics"):
        mlflow.log_metrics({f"gate.champion.{k}": v for k, v in gate["champion_metrics"].items()})
    mlflow.log_metric("gate.promoted", int(promoted))
    mlflow.set_tag("crmkit.model_version", str(version))
    log_json({"notes": notes}, "notes.json")
    return scorer, version, promoted, gate


def _log_input(lines: pd.DataFrame, data: str | os.PathLike) -> None:
    """Log the input data set (source, digest, schema, row count; no rows).

    The digest is an MD5 of the row hashes of *every* cleaned line (MLflow's own looks at
    the first 10,000 rows only) and the schema is inferred on the first 10,000 rows (MLflow
    infers it element by element on the whole frame: 20 s per million lines)."""
    import hashlib

    import mlflow
    from mlflow.data.pandas_dataset import PandasDataset
    from mlflow.types.utils import _infer_schema

    class _Dataset(PandasDataset):
        @property
        def schema(self):  # noqa: ANN202
            try:
                return _infer_schema(self._df.head(10_000))
            except Exception:  # as MLflow: no schema rather than no run
                return None

    md5 = hashlib.md5()
    md5.update(pd.util.hash_pandas_object(lines, index=False).to_numpy().tobytes())
    md5.update(f"{len(lines)}|{'|'.join(map(str, lines.columns))}".encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "source can be interpreted in ... ways"
        base = mlflow.data.from_pandas(
            lines,
            source=str(Path(data).resolve()),
            name=Path(data).name,
            digest=md5.hexdigest()[:8],
        )
    ds = _Dataset(df=lines, source=base.source, name=base.name, digest=base.digest)
    mlflow.log_input(ds, context="training")


def _quality_metrics(report: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (report.get("totals") or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[f"quality.{k}"] = float(v)
    for row in report.get("rules", []) or []:
        for key in ("rows_dropped", "rows_changed", "customers_lost"):
            if isinstance(row.get(key), int | float):
                out[f"quality.{row['rule']}.{key}"] = float(row[key])
    return out


def _flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat_params(v, key + "."))
        else:
            text = json.dumps(v) if isinstance(v, list | dict | bool) or v is None else str(v)
            out[key] = text[:6000]
    return out
