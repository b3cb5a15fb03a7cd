"""crmkit: customer intelligence from raw e-commerce transaction logs.

Raw order lines -> validated and cleaned (:mod:`crmkit.data`) -> feature pipelines
(:mod:`crmkit.features`) -> models (:mod:`crmkit.models`) -> MLflow-tracked pipelines
(:mod:`crmkit.pipelines`) and the ``crmkit`` command line.

Importing :mod:`crmkit` is cheap: heavy libraries load only when the part that needs them is
used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_transactions": "crmkit.data.io",
    "RawLines": "crmkit.data.io",
    "clean_lines": "crmkit.data.clean",
    "CleaningConfig": "crmkit.data.clean",
    "QualityReport": "crmkit.data.clean",
    "simulate_transactions": "crmkit.data.simulate",
    "SimulationParams": "crmkit.data.simulate",
    "CrmkitError": "crmkit.errors",
    "DataContractError": "crmkit.errors",
    "ConfigError": "crmkit.errors",
}

__all__ = [
    "__version__",
    "load_transactions",
    "RawLines",
    "clean_lines",
    "CleaningConfig",
    "QualityReport",
    "simulate_transactions",
    "SimulationParams",
    "CrmkitError",
    "DataContractError",
    "ConfigError",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crmkit' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from crmkit.data.clean import CleaningConfig, QualityReport, clean_lines
    from crmkit.data.io import RawLines, load_transactions
    from crmkit.data.simulate import SimulationParams, simulate_transactions
    from crmkit.errors import ConfigError, CrmkitError, DataContractError
