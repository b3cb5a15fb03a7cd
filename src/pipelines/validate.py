"""The ``validate`` stage: load, check and clean a transaction file, write the cleaned order
lines (Parquet) and the data-quality report (JSON)."""

from __future__ import annotations

import os
from pathlib import Path

from crmkit.data.clean import CleanResult, clean_lines
from crmkit.data.io import load_transactions, staged_output, write_parquet
from crmkit.errors import DataContractError
from crmkit.pipelines.config import PipelineConfig

__all__ = ["run_validate", "LINES_FILE", "REPORT_FILE"]

LINES_FILE = "lines.parquet"
REPORT_FILE = "quality_report.json"


def load_and_clean(data: str | os.PathLike, config: PipelineConfig) -> CleanResult:
    """Load ``data`` as the config's ``data:`` section says and apply its cleaning rules."""
    d = config.data
    raw = load_transactions(
        data,
        mapping=d.columns or None,
        date_format=d.date_format,
        encoding=d.encoding,
        delimiter=d.delimiter,
        sheet=d.sheet,
        names=d.names,
        preset=d.preset,
    )
    return clean_lines(raw, config.cleaning)


def run_validate(
    data: str | os.PathLike, out_dir: str | os.PathLike, config: PipelineConfig
) -> CleanResult:
    """Load and clean ``data``; write ``lines.parquet`` and ``quality_report.json`` into
    ``out_dir`` all-or-nothing."""
    result = load_and_clean(data, config)
    if result.lines.empty:
        raise DataContractError(
            f"no order lines are left after cleaning {data}; the report:\n"
            + result.report.render(),
            rule="no_rows_left",
            hint="check the column mapping and the cleaning settings (cleaning: in the config)",
        )
    with staged_output(out_dir) as stage:
        write_parquet(result.lines, Path(stage) / LINES_FILE)
        result.report.to_json(Path(stage) / REPORT_FILE)
    return result
