"""Ranked cross-sell, up-sell, re-sell and reactivation lists per customer, and their
evaluation on a time holdout.

Everything is computed at an analysis date ``as_of``: only lines with
``order_ts < analysis_cutoff(as_of)`` are read (:func:`crmkit.data.clean.analysis_cutoff`), and
only purchase lines (``quantity > 0``). All work is vectorised over customers with sparse
customer x product matrices (no Python loop over customers or orders).

Candidates (one per customer and product)
-----------------------------------------
``cross_sell``
    Products the customer has never bought that follow, by association rules mined on the
    orders before ``as_of`` (:mod:`crmkit.models.rules`), from products they bought. The
    strength of ``b`` for a customer is a noisy-OR over every rule ``A => {b}`` whose
    antecedent the customer has bought, blended with ``b``'s base rate for the shop's best
    sellers of the last ``popular_days`` days: ``s = -log(1 - base(b)) - sum log(1 -
    confidence)``, so several weak triggers add up and popular products fill thin lists.
``up_sell``
    (needs a ``category``, from the lines or the catalogue) A product of a category the
    customer buys, priced at least ``1 + upsell_min_step`` times a product they bought in that
    category, and popular among the buyers of that product: ``q(a, u)`` is the share of
    customers who bought ``a`` that also bought ``u``; ``s = -sum log(1 - q)`` over the
    customer's cheaper products ``a`` of the category.
``resell``
    Products the customer bought before. Features: the number of orders with it (``k``), the
    expected purchases within the horizon at the customer's past rate
    (``k x horizon / max(tenure, horizon)``), the days since it was last bought, the typical
    repurchase gap (the customer's own when ``k >= 2``, else the geometric mean of the
    product's repeat buyers' gaps) and the ratio of the two (*due* when ``k >= 2`` and the gap
    has elapsed), the share of the customer's orders that held it and the product's base rate.
``reactivation``
    For lapsed customers (RFM segments ``at_risk``, ``hibernating``, ``lost`` by default, see
    :mod:`crmkit.features.segments`) whose total spend is at least the
    ``reactivation_min_value_quantile`` quantile over all customers: their best re-sell
    product as a win-back offer, always ranked first.

Probability and score
---------------------
Every candidate's strength becomes a probability of purchase within the next
``horizon_days`` by *calibration on the data's own past*: the same candidates are generated at
``as_of - horizon_days`` from the lines before it (for a sample of at most
``max_calibration_customers`` customers), labelled by whether the customer bought the product
in the following ``horizon_days``, and one L2-penalised logistic regression per kind is fitted
on them (features: the strength above, the product's base rate, the share of the customer's
products in its category, and the customer's recency, orders, tenure and breadth; for re-sell
the features listed there). ``calibration_`` reports, per kind, the candidates, purchases,
AUC and coefficients. Rules and the up-sell table are those of ``as_of`` (a mild optimism in
the cross-/up-sell calibration, never in the lists). Kinds with fewer than
``min_calibration_candidates`` candidates (or fewer than 10 purchases) at the earlier date use
the uncalibrated strengths: ``1 - exp(-s)`` for cross-/up-sell, ``1 - exp(-expected
purchases)`` (halved when last bought more than two horizons ago) for re-sell.

``score = P(buy within horizon) x value x P(alive) x CLV weight``. ``value`` is the value of
one purchase: with ``value_per="line"`` (default) the unit value times the expected units (the
customer's own mean units per order for re-sell, the product's mean units per order
otherwise), with ``value_per="unit"`` the unit value alone, with ``value_per="none"`` 1 (rank by
probability). The unit value is the product's
realised mean unit price over the lines (sum of amounts / units), replaced by a
``catalogue``'s ``unit_price`` / ``price``, or its unit margin (``margin`` in the lines or the
catalogue) when there is one (``value="auto"``). ``P(alive)`` and the CLV weight
(``clv / mean(clv)``) come from the optional ``customer_scores`` frame and are 1 when absent.
P(alive) and CLV never reorder a customer's own list; they make scores comparable across
customers (e.g. to pick a campaign's audience).

Lists
-----
``top_n`` rows per customer, no product twice, nothing the customer bought in the last
``exclude_recent_days`` days unless it is a replenishment that is due (bought at least twice
and the typical gap has elapsed). ``round(unseen_share * top_n)`` slots are reserved for
products the customer has never bought (cross- and up-sell) when there are candidates; the
other slots go to the highest scores of any kind. Rows are ranked by score (reactivation
first).

Learned state and new data
--------------------------
:meth:`Recommender.save_state` writes the learned, product-level state (parameters, product
index, prices / values / categories / names / popularity, the rule and up-sell matrices, the
calibration coefficients, notes) as JSON, Parquet and ``.npz`` files without any customer id
or customer-level row; :meth:`Recommender.load_state` reads it back, and
:meth:`Recommender.recommend_for` applies it to new order lines at a new ``as_of``: customer
histories come from those lines, everything product-level stays as learned (see there).

Evaluation
----------
:func:`evaluate_recommendations` compares lists with what customers bought in a holdout
window; :func:`popularity_baseline` and :func:`own_items_baseline` give the two reference
lists; :func:`compare_with_baselines` runs all of it for one cutoff.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from crmkit.data.clean import analysis_cutoff
from crmkit.errors import ConfigError, DataContractError
from crmkit.models.rules import RULE_COLUMNS, AssociationRules, BasketMatrix, RuleArrays

__all__ = [
    "KINDS",
    "RECOMMENDATION_COLUMNS",
    "Recommender",
    "PopulationStats",
    "NEW_PRODUCT_COLUMNS",
    "recommend",
    "evaluate_recommendations",
    "popularity_baseline",
    "own_items_baseline",
    "evaluate_against_baselines",
    "compare_with_baselines",
    "empty_recommendations",
]

#: The kinds of recommendation, in the order used for codes.
KINDS: tuple[str, ...] = ("cross_sell", "up_sell", "resell", "reactivation")
#: Columns of a recommendation list.
RECOMMENDATION_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "rank",
    "product_id",
    "kind",
    "score",
    "reason",
)

_CROSS, _UP, _RESELL, _REACT = range(4)
_DAY_NS = 86_400 * 10**9

#: :meth:`Recommender.recommend` builds the lists of this many customers at a time (the same
#: output; bounds the memory of the candidate pools).
CHUNK_CUSTOMERS = 200_000
#: Features of each kind's calibration model (logistic regression), for ``calibration_``.
_FEATURES: dict[int, tuple[str, ...]] = {
    0: ("log_strength", "log_base_rate", "category_share"),
    1: ("log_strength", "log_base_rate", "category_share"),
    2: (
        "log1p_orders_with_product",
        "log_expected_in_horizon",
        "log1p_days_since_bought",
        "log1p_due_ratio",
        "due",
        "log_share_of_orders",
        "orders_x_days_since",
        "log_base_rate",
    ),
}
_CUSTOMER_FEATURES = ("log1p_days_since_order", "log1p_orders", "log1p_tenure", "log1p_products")


def empty_recommendations() -> pd.DataFrame:
    """A well-formed recommendation frame with zero rows."""
    return pd.DataFrame(
        {
            "customer_id": pd.Series([], dtype="str"),
            "rank": pd.Series([], dtype=np.int64),
            "product_id": pd.Series([], dtype="str"),
            "kind": pd.Series([], dtype="str"),
            "score": pd.Series([], dtype=np.float64),
            "reason": pd.Series([], dtype="str"),
        }
    )


# --------------------------------------------------------------------------------------------
# purchase history


@dataclass(frozen=True, eq=False)
class _Purchases:
    """Distinct (order, product) purchases before the cutoff, as integer codes."""

    customers: pd.Index
    products: pd.Index
    op_cust: np.ndarray  # int32, per (order, product)
    op_prod: np.ndarray  # int32
    op_order: np.ndarray  # int32 (0..n_orders-1)
    op_day: np.ndarray  # int32, days since 1970-01-01
    op_qty: np.ndarray  # float64, units of the product in the order
    o_cust: np.ndarray  # per order
    o_day: np.ndarray
    o_amount: np.ndarray
    cutoff_day: int  # first day not included
    line_take: np.ndarray | None = None  # rows of the past purchase lines
    line_prod: np.ndarray | None = None  # their product codes

    @property
    def n_customers(self) -> int:
        return len(self.customers)

    @property
    def n_products(self) -> int:
        return len(self.products)


def _require_columns(lines: pd.DataFrame, cols: Sequence[str]) -> None:
    if "product_id" not in lines.columns:
        raise DataContractError(
            "the lines have no product_id: an order-level log; product recommendations need "
            "products and are skipped",
            column="product_id",
            rule="order_level_log",
        )
    for c in cols:
        if c not in lines.columns:
            raise DataContractError(
                f"recommendations need the column {c!r}", column=c, rule="required_column"
            )


def _lines_frame(lines: Any) -> pd.DataFrame:
    """The order-line frame of ``lines`` (a DataFrame or a cleaned-lines object with
    ``.frame``), with the columns recommendations need."""
    if not isinstance(lines, pd.DataFrame):
        if hasattr(lines, "frame") and getattr(lines, "level", "product") != "product":
            _require_columns(pd.DataFrame(columns=["customer_id"]), ())
        lines = getattr(lines, "frame", lines)
    if not isinstance(lines, pd.DataFrame):
        raise DataContractError(
            f"order lines must be a DataFrame, got {type(lines).__name__}", rule="input_type"
        )
    _require_columns(lines, ("customer_id", "order_id", "order_ts", "unit_price"))
    return lines


def _cutoff(as_of: Any) -> pd.Timestamp:
    try:
        return analysis_cutoff(as_of)
    except (TypeError, ValueError) as exc:
        raise DataContractError(
            f"as_of must be a date or timestamp, got {as_of!r}", rule="as_of"
        ) from exc


def _past_mask(lines: pd.DataFrame, cutoff: pd.Timestamp) -> np.ndarray:
    ts = lines["order_ts"]
    if not pd.api.types.is_datetime64_dtype(ts.dtype):
        raise DataContractError(
            f"order_ts must be naive datetime64, got {ts.dtype}",
            column="order_ts",
            rule="dtype",
            hint="pass cleaned lines (crmkit.data.clean.clean_lines(...).lines)",
        )
    t = ts.to_numpy(dtype="datetime64[ns]")
    m = t < np.datetime64(cutoff.as_unit("ns").asm8)
    if "quantity" in lines.columns:
        m &= lines["quantity"].to_numpy(dtype=np.float64, na_value=0.0) > 0
    m &= lines["product_id"].notna().to_numpy() & lines["customer_id"].notna().to_numpy()
    return m


def _sorted_codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    codes, uniq = pd.factorize(values, sort=False)
    uniq = pd.Index(uniq, dtype="str")
    order = np.argsort(uniq.to_numpy(dtype=object), kind="stable")
    remap = np.empty(len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[codes].astype(np.int32), uniq[order]


def _purchases(
    lines: pd.DataFrame,
    cutoff: pd.Timestamp,
    extra_products: pd.Index | None,
    *,
    known_products: pd.Index | None = None,
) -> _Purchases:
    """The purchases before ``cutoff``. Product codes: positions in the sorted union of the
    lines' products and ``extra_products``; with ``known_products`` (a fitted product index),
    positions in it, the lines' other products appended after it in sorted order."""
    m = _past_mask(lines, cutoff)
    if not m.any():
        raise DataContractError(
            f"no purchase before the analysis date ({cutoff - pd.Timedelta(1, 'ns')})",
            rule="empty_window",
            hint="choose an as_of date inside the data's date range",
        )
    take = None if m.all() else np.flatnonzero(m)

    def col(name: str) -> pd.Series:
        s = lines[name]
        return s if take is None else s.iloc[take]

    ccode, customers = _sorted_codes(col("customer_id").astype("str"))
    pcode, products = _sorted_codes(col("product_id").astype("str"))
    if known_products is not None:
        pos = known_products.get_indexer(products)
        new = pos < 0
        pos[new] = len(known_products) + np.arange(int(new.sum()))
        pcode = pos[pcode].astype(np.int32)
        products = pd.Index(
            np.r_[known_products.to_numpy(dtype=object), products[new].to_numpy(dtype=object)],
            dtype="str",
        )
    elif extra_products is not None and len(extra_products):
        allp = products.union(pd.Index(extra_products, dtype="str")).sort_values()
        pcode = allp.get_indexer(products)[pcode].astype(np.int32)
        products = allp
    ocode, _ = pd.factorize(col("order_id"), sort=False)
    day = (col("order_ts").to_numpy(dtype="datetime64[ns]").view(np.int64) // _DAY_NS).astype(
        np.int32
    )
    if "amount" in lines.columns:
        amount = col("amount").to_numpy(dtype=np.float64, na_value=0.0)
    else:
        amount = col("quantity").to_numpy(dtype=np.float64) * col("unit_price").to_numpy(
            dtype=np.float64
        )
    n_o = int(ocode.max()) + 1
    o_day = np.full(n_o, np.iinfo(np.int32).max, dtype=np.int32)
    np.minimum.at(o_day, ocode, day)
    o_cust = np.zeros(n_o, dtype=np.int32)
    o_cust[ocode] = ccode
    o_amount = np.bincount(ocode, weights=amount, minlength=n_o)
    n_p = len(products)
    key = ocode.astype(np.int64) * n_p + pcode
    uk, inv = np.unique(key, return_inverse=True)
    qty = (
        col("quantity").to_numpy(dtype=np.float64, na_value=1.0)
        if "quantity" in lines.columns
        else np.ones(len(key))
    )
    op_qty = np.bincount(inv.reshape(-1), weights=qty, minlength=len(uk))
    op_order = (uk // n_p).astype(np.int32)
    op_prod = (uk % n_p).astype(np.int32)
    return _Purchases(
        customers=pd.Index(customers, name="customer_id"),
        products=pd.Index(products, name="product_id"),
        op_cust=o_cust[op_order],
        op_prod=op_prod,
        op_order=op_order,
        op_day=o_day[op_order],
        op_qty=op_qty,
        o_cust=o_cust,
        o_day=o_day,
        o_amount=o_amount,
        cutoff_day=int(pd.Timestamp(cutoff).value // _DAY_NS),
        line_take=take if take is not None else np.arange(len(lines)),
        line_prod=pcode,
    )


@dataclass(frozen=True, eq=False)
class _Snapshot:
    """Customer x product history before ``day`` (exclusive)."""

    day: int
    n_c: int
    n_p: int
    pc: np.ndarray  # pairs, sorted by (customer, product)
    pp: np.ndarray
    k: np.ndarray  # orders with the product
    first: np.ndarray  # first / last day bought
    last: np.ndarray
    qty: np.ndarray  # units bought over all those orders
    c_orders: np.ndarray  # per customer (0: no order before day)
    c_first: np.ndarray
    c_last: np.ndarray
    c_spend: np.ndarray
    H: sp.csr_matrix  # customers x products, bool

    @property
    def as_of_day(self) -> int:
        return self.day - 1


def _snapshot(pur: _Purchases, day: int, customers: np.ndarray | None = None) -> _Snapshot:
    """History before ``day``; pairs only for ``customers`` (codes) when given."""
    n_c, n_p = pur.n_customers, pur.n_products
    m = pur.op_day < day
    if customers is not None:
        cm = np.zeros(n_c, dtype=bool)
        cm[customers] = True
        m &= cm[pur.op_cust]
    key = pur.op_cust[m].astype(np.int64) * n_p + pur.op_prod[m]
    d = pur.op_day[m]
    q = pur.op_qty[m]
    order = np.argsort(key, kind="stable")
    key, d, q = key[order], d[order], q[order]
    if len(key):
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        k = np.diff(np.r_[starts, len(key)]).astype(np.int32)
        first = np.minimum.reduceat(d, starts)
        last = np.maximum.reduceat(d, starts)
        qty = np.add.reduceat(q, starts)
        uk = key[starts]
    else:
        k = first = last = np.zeros(0, np.int32)
        qty = np.zeros(0)
        uk = np.zeros(0, np.int64)
    pc = (uk // n_p).astype(np.int32)
    pp = (uk % n_p).astype(np.int32)
    om = pur.o_day < day
    oc, od = pur.o_cust[om], pur.o_day[om]
    c_orders = np.bincount(oc, minlength=n_c).astype(np.int64)
    c_spend = np.bincount(oc, weights=pur.o_amount[om], minlength=n_c)
    c_first = np.full(n_c, np.iinfo(np.int32).max, dtype=np.int32)
    c_last = np.full(n_c, np.iinfo(np.int32).min, dtype=np.int32)
    np.minimum.at(c_first, oc, od)
    np.maximum.at(c_last, oc, od)
    indptr = np.zeros(n_c + 1, dtype=np.int64)
    np.cumsum(np.bincount(pc, minlength=n_c), out=indptr[1:])
    H = sp.csr_matrix((np.ones(len(pp), dtype=bool), pp, indptr), shape=(n_c, n_p))
    return _Snapshot(
        day, n_c, n_p, pc, pp, k, first, last, qty, c_orders, c_first, c_last, c_spend, H
    )


# --------------------------------------------------------------------------------------------
# catalogue


@dataclass(frozen=True, eq=False)
class _Catalogue:
    price: np.ndarray  # per product code (NaN: unknown)
    value: np.ndarray  # unit price or unit margin
    quantity: np.ndarray  # median units per order line
    category: np.ndarray | None  # int codes, -1 unknown
    categories: pd.Index | None
    names: np.ndarray  # object labels for reasons
    value_basis: str


_PRICE_COLUMNS = ("unit_price", "price", "list_price")


def _first_label(
    lines: pd.DataFrame, column: str, take: np.ndarray, code: np.ndarray, n_p: int
) -> pd.Series:
    """The ``column`` value of each product's first past line (``None`` where absent)."""
    first = np.full(n_p, len(code), dtype=np.int64)
    np.minimum.at(first, code, np.arange(len(code)))
    ok = first < len(code)
    out = pd.Series(np.full(n_p, None, dtype=object))
    vals = lines[column].iloc[take[first[ok]]].to_numpy(dtype=object)
    out.iloc[np.flatnonzero(ok)] = vals
    return out.where(out.notna(), None)


def _catalogue(
    lines: pd.DataFrame,
    pur: _Purchases,
    catalogue: pd.DataFrame | None,
    value: str,
) -> _Catalogue:
    products = pur.products
    n_p = len(products)
    take, code = pur.line_take, pur.line_prod
    qty = (
        lines["quantity"].to_numpy(dtype=np.float64)[take]
        if "quantity" in lines.columns
        else np.ones(len(take))
    )
    if "amount" in lines.columns:
        amount = lines["amount"].to_numpy(dtype=np.float64)[take]
    else:
        amount = qty * lines["unit_price"].to_numpy(dtype=np.float64)[take]
    units = np.bincount(code, weights=qty, minlength=n_p)
    with np.errstate(divide="ignore", invalid="ignore"):
        # realised mean unit price, and mean units per order of the product
        price = np.bincount(code, weights=amount, minlength=n_p) / units
        n_op = np.bincount(pur.op_prod, minlength=n_p)
        quantity = np.where(n_op > 0, units / np.maximum(n_op, 1), 1.0)
    margin = None
    if "margin" in lines.columns:
        mg = lines["margin"].to_numpy(dtype=np.float64)[take]
        fin = np.isfinite(mg)
        with np.errstate(divide="ignore", invalid="ignore"):
            margin = np.bincount(code[fin], weights=(mg * qty)[fin], minlength=n_p) / np.bincount(
                code[fin], weights=qty[fin], minlength=n_p
            )
    cat_codes: np.ndarray | None = None
    categories: pd.Index | None = None
    cat_labels = (
        _first_label(lines, "category", take, code, n_p) if "category" in lines.columns else None
    )
    names = (
        _first_label(lines, "product_name", take, code, n_p)
        if "product_name" in lines.columns
        else None
    )
    if catalogue is not None:
        cat = _check_catalogue(catalogue)
        pos = products.get_indexer(cat["product_id"].astype("str"))
        ok = pos >= 0
        pcol = next((c for c in _PRICE_COLUMNS if c in cat.columns), None)
        if pcol is not None:
            v = cat[pcol].to_numpy(dtype=np.float64)[ok]
            fin = np.isfinite(v)
            price[pos[ok][fin]] = v[fin]
        if "margin" in cat.columns:
            margin = np.full(n_p, np.nan) if margin is None else margin
            v = cat["margin"].to_numpy(dtype=np.float64)[ok]
            fin = np.isfinite(v)
            margin[pos[ok][fin]] = v[fin]
        if "category" in cat.columns:
            cl = pd.Series(np.full(n_p, None, dtype=object)) if cat_labels is None else cat_labels
            cl.iloc[pos[ok]] = cat["category"].to_numpy(dtype=object)[ok]
            cat_labels = cl
        if "product_name" in cat.columns:
            nm = pd.Series(np.full(n_p, None, dtype=object)) if names is None else names
            nm.iloc[pos[ok]] = cat["product_name"].to_numpy(dtype=object)[ok]
            names = nm
    if cat_labels is not None and cat_labels.notna().any():
        cc, categories = pd.factorize(cat_labels.astype("str").where(cat_labels.notna()))
        cat_codes = cc.astype(np.int32)
    label = products.to_numpy(dtype=object)
    if names is not None:
        nm = names.to_numpy(dtype=object)
        good = pd.notna(nm)
        label = np.where(good, nm, label)
    label = np.array([str(x).strip() for x in label], dtype=object)
    if value not in ("auto", "price", "margin"):
        raise ConfigError(f"value must be 'auto', 'price' or 'margin', got {value!r}")
    basis = "margin" if (value == "margin" or (value == "auto" and margin is not None)) else "price"
    if basis == "margin":
        if margin is None:
            raise DataContractError(
                "value='margin' needs a margin column (in the lines or the catalogue)",
                column="margin",
                rule="required_column",
            )
        val = np.where(np.isfinite(margin), margin, price)
    else:
        val = price
    val = np.where(np.isfinite(val) & (val > 0), val, 0.0)
    return _Catalogue(price, val, quantity, cat_codes, categories, label, basis)


def _check_catalogue(cat: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(cat, pd.DataFrame):
        raise DataContractError(
            f"the catalogue must be a DataFrame, got {type(cat).__name__}", rule="input_type"
        )
    if "product_id" not in cat.columns and cat.index.name == "product_id":
        cat = cat.reset_index()
    if "product_id" not in cat.columns:
        raise DataContractError(
            "the catalogue needs a product_id column", column="product_id", rule="required_column"
        )
    if not any(c in cat.columns for c in (*_PRICE_COLUMNS, "margin")):
        raise DataContractError(
            "the catalogue has no prices: it needs a unit_price (or price) or margin column "
            "to value recommendations",
            column="unit_price",
            rule="catalogue_prices",
            hint="add the products' prices or margins, or leave the catalogue out "
            "(prices then come from the order lines)",
        )
    return cat


# --------------------------------------------------------------------------------------------
# candidates


@dataclass
class _Candidates:
    """Candidates of one kind: customer and product codes, the raw strength, the features of
    the calibration model and what the reasons need."""

    kind: int
    cust: np.ndarray
    prod: np.ndarray
    raw: np.ndarray
    X: np.ndarray
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cust)

    def take(self, sel: np.ndarray) -> _Candidates:
        return _Candidates(
            self.kind,
            self.cust[sel],
            self.prod[sel],
            self.raw[sel],
            self.X[sel],
            {k: v[sel] for k, v in self.aux.items()},
        )


@dataclass
class _Pool:
    """Candidates of every kind together, with their probabilities."""

    cust: np.ndarray
    prod: np.ndarray
    kind: np.ndarray  # int8
    raw: np.ndarray
    p: np.ndarray
    aux: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.cust)

    @classmethod
    def concat(cls, parts: list[_Candidates], probs: list[np.ndarray]) -> _Pool:
        keys = set().union(*(q.aux.keys() for q in parts))
        aux = {
            k: np.concatenate([q.aux.get(k, np.full(len(q), np.nan)) for q in parts]) for k in keys
        }
        return cls(
            np.concatenate([q.cust for q in parts]).astype(np.int32),
            np.concatenate([q.prod for q in parts]).astype(np.int32),
            np.concatenate([np.full(len(q), q.kind, np.int8) for q in parts]),
            np.concatenate([q.raw for q in parts]),
            np.concatenate(probs),
            aux,
        )


@dataclass(frozen=True, eq=False)
class _Logit:
    """A logistic regression on standardised features (the calibration model of a kind)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # intercept first

    def predict(self, X: np.ndarray) -> np.ndarray:
        """P(bought) of each row of ``X``, computed row by row in a fixed order: column after
        column, in float64, with elementwise ufuncs (no BLAS). A matrix-vector product
        (``X @ w``) sums a row's terms in an order that depends on the row's position and the
        number of rows (the kernels' unrolled blocks and tails, the threads), so a customer's
        score would depend on who else is in the chunk (the last bits of 0.4 % of scores)."""
        w = self.coef[1:] / self.scale
        z = np.full(len(X), self.coef[0] - math.fsum(self.mean * w))
        for j in range(X.shape[1]):
            z += X[:, j] * w[j]
        np.clip(z, -30.0, 30.0, out=z)
        return 1.0 / (1.0 + np.exp(-z))


def _fit_logit(X: np.ndarray, y: np.ndarray, l2: float = 1e-3, max_iter: int = 50) -> _Logit:
    """L2-penalised logistic regression by damped Newton steps (a handful of iterations)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    Z = np.column_stack([np.ones(len(y)), (X - mean) / scale])
    n, d = Z.shape
    pen = np.full(d, l2)
    pen[0] = 0.0

    def loss(w: np.ndarray) -> float:
        z = Z @ w
        return float((np.logaddexp(0.0, z) - y * z).mean() + pen @ (w * w))

    w = np.zeros(d)
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    w[0] = math.log(rate / (1.0 - rate))
    f = loss(w)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-np.clip(Z @ w, -30.0, 30.0)))
        g = Z.T @ (p - y) / n + 2.0 * pen * w
        hess = (Z * (p * (1.0 - p))[:, None]).T @ Z / n + np.diag(2.0 * pen + 1e-9)
        step = np.linalg.solve(hess, g)
        t = 1.0
        while t > 1e-4:
            w_new = w - t * step
            f_new = loss(w_new)
            if f_new <= f:
                break
            t *= 0.5
        else:
            break
        done = f - f_new < 1e-10
        w, f = w_new, f_new
        if done:
            break
    return _Logit(mean, scale, w)


def _auc(p: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata

    n1 = int(y.sum())
    n0 = len(y) - n1
    if not n1 or not n0:
        return float("nan")
    r = rankdata(p)
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _segment_starts(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each run of equal values in sorted ``rows``."""
    if not len(rows):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    return starts, np.diff(np.r_[starts, len(rows)])


def _topk_mask(rows: np.ndarray, vals: np.ndarray, k: int | np.ndarray) -> np.ndarray:
    """Entries among the ``k`` largest ``vals`` of their row (``rows`` sorted ascending; ties
    keep the earlier entries). ``k`` is one number or an array indexed by row value.

    Rows with more than ``k`` entries are padded into dense blocks of similar width, sorted
    along the rows (a C loop over short rows), and cut at their own ``k``-th largest value:
    no sort of all entries together.
    """
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=bool)
    starts, counts = _segment_starts(rows)
    kr = np.asarray(k)[rows[starts]] if np.ndim(k) else np.full(len(starts), int(k))
    kr = np.maximum(kr.astype(np.int64), 0)
    keep = np.repeat(counts <= kr, counts)
    big = np.flatnonzero(counts > kr)
    if not len(big):
        return keep
    width_class = np.ceil(np.log2(counts[big])).astype(np.int64)
    for wc in np.unique(width_class):
        g = big[width_class == wc]
        st, ct, kg = starts[g], counts[g], kr[g]
        w = int(ct.max())
        ri = np.repeat(np.arange(len(g)), ct)
        pos = np.arange(int(ct.sum())) - np.repeat(np.cumsum(ct) - ct, ct)
        idx = np.repeat(st, ct) + pos
        v = vals[idx]
        block = np.full((len(g), w), -np.inf)
        block[ri, pos] = v
        if np.ndim(k):
            block.sort(axis=1)
            kth = np.where(kg > 0, block[np.arange(len(g)), w - np.maximum(kg, 1)], np.inf)
        else:
            kk = int(k)
            kth = (
                np.partition(block, w - kk, axis=1)[:, w - kk]
                if kk > 0
                else np.full(len(g), np.inf)
            )
        thr = kth[ri]
        gt = v > thr
        eq = v == thr
        need = kg - np.bincount(ri, weights=gt, minlength=len(g)).astype(np.int64)
        ceq = np.cumsum(eq)
        before = (ceq - eq)[np.cumsum(ct) - ct]
        eq_rank = ceq - eq - np.repeat(before, ct)
        keep[idx] = gt | (eq & (eq_rank < need[ri]))
    return keep


def _stack(columns: list[np.ndarray]) -> np.ndarray:
    """Features as a float32 matrix (half the memory traffic of float64), column-major
    (:meth:`_Logit.predict` reads it column by column)."""
    X = np.empty((len(columns[0]), len(columns)), dtype=np.float32, order="F")
    for j, c in enumerate(columns):
        X[:, j] = c
    return X


def _customer_features(snap: _Snapshot, cust: np.ndarray) -> list[np.ndarray]:
    """Customer-level features of the calibration models (days since the last order, orders,
    tenure, distinct products), log-scaled."""
    n_prod = np.diff(snap.H.indptr)
    return [
        np.log1p(np.maximum(snap.as_of_day - snap.c_last[cust], 0)),
        np.log1p(snap.c_orders[cust]),
        np.log1p(np.maximum(snap.as_of_day - snap.c_first[cust], 0)),
        np.log1p(n_prod[cust]),
    ]


def _csr_entries(S: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    S.sum_duplicates()
    rows = np.repeat(np.arange(S.shape[0], dtype=np.int32), np.diff(S.indptr))
    return rows, S.indices.astype(np.int32), S.data.astype(np.float64)


def _unseen(S: sp.csr_matrix, H: sp.csr_matrix) -> sp.csr_matrix:
    """``S`` without the entries where ``H`` (already bought) is set."""
    S = S.tocsr()
    S = S - S.multiply(H)
    S.eliminate_zeros()
    return S.tocsr()


@dataclass(frozen=True, eq=False)
class _RuleModel:
    """Cross-sell rules as sparse matrices over product codes."""

    ant_items: sp.csr_matrix  # products x antecedents (1 where the item is in it)
    ant_len: np.ndarray
    W: sp.csr_matrix  # antecedents x products, -log(1 - confidence)
    conf: sp.csr_matrix  # antecedents x products, confidence
    lift: sp.csr_matrix
    ant_codes: np.ndarray  # antecedent item codes (padded)


def _rule_model(ra: RuleArrays, n_p: int, max_per_antecedent: int) -> _RuleModel | None:
    if not len(ra):
        return None
    ants, ant_id = np.unique(ra.antecedents, axis=0, return_inverse=True)
    ant_id = ant_id.reshape(-1)
    m = ra.metrics()
    conf, lift = m["confidence"], m["lift"]
    # keep the strongest rules per antecedent
    order = np.lexsort((-conf, ant_id))
    keep = _topk_mask(ant_id[order], conf[order], max_per_antecedent)
    sel = order[keep]
    n_a = len(ants)
    a_len = (ants >= 0).sum(axis=1)
    rr = np.repeat(np.arange(n_a), a_len)
    cc = ants[ants >= 0]
    ant_items = sp.csr_matrix((np.ones(len(rr), dtype=np.int32), (cc, rr)), shape=(n_p, n_a))
    w = -np.log1p(-np.minimum(conf[sel], 0.99))
    shape = (n_a, n_p)
    W = sp.csr_matrix((w, (ant_id[sel], ra.consequents[sel])), shape=shape)
    C = sp.csr_matrix((conf[sel], (ant_id[sel], ra.consequents[sel])), shape=shape)
    L = sp.csr_matrix((lift[sel], (ant_id[sel], ra.consequents[sel])), shape=shape)
    return _RuleModel(ant_items, a_len, W, C, L, ants)


def _customer_antecedents(H: sp.csr_matrix, rm: _RuleModel) -> sp.csr_matrix:
    """Customers x antecedents: 1 where the customer bought every item of the antecedent."""
    cnt = (H.astype(np.int32) @ rm.ant_items).tocsr()
    cnt.data = (cnt.data == rm.ant_len[cnt.indices]).astype(np.float64)
    cnt.eliminate_zeros()
    return cnt


@dataclass(frozen=True, eq=False)
class _UpsellModel:
    W: sp.csr_matrix  # anchor x upgrade, -log(1 - q)
    Q: sp.csr_matrix  # anchor x upgrade, q


def _upsell_model(
    H: sp.csr_matrix,
    cat: _Catalogue,
    *,
    min_step: float,
    min_customers: int,
    min_share: float,
    max_per_anchor: int,
) -> _UpsellModel | None:
    if cat.category is None:
        return None
    n_p = H.shape[1]
    price = cat.price
    rows, cols, vals = [], [], []
    Hc = H.tocsc()
    for k in range(len(cat.categories)):
        prods = np.flatnonzero((cat.category == k) & np.isfinite(price))
        if len(prods) < 2:
            continue
        sub = Hc[:, prods].tocsr()
        multi = np.diff(sub.indptr) >= 2
        if not multi.any():
            continue
        sub = sub[multi].astype(np.int32)
        G = (sub.T @ sub).tocoo()
        diag = np.asarray(sub.sum(axis=0)).ravel()  # all buyers of each product
        a, u, g = prods[G.row], prods[G.col], G.data
        q = g / np.maximum(diag[G.row], 1)
        ok = (a != u) & (g >= min_customers) & (q >= min_share)
        ok &= price[u] >= (1.0 + min_step) * price[a]
        rows.append(a[ok])
        cols.append(u[ok])
        vals.append(q[ok])
    if not rows or not sum(len(r) for r in rows):
        return None
    a = np.concatenate(rows)
    u = np.concatenate(cols)
    q = np.concatenate(vals)
    order = np.lexsort((-q, a))
    keep = order[_topk_mask(a[order], q[order], max_per_anchor)]
    a, u, q = a[keep], u[keep], q[keep]
    W = sp.csr_matrix((-np.log1p(-np.minimum(q, 0.99)), (a, u)), shape=(n_p, n_p))
    Q = sp.csr_matrix((q, (a, u)), shape=(n_p, n_p))
    return _UpsellModel(W, Q)


def _popular(pur: _Purchases, day: int, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Orders holding each product in ``[day - days, day)`` and the number of orders."""
    m = (pur.op_day < day) & (pur.op_day >= day - days)
    n_orders = int(((pur.o_day < day) & (pur.o_day >= day - days)).sum())
    return np.bincount(pur.op_prod[m], minlength=pur.n_products), n_orders


def _own_gap(first: np.ndarray, last: np.ndarray, kf: np.ndarray) -> np.ndarray:
    """A customer's own repurchase gap of a product (days between the first and the last
    order with it over the orders in between, at least 1)."""
    return np.maximum((last - first) / np.maximum(kf - 1.0, 1.0), 1.0)


def _repeat_log_gaps(snap: _Snapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Customer codes, product codes and log own gaps of the snapshot's repeat purchases
    (bought in at least two orders), in (customer, product) order."""
    rep = snap.k >= 2
    kf = snap.k[rep].astype(np.float64)
    return snap.pc[rep], snap.pp[rep], np.log(_own_gap(snap.first[rep], snap.last[rep], kf))


def _gap_sums(pp: np.ndarray, log_gap: np.ndarray, n_p: int) -> tuple[np.ndarray, np.ndarray]:
    """Per product: repeat buyers and the sum of their log gaps (added in the order given)."""
    n_rep = np.bincount(pp, minlength=n_p).astype(np.int64)
    return n_rep, np.bincount(pp, weights=log_gap, minlength=n_p).astype(np.float64)


def _sequential_sum(values: np.ndarray) -> float:
    """``values`` added one after the other from 0.0 (as :func:`_gap_sums` adds one product's
    values: the same float operations in the same order)."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.bincount(np.zeros(len(values), dtype=np.intp), weights=values, minlength=1)[0])


def _typical_gaps(n_rep: np.ndarray, log_sum: np.ndarray, horizon: float) -> np.ndarray:
    """The products' typical repurchase gaps: the geometric mean of their repeat buyers' own
    gaps; for products without a repeat buyer the geometric mean over every repeat purchase
    (``exp(sum of the products' log sums / repeat purchases)``, the products' sums added as
    ``numpy.sum`` adds them), and ``horizon`` when nothing was bought twice."""
    total = int(n_rep.sum())
    if not total:
        return np.full(len(n_rep), float(horizon))
    with np.errstate(invalid="ignore", divide="ignore"):
        pg = np.exp(log_sum / n_rep)
    return np.where(n_rep > 0, pg, float(np.exp(log_sum.sum() / total)))


def _segment_measures(snap: _Snapshot) -> tuple[np.ndarray, pd.DataFrame]:
    """Customer codes with an order before the snapshot day and their RFM measures
    (:mod:`crmkit.features.segments`), in customer order."""
    idx = np.flatnonzero(snap.c_orders > 0)
    n = snap.c_orders[idx].astype(np.float64)
    since_first = (snap.as_of_day - snap.c_first[idx]).astype(np.int64)
    measures = pd.DataFrame(
        {
            "n_orders": snap.c_orders[idx],
            "total_spend": snap.c_spend[idx],
            "avg_order_value": snap.c_spend[idx] / n,
            "days_since_first": since_first,
            "days_since_last": (snap.as_of_day - snap.c_last[idx]).astype(np.int64),
            "orders_per_month": n / np.maximum(since_first / (365.25 / 12.0), 1.0),
        }
    )
    return idx, measures


def _segments_and_cut(measures: pd.DataFrame, quantile: float) -> tuple[np.ndarray, float]:
    """RFM segments (quintile scores over these customers, in their row order: customer order)
    and the ``quantile`` of their total spend."""
    from crmkit.features.segments import assign_segments, score_rfm

    seg = assign_segments(score_rfm(measures)).to_numpy(dtype=object)
    cut = np.quantile(measures["total_spend"].to_numpy(dtype=np.float64), float(quantile))
    return seg, float(cut)


def _exact_partials(values: Iterable[float]) -> list[float]:
    """Non-overlapping floats whose exact sum is the exact sum of ``values`` (Shewchuk's
    partials, as inside :func:`math.fsum`): partial sums of parts of a column that
    :func:`math.fsum` merges into the correctly rounded total, in any order."""
    partials: list[float] = []
    for x in values:
        x = float(x)
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]
    return partials


# --------------------------------------------------------------------------------------------
# population-level statistics


@dataclass(frozen=True, eq=False)
class PopulationStats:
    """What :meth:`Recommender.recommend_for` measures over *all* customers of the lines it is
    given (the population), as opposed to each customer's own history.

    With these from the whole population, the lists of any part of the customers (all lines
    of each customer in the part) equal their rows in the lists of the whole population:
    :meth:`Recommender.recommend_for` with ``population=``. Everything else the lists use is
    either learned (fixed at training) or a customer's own (their lines, their
    ``customer_scores`` row).

    Attributes
    ----------
    cutoff
        ``analysis_cutoff(as_of)`` of the statistics.
    n_known
        Products of the learned state (codes ``0 .. n_known - 1``).
    new_products
        The population's products unknown at training (:data:`NEW_PRODUCT_COLUMNS`), sorted by
        ``product_id``: their codes follow the learned ones in this order (so the product codes,
        and with them every tie-break by code, are the population's). Per product: the
        realised mean unit price (sum of amounts / units over its purchase lines, in line
        order), the value (unit price or margin) on ``value_basis``, mean units per order,
        the category and the name of its first purchase line (in line order).
    value_basis
        ``"margin"`` or ``"price"``: what ``new_products["value"]`` holds.
    repeat_buyers, log_gap_sum
        Per product code (learned, then new): customers who bought it in two or more orders,
        and the sum of the logs of their own repurchase gaps added in customer id order. The
        typical repurchase gap of a product is ``exp(log_gap_sum / repeat_buyers)``; products
        without a repeat buyer get the geometric mean over all repeat purchases.
    segments
        RFM segment (quintile scores over the population's customers with an order) of every
        customer with an order, indexed by customer id; None without the reactivation kind.
    spend_cut
        The ``reactivation_min_value_quantile`` quantile of those customers' total spend.
    clv_mean
        The mean ``clv`` of ``customer_scores`` over the population's customers (correctly
        rounded sum, :func:`math.fsum`), the denominator of the CLV weight; None without a
        ``clv``.

    Not population-level (so not here): P(alive) and CLV of a customer, every history-based
    feature, and the learned rules, up-sell pairs, catalogue, best sellers and calibration.
    One customer per order is assumed (an ``order_id`` shared by customers of different
    parts would be two orders).
    """

    cutoff: pd.Timestamp
    n_known: int
    new_products: pd.DataFrame
    value_basis: str
    repeat_buyers: np.ndarray
    log_gap_sum: np.ndarray
    segments: pd.Series | None = None
    spend_cut: float | None = None
    clv_mean: float | None = None

    def products(self, recommender: Recommender, cutoff: pd.Timestamp) -> pd.Index:
        """The population's product index (learned, then new), checked against the
        recommender and the analysis cutoff."""
        known = recommender._products
        if pd.Timestamp(cutoff) != pd.Timestamp(self.cutoff):
            raise ConfigError(
                f"the population statistics are for the cutoff {self.cutoff}, not {cutoff}"
            )
        n_p = self.n_known + len(self.new_products)
        if self.n_known != len(known) or len(self.repeat_buyers) != n_p:
            raise ConfigError(
                "the population statistics were computed with another recommender "
                f"({self.n_known} learned products, this one has {len(known)})"
            )
        new = self.new_products["product_id"].to_numpy(dtype=object)
        return pd.Index(np.r_[known.to_numpy(dtype=object), new], dtype="str", name="product_id")

    def segments_of(self, customers: pd.Index) -> tuple[np.ndarray, float]:
        """The population segments of ``customers`` (ids) and the spend cut."""
        if self.segments is None or self.spend_cut is None:
            raise ConfigError(
                "the population statistics hold no segments: compute them with the "
                "reactivation kind"
            )
        seg = self.segments.reindex(pd.Index(customers, dtype="str"))
        missing = seg.isna().to_numpy()
        if missing.any():
            raise DataContractError(
                f"the population statistics have no segment for {int(missing.sum())} "
                f"customer(s) of the lines, e.g. {customers[np.argmax(missing)]!r}: they are "
                "not the population of these lines",
                column="customer_id",
                rule="population_stats",
            )
        return seg.to_numpy(dtype=object), float(self.spend_cut)

    @classmethod
    def from_parts(
        cls,
        recommender: Recommender,
        as_of: Any,
        *,
        new_products: pd.DataFrame,
        value_basis: str,
        gaps: pd.DataFrame,
        segments: pd.Series | None = None,
        spend_cut: float | None = None,
        clv_mean: float | None = None,
    ) -> PopulationStats:
        """The statistics from product-level tables measured in parts: ``new_products``
        (:data:`NEW_PRODUCT_COLUMNS`, one row per new product, any order; from
        :func:`_new_product_table` on all lines of each product) and ``gaps`` (``product_id``,
        ``repeat_buyers``, ``log_gap_sum``: one row per product with a repeat buyer, the sum
        added in customer id order by :func:`_sequential_sum`)."""
        recommender._require_state()
        known = recommender._products
        ids = pd.Index(new_products["product_id"].astype("str"), dtype="str")
        if ids.has_duplicates or known.get_indexer(ids).max(initial=-1) >= 0:
            raise DataContractError(
                "new_products must list each product unknown at training once",
                column="product_id",
                rule="population_stats",
            )
        order = np.argsort(ids.to_numpy(dtype=object), kind="stable")
        table = new_products.iloc[order].reset_index(drop=True)
        table["product_id"] = pd.Series(ids[order].to_numpy(dtype=object), dtype="str")
        full = pd.Index(
            np.r_[known.to_numpy(dtype=object), ids[order].to_numpy(dtype=object)], dtype="str"
        )
        pos = full.get_indexer(pd.Index(gaps["product_id"].astype("str"), dtype="str"))
        if (pos < 0).any() or len(np.unique(pos)) != len(pos):
            raise DataContractError(
                "gaps must have one row per product of the population",
                column="product_id",
                rule="population_stats",
            )
        n_rep = np.zeros(len(full), dtype=np.int64)
        log_sum = np.zeros(len(full), dtype=np.float64)
        n_rep[pos] = gaps["repeat_buyers"].to_numpy(dtype=np.int64)
        log_sum[pos] = gaps["log_gap_sum"].to_numpy(dtype=np.float64)
        return cls(
            cutoff=_cutoff(as_of),
            n_known=len(known),
            new_products=table,
            value_basis=str(value_basis),
            repeat_buyers=n_rep,
            log_gap_sum=log_sum,
            segments=segments,
            spend_cut=None if spend_cut is None else float(spend_cut),
            clv_mean=None if clv_mean is None else float(clv_mean),
        )


@dataclass(frozen=True, eq=False)
class _GroupParts:
    """The customer-level inputs of :class:`PopulationStats` from a group of customers."""

    measures: pd.DataFrame  # customer_id and the columns of _segment_measures
    repeats: pd.DataFrame  # customer_id, product_id, log_gap
    customers: pd.Index  # customers with a purchase (the group's audience)
    new_products: pd.Index  # products unknown at training the group bought


def _customer_group_parts(
    lines: pd.DataFrame, cutoff: pd.Timestamp, known: pd.Index
) -> _GroupParts:
    """The customer-level inputs of :class:`PopulationStats` from every line of a group of
    customers (in line order): their RFM measures, their repeat purchases with the log of
    their own gaps, the customers and the new products. Empty when the group has no purchase
    before ``cutoff``."""
    if not _past_mask(lines, cutoff).any():
        none = pd.Index([], dtype="str")
        return _GroupParts(_segment_frame(none, None), _gap_frame([], [], []), none, none)
    pur = _purchases(lines, cutoff, None, known_products=known)
    snap = _snapshot(pur, pur.cutoff_day)
    pc, pp, log_gap = _repeat_log_gaps(snap)
    idx, measures = _segment_measures(snap)
    return _GroupParts(
        _segment_frame(pur.customers[idx], measures),
        _gap_frame(pur.customers[pc], pur.products[pp], log_gap),
        pur.customers,
        pur.products[len(known) :],
    )


def _segment_frame(ids: pd.Index, measures: pd.DataFrame | None) -> pd.DataFrame:
    out = pd.DataFrame({"customer_id": pd.Series(ids.to_numpy(dtype=object), dtype="str")})
    if measures is None:
        ints = ("n_orders", "days_since_first", "days_since_last")
        for c in ("n_orders", "total_spend", "avg_order_value", *ints[1:], "orders_per_month"):
            out[c] = pd.Series([], dtype=np.int64 if c in ints else np.float64)
        return out
    for c in measures.columns:
        out[c] = measures[c].to_numpy()
    return out


def _gap_frame(customers: Any, products: Any, log_gap: Any) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": pd.Series(np.asarray(customers, dtype=object), dtype="str"),
            "product_id": pd.Series(np.asarray(products, dtype=object), dtype="str"),
            "log_gap": np.asarray(log_gap, dtype=np.float64),
        }
    )


def _product_gap_sums(pairs: pd.DataFrame) -> pd.DataFrame:
    """``gaps`` of :meth:`PopulationStats.from_parts` from the repeat purchases of whole
    products (``customer_id``, ``product_id``, ``log_gap``; any row order)."""
    pid = pairs["product_id"].astype("str").to_numpy(dtype=object)
    cid = pairs["customer_id"].astype("str").to_numpy(dtype=object)
    order = np.lexsort((cid, pid)) if len(pairs) else np.zeros(0, np.int64)
    pid, vals = pid[order], pairs["log_gap"].to_numpy(dtype=np.float64)[order]
    starts, counts = _segment_starts(pid)
    return pd.DataFrame(
        {
            "product_id": pd.Series(pid[starts], dtype="str"),
            "repeat_buyers": counts.astype(np.int64),
            "log_gap_sum": [_sequential_sum(vals[a : a + n]) for a, n in zip(starts, counts)],
        }
    )


def _population_segments(measures: pd.DataFrame, quantile: float) -> tuple[pd.Series, float | None]:
    """Segments (indexed by customer id) and spend cut from every population customer's
    measures (``customer_id`` and the :func:`_segment_measures` columns, any row order)."""
    ids = measures["customer_id"].astype("str").to_numpy(dtype=object)
    order = np.argsort(ids, kind="stable")
    m = measures.iloc[order].drop(columns="customer_id").reset_index(drop=True)
    if not len(m):
        index = pd.Index([], dtype="str", name="customer_id")
        return pd.Series([], index=index, name="segment", dtype="str"), None
    seg, cut = _segments_and_cut(m, quantile)
    index = pd.Index(ids[order], dtype="str", name="customer_id")
    return pd.Series(seg, index=index, name="segment", dtype="str"), cut


# --------------------------------------------------------------------------------------------
# the estimator


class Recommender:
    """Ranked per-customer recommendation lists (cross-sell, up-sell, re-sell, reactivation).

    Parameters
    ----------
    top_n
        Rows per customer.
    unseen_share
        Share of the ``top_n`` slots reserved for products the customer never bought
        (cross- and up-sell), when there are candidates; the rest go to the best scores.
    exclude_recent_days
        Nothing bought in the last this many days is recommended unless it is a due
        replenishment.
    horizon_days
        The horizon of the purchase probabilities (and of the calibration window).
    kinds
        Which kinds to produce (subset of :data:`KINDS`).
    min_support, min_confidence, min_lift, max_rule_len, algorithm
        Association rules for cross-sell (:class:`crmkit.models.rules.AssociationRules`;
        ``max_rule_len`` counts the consequent, 2 = one-product antecedents).
    max_rules_per_item, max_upsells_per_item
        Strongest rules kept per antecedent, and up-sell upgrades per product.
    popular_days, popular_candidates
        Best sellers of the last ``popular_days`` days (by orders) blended into cross-sell;
        how many (default ``top_n``).
    upsell_min_step, upsell_min_customers, upsell_min_share
        An upgrade costs at least ``1 + upsell_min_step`` times the product bought, and at
        least ``upsell_min_customers`` / ``upsell_min_share`` of its buyers bought it.
    reactivation_segments, reactivation_min_value_quantile
        Lapsed segments offered a win-back product, and the spend quantile (over all
        customers) above which a lapsed customer qualifies.
    calibrate, min_calibration_candidates, max_calibration_customers
        Calibration of probabilities on the data's past (see the module docstring).
    value
        ``"auto"`` (margin when there is one, else price), ``"price"`` or ``"margin"``.
    value_per
        ``"line"``: value of a purchase = unit value x expected units; ``"unit"``: unit value;
        ``"none"``: value 1, so lists are ranked by purchase probability (score = probability
        x P(alive) x CLV weight).

    Attributes
    ----------
    customers_ : Index
        Customers with a purchase before the cutoff (the audience).
    products_ : DataFrame
        Per product: ``price``, ``value``, ``category``, ``name``, ``orders`` (orders with it
        in the last ``popular_days`` days).
    rules_ : DataFrame
        Cross-sell rules (:data:`crmkit.models.rules.RULE_COLUMNS`).
    calibration_ : DataFrame
        Per kind: calibration candidates, purchases, rate, mean probability, AUC, intercept
        and ``coef_<feature>`` of the logistic regression (empty without calibration).
    cutoff_ : Timestamp
    notes_ : list of str
        What was skipped or fell back, in plain words.
    """

    def __init__(
        self,
        *,
        top_n: int = 10,
        unseen_share: float = 0.3,
        exclude_recent_days: int = 7,
        horizon_days: int = 90,
        kinds: Sequence[str] = KINDS,
        min_support: float = 0.001,
        min_confidence: float = 0.05,
        min_lift: float = 3.0,
        max_rule_len: int = 2,
        algorithm: Literal["fpgrowth", "apriori"] = "fpgrowth",
        max_rules_per_item: int = 20,
        max_upsells_per_item: int = 5,
        popular_days: int = 90,
        popular_candidates: int | None = None,
        upsell_min_step: float = 0.2,
        upsell_min_customers: int = 5,
        upsell_min_share: float = 0.02,
        reactivation_segments: Sequence[str] = ("at_risk", "hibernating", "lost"),
        reactivation_min_value_quantile: float = 0.5,
        calibrate: bool = True,
        min_calibration_candidates: int = 1000,
        max_calibration_customers: int = 100_000,
        value: Literal["auto", "price", "margin"] = "auto",
        value_per: Literal["line", "unit", "none"] = "line",
    ) -> None:
        self.top_n = top_n
        self.unseen_share = unseen_share
        self.exclude_recent_days = exclude_recent_days
        self.horizon_days = horizon_days
        self.kinds = kinds
        self.min_support = min_support
        self.min_confidence = min_confidence
        self.min_lift = min_lift
        self.max_rule_len = max_rule_len
        self.algorithm = algorithm
        self.max_rules_per_item = max_rules_per_item
        self.max_upsells_per_item = max_upsells_per_item
        self.popular_days = popular_days
        self.popular_candidates = popular_candidates
        self.upsell_min_step = upsell_min_step
        self.upsell_min_customers = upsell_min_customers
        self.upsell_min_share = upsell_min_share
        self.reactivation_segments = reactivation_segments
        self.reactivation_min_value_quantile = reactivation_min_value_quantile
        self.calibrate = calibrate
        self.min_calibration_candidates = min_calibration_candidates
        self.max_calibration_customers = max_calibration_customers
        self.value = value
        self.value_per = value_per

    # -- scikit-learn style parameters ---------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of the estimator (scikit-learn convention)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {k: getattr(self, k) for k in names}

    def set_params(self, **params: Any) -> Recommender:
        """Set parameters (scikit-learn convention)."""
        valid = self.get_params()
        for k, v in params.items():
            if k not in valid:
                raise ConfigError(f"unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def _check(self) -> None:
        if isinstance(self.top_n, bool) or not isinstance(self.top_n, int) or self.top_n < 1:
            raise ConfigError(f"top_n must be an integer >= 1, got {self.top_n!r}")
        if not 0.0 <= float(self.unseen_share) <= 1.0:
            raise ConfigError(f"unseen_share must be in [0, 1], got {self.unseen_share!r}")
        for name in ("exclude_recent_days", "horizon_days", "popular_days"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
        if self.horizon_days < 1 or self.popular_days < 1:
            raise ConfigError("horizon_days and popular_days must be >= 1")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ConfigError(f"unknown kinds {bad}; choose from {list(KINDS)}")
        if self.max_rule_len < 2:
            raise ConfigError(f"max_rule_len must be >= 2, got {self.max_rule_len!r}")
        if self.value_per not in ("line", "unit", "none"):
            raise ConfigError(f"value_per must be 'line', 'unit' or 'none', got {self.value_per!r}")
        if not 0.0 <= float(self.reactivation_min_value_quantile) <= 1.0:
            raise ConfigError("reactivation_min_value_quantile must be in [0, 1]")

    # -- fitting -------------------------------------------------------------------------------
    def fit(
        self,
        lines: pd.DataFrame,
        as_of: Any,
        *,
        catalogue: pd.DataFrame | None = None,
        customer_scores: pd.DataFrame | None = None,
    ) -> Recommender:
        """Learn rules, prices, up-sell pairs and calibrated probabilities from the lines
        before ``as_of``.

        Parameters
        ----------
        lines
            Cleaned order lines (``customer_id``, ``order_id``, ``order_ts``, ``product_id``,
            ``quantity``, ``unit_price``; ``amount``, ``category``, ``product_name`` and
            ``margin`` are used when present). Later lines are ignored.
        as_of
            Analysis date (a date covers that whole day).
        catalogue
            Optional per-product frame: ``product_id`` and ``unit_price`` (or ``price``) and /
            or ``margin``; ``category`` and ``product_name`` optional.
        customer_scores
            Optional per-customer frame (index or column ``customer_id``) with ``p_alive``
            and / or ``clv`` (e.g. from :mod:`crmkit.models.clv`).

        Returns
        -------
        self
        """
        self._check()
        lines = _lines_frame(lines)
        cutoff = _cutoff(as_of)
        self.notes_: list[str] = []
        self._names_cache = None
        self._cross_m = None
        extra = None
        if catalogue is not None:
            catalogue = _check_catalogue(catalogue)
            extra = pd.Index(catalogue["product_id"].astype("str").unique())
        pur = _purchases(lines, cutoff, extra)
        cat = _catalogue(lines, pur, catalogue, self.value)
        pur = dataclasses.replace(pur, line_take=None, line_prod=None)
        self._pur, self._cat = pur, cat
        self.cutoff_ = cutoff
        self.customers_ = pur.customers
        kinds = set(self.kinds)

        snap = _snapshot(pur, pur.cutoff_day)
        self._snap = snap
        # rules on the baskets before the cutoff
        self._rules = None
        self.rules_ = pd.DataFrame(columns=list(RULE_COLUMNS))
        if "cross_sell" in kinds:
            bm = BasketMatrix(
                sp.csr_matrix(
                    (np.ones(len(pur.op_prod), dtype=bool), (pur.op_order, pur.op_prod)),
                    shape=(len(pur.o_day), pur.n_products),
                ),
                pur.products,
                pd.RangeIndex(len(pur.o_day)),
            )
            ar = AssociationRules(
                min_support=self.min_support,
                min_confidence=self.min_confidence,
                min_lift=self.min_lift,
                min_len=2,
                max_len=int(self.max_rule_len),
                algorithm=self.algorithm,
            ).fit(bm)
            self.rules_ = ar.rules_
            self._rules = _rule_model(ar.rule_arrays_, pur.n_products, self.max_rules_per_item)
            if self._rules is None:
                self.notes_.append(
                    "no association rule reaches the thresholds: cross-sell uses best sellers"
                )
        self._upsell = None
        if "up_sell" in kinds:
            if cat.category is None:
                self.notes_.append("no product categories: up-sell is skipped")
            else:
                self._upsell = _upsell_model(
                    snap.H,
                    cat,
                    min_step=float(self.upsell_min_step),
                    min_customers=int(self.upsell_min_customers),
                    min_share=float(self.upsell_min_share),
                    max_per_anchor=int(self.max_upsells_per_item),
                )
        pop, n_pop_orders = _popular(pur, pur.cutoff_day, int(self.popular_days))
        self._pop = (pop, n_pop_orders)
        self._products = pur.products
        self.products_ = _products_frame(pur.products, cat, pop)

        # calibration at as_of - horizon
        self._models: dict[int, _Logit] = {}
        cal_rows: list[dict[str, Any]] = []
        if self.calibrate:
            cal_day = pur.cutoff_day - int(self.horizon_days)
            active = np.flatnonzero(
                np.bincount(pur.o_cust[pur.o_day < cal_day], minlength=pur.n_customers)
            )
            if len(active):
                if len(active) > int(self.max_calibration_customers):
                    rng = np.random.default_rng(0)
                    active = np.sort(
                        rng.choice(active, int(self.max_calibration_customers), replace=False)
                    )
                cal_snap = _snapshot(pur, cal_day, customers=active)
                cpop = _popular(pur, cal_day, int(self.popular_days))
                parts = self._candidates(cal_snap, cpop)
                win = (pur.op_day >= cal_day) & (pur.op_day < pur.cutoff_day)
                bought = np.unique(
                    pur.op_cust[win].astype(np.int64) * pur.n_products + pur.op_prod[win]
                )
                for part in parts:
                    if len(part) < int(self.min_calibration_candidates):
                        continue
                    key = part.cust.astype(np.int64) * pur.n_products + part.prod
                    y = _isin_sorted(key, bought)
                    if y.sum() < 10 or y.all():
                        continue
                    X, yy = part.X, y.astype(np.float64)
                    model = _fit_logit(X, yy)
                    self._models[part.kind] = model
                    prob = model.predict(X)
                    names = (
                        *_FEATURES[part.kind],
                        *_CUSTOMER_FEATURES[: part.X.shape[1] - len(_FEATURES[part.kind])],
                    )
                    cal_rows.append(
                        {
                            "kind": KINDS[part.kind],
                            "candidates": int(len(y)),
                            "purchases": int(y.sum()),
                            "rate": float(y.mean()),
                            "mean_probability": float(prob.mean()),
                            "auc": _auc(prob, yy.astype(bool)),
                            "intercept": float(model.coef[0]),
                            **{f"coef_{n}": float(c) for n, c in zip(names, model.coef[1:])},
                        }
                    )
            made = {_RESELL} if kinds & {"resell", "reactivation"} else set()
            if "cross_sell" in kinds:
                made.add(_CROSS)
            if "up_sell" in kinds and self._upsell is not None:
                made.add(_UP)
            missing = [KINDS[k] for k in sorted(made) if k not in self._models]
            if missing:
                self.notes_.append(
                    f"too little history before {pd.Timestamp(cal_day * _DAY_NS).date()} to "
                    f"calibrate purchase probabilities for {', '.join(missing)}: uncalibrated "
                    "strengths are used"
                )
        self.calibration_ = pd.DataFrame(cal_rows)
        self._scores = _customer_factors(customer_scores, pur.customers)
        return self

    # -- candidates ----------------------------------------------------------------------------
    def _candidates(
        self,
        snap: _Snapshot,
        pop: tuple[np.ndarray, int],
        *,
        customers: np.ndarray | None = None,
        gaps: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[_Candidates]:
        kinds = set(self.kinds)
        top_n = int(self.top_n)
        H = snap.H
        if customers is not None:
            rowmask = np.zeros(snap.n_c, dtype=np.float64)
            rowmask[customers] = 1.0
            H = (sp.diags(rowmask) @ H).astype(bool).tocsr()
            H.eliminate_zeros()
        resell = None
        n_res = np.zeros(snap.n_c, dtype=np.int64)
        if kinds & {"resell", "reactivation"}:
            resell = self._resell(snap, pop, customers, gaps)
            n_res = np.bincount(resell.cust, minlength=snap.n_c)
        # unseen candidates needed per customer: the reserved slots, or more when the
        # customer has few products to re-sell (1 spare for cross/up-sell duplicates)
        n_unseen = int(round(float(self.unseen_share) * top_n))
        k_u = np.minimum(top_n, np.maximum(n_unseen, top_n - n_res) + 1)
        parts: list[_Candidates] = []
        if "cross_sell" in kinds:
            part = self._cross(snap, H, pop, k_u)
            if part is not None:
                parts.append(part)
        if "up_sell" in kinds and self._upsell is not None:
            parts.append(self._up(snap, H, pop, k_u))
        if resell is not None:
            parts.append(resell)
        return parts

    def _cross(
        self,
        snap: _Snapshot,
        H: sp.csr_matrix,
        pop: tuple[np.ndarray, int],
        k: np.ndarray,
    ) -> _Candidates | None:
        counts, n_orders = pop
        n_pop = int(
            self.popular_candidates if self.popular_candidates is not None else int(self.top_n)
        )
        active = np.diff(H.indptr) > 0
        S = None
        if self._rules is not None:
            M = _customer_antecedents(H, self._rules)
            self._cross_m = M  # reused by the reasons
            S = (M @ self._rules.W).tocsr()
        if n_pop > 0 and n_orders > 0 and counts.any():
            top = np.argsort(-counts, kind="stable")[:n_pop]
            top = top[counts[top] > 0]
            base = counts[top] / n_orders
            w = -np.log1p(-np.minimum(base, 0.99))
            n_act = int(active.sum())
            P = sp.csr_matrix(
                (
                    np.tile(w, n_act),
                    np.tile(top.astype(np.int32), n_act),
                    np.r_[0, np.cumsum(np.where(active, len(top), 0))],
                ),
                shape=H.shape,
            )
            S = P if S is None else (S + P).tocsr()
        if S is None:
            return None
        rows, cols, vals = _csr_entries(_unseen(S, H))
        keep = _topk_mask(rows, vals, k)
        return self._unseen_part(snap, pop, _CROSS, rows[keep], cols[keep], vals[keep])

    def _up(
        self, snap: _Snapshot, H: sp.csr_matrix, pop: tuple[np.ndarray, int], k: np.ndarray
    ) -> _Candidates:
        S = (H.astype(np.float64) @ self._upsell.W).tocsr()
        rows, cols, vals = _csr_entries(_unseen(S, H))
        keep = _topk_mask(rows, vals, k)
        return self._unseen_part(snap, pop, _UP, rows[keep], cols[keep], vals[keep])

    def _unseen_part(
        self,
        snap: _Snapshot,
        pop: tuple[np.ndarray, int],
        kind: int,
        rows: np.ndarray,
        cols: np.ndarray,
        vals: np.ndarray,
    ) -> _Candidates:
        counts, n_orders = pop
        base = counts[cols] / max(n_orders, 1)
        X = _stack(
            [
                np.log(np.maximum(vals, 1e-9)),
                np.log(base + 1e-6),
                self._category_share(snap, rows, cols),
                *_customer_features(snap, rows),
            ]
        )
        return _Candidates(kind, rows, cols, vals, X, {})

    def _category_share(self, snap: _Snapshot, cust: np.ndarray, prod: np.ndarray) -> np.ndarray:
        """Share of the customer's distinct products that are in the product's category (0
        without categories)."""
        cat = self._cat
        if cat.category is None or not len(cust):
            return np.zeros(len(cust))
        n_cat = len(cat.categories)
        pc = np.where(cat.category >= 0, cat.category, n_cat)
        P = sp.csr_matrix(
            (np.ones(snap.n_p), (np.arange(snap.n_p), pc)), shape=(snap.n_p, n_cat + 1)
        )
        C = (snap.H.astype(np.float64) @ P).tocsr()
        C.sort_indices()
        rows = np.repeat(np.arange(C.shape[0], dtype=np.int64), np.diff(C.indptr))
        keys = rows * (n_cat + 1) + C.indices
        q = cust.astype(np.int64) * (n_cat + 1) + pc[prod]
        pos = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
        hit = keys[pos] == q if len(keys) else np.zeros(len(q), bool)
        n_prod = np.maximum(np.diff(snap.H.indptr)[cust], 1)
        return np.where(hit, C.data[pos] if len(keys) else 0.0, 0.0) / n_prod

    def _resell(
        self,
        snap: _Snapshot,
        pop: tuple[np.ndarray, int],
        customers: np.ndarray | None,
        gaps: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> _Candidates:
        pc, pp, k = snap.pc, snap.pp, snap.k
        first, last = snap.first, snap.last
        kf = k.astype(np.float64)
        rep = k >= 2
        own_gap = _own_gap(first, last, kf)
        # the product's typical gap: geometric mean of its repeat buyers' own gaps (over every
        # customer of the snapshot, also when lists are wanted for some customers only; over
        # the population's customers with ``gaps`` from PopulationStats)
        if gaps is None:
            gaps = _gap_sums(pp[rep], np.log(own_gap[rep]), snap.n_p)
        pg = _typical_gaps(*gaps, float(self.horizon_days))
        if customers is not None:
            sel = np.isin(pc, customers)
            pc, pp, k, first, last = pc[sel], pp[sel], k[sel], first[sel], last[sel]
            kf, rep, own_gap = kf[sel], rep[sel], own_gap[sel]
        else:
            sel = None
        days_since = (snap.as_of_day - last).astype(np.float64)
        gap = np.where(rep, own_gap, pg[pp])
        ratio = days_since / gap
        due = rep & (ratio >= 1.0)
        h = float(self.horizon_days)
        tenure = (snap.as_of_day - snap.c_first[pc] + 1).astype(np.float64)
        # expected purchases of the product within the horizon at the customer's past rate
        x = kf * h / np.maximum(tenure, h)
        # uncalibrated strength: chance of at least one purchase at the past rate, halved when
        # the product was last bought more than two horizons ago
        raw = -np.expm1(-x) * np.where(days_since <= 2 * h, 1.0, 0.5)
        excl = int(self.exclude_recent_days)
        keep = (days_since >= excl) | due if excl > 0 else np.ones(len(pc), dtype=bool)
        # customers with very long histories: the strongest 4 x top_n by the raw strength
        keep[keep] = _topk_mask(pc[keep], raw[keep], 4 * int(self.top_n))
        t = np.flatnonzero(keep)
        pc, pp, kf, days_since, gap, ratio = pc[t], pp[t], kf[t], days_since[t], gap[t], ratio[t]
        due, x, raw = due[t], x[t], raw[t]
        qty = (snap.qty if sel is None else snap.qty[sel])[t]
        lk = np.log1p(kf)
        ld = np.log1p(days_since)
        X = _stack(
            [
                lk,
                np.log(x),
                ld,
                np.log1p(ratio),
                due.astype(np.float64),
                np.log(kf / np.maximum(snap.c_orders[pc], 1)),
                lk * ld,
                np.log(pop[0][pp] / max(pop[1], 1) + 1e-6),
                *_customer_features(snap, pc)[:2],
            ]
        )
        return _Candidates(
            _RESELL,
            pc,
            pp,
            raw,
            X,
            {
                "k": kf,
                "quantity": qty / np.maximum(kf, 1.0),
                "days_since": days_since,
                "gap": gap,
                "due": due.astype(np.float64),
            },
        )

    def _probability(self, part: _Candidates) -> np.ndarray:
        model = self._models.get(part.kind)
        if model is not None and len(part):
            return model.predict(part.X)
        return part.raw if part.kind == _RESELL else -np.expm1(-part.raw)

    # -- lists ---------------------------------------------------------------------------------
    def recommend(self, customers: Iterable[str] | None = None) -> pd.DataFrame:
        """The ranked lists.

        Parameters
        ----------
        customers
            Customer ids to recommend for (default: every customer with a purchase before the
            cutoff; unknown ids get no rows).

        Returns
        -------
        DataFrame
            :data:`RECOMMENDATION_COLUMNS`: ``customer_id``, ``rank`` (1 = best), ``product_id``,
            ``kind`` (one of :data:`KINDS`), ``score`` (expected value, see the module
            docstring) and ``reason`` (one sentence for a marketer). Sorted by customer and rank.
        """
        if not hasattr(self, "_snap"):
            if hasattr(self, "_cat"):
                raise ConfigError(
                    "this Recommender was loaded from a saved state and holds no customer "
                    "data: call recommend_for(lines, as_of) with the customers' order lines"
                )
            raise ConfigError("call fit(lines, as_of) before recommend()")
        pur = self._pur
        codes = None
        if customers is not None:
            ids = pd.Index([str(c) for c in customers], dtype="str")
            codes = pur.customers.get_indexer(ids)
            codes = np.unique(codes[codes >= 0]).astype(np.int32)
            if not len(codes):
                return empty_recommendations()
        frames = list(self._chunks(codes))
        if not frames:
            return empty_recommendations()
        if len(frames) == 1:
            return frames[0]
        return pd.concat(frames, ignore_index=True)

    def _chunks(self, codes: np.ndarray | None) -> Iterator[pd.DataFrame]:
        """The non-empty lists of the customer codes ``codes`` (sorted; ``None``: all), a chunk
        of :data:`CHUNK_CUSTOMERS` customers at a time, in customer order.

        Customers' lists are independent given the learned state and the population-level
        quantities (:class:`PopulationStats`: product repurchase gaps, segments and spend
        quantile, CLV mean, new products, all over every customer), and the selection of a
        list looks at the customer's own candidates only, so the chunks together are exactly
        the lists of one piece; only one chunk's candidate pools are in memory at a time."""
        n = self._snap.n_c if codes is None else len(codes)
        if n <= CHUNK_CUSTOMERS:
            starts, every = [None], codes
        else:
            starts = list(range(0, n, CHUNK_CUSTOMERS))
            every = np.arange(n, dtype=np.int32) if codes is None else codes
        for i in starts:
            chunk = every if i is None else every[i : i + CHUNK_CUSTOMERS]
            frame = self._recommend_codes(chunk)
            if len(frame):
                yield frame

    def _recommend_codes(self, codes: np.ndarray | None) -> pd.DataFrame:
        """:meth:`recommend` for the customer codes ``codes`` (sorted; ``None``: all)."""
        snap, pur = self._snap, self._pur
        gaps = getattr(self, "_gaps", None)
        parts = [q for q in self._candidates(snap, self._pop, customers=codes, gaps=gaps) if len(q)]
        if not parts:
            return empty_recommendations()
        p_alive, clv_w = self._scores
        probs, scores = [], []
        for i, q in enumerate(parts):
            prob = self._probability(q)
            ev = prob * self._value(q) * p_alive[q.cust] * clv_w[q.cust]
            ev = np.where(np.isfinite(ev), ev, 0.0)
            # never more than top_n of one kind per customer
            keep = _topk_mask(q.cust, ev, int(self.top_n))
            if not keep.all():
                parts[i], prob, ev = q.take(keep), prob[keep], ev[keep]
            probs.append(prob)
            scores.append(ev)
        cand = _Pool.concat(parts, probs)
        p = cand.p
        score = np.concatenate(scores)
        forced = self._reactivation(snap, cand, score)
        pick, rank = _select(
            cand.cust,
            cand.prod,
            cand.kind,
            score,
            forced,
            top_n=int(self.top_n),
            n_unseen=int(round(float(self.unseen_share) * int(self.top_n))),
            n_p=pur.n_products,
        )
        kind = cand.kind[pick].copy()
        kind[forced[pick]] = _REACT
        reason = self._reasons(snap, cand, pick, kind, p[pick])
        return pd.DataFrame(
            {
                "customer_id": _str_series(_labels_pa(pur.customers).take(cand.cust[pick])),
                "rank": rank.astype(np.int64),
                "product_id": _str_series(_labels_pa(pur.products).take(cand.prod[pick])),
                "kind": _str_series(_labels_pa(pd.Index(KINDS)).take(kind)),
                "score": score[pick],
                "reason": _str_series(reason),
            }
        )

    # -- new lines with the learned state -------------------------------------------------------
    def recommend_for(
        self,
        lines: pd.DataFrame,
        as_of: Any,
        customer_scores: pd.DataFrame | None = None,
        customers: Iterable[str] | None = None,
        *,
        population: PopulationStats | None = None,
    ) -> pd.DataFrame:
        """The ranked lists for the customers of ``lines`` at ``as_of``, with the learned
        product-level state (a fitted or :meth:`load_state` recommender; nothing is refitted).

        What comes from the learned state and what from ``lines``:

        - *learned* (frozen at the training cutoff): the parameters, the cross-sell rules, the
          up-sell pairs, the calibration coefficients, the catalogue (unit prices or margins,
          mean units per order, categories, names) and the best sellers with their base rates
          (orders of the last ``popular_days`` days before the *training* cutoff, used for the
          cross-sell blend, the base-rate features and the reasons);
        - *from the lines* before ``as_of``: every customer-level quantity (histories,
          recency, the re-sell features, the products' typical repurchase gaps among the
          customers' repeat purchases, the RFM segments and the spend quantile of
          reactivation, all relative to the customers in ``lines``).

        The quantities relative to all customers of ``lines`` (the *population*) are listed
        in :class:`PopulationStats`; with ``population`` (from :meth:`population_stats` of
        a larger set of lines) they are taken from there instead, so that the lists of some
        customers' lines equal their rows in the lists of the whole population (this is how
        :func:`crmkit.spark.recommend.recommendations` builds lists group by group).

        Products absent at training get no rule and no up-sell and are never cross- or
        up-sold (popularity 0); a customer who bought one can be offered it again as a
        re-sell, valued at its realised mean unit price in ``lines`` (its margin if the model
        is valued on margins and the lines have one), with its category from the lines when
        that category was known at training. Customers need no history at training.

        With the training lines, ``as_of`` and ``customer_scores``, the result equals
        :meth:`recommend` of the fitted recommender exactly. ``as_of`` may precede the
        training cutoff, but the learned state then looks ahead of it (avoid it in
        backtests).

        Parameters
        ----------
        lines
            Cleaned order lines (as for :meth:`fit`); lines from ``as_of`` on are ignored.
        as_of
            Analysis date (a date covers that whole day).
        customer_scores
            Optional per-customer ``p_alive`` and / or ``clv`` (as for :meth:`fit`).
        customers
            Customer ids to recommend for (default: every customer with a purchase before the
            cutoff; unknown ids get no rows).
        population
            Population-level statistics (:meth:`population_stats`) of a set of lines holding
            every line of the customers of ``lines``, at the same ``as_of`` and with the same
            ``customer_scores``.

        Returns
        -------
        DataFrame
            As :meth:`recommend`.

        Raises
        ------
        ConfigError
            The recommender is neither fitted nor loaded, or ``population`` does not fit.
        DataContractError
            Missing columns, no purchase before ``as_of``, or a customer or product of
            ``lines`` that ``population`` does not cover.
        """
        return self._work_for(lines, as_of, customer_scores, population).recommend(customers)

    def _require_state(self) -> None:
        if not hasattr(self, "_cat"):
            raise ConfigError(
                "this Recommender is not fitted: call fit(lines, as_of) or "
                "Recommender.load_state(path) before recommend_for()"
            )
        self._check()

    def _work_for(
        self,
        lines: pd.DataFrame,
        as_of: Any,
        customer_scores: pd.DataFrame | None,
        population: PopulationStats | None = None,
    ) -> Recommender:
        """A copy holding the customer-level state of ``lines`` at ``as_of`` (see
        :meth:`recommend_for`)."""
        self._require_state()
        lines = _lines_frame(lines)
        cutoff = _cutoff(as_of)
        n_old = len(self._products)
        known = self._products if population is None else population.products(self, cutoff)
        pur = _purchases(lines, cutoff, None, known_products=known)
        n_p = pur.n_products
        cat = self._cat
        if population is not None:
            if n_p > len(known):
                extra = pur.products[len(known) :]
                raise DataContractError(
                    f"the population statistics do not cover {len(extra)} product(s) of the "
                    f"lines, e.g. {extra[0]!r}: they are not the population of these lines",
                    column="product_id",
                    rule="population_stats",
                )
            if n_p > n_old:
                cat = _extend_catalogue(cat, population.new_products, population.value_basis)
            if customer_scores is not None and population.clv_mean is None:
                if "clv" in _scores_frame(customer_scores).columns:
                    raise ConfigError(
                        "customer_scores has clv, but the population statistics were computed "
                        "without it: pass the same customer_scores to population_stats()"
                    )
        elif n_p > n_old:
            cat = _extend_catalogue(cat, *_new_product_table(lines, pur, n_old))
        pur = dataclasses.replace(pur, line_take=None, line_prod=None)
        counts, n_orders = self._pop
        work = copy.copy(self)  # the customer-level state lives on the copy only
        work._pur, work._cat = pur, cat
        work._snap = _snapshot(pur, pur.cutoff_day)
        work._rules = _pad_rules(self._rules, n_p)
        work._upsell = _pad_upsell(self._upsell, n_p)
        work._pop = (np.concatenate([counts, np.zeros(n_p - n_old, counts.dtype)]), n_orders)
        work._population = population
        work._gaps = None
        clv_mean = None
        if population is not None:
            work._gaps = (population.repeat_buyers, population.log_gap_sum)
            clv_mean = population.clv_mean
        work._scores = _customer_factors(customer_scores, pur.customers, clv_mean)
        work.customers_ = pur.customers
        work._names_cache = None
        work._cross_m = None
        work._segments = None
        work._react_cache = None
        return work

    def iter_recommend_for(
        self,
        lines: pd.DataFrame,
        as_of: Any,
        customer_scores: pd.DataFrame | None = None,
        *,
        population: PopulationStats | None = None,
    ) -> Iterator[pd.DataFrame]:
        """:meth:`recommend_for` of every customer, as consecutive pieces of
        :data:`CHUNK_CUSTOMERS` customers (concatenated: exactly :meth:`recommend_for`'s
        frame) - for writers that stream the lists out instead of holding them all."""
        work = self._work_for(lines, as_of, customer_scores, population)
        return work._chunks(None)

    def population_stats(
        self,
        lines: pd.DataFrame,
        as_of: Any,
        customer_scores: pd.DataFrame | None = None,
    ) -> PopulationStats:
        """The population-level quantities :meth:`recommend_for` measures over all customers
        of ``lines`` at ``as_of`` (see :class:`PopulationStats`): pass them as
        ``recommend_for(part, as_of, customer_scores, population=...)`` for a part of the
        customers' lines.

        Raises
        ------
        ConfigError
            The recommender is neither fitted nor loaded.
        DataContractError
            Missing columns, or no purchase before ``as_of``.
        """
        self._require_state()
        lines = _lines_frame(lines)
        cutoff = _cutoff(as_of)
        known = self._products
        pur = _purchases(lines, cutoff, None, known_products=known)
        new_products, basis = _new_product_table(lines, pur, len(known))
        pur = dataclasses.replace(pur, line_take=None, line_prod=None)
        snap = _snapshot(pur, pur.cutoff_day)
        _, pp, log_gap = _repeat_log_gaps(snap)
        n_rep, log_sum = _gap_sums(pp, log_gap, pur.n_products)
        segments = spend_cut = None
        if "reactivation" in set(self.kinds):
            idx, measures = _segment_measures(snap)
            seg, spend_cut = np.zeros(0, dtype=object), None
            if len(idx):
                seg, spend_cut = _segments_and_cut(measures, self.reactivation_min_value_quantile)
            segments = pd.Series(seg, index=pur.customers[idx], name="segment", dtype="str")
        return PopulationStats(
            cutoff=cutoff,
            n_known=len(known),
            new_products=new_products,
            value_basis=basis,
            repeat_buyers=n_rep,
            log_gap_sum=log_sum,
            segments=segments,
            spend_cut=spend_cut,
            clv_mean=_clv_mean(customer_scores, pur.customers),
        )

    def _learned_only(self) -> Recommender:
        """A shallow copy with the learned, product-level state only (no training customers'
        purchases, snapshot or scores, and an empty ``rules_`` report: the rules themselves
        are in the rule matrices): what :meth:`recommend_for` needs, e.g. to ship it to Spark
        executors."""
        self._require_state()
        work = copy.copy(self)
        for name in (
            "_pur",
            "_snap",
            "_scores",
            "_react_cache",
            "_cross_m",
            "_names_cache",
            "_segments",
            "_population",
            "_gaps",
        ):
            work.__dict__.pop(name, None)
        work.customers_ = pd.Index([], dtype="str", name="customer_id")
        work.rules_ = pd.DataFrame(columns=list(RULE_COLUMNS))
        return work

    # -- persistence ---------------------------------------------------------------------------
    def save_state(self, path: str | os.PathLike) -> None:
        """Write the learned, product-level state into the folder ``path`` (created).

        Files (no pickle; none holds a customer id or a customer-level row):

        ``recommender.json``
            Format, parameters, training cutoff, value basis, category labels, the number of
            orders of the popularity window, which models exist, ``notes_``.
        ``products.parquet``
            One row per product code: ``product_id``, ``price``, ``value``, ``quantity``
            (mean units per order), ``category`` (code into the labels, -1 unknown; only with
            categories), ``name``, ``orders`` (orders with it in the popularity window).
        ``rules.parquet``
            ``rules_`` (the mined cross-sell rules, for reporting).
        ``calibration.parquet``
            ``calibration_`` (counts, rates, AUC and coefficients per kind).
        ``rule_model.npz``, ``upsell_model.npz``, ``calibration.npz``
            The sparse rule and up-sell matrices over product codes and the calibration
            models' feature means, scales and coefficients; each only when it exists (a
            stale one from an earlier save is removed).

        Raises
        ------
        ConfigError
            The recommender is neither fitted nor loaded.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not hasattr(self, "_cat"):
            raise ConfigError("call fit(lines, as_of) before save_state()")
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        cat = self._cat
        counts, n_orders = self._pop
        cols: dict[str, Any] = {
            "product_id": pa.array(self._products.to_numpy(dtype=object), pa.string()),
            "price": pa.array(np.asarray(cat.price, dtype=np.float64)),
            "value": pa.array(np.asarray(cat.value, dtype=np.float64)),
            "quantity": pa.array(np.asarray(cat.quantity, dtype=np.float64)),
        }
        if cat.category is not None:
            cols["category"] = pa.array(np.asarray(cat.category, dtype=np.int32))
        cols["name"] = pa.array(cat.names.tolist(), pa.string())
        cols["orders"] = pa.array(np.asarray(counts, dtype=np.int64))
        pq.write_table(pa.table(cols), d / _STATE_FILES["products"])
        pq.write_table(
            pa.Table.from_pandas(self.rules_, preserve_index=False), d / _STATE_FILES["rules"]
        )
        pq.write_table(
            pa.Table.from_pandas(self.calibration_, preserve_index=False),
            d / _STATE_FILES["calibration"],
        )
        arrays = {
            "rule_model": _rule_arrays(self._rules),
            "upsell_model": _upsell_arrays(self._upsell),
            "calibration_model": {
                f"{KINDS[k]}__{part}": getattr(m, part)
                for k, m in sorted(self._models.items())
                for part in ("mean", "scale", "coef")
            },
        }
        for key, arrs in arrays.items():
            f = d / _STATE_FILES[key]
            if arrs:
                np.savez_compressed(f, allow_pickle=False, **arrs)
            elif f.exists():
                f.unlink()
        params = {
            k: list(v) if isinstance(v, (tuple, list)) else v for k, v in self.get_params().items()
        }
        meta = {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "params": params,
            "cutoff": self.cutoff_.isoformat(),
            "value_basis": cat.value_basis,
            "categories": (
                [str(c) for c in cat.categories] if cat.categories is not None else None
            ),
            "n_products": len(self._products),
            "popular_orders": int(n_orders),
            "rule_model": self._rules is not None,
            "upsell_model": self._upsell is not None,
            "calibrated_kinds": [KINDS[k] for k in sorted(self._models)],
            "notes": list(self.notes_),
        }
        text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
        (d / _STATE_FILES["meta"]).write_text(text, "utf-8")

    @classmethod
    def load_state(cls, path: str | os.PathLike) -> Recommender:
        """A recommender with the state written by :meth:`save_state`: ready for
        :meth:`recommend_for` (and :meth:`save_state`), without customer data
        (:meth:`recommend` raises; ``customers_`` is empty).

        Raises
        ------
        DataContractError
            ``path`` is not a saved recommender state of a known format, or a file is
            missing or inconsistent.
        """
        import pyarrow.parquet as pq

        d = Path(path)
        meta_file = d / _STATE_FILES["meta"]
        if not meta_file.is_file():
            raise DataContractError(
                f"{d} is not a saved recommender state (no {meta_file.name})",
                rule="recommender_state",
            )
        try:
            meta = json.loads(meta_file.read_text("utf-8"))
            fmt, version = meta["format"], meta["version"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataContractError(
                f"{meta_file} is not a recommender state ({exc})", rule="recommender_state"
            ) from None
        if fmt != _STATE_FORMAT or version != _STATE_VERSION:
            raise DataContractError(
                f"{meta_file}: recommender state {fmt!r} version {version!r} is not supported "
                f"(expects {_STATE_FORMAT!r} version {_STATE_VERSION}); retrain",
                rule="recommender_state",
            )
        absent = [k for k in _STATE_KEYS if k not in meta]
        if absent:
            raise DataContractError(
                f"{meta_file} lacks {', '.join(absent)}: not a complete recommender state",
                rule="recommender_state",
            )
        needed = ["products", "rules", "calibration"]
        needed += [k for k in ("rule_model", "upsell_model") if meta[k]]
        needed += ["calibration_model"] if meta["calibrated_kinds"] else []
        missing = [_STATE_FILES[k] for k in needed if not (d / _STATE_FILES[k]).is_file()]
        if missing:
            raise DataContractError(
                f"{d}: recommender state files missing: {', '.join(missing)}",
                rule="recommender_state",
            )
        params = dict(meta["params"])
        for k in ("kinds", "reactivation_segments"):
            params[k] = tuple(params[k])
        try:
            self = cls(**params)
        except TypeError as exc:
            raise DataContractError(
                f"{meta_file}: parameters do not fit this crmkit's Recommender ({exc})",
                rule="recommender_state",
            ) from None
        prod = pq.read_table(d / _STATE_FILES["products"])
        n_p = int(meta["n_products"])
        if prod.num_rows != n_p:
            raise DataContractError(
                f"{d}: products.parquet has {prod.num_rows} rows, the state says {n_p}",
                rule="recommender_state",
            )

        def col(name: str) -> np.ndarray:
            return prod.column(name).to_numpy()

        categories = meta["categories"]
        has_cat = categories is not None
        cat = _Catalogue(
            price=col("price").astype(np.float64),
            value=col("value").astype(np.float64),
            quantity=col("quantity").astype(np.float64),
            category=col("category").astype(np.int32) if has_cat else None,
            categories=pd.Index(categories, dtype="str") if has_cat else None,
            names=np.array(prod.column("name").to_pylist(), dtype=object),
            value_basis=str(meta["value_basis"]),
        )
        products = pd.Index(prod.column("product_id").to_pylist(), dtype="str", name="product_id")
        counts = col("orders").astype(np.int64)
        self._cat, self._products = cat, products
        self._pop = (counts, int(meta["popular_orders"]))
        self._rules = (
            _rule_from_arrays(_read_npz(d / _STATE_FILES["rule_model"]))
            if meta["rule_model"]
            else None
        )
        self._upsell = (
            _upsell_from_arrays(_read_npz(d / _STATE_FILES["upsell_model"]))
            if meta["upsell_model"]
            else None
        )
        self._models = {}
        if meta["calibrated_kinds"]:
            arrs = _read_npz(d / _STATE_FILES["calibration_model"])
            for name in meta["calibrated_kinds"]:
                self._models[KINDS.index(name)] = _Logit(
                    arrs[f"{name}__mean"], arrs[f"{name}__scale"], arrs[f"{name}__coef"]
                )
        self.cutoff_ = pd.Timestamp(meta["cutoff"])
        self.notes_ = list(meta["notes"])
        self.products_ = _products_frame(products, cat, counts)
        self.rules_ = _rules_from_table(pq.read_table(d / _STATE_FILES["rules"]))
        self.calibration_ = pq.read_table(d / _STATE_FILES["calibration"]).to_pandas()
        self.customers_ = pd.Index([], dtype="str", name="customer_id")
        self._names_cache = None
        self._cross_m = None
        return self

    def _value(self, cand: _Candidates) -> np.ndarray:
        """Value of one purchase: unit price (or margin) x expected units when
        ``value_per="line"`` (the customer's own mean for re-sell, the product's median line
        quantity otherwise)."""
        cat = self._cat
        if self.value_per == "none":
            return np.ones(len(cand))
        unit = cat.value[cand.prod]
        if self.value_per == "unit":
            return unit
        q = cat.quantity[cand.prod]
        if "quantity" in cand.aux:
            own = cand.aux["quantity"]
            q = np.where(np.isfinite(own) & (own > 0), own, q)
        return unit * np.maximum(q, 0.0)

    def _reactivation(self, snap: _Snapshot, cand: _Pool, score: np.ndarray) -> np.ndarray:
        forced = np.zeros(len(cand), dtype=bool)
        self._segments = None
        if "reactivation" not in set(self.kinds):
            return forced
        eligible = self._reactivation_eligible(snap)
        if eligible is None:
            return forced
        cand_ok = (cand.kind == _RESELL) & eligible[cand.cust]
        sel = np.flatnonzero(cand_ok)
        if not len(sel):
            return forced
        order = sel[np.lexsort((-score[sel], cand.cust[sel]))]
        c = cand.cust[order]
        first = np.r_[True, c[1:] != c[:-1]]
        forced[order[first]] = True
        return forced

    def _reactivation_eligible(self, snap: _Snapshot) -> np.ndarray | None:
        """Customers eligible for reactivation (segment and spend quantile over every customer
        of the snapshot, or of the population of :class:`PopulationStats`; computed once per
        snapshot, as :meth:`recommend` may run in chunks). Sets ``_segments``."""
        cached = getattr(self, "_react_cache", None)
        if cached is not None and cached[0] is snap:
            self._segments = cached[2]
            return cached[1]
        idx, measures = _segment_measures(snap)
        if not len(idx):
            self._react_cache = (snap, None, None)
            return None
        population = getattr(self, "_population", None)
        if population is not None:
            seg, spend_cut = population.segments_of(self._pur.customers[idx])
        else:
            seg, spend_cut = _segments_and_cut(measures, self.reactivation_min_value_quantile)
        segment = np.full(snap.n_c, None, dtype=object)
        segment[idx] = seg
        self._segments = segment
        eligible = np.zeros(snap.n_c, dtype=bool)
        eligible[idx] = np.isin(seg, list(self.reactivation_segments)) & (
            snap.c_spend[idx] >= spend_cut
        )
        self._react_cache = (snap, eligible, segment)
        return eligible

    # -- reasons -------------------------------------------------------------------------------
    def _reasons(
        self,
        snap: _Snapshot,
        cand: _Pool,
        pick: np.ndarray,
        kind: np.ndarray,
        prob: np.ndarray,
    ) -> Any:
        """One sentence per chosen row (a ``pyarrow`` string array, built column-wise)."""
        import pyarrow as pa

        names = self._names_pa()
        cust = cand.cust[pick]
        prod = cand.prod[pick]
        pieces, where = [], []
        h = int(self.horizon_days)
        s = np.flatnonzero(kind == _RESELL)
        if len(s):
            aux = {k: cand.aux[k][pick[s]] for k in ("k", "days_since", "gap", "due")}
            pieces.append(_resell_reason(names.take(prod[s]), aux, prob[s], h))
            where.append(s)
        s = np.flatnonzero(kind == _REACT)
        if len(s):
            c = cust[s]
            seg = (
                self._segments[c]
                if self._segments is not None
                else np.full(len(s), "lapsed", dtype=object)
            )
            pieces.append(
                _cat(
                    "lapsed customer (",
                    pa.array(seg.tolist(), pa.string()),
                    "): ",
                    _int_text(snap.c_orders[c]),
                    " orders worth ",
                    _money(snap.c_spend[c]),
                    ", last order ",
                    _int_text(snap.as_of_day - snap.c_last[c]),
                    " days ago; win-back offer on ",
                    names.take(prod[s]),
                    ", bought ",
                    _times(cand.aux["k"][pick[s]]),
                    " before",
                )
            )
            where.append(s)
        s = np.flatnonzero(kind == _CROSS)
        if len(s):
            pieces.append(self._cross_reasons(snap, cust[s], prod[s]))
            where.append(s)
        s = np.flatnonzero(kind == _UP)
        if len(s):
            pieces.append(self._up_reasons(snap, cust[s], prod[s]))
            where.append(s)
        if not pieces:
            return pa.array([], pa.string())
        at = np.concatenate(where)
        inv = np.empty(len(at), dtype=np.int64)
        inv[at] = np.arange(len(at))
        return pa.concat_arrays(pieces).take(pa.array(inv))

    def _names_pa(self) -> Any:
        import pyarrow as pa

        if getattr(self, "_names_cache", None) is None:
            self._names_cache = pa.array(self._cat.names.tolist(), pa.string())
        return self._names_cache

    def _cross_reasons(self, snap: _Snapshot, cust: np.ndarray, prod: np.ndarray) -> Any:
        import pyarrow as pa

        names = self._names_pa()
        rm = self._rules
        pieces, where = [], []
        has_rule = np.zeros(len(cust), dtype=bool)
        if rm is not None:
            M = getattr(self, "_cross_m", None)
            if M is None or M.shape[0] != snap.n_c:
                M = _customer_antecedents(snap.H, rm)
            best_ant, best_conf, best_lift = _best_anchor(
                M.indptr[cust], M.indptr[cust + 1], M.indices, rm.conf, rm.lift, prod
            )
            has_rule = best_ant >= 0
            s = np.flatnonzero(has_rule)
            if len(s):
                ant_name = _antecedent_names(rm.ant_codes[best_ant[s]], names)
                pieces.append(
                    _cat(
                        "bought ",
                        ant_name,
                        "; ",
                        _pct(best_conf[s]),
                        " of baskets with ",
                        ant_name,
                        " also have ",
                        names.take(prod[s]),
                        ", ",
                        _one_decimal(best_lift[s]),
                        "x the usual rate",
                    )
                )
                where.append(s)
        s = np.flatnonzero(~has_rule)
        if len(s):
            counts, n_orders = self._pop
            pieces.append(
                _cat(
                    names.take(prod[s]),
                    " is a best seller: in ",
                    _pct(counts[prod[s]] / max(n_orders, 1), decimals=1),
                    " of the orders of the last ",
                    str(int(self.popular_days)),
                    " days, and new to this customer",
                )
            )
            where.append(s)
        at = np.concatenate(where)
        inv = np.empty(len(at), dtype=np.int64)
        inv[at] = np.arange(len(at))
        return pa.concat_arrays(pieces).take(pa.array(inv))

    def _up_reasons(self, snap: _Snapshot, cust: np.ndarray, prod: np.ndarray) -> Any:
        import pyarrow as pa

        cat = self._cat
        names = self._names_pa()
        um = self._upsell
        # the customer's products of the upgrade's category: columns grouped by category
        n_p = snap.n_p
        pcat = np.where(cat.category >= 0, cat.category, len(cat.categories))
        perm = np.lexsort((np.arange(n_p), pcat))  # new column -> product
        newpos = np.empty(n_p, dtype=np.int64)
        newpos[perm] = np.arange(n_p)
        cat_start = np.searchsorted(pcat[perm], np.arange(len(cat.categories) + 2))
        H = snap.H
        rows = np.repeat(np.arange(H.shape[0], dtype=np.int64), np.diff(H.indptr))
        keys = rows * n_p + newpos[H.indices]
        o = np.argsort(keys, kind="stable")
        keys, anchors = keys[o], H.indices[o]
        c64 = cust.astype(np.int64) * n_p
        lo = np.searchsorted(keys, c64 + cat_start[pcat[prod]])
        hi = np.searchsorted(keys, c64 + cat_start[pcat[prod] + 1])
        anchor, q, _ = _best_anchor(lo, hi, anchors, um.Q, um.Q, prod)
        anchor = np.where(anchor >= 0, anchor, prod)
        categories = pa.array([str(c) for c in cat.categories], pa.string())
        return _cat(
            "buys ",
            categories.take(np.maximum(cat.category[prod], 0)),
            ": ",
            _pct(q),
            " of the customers who bought ",
            names.take(anchor),
            " (",
            _money(cat.price[anchor]),
            ") also bought the higher-priced ",
            names.take(prod),
            " (",
            _money(cat.price[prod]),
            ")",
        )


def _best_anchor(
    lo: np.ndarray,
    hi: np.ndarray,
    anchors: np.ndarray,
    conf: sp.csr_matrix,
    lift: sp.csr_matrix,
    prod: np.ndarray,
    chunk: int = 4_000_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pair ``i``, the anchor among ``anchors[lo[i]:hi[i]]`` (the customer's
    products or antecedents) with the highest ``conf[anchor, prod[i]]``, with that confidence
    and lift; anchor -1 when none has a rule to the product. Processed in chunks of at most
    ``chunk`` expanded entries."""
    n = len(prod)
    best = np.full(n, -1, dtype=np.int64)
    bconf = np.zeros(n)
    blift = np.zeros(n)
    conf = conf.tocsr()
    conf.sort_indices()
    lift = lift.tocsr()
    lift.sort_indices()
    n_p = conf.shape[1]
    rkey = np.repeat(np.arange(conf.shape[0], dtype=np.int64), np.diff(conf.indptr)) * n_p
    rkey += conf.indices
    rconf = conf.data
    rlift = lift.data if lift.nnz == conf.nnz else rconf
    if not len(rkey) or not n:
        return best, bconf, blift
    lens = (hi - lo).astype(np.int64)
    cum = np.cumsum(lens)
    start = 0
    while start < n:
        base = cum[start - 1] if start else 0
        stop = int(np.searchsorted(cum, base + chunk, side="right"))
        stop = min(max(stop, start + 1), n)
        ln = lens[start:stop]
        pair = np.repeat(np.arange(start, stop), ln)
        offs = np.repeat(lo[start:stop], ln) + (
            np.arange(int(ln.sum())) - np.repeat(np.cumsum(ln) - ln, ln)
        )
        ant = anchors[offs].astype(np.int64)
        key = ant * n_p + prod[pair]
        pos = np.minimum(np.searchsorted(rkey, key), len(rkey) - 1)
        hit = rkey[pos] == key
        pair, ant, pos = pair[hit], ant[hit], pos[hit]
        if len(pair):
            order = np.lexsort((-rconf[pos], pair))
            pair, ant, pos = pair[order], ant[order], pos[order]
            first = np.r_[True, pair[1:] != pair[:-1]]
            best[pair[first]] = ant[first]
            bconf[pair[first]] = rconf[pos[first]]
            blift[pair[first]] = rlift[pos[first]]
        start = stop
    return best, bconf, blift


def _antecedent_names(ants: np.ndarray, names: Any) -> Any:
    """``"A"``, ``"A and B"``, ``"A, B and C"`` for rows of antecedent codes (-1 padded)."""
    import pyarrow.compute as pc

    out = names.take(np.maximum(ants[:, 0], 0))
    width = ants.shape[1]
    for j in range(1, width):
        more = ants[:, j] >= 0
        if not more.any():
            continue
        is_last = ~(ants[:, j + 1] >= 0) if j + 1 < width else np.ones(len(ants), bool)
        sep = pc.if_else(is_last, " and ", ", ")
        joined = _cat(out, sep, names.take(np.maximum(ants[:, j], 0)))
        out = pc.if_else(more, joined, out)
    return out


def _resell_reason(name: Any, aux: dict[str, np.ndarray], prob: np.ndarray, horizon: int) -> Any:
    import pyarrow.compute as pc

    head = _cat(
        "bought ",
        name,
        " ",
        _times(aux["k"]),
        ", last ",
        _int_text(aux["days_since"]),
        " days ago",
    )
    due_txt = _cat(
        head,
        "; buys it about every ",
        _int_text(np.round(aux["gap"])),
        pc.if_else(
            aux["days_since"] < 3.0 * aux["gap"],
            " days, so a repurchase is due",
            " days, so a repurchase is overdue",
        ),
    )
    other = _cat(
        head,
        "; customers like this buy it again within ",
        str(horizon),
        " days ",
        _pct(prob),
        " of the time",
    )
    return pc.if_else(aux["due"] > 0, due_txt, other)


# --------------------------------------------------------------------------------------------
# vectorised text (pyarrow compute: no Python loop over rows)


def _cat(*parts: Any) -> Any:
    """Element-wise concatenation of string arrays and scalars."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrs = [
        p if isinstance(p, str) else pa.array(p, pa.string()) if isinstance(p, list) else p
        for p in parts
    ]
    return pc.binary_join_element_wise(*arrs, "")


def _int_text(x: np.ndarray) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pa.array(np.asarray(x, dtype=np.float64).round().astype(np.int64)), pa.string())


def _times(k: np.ndarray) -> Any:
    import pyarrow.compute as pc

    k = np.asarray(k)
    return pc.if_else(k == 1, "once", pc.if_else(k == 2, "twice", _cat(_int_text(k), " times")))


def _fixed(x: np.ndarray, decimals: int) -> Any:
    """Fixed-point text of non-negative-or-negative numbers (``12.5``, ``0.07``)."""
    import pyarrow.compute as pc

    x = np.asarray(x, dtype=np.float64)
    x = np.where(np.isfinite(x), x, 0.0)
    scale = 10**decimals
    v = np.round(np.abs(x) * scale).astype(np.int64)
    whole, frac = np.divmod(v, scale)
    sign = np.where((x < 0) & (v > 0), "-", "")
    import pyarrow as pa

    frac_txt = pc.utf8_lpad(_int_text(frac), decimals, "0")
    return _cat(pa.array(sign, pa.string()), _int_text(whole), ".", frac_txt)


def _pct(x: np.ndarray, decimals: int = 0) -> Any:
    v = np.asarray(x, dtype=np.float64) * 100.0
    return _cat(_int_text(v) if decimals == 0 else _fixed(v, decimals), "%")


def _one_decimal(x: np.ndarray) -> Any:
    return _fixed(x, 1)


def _money(x: np.ndarray) -> Any:
    return _fixed(x, 2)


# --------------------------------------------------------------------------------------------
# selection


def _labels_pa(index: pd.Index) -> Any:
    import pyarrow as pa

    return pa.array(index.astype("str").tolist(), pa.string())


def _str_series(arr: Any) -> pd.Series:
    """A pandas ``str`` Series from a pyarrow string array."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return pd.Series(pd.array(arr, dtype="str"))


def _rank_desc(rows: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """0-based rank of each entry within its row by descending ``vals`` (``rows`` sorted;
    ties keep the entry order), from row-wise sorts of padded blocks."""
    n = len(rows)
    out = np.zeros(n, dtype=np.int64)
    if not n:
        return out
    starts, counts = _segment_starts(rows)
    width_class = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    for wc in np.unique(width_class):
        g = np.flatnonzero(width_class == wc)
        st, ct = starts[g], counts[g]
        w = int(ct.max())
        ri = np.repeat(np.arange(len(g)), ct)
        pos = np.arange(int(ct.sum())) - np.repeat(np.cumsum(ct) - ct, ct)
        idx = np.repeat(st, ct) + pos
        block = np.full((len(g), w), np.inf)
        block[ri, pos] = -vals[idx]
        order = np.argsort(block, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(w)[None, :].repeat(len(g), 0), axis=1)
        out[idx] = rank[ri, pos]
    return out


def _select(
    cust: np.ndarray,
    prod: np.ndarray,
    kind: np.ndarray,
    score: np.ndarray,
    forced: np.ndarray,
    *,
    top_n: int,
    n_unseen: int,
    n_p: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the chosen candidates (in output order: customer, then rank) and their
    ranks.

    Per customer: the forced (reactivation) row, then up to ``n_unseen`` never-bought products
    by score, then the best remaining scores, ``top_n`` in all; one row per product (the
    higher score wins). Rows are handled customer by customer in padded blocks (no global
    sort by score).
    """
    score = np.where(np.isfinite(score), np.maximum(score, 0.0), 0.0)
    unseen = (kind == _CROSS) | (kind == _UP)
    alive = np.ones(len(cust), dtype=bool)
    u = np.flatnonzero(unseen)
    if len(u):  # the same product as cross- and up-sell: keep the higher score
        key = cust[u].astype(np.int64) * n_p + prod[u]
        o = u[np.argsort(key)]
        ko = cust[o].astype(np.int64) * n_p + prod[o]
        i = np.flatnonzero(ko[1:] == ko[:-1])
        a, b = o[i], o[i + 1]
        alive[np.where(score[a] >= score[b], b, a)] = False
    # group by customer (each kind's candidates are already: a merge of sorted runs)
    order = np.flatnonzero(alive)
    order = order[np.argsort(cust[order], kind="stable")]
    c, sc, fo, un = cust[order], score[order], forced[order], unseen[order]
    tier = fo.astype(np.int8) * 2
    if n_unseen > 0:
        cand_u = np.flatnonzero(un & ~fo)
        reserved = _topk_mask(c[cand_u], sc[cand_u], n_unseen)
        tier[cand_u[reserved]] = 1
    # top_n per customer: the forced row, then the reserved ones, then the rest, each tier by
    # score (ties: the earlier entry); tier by tier, so that no score is added to a large
    # offset (whose rounding could tie close scores and depend on the other customers)
    n_codes = int(c.max()) + 1 if len(c) else 0
    left = np.full(n_codes, top_n, dtype=np.int64)
    keep = np.zeros(len(c), dtype=bool)
    for t in (2, 1, 0):
        at = np.flatnonzero(tier == t)
        if len(at):
            took = at[_topk_mask(c[at], sc[at], left)]
            keep[took] = True
            left -= np.bincount(c[took], minlength=n_codes)
    chosen = np.flatnonzero(keep)
    # final order within a customer: reactivation first, then score
    cc = c[chosen]
    rank = _rank_desc(cc, np.where(fo[chosen], np.inf, sc[chosen]))
    st, ct = _segment_starts(cc)
    place = np.repeat(st, ct) + rank
    out = np.empty(len(chosen), dtype=np.int64)
    out[place] = order[chosen]
    out_rank = np.empty(len(chosen), dtype=np.int64)
    out_rank[place] = rank + 1
    return out, out_rank


def _scores_frame(scores: pd.DataFrame) -> pd.DataFrame:
    """``customer_scores`` indexed by customer id (strings), checked."""
    if not isinstance(scores, pd.DataFrame):
        raise DataContractError(
            f"customer_scores must be a DataFrame, got {type(scores).__name__}",
            rule="input_type",
        )
    if "customer_id" in scores.columns:
        s = scores.set_index("customer_id")
    else:
        s = scores.copy(deep=False)
    s.index = pd.Index(s.index.astype("str"))
    if "p_alive" not in s.columns and "clv" not in s.columns:
        raise DataContractError(
            "customer_scores needs a p_alive and / or clv column",
            column="p_alive",
            rule="required_column",
        )
    return s


def _clv_values(s: pd.DataFrame, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The usable ``clv`` values of the scores' rows of the audience (finite, >= 0), and
    which rows they are."""
    v = s["clv"].to_numpy(dtype=np.float64)
    fin = (pos >= 0) & np.isfinite(v) & (v >= 0)
    return v, fin


def _exact_mean(values: np.ndarray) -> float:
    """The mean with the correctly rounded sum (:func:`math.fsum`): independent of the order
    of the values, and reproducible from partial sums of parts (:func:`_exact_partials`)."""
    return math.fsum(values) / len(values) if len(values) else 0.0


def _clv_mean(scores: pd.DataFrame | None, customers: pd.Index) -> float | None:
    """The mean ``clv`` over the scores' rows of ``customers`` (None: no ``clv``)."""
    usable = _usable_clv(scores, customers)
    return None if usable is None else _exact_mean(usable)


def _usable_clv(scores: pd.DataFrame | None, customers: pd.Index) -> np.ndarray | None:
    """The ``clv`` values of the scores' rows of ``customers`` that enter the mean (None: no
    ``clv``)."""
    if scores is None:
        return None
    s = _scores_frame(scores)
    if "clv" not in s.columns:
        return None
    v, fin = _clv_values(s, customers.get_indexer(s.index))
    return v[fin]


def _customer_factors(
    scores: pd.DataFrame | None, customers: pd.Index, clv_mean: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """P(alive) and CLV weight (``clv / mean clv`` over the scored customers of the audience, or
    over the population's with ``clv_mean``) per customer code; 1 where unknown."""
    n = len(customers)
    p_alive = np.ones(n)
    clv_w = np.ones(n)
    if scores is None:
        return p_alive, clv_w
    s = _scores_frame(scores)
    pos = customers.get_indexer(s.index)
    ok = pos >= 0
    if "p_alive" in s.columns:
        v = s["p_alive"].to_numpy(dtype=np.float64)
        if (np.isfinite(v) & ((v < 0) | (v > 1))).any():
            raise DataContractError(
                "p_alive must be in [0, 1]", column="p_alive", rule="invalid_values"
            )
        fin = ok & np.isfinite(v)
        p_alive[pos[fin]] = v[fin]
    if "clv" in s.columns:
        v, fin = _clv_values(s, pos)
        mean = _exact_mean(v[fin]) if clv_mean is None else float(clv_mean)
        if mean > 0:
            clv_w[pos[fin]] = v[fin] / mean
    return p_alive, clv_w


# --------------------------------------------------------------------------------------------
# learned state: product-level frames, padding to new products, files

_STATE_FORMAT = "crmkit.models.recommend.Recommender"
_STATE_VERSION = 1
_STATE_FILES = {
    "meta": "recommender.json",
    "products": "products.parquet",
    "rules": "rules.parquet",
    "calibration": "calibration.parquet",
    "rule_model": "rule_model.npz",
    "upsell_model": "upsell_model.npz",
    "calibration_model": "calibration.npz",
}

_STATE_KEYS = (
    "params",
    "cutoff",
    "value_basis",
    "categories",
    "n_products",
    "popular_orders",
    "rule_model",
    "upsell_model",
    "calibrated_kinds",
    "notes",
)


def _products_frame(products: pd.Index, cat: _Catalogue, orders: np.ndarray) -> pd.DataFrame:
    """``products_``: price, value, category, name and popularity per product."""
    return pd.DataFrame(
        {
            "price": cat.price,
            "value": cat.value,
            "category": (
                cat.categories.to_numpy(dtype=object)[np.maximum(cat.category, 0)]
                if cat.category is not None
                else None
            ),
            "name": cat.names,
            "orders": orders,
        },
        index=products,
    )


#: Columns of :attr:`PopulationStats.new_products`.
NEW_PRODUCT_COLUMNS: tuple[str, ...] = (
    "product_id",
    "price",
    "value",
    "quantity",
    "category",
    "name",
)


def _new_product_table(
    lines: pd.DataFrame, pur: _Purchases, n_old: int
) -> tuple[pd.DataFrame, str]:
    """The products after the first ``n_old`` codes of ``pur`` as measured in ``lines`` (as
    :func:`_catalogue` measures them: realised mean unit price, value, mean units per order,
    the category and name of the product's first past line), and the value basis. Every
    number is a product's own: the same over any set of lines holding all of its lines."""
    sl = slice(n_old, None)
    products = pur.products[sl]
    if not len(products):
        return _empty_new_products(), "price"
    new = _catalogue(lines, pur, None, "auto")
    labels = np.full(len(products), None, dtype=object)
    if new.category is not None:
        codes = new.category[sl]
        known = codes >= 0
        labels[known] = new.categories.to_numpy(dtype=object)[codes[known]]
    table = pd.DataFrame(
        {
            "product_id": pd.Series(products.to_numpy(dtype=object), dtype="str"),
            "price": new.price[sl].astype(np.float64),
            "value": new.value[sl].astype(np.float64),
            "quantity": new.quantity[sl].astype(np.float64),
            "category": pd.Series(labels, dtype=object),
            "name": pd.Series(new.names[sl], dtype=object),
        }
    )
    return table, new.value_basis


def _empty_new_products() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": pd.Series([], dtype="str"),
            **{c: pd.Series([], dtype=np.float64) for c in ("price", "value", "quantity")},
            "category": pd.Series([], dtype=object),
            "name": pd.Series([], dtype=object),
        }
    )


def _extend_catalogue(old: _Catalogue, table: pd.DataFrame, basis: str) -> _Catalogue:
    """``old`` (the learned catalogue) followed by the products of ``table`` (a
    :func:`_new_product_table` of value basis ``basis``), in its row order."""
    price = table["price"].to_numpy(dtype=np.float64)
    if basis == old.value_basis:
        value = table["value"].to_numpy(dtype=np.float64)
    else:
        value = np.where(np.isfinite(price) & (price > 0), price, 0.0)
    category = None
    if old.category is not None:
        labels = table["category"].to_numpy(dtype=object)
        known = pd.notna(labels)
        add = np.full(len(price), -1, dtype=np.int32)
        if known.any():
            at = old.categories.get_indexer(pd.Index(labels[known].astype(str), dtype="str"))
            add[known] = at.astype(np.int32)
        category = np.concatenate([old.category, add])
    return _Catalogue(
        price=np.concatenate([old.price, price]),
        value=np.concatenate([old.value, value]),
        quantity=np.concatenate([old.quantity, table["quantity"].to_numpy(dtype=np.float64)]),
        category=category,
        categories=old.categories,
        names=np.concatenate([old.names, table["name"].to_numpy(dtype=object)]),
        value_basis=old.value_basis,
    )


def _resize_csr(m: sp.csr_matrix, shape: tuple[int, int]) -> sp.csr_matrix:
    """``m`` with empty rows / columns appended up to ``shape``."""
    m = m.tocsr()
    if m.shape == shape:
        return m
    pad = np.full(shape[0] - m.shape[0], m.indptr[-1], dtype=m.indptr.dtype)
    return sp.csr_matrix((m.data, m.indices, np.concatenate([m.indptr, pad])), shape=shape)


def _pad_rules(rm: _RuleModel | None, n_p: int) -> _RuleModel | None:
    if rm is None or rm.W.shape[1] == n_p:
        return rm
    n_a = rm.W.shape[0]
    return dataclasses.replace(
        rm,
        ant_items=_resize_csr(rm.ant_items, (n_p, n_a)),
        W=_resize_csr(rm.W, (n_a, n_p)),
        conf=_resize_csr(rm.conf, (n_a, n_p)),
        lift=_resize_csr(rm.lift, (n_a, n_p)),
    )


def _pad_upsell(um: _UpsellModel | None, n_p: int) -> _UpsellModel | None:
    if um is None or um.W.shape[1] == n_p:
        return um
    return _UpsellModel(_resize_csr(um.W, (n_p, n_p)), _resize_csr(um.Q, (n_p, n_p)))


def _csr_arrays(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    m = m.tocsr()
    return {
        f"{prefix}__data": m.data,
        f"{prefix}__indices": m.indices,
        f"{prefix}__indptr": m.indptr,
        f"{prefix}__shape": np.asarray(m.shape, dtype=np.int64),
    }


def _csr_from(arrs: dict[str, np.ndarray], prefix: str) -> sp.csr_matrix:
    shape = tuple(int(x) for x in arrs[f"{prefix}__shape"])
    return sp.csr_matrix(
        (arrs[f"{prefix}__data"], arrs[f"{prefix}__indices"], arrs[f"{prefix}__indptr"]),
        shape=shape,
    )


def _rule_arrays(rm: _RuleModel | None) -> dict[str, np.ndarray]:
    if rm is None:
        return {}
    return {
        **_csr_arrays("ant_items", rm.ant_items),
        **_csr_arrays("W", rm.W),
        **_csr_arrays("conf", rm.conf),
        **_csr_arrays("lift", rm.lift),
        "ant_len": np.asarray(rm.ant_len),
        "ant_codes": np.asarray(rm.ant_codes),
    }


def _rule_from_arrays(arrs: dict[str, np.ndarray]) -> _RuleModel:
    return _RuleModel(
        ant_items=_csr_from(arrs, "ant_items"),
        ant_len=arrs["ant_len"],
        W=_csr_from(arrs, "W"),
        conf=_csr_from(arrs, "conf"),
        lift=_csr_from(arrs, "lift"),
        ant_codes=arrs["ant_codes"],
    )


def _upsell_arrays(um: _UpsellModel | None) -> dict[str, np.ndarray]:
    return {} if um is None else {**_csr_arrays("W", um.W), **_csr_arrays("Q", um.Q)}


def _upsell_from_arrays(arrs: dict[str, np.ndarray]) -> _UpsellModel:
    return _UpsellModel(_csr_from(arrs, "W"), _csr_from(arrs, "Q"))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataContractError(
            f"{path} is not a readable recommender state file ({exc})", rule="recommender_state"
        ) from None


def _rules_from_table(table: Any) -> pd.DataFrame:
    """``rules_`` from its Parquet table (item lists back to Python lists)."""
    if table.num_rows == 0:
        return pd.DataFrame(columns=list(RULE_COLUMNS))
    df = table.to_pandas()
    for c in ("antecedents", "consequents"):
        if c in df.columns:
            df[c] = pd.Series([list(x) for x in df[c]], dtype=object, index=df.index)
    return df


def recommend(
    lines: pd.DataFrame,
    as_of: Any,
    *,
    catalogue: pd.DataFrame | None = None,
    customer_scores: pd.DataFrame | None = None,
    customers: Iterable[str] | None = None,
    **params: Any,
) -> pd.DataFrame:
    """``Recommender(**params).fit(lines, as_of, ...).recommend(customers)``."""
    return (
        Recommender(**params)
        .fit(lines, as_of, catalogue=catalogue, customer_scores=customer_scores)
        .recommend(customers)
    )


# --------------------------------------------------------------------------------------------
# baselines and evaluation


def popularity_baseline(
    lines: pd.DataFrame,
    as_of: Any,
    n: int = 10,
    *,
    days: int = 90,
    unseen_only: bool = False,
    customers: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The ``n`` products in most orders of the last ``days`` days before ``as_of``, for every
    customer with a purchase before it (``unseen_only``: skipping what the customer bought)."""
    cutoff = _cutoff(as_of)
    _require_columns(lines, ("customer_id", "order_id", "order_ts"))
    pur = _purchases(lines, cutoff, None)
    counts, _ = _popular(pur, pur.cutoff_day, int(days))
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    cust_codes = _audience_codes(pur, customers)
    if not unseen_only:
        top = order[:n]
        c = np.repeat(cust_codes, len(top))
        p = np.tile(top, len(cust_codes))
    else:
        m = min(len(order), n + int(np.bincount(pur.op_cust).max(initial=0)))
        top = order[:m]
        c = np.repeat(cust_codes, len(top))
        p = np.tile(top, len(cust_codes))
        snap = _snapshot(pur, pur.cutoff_day)
        bought = snap.pc.astype(np.int64) * pur.n_products + snap.pp
        key = c.astype(np.int64) * pur.n_products + p
        pos = np.minimum(np.searchsorted(bought, key), max(len(bought) - 1, 0))
        seen = bought[pos] == key if len(bought) else np.zeros(len(key), bool)
        c, p = c[~seen], p[~seen]
        st = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if len(c) else np.zeros(0, int)
        r = np.arange(len(c)) - np.repeat(st, np.diff(np.r_[st, len(c)]))
        c, p = c[r < n], p[r < n]
    return _baseline_frame(pur, c, p, "cross_sell", counts[p].astype(np.float64))


def own_items_baseline(
    lines: pd.DataFrame, as_of: Any, n: int = 10, *, customers: Iterable[str] | None = None
) -> pd.DataFrame:
    """Each customer's ``n`` products in most of their orders before ``as_of`` (ties: the
    product id)."""
    cutoff = _cutoff(as_of)
    _require_columns(lines, ("customer_id", "order_id", "order_ts"))
    pur = _purchases(lines, cutoff, None)
    snap = _snapshot(pur, pur.cutoff_day)
    cc = _audience_codes(pur, customers)
    keep = np.isin(snap.pc, cc)
    pc, pp, k = snap.pc[keep], snap.pp[keep], snap.k[keep]
    order = np.lexsort((pp, -k, pc))
    pc, pp, k = pc[order], pp[order], k[order]
    st = np.flatnonzero(np.r_[True, pc[1:] != pc[:-1]]) if len(pc) else np.zeros(0, int)
    r = np.arange(len(pc)) - np.repeat(st, np.diff(np.r_[st, len(pc)]))
    m = r < n
    return _baseline_frame(pur, pc[m], pp[m], "resell", k[m].astype(np.float64))


def _audience_codes(pur: _Purchases, customers: Iterable[str] | None) -> np.ndarray:
    if customers is None:
        return np.arange(pur.n_customers, dtype=np.int32)
    pos = pur.customers.get_indexer(pd.Index([str(c) for c in customers], dtype="str"))
    return np.unique(pos[pos >= 0]).astype(np.int32)


def _baseline_frame(
    pur: _Purchases, c: np.ndarray, p: np.ndarray, kind: str, score: np.ndarray
) -> pd.DataFrame:
    if not len(c):
        return empty_recommendations()
    st = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    rank = np.arange(len(c)) - np.repeat(st, np.diff(np.r_[st, len(c)])) + 1
    return pd.DataFrame(
        {
            "customer_id": pd.Series(pur.customers.to_numpy(dtype=object)[c], dtype="str"),
            "rank": rank.astype(np.int64),
            "product_id": pd.Series(pur.products.to_numpy(dtype=object)[p], dtype="str"),
            "kind": kind,
            "score": score,
            "reason": "baseline",
        }
    )


def _pair_codes(cust: pd.Series, prod: pd.Series, cindex: pd.Index, pindex: pd.Index) -> np.ndarray:
    c = cindex.get_indexer(cust.astype("str"))
    p = pindex.get_indexer(prod.astype("str"))
    return np.where((c >= 0) & (p >= 0), c.astype(np.int64) * max(len(pindex), 1) + p, -1)


def evaluate_recommendations(
    recs: pd.DataFrame,
    holdout_lines: pd.DataFrame,
    n: int = 10,
    *,
    history: pd.DataFrame | None = None,
    customers: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Precision, recall, hit rate and revenue captured of the top ``n`` of each list against
    what the customers bought in a holdout window.

    Parameters
    ----------
    recs
        Recommendation lists (``customer_id``, ``rank``, ``product_id``; ``kind`` used when
        ``history`` is not given).
    holdout_lines
        Order lines of the holdout window (``customer_id``, ``product_id``, ``amount`` or
        ``quantity`` x ``unit_price``); lines with ``quantity <= 0`` are ignored.
    n
        List length evaluated (``rank <= n``).
    history
        Lines before the holdout (or any frame with ``customer_id`` and ``product_id``): a
        product a customer bought there is *seen* (re-sell), any other is *unseen*. Without it,
        rows of kind ``resell`` / ``reactivation`` count as seen, and recall by part is NaN.
    customers
        The audience the averages run over (default: every customer with a list). Customers
        without a holdout purchase count in precision and hit rate (zero hits) and are left
        out of recall.

    Returns
    -------
    dict
        ``{"n", "customers", "customers_with_purchases", "overall", "unseen", "resell"}``; each
        part holds ``precision``, ``recall``, ``hit_rate``, ``revenue_captured``, ``hits``,
        ``slots`` (mean rows of that part per list) and ``slot_precision`` (hits per row of
        that part). Precision is hits / ``n`` averaged over the audience, recall hits / products
        bought in the holdout averaged over customers who bought, hit rate the share of the
        audience with at least one hit, revenue captured the holdout revenue of hit pairs over
        the audience's holdout revenue (of that part).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be an integer >= 1, got {n!r}")
    for col in ("customer_id", "product_id"):
        if col not in recs.columns or col not in holdout_lines.columns:
            raise DataContractError(
                f"recommendations and holdout lines need {col!r}",
                column=col,
                rule="required_column",
            )
    top = recs[recs["rank"] <= n] if "rank" in recs.columns else recs
    aud = (
        pd.Index(pd.unique(top["customer_id"].astype("str")), dtype="str")
        if customers is None
        else pd.Index(pd.unique(pd.Series(list(customers)).astype("str")), dtype="str")
    )
    ho = holdout_lines
    if "quantity" in ho.columns:
        ho = ho[ho["quantity"].to_numpy(dtype=np.float64, na_value=0.0) > 0]
    amount = (
        ho["amount"].to_numpy(dtype=np.float64)
        if "amount" in ho.columns
        else ho["quantity"].to_numpy(dtype=np.float64) * ho["unit_price"].to_numpy(np.float64)
    )
    prods = pd.Index(
        pd.unique(pd.concat([top["product_id"], ho["product_id"]]).astype("str")), dtype="str"
    )
    n_p = max(len(prods), 1)
    hkey = _pair_codes(ho["customer_id"], ho["product_id"], aud, prods)
    ok = hkey >= 0
    hk, hinv = np.unique(hkey[ok], return_inverse=True)
    hrev = np.bincount(hinv.reshape(-1), weights=amount[ok], minlength=len(hk))
    rkey = _pair_codes(top["customer_id"], top["product_id"], aud, prods)
    rok = rkey >= 0
    rk = np.unique(rkey[rok])
    # seen / unseen
    if history is not None:
        sk = _pair_codes(history["customer_id"], history["product_id"], aud, prods)
        sk = np.unique(sk[sk >= 0])
        h_seen = _isin_sorted(hk, sk)
        r_seen = _isin_sorted(rk, sk)
    else:
        kinds = top["kind"].astype("str").to_numpy() if "kind" in top.columns else None
        seen_keys = (
            np.unique(rkey[rok & np.isin(kinds, ["resell", "reactivation"])])
            if kinds is not None
            else np.zeros(0, np.int64)
        )
        r_seen = _isin_sorted(rk, seen_keys)
        h_seen = None
    hit = _isin_sorted(rk, hk)
    n_aud = len(aud)
    hcust = hk // n_p
    buyers = np.bincount(hcust, minlength=n_aud) > 0
    out: dict[str, Any] = {
        "n": int(n),
        "customers": int(n_aud),
        "customers_with_purchases": int(buyers.sum()),
    }
    parts = {
        "overall": (np.ones(len(rk), bool), np.ones(len(hk), bool)),
        "unseen": (~r_seen, ~h_seen if h_seen is not None else None),
        "resell": (r_seen, h_seen),
    }
    hpos = np.searchsorted(hk, rk)
    hpos = np.minimum(hpos, max(len(hk) - 1, 0))
    for name, (rmask, hmask) in parts.items():
        rc = rk[rmask] // n_p
        hits_c = np.bincount(rc[hit[rmask]], minlength=n_aud).astype(np.float64)
        slots_c = np.bincount(rc, minlength=n_aud).astype(np.float64)
        res = {
            "precision": float(hits_c.sum() / (n * n_aud)) if n_aud else float("nan"),
            "hit_rate": float((hits_c > 0).mean()) if n_aud else float("nan"),
            "hits": int(hits_c.sum()),
            "slots": float(slots_c.mean()) if n_aud else float("nan"),
            "slot_precision": float(hits_c.sum() / slots_c.sum()) if slots_c.sum() else 0.0,
        }
        hit_rev = float(hrev[hpos[rmask][hit[rmask]]].sum()) if len(hk) else 0.0
        if hmask is not None:
            items_c = np.bincount(hcust[hmask], minlength=n_aud).astype(np.float64)
            has = items_c > 0
            res["recall"] = float((hits_c[has] / items_c[has]).mean()) if has.any() else 0.0
            tot = float(hrev[hmask].sum())
            res["revenue_captured"] = hit_rev / tot if tot > 0 else 0.0
        else:
            res["recall"] = float("nan")
            tot = float(hrev.sum())
            res["revenue_captured"] = hit_rev / tot if tot > 0 else 0.0
        out[name] = res
    return out


def _isin_sorted(a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    if not len(sorted_b) or not len(a):
        return np.zeros(len(a), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_b, a), len(sorted_b) - 1)
    return sorted_b[pos] == a


def evaluate_against_baselines(
    lines: pd.DataFrame,
    as_of: Any,
    holdout_end: Any,
    recs: pd.DataFrame,
    n: int = 10,
    *,
    popular_days: int = 90,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``recs`` and the baselines on the holdout after ``as_of`` up to and including
    ``holdout_end``, over every customer with a purchase on or before ``as_of``.

    The baselines: ``popularity`` (the ``n`` products in most orders of the last
    ``popular_days`` days, for everyone), ``popularity_unseen`` (the same, skipping what the
    customer bought) and ``own_items`` (each customer's ``n`` products in most of their
    orders).

    Returns
    -------
    dict
        ``{"lists" | "popularity" | "popularity_unseen" | "own_items": result of
        evaluate_recommendations}``.
    """
    cutoff = _cutoff(as_of)
    end = _cutoff(holdout_end)
    if not end > cutoff:
        raise ConfigError(f"holdout_end ({holdout_end}) must be after as_of ({as_of})")
    _require_columns(lines, ("customer_id", "order_id", "order_ts"))
    ts = lines["order_ts"].to_numpy(dtype="datetime64[ns]")
    before = ts < np.datetime64(cutoff.as_unit("ns").asm8)
    window = ~before & (ts < np.datetime64(end.as_unit("ns").asm8))
    hist = lines.loc[before, ["customer_id", "product_id"]]
    if "quantity" in lines.columns:
        hist = hist[lines.loc[before, "quantity"].to_numpy(dtype=np.float64) > 0]
    holdout = lines.loc[window]
    audience = pd.unique(hist["customer_id"].astype("str"))
    lists = {
        "lists": recs,
        "popularity": popularity_baseline(lines, as_of, n, days=popular_days),
        "popularity_unseen": popularity_baseline(
            lines, as_of, n, days=popular_days, unseen_only=True
        ),
        "own_items": own_items_baseline(lines, as_of, n),
    }
    return {
        name: evaluate_recommendations(r, holdout, n, history=hist, customers=audience)
        for name, r in lists.items()
    }


def compare_with_baselines(
    lines: pd.DataFrame,
    as_of: Any,
    holdout_end: Any,
    recs: pd.DataFrame,
    n: int = 10,
    *,
    popular_days: int = 90,
) -> pd.DataFrame:
    """:func:`evaluate_against_baselines` as a table.

    Returns
    -------
    DataFrame
        One row per list (``lists``, ``popularity``, ``popularity_unseen``, ``own_items``),
        columns ``<part>_<metric>`` for parts ``overall``, ``unseen``, ``resell`` and metrics
        ``precision``, ``recall``, ``hit_rate``, ``revenue_captured``, ``slot_precision``,
        and ``customers``.
    """
    res = evaluate_against_baselines(lines, as_of, holdout_end, recs, n, popular_days=popular_days)
    rows = {}
    for name, ev in res.items():
        rows[name] = {
            f"{part}_{m}": ev[part][m]
            for part in ("overall", "unseen", "resell")
            for m in ("precision", "recall", "hit_rate", "revenue_captured", "slot_precision")
        }
        rows[name]["customers"] = ev["customers"]
    return pd.DataFrame.from_dict(rows, orient="index")
