"""Order-level facts of line exports: fields filled on an order's first line only, the order
status, and whether an order-id prefix really marks cancellations.

- :func:`fill_order_fields` - shop exports with one line per item (Shopify, some WooCommerce
  plugins) write order-level fields (``Email``, ``Created at``, ``Financial Status``, ...) on
  an order's first line only; a blank cell of such a column takes the value of another line of
  the same order, counted per column.
- :func:`normalise_status` / :data:`NOT_PURCHASE_STATUSES` - order and payment statuses of
  the shop systems as one vocabulary; orders refunded, voided, pending, cancelled or failed are
  not purchases (the ``order_status`` cleaning rule). A partially refunded order is kept at its
  full price (the export's refunded amount is not subtracted) and counted in a note.
- :func:`cancellation_convention` - the ``cancellations`` rule (Online Retail's ``C`` prefix)
  applies only where the data shows that convention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "ORDER_LEVEL_COLUMNS",
    "NOT_PURCHASE_STATUSES",
    "fill_order_fields",
    "fill_note",
    "normalise_status",
    "combine_status",
    "id_shape",
    "cancellation_convention",
    "convention_holds",
    "status_mask",
    "partial_note",
    "rejected_note",
]

#: Canonical columns that belong to the order rather than to the line.
ORDER_LEVEL_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "order_ts",
    "order_status",
    "cancelled_at",
    "country",
    "channel",
)

#: Statuses (after :func:`normalise_status`) of orders that are not purchases.
NOT_PURCHASE_STATUSES: tuple[str, ...] = (
    "refunded",
    "voided",
    "pending",
    "pending_payment",
    "cancelled",
    "failed",
    "expired",
    "declined",
)

#: Spelling variants of the shop systems mapped to one status.
_STATUS_SYNONYMS = {
    "canceled": "cancelled",
    "void": "voided",
    "refund": "refunded",
    "partial_refund": "partially_refunded",
    "partially_refund": "partially_refunded",
}


def fill_order_fields(
    frame: pd.DataFrame, columns: Sequence[str] = ORDER_LEVEL_COLUMNS
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Fill blank order-level cells from another line of the same order.

    Parameters
    ----------
    frame
        Lines with an ``order_id`` column (from the file, not derived).
    columns
        The order-level columns to fill (those present in ``frame`` are used).

    Returns
    -------
    frame, filled
        A new frame (the input is not changed) and ``{column: lines filled}`` for the columns
        where some line was filled. A line of an order none of whose lines has a value stays
        blank; a value present on a line is never replaced.
    """
    filled: dict[str, int] = {}
    if "order_id" not in frame.columns:
        return frame, filled
    oid = frame["order_id"]
    has_oid = oid.notna().to_numpy()
    out = frame
    for col in columns:
        if col not in frame.columns:
            continue
        blank = frame[col].isna().to_numpy() & has_oid
        if not blank.any() or blank.sum() == has_oid.sum():
            continue
        # only orders with both blank and non-blank lines can change
        codes, _ = pd.factorize(oid)
        n = int(codes.max()) + 1 if len(codes) else 0
        with_value = np.bincount(codes[~blank & has_oid], minlength=n) > 0
        target = blank & with_value[np.where(codes >= 0, codes, 0)]
        if not target.any():
            continue
        first = frame[col].groupby(codes, sort=False).transform("first")
        if out is frame:
            out = frame.copy()
        vals = out[col].copy()
        vals[target] = first[target]
        out[col] = vals
        filled[col] = int(target.sum())
    return out, filled


def fill_note(filled: Mapping[str, int]) -> str | None:
    """The loader's note for :func:`fill_order_fields`' counts (``None`` when nothing was
    filled)."""
    if not filled:
        return None
    parts = ", ".join(f"{c} on {n:,} lines" for c, n in filled.items())
    return (
        "order-level fields filled from another line of the same order (the export writes them "
        f"on an order's first line only): {parts}"
    )


def normalise_status(values: pd.Series, translate: Mapping[str, str] | None = None) -> pd.Series:
    """Statuses as one vocabulary: lower case, spaces and hyphens as ``_``, WooCommerce's
    ``wc-`` prefix dropped, spelling variants (``canceled``, ``void``) unified, then a preset's
    own codes (``translate``, e.g. Shopware's ``-1`` -> ``cancelled``) applied."""
    text = values.astype("str").mask(values.isna()).str.strip().str.lower()
    if translate:
        text = text.replace({str(k).strip().lower(): v for k, v in translate.items()})
    text = text.str.replace(r"[\s\-]+", "_", regex=True).str.replace(r"^wc_", "", regex=True)
    text = text.mask(text == "")
    return text.replace(_STATUS_SYNONYMS)


def combine_status(
    status: pd.Series | None, cancelled_at: pd.Series | None, translate: Mapping[str, str] | None
) -> pd.Series | None:
    """One ``order_status`` column from a status column and a cancellation-time column (any
    value there means ``cancelled``); ``None`` when the file has neither."""
    if status is None and cancelled_at is None:
        return None
    out = (
        normalise_status(status, translate)
        if status is not None
        else pd.Series(pd.NA, index=cancelled_at.index, dtype="str")
    )
    if cancelled_at is not None:
        text = cancelled_at.astype("str").mask(cancelled_at.isna()).str.strip()
        cancelled = text.notna() & (text != "")
        out = out.mask(cancelled.to_numpy(), "cancelled")
    return out.astype("str").mask(out.isna())


def status_mask(status: pd.Series, excluded: Sequence[str]) -> tuple[np.ndarray, str | None]:
    """The ``order_status`` rule's mask (lines whose status is in ``excluded``) and the note
    counting lines of partially refunded orders, which are kept at their full price."""
    norm = normalise_status(status)
    wanted = set(normalise_status(pd.Series(list(excluded), dtype="str")).dropna())
    mask = norm.isin(wanted).to_numpy(dtype=bool)
    return mask, partial_note(int((norm == "partially_refunded").sum()))


def partial_note(lines: int) -> str | None:
    """The note counting lines of partially refunded orders (``None`` for none)."""
    if not lines:
        return None
    return (
        f"order_status: {lines:,} lines of partially refunded orders kept at their full price "
        "(the export's refunded amount is not subtracted)"
    )


def rejected_note(rejected: Sequence[str]) -> str:
    """The note of the ``cancellations`` rule when the data contradicts its prefixes."""
    return (
        f"cancellations: order ids starting with {list(rejected)} are ordinary orders here "
        "(their lines are not negative, or the rest of the id is not shaped like the file's "
        "other order ids); the prefix rule is not applied"
    )


def id_shape(ids: pd.Series) -> pd.Series:
    """The numeric structure of each id: a leading run of letters dropped, then every run of
    digits ``9`` and every run of letters ``A``, other characters kept (``"536365"``,
    ``"o17"`` and ``"INV0042"`` -> ``"9"``; ``"CA-2019-103800"`` -> ``"-9-9"``)."""
    text = ids.str.replace(r"^[A-Za-z]+", "", regex=True)
    return text.str.replace(r"[0-9]+", "9", regex=True).str.replace(r"[A-Za-z]+", "A", regex=True)


def convention_holds(prefixed_lines: int, negative_lines: int, matching_lines: int) -> bool:
    """The decision of :func:`cancellation_convention` from its three counts (shared by the
    Spark engine): at least half the prefixed lines have a negative quantity and at least half
    have an id whose rest has the numeric structure of an unprefixed id (:func:`id_shape`)."""
    if prefixed_lines == 0:
        return True
    return 2 * negative_lines >= prefixed_lines and 2 * matching_lines >= prefixed_lines


def cancellation_convention(
    order_ids: pd.Series, quantity: np.ndarray, prefixes: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Which ``prefixes`` the data shows as a cancellation convention.

    A prefix holds when the ids carrying it have, after the prefix, the numeric structure of the
    file's other order ids (``C536379`` beside ``536365``) and their lines have negative
    quantities (see :func:`convention_holds`). Order ids like ``CA-2019-103800`` (Superstore) or ``CUST-17``
    are ordinary orders. A prefix no id carries holds trivially (the rule matches nothing).

    Returns
    -------
    held, rejected
        The prefixes that hold, and those the data contradicts.
    """
    ids = order_ids.astype("str").mask(order_ids.isna())
    uniq, inverse = np.unique(ids.fillna("\x00").to_numpy(dtype=object), return_inverse=True)
    uniq_s = pd.Series(uniq, dtype="str")
    q = np.asarray(quantity, dtype="float64")
    held, rejected = [], []
    for p in prefixes:
        pref_u = uniq_s.str.startswith(p).to_numpy(dtype=bool)
        pref = pref_u[inverse]
        n_pref = int(pref.sum())
        if n_pref == 0:
            held.append(p)
            continue
        plain_shapes = set(id_shape(uniq_s[~pref_u & (uniq_s != "\x00").to_numpy()]))
        rest_shape = id_shape(uniq_s[pref_u].str.slice(len(p)))
        match_u = np.zeros(len(uniq), dtype=bool)
        match_u[np.flatnonzero(pref_u)] = rest_shape.isin(plain_shapes).to_numpy()
        negative = int((pref & (q < 0)).sum())
        matching = int((pref & match_u[inverse]).sum())
        (held if convention_holds(n_pref, negative, matching) else rejected).append(p)
    return tuple(held), tuple(rejected)
