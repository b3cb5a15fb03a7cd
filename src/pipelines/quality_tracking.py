"""The data-quality warnings of a run on its MLflow runs: a tag anyone filtering runs sees
(``crmkit.quality_warnings``: the count, ``crmkit.quality_warning`` the sentences) and the
report itself as ``quality_report.json``."""

from __future__ import annotations

from typing import Any

__all__ = ["WARNINGS_TAG", "TEXT_TAG", "tag_quality"]

#: Tag holding the number of data-quality warnings of the run.
WARNINGS_TAG = "crmkit.quality_warnings"
#: Tag holding the warnings' sentences (one per line).
TEXT_TAG = "crmkit.quality_warning"
_MAX_TAG = 4900  # MLflow tag values hold up to 5,000 characters (8,000 on newer stores)


def tag_quality(report: Any, run_ids: list[str], *, log_report: bool = False) -> None:
    """Tag the runs ``run_ids`` with the warnings of ``report`` (a
    :class:`~crmkit.data.clean.QualityReport`, or its ``to_dict()`` form as the Spark engine
    measures it); with ``log_report`` also log the report as ``quality_report.json`` on each
    of them."""
    import mlflow

    client = mlflow.MlflowClient()
    as_dict = report if isinstance(report, dict) else None
    found = as_dict.get("warnings") if as_dict is not None else getattr(report, "warnings", None)
    warnings = list(found or [])
    text = "\n".join(warnings)
    if len(text) > _MAX_TAG:
        text = text[: _MAX_TAG - 3] + "..."
    for run_id in run_ids:
        if run_id is None:
            continue
        client.set_tag(run_id, WARNINGS_TAG, str(len(warnings)))
        if warnings:
            client.set_tag(run_id, TEXT_TAG, text)
        if log_report:
            body = as_dict if as_dict is not None else report.to_dict()
            client.log_dict(run_id, body, "quality_report.json")
