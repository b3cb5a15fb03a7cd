"""Exceptions raised by crmkit.

Every error a user can cause by handing crmkit bad input is a :class:`CrmkitError`; the CLI
prints its message and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CrmkitError", "DataContractError", "ConfigError"]


class CrmkitError(Exception):
    """Base class of every error crmkit raises on purpose."""


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
            head.append(f"column '{self.column}'")
        text = (f"[{', '.join(head)}] " if head else "") + self.message
        if self.rows:
            shown = "; ".join(f"row {r}: {v!r}" for r, v in self.rows[:5])
            more = f" (and {len(self.rows) - 5} more shown in .rows)" if len(self.rows) > 5 else ""
            text += f"\n  offending rows: {shown}{more}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text
