"""Declarative pipeline configuration (the YAML files in ``pipelines/``), validated on load.

Two kinds of file:

- ``pipelines/train.yaml`` (:func:`load_config` -> :class:`PipelineConfig`): one section per
  stage (``data, cleaning, features, clv, basket, recommend, churn, actions, registry``; and
  ``spark`` for ``crmkit train --engine spark``), read
  by ``crmkit train`` and by the single-stage commands (``validate``, ``features``, ``clv``,
  ``basket``, ``recommend``, ``churn``);
- ``pipelines/score.yaml`` (:func:`load_score_config` -> :class:`ScoreFileConfig`): ``data:``
  and ``score:`` only - the model brings every other setting it was trained with, so a
  training section in a score file is an error (it would have no effect).

Unknown keys, wrong types and bad values raise :class:`~crmkit.errors.ConfigError` naming the
key (``section.key: message``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crmkit.data.clean import CleaningConfig
from crmkit.errors import ConfigError
from crmkit.models.actions import NextBestActionConfig
from crmkit.pipelines.basket import BasketConfig, RecommendConfig
from crmkit.pipelines.churn import ChurnConfig
from crmkit.pipelines.clv import ClvConfig
from crmkit.pipelines.features import FeaturesConfig

__all__ = [
    "DataConfig",
    "RegistryConfig",
    "ScoreConfig",
    "SparkConfig",
    "PipelineConfig",
    "ScoreFileConfig",
    "load_config",
    "load_score_config",
]


class DataConfig(BaseModel):
    """How to read the transaction file (``data:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: dict[str, str] = {}
    date_format: str | None = None
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | int | None = None
    names: list[str] | None = None
    #: a known shop export (shopify, woocommerce, magento, shopware, online-retail)
    preset: str | None = None


class RegistryConfig(BaseModel):
    """Where ``crmkit train`` registers its model and when it becomes the champion
    (``registry:``).

    Attributes
    ----------
    project
        The shop (data source) the model is for (``--project``): one registered model and one
        champion per project. Letters, digits, ``.``, ``_`` and ``-``; default none.
    model_name
        Registered model name (default ``crmkit-<project>``, without a project
        ``crmkit-customer-scorer``; :func:`crmkit.pipelines.registry.registered_model_name`).
    alias
        Alias given to a version whose gate metrics are no worse than the current holder's.
    min_catalogue_overlap
        The alias holder is comparable only when at least this share of the smaller product
        catalogue is in both (the same shop's data); else the new version is not gated against
        it and not promoted (:mod:`crmkit.pipelines.registry`).
    experiment
        MLflow experiment of the runs.
    tolerance
        A gate metric may be this much worse than the champion's and still count as "no
        worse" (0: strictly no worse).
    gate_metrics
        Metrics compared on the same evaluation data, all higher-is-better:
        ``churn_roc_auc``, ``churn_pr_auc``, ``clv_purchases_corr`` (Pearson correlation of
        predicted and actual holdout purchases), ``clv_purchases_neg_mae`` (minus the mean
        absolute error of holdout purchases per customer).
    holdout_days
        Length of the evaluation window at the end of the data (the churn label window is
        the churn section's ``window_days``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    model_name: str = Field(None, validate_default=True)  # type: ignore[assignment]
    alias: str = "champion"
    experiment: str = "crmkit"
    tolerance: float = Field(0.0, ge=0)
    gate_metrics: list[
        Literal["churn_roc_auc", "churn_pr_auc", "clv_purchases_corr", "clv_purchases_neg_mae"]
    ] = ["churn_roc_auc", "churn_pr_auc", "clv_purchases_neg_mae"]
    holdout_days: int = Field(90, ge=7)
    min_catalogue_overlap: float = Field(0.5, ge=0, le=1)

    @field_validator("model_name", mode="before")
    @classmethod
    def _name(cls, v: str | None, info: Any) -> str:
        from crmkit.pipelines.registry import registered_model_name

        return registered_model_name(info.data.get("project"), v or None)


class ScoreConfig(BaseModel):
    """Settings of ``crmkit score`` (``score:``).

    Attributes
    ----------
    model
        Model URI: ``models:/name@alias``, ``models:/name/version``, ``runs:/...`` or a local
        model folder (``--model`` overrides it).
    format
        ``parquet`` or ``csv`` outputs (``--format`` overrides it).
    experiment
        MLflow experiment of the scoring runs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("models:/crmkit-customer-scorer@champion", min_length=1)
    format: Literal["parquet", "csv"] = "parquet"
    experiment: str = Field("crmkit", min_length=1)


class SparkConfig(BaseModel):
    """Training on Spark, ``crmkit train --engine spark`` (``spark:``; see
    :mod:`crmkit.spark.train` and ``docs/spark.md``).

    The CLV models are fitted on every customer (unique RFM patterns with weights, aggregated
    in Spark); the churn model, the recommender and the champion gate run on the driver on
    the order lines of a stratified sample of customers.

    Attributes
    ----------
    sample_customers
        Most customers in the sample (all of them when there are no more).
    sample_seed
        Seed of the sample: a customer's sampling key is a hash of the seed and its id, so
        the same data and seed give the same sample on any cluster.
    order_bands
        Strata: lower bounds of the bands of purchase-order counts at the training date
        (``[1, 2, 3, 5, 10]``: 1, 2, 3-4, 5-9, 10+ orders); each band gets its proportional
        share of the sample (largest remainders).
    fpgrowth_check
        Also mine the association rules over every basket with Spark's FP-growth and log how
        the sample's rules compare (the recommender uses the sample's rules either way).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_customers: int = Field(200_000, ge=100)
    sample_seed: int = 0
    order_bands: list[int] = [1, 2, 3, 5, 10]
    fpgrowth_check: bool = True

    @field_validator("order_bands")
    @classmethod
    def _bands(cls, v: list[int]) -> list[int]:
        if not v or v[0] != 1 or any(b >= c for b, c in zip(v, v[1:], strict=False)):
            raise ValueError("order_bands must be increasing order counts starting at 1")
        return v


class PipelineConfig(BaseModel):
    """A whole pipeline config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataConfig = DataConfig()
    cleaning: CleaningConfig = CleaningConfig()
    features: FeaturesConfig = FeaturesConfig()
    clv: ClvConfig = ClvConfig()
    basket: BasketConfig = BasketConfig()
    recommend: RecommendConfig = RecommendConfig()
    churn: ChurnConfig = ChurnConfig()
    actions: NextBestActionConfig = NextBestActionConfig()
    registry: RegistryConfig = RegistryConfig()
    score: ScoreConfig = ScoreConfig()
    spark: SparkConfig = SparkConfig()


class ScoreFileConfig(BaseModel):
    """A score config file (``pipelines/score.yaml``): how to read the file (``data:``) and
    the ``score:`` settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataConfig = DataConfig()
    score: ScoreConfig = ScoreConfig()


def _format_errors(exc: ValidationError, source: str) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}")
    return f"invalid configuration in {source}: " + "; ".join(parts)


def _read(path: str | Path | None, overrides: dict[str, Any] | None) -> tuple[dict, str]:
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            line = p.read_bytes()[: exc.start].count(b"\n") + 1
            raise ConfigError(
                f"{p} is not UTF-8 text: byte {exc.object[exc.start : exc.start + 1]!r} on "
                f"line {line} ({exc.reason}); save the config as UTF-8"
            ) from None
        except OSError as exc:
            raise ConfigError(f"config file {p} could not be read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p} must hold a mapping of sections (data:, cleaning:, ...)")
    for section, values in (overrides or {}).items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            merged = dict(raw.get(section) or {})
            merged.update(values)
            raw[section] = merged
    return raw, source


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """Read and validate a pipeline YAML file (``pipelines/train.yaml``), then apply
    ``overrides`` (``{"section": {"key": value}}``, e.g. from CLI flags)."""
    raw, source = _read(path, overrides)
    try:
        return PipelineConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_score_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ScoreFileConfig:
    """Read and validate a score YAML file (``pipelines/score.yaml``: ``data:`` and
    ``score:``), then apply ``overrides``. A training section (``cleaning:``, ``churn:``, ...)
    is an error: scoring uses the settings the model was trained with."""
    raw, source = _read(path, overrides)
    training = [k for k in raw if k in PipelineConfig.model_fields and k not in ("data", "score")]
    if training:
        raise ConfigError(
            f"invalid configuration in {source}: section(s) {', '.join(training)} have no effect "
            "at score time - the model brings the cleaning, feature, CLV, churn, "
            "recommendation, action and registry settings it was trained with (set them in "
            "pipelines/train.yaml and retrain); a score config holds data: and score: only"
        )
    try:
        return ScoreFileConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
