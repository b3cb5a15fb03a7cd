"""Cleaning rules with a data-quality report in which every rule is counted.

:func:`clean_lines` applies the rules of :class:`CleaningConfig` in a fixed order, each to what
the earlier ones left:

1. ``invalid_values`` - missing timestamp, missing / infinite / zero quantity, missing or
   infinite price: the line cannot be used. Always on.
   ``order_status`` (only when the file has a status column, e.g. Shopify's ``Financial
   Status`` / ``Cancelled at``, WooCommerce's ``Order Status``, Magento's / Shopware's
   ``status``) - lines of orders refunded, voided, pending, cancelled or failed
   (``excluded_statuses``): not purchases. Partially refunded orders are kept at full price
   and counted in a note (:mod:`crmkit.data.orders`).
1b. ``implausible_timestamp`` - an order before ``plausible_from`` (default 1990-01-01) or
   after ``plausible_to`` (default: the run's clock + 1 day): a typo'd year, a placeholder
   date (``0001-01-01``, ``9999-12-31``, read at the representable bound) or a clock error.
   Always dropped, so such a line never sets the default analysis date.
2. ``missing_customer_id`` - guest or unidentified lines (drop).
3. ``cancellations`` - lines of cancelled orders, marked by an order-id prefix (Online
   Retail's ``C``) where the data shows that convention (``cancellation_convention: auto``:
   the prefixed ids are otherwise shaped like the file's order ids and their quantities are
   negative; ``CA-2019-103800`` or ``CUST-17`` are ordinary orders), and 4. ``returns`` -
   other lines with a negative quantity.
   ``returns: drop`` removes both (the original purchase keeps counting in spend);
   ``returns: net`` keeps them as negative lines, so a return reduces the customer's spend
   (purchase counts use positive lines only).
5. ``non_positive_price`` - unit price <= 0 (free samples, adjustments). ``auto``: dropped on
   product-level lines; on order-level logs only negative values are dropped, because a
   zero-value order is still a purchase (CDNOW holds 80).
6. ``non_product_lines`` - postage, carriage, bank charges, fees, manual adjustments,
   discounts, samples, gift vouchers: product codes from ``non_product_codes`` (case
   insensitive) or matching ``non_product_patterns`` (drop). Product-level data only.
7. ``exact_duplicates`` - a line identical to an earlier one in every column. ``auto``: dropped
   where lines carry order ids (the same line twice in one order is double logging); kept in
   logs without order ids, where two equal purchases on one day are two purchases.
8. ``after_analysis_date`` - lines after the analysis date ``as_of`` (drop), when one is given.

The report gives, per rule, how many input lines match it on their own (``matched_in_input``),
how many it dropped or changed in sequence, the customers affected and lost, and the spend it
removed; the totals reconcile: ``revenue_in = revenue_out + sum(amount_dropped)``. A rule
that removes more than 1 % of the revenue or 5 % of the lines is also a warning
(``QualityReport.warnings``), printed at the end of a run and tagged on its MLflow run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, field_validator

from crmkit.data.io import RawLines, load_transactions
from crmkit.data.orders import (
    NOT_PURCHASE_STATUSES,
    cancellation_convention,
    rejected_note,
    status_mask,
)
from crmkit.data.report_warnings import rule_warnings
from crmkit.errors import ConfigError, shorten

__all__ = [
    "CleaningConfig",
    "QualityReport",
    "CleanResult",
    "clean_lines",
    "analysis_cutoff",
    "plausible_range",
    "DEFAULT_NON_PRODUCT_CODES",
]

#: Stock codes that are not products (UCI Online Retail's and common shop exports').
DEFAULT_NON_PRODUCT_CODES: tuple[str, ...] = (
    "POST",
    "DOT",
    "C2",
    "M",
    "D",
    "S",
    "B",
    "BANK CHARGES",
    "AMAZONFEE",
    "CRUK",
    "POSTAGE",
    "SHIPPING",
    "CARRIAGE",
    "DISCOUNT",
    "ADJUST",
    "ADJUSTMENT",
    "FEE",
    "TIP",
)
#: Regular expressions for non-product codes (gift vouchers, test lines).
DEFAULT_NON_PRODUCT_PATTERNS: tuple[str, ...] = (r"^gift_\d+_", r"^TEST")


class CleaningConfig(BaseModel):
    """The cleaning rules and their settings (``cleaning:`` in the pipeline YAML).

    Every field is documented in ``pipelines/train.yaml``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop_missing_customer_id: bool = True
    returns: Literal["drop", "net"] = "drop"
    cancellation_prefixes: tuple[str, ...] = ("C",)
    cancellation_convention: Literal["auto", "always"] = "auto"
    excluded_statuses: tuple[str, ...] = NOT_PURCHASE_STATUSES
    drop_non_positive_price: bool | Literal["auto"] = "auto"
    drop_non_product_lines: bool = True
    non_product_codes: tuple[str, ...] = DEFAULT_NON_PRODUCT_CODES
    non_product_patterns: tuple[str, ...] = DEFAULT_NON_PRODUCT_PATTERNS
    drop_exact_duplicates: bool | Literal["auto"] = "auto"
    as_of: datetime | None = None
    plausible_from: datetime = datetime(1990, 1, 1)
    plausible_to: datetime | None = None

    @field_validator("plausible_from", "plausible_to")
    @classmethod
    def _representable(cls, v: datetime | None) -> datetime | None:
        # Timestamps outside 1678-2261 are read at the representable bounds (1678-01-01,
        # 2261-12-31 23:59:59.999999); the range must leave those bounds out so that such
        # lines are always dropped.
        if v is not None and not datetime(1678, 1, 1) < v.replace(tzinfo=None) < datetime(
            2261, 12, 31
        ):
            raise ValueError("must lie after 1678-01-01 and before 2261-12-31")
        return v

    @field_validator("non_product_patterns")
    @classmethod
    def _patterns_compile(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pat in v:
            try:
                re.compile(pat)
            except re.error as exc:
                raise ValueError(
                    f"non_product_patterns: {pat!r} is not a valid regex ({exc})"
                ) from None
        return v

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> CleaningConfig:
        """Build from a config mapping, turning validation errors into :class:`ConfigError`."""
        from pydantic import ValidationError

        try:
            return cls(**(data or {}))
        except ValidationError as exc:
            msgs = "; ".join(
                f"cleaning.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"invalid cleaning configuration: {msgs}") from None


def plausible_range(cfg: CleaningConfig, now: pd.Timestamp | None = None) -> tuple:
    """The ``[first, last]`` order timestamps the ``implausible_timestamp`` rule accepts:
    ``plausible_from`` and ``plausible_to`` (default: ``now``, the run's clock in UTC,
    plus one day)."""
    low = pd.Timestamp(cfg.plausible_from)
    if cfg.plausible_to is not None:
        high = pd.Timestamp(cfg.plausible_to)
    else:
        clock = now if now is not None else pd.Timestamp.now(tz="UTC")
        high = clock.tz_localize(None) if clock.tzinfo is not None else clock
        high = high + pd.Timedelta(days=1)
    return (
        low.tz_convert("UTC").tz_localize(None) if low.tzinfo else low,
        high.tz_convert("UTC").tz_localize(None) if high.tzinfo else high,
    )


def analysis_cutoff(as_of: datetime | str | pd.Timestamp) -> pd.Timestamp:
    """The first instant *after* the analysis date.

    A date with no time (``2011-09-09``) covers that whole day, so lines before
    ``2011-09-10 00:00`` count; a timestamp with a time is an exact instant (lines up to and
    including it count, so the cutoff is one nanosecond later). Every stage compares
    ``order_ts < analysis_cutoff(as_of)``.
    """
    try:
        ts = pd.Timestamp(as_of)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(
            f"the analysis date (--as-of / as_of) {shorten(as_of)!r} is not a valid date "
            f"({exc}); give a real calendar date YYYY-MM-DD"
        ) from None
    if ts is pd.NaT:
        raise ConfigError("the analysis date (--as-of / as_of) is missing")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if ts == ts.normalize():
        return ts + pd.Timedelta(days=1)
    return ts + pd.Timedelta(1, "ns")


_RULE_DESCRIPTIONS = {
    "invalid_values": (
        "missing timestamp, missing/infinite/zero quantity, missing/infinite price or line amount"
    ),
    "implausible_timestamp": "order before {plausible_from} or after {plausible_to}",
    "order_status": "order {statuses}: not a purchase",
    "missing_customer_id": "no customer id (guest or unidentified lines)",
    "cancellations": "lines of cancelled orders (order id prefix {prefixes})",
    "returns": "other lines with a negative quantity",
    "non_positive_price": "{price_rule}",
    "non_product_lines": "postage, fees, charges, adjustments, samples, vouchers",
    "exact_duplicates": "line identical to an earlier line in every column",
    "after_analysis_date": "order after the analysis date {as_of}",
}


@dataclass
class QualityReport:
    """What loading and cleaning did, rule by rule.

    Attributes
    ----------
    rules
        One row per rule: ``rule, action, description, matched_in_input, rows_dropped,
        rows_changed, customers_affected, customers_lost, amount_dropped``.
    totals
        Rows, customers, orders and revenue in and out.
    source, level, notes
        From the loader.
    """

    rules: pd.DataFrame
    totals: dict[str, Any]
    source: str = "<frame>"
    level: str = "product"
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.warnings:
            self.warnings = rule_warnings(self.rules, self.totals)

    def rule(self, name: str) -> pd.Series:
        """The report row of one rule."""
        return self.rules.set_index("rule").loc[name]

    def to_frame(self) -> pd.DataFrame:
        """The per-rule table (a copy)."""
        return self.rules.copy()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything in the report."""
        rules = self.rules.astype(object).where(self.rules.notna(), None)
        return {
            "source": self.source,
            "level": self.level,
            "totals": {k: _plain(v) for k, v in self.totals.items()},
            "rules": [{k: _plain(v) for k, v in r.items()} for r in rules.to_dict("records")],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "config": {k: _plain(v) for k, v in self.config.items()},
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON text; written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def render(self) -> str:
        """A readable plain-text table for the terminal."""
        t = self.totals
        lines = [
            f"Data-quality report: {self.source} ({self.level}-level lines)",
            f"  in : {t['rows_in']:>10,} rows  {t['customers_in']:>8,} customers  "
            f"{t['orders_in']:>9,} orders  revenue {t['revenue_in']:>16,.2f}",
        ]
        head = (
            f"  {'rule':<22} {'action':<16} {'matched':>9} {'dropped':>9} {'changed':>8} "
            f"{'cust.lost':>9} {'amount dropped':>15}"
        )
        lines += [head, "  " + "-" * (len(head) - 2)]
        for r in self.rules.itertuples(index=False):
            lines.append(
                f"  {r.rule:<22} {r.action:<16} {r.matched_in_input:>9,} {r.rows_dropped:>9,} "
                f"{r.rows_changed:>8,} {r.customers_lost:>9,} {r.amount_dropped:>15,.2f}"
            )
        lines.append(
            f"  out: {t['rows_out']:>10,} rows  {t['customers_out']:>8,} customers  "
            f"{t['orders_out']:>9,} orders  revenue {t['revenue_out']:>16,.2f}"
        )
        for n in self.notes:
            lines.append(f"  note: {n}")
        for w in self.warnings:
            lines.append(f"  WARNING: {w}")
        return "\n".join(lines)


def _plain(v: Any) -> Any:
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (pd.Timestamp, datetime)):
        return v.isoformat()
    if isinstance(v, tuple):
        return list(v)
    return v


@dataclass
class CleanResult:
    """Cleaned order lines and the report that explains them."""

    lines: pd.DataFrame
    report: QualityReport
    level: str = "product"


def non_product_pattern(cfg: CleaningConfig) -> str | None:
    """The ``non_product_patterns`` as one regular expression (``None`` without patterns)."""
    if not cfg.non_product_patterns:
        return None
    return "|".join(f"(?:{p})" for p in cfg.non_product_patterns)


def _non_product_mask(products: pd.Series, cfg: CleaningConfig) -> np.ndarray:
    codes = {c.upper() for c in cfg.non_product_codes}
    upper = products.str.upper()
    mask = upper.isin(codes).fillna(False).to_numpy(dtype=bool, copy=True)
    pat = non_product_pattern(cfg)
    if pat is not None:
        mask |= products.str.contains(pat, regex=True).fillna(False).to_numpy(dtype=bool)
    return mask


@dataclass(frozen=True)
class RulePlan:
    """What each rule does for one input (shared by the local and the Spark engine).

    ``zero_is_purchase``: ``non_positive_price`` matches negative prices only (order-level
    log with ``auto``); ``actions`` and ``descriptions``: the report's columns per rule, in
    report order.
    """

    zero_is_purchase: bool
    actions: dict[str, str]
    descriptions: dict[str, str]


def rule_plan(
    cfg: CleaningConfig,
    *,
    has_products: bool,
    derived_orders: bool,
    has_status: bool = False,
    rejected_prefixes: tuple[str, ...] = (),
) -> RulePlan:
    """The action and description of every rule for lines with or without products and with
    order ids from the file or derived (customer-day); ``order_status`` only for lines with a
    status column; ``cancellations`` skipped when the data contradicts every configured
    prefix (``rejected_prefixes``, :func:`crmkit.data.orders.cancellation_convention`)."""
    zero_is_purchase = cfg.drop_non_positive_price == "auto" and not has_products
    price_rule = (
        "negative unit price (zero-value orders kept: order-level log)"
        if zero_is_purchase
        else "unit price zero or negative"
    )
    drop_dups = cfg.drop_exact_duplicates
    if drop_dups == "auto":
        drop_dups = not derived_orders
    ret_action = "drop" if cfg.returns == "drop" else "net (reduce spend)"
    prefixes = [p for p in cfg.cancellation_prefixes if p not in rejected_prefixes]
    actions = {
        "invalid_values": "drop",
        "implausible_timestamp": "drop",
        "order_status": "drop" if cfg.excluded_statuses else "keep",
        "missing_customer_id": "drop" if cfg.drop_missing_customer_id else "keep",
        "cancellations": (
            ret_action
            if prefixes or not rejected_prefixes
            else "skipped (no prefix convention in the data)"
        ),
        "returns": ret_action,
        "non_positive_price": "drop" if cfg.drop_non_positive_price else "keep",
        "non_product_lines": (
            ("drop" if cfg.drop_non_product_lines else "keep")
            if has_products
            else "skipped (no products)"
        ),
        "exact_duplicates": (
            "drop" if drop_dups else ("keep (no order ids)" if derived_orders else "keep")
        ),
        "after_analysis_date": "drop" if cfg.as_of is not None else "skipped (no as_of)",
    }
    if not has_status:
        del actions["order_status"]
    descriptions = {
        rule: text.format(
            prefixes=prefixes if rejected_prefixes else list(cfg.cancellation_prefixes),
            statuses=", ".join(cfg.excluded_statuses),
            as_of=cfg.as_of if cfg.as_of else None,
            price_rule=price_rule,
            plausible_from=f"{pd.Timestamp(cfg.plausible_from):%Y-%m-%d}",
            plausible_to=(
                f"{pd.Timestamp(cfg.plausible_to)}"
                if cfg.plausible_to is not None
                else "the run's clock + 1 day"
            ),
        )
        for rule, text in _RULE_DESCRIPTIONS.items()
        if rule in actions
    }
    return RulePlan(zero_is_purchase, actions, descriptions)


def _exact_duplicates(df: pd.DataFrame) -> np.ndarray:
    """``df.duplicated(keep="first")``, exactly, but fast on millions of lines: rows are
    first bucketed by a 64-bit row hash, and only rows whose hash occurs more than once are
    compared column by column."""
    if len(df) < 100_000:
        return df.duplicated(keep="first").to_numpy()
    h = pd.util.hash_pandas_object(df, index=False).to_numpy()
    cand = pd.Series(h).duplicated(keep=False).to_numpy()
    out = np.zeros(len(df), dtype=bool)
    if cand.any():
        out[np.flatnonzero(cand)] = df[cand].duplicated(keep="first").to_numpy()
    return out


def clean_lines(
    data: RawLines | pd.DataFrame | str | Path,
    config: CleaningConfig | dict[str, Any] | None = None,
) -> CleanResult:
    """Apply the cleaning rules and count each one.

    Parameters
    ----------
    data
        Loaded lines (:func:`~crmkit.data.io.load_transactions`), or a frame / path to load.
    config
        The rules' settings; defaults follow the module docstring.

    Returns
    -------
    CleanResult
        ``lines`` in canonical columns (plus ``amount``, the line total, negative for returns
        kept with ``returns: net``) and the :class:`QualityReport`.
    """
    if not isinstance(data, RawLines):
        data = load_transactions(data)
    cfg = config if isinstance(config, CleaningConfig) else CleaningConfig.from_mapping(config)
    df = data.frame
    n = len(df)
    has_products = "product_id" in df.columns

    cust = df["customer_id"]
    qty = df["quantity"].to_numpy(dtype="float64")
    price = df["unit_price"].to_numpy(dtype="float64")
    amount = df["amount"].to_numpy(dtype="float64")
    amount_finite = np.where(np.isfinite(amount), amount, 0.0)

    # Each rule's mask on the whole input (independent of the others).
    masks: dict[str, np.ndarray] = {}
    masks["invalid_values"] = (
        df["order_ts"].isna().to_numpy()
        | ~np.isfinite(qty)
        | (qty == 0)
        | ~np.isfinite(price)
        | ~np.isfinite(amount)  # e.g. quantity x price overflowing
    )
    low, high = plausible_range(cfg)
    ts = df["order_ts"]
    masks["implausible_timestamp"] = ((ts < low) | (ts > high)).to_numpy(dtype=bool)
    has_status = "order_status" in df.columns
    notes = list(data.notes)
    if has_status:
        masks["order_status"], note = status_mask(df["order_status"], cfg.excluded_statuses)
        notes += [note] if note else []
        df = df.drop(columns="order_status")
    masks["missing_customer_id"] = cust.isna().to_numpy()
    prefixes, rejected = tuple(cfg.cancellation_prefixes), ()
    if prefixes and cfg.cancellation_convention == "auto":
        prefixes, rejected = cancellation_convention(df["order_id"], qty, prefixes)
        notes += [rejected_note(rejected)] if rejected else []
    cancel = np.zeros(n, dtype=bool)
    if prefixes:
        cancel = df["order_id"].str.startswith(prefixes).fillna(False).to_numpy(dtype=bool)
    masks["cancellations"] = cancel
    masks["returns"] = (qty < 0) & ~cancel
    derived_orders = not data.columns or "order_id" not in data.columns.values()
    plan = rule_plan(
        cfg,
        has_products=has_products,
        derived_orders=derived_orders,
        has_status=has_status,
        rejected_prefixes=rejected,
    )
    masks["non_positive_price"] = price < 0 if plan.zero_is_purchase else price <= 0
    if has_products:
        masks["non_product_lines"] = _non_product_mask(df["product_id"], cfg)
    masks["exact_duplicates"] = _exact_duplicates(df)
    if cfg.as_of is not None:
        cutoff = analysis_cutoff(cfg.as_of)
        masks["after_analysis_date"] = (df["order_ts"] >= cutoff).to_numpy()
    actions = plan.actions

    keep = np.ones(n, dtype=bool)
    records = []
    # Customers as integer codes (-1: missing) so per-rule customer counts are bincounts.
    cust_codes, cust_uniques = pd.factorize(cust, use_na_sentinel=True)
    n_cust = len(cust_uniques)
    has_cust = cust_codes >= 0

    def customers_with(rows: np.ndarray) -> np.ndarray:
        return np.bincount(cust_codes[rows & has_cust], minlength=n_cust) > 0

    present = customers_with(keep)
    for rule in plan.actions:
        mask = masks.get(rule)
        desc = plan.descriptions[rule]
        rec = {
            "rule": rule,
            "action": actions[rule],
            "description": desc,
            "matched_in_input": int(mask.sum()) if mask is not None else 0,
            "rows_dropped": 0,
            "rows_changed": 0,
            "customers_affected": 0,
            "customers_lost": 0,
            "amount_dropped": 0.0,
        }
        if mask is not None:
            hit = keep & mask
            rec["customers_affected"] = int(customers_with(hit).sum())
            if actions[rule] == "drop":
                rec["rows_dropped"] = int(hit.sum())
                rec["amount_dropped"] = float(amount_finite[hit].sum())
                keep &= ~mask
                still = customers_with(keep)
                rec["customers_lost"] = int((present & ~still).sum())
                present = still
            elif actions[rule].startswith("net"):
                rec["rows_changed"] = int(hit.sum())
        records.append(rec)

    out = df.loc[keep]
    if cfg.returns == "net":
        # A return line counts against spend whatever sign the export used for its quantity.
        ret = (masks["cancellations"] | masks["returns"])[keep]
        q = out["quantity"].to_numpy(copy=True)
        q[ret] = -np.abs(q[ret])
        out = out.assign(quantity=q, amount=q * out["unit_price"].to_numpy())
    out = out.reset_index(drop=True)

    rules = pd.DataFrame.from_records(records)
    totals = {
        "rows_in": n,
        "rows_out": len(out),
        "customers_in": n_cust,
        "customers_out": int(out["customer_id"].nunique(dropna=True)),
        "orders_in": int(df["order_id"].nunique(dropna=True)),
        "orders_out": int(out["order_id"].nunique(dropna=True)),
        "revenue_in": float(amount_finite.sum()),
        "revenue_out": float(out["amount"].sum()),
        "first_order_ts": out["order_ts"].min() if len(out) else None,
        "last_order_ts": out["order_ts"].max() if len(out) else None,
    }
    if has_products:
        totals["products_out"] = int(out["product_id"].nunique(dropna=True))
    report = QualityReport(
        rules=rules,
        totals=totals,
        source=data.source,
        level=data.level,
        notes=notes,
        config=cfg.model_dump(),
    )
    return CleanResult(lines=out, report=report, level=data.level)
