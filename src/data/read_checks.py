"""Checks that a file was read whole and as meant, used by :func:`crmkit.data.io.read_table`:
a gzip stream that is complete (no truncation, no garbage tail), a delimited table in which no
stray quote swallowed the following lines, and the Excel sheet to read (named or by index,
with a note naming the other sheets that hold data)."""

from __future__ import annotations

import codecs
import logging
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from crmkit.errors import DataContractError, shorten

__all__ = [
    "check_gzip",
    "count_lines",
    "check_swallowed_lines",
    "eof_in_quote_error",
    "resolve_sheet",
    "read_excel_sheet",
]

log = logging.getLogger(__name__)


def count_lines(path: Path) -> int:
    """Lines of a plain text file (line feeds, plus one for a last line without one)."""
    n, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def check_gzip(path: Path) -> tuple[bool, int]:
    """Decompress the whole gzip stream once.

    Parameters
    ----------
    path
        A ``.gz`` file.

    Returns
    -------
    (utf8, lines)
        Whether the decompressed bytes are valid UTF-8, and how many lines they hold.

    Raises
    ------
    DataContractError
        ``readable_file``: the stream ends before its end marker (a truncated download or
        copy), or bytes after it are no gzip member (a garbage tail).
    """
    import gzip

    n, lines, last = 0, 0, b"\n"
    dec = codecs.getincrementaldecoder("utf-8")()
    utf8 = True
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                n += len(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
                if utf8:
                    try:
                        dec.decode(chunk)
                    except UnicodeDecodeError:
                        utf8 = False
    except EOFError:
        raise DataContractError(
            f"{path} is a truncated gzip file: the compressed stream ends after {n:,} bytes "
            "of data, before its end marker (an interrupted download or copy?)",
            rule="readable_file",
            hint="copy or download the file again; `gzip -t FILE` checks a gzip file",
        ) from None
    except (OSError, zlib.error) as exc:
        raise DataContractError(
            f"{path} is not a valid gzip file: after {n:,} bytes of data the stream is "
            f"corrupt or followed by bytes that are no gzip data ({shorten(exc)})",
            rule="readable_file",
            hint="copy or download the file again; `gzip -t FILE` checks a gzip file",
        ) from None
    if utf8:
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    return utf8, lines + (last != b"\n")


def check_swallowed_lines(
    frame: pd.DataFrame, path: Path, delimiter: str | None, n_lines: int | None = None
) -> None:
    """Refuse a table in which a field holds whole lines of the file.

    A quote opened in a field and closed only lines later (or at another stray quote) makes
    the parser read the lines in between as the text of one field: those rows vanish
    without a word. A field holding a line break is legitimate (an address), but one whose
    later lines split into as many fields as the header is swallowed rows.

    ``n_lines``, the file's line count, skips the search when every line became a row (or
    the header).

    Raises
    ------
    DataContractError
        ``unterminated_quote`` naming the column, the data row and the line of the file where
        the quote opened.
    """
    n_cols = frame.shape[1]
    if delimiter is None or n_cols < 2 or frame.empty:
        return
    if n_lines is not None and len(frame) + 1 >= n_lines:
        return
    newlines = {}
    for col in frame.columns:
        s = frame[col]
        if not (pd.api.types.is_string_dtype(s) or s.dtype == object):
            continue
        has_nl = s.str.contains("\n", regex=False).fillna(False).to_numpy(dtype=bool)
        if has_nl.any():
            newlines[col] = has_nl
    if not newlines:
        return
    first: tuple[int, str] | None = None
    for col, has_nl in newlines.items():
        s = frame[col]
        for i in np.flatnonzero(has_nl)[:10_000]:
            later = str(s.iloc[i]).split("\n")[1:]
            if any(part.count(delimiter) >= n_cols - 1 for part in later):
                if first is None or i < first[0]:
                    first = (int(i), col)
                break
    if first is None:
        return
    i, col = first
    # physical line: the header, the rows before and the line breaks inside their fields
    before = sum(int(frame[c].iloc[:i].str.count("\n").fillna(0).sum()) for c in newlines)
    line = 1 + i + 1 + before
    value = str(frame[col].iloc[i])
    swallowed = value.count("\n")
    raise DataContractError(
        f"{path}: the field in data row {i + 1} (line {line} of the file) opens a quote that "
        f"runs over the next {swallowed} lines, so those lines were read as the text of one "
        f"field instead of rows ({len(frame):,} rows read)",
        column=str(col),
        rule="unterminated_quote",
        rows=[(i + 1, shorten(value, 80))],
        hint=f'close or remove the stray " on line {line} (a quote inside a field is written "")',
    )


def eof_in_quote_error(path: Path, parser_message: str) -> DataContractError | None:
    """The parser's ``EOF inside string starting at row N`` as an ``unterminated_quote`` error
    naming the line (``None`` for other parser messages)."""
    m = re.search(r"EOF inside string starting at row (\d+)", parser_message)
    if m is None:
        return None
    line = int(m.group(1)) + 1
    return DataContractError(
        f"{path}: a quote opened on line {line} of the file is never closed, so every line "
        "after it would be one field",
        rule="unterminated_quote",
        hint=f'close or remove the stray " on line {line} (a quote inside a field is written "")',
    )


def _has_data(book: pd.ExcelFile, name: str) -> bool:
    head = pd.read_excel(book, sheet_name=name, header=None, nrows=2, dtype=object)
    return len(head.dropna(how="all")) >= 2


def resolve_sheet(path: Path, sheet: str | int | None) -> tuple[str, list[str]]:
    """The Excel sheet to read and notes saying which.

    ``sheet`` is a sheet name, an index (``1`` or ``"1"``: the second sheet; a sheet named
    ``"1"`` wins) or ``None``: the first sheet holding a header and a data row.

    Returns
    -------
    (sheet name, notes)
        The notes name the sheet read and the other sheets that hold data.
    """
    book = pd.ExcelFile(path)
    names = [str(n) for n in book.sheet_names]
    if not names:
        raise DataContractError(f"{path} holds no sheet", rule="empty_file")
    with_data = [n for n in names if _has_data(book, n)]
    if sheet is None:
        chosen = with_data[0] if with_data else names[0]
    elif isinstance(sheet, int) or (str(sheet) not in names and str(sheet).isdigit()):
        k = int(sheet)
        if not 0 <= k < len(names):
            raise DataContractError(
                f"{path} has {len(names)} sheets ({', '.join(map(repr, names))}); sheet index "
                f"{k} does not exist (indexes start at 0)",
                rule="sheet",
            )
        chosen = names[k]
    elif str(sheet) in names:
        chosen = str(sheet)
    else:
        raise DataContractError(
            f"{path} has no sheet named {shorten(repr(sheet))}; its sheets: "
            f"{', '.join(map(repr, names))}",
            rule="sheet",
            hint="give --sheet NAME or --sheet INDEX (0 is the first sheet)",
        )
    notes = [f"sheet: {chosen!r} read (sheet {names.index(chosen)} of {len(names)})"]
    others = [n for n in with_data if n != chosen]
    if others:
        notes.append(
            f"sheet: {', '.join(map(repr, others))} also "
            f"{'holds' if len(others) == 1 else 'hold'} data and "
            f"{'was' if len(others) == 1 else 'were'} not read; "
            "choose with --sheet NAME or --sheet INDEX"
        )
    return chosen, notes


def read_excel_sheet(
    path: Path, sheet: str | int | None, *, header: bool = True
) -> tuple[pd.DataFrame, list[str]]:
    """Read one sheet of an Excel file as objects (:func:`resolve_sheet` chooses it).

    Returns
    -------
    (frame, notes)
        The notes name the sheet read and the other sheets holding data; the latter is also
        logged as a warning (on stderr in the CLI).
    """
    try:
        chosen, notes = resolve_sheet(path, sheet)
        for note in notes[1:]:
            log.warning("%s: %s", path, note)
        frame = pd.read_excel(path, sheet_name=chosen, dtype=object, header=0 if header else None)
    except DataContractError:
        raise
    except ImportError as exc:
        raise DataContractError(
            f"{path}: reading this Excel format needs an extra package ({exc}); "
            "save it as .xlsx or CSV",
            rule="readable_file",
        ) from None
    except Exception as exc:
        raise DataContractError(
            f"{path} could not be read as Excel ({type(exc).__name__}: {shorten(exc)})",
            rule="readable_file",
        ) from None
    return frame, notes
