"""Reading order lines from CSV, Parquet and Excel into the canonical contract.

This is the one module that reads transaction files. :func:`load_transactions` recognises or
maps the columns (:mod:`crmkit.data.schema`), detects encoding and delimiter, infers a single
date format for the whole timestamp column, parses numbers, and returns :class:`RawLines`:
canonical columns with parsed types, *before* any cleaning rule is applied. Anything the
contract cannot accept raises :class:`~crmkit.errors.DataContractError` naming the column, the
rule and a few offending rows.
"""

from __future__ import annotations

import codecs
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from crmkit.data.schema import (
    CLEAN_COLUMNS,
    NUMERIC_COLUMNS,
    OPTIONAL_COLUMNS,
    is_known_header,
    recognise_columns,
)
from crmkit.errors import DataContractError

__all__ = [
    "RawLines",
    "load_transactions",
    "read_table",
    "parse_timestamps",
    "parse_numbers",
    "staged_output",
    "write_parquet",
    "load_baskets",
]

_SAMPLE_BYTES = 1 << 20
_DELIMITERS = (",", ";", "\t", "|")
_NA_STRINGS = {"", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "null", "NULL", "None", "none", "-"}


@dataclass
class RawLines:
    """Order lines in canonical columns with parsed types, before cleaning.

    Attributes
    ----------
    frame
        Canonical columns present in the file (``customer_id``, ``order_id``, ``order_ts``,
        ``quantity``, ``unit_price``, ``amount`` always; ``product_id`` and the optional columns
        when present). Row ``i`` of the frame is data row ``i + 1`` of the file.
    source
        Path of the file read.
    level
        ``"product"`` when lines name products, ``"order"`` for order-level logs.
    columns
        ``{file header: canonical column}`` as recognised or mapped.
    notes
        What the loader decided (encoding, delimiter, date format, derived columns).
    """

    frame: pd.DataFrame
    source: str = "<frame>"
    level: Literal["product", "order"] = "product"
    columns: dict[str, str] = field(default_factory=dict)
    file_format: str = "frame"
    encoding: str | None = None
    delimiter: str | None = None
    date_format: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_products(self) -> bool:
        """Whether the lines name products (needed by basket and recommendation models)."""
        return self.level == "product"


# --------------------------------------------------------------------------------------------
# reading files


def _detect_encoding(sample: bytes, whole_file_utf8: bool) -> str:
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if whole_file_utf8:
        return "utf-8"
    # Legacy single-byte exports: ask charset-normalizer, accept only single-byte answers.
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(sample[:200_000]).best()
        guess = best.encoding if best is not None else None
    except Exception:  # pragma: no cover - detector failure falls back to cp1252
        guess = None
    single_byte = {"cp1252", "latin_1", "iso8859_15", "cp1250", "cp1251", "iso8859_2", "mac_roman"}
    if guess in single_byte:
        return guess
    try:
        sample.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def _is_utf8(path: Path) -> bool:
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                dec.decode(chunk)
            dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _detect_delimiter(lines: list[str]) -> str | None:
    """The delimiter splitting the first lines into the same number (>1) of fields, preferring
    the one with most fields; ``None`` for whitespace-separated files."""
    lines = [ln for ln in lines if ln.strip()][:50]
    if not lines:
        return ","
    best, best_n = None, 1
    for d in _DELIMITERS:
        # Quote-aware count per line.
        counts = {_count_fields(ln, d) for ln in lines}
        if len(counts) == 1:
            n = counts.pop()
            if n > best_n:
                best, best_n = d, n
    if best is not None:
        return best
    ws = {len(ln.split()) for ln in lines}
    if len(ws) == 1 and ws.pop() > 1:
        return None  # whitespace separated (e.g. CDNOW)
    # No consistent split: fall back to the most frequent candidate in the header line.
    head = lines[0]
    d = max(_DELIMITERS, key=head.count)
    return d if head.count(d) else ","


def _count_fields(line: str, delim: str) -> int:
    n, quoted = 1, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == delim and not quoted:
            n += 1
    return n


def _looks_like_header(cells: list[str]) -> bool:
    """A first line is a header unless no cell is a known header and some cell is a number or
    a date (a data row)."""
    if any(is_known_header(c) for c in cells):
        return True
    return not any(re.fullmatch(r"[\s\d.,:/+\-T]*\d[\s\d.,:/+\-T]*", c or "") for c in cells)


def _check_mangled_duplicates(columns: list[str]) -> None:
    """pandas renames a repeated header ``x`` to ``x.1``; report it as a duplicated header."""
    cols = set(columns)
    for c in columns:
        m = re.fullmatch(r"(.+)\.(\d+)", c)
        if m and m.group(1) in cols:
            raise DataContractError(
                f"the header names {m.group(1)!r} more than once; every column needs a unique name",
                column=m.group(1),
                rule="duplicate_header",
            )


def read_table(
    path: str | os.PathLike,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
    sheet: str | int | None = None,
    names: list[str] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Read a CSV / TSV / text, Parquet or Excel file as it is (no column recognition).

    CSV-like files are read with every column as text so that identifiers keep leading zeros
    and numbers are parsed by crmkit with clear errors. Returns the frame and a dict of what
    was detected (``file_format``, ``encoding``, ``delimiter``).
    """
    p = Path(path)
    if not p.exists():
        raise DataContractError(f"file not found: {p}", rule="readable_file")
    if p.is_dir():
        raise DataContractError(
            f"{p} is a directory; give one file (CSV, Parquet or Excel)", rule="readable_file"
        )
    if p.stat().st_size == 0:
        raise DataContractError(f"{p} is empty (0 bytes)", rule="empty_file")
    suffixes = "".join(p.suffixes[-2:]).lower()
    info: dict = {"file_format": None, "encoding": None, "delimiter": None}

    if p.suffix.lower() in {".parquet", ".pq"}:
        info["file_format"] = "parquet"
        try:
            frame = pd.read_parquet(p)
        except Exception as exc:
            raise DataContractError(
                f"{p} could not be read as Parquet ({type(exc).__name__}: {exc})",
                rule="readable_file",
            ) from None
        if names:
            frame.columns = list(names) + list(frame.columns[len(names) :])
        return frame, info

    if p.suffix.lower() in {".xlsx", ".xlsm", ".xls"}:
        info["file_format"] = "excel"
        try:
            frame = pd.read_excel(
                p,
                sheet_name=sheet if sheet is not None else 0,
                dtype=object,
                header=None if names else 0,
            )
        except ImportError as exc:
            raise DataContractError(
                f"{p}: reading this Excel format needs an extra package ({exc}); "
                "save it as .xlsx or CSV",
                rule="readable_file",
            ) from None
        except Exception as exc:
            raise DataContractError(
                f"{p} could not be read as Excel ({type(exc).__name__}: {exc})",
                rule="readable_file",
            ) from None
        if names:
            frame.columns = list(names) + [f"col{i}" for i in range(len(names), frame.shape[1])]
        else:
            _check_mangled_duplicates([str(c) for c in frame.columns])
        if frame.empty:
            raise DataContractError(f"{p} has no data rows", rule="empty_file")
        return frame, info

    # Text formats (.csv, .tsv, .txt, .gz, .zip, anything else).
    info["file_format"] = "csv"
    compression = "infer"
    opener = open
    if suffixes.endswith(".gz"):
        import gzip

        opener = gzip.open  # type: ignore[assignment]
    try:
        with opener(p, "rb") as fh:
            sample = fh.read(_SAMPLE_BYTES)
    except OSError as exc:
        raise DataContractError(f"{p} could not be read ({exc})", rule="readable_file") from None
    if b"\x00" in sample and not sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataContractError(
            f"{p} looks binary (it holds NUL bytes), not a text table; give CSV, Parquet "
            "(.parquet) or Excel (.xlsx)",
            rule="readable_file",
        )
    if not sample.strip():
        raise DataContractError(f"{p} holds no data (only white space)", rule="empty_file")
    if encoding is None:
        whole_utf8 = _is_utf8(p) if opener is open else _decodes(sample, "utf-8", partial=True)
        encoding = _detect_encoding(sample, whole_utf8)
    info["encoding"] = encoding
    try:
        text = sample.decode(encoding, errors="replace")
    except LookupError:
        raise DataContractError(f"unknown encoding '{encoding}'", rule="encoding") from None
    head_lines = text.lstrip("\ufeff").splitlines()[:51]
    if len(sample) == _SAMPLE_BYTES and len(head_lines) > 1:
        head_lines = head_lines[:-1]  # last line may be cut
    if delimiter is None:
        delimiter = _detect_delimiter(head_lines)
    info["delimiter"] = delimiter if delimiter is not None else "whitespace"
    first = (
        (head_lines[0].split() if delimiter is None else head_lines[0].split(delimiter))
        if head_lines
        else []
    )
    if names is None and first and not _looks_like_header([c.strip().strip('"') for c in first]):
        raise DataContractError(
            f"{p} seems to have no header row (its first line is data: {head_lines[0][:80]!r})",
            rule="header_row",
            hint="name the columns with --names customer_id,order_ts,quantity,amount "
            "(or `names:` in the config)",
        )
    frame = None
    if delimiter is not None and encoding in {"utf-8", "utf-8-sig"}:
        # Fast path: pyarrow's multithreaded reader. Anything it cannot take (quoted line
        # breaks, ragged rows, ...) falls through to pandas' C reader and its clear errors.
        try:
            frame = pd.read_csv(
                p,
                sep=delimiter,
                engine="pyarrow",
                encoding=encoding,
                dtype=str,
                keep_default_na=False,
                na_values=sorted(_NA_STRINGS),
                header=None if names else 0,
                names=names,
            )
        except Exception:
            frame = None
    if frame is None:
        frame = _read_csv_c(p, delimiter, encoding, names, compression, info)
    frame.columns = [str(c).lstrip("\ufeff").strip() for c in frame.columns]
    if names is None:
        _check_mangled_duplicates(list(frame.columns))
    if frame.empty:
        raise DataContractError(
            f"{p} has a header but no data rows (columns: {list(frame.columns)})",
            rule="empty_file",
        )
    return frame, info


def _read_csv_c(
    p: Path,
    delimiter: str | None,
    encoding: str,
    names: list[str] | None,
    compression: str,
    info: dict,
) -> pd.DataFrame:
    """pandas' C (or, for white space, Python) reader, with its failures as contract errors."""
    try:
        frame = pd.read_csv(
            p,
            sep=delimiter if delimiter is not None else r"\s+",
            engine="c" if delimiter is not None else "python",
            encoding=encoding,
            encoding_errors="strict",
            dtype=str,
            keep_default_na=False,
            na_values=sorted(_NA_STRINGS),
            header=None if names else 0,
            names=names,
            compression=compression,
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError:
        raise DataContractError(f"{p} holds no data", rule="empty_file") from None
    except UnicodeDecodeError as exc:
        raise DataContractError(
            f"{p} is not valid {encoding} ({exc.reason} at byte {exc.start})",
            rule="encoding",
            hint="pass the file's encoding with --encoding (e.g. cp1252, latin-1)",
        ) from None
    except (pd.errors.ParserError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[-1]
        raise DataContractError(
            f"{p} could not be parsed as a delimited table "
            f"(delimiter {info['delimiter']!r}): {msg}",
            rule="table_format",
            hint="check the delimiter (--delimiter) and quoting",
        ) from None
    return frame


def _decodes(data: bytes, encoding: str, partial: bool = False) -> bool:
    try:
        codecs.getincrementaldecoder(encoding)().decode(data, final=not partial)
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# parsing values


def _row_samples(mask: np.ndarray | pd.Series, values: pd.Series, k: int = 10) -> list:
    idx = np.flatnonzero(np.asarray(mask))[:k]
    return [(int(i) + 1, values.iloc[i]) for i in idx]


_DATE_PARTS = (
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%Y.%m.%d",
    "%Y%m%d",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d-%m-%Y",
    "%m-%d-%Y",
    "%d.%m.%Y",
    "%d/%m/%y",
    "%m/%d/%y",
    "%d-%m-%y",
    "%m-%d-%y",
    "%d.%m.%y",
    "%d %b %Y",
    "%d-%b-%Y",
    "%b %d %Y",
    "%b %d, %Y",
    "%d %B %Y",
    "%B %d, %Y",
    "%d-%b-%y",
)
_TIME_PARTS = (
    "",
    " %H:%M",
    " %H:%M:%S",
    " %H:%M:%S.%f",
    "T%H:%M",
    "T%H:%M:%S",
    "T%H:%M:%S.%f",
    " %I:%M %p",
    " %I:%M:%S %p",
)
DATE_FORMATS: tuple[str, ...] = tuple(d + t for d in _DATE_PARTS for t in _TIME_PARTS)
_TZ_RE = re.compile(r"(?:Z|[+-]\d\d:?\d\d|\s(?:UTC|GMT))$")


def _try_format(values: pd.Series, fmt: str) -> pd.Series:
    return pd.to_datetime(values, format=fmt, errors="coerce")


def parse_timestamps(
    values: pd.Series, *, column: str = "order_ts", date_format: str | None = None
) -> tuple[pd.Series, str, list[str]]:
    """Parse a timestamp column with one format for every row.

    The format is the one (of :data:`DATE_FORMATS`, or ISO 8601) that parses every non-missing
    value. When several formats parse every value but read some differently (``03/01/19`` as
    3 January or 1 March), the column is ambiguous and an error asks for ``--date-format``.
    Time-zone aware values are converted to UTC and made naive.

    Returns
    -------
    (parsed, format used, notes)
    """
    notes: list[str] = []
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        notes.append(f"{column}: time zone {values.dt.tz} converted to UTC")
        return (
            values.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]"),
            "native",
            notes,
        )
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.astype("datetime64[ns]"), "native", notes
    if pd.api.types.is_numeric_dtype(values):
        # e.g. 19970101 stored as a number
        as_text = values.astype("Int64").astype("string").astype(object)
        return parse_timestamps(
            pd.Series(as_text, index=values.index), column=column, date_format=date_format
        )
    # Mixed python objects (Excel): datetimes stay, the rest is text.
    text = (
        values.map(
            lambda v: v if v is None or isinstance(v, str) or pd.isna(v) else str(v),
            na_action="ignore",
        )
        if values.dtype == object
        else values
    )
    text = text.astype("str").str.strip()
    text = text.mask(text.isin(_NA_STRINGS))
    # Parse each distinct value once; ``codes`` maps rows to distinct values (-1: missing).
    codes, uniq_arr = pd.factorize(text, use_na_sentinel=True)
    present = codes >= 0
    uniq = pd.Series(uniq_arr, dtype="str")
    if uniq.empty:
        raise DataContractError(
            "every timestamp is missing", column=column, rule="timestamp_missing"
        )

    def expand(parsed_uniq: pd.Series) -> pd.Series:
        vals = parsed_uniq.to_numpy(dtype="datetime64[ns]")
        out = np.where(present, vals[np.where(present, codes, 0)], np.datetime64("NaT", "ns"))
        return pd.Series(out, index=values.index, dtype="datetime64[ns]")

    def require_parsed(parsed: pd.Series, what: str) -> None:
        bad = parsed.isna().to_numpy() & present
        if bad.any():
            raise DataContractError(
                f"{int(bad.sum())} {what}",
                column=column,
                rule="timestamp_format",
                rows=_row_samples(bad, values),
                hint="fix those rows, or give the right format with --date-format",
            )

    has_tz = uniq.str.contains(_TZ_RE).to_numpy(dtype=bool)
    if has_tz.any():
        if not has_tz.all():
            bad = present & ~has_tz[np.where(present, codes, 0)]
            raise DataContractError(
                "some timestamps carry a time zone and others do not; crmkit will not guess "
                "the zone of the naive ones",
                column=column,
                rule="mixed_timezones",
                rows=_row_samples(bad, values),
                hint="export every timestamp in one zone (UTC is best)",
            )
        fmt = date_format or "ISO8601"
        parsed = expand(
            pd.to_datetime(uniq, format=fmt, errors="coerce", utc=True).dt.tz_localize(None)
        )
        require_parsed(parsed, "timestamps with a time zone could not be parsed as " + fmt)
        notes.append(f"{column}: time-zone aware timestamps converted to UTC")
        return parsed, fmt, notes

    if date_format is not None:
        parsed = expand(_try_format(uniq, date_format))
        require_parsed(parsed, f"timestamps do not match the given format '{date_format}'")
        return parsed, date_format, notes

    # Screen candidates on a small sample, confirm on every distinct value.
    probe = uniq.iloc[:: max(1, len(uniq) // 200)][:200]
    iso_like = bool(probe.str.match(r"^\d{4}-\d\d-\d\d").all())
    fits: list[tuple[str, pd.Series]] = []
    best_fmt, best_ok = None, -1
    for fmt in ("ISO8601", *DATE_FORMATS):
        if fmt == "ISO8601" and not iso_like:
            continue
        p_probe = _try_format(probe, fmt)
        ok = int(p_probe.notna().sum())
        if ok > best_ok:
            best_fmt, best_ok = fmt, ok
        if ok < len(probe):
            continue
        p_all = _try_format(uniq, fmt)
        n_ok = int(p_all.notna().sum())
        if n_ok == len(uniq):
            fits.append((fmt, p_all))
        elif n_ok > best_ok:
            best_fmt, best_ok = fmt, n_ok
    if not fits:
        fmt = best_fmt or "ISO8601"
        bad = expand(_try_format(uniq, fmt)).isna().to_numpy() & present
        n_bad = int(bad.sum())
        raise DataContractError(
            f"{n_bad} of {int(present.sum())} timestamps cannot be read with the format that "
            f"fits most rows ('{fmt}'); no single date format fits every row",
            column=column,
            rule="timestamp_format",
            rows=_row_samples(bad, values),
            hint="fix those rows, or give the format with --date-format "
            "(e.g. --date-format '%d/%m/%Y %H:%M')",
        )
    ref_fmt, ref = fits[0]
    disagree = [f for f, p in fits[1:] if not p.equals(ref)]
    if disagree:
        other = next(p for f, p in fits if f == disagree[0])
        i = int(np.flatnonzero((other != ref).to_numpy())[0])
        raise DataContractError(
            f"the timestamps fit several date formats that read them differently "
            f"({ref_fmt!r} and {disagree[0]!r}: {uniq.iloc[i]!r} is {ref.iloc[i]:%Y-%m-%d} or "
            f"{other.iloc[i]:%Y-%m-%d}); every day in the data is 12 or less, so day-first "
            "and month-first cannot be told apart",
            column=column,
            rule="ambiguous_date_format",
            hint="give the format with --date-format (e.g. '%d/%m/%Y') or `date_format:` "
            "in the config",
        )
    notes.append(f"{column}: date format '{ref_fmt}' fits every row")
    return expand(ref), ref_fmt, notes


_CURRENCY_RE = re.compile(r"[£$€¥\s\u00a0]|(?i:usd|eur|gbp)")


def parse_numbers(values: pd.Series, *, column: str) -> tuple[pd.Series, list[str]]:
    """Parse a numeric column: plain numbers, currency symbols, thousands separators and
    decimal commas (``"1.234,50"``) are read; text that is no number is an error naming the
    rows. Missing values stay NaN (the cleaning rule ``invalid_values`` counts them)."""
    notes: list[str] = []
    if pd.api.types.is_bool_dtype(values):
        raise DataContractError(
            "holds true/false values, not numbers",
            column=column,
            rule="numeric",
            rows=_row_samples(np.ones(len(values), bool), values),
        )
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64"), notes
    text = values.astype("string").str.strip()
    text = text.mask(text.isin(_NA_STRINGS))
    present = text.notna().to_numpy()
    num = pd.to_numeric(text, errors="coerce").astype("float64")
    bad = num.isna().to_numpy() & present
    if bad.any():
        stripped = text.str.replace(_CURRENCY_RE, "", regex=True)
        has_comma = stripped.str.contains(",", regex=False).fillna(False)
        decimal_comma = bool(stripped[has_comma].str.contains(r",\d{1,2}$|,\d{4,}$").any())
        if decimal_comma:
            fixed = stripped.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
            rule_note = "decimal comma"
        else:
            fixed = stripped.str.replace(",", "", regex=False)
            rule_note = "thousands separators / currency symbols"
        num2 = pd.to_numeric(fixed, errors="coerce").astype("float64")
        bad2 = num2.isna().to_numpy() & present
        if bad2.any():
            raise DataContractError(
                f"{int(bad2.sum())} values are not numbers",
                column=column,
                rule="numeric",
                rows=_row_samples(bad2, values),
                hint=f"fix or remove those rows, or map the right column to '{column}'",
            )
        notes.append(f"{column}: read with {rule_note}")
        num = num2
    return num, notes


def _ids_to_text(values: pd.Series) -> pd.Series:
    """Identifiers as text; integral floats (``17850.0``, as pandas reads an id column with
    gaps) become ``"17850"``."""
    if pd.api.types.is_float_dtype(values):
        finite = values.dropna()
        if len(finite) and np.all(np.mod(finite.to_numpy(), 1) == 0):
            return values.astype("Int64").astype("str").mask(values.isna())
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("str").mask(values.isna())
    text = values.astype("str").mask(values.isna()).str.strip()
    text = text.mask(text.isin(_NA_STRINGS))
    present = text.dropna()
    if len(present) and present.str.fullmatch(r"-?\d+\.0+").all():
        # integral ids written as floats by a spreadsheet or pandas ("17850.0")
        text = text.str.replace(r"\.0+$", "", regex=True)
    return text


# --------------------------------------------------------------------------------------------
# the public loader


def load_transactions(
    source: str | os.PathLike | pd.DataFrame,
    *,
    mapping: dict[str, str] | None = None,
    date_format: str | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    sheet: str | int | None = None,
    names: list[str] | None = None,
) -> RawLines:
    """Load order lines from a file (CSV/TSV/text, optionally gzipped; Parquet; Excel) or a
    DataFrame into canonical columns.

    Parameters
    ----------
    source
        Path of the file, or a DataFrame with the file's columns.
    mapping
        ``{file header: canonical column}``; recognised headers need no mapping.
    date_format
        strptime format of the timestamp column; inferred when not given.
    encoding, delimiter
        Override detection for text files.
    sheet
        Excel sheet name or index (default: the first).
    names
        Column names for a file without a header row.

    Returns
    -------
    RawLines
    """
    if isinstance(source, pd.DataFrame):
        if source.empty:
            raise DataContractError("the frame has no rows", rule="empty_file")
        table, info, src = source, {"file_format": "frame"}, "<frame>"
    else:
        table, info = read_table(
            source, encoding=encoding, delimiter=delimiter, sheet=sheet, names=names
        )
        src = str(source)

    columns = recognise_columns(table.columns, mapping)
    by_canon = {v: k for k, v in columns.items()}
    notes: list[str] = []
    if info.get("encoding"):
        notes.append(f"encoding: {info['encoding']}")
    if info.get("delimiter"):
        notes.append(f"delimiter: {info['delimiter']!r}")
    renamed = {h: c for h, c in columns.items() if h != c}
    if renamed:
        notes.append("columns: " + ", ".join(f"{h!r} -> {c}" for h, c in renamed.items()))

    def label(canon: str) -> str:
        h = by_canon[canon]
        return canon if h == canon else f"{canon} ({h})"

    out = pd.DataFrame(index=pd.RangeIndex(len(table)))
    out["customer_id"] = _ids_to_text(table[by_canon["customer_id"]].reset_index(drop=True))
    ts, fmt, ts_notes = parse_timestamps(
        table[by_canon["order_ts"]].reset_index(drop=True),
        column=label("order_ts"),
        date_format=date_format,
    )
    notes += ts_notes
    out["order_ts"] = ts
    for col in NUMERIC_COLUMNS:
        if col in by_canon:
            vals, n = parse_numbers(table[by_canon[col]].reset_index(drop=True), column=label(col))
            out[col] = vals
            notes += n
    if "quantity" not in out:
        out["quantity"] = 1.0
        notes.append("quantity: not in the file; each line counts 1 unit")
    if "unit_price" not in out:
        q = out["quantity"].to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            out["unit_price"] = np.where(q != 0, out["amount"].to_numpy() / q, np.nan)
        notes.append("unit_price: derived as amount / quantity")
    else:
        if "amount" in out:
            notes.append("amount: recomputed as quantity x unit_price (the file's own is ignored)")
        out["amount"] = out["quantity"] * out["unit_price"]

    level: Literal["product", "order"] = "product" if "product_id" in by_canon else "order"
    if level == "product":
        out["product_id"] = _ids_to_text(table[by_canon["product_id"]].reset_index(drop=True))
    else:
        notes.append(
            "no product column: order-level log; product-level models (basket rules, "
            "recommendations) will be skipped"
        )
    if "order_id" in by_canon:
        out["order_id"] = _ids_to_text(table[by_canon["order_id"]].reset_index(drop=True))
    else:
        out["order_id"] = (
            out["customer_id"] + "@" + out["order_ts"].dt.strftime("%Y-%m-%d")
        ).astype("str")
        notes.append("no order column: each customer-day is one order")
    for col in OPTIONAL_COLUMNS:
        if col in by_canon:
            out[col] = _ids_to_text(table[by_canon[col]].reset_index(drop=True))

    order = [c for c in CLEAN_COLUMNS if c in out]
    return RawLines(
        frame=out[order],
        source=src,
        level=level,
        columns=columns,
        file_format=info.get("file_format") or "frame",
        encoding=info.get("encoding"),
        delimiter=info.get("delimiter"),
        date_format=fmt,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# writing outputs


@contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Write a command's outputs all-or-nothing.

    Yields a staging folder beside ``out_dir``. When the block finishes, the outputs replace
    those in ``out_dir`` in one step: files of ``out_dir`` the block did not write are
    hard-linked into the staging folder, which then swaps places with ``out_dir`` in a single
    atomic rename (``renameat2(RENAME_EXCHANGE)`` on Linux; a new ``out_dir`` is the staging
    folder renamed). A reader, or a process killed at any moment, sees the previous outputs
    or the new ones, never a mix. Where the swap is not available (other systems, a
    symlinked or mounted ``out_dir``), each entry is moved in with an atomic rename instead.

    When the block raises, the staging folder is removed and ``out_dir`` is left as it was.
    A process killed with SIGKILL leaves its ``.<out>.staging-*`` folder behind (nothing
    can clean up after it); ``out_dir`` is untouched and later runs are unaffected (each
    run stages in a folder of its own), so such a folder can simply be deleted.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise DataContractError(f"--out {out} exists and is not a directory", rule="output_dir")
    # absolute: a JVM (the Spark engine) resolves relative paths against its own start
    # folder, not this process's current one
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent.absolute()))
    try:
        yield stage
        _commit(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _commit(stage: Path, out: Path) -> None:
    """Put the staged outputs in place (see :func:`staged_output`)."""
    if out.is_symlink() or (out.exists() and os.path.ismount(out)):
        _commit_each(stage, out)
        return
    if not out.exists():
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it 0700
        try:
            os.rename(stage, out)
            return
        except OSError:  # out appeared meanwhile
            pass
    try:
        for item in out.iterdir():  # keep what this run does not write
            target = stage / item.name
            if not os.path.lexists(target):
                if item.is_dir() and not item.is_symlink():
                    shutil.copytree(item, target, symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(item, target, follow_symlinks=False)
        os.chmod(stage, out.stat().st_mode & 0o7777)
    except OSError:
        _commit_each(stage, out)
        return
    if not _exchange(stage, out):
        _commit_each(stage, out)
    # else: the staging folder now holds the previous outputs; the caller removes it


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike, *, follow_symlinks=True):  # noqa: ANN001, ANN202
    if os.path.islink(src) and not follow_symlinks:
        os.symlink(os.readlink(src), dst)
        return dst
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``); ``False``
    when the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # no libc symbol (glibc < 2.28, musl < 1.2.?)
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def _commit_each(stage: Path, out: Path) -> None:
    """Move each staged entry into ``out`` with an atomic rename (the fallback)."""
    out.mkdir(exist_ok=True)
    for item in sorted(stage.iterdir()):
        target = out / item.name
        if target.is_dir() and item.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a frame as Parquet (pyarrow, no index)."""
    p = Path(path)
    frame.to_parquet(p, engine="pyarrow", index=False)
    return p


def load_baskets(
    path: str | os.PathLike, *, delimiter: str = ",", encoding: str | None = None
) -> pd.DataFrame:
    """Read a basket file: one basket per line, items separated by ``delimiter`` (the arules /
    Groceries format). Item labels are kept exactly, trailing spaces included, as arules does.

    Returns a long frame with ``order_id`` (``"B1"``, ``"B2"``, ... in line order) and
    ``product_id``; an item repeated within a basket is listed once.
    """
    p = Path(path)
    if not p.is_file():
        raise DataContractError(f"basket file not found: {p}", rule="readable_file")
    raw = p.read_bytes()
    if not raw.strip():
        raise DataContractError(f"{p} is empty", rule="empty_file")
    if encoding is None:
        encoding = _detect_encoding(raw[:_SAMPLE_BYTES], _decodes(raw, "utf-8"))
    lines = raw.decode(encoding).lstrip("\ufeff").splitlines()
    ids, items = [], []
    n = 0
    for line in lines:
        if not line.strip():
            continue
        n += 1
        seen: set[str] = set()
        for item in line.split(delimiter):
            if item and item not in seen:
                seen.add(item)
                ids.append(f"B{n}")
                items.append(item)
    return pd.DataFrame(
        {"order_id": pd.array(ids, dtype="str"), "product_id": pd.array(items, dtype="str")}
    )
