"""Parsing column values of order lines: timestamps with one format for the whole column, and
numbers with currency symbols, thousands separators or decimal commas. Errors name the column,
the rule and the first offending rows."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from crmkit.errors import DataContractError, shorten

__all__ = ["DATE_FORMATS", "NA_STRINGS", "parse_timestamps", "parse_numbers", "row_samples"]

NA_STRINGS = {"", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "null", "NULL", "None", "none", "-"}
_NA_STRINGS = NA_STRINGS

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


#: The years a nanosecond timestamp holds; values outside are read at these bounds.
_TS_LOW, _TS_HIGH = pd.Timestamp("1678-01-01"), pd.Timestamp("2262-01-01")


def _clamp_to_ns(
    parsed: pd.Series, rows: np.ndarray, values: pd.Series, column: str, notes: list[str]
) -> pd.Series:
    """``parsed`` (any datetime unit) with values outside the years 1678-2261 set to the
    nearest representable bound (numpy would wrap them: year 2300 became 1715), and a note
    naming the first rows. The cleaning rule ``implausible_timestamp`` drops and counts them.

    ``rows`` maps each row of ``values`` to its entry of ``parsed`` (-1: missing)."""
    low = (parsed < _TS_LOW).to_numpy(dtype=bool)
    high = (parsed >= _TS_HIGH).to_numpy(dtype=bool)
    if not (low.any() or high.any()):
        return parsed
    out = parsed.mask(low, _TS_LOW).mask(high, _TS_HIGH - pd.Timedelta(1, "us"))
    present = rows >= 0
    hit = present & (low | high)[np.where(present, rows, 0)]
    shown = ", ".join(f"row {r}: {shorten(repr(v), 40)}" for r, v in _row_samples(hit, values, 5))
    notes.append(
        f"{column}: {int(hit.sum())} timestamps outside the representable years 1678-2261 "
        f"({shown}) read at the nearest bound; rule implausible_timestamp drops them"
    )
    return out


def _check_date_format(date_format: str, column: str) -> None:
    """Refuse a ``--date-format`` that is no strptime format (``%``, ``%Q``)."""
    try:
        pd.to_datetime(pd.Series(["2000-01-01"]), format=date_format, errors="coerce")
    except (ValueError, TypeError) as exc:
        raise DataContractError(
            f"--date-format / date_format {shorten(repr(date_format))} is not a valid strptime "
            f"format ({exc})",
            column=column,
            rule="date_format",
            hint="use strptime directives, e.g. '%d/%m/%Y %H:%M' (a literal percent sign is %%)",
        ) from None


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
    if date_format is not None:
        _check_date_format(date_format, column)
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        notes.append(f"{column}: time zone {values.dt.tz} converted to UTC")
        naive = values.dt.tz_convert("UTC").dt.tz_localize(None)
        rows = np.where(naive.notna().to_numpy(), np.arange(len(values)), -1)
        naive = _clamp_to_ns(naive, rows, values, column, notes)
        return naive.astype("datetime64[ns]"), "native", notes
    if pd.api.types.is_datetime64_any_dtype(values):
        rows = np.where(values.notna().to_numpy(), np.arange(len(values)), -1)
        values = _clamp_to_ns(values, rows, values, column, notes)
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
        parsed_uniq = _clamp_to_ns(parsed_uniq, codes, values, column, notes)
        vals = parsed_uniq.astype("datetime64[ns]").to_numpy()
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
# A value that can only be read with a decimal comma (1.234,56 / 12,5 / 1.234.567) or only
# with a decimal point (1,234.56 / 3.50 / 1,234,567); "1,234" or "1.234" fit either.
_DECIMAL_COMMA_RE = re.compile(
    r"^[+-]?(?:\d{1,3}(?:\.\d{3})+,\d*|\d*,(?:\d{1,2}|\d{4,})|\d{1,3}(?:\.\d{3}){2,})$"
)
_DECIMAL_POINT_RE = re.compile(
    r"^[+-]?(?:\d{1,3}(?:,\d{3})+\.\d*|\d*\.(?:\d{1,2}|\d{4,})|\d{1,3}(?:,\d{3}){2,})$"
)


def _check_one_decimal_convention(stripped: pd.Series, values: pd.Series, column: str) -> None:
    """Refuse a column in which some values can only be read with a decimal comma and others
    only with a decimal point (``€1.234,56`` beside ``1,234.56``): either reading makes some
    values 1000x wrong."""
    comma = stripped.str.match(_DECIMAL_COMMA_RE).fillna(False).to_numpy(dtype=bool)
    point = stripped.str.match(_DECIMAL_POINT_RE).fillna(False).to_numpy(dtype=bool)
    if not (comma.any() and point.any()):
        return
    c_rows, p_rows = _row_samples(comma, values, 3), _row_samples(point, values, 3)

    def show(rows: list) -> str:
        return ", ".join(f"row {r}: {shorten(repr(v), 40)}" for r, v in rows)

    raise DataContractError(
        f"the column mixes decimal conventions: {int(comma.sum())} values need a decimal "
        f"comma ({show(c_rows)}) and {int(point.sum())} a decimal point ({show(p_rows)}); "
        "read either way some amounts would be 1000x wrong",
        column=column,
        rule="mixed_decimal_separators",
        rows=sorted(c_rows[:2] + p_rows[:2]),
        hint="export the column with one number format (fix those rows)",
    )


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
        _check_one_decimal_convention(stripped, values, column)
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


row_samples = _row_samples
