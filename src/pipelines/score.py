"""``crmkit score``: the predict entry point of scheduled batch jobs.

Loads the registered model (default ``models:/crmkit-customer-scorer@champion``), reads and
cleans the transaction file with the training run's data and cleaning settings, scores every
customer and writes, all-or-nothing (a staging folder renamed into place):

- ``customers.parquet`` - :data:`crmkit.pipelines.scorer.CUSTOMER_COLUMNS`;
- ``recommendations.parquet`` - ``customer_id, rank, product_id, kind, score, reason``;
- ``audiences/<action>.parquet`` and ``audiences/index.json`` - one ranked list per CRM action;
- ``summary.json`` and ``quality_report.json``.

``--format csv`` writes CSV instead of Parquet (text cells that a spreadsheet would run as
formulas get a leading ``'``: :func:`crmkit.data.output.write_csv`). The scoring run is recorded in MLflow
(aggregates only: counts, totals, the model version), FAILED when it fails.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from crmkit.errors import CrmkitError, DataContractError

__all__ = [
    "ModelLoadError",
    "load_scorer",
    "score_frame",
    "run_score",
    "ScoreRun",
    "reading_options",
]


class ModelLoadError(CrmkitError):
    """The model URI cannot be resolved or loaded."""


def load_scorer(model_uri: str, *, trust_model_dir: bool = False) -> tuple[Any, dict[str, Any]]:
    """Load the :class:`~crmkit.pipelines.scorer.CustomerScorer` behind ``model_uri``
    (``models:/name@alias``, ``models:/name/version``, ``runs:/...``; a local folder or any
    other URI only with ``trust_model_dir``: loading a model runs its code, see
    :mod:`crmkit.pipelines.model_source`). Returns the scorer and ``{"uri", "name",
    "version", "run_id", "sha256"}`` (``sha256``: the fingerprint of a local folder).
    Failures (unknown model, alias not set or pointing at a deleted version, unreachable
    store, an untrusted folder) raise :class:`ModelLoadError` in plain words."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from crmkit.pipelines.model_source import check_model_source

    info: dict[str, Any] = {"uri": model_uri, "name": None, "version": None, "run_id": None}
    try:
        sha = check_model_source(model_uri, trust_model_dir=trust_model_dir)
    except CrmkitError as exc:
        raise ModelLoadError(str(exc)) from None
    if sha is not None:
        info["sha256"] = sha
    if model_uri.startswith(("models:/", "runs:/")):
        from crmkit.tracking import TrackingError, check_reachable

        try:  # fail in seconds, not after MLflow's minutes of retries
            check_reachable(mlflow.get_registry_uri())
        except TrackingError as exc:
            raise ModelLoadError(f"cannot load the model {model_uri}: {exc}") from None
    try:
        if model_uri.startswith("models:/"):
            ref = model_uri[len("models:/") :]
            client = mlflow.MlflowClient()
            if "@" in ref:
                name, alias = ref.split("@", 1)
                try:
                    mv = client.get_model_version_by_alias(name, alias)
                except MlflowException as exc:
                    raise ModelLoadError(
                        f"the registry has no version of {name!r} with the alias {alias!r} "
                        f"({_first_line(exc)}); run `crmkit train` first, or pass --model "
                        f"models:/{name}/<version>"
                    ) from None
                info.update(name=name, version=str(mv.version), run_id=mv.run_id)
                model_uri = f"models:/{name}/{mv.version}"
            else:
                name, _, version = ref.partition("/")
                info.update(name=name, version=version or None)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*type hint.*predict")
            model = mlflow.pyfunc.load_model(model_uri)
    except ModelLoadError:
        raise
    except MlflowException as exc:
        raise ModelLoadError(f"cannot load the model {info['uri']}: {_first_line(exc)}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot load the model {info['uri']}: {exc}") from None
    try:
        scorer = model.unwrap_python_model().scorer
    except Exception:
        raise ModelLoadError(
            f"{info['uri']} is not a crmkit customer-scorer model (trained by `crmkit train`)"
        ) from None
    info["run_id"] = info["run_id"] or getattr(model.metadata, "run_id", None)
    return scorer, info


def reading_options(trained: Any, config: Any = None) -> Any:
    """The ``data:`` section to read a file to score: the one stored with the model at
    training, with every key the caller's ``config.data`` sets to a value (CLI flags, score
    YAML; a key left out, ``null`` or ``{}`` keeps the model's) taking its place."""
    given = getattr(config, "data", None) if config is not None else None
    if given is None:
        return trained
    update = {k: getattr(given, k) for k in given.model_fields_set}
    update = {k: v for k, v in update.items() if v is not None and v != {} and v != []}
    return trained.model_copy(update=update)


def _first_line(exc: BaseException) -> str:
    msg = str(getattr(exc, "message", exc)) or type(exc).__name__
    return msg.strip().splitlines()[0]


def score_frame(scorer: Any, frame: pd.DataFrame, as_of: object | None = None) -> Any:
    """Clean a frame of order lines (canonical columns) with the model's cleaning rules and
    score it: the path of the pyfunc model and of REST requests."""
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions

    cfg = scorer.config
    raw = load_transactions(frame, date_format=cfg.data.date_format)
    cleaned = clean_lines(raw, cfg.cleaning)
    if cleaned.lines.empty:
        raise DataContractError(
            "no order lines are left after cleaning the input", rule="no_rows_left"
        )
    return scorer.score(cleaned.lines, as_of)


@dataclass
class ScoreRun:
    """What :func:`run_score` did."""

    output: Any  # ScoreOutput
    quality: Any  # QualityReport
    model: dict[str, Any]
    audiences: dict[str, int]
    out_dir: Path
    run_id: str | None


def run_score(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_uri: str | None = None,
    as_of: object | None = None,
    config: Any = None,
    fmt: str | None = None,
    progress: Callable[[str], None] | None = None,
    track: bool = True,
    trust_model_dir: bool = False,
) -> ScoreRun:
    """Score ``data`` with the registered model and write the outputs (module docstring).

    ``config`` (a :class:`~crmkit.pipelines.config.ScoreFileConfig` from
    ``pipelines/score.yaml``, or a whole :class:`~crmkit.pipelines.config.PipelineConfig`)
    only overrides how the file is read (``data:``) and the ``score:`` settings; the model brings its own cleaning,
    feature and action settings so that scores match training. ``trust_model_dir`` allows
    a model folder (``--trust-model-dir``; its fingerprint is printed and logged).
    """
    from crmkit.data.io import staged_output
    from crmkit.models.actions import build_audiences, write_audiences
    from crmkit.pipelines.validate import load_and_clean

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    score_cfg = config.score if config is not None else None
    uri = model_uri or (score_cfg.model if score_cfg else "models:/crmkit-customer-scorer@champion")
    fmt = fmt or (score_cfg.format if score_cfg else "parquet")
    if fmt not in ("parquet", "csv"):
        raise DataContractError(f"--format must be parquet or csv, got {fmt!r}", rule="format")

    say(f"loading model {uri}")
    scorer, info = load_scorer(uri, trust_model_dir=trust_model_dir)
    if info.get("sha256"):
        say(f"model folder {uri}: sha256 {info['sha256']}")
    run_ctx = maybe_run(track, info)
    with run_ctx as run:
        # how to read the file: the training run's data: section (mapping, preset, date
        # format, delimiter, encoding, sheet, names), each key the caller sets (flags, score
        # YAML) overriding it; the cleaning rules are always the model's
        read = scorer.config.model_copy(
            update={"data": reading_options(scorer.config.data, config)}
        )
        say(f"reading {data}")
        cleaned = load_and_clean(data, read)
        if cleaned.lines.empty:
            raise DataContractError(
                f"no order lines are left after cleaning {data}; the report:\n"
                + cleaned.report.render(),
                rule="no_rows_left",
            )
        output = scorer.score(cleaned.lines, as_of, progress=say)
        audiences = build_audiences(output.customers)
        summary = output.summary()
        summary["model"] = info
        summary["notes"] = output.notes
        summary["audiences"] = {k: int(len(v)) for k, v in audiences.items()}
        say(f"writing {out_dir}")
        with staged_output(out_dir, kind="score") as stage:
            stage = Path(stage)
            _write_frame(output.customers, stage / f"customers.{fmt}", fmt)
            _write_frame(output.recommendations, stage / f"recommendations.{fmt}", fmt)
            write_audiences(audiences, stage / "audiences", fmt=fmt)
            (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
            cleaned.report.to_json(stage / "quality_report.json")
        run_id = log_score_run(run, info, summary, fmt)
        if run_id is not None:
            from crmkit.pipelines.quality_tracking import tag_quality

            tag_quality(cleaned.report, [run_id], log_report=True)
    return ScoreRun(output, cleaned.report, info, summary["audiences"], Path(out_dir), run_id)


def log_score_run(run: Any, info: dict[str, Any], summary: dict[str, Any], fmt: str) -> str | None:
    """Log a scoring run's parameters and aggregate metrics (``summary``: counts, totals,
    segment and action sizes - never a customer row); returns the run id (``None`` without a
    run). Shared by the local and the Spark engine."""
    if run is None:
        return None
    import mlflow

    mlflow.log_params(
        {
            "model_uri": info["uri"],
            "model_version": info["version"],
            "as_of": summary["as_of"],
            "format": fmt,
            **({"model_dir_sha256": info["sha256"]} if info.get("sha256") else {}),
        }
    )
    mlflow.log_metrics(
        {
            "customers": summary["customers"],
            "clv_total": summary["clv_total"],
            "clv_mean": summary["clv_mean"],
            "churn_high_risk": summary["churn_high_risk"],
            "recommendations": summary["recommendations"],
            **{f"segment.{k}": v for k, v in summary["segments"].items()},
            **{f"action.{k}": v for k, v in summary["next_best_action"].items()},
        }
    )
    return run.info.run_id


def _write_frame(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    from crmkit.data.output import write_csv, write_parquet

    if fmt == "csv":
        write_csv(frame, path)
    else:
        write_parquet(frame, path)


class _NoRun:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def maybe_run(track: bool, info: dict[str, Any]) -> Any:
    if not track:
        return _NoRun()
    from crmkit.tracking import stage_run

    return stage_run("score", tags={"crmkit.stage": "score", "crmkit.model": str(info["uri"])})
