"""``crmkit validate`` on Spark: raw order lines read, parsed and cleaned with Spark DataFrame
operations, with the local engine's data-quality report.

:func:`read_raw` reads raw order lines (Parquet, a file or a directory; CSV, a file or a
directory, optionally gzipped) into the canonical columns of
:func:`crmkit.data.io.load_transactions`, parsed as the local loader parses them;
:func:`clean_lines` applies every rule of :func:`crmkit.data.clean.clean_lines` and counts
them in the same :class:`~crmkit.data.clean.QualityReport`; :func:`write_lines` writes the
cleaned lines as a Parquet data set in their original order; :func:`run_validate` does all
three, all-or-nothing. No order line reaches the driver: the loader's decisions (which date
format, integral ids, decimal commas) come from one aggregation over the column profiles (plus
a probe of at most 5,000 timestamp texts to screen date formats), and the report from one
aggregation over the marked lines.

Exactness
---------
The cleaned lines equal the local ``clean_lines(load_transactions(path)).lines``: the same
rows in the same order, the same columns and dtypes (read back with pandas), bit-identical
values. Texts are parsed by the local loader's own pandas calls (``pd.to_datetime`` with the
chosen format, ``pd.to_numeric``) in pandas UDFs, each row independently of the others;
identifiers are trimmed of exactly the characters Python's ``str.strip`` removes. Report
counts and customer figures are identical; the float sums (``amount_dropped``, revenues) are
Spark sums, equal to the local ones to rounding (relative 1e-12 on Online Retail).

The line order is the file order: ``_metadata.file_path`` then ``_metadata.row_index`` for
Parquet, ``_metadata.file_path``, the split's ``file_block_start`` and a monotonically
increasing id for CSV; a directory reads as its files concatenated in path order. It is
carried as :data:`crmkit.spark.features.LINE_ORDER`, so the cleaned DataFrame can go
straight to :func:`crmkit.spark.features.customer_table`.

What applies on Spark
---------------------
From the ``data:`` section: ``columns`` (the mapping), ``date_format``, ``names`` (files
without a header row), ``delimiter`` and ``encoding`` (CSV; both detected from the first
megabyte of the first file when not given, as locally). Not on Spark: Excel files (and so
``sheet``), whitespace-separated text files (give a delimiter), UTF-16 text, and quoted
fields holding line breaks (Spark splits CSV files at line ends).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crmkit.data.clean import (
    CleaningConfig,
    QualityReport,
    analysis_cutoff,
    non_product_pattern,
    rule_plan,
)
from crmkit.data.io import (
    _SAMPLE_BYTES,
    RawLines,
    _decodes,
    _detect_delimiter,
    _detect_encoding,
    _looks_like_header,
)
from crmkit.data.orders import fill_note, partial_note, rejected_note
from crmkit.data.output import staged_output
from crmkit.data.parse import _CURRENCY_RE, _NA_STRINGS, _TZ_RE, DATE_FORMATS, _try_format
from crmkit.data.presets import choose_preset
from crmkit.data.schema import (
    CLEAN_COLUMNS,
    NUMERIC_COLUMNS,
    OPTIONAL_COLUMNS,
    STATUS_COLUMNS,
    recognise_columns,
)
from crmkit.errors import DataContractError
from crmkit.pipelines.config import DataConfig, PipelineConfig
from crmkit.pipelines.validate import LINES_FILE, REPORT_FILE
from crmkit.spark.features import LINE_ORDER, _timestamp_ns
from crmkit.spark.orders import (
    cancellation_convention,
    excluded_statuses,
    fill_order_fields,
    partial_refund_lines,
    status_column,
)
from crmkit.spark.session import NANOS_AS_LONG, spark_session
from crmkit.spark.timestamps import (
    at_bound,
    bound_note,
    clamp_series,
    implausible_mask,
    native_ns,
)

__all__ = [
    "SparkValidateResult",
    "read_raw",
    "clean_lines",
    "write_lines",
    "run_validate",
]

_DAY_NS = 86_400 * 10**9
_PROBE_ROWS = 5_000
#: Every character Python's ``str.strip()`` removes (``chr(i).isspace()``; the tests check the
#: list against Python).
_WS = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_ID_COLUMNS = ("customer_id", "product_id", "order_id", *OPTIONAL_COLUMNS)
#: Python codec names (as the local detector returns them) -> Java charset names.
_JAVA_CHARSETS = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8",
    "cp1252": "windows-1252",
    "latin-1": "ISO-8859-1",
    "latin_1": "ISO-8859-1",
    "iso8859-1": "ISO-8859-1",
    "iso8859_15": "ISO-8859-15",
    "cp1250": "windows-1250",
    "cp1251": "windows-1251",
    "iso8859_2": "ISO-8859-2",
    "mac_roman": "x-MacRoman",
}


@dataclass
class SparkValidateResult:
    """What :func:`run_validate` wrote: the report (the lines stay in Parquet)."""

    report: QualityReport
    rows_out: int
    lines_path: Path


# --------------------------------------------------------------------------------------------
# reading


def _local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and not p.name.startswith(("_", "."))
        )
        if not files:
            raise DataContractError(f"{path} holds no data files", rule="empty_file")
        return files
    return [path]


def _file_kind(path: str, files: list[Path]) -> str:
    names = [f.name.lower() for f in files] or [path.lower()]
    if all(n.endswith((".parquet", ".pq")) or ".parquet" in n for n in names):
        return "parquet"
    if any(n.endswith((".xlsx", ".xlsm", ".xls")) for n in names):
        raise DataContractError(
            f"{path}: Excel files are read by the local engine only; save them as CSV or "
            "Parquet for Spark",
            rule="readable_file",
        )
    return "csv"


def _sniff_csv(
    first: Path | None, encoding: str | None, delimiter: str | None, names: list[str] | None
) -> tuple[str, str, list[str] | None]:
    """Encoding, delimiter and header cells from the first megabyte of the first file, as the
    local reader decides them."""
    if first is None:  # not a local path (hdfs://, s3a://): no sniffing
        return encoding or "utf-8", delimiter or ",", None
    opener = gzip.open if first.name.lower().endswith(".gz") else open
    try:
        with opener(first, "rb") as fh:
            sample = fh.read(_SAMPLE_BYTES)
    except OSError as exc:
        raise DataContractError(
            f"{first} could not be read ({exc})", rule="readable_file"
        ) from None
    if not sample.strip():
        raise DataContractError(f"{first} holds no data", rule="empty_file")
    if b"\x00" in sample:
        raise DataContractError(
            f"{first} looks binary (it holds NUL bytes) or is UTF-16, which Spark reads only "
            "line by line in 8-bit encodings; give CSV in UTF-8 or Parquet",
            rule="readable_file",
        )
    if encoding is None:
        whole = _decodes(sample, "utf-8", partial=len(sample) == _SAMPLE_BYTES)
        encoding = _detect_encoding(sample, whole)
    try:
        text = sample.decode(encoding, errors="replace")
    except LookupError:
        raise DataContractError(f"unknown encoding '{encoding}'", rule="encoding") from None
    head = text.lstrip("\ufeff").splitlines()[:51]
    if len(sample) == _SAMPLE_BYTES and len(head) > 1:
        head = head[:-1]
    if delimiter is None:
        delimiter = _detect_delimiter(head)
        if delimiter is None:
            raise DataContractError(
                f"{first} is separated by white space, which the Spark engine does not read",
                rule="table_format",
                hint="give the delimiter (--delimiter), or convert the file to CSV or Parquet",
            )
    cells = next(csv.reader(io.StringIO(head[0] if head else ""), delimiter=delimiter), [])
    if names is None and cells and not _looks_like_header([c.strip() for c in cells]):
        raise DataContractError(
            f"{first} seems to have no header row (its first line is data: {head[0][:80]!r})",
            rule="header_row",
            hint="name the columns with --names customer_id,order_ts,quantity,amount "
            "(or `names:` in the config)",
        )
    headers = None if names else [c.lstrip("\ufeff").strip() for c in cells]
    return encoding, delimiter, headers


def _nanos_columns(files: list[Path], headers: list[str]) -> set[str] | None:
    """Columns stored as Parquet ``TIMESTAMP(NANOS)`` (Spark reads them as ``long``), from
    the first file's schema; ``None`` when the files are not local."""
    if not files:
        return None
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(files[0])
    except Exception as exc:
        raise DataContractError(
            f"{files[0]} could not be read as Parquet ({type(exc).__name__}: {exc})",
            rule="readable_file",
        ) from None
    return {
        f.name
        for f in schema
        if pa.types.is_timestamp(f.type) and f.type.unit == "ns" and f.name in headers
    }


def _read_source(
    spark: SparkSession, path: str, data: DataConfig
) -> tuple[DataFrame, list[str], dict[str, Any]]:
    """The file's columns renamed ``c0, c1, ...`` plus the line order, the headers, and what
    was detected."""
    local = "://" not in path or path.startswith("file:")
    files: list[Path] = []
    if local:
        p = Path(path.removeprefix("file:"))
        if not p.exists():
            raise DataContractError(f"file not found: {p}", rule="readable_file")
        files = _local_files(p)
        if len(files) == 1 and files[0].stat().st_size == 0:
            raise DataContractError(f"{files[0]} is empty (0 bytes)", rule="empty_file")
    kind = _file_kind(path, files)
    info: dict[str, Any] = {"file_format": kind, "encoding": None, "delimiter": None}
    if kind == "parquet":
        spark.conf.set(NANOS_AS_LONG, "true")
        try:
            df = spark.read.parquet(path)
            headers = [f.name for f in df.schema.fields]
        except AnalysisException as exc:
            raise DataContractError(
                f"{path} could not be read as Parquet ({str(exc).splitlines()[0]})",
                rule="readable_file",
            ) from None
        info["ns_columns"] = _nanos_columns(files, headers)
        if data.names:
            headers = list(data.names) + headers[len(data.names) :]
        order = F.struct(
            F.col("_metadata.file_path").alias("file"),
            F.lit(0).cast("long").alias("block"),
            F.col("_metadata.row_index").alias("row"),
        )
    else:
        encoding, delimiter, headers = _sniff_csv(
            files[0] if files else None, data.encoding, data.delimiter, data.names
        )
        info["encoding"], info["delimiter"] = encoding, delimiter
        charset = _JAVA_CHARSETS.get(codecs.lookup(encoding).name, encoding)
        charset = _JAVA_CHARSETS.get(encoding.lower(), charset)
        reader = (
            spark.read.option("header", data.names is None)
            .option("sep", delimiter)
            .option("encoding", charset)
            .option("quote", '"')
            .option("escape", '"')
            .option("mode", "FAILFAST")
            .option("inferSchema", False)
        )
        try:
            df = reader.csv(path)
        except AnalysisException as exc:
            raise DataContractError(
                f"{path} could not be read as CSV ({str(exc).splitlines()[0]})",
                rule="readable_file",
            ) from None
        spark_cols = [f.name for f in df.schema.fields]
        if data.names:
            headers = list(data.names) + [
                f"col{i}" for i in range(len(data.names), len(spark_cols))
            ]
        elif headers is None or len(headers) != len(spark_cols):
            headers = [c.lstrip("\ufeff").strip() for c in spark_cols]
        order = F.struct(
            F.col("_metadata.file_path").alias("file"),
            F.col("_metadata.file_block_start").alias("block"),
            F.monotonically_increasing_id().alias("row"),
        )
    fields = df.schema.fields
    cols = [F.col(f"`{f.name}`").alias(f"c{i}") for i, f in enumerate(fields)]
    return df.select(*cols, order.alias(LINE_ORDER)), headers[: len(fields)], info


# column handlers: profile aggregates first, the column expression once they are known


def _text(col: Column) -> Column:
    """Trimmed as ``str.strip`` trims; the local loader's missing-value texts become null."""
    c = col.cast("string")
    ends = F.substring(c, 1, 1).isin(*_WS) | F.substring(c, -1, 1).isin(*_WS)
    t = F.when(ends, F.btrim(c, F.lit(_WS))).otherwise(c)  # btrim is slow: only where needed
    return F.when(t.isin(sorted(_NA_STRINGS)), F.lit(None)).otherwise(t)


def _count(cond: Column) -> Column:
    return F.count(F.when(cond, F.lit(1)))


_INTEGRAL_TEXT = r"(?U)^-?\d+\.0+$"


def _id_profile(name: str, dtype: T.DataType, c: Column) -> dict[str, Column]:
    if isinstance(dtype, T.StringType):
        t = _text(c)
        return {
            f"{name}:present": _count(t.isNotNull()),
            f"{name}:integral_text": _count(t.contains(".") & t.rlike(_INTEGRAL_TEXT)),
        }
    if isinstance(dtype, T.FloatType | T.DoubleType):
        frac = c.isNotNull() & ~F.isnan(c) & ((c % F.lit(1.0)) != 0)
        inf = c.isNotNull() & (F.abs(c) == F.lit(float("inf")))
        return {f"{name}:fractional": _count(frac | inf)}
    return {}


@F.pandas_udf(T.StringType())
def _float_ids_as_text(s: pd.Series) -> pd.Series:
    return s.astype("str").mask(s.isna())


def _id_column(name: str, dtype: T.DataType, c: Column, stats: dict[str, int]) -> Column:
    """``_ids_to_text`` of the local loader."""
    if isinstance(dtype, T.StringType):
        t = _text(c)
        n = stats[f"{name}:present"]
        if n and stats[f"{name}:integral_text"] == n:
            return F.regexp_replace(t, r"\.0+$", "")
        return t
    if isinstance(dtype, T.FloatType | T.DoubleType):
        if stats[f"{name}:fractional"] == 0:
            return F.when(F.isnan(c), F.lit(None)).otherwise(c.try_cast("long")).cast("string")
        return _float_ids_as_text(c.cast("double"))
    if isinstance(dtype, T.BooleanType):
        return F.when(c, F.lit("True")).when(~c, F.lit("False"))
    return c.cast("string")


# numbers ------------------------------------------------------------------------------------

_PRESENT, _PLAIN_BAD, _COMMA, _DEC_BAD, _THOU_BAD = 1, 2, 4, 8, 16


def _number_variants(text: pd.Series) -> dict[str, pd.Series]:
    """The local ``parse_numbers`` readings of (trimmed, NA-masked) texts."""
    stripped = text.str.replace(_CURRENCY_RE, "", regex=True)
    dec = stripped.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    return {
        "plain": pd.to_numeric(text, errors="coerce").astype("float64"),
        "decimal_comma": pd.to_numeric(dec, errors="coerce").astype("float64"),
        "thousands": pd.to_numeric(
            stripped.str.replace(",", "", regex=False), errors="coerce"
        ).astype("float64"),
        "comma": stripped.str.contains(",", regex=False).fillna(False)
        & stripped.str.contains(r",\d{1,2}$|,\d{4,}$").fillna(False),
    }


@F.pandas_udf(T.IntegerType())
def _number_profile(s: pd.Series) -> pd.Series:
    text = s.astype("str")
    present = s.notna().to_numpy()
    v = _number_variants(text)
    code = present * _PRESENT
    code = code + (present & v["plain"].isna().to_numpy()) * _PLAIN_BAD
    code = code + (present & v["comma"].to_numpy(dtype=bool)) * _COMMA
    code = code + (present & v["decimal_comma"].isna().to_numpy()) * _DEC_BAD
    code = code + (present & v["thousands"].isna().to_numpy()) * _THOU_BAD
    return pd.Series(code.astype("int32"))


def _number_parser(mode: str):  # noqa: ANN202 - a pandas UDF
    @F.pandas_udf(T.DoubleType())
    def parse(s: pd.Series) -> pd.Series:
        out = _number_variants(s.astype("str"))[mode]
        return out.mask(s.isna())

    return parse


def _num_profile(name: str, dtype: T.DataType, c: Column) -> dict[str, Column]:
    if isinstance(dtype, T.StringType):
        code = _number_profile(_text(c))
        bits = {"present": _PRESENT, "plain_bad": _PLAIN_BAD, "comma": _COMMA}
        bits |= {"dec_bad": _DEC_BAD, "thou_bad": _THOU_BAD}
        return {f"{name}:{k}": _count((code.bitwiseAND(F.lit(b))) != 0) for k, b in bits.items()}
    return {}


def _num_column(
    name: str, label: str, dtype: T.DataType, c: Column, stats: dict[str, int], notes: list[str]
) -> tuple[Column, Column | None]:
    """The parsed number (null when missing) and, on failure, the mask of bad rows."""
    if isinstance(dtype, T.BooleanType):
        raise DataContractError(
            "holds true/false values, not numbers", column=label, rule="numeric"
        )
    if isinstance(dtype, T.NumericType):
        d = c.cast("double")
        return F.when(F.isnan(d), F.lit(None)).otherwise(d), None
    if not isinstance(dtype, T.StringType):
        raise DataContractError(
            f"holds {dtype.simpleString()} values, not numbers", column=label, rule="numeric"
        )
    t = _text(c)
    if stats[f"{name}:plain_bad"] == 0:
        return _number_parser("plain")(t), None
    decimal_comma = stats[f"{name}:comma"] > 0
    mode = "decimal_comma" if decimal_comma else "thousands"
    bad = stats[f"{name}:{'dec_bad' if decimal_comma else 'thou_bad'}"]
    parsed = _number_parser(mode)(t)
    if bad:
        raise DataContractError(
            f"{bad} values are not numbers",
            column=label,
            rule="numeric",
            hint=f"fix or remove those rows, or map the right column to '{name}'",
        )
    notes.append(
        f"{label}: read with "
        + ("decimal comma" if decimal_comma else "thousands separators / currency symbols")
    )
    return parsed, None


# timestamps ---------------------------------------------------------------------------------


def _ts_parser(fmt: str, utc: bool):  # noqa: ANN202 - a pandas UDF
    """Texts -> nanoseconds with one format (the local ``parse_timestamps`` call, on the
    distinct texts of each batch)."""

    @F.pandas_udf(T.LongType())
    def parse(s: pd.Series) -> pd.Series:
        codes, uniq = pd.factorize(s, use_na_sentinel=True)
        u = pd.Series(uniq, dtype="str")
        if utc:
            p = pd.to_datetime(u, format=fmt, errors="coerce", utc=True).dt.tz_localize(None)
        else:
            p = _try_format(u, fmt)
        ns = clamp_series(p).to_numpy(dtype="datetime64[ns]")  # years 1678-2261, as locally
        ok = ~np.isnat(ns)
        vals = ns.view("int64")
        take = np.where(codes >= 0, codes, 0)
        valid = (codes >= 0) & (ok[take] if len(ok) else False)
        out = pd.array(np.where(valid, vals[take] if len(vals) else 0, 0), dtype="Int64")
        out[~valid] = pd.NA
        return pd.Series(out)

    return parse


def _ts_text(dtype: T.DataType, c: Column) -> Column | None:
    """``order_ts`` as trimmed text when it must be parsed, else ``None``."""
    if isinstance(dtype, T.StringType):
        return _text(c)
    if isinstance(dtype, T.IntegralType | T.FloatType | T.DoubleType):
        return c.try_cast("long").cast("string")  # e.g. 19970101 stored as a number
    return None


def _ts_candidates(
    frame: DataFrame, text: Column, date_format: str | None
) -> tuple[list[tuple[str, bool]], str | None]:
    """Formats to check on every row (``(format, utc)``) from a probe of the first distinct
    texts, and the format that reads most of the probe (for the error message)."""
    rows = frame.select(text.alias("t")).where(F.col("t").isNotNull()).limit(_PROBE_ROWS).collect()
    uniq = pd.Series(list(dict.fromkeys(r["t"] for r in rows)), dtype="str")
    if uniq.empty:
        return [], None
    if bool(uniq.str.contains(_TZ_RE).any()):
        return [(date_format or "ISO8601", True)], date_format or "ISO8601"
    if date_format is not None:
        return [(date_format, False)], date_format
    probe = uniq.iloc[:: max(1, len(uniq) // 200)][:200]
    iso_like = bool(probe.str.match(r"^\d{4}-\d\d-\d\d").all())
    cands, best, best_ok = [], None, -1
    for fmt in ("ISO8601", *DATE_FORMATS):
        if fmt == "ISO8601" and not iso_like:
            continue
        ok = int(_try_format(probe, fmt).notna().sum())
        if ok > best_ok:
            best, best_ok = fmt, ok
        if ok == len(probe):
            cands.append((fmt, False))
    return cands, best


def _ts_profile(text: Column, cands: list[tuple[str, bool]]) -> dict[str, Column]:
    aggs = {
        "ts:present": _count(text.isNotNull()),
        "ts:tz": _count(text.rlike(_TZ_RE.pattern)),
    }
    parsed = [_ts_parser(f, u)(text) for f, u in cands]
    for i, p in enumerate(parsed):
        aggs[f"ts:fail:{i}"] = _count(text.isNotNull() & p.isNull())
        aggs[f"ts:bound:{i}"] = _count(at_bound(p))
        for j in range(i + 1, len(parsed)):
            aggs[f"ts:differ:{i}:{j}"] = _count(p != parsed[j])
    return aggs


def _ts_column(
    frame: DataFrame,
    text: Column,
    label: str,
    cands: list[tuple[str, bool]],
    best: str | None,
    date_format: str | None,
    stats: dict[str, int],
    notes: list[str],
) -> tuple[Column, str]:
    """The parsed ``order_ts`` (ns) and the format used; the local loader's errors."""
    if not stats["ts:present"]:
        raise DataContractError(
            "every timestamp is missing", column=label, rule="timestamp_missing"
        )
    n_tz, n = stats["ts:tz"], stats["ts:present"]
    if 0 < n_tz < n:
        raise DataContractError(
            "some timestamps carry a time zone and others do not; crmkit will not guess "
            "the zone of the naive ones",
            column=label,
            rule="mixed_timezones",
            hint="export every timestamp in one zone (UTC is best)",
        )
    fails = [stats[f"ts:fail:{i}"] for i in range(len(cands))]
    if n_tz or date_format is not None:  # one format, given or ISO 8601 with zones
        fmt = cands[0][0]
        if fails[0]:
            what = (
                f"with a time zone could not be parsed as {fmt}"
                if n_tz
                else f"do not match the given format '{fmt}'"
            )
            raise DataContractError(
                f"{fails[0]} timestamps {what}",
                column=label,
                rule="timestamp_format",
                hint="fix those rows, or give the right format with --date-format",
            )
        if n_tz:
            notes.append(f"{label}: time-zone aware timestamps converted to UTC")
        return _ts_parser(fmt, bool(n_tz))(text), fmt
    fits = [i for i, k in enumerate(fails) if k == 0]
    if not fits:
        if cands:
            i = int(np.argmin(fails))
            fmt, n_bad = cands[i][0], fails[i]
        else:
            fmt = best or "ISO8601"
            p = _ts_parser(fmt, False)(text)
            n_bad = frame.select(_count(text.isNotNull() & p.isNull())).first()[0]
        raise DataContractError(
            f"{n_bad} of {n} timestamps cannot be read with the format that fits most rows "
            f"('{fmt}'); no single date format fits every row",
            column=label,
            rule="timestamp_format",
            hint="fix those rows, or give the format with --date-format "
            "(e.g. --date-format '%d/%m/%Y %H:%M')",
        )
    ref = fits[0]
    disagree = [j for j in fits[1:] if stats[f"ts:differ:{ref}:{j}"]]
    if disagree:
        j = disagree[0]
        a, b = _ts_parser(cands[ref][0], False)(text), _ts_parser(cands[j][0], False)(text)
        row = frame.select(text.alias("t"), a.alias("a"), b.alias("b")).where(
            F.col("a") != F.col("b")
        )
        ex = row.first()
        day = lambda ns: f"{pd.Timestamp(int(ns), unit='ns'):%Y-%m-%d}"  # noqa: E731
        raise DataContractError(
            f"the timestamps fit several date formats that read them differently "
            f"({cands[ref][0]!r} and {cands[j][0]!r}: {ex['t']!r} is {day(ex['a'])} or "
            f"{day(ex['b'])}); every day in the data is 12 or less, so day-first "
            "and month-first cannot be told apart",
            column=label,
            rule="ambiguous_date_format",
            hint="give the format with --date-format (e.g. '%d/%m/%Y') or `date_format:` "
            "in the config",
        )
    fmt = cands[ref][0]
    notes.append(f"{label}: date format '{fmt}' fits every row")
    return _ts_parser(fmt, False)(text), fmt


def _profile(frame: DataFrame, aggs: dict[str, Column], path: str) -> dict[str, int]:
    """One aggregation of every profile count (and the row count)."""
    keys = list(aggs)
    exprs = [F.count(F.lit(1)).alias("rows")] + [aggs[k].alias(f"a{i}") for i, k in enumerate(keys)]
    try:
        row = frame.agg(*exprs).first()
    except Exception as exc:  # a malformed CSV line surfaces when the file is read
        msg = str(exc)
        if "Malformed" in msg or "MALFORMED" in msg:
            raise DataContractError(
                f"{path} could not be parsed as a delimited table: a line has another number "
                "of fields than the header",
                rule="table_format",
                hint="check the delimiter (--delimiter) and quoting",
            ) from None
        raise
    out = {"rows": int(row["rows"])}
    out |= {k: int(row[f"a{i}"] or 0) for i, k in enumerate(keys)}
    return out


def read_raw(
    spark: SparkSession, path: str | os.PathLike, data: DataConfig | None = None
) -> RawLines:
    """Raw order lines from a Parquet or CSV file (or a directory of them) in the canonical
    columns of :func:`crmkit.data.io.load_transactions`, parsed as it parses them.

    Parameters
    ----------
    spark
        The Spark session.
    path
        A Parquet file or directory of Parquet files, or a CSV file (``.gz`` too) or
        directory of CSV files with one header.
    data
        The ``data:`` section: ``columns`` (mapping), ``date_format``, ``names``, and for CSV
        ``delimiter`` and ``encoding``; see the module docstring for what Spark cannot read.

    Returns
    -------
    crmkit.data.io.RawLines
        The local loader's result, its ``frame`` a lazy Spark DataFrame: the canonical
        columns present (``order_ts`` as ``long`` nanoseconds since the epoch, numbers as
        ``double``, identifiers as strings, missing values null) and
        :data:`~crmkit.spark.features.LINE_ORDER`; ``source``, ``level``, ``columns``,
        ``notes`` (what the loader decided) as locally. One profiling aggregation (and a small timestamp probe) runs
        now and raises the local loader's :class:`~crmkit.errors.DataContractError` (rule and
        column named) for unreadable files, missing or ambiguous columns, timestamps no single
        format reads, and text in numeric columns.
    """
    d = data or DataConfig()
    src = str(path)
    raw, headers, info = _read_source(spark, src, d)
    chosen, mapping, notes = choose_preset(headers, d.preset, d.columns or None)
    columns = recognise_columns(headers, mapping)
    by_canon = {v: k for k, v in columns.items()}
    pos = {h: i for i, h in enumerate(headers)}
    dtypes = {h: raw.schema[f"c{pos[h]}"].dataType for h in headers}

    def col(canon: str) -> Column:
        return F.col(f"c{pos[by_canon[canon]]}")

    def dtype(canon: str) -> T.DataType:
        return dtypes[by_canon[canon]]

    def label(canon: str) -> str:
        h = by_canon[canon]
        return canon if h == canon else f"{canon} ({h})"

    if info.get("encoding"):
        notes.append(f"encoding: {info['encoding']}")
    if info.get("delimiter"):
        notes.append(f"delimiter: {info['delimiter']!r}")
    renamed = {h: c for h, c in columns.items() if h != c}
    if renamed:
        notes.append("columns: " + ", ".join(f"{h!r} -> {c}" for h, c in renamed.items()))

    ids = [c for c in (*_ID_COLUMNS, *STATUS_COLUMNS) if c in by_canon]
    nums = [c for c in NUMERIC_COLUMNS if c in by_canon]
    ns = info.get("ns_columns")
    ts_is_ns = isinstance(dtype("order_ts"), T.LongType) and (
        ns is None or by_canon["order_ts"] in ns
    )
    ts_text = None if ts_is_ns else _ts_text(dtype("order_ts"), col("order_ts"))
    cands, best = ([], None)
    if ts_text is not None:
        cands, best = _ts_candidates(raw, ts_text, d.date_format)
        if not cands and best is None:
            raise DataContractError(
                "every timestamp is missing", column=label("order_ts"), rule="timestamp_missing"
            )
    aggs: dict[str, Column] = {}
    for c in ids:
        aggs |= _id_profile(c, dtype(c), col(c))
    if ts_text is not None:
        aggs |= _ts_profile(ts_text, cands)
    else:
        ts_raw = f"c{pos[by_canon['order_ts']]}"
        aggs["ts:bound"] = _count(at_bound(native_ns(dtype("order_ts"), ts_raw)))
    for c in nums:
        aggs |= _num_profile(c, dtype(c), col(c))
    stats = _profile(raw, aggs, src)
    if stats["rows"] == 0:
        raise DataContractError(
            f"{src} has a header but no data rows (columns: {headers})", rule="empty_file"
        )

    out: dict[str, Column] = {
        "customer_id": _id_column("customer_id", dtype("customer_id"), col("customer_id"), stats)
    }
    fmt, at = "native", len(notes)
    if ts_text is not None:
        ts, fmt = _ts_column(
            raw, ts_text, label("order_ts"), cands, best, d.date_format, stats, notes
        )
        bound = stats[f"ts:bound:{[f for f, _ in cands].index(fmt)}"]
        at = at if stats["ts:tz"] else len(notes)  # before the time-zone note, else last
    else:
        ts = native_ns(dtype("order_ts"), f"c{pos[by_canon['order_ts']]}")
        bound = stats["ts:bound"]
    if bound:  # where the local loader's parse_timestamps puts its note
        raw_ts = f"c{pos[by_canon['order_ts']]}"
        notes.insert(at, bound_note(raw, ts, raw_ts, LINE_ORDER, label("order_ts"), bound))
    out["order_ts"] = ts
    for c in nums:
        out[c], _ = _num_column(c, label(c), dtype(c), col(c), stats, notes)
    if "quantity" not in out:
        out["quantity"] = F.lit(1.0)
        notes.append("quantity: not in the file; each line counts 1 unit")
    if "unit_price" not in out:
        q = out["quantity"]
        out["unit_price"] = F.when(q != 0, out["amount"] / q)
        notes.append("unit_price: derived as amount / quantity")
    else:
        if "amount" in out:
            notes.append("amount: recomputed as quantity x unit_price (the file's own is ignored)")
        out["amount"] = out["quantity"] * out["unit_price"]
    level = "product" if "product_id" in by_canon else "order"
    if level == "product":
        out["product_id"] = _id_column("product_id", dtype("product_id"), col("product_id"), stats)
    else:
        notes.append(
            "no product column: order-level log; product-level models (basket rules, "
            "recommendations) will be skipped"
        )
    for c in ("order_id", *OPTIONAL_COLUMNS):
        if c in by_canon:
            out[c] = _id_column(c, dtype(c), col(c), stats)
    status = status_column(
        *(
            _id_column(c, dtype(c), col(c), stats) if c in by_canon else None
            for c in STATUS_COLUMNS
        ),
        chosen.status_values if chosen is not None else None,
    )
    if status is not None:
        out["order_status"] = status
    # two steps, so that the derived order id reads the parsed customer id and timestamp
    frame = raw.select(*[e.alias(k) for k, e in out.items()], F.col(LINE_ORDER))
    if "order_id" not in by_canon:
        day = F.date_from_unix_date(
            F.expr(f"(order_ts - pmod(order_ts, {_DAY_NS}L)) div {_DAY_NS}L").cast("int")
        )
        frame = frame.withColumn(
            "order_id", F.concat(F.col("customer_id"), F.lit("@"), F.date_format(day, "yyyy-MM-dd"))
        )
        notes.append("no order column: each customer-day is one order")
    else:
        frame, filled = fill_order_fields(frame, LINE_ORDER)
        notes += [fill_note(filled)] if filled else []
    order = [c for c in CLEAN_COLUMNS if c in frame.columns]
    order += ["order_status"] if status is not None else []
    return RawLines(
        frame=frame.select(*order, LINE_ORDER),
        source=src,
        level=level,
        columns=columns,
        file_format=info["file_format"],
        encoding=info.get("encoding"),
        delimiter=info.get("delimiter"),
        date_format=fmt,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# cleaning


def _finite(c: Column) -> Column:
    return c.isNotNull() & ~F.isnan(c) & (F.abs(c) != F.lit(float("inf")))


def _parallelism(spark: SparkSession) -> int:
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:  # pragma: no cover - Spark Connect has no SparkContext
        return 1


def _as_raw(raw: RawLines | DataFrame) -> RawLines:
    if isinstance(raw, RawLines) and isinstance(raw.frame, DataFrame):
        return raw
    if not isinstance(raw, DataFrame):
        raise DataContractError(
            f"expected RawLines or a Spark DataFrame, got {type(raw).__name__}",
            rule="input_type",
        )
    required = ("customer_id", "order_id", "order_ts", "quantity", "unit_price", "amount")
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise DataContractError(
            f"raw lines lack column(s) {missing}",
            column=missing[0],
            rule="required_column",
            hint="read raw files with crmkit.spark.clean.read_raw",
        )
    kind = raw.schema["order_ts"].dataType
    native = isinstance(kind, T.TimestampType | T.TimestampNTZType)  # years 1678-2261
    frame = raw.withColumn(
        "order_ts", native_ns(kind, "order_ts") if native else _timestamp_ns(raw)
    )
    if LINE_ORDER not in frame.columns:
        order = F.struct(
            F.lit("").alias("file"),
            F.lit(0).cast("long").alias("block"),
            F.monotonically_increasing_id().alias("row"),
        )
        frame = frame.withColumn(LINE_ORDER, order)
    cols = [c for c in CLEAN_COLUMNS if c in frame.columns]
    level = "product" if "product_id" in cols else "order"
    return RawLines(frame.select(*cols, LINE_ORDER), level=level, columns={c: c for c in cols})


def _mark(
    raw: RawLines | DataFrame, cleaning: CleaningConfig | dict[str, Any] | None
) -> tuple[DataFrame, Any]:
    """Every line with its rule flags ``m<i>``, the index of the first rule that drops it
    (``stage``; ``len(rules)`` when kept), its input amount and, with ``returns: net``, its
    output quantity and amount; and what the report needs to know."""
    data = _as_raw(raw)
    cfg = (
        cleaning if isinstance(cleaning, CleaningConfig) else CleaningConfig.from_mapping(cleaning)
    )
    df = data.frame
    cols = [c for c in CLEAN_COLUMNS if c in df.columns]
    has_products = "product_id" in cols
    derived_orders = not data.columns or "order_id" not in data.columns.values()
    has_status = "order_status" in df.columns
    extra: list[str] = []
    if has_status:
        note = partial_note(partial_refund_lines(df))
        extra += [note] if note else []
    prefixes, rejected = tuple(cfg.cancellation_prefixes), ()
    if prefixes and cfg.cancellation_convention == "auto":
        prefixes, rejected = cancellation_convention(df, prefixes)
        extra += [rejected_note(rejected)] if rejected else []
    if extra:
        data = replace(data, notes=[*data.notes, *extra])
    plan = rule_plan(
        cfg,
        has_products=has_products,
        derived_orders=derived_orders,
        has_status=has_status,
        rejected_prefixes=rejected,
    )

    q, price, amount = F.col("quantity"), F.col("unit_price"), F.col("amount")
    ts, cust = F.col("order_ts"), F.col("customer_id")
    masks: dict[str, Column] = {}
    masks["invalid_values"] = (
        ts.isNull() | ~_finite(q) | (q == 0) | ~_finite(price) | ~_finite(amount)
    )
    masks["implausible_timestamp"] = implausible_mask(cfg, ts)
    if has_status:
        wanted = excluded_statuses(cfg.excluded_statuses)
        hit = F.col("order_status").isin(wanted) if wanted else F.lit(False)
        masks["order_status"] = F.coalesce(hit, F.lit(False))
    masks["missing_customer_id"] = cust.isNull()
    cancel = F.lit(False)
    for p in prefixes:
        cancel = cancel | F.coalesce(F.col("order_id").startswith(p), F.lit(False))
    masks["cancellations"] = cancel
    masks["returns"] = F.coalesce(q < 0, F.lit(False)) & ~cancel
    nonpos = price < 0 if plan.zero_is_purchase else price <= 0
    masks["non_positive_price"] = F.coalesce(nonpos, F.lit(False))
    if has_products:
        codes = sorted({c.upper() for c in cfg.non_product_codes})
        pid = F.col("product_id")
        hit = F.upper(pid).isin(codes) if codes else F.lit(False)
        pat = non_product_pattern(cfg)
        if pat is not None:
            hit = hit | pid.rlike(pat)
        masks["non_product_lines"] = F.coalesce(hit, F.lit(False))
    # Lines hashed (64 bits) and spread over the cores by the hash, so that the window needs
    # no other exchange and its sort compares longs, rarely the columns themselves.
    spark = df.sparkSession
    n = max(int(spark.conf.get("spark.sql.shuffle.partitions", "200")), _parallelism(spark))
    df = df.withColumn("_h", F.xxhash64(*[F.col(c) for c in cols])).repartition(n, "_h")
    same = Window.partitionBy("_h", *cols).orderBy(F.col(LINE_ORDER))
    masks["exact_duplicates"] = F.row_number().over(same) > 1
    if cfg.as_of is not None:
        cutoff = int(analysis_cutoff(cfg.as_of).as_unit("ns").value)
        masks["after_analysis_date"] = F.coalesce(ts >= F.lit(cutoff), F.lit(False))

    rules = list(plan.actions)
    kept = len(rules)
    stage = None
    for i, r in enumerate(rules):
        if r in masks and plan.actions[r] == "drop":
            cond = F.col(f"m{i}")
            stage = F.when(cond, F.lit(i)) if stage is None else stage.when(cond, F.lit(i))
    stage = F.lit(kept) if stage is None else stage.otherwise(F.lit(kept))
    idx = {r: i for i, r in enumerate(rules)}
    flags = [masks[r].alias(f"m{i}") for i, r in enumerate(rules) if r in masks]
    marked = df.select(*cols, LINE_ORDER, *flags, amount.alias("in_amount"))
    marked = marked.withColumn("stage", stage)
    if cfg.returns == "net":
        # a return counts against spend whatever sign the export used for its quantity
        ret = F.col(f"m{idx['cancellations']}") | F.col(f"m{idx['returns']}")
        q_out = F.when(ret, -F.abs(q)).otherwise(q)
        marked = marked.withColumn("quantity", q_out).withColumn("amount", q_out * price)

    return marked, (rules, masks, plan, cfg, data, has_products, cols)


def _kept(marked: DataFrame, ctx: Any) -> DataFrame:
    rules, cols = ctx[0], ctx[-1]
    return marked.where(F.col("stage") == F.lit(len(rules))).select(*cols, LINE_ORDER)


def clean_lines(
    raw: RawLines | DataFrame,
    cleaning: CleaningConfig | dict[str, Any] | None = None,
    *,
    persist: bool = False,
) -> tuple[DataFrame, QualityReport]:
    """Apply the cleaning rules of :func:`crmkit.data.clean.clean_lines` with Spark and count
    each one.

    Parameters
    ----------
    raw
        Lines from :func:`read_raw`, or a DataFrame already in canonical columns (then its
        own row order stands for the file order, and order ids count as given).
    cleaning
        The rules' settings (``cleaning:``).
    persist
        Persist the marked lines (memory and disk) so that the report and a later write of
        ``lines`` read and parse the input once; the cache lives as long as the session
        (:func:`run_validate` persists and releases its own).

    Returns
    -------
    (lines, report)
        ``lines``: the cleaned lines, lazy, in canonical columns (``order_ts`` as ``long``
        nanoseconds) plus :data:`~crmkit.spark.features.LINE_ORDER`; the same rows as the
        local engine's in that order (:func:`write_lines` writes them so). ``report``: the
        local :class:`~crmkit.data.clean.QualityReport` (same rules, actions, descriptions,
        counts, customers and totals; float sums to rounding), from one aggregation.
    """
    marked, ctx = _mark(raw, cleaning)
    if persist:
        marked = marked.persist(StorageLevel.MEMORY_AND_DISK)
    report = _report(marked, *ctx[:-1])
    return _kept(marked, ctx), report


def _report(
    marked: DataFrame,
    rules: list[str],
    masks: dict[str, Column],
    plan: Any,
    cfg: CleaningConfig,
    data: RawLines,
    has_products: bool,
) -> QualityReport:
    """The report's figures from one action: per-customer partial sums, summed; distinct
    orders and products beside them."""
    kept = len(rules)
    stage, keep = F.col("stage"), F.col("stage") == F.lit(len(rules))
    in_amount = F.col("in_amount")
    fin = F.when(_finite(in_amount), in_amount).otherwise(F.lit(0.0))
    present = [i for i, r in enumerate(rules) if r in masks]
    line_aggs = [F.count(F.lit(1)).alias("rows_in"), _count(keep).alias("rows_out")]
    line_aggs += [
        F.sum(fin).alias("revenue_in"),
        F.sum(F.when(keep, F.col("amount"))).alias("revenue_out"),
    ]
    line_aggs += [
        F.min(F.when(keep, F.col("order_ts"))).alias("first_ts"),
        F.max(F.when(keep, F.col("order_ts"))).alias("last_ts"),
        F.max(stage).alias("max_stage"),
    ]
    for i in present:
        hit = (stage >= F.lit(i)) & F.col(f"m{i}")
        line_aggs += [
            _count(F.col(f"m{i}")).alias(f"matched{i}"),
            _count(hit).alias(f"hit{i}"),
            F.sum(F.when(hit, fin).otherwise(F.lit(0.0))).alias(f"amount{i}"),
        ]
    per_cust = marked.groupBy("customer_id").agg(*line_aggs)
    has = F.col("customer_id").isNotNull()
    tot = [F.sum(c).alias(c) for c in ("rows_in", "rows_out", "revenue_in", "revenue_out")]
    tot += [F.min("first_ts").alias("first_ts"), F.max("last_ts").alias("last_ts")]
    tot += [
        _count(has).alias("customers_in"),
        _count(has & (F.col("max_stage") == kept)).alias("customers_out"),
    ]
    for i in present:
        tot += [F.sum(f"matched{i}").alias(f"matched{i}"), F.sum(f"hit{i}").alias(f"hit{i}")]
        tot += [F.sum(f"amount{i}").alias(f"amount{i}")]
        tot += [_count(has & (F.col(f"hit{i}") > 0)).alias(f"affected{i}")]
        tot += [_count(has & (F.col("max_stage") == i)).alias(f"lost{i}")]
    totals = per_cust.agg(*tot)
    orders = (
        marked.groupBy("order_id")
        .agg(F.bool_or(keep).alias("k"))
        .agg(
            _count(F.col("order_id").isNotNull()).alias("orders_in"),
            _count(F.col("order_id").isNotNull() & F.col("k")).alias("orders_out"),
        )
    )
    summary = totals.crossJoin(orders)
    if has_products:
        products = (
            marked.where(keep & F.col("product_id").isNotNull())
            .select("product_id")
            .distinct()
            .agg(F.count(F.lit(1)).alias("products_out"))
        )
        summary = summary.crossJoin(products)
    row = summary.first().asDict()

    records = []
    for i, rule in enumerate(rules):
        action = plan.actions[rule]
        rec = {
            "rule": rule,
            "action": action,
            "description": plan.descriptions[rule],
            "matched_in_input": int(row[f"matched{i}"] or 0) if i in present else 0,
            "rows_dropped": 0,
            "rows_changed": 0,
            "customers_affected": 0,
            "customers_lost": 0,
            "amount_dropped": 0.0,
        }
        if i in present:
            rec["customers_affected"] = int(row[f"affected{i}"])
            if action == "drop":
                rec["rows_dropped"] = int(row[f"hit{i}"] or 0)
                rec["amount_dropped"] = float(row[f"amount{i}"] or 0.0)
                rec["customers_lost"] = int(row[f"lost{i}"])
            elif action.startswith("net"):
                rec["rows_changed"] = int(row[f"hit{i}"] or 0)
        records.append(rec)
    rows_out = int(row["rows_out"] or 0)
    ts_of = lambda v: pd.Timestamp(int(v), unit="ns") if rows_out else None  # noqa: E731
    totals_d: dict[str, Any] = {
        "rows_in": int(row["rows_in"] or 0),
        "rows_out": rows_out,
        "customers_in": int(row["customers_in"]),
        "customers_out": int(row["customers_out"]),
        "orders_in": int(row["orders_in"]),
        "orders_out": int(row["orders_out"]),
        "revenue_in": float(row["revenue_in"] or 0.0),
        "revenue_out": float(row["revenue_out"] or 0.0),
        "first_order_ts": ts_of(row["first_ts"]),
        "last_order_ts": ts_of(row["last_ts"]),
    }
    if has_products:
        totals_d["products_out"] = int(row["products_out"])
    return QualityReport(
        rules=pd.DataFrame.from_records(records),
        totals=totals_d,
        source=data.source,
        level=data.level,
        notes=list(data.notes),
        config=cfg.model_dump(),
    )


# --------------------------------------------------------------------------------------------
# writing


def _arrow_schema(lines: DataFrame) -> pa.Schema:
    kinds = {"order_ts": pa.timestamp("ns")}
    kinds |= {c: pa.float64() for c in ("quantity", "unit_price", "amount")}
    names = [c for c in lines.columns if c != LINE_ORDER]
    return pa.schema([(c, kinds.get(c, pa.large_string())) for c in names])


def _part_writer(path: str, schema: pa.Schema):  # noqa: ANN202 - runs in the Python workers
    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        pid = TaskContext.get().partitionId()
        name = f"part-{pid:05d}.parquet"
        tmp = os.path.join(path, f".{name}.{TaskContext.get().taskAttemptId()}.tmp")
        writer, n = None, 0
        try:
            for b in batches:
                if b.num_rows == 0:
                    continue
                arrays = [b.column(f.name).cast(f.type) for f in schema]
                if writer is None:
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                n += b.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is not None:
            os.replace(tmp, os.path.join(path, name))
        yield pa.RecordBatch.from_pydict(
            {"part": [name if n else ""], "rows": [n]},
            schema=pa.schema([("part", pa.string()), ("rows", pa.int64())]),
        )

    return write


def write_lines(lines: DataFrame, path: str | os.PathLike, *, partitions: int | None = None) -> int:
    """Write cleaned lines as a Parquet data set ``path/part-NNNNN.parquet`` whose files, in
    path order, hold the lines in their :data:`~crmkit.spark.features.LINE_ORDER`.

    The lines are range-partitioned and sorted by their line order; each task writes its part
    with pyarrow, so ``order_ts`` is a Parquet ``TIMESTAMP(NANOS)`` (Spark's own writer
    stores microseconds): pandas reads the data set with the local ``lines.parquet`` dtypes,
    and :func:`crmkit.spark.features.read_lines` reads the exact nanoseconds. ``path`` must
    be a directory the executors can write (on a cluster: a shared file system).

    Returns the number of lines written.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    spark = lines.sparkSession
    n = partitions or max(
        int(spark.conf.get("spark.sql.shuffle.partitions", "200")), _parallelism(spark)
    )
    schema = _arrow_schema(lines)
    data_cols = [f.name for f in schema]
    ordered = (
        lines.repartitionByRange(max(1, n), F.col(LINE_ORDER))
        .sortWithinPartitions(F.col(LINE_ORDER))
        .select(*data_cols)
    )
    parts = ordered.mapInArrow(_part_writer(str(out.resolve()), schema), "part string, rows long")
    return int(sum(r["rows"] for r in parts.collect()))


def run_validate(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: PipelineConfig,
    *,
    partitions: int | None = None,
) -> SparkValidateResult:
    """``crmkit validate --engine spark``: read and clean ``data`` with Spark; write
    ``out_dir/lines.parquet`` (a Parquet data set, :func:`write_lines`) and
    ``out_dir/quality_report.json``, all-or-nothing. Uses the active Spark session, or starts
    one (:func:`crmkit.spark.session.spark_session`). Raises the local engine's errors,
    ``no_rows_left`` included."""
    spark = spark_session()
    raw = read_raw(spark, data, config.data)
    marked, ctx = _mark(raw, config.cleaning)
    marked = marked.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _validate(data, out_dir, marked, ctx, partitions)
    finally:
        marked.unpersist()


def _validate(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    marked: DataFrame,
    ctx: Any,
    partitions: int | None,
) -> SparkValidateResult:
    report = _report(marked, *ctx[:-1])
    lines = _kept(marked, ctx)
    if report.totals["rows_out"] == 0:
        raise DataContractError(
            f"no order lines are left after cleaning {data}; the report:\n" + report.render(),
            rule="no_rows_left",
            hint="check the column mapping and the cleaning settings (cleaning: in the config)",
        )
    with staged_output(out_dir) as stage:
        n = write_lines(lines, Path(stage) / LINES_FILE, partitions=partitions)
        if n != report.totals["rows_out"]:  # pragma: no cover - a changed input under us
            raise DataContractError(
                f"wrote {n} lines but the report counts {report.totals['rows_out']}; did the "
                "input change while it was read?",
                rule="input_changed",
            )
        report.to_json(Path(stage) / REPORT_FILE)
    return SparkValidateResult(report, n, Path(out_dir) / LINES_FILE)
