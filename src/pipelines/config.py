"""Declarative pipeline configuration (the YAML files in ``pipelines/``), validated on load.

A config has sections; this module knows ``data:`` (how to read the input) and ``cleaning:``
(:class:`~crmkit.data.clean.CleaningConfig`). Later stages add their own sections. Unknown
keys, wrong types and bad values raise :class:`~crmkit.errors.ConfigError` naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from crmkit.data.clean import CleaningConfig
from crmkit.errors import ConfigError
from crmkit.pipelines.basket import BasketConfig, RecommendConfig
from crmkit.pipelines.clv import ClvConfig
from crmkit.pipelines.features import FeaturesConfig

__all__ = ["DataConfig", "PipelineConfig", "load_config"]


class DataConfig(BaseModel):
    """How to read the transaction file (``data:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: dict[str, str] = {}
    date_format: str | None = None
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | int | None = None
    names: list[str] | None = None


class PipelineConfig(BaseModel):
    """A whole pipeline config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataConfig = DataConfig()
    cleaning: CleaningConfig = CleaningConfig()
    features: FeaturesConfig = FeaturesConfig()
    clv: ClvConfig = ClvConfig()
    basket: BasketConfig = BasketConfig()
    recommend: RecommendConfig = RecommendConfig()


def _format_errors(exc: ValidationError, source: str) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}")
    return f"invalid configuration in {source}: " + "; ".join(parts)


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """Read and validate a pipeline YAML file, then apply ``overrides``
    (``{"section": {"key": value}}``, e.g. from CLI flags)."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
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
    try:
        return PipelineConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
