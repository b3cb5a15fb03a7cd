"""Exceptions raised by crmkit.

Every error a user can cause by handing crmkit bad input is a :class:`CrmkitError`; the CLI
prints its message and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "CrmkitError",
    "DataContractError",
    "ConfigError",
    "shorten",
    "os_error_message",
    "MAX_VALUE_CHARS",
]

#: Longest value an error message repeats in full; longer ones are cut (a 50 MB header line
#: must not be echoed to the terminal).
MAX_VALUE_CHARS = 200


def shorten(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """``str(value)`` cut to ``limit`` characters, followed by ``... (N characters)`` when
    longer.

    Parameters
    ----------
    value
        What to show (converted with ``str``).
    limit
        Characters kept.

    Returns
    -------
    str
    """
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


# a value: a run of characters other than blanks, quotes, brackets, commas and dots
_LONG_TOKEN = re.compile(rf"[^\s'\"()\[\],.]{{{MAX_VALUE_CHARS + 1},}}")


def _shorten_lines(text: str, limit: int) -> str:
    """``text`` with every value longer than :data:`MAX_VALUE_CHARS` (a run of characters
    other than blanks, quotes, brackets, commas and dots) and then every line cut to
    ``limit`` characters (see :func:`shorten`)."""
    text = _LONG_TOKEN.sub(lambda m: shorten(m.group()), text)
    return "\n".join(shorten(line, limit) for line in text.split("\n"))


class CrmkitError(Exception):
    """Base class of every error crmkit raises on purpose.

    ``str(error)`` never repeats a long value in full: a value is cut at :data:`MAX_VALUE_CHARS` and each line at ``4 * MAX_VALUE_CHARS`` characters
    (see :func:`shorten`), so an error about a huge header or cell stays readable.
    """

    def __str__(self) -> str:
        return _shorten_lines(super().__str__(), 4 * MAX_VALUE_CHARS)


class ConfigError(CrmkitError, ValueError):
    """A configuration file or option is invalid."""


class DataContractError(CrmkitError, ValueError):
    """Input data breaks the transaction data contract.

    Parameters
    ----------
    message
        What is wrong, in plain words.
    column
        The column concerned (canonical name, with the file's own header in brackets when it
        differs), if any.
    rule
        Short machine-readable name of the rule that failed, e.g. ``"required_column"``.
    rows
        A few offending rows as ``(row_number, value)`` pairs; row numbers are 1-based data
        rows as a spreadsheet would show them below the header.
    hint
        What the user can do about it.
    """

    def __init__(
        self,
        message: str,
        *,
        column: str | None = None,
        rule: str | None = None,
        rows: Sequence[tuple[int, object]] = (),
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.column = column
        self.rule = rule
        self.rows = list(rows)
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        head = []
        if self.rule:
            head.append(f"rule '{self.rule}'")
        if self.column:
            head.append(f"column '{shorten(self.column)}'")
        text = (f"[{', '.join(head)}] " if head else "") + self.message
        if self.rows:
            shown = "; ".join(f"row {r}: {shorten(repr(v))}" for r, v in self.rows[:5])
            more = f" (and {len(self.rows) - 5} more shown in .rows)" if len(self.rows) > 5 else ""
            text += f"\n  offending rows: {shown}{more}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


_OS_HINTS = {
    "ENOSPC": "the disk is full: free space or write --out to another disk",
    "EDQUOT": "the disk quota is used up: free space or write --out elsewhere",
    "EROFS": "the file system is read-only: give an --out on a writable disk",
    "EACCES": "permission denied: give an --out you may write to",
    "EPERM": "operation not permitted: give an --out you may write to",
}


def os_error_message(exc: OSError) -> str:
    """A one-paragraph message for an operating-system error (disk full, read-only or
    forbidden folder, ...): what failed, on which file, and what to do.

    Parameters
    ----------
    exc
        The error raised by the operating system.

    Returns
    -------
    str
    """
    import errno as _errno

    name = _errno.errorcode.get(exc.errno or -1, type(exc).__name__)
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({shorten(exc.filename)})" if exc.filename else ""
    text = f"[{name}] {reason}{where}; no output was written"
    hint = _OS_HINTS.get(name)
    return text + (f"\n  hint: {hint}" if hint else "")
