"""Spark's side of :func:`crmkit.data.output.neutralise_csv_cells`: text cells a spreadsheet
would run as formulas get a leading ``'`` before a Spark CSV is written, by the same rule as
the local CSV writer (so both engines write the same cells)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from crmkit.data.output import FORMULA_START, PLAIN_NUMBER

__all__ = ["neutralise_csv_cells"]

_STARTS = "^[" + "".join("\\" + c if c in "-^]\\" else c for c in FORMULA_START) + "]"
_NUMBER = f"^(?:{PLAIN_NUMBER})\\z"  # \z: the very end (Java's $ also matches before a \n)


def neutralise_csv_cells(frame: DataFrame) -> DataFrame:
    """``frame`` with every string column's formula-like cells prefixed with ``'`` (cells
    starting with ``=``, ``+``, ``-``, ``@``, tab or CR that are not a plain number); other
    columns unchanged."""
    cols = []
    for name, dtype in frame.dtypes:
        col = F.col(name)
        if dtype == "string":
            risky = col.rlike(_STARTS) & ~col.rlike(_NUMBER)
            col = F.when(risky, F.concat(F.lit("'"), col)).otherwise(col).alias(name)
        cols.append(col)
    return frame.select(*cols)
