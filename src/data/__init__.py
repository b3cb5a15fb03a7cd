"""The transaction data contract: loading (:mod:`.io`), the canonical schema (:mod:`.schema`),
cleaning with a data-quality report (:mod:`.clean`) and the simulator (:mod:`.simulate`)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "load_transactions": "crmkit.data.io",
    "RawLines": "crmkit.data.io",
    "clean_lines": "crmkit.data.clean",
    "CleaningConfig": "crmkit.data.clean",
    "CleanResult": "crmkit.data.clean",
    "QualityReport": "crmkit.data.clean",
    "simulate_transactions": "crmkit.data.simulate",
    "SimulationParams": "crmkit.data.simulate",
    "SimulationResult": "crmkit.data.simulate",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crmkit.data' has no attribute {name!r}")
