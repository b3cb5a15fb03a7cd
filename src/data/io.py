"""Reading order lines from CSV, Parquet and Excel into the canonical contract.

This is the one module that reads transaction files (values are parsed by :mod:`.parse`, outputs written by :mod:`.output`). :func:`load_transactions` recognises or
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from crmkit.data.orders import combine_status, fill_note, fill_order_fields
from crmkit.data.output import staged_output, write_parquet
from crmkit.data.parse import (
    _NA_STRINGS,
    parse_numbers,
    parse_timestamps,
)
from crmkit.data.presets import choose_preset
from crmkit.data.read_checks import (
    check_gzip,
    check_swallowed_lines,
    count_lines,
    eof_in_quote_error,
    read_excel_sheet,
)
from crmkit.data.schema import (
    CLEAN_COLUMNS,
    NUMERIC_COLUMNS,
    OPTIONAL_COLUMNS,
    STATUS_COLUMNS,
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
        frame, info["notes"] = read_excel_sheet(p, sheet, header=not names)
        if names:
            frame.columns = list(names) + [f"col{i}" for i in range(len(names), frame.shape[1])]
        else:
            _check_mangled_duplicates([str(c) for c in frame.columns])
        if frame.empty:
            raise DataContractError(
                f"{p} has no data rows ({'; '.join(info['notes'])})", rule="empty_file"
            )
        return frame, info

    # Text formats (.csv, .tsv, .txt, .gz, .zip, anything else).
    info["file_format"] = "csv"
    compression = "infer"
    opener = open
    gzip_utf8, n_lines = False, None
    if suffixes.endswith(".gz"):
        import gzip

        opener = gzip.open  # type: ignore[assignment]
        gzip_utf8, n_lines = check_gzip(p)
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
        whole_utf8 = _is_utf8(p) if opener is open else gzip_utf8
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
    if n_lines is None and not suffixes.endswith((".zip", ".bz2", ".xz", ".zst")):
        n_lines = count_lines(p)
    check_swallowed_lines(frame, p, delimiter, n_lines)
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
    except (OSError, EOFError) as exc:
        raise DataContractError(
            f"{p} could not be read ({type(exc).__name__}: {exc})", rule="readable_file"
        ) from None
    except (pd.errors.ParserError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[-1]
        quote = eof_in_quote_error(p, msg)
        if quote is not None:
            raise quote from None
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
    preset: str | None = None,
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
    preset
        A known shop export (:mod:`crmkit.data.presets`: shopify, woocommerce, magento,
        shopware, online-retail) whose headers map the columns; ``mapping`` wins over it.
        Without one, a file carrying a preset's signature headers gets that preset.

    Returns
    -------
    RawLines
        Order-level fields written on an order's first line only are carried to its other
        lines (:func:`crmkit.data.orders.fill_order_fields`, counted in ``notes``); status
        columns become one ``order_status`` column for the ``order_status`` cleaning rule.
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

    chosen, mapping, notes = choose_preset(table.columns, preset, mapping)
    columns = recognise_columns(table.columns, mapping)
    by_canon = {v: k for k, v in columns.items()}
    if info.get("encoding"):
        notes.append(f"encoding: {info['encoding']}")
    if info.get("delimiter"):
        notes.append(f"delimiter: {info['delimiter']!r}")
    notes += info.get("notes", [])  # e.g. which Excel sheet was read
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
    status = combine_status(
        *(
            _ids_to_text(table[by_canon[c]].reset_index(drop=True)) if c in by_canon else None
            for c in STATUS_COLUMNS
        ),
        chosen.status_values if chosen is not None else None,
    )
    if status is not None:
        out["order_status"] = status
    if "order_id" in by_canon:
        out, filled = fill_order_fields(out)
        note = fill_note(filled)
        if note:
            notes.append(note)

    order = [c for c in CLEAN_COLUMNS if c in out]
    order += ["order_status"] if status is not None else []
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
