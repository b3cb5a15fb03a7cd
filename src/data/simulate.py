"""A seeded simulator of realistic e-commerce order lines drawn from a known process.

The simulator produces order lines in crmkit's canonical order-line contract (see
:mod:`crmkit.data.schema`) together with the *ground truth* that generated them, so that every
downstream model (BG/NBD and Gamma-Gamma CLV, churn, market-basket rules, cleaning) can be
checked against known answers.

The generating process
----------------------
Time is measured in weeks from ``start``.

Customers (BG/NBD, Fader, Hardie & Lee 2005)
    Every customer makes a first purchase at a time uniform over
    ``[start, start + acquisition_weeks)``. Each has a purchase rate
    ``lambda_i ~ Gamma(shape=r, rate=alpha)`` (per week) and a dropout probability
    ``p_i ~ Beta(a, b)``. While alive, *repeat* purchases arrive as a Poisson process with rate
    ``lambda_i``. Immediately after each repeat purchase the customer becomes inactive for good
    with probability ``p_i``. The first purchase (time 0 of the customer) never triggers a
    dropout, so every customer is alive at least until the first repeat purchase. This is the
    convention of the BG/NBD likelihood and of ``lifetimes.generate_data``
    (``beta_geometric_nbd_model``), where the dropout coin is tossed after each appended
    repeat purchase and ``alive`` starts ``True``. So the number of repeat purchases before
    dropout is ``K_i ~ Geometric(p_i)`` on ``{1, 2, ...}``, and the customer dies at the instant
    of the ``K_i``-th repeat purchase.

    Vectorised exactly: with ``W_i`` the time from the first purchase to the end of ``end``,
    ``N_i ~ Poisson(lambda_i W_i)`` purchases would occur in an immortal life. The observed repeat
    purchases are the first ``M_i = min(K_i, N_i)`` of the ``N_i`` sorted uniform arrival times on
    ``[0, W_i)``; they are drawn without drawing all ``N_i`` via the order-statistic identity
    ``U_(j) = S_j / (S_M + G)`` with ``S_j`` cumulative sums of standard exponentials and
    ``G ~ Gamma(N_i - M_i + 1)``. The customer is dead within the data iff ``K_i <= N_i``.

    Only the calendar day of an arrival is kept from the continuous process; the time of day is
    redrawn from a realistic intraday profile (shops only between 9:00 and 20:00), so a
    customer's orders are sorted again by their final timestamps. Day-level summaries (what
    ``lifetimes`` computes) are unaffected. Note that ``lifetimes``' customer-day summaries
    merge repeat orders placed on the same day (about 2 % of them with the defaults), so a
    BG/NBD fit on them over-estimates ``alpha`` by about 6 %; counting orders recovers the
    parameters without bias.

Bad experiences (optional; off by default: ``bad_experience_rate = 0`` changes nothing)
    A world where dropout also depends on behaviour a shop can see. Each order - the first
    one too - is a bad experience (a damaged, late or wrong delivery) with probability
    ``rho = bad_experience_rate``; right after it the customer quits for good with
    probability ``pi = bad_experience_dropout``, on top of the BG/NBD dropout. So the first
    fatal order has index ``F = Geometric(rho * pi) - 1`` (0 = the first purchase), the
    customer dies at order ``min(K_i, F)`` if that is within the data, and every other order
    is a (survived) bad experience with probability ``rho (1 - pi) / (1 - rho pi)``. Each bad
    order's first line comes back: a line with the negated quantity under the order's own id,
    dated 2-14 days (plus 0-10 hours) after the order, capped at the end of ``end`` - a
    *return* for :func:`crmkit.data.clean.clean_lines` (kept as a negative line by
    ``returns: net``). The purchase process is no longer BG/NBD, so BG/NBD's P(no purchase)
    is no longer the best possible churn score: the returns carry information it ignores.
    ``truth.customers`` gains ``n_bad_experiences`` and ``quit_after_bad_experience``;
    ``truth.n_return_lines`` counts the return lines. Its random numbers come from a stream
    of their own (``experience``), not drawn at all when the option is off.

Order value (Gamma-Gamma, Fader, Hardie & Lee 2005)
    ``nu_i ~ Gamma(shape=q, rate=gamma)``; every order of customer ``i`` has value
    ``z ~ Gamma(shape=p, rate=nu_i)``, drawn before its basket. Once the basket is built, its
    unit prices are the list prices rescaled so that it sums to ``z``:
    ``unit_price = round(list_price * z / sum(list_price * quantity), 2)`` (at least 0.01). The
    realised order value therefore follows the Gamma-Gamma model exactly up to cent rounding,
    and relative prices within a basket (hence price tiers) are preserved. Because the basket is
    filled to match ``z`` (below), the rescaling factor is close to 1 (5-95 % range about
    0.87-1.18 with the defaults): a product's unit price stays near its list price, as in real
    shops, instead of absorbing the whole order-value noise.

Baskets
    A basket is filled like a shopper with a budget ``z``, in rounds vectorised over the open
    orders (never a loop over orders): each round draws one candidate line per open order -- a
    product, with probability ``category_loyalty`` from the customer's favourite category and
    otherwise from the whole catalogue, always by Zipf-like popularity (weight
    ``1 / rank**zipf_exponent``), and a quantity (1: 72 %, 2: 14 %, 3: 6 %, 4: 4 %, 5 or 6: 2 %
    each). The candidate is accepted if the basket's list value stays within ``1.15 z``; the
    order closes once it reaches ``0.85 z``, after 3 rejected candidates in a row, or after 60
    rounds. An empty basket accepts a tier 1 candidate (quantity 1) after 6 rejections, so small
    budgets buy cheap products. A product drawn twice in an order becomes one line with the
    quantities added. Expensive products thus land in high-value orders (up-sell), and the basket
    size follows the order value; ``price_level`` sets the mean basket size (about 2.5 lines).

    Planted affinities ``A -> B``: the antecedents are the ``n_affinities`` cheapest products
    among popularity ranks ``2 .. 3 * n_affinities + 1`` (popular but not the top seller, so
    lift stays high, and cheap enough to fit most budgets); each consequent is a random product
    outside those ranks (tier 1 or 2 while there are enough), and no product takes part in two
    rules. Each order has one coin per rule, drawn up
    front with ``P(yes) = affinity_confidence``. A candidate ``A`` is judged against the budget
    with the *expected* value of its ``B`` (confidence x list price), so whether ``A`` enters a
    basket does not depend on the coin; if it enters and the coin says yes, ``B`` (quantity 1)
    comes along. A ``B`` drawn on its own in an order whose ``A`` came without it is taken out.
    So ``P(B in order | A in order)`` equals ``affinity_confidence`` exactly (in expectation);
    orders without ``A`` hold ``B`` only at its small popularity base rate.

    Consumables: ``round(consumable_share * n_products)`` products, the cheap ones first (tier 1
    before tier 2; never rule products), have a repurchase cycle ``cycle_days`` (14..90). A
    share ``consumable_adoption`` of customers adopt one favourite consumable (chosen by
    popularity): it is put first into their first order and then into the first order placed
    at least ``tolerance * cycle_days`` after their previous purchase of it,
    ``tolerance ~ U(0.75, 1)`` per customer; it counts towards the order's budget, and adopters
    never pick it up otherwise (other customers may buy it like any product). This is a
    loop over order rank (a customer's 1st, 2nd, ... order) vectorised over customers, never a
    loop over single customers or orders.

    The catalogue has ``n_categories`` categories; within each, products fall in price tiers
    1/2/3 (50/30/20 %, every tier present in every category) with tier 3 about 3-5x and tier 2
    about 1.7-2.2x the category's tier 1 level, category levels lognormal (sigma 0.45) and list
    prices lognormal (sigma 0.2) within a tier, all rescaled so that the popularity-weighted
    harmonic mean list price is ``price_level``.

Dirty rows
    On top of the clean lines, five kinds of dirty rows are planted, each an exact count
    ``max(1, round(dirty_fraction / 5 * n_clean_lines))`` (0 when ``dirty_fraction == 0`` or
    ``n_customers < 50`` rounds it to 0), recorded in :attr:`SimulationTruth.dirty`:

    ``missing_customer_id``
        lines of extra guest orders (new order ids, 1-3 distinct products each, list prices)
        with ``customer_id`` NaN;
    ``cancellation``
        copies of distinct clean lines with ``order_id = "C" + original order id``, negated
        quantity, same customer/product/price, dated 1-5 days (plus 0-6 hours) after the
        original order (the same delay for all cancelled lines of one order, capped at the end
        of ``end``);
    ``non_product``
        one postage line per chosen clean order: ``product_id "POST"``, ``product_name
        "POSTAGE"``, ``category`` NaN, quantity 1, ``unit_price`` 3.95, 4.95 or 6.95;
    ``duplicate``
        exact copies (every column equal) of distinct clean lines;
    ``non_positive_price``
        one extra line per chosen clean order with a popular product, quantity 1 and
        ``unit_price`` 0.0.

    No dirty row belongs to two kinds, and the clean lines are exactly the rows that remain
    after dropping NaN customers, ``C`` orders, ``POST`` lines, non-positive prices and
    duplicated rows (and, with bad experiences, the return lines: negative quantities).
    Ground-truth order counts and alive flags refer to clean orders only.

Randomness comes from ``numpy.random.Generator(PCG64(...))`` streams spawned from
``SeedSequence(seed)``, one per stage, so the same parameters always give identical output.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from crmkit.errors import ConfigError

__all__ = [
    "DIRTY_KINDS",
    "LINE_COLUMNS",
    "LINES_PER_CUSTOMER",
    "POSTAGE_PRODUCT_ID",
    "SimulationParams",
    "SimulationResult",
    "SimulationTruth",
    "customers_for_lines",
    "simulate_transactions",
]

#: Kinds of planted dirty rows, in the order they are reported.
DIRTY_KINDS: tuple[str, ...] = (
    "missing_customer_id",
    "cancellation",
    "non_product",
    "duplicate",
    "non_positive_price",
)
#: ``product_id`` of the planted postage (non-product) lines.
POSTAGE_PRODUCT_ID = "POST"
#: Columns of :attr:`SimulationResult.lines`, in order.
LINE_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "order_id",
    "order_ts",
    "product_id",
    "quantity",
    "unit_price",
    "category",
    "product_name",
    "country",
    "channel",
)
#: Mean number of rows of ``lines`` (dirty rows included) per customer with the default
#: parameters, measured over 10 seeds x 200 000 customers (mean 15.86, range 15.24-16.31 per
#: seed: the catalogue's price structure and the heavy tail of very frequent, long-lived
#: buyers; at 5 000 customers the per-seed standard deviation is about 3.5 %). About 6.4
#: orders per customer x 2.5 lines per order.
LINES_PER_CUSTOMER = 15.86

_NS_PER_SECOND = 1_000_000_000
_NS_PER_DAY = 86_400 * _NS_PER_SECOND
_CATEGORY_NAMES = (
    "Home",
    "Kitchen",
    "Garden",
    "Toys",
    "Books",
    "Beauty",
    "Sports",
    "Electronics",
    "Pets",
    "Grocery",
    "Fashion",
    "Stationery",
)
_TIER_NAMES = ("Basic", "Plus", "Premium")
_TIER_SHARES = (0.5, 0.3, 0.2)
_COUNTRIES = ("United Kingdom", "Germany", "France", "Netherlands", "Ireland", "Spain", "Belgium")
_COUNTRY_SHARES = (0.72, 0.08, 0.07, 0.04, 0.04, 0.03, 0.02)
_CHANNELS = ("web", "app", "store")
_CHANNEL_SHARES = (0.55, 0.30, 0.15)
_QUANTITY_SHARES = (0.72, 0.14, 0.06, 0.04, 0.02, 0.02)  # quantities 1..6
_POSTAGE_PRICES = (3.95, 4.95, 6.95)
# Relative order intensity per hour of day (online) and for the "store" channel.
_HOURLY_ONLINE = np.array(
    [1.0, 0.6, 0.35, 0.25, 0.2, 0.3, 0.7, 1.5, 2.5, 3.3, 3.8, 4.0]
    + [4.3, 4.2, 4.0, 3.8, 3.7, 3.9, 4.3, 4.8, 5.0, 4.5, 3.2, 1.9]
)
_HOURLY_STORE = np.array(
    [0.0] * 9 + [1.5, 2.5, 3.0, 3.5, 3.5, 3.0, 3.0, 3.2, 3.5, 3.0, 2.0] + [0.0] * 4
)
# Basket filling: accept a candidate line while the basket's list value stays within
# (1 + tolerance) x the order value; stop at (1 - tolerance) x value, after _MAX_MISSES
# candidates in a row that do not fit, or after _MAX_ROUNDS candidates. An empty basket takes
# its candidate (quantity 1) regardless after _FORCE_AFTER misses.
_BASKET_TOLERANCE = 0.15
_MAX_MISSES = 3
_FORCE_AFTER = 6
_MAX_ROUNDS = 60
_STAGES = ("catalogue", "customers", "times", "baskets", "prices", "dirty", "experience")
# Days (integer part) from an order to the return of a line after a bad experience.
_RETURN_DAYS = (2, 15)


@dataclass(frozen=True)
class SimulationParams:
    """All tunables of :func:`simulate_transactions`, validated on construction.

    Parameters
    ----------
    n_customers
        Number of (identified) customers.
    start
        First possible acquisition day (``YYYY-MM-DD``).
    acquisition_weeks
        First purchases are uniform over ``[start, start + acquisition_weeks)``; the window must
        end no later than the end of ``cutoff``.
    cutoff
        Calibration cut-off (as-of day) of the ground truth; calibration is ``order_ts`` before
        ``cutoff + 1 day``, holdout is the rest.
    end
        Last day of generated data (after ``cutoff``).
    r, alpha
        BG/NBD purchase rate ``lambda ~ Gamma(shape=r, rate=alpha)``, per week.
    a, b
        BG/NBD dropout probability ``p ~ Beta(a, b)``.
    p, q, gamma
        Gamma-Gamma spend: ``nu ~ Gamma(shape=q, rate=gamma)``, order value
        ``z ~ Gamma(shape=p, rate=nu)``; mean order value ``p * gamma / (q - 1)`` when ``q > 1``.
    n_products, n_categories
        Catalogue size; ``n_products >= 3 * n_categories`` (every category has all 3 tiers).
    n_affinities
        Number of planted rules ``A -> B``.
    affinity_confidence
        ``P(B in order | A in order)`` of every planted rule.
    consumable_share
        Share of products that are consumables with a repurchase cycle.
    dirty_fraction
        Total share (relative to the clean lines) of planted dirty rows, split evenly over the
        five kinds.
    price_level
        Popularity-weighted harmonic mean list price of the catalogue (list prices are rescaled
        to it). As order values are fixed by the Gamma-Gamma model, it sets the basket size:
        the default gives about 2.5 lines per order.
    category_loyalty
        Probability that a drawn product comes from the customer's favourite category.
    zipf_exponent
        Product popularity is proportional to ``1 / rank ** zipf_exponent``.
    consumable_adoption
        Share of customers who repurchase one favourite consumable on its cycle.
    bad_experience_rate
        Share of orders with a bad experience (a damaged, late or wrong delivery), each
        followed by the return of one line; ``0`` (default) turns the mechanism off and leaves
        the output unchanged. See *Bad experiences* in the module docstring.
    bad_experience_dropout
        Probability that a customer drops out for good right after a bad experience (on top
        of the BG/NBD dropout).
    seed
        Seed of all random streams.
    """

    n_customers: int = 5000
    start: str = "2022-01-01"
    acquisition_weeks: float = 26.0
    cutoff: str = "2023-06-30"
    end: str = "2023-12-31"
    r: float = 0.75
    alpha: float = 4.0
    a: float = 0.8
    b: float = 2.5
    p: float = 6.0
    q: float = 3.5
    gamma: float = 15.0
    n_products: int = 300
    n_categories: int = 12
    n_affinities: int = 8
    affinity_confidence: float = 0.6
    consumable_share: float = 0.1
    dirty_fraction: float = 0.01
    price_level: float = 8.75
    category_loyalty: float = 0.5
    zipf_exponent: float = 1.0
    consumable_adoption: float = 0.3
    bad_experience_rate: float = 0.0
    bad_experience_dropout: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_customers", "n_products", "n_categories", "n_affinities", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        for name in ("n_customers", "n_products", "n_categories"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("n_affinities", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("acquisition_weeks", "r", "alpha", "a", "b", "p", "q", "gamma"):
            value = _as_float(self, name)
            if not value > 0 or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        for name in (
            "affinity_confidence",
            "consumable_share",
            "category_loyalty",
            "consumable_adoption",
            "bad_experience_dropout",
        ):
            value = _as_float(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        bad = _as_float(self, "bad_experience_rate")
        if not 0.0 <= bad < 1.0:
            raise ConfigError(f"bad_experience_rate must be in [0, 1), got {bad!r}")
        fraction = _as_float(self, "dirty_fraction")
        if not 0.0 <= fraction <= 0.5:
            raise ConfigError(f"dirty_fraction must be in [0, 0.5], got {fraction!r}")
        level = _as_float(self, "price_level")
        if not 0.01 <= level <= 1e6:
            raise ConfigError(f"price_level must be in [0.01, 1e6], got {level!r}")
        zipf = _as_float(self, "zipf_exponent")
        if not 0.0 <= zipf <= 10.0:
            raise ConfigError(f"zipf_exponent must be in [0, 10], got {zipf!r}")

        start, cutoff, end = (_as_day(self, n) for n in ("start", "cutoff", "end"))
        acquisition_end = start + pd.Timedelta(days=7.0 * self.acquisition_weeks)
        if acquisition_end > cutoff + pd.Timedelta(days=1):
            raise ConfigError(
                f"cutoff ({cutoff.date()}) is before the end of the acquisition window "
                f"(start + acquisition_weeks = {acquisition_end}); every customer must be "
                "acquired by the cutoff"
            )
        if not end > cutoff:
            raise ConfigError(f"end ({end.date()}) must be after cutoff ({cutoff.date()})")

        if self.n_products < 3 * self.n_categories:
            raise ConfigError(
                f"n_products ({self.n_products}) must be >= 3 * n_categories "
                f"({3 * self.n_categories}): every category has products in 3 price tiers"
            )
        n_consumables = self.n_consumables
        if self.n_products < 5 * self.n_affinities + n_consumables:
            raise ConfigError(
                f"n_products ({self.n_products}) must be >= 5 * n_affinities + the number of "
                f"consumables ({5 * self.n_affinities} + {n_consumables}); lower n_affinities "
                "or consumable_share"
            )

    @property
    def n_consumables(self) -> int:
        """Number of consumable products, ``round(consumable_share * n_products)``."""
        return int(round(self.consumable_share * self.n_products))

    @property
    def start_ts(self) -> pd.Timestamp:
        """``start`` as a midnight timestamp."""
        return pd.Timestamp(self.start)

    @property
    def cutoff_ts(self) -> pd.Timestamp:
        """``cutoff`` as a midnight timestamp (calibration runs to the end of this day)."""
        return pd.Timestamp(self.cutoff)

    @property
    def end_ts(self) -> pd.Timestamp:
        """``end`` as a midnight timestamp (data runs to the end of this day)."""
        return pd.Timestamp(self.end)

    def to_json_dict(self) -> dict[str, Any]:
        """The parameters as JSON-native values."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.integer | int):
                out[f.name] = int(value)
            elif isinstance(value, np.floating | float):
                out[f.name] = float(value)
            else:
                out[f.name] = str(value)
        return out


def _as_float(params: SimulationParams, name: str) -> float:
    value = getattr(params, name)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return float(value)


def _as_day(params: SimulationParams, name: str) -> pd.Timestamp:
    value = getattr(params, name)
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a date like '2022-01-01', got {value!r}") from exc
    if ts is pd.NaT or ts.tzinfo is not None or ts != ts.normalize():
        raise ConfigError(f"{name} must be a naive calendar date like '2022-01-01', got {value!r}")
    return ts


@dataclass(frozen=True, eq=False)
class SimulationTruth:
    """The known process behind a simulated data set.

    Attributes
    ----------
    params
        The parameters used.
    customers
        One row per customer: ``customer_id``, ``first_purchase_ts``, ``lam`` (purchase rate per
        week), ``p_drop``, ``nu``, ``death_ts`` (timestamp of the repeat purchase after which the
        customer dropped out; NaT if that happens after ``end``), ``alive_at_cutoff``,
        ``n_orders_calibration`` and ``n_orders_holdout`` (clean orders, first purchase included,
        before / after the end of the cutoff day), plus ``country``, ``favourite_category`` and
        ``consumable_id`` (the adopted consumable, NaN for non-adopters).
    products
        ``product_id``, ``product_name``, ``category``, ``price_tier`` (1..3), ``list_price``,
        ``is_consumable``, ``cycle_days`` (NaN if not consumable), ``popularity`` (sampling
        weight, sums to 1).
    rules
        Planted affinities: ``antecedent``, ``consequent``, ``planted_confidence``.
    dirty
        Exact number of planted dirty rows per kind (see :data:`DIRTY_KINDS`).
    n_clean_lines
        Number of clean order lines.
    n_return_lines
        Number of return lines after bad experiences (0 unless ``bad_experience_rate > 0``;
        then ``customers`` also has ``n_bad_experiences`` and ``quit_after_bad_experience``).
    """

    params: SimulationParams
    customers: pd.DataFrame
    products: pd.DataFrame
    rules: pd.DataFrame
    dirty: dict[str, int]
    n_clean_lines: int = 0
    n_return_lines: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary: parameters, dirty counts, rules and headline counts."""
        c = self.customers
        return {
            "params": self.params.to_json_dict(),
            "dirty": {k: int(v) for k, v in self.dirty.items()},
            "n_dirty_lines": int(sum(self.dirty.values())),
            "n_clean_lines": int(self.n_clean_lines),
            "n_return_lines": int(self.n_return_lines),
            "n_customers": int(len(c)),
            "n_alive_at_cutoff": int(c["alive_at_cutoff"].sum()),
            "n_dead_by_end": int(c["death_ts"].notna().sum()),
            "n_orders_calibration": int(c["n_orders_calibration"].sum()),
            "n_orders_holdout": int(c["n_orders_holdout"].sum()),
            "n_products": int(len(self.products)),
            "consumables": [
                str(x) for x in self.products.loc[self.products["is_consumable"], "product_id"]
            ],
            "rules": [
                {
                    "antecedent": str(r.antecedent),
                    "consequent": str(r.consequent),
                    "planted_confidence": float(r.planted_confidence),
                }
                for r in self.rules.itertuples(index=False)
            ],
        }


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """Simulated order lines and the truth behind them.

    Attributes
    ----------
    lines
        Order lines with columns :data:`LINE_COLUMNS` (clean and dirty rows), sorted by
        ``order_ts``, ``order_id``, ``product_id``, index ``0..n-1``.
    truth
        The generating process; see :class:`SimulationTruth`.
    """

    lines: pd.DataFrame
    truth: SimulationTruth


def customers_for_lines(n_lines: int) -> int:
    """Number of customers that gives about ``n_lines`` rows of ``lines`` with default params.

    Uses the empirical :data:`LINES_PER_CUSTOMER` (15.86 rows per customer, dirty rows
    included, measured over 10 seeds at 200 000 customers; single seeds lie within about 4 %
    at that size and within about 10 % at 5 000 customers). Small data sets vary more because a few
    customers buy very often.

    Parameters
    ----------
    n_lines
        Wanted number of order lines, >= 1.

    Returns
    -------
    int
        ``max(1, round(n_lines / LINES_PER_CUSTOMER))``.
    """
    if isinstance(n_lines, bool) or not isinstance(n_lines, int | np.integer) or n_lines < 1:
        raise ConfigError(f"n_lines must be an integer >= 1, got {n_lines!r}")
    return max(1, int(round(int(n_lines) / LINES_PER_CUSTOMER)))


def simulate_transactions(
    params: SimulationParams | None = None, **overrides: Any
) -> SimulationResult:
    """Simulate e-commerce order lines from a known BG/NBD + Gamma-Gamma + basket process.

    See the module docstring for the full process and the dirty-row conventions.

    Parameters
    ----------
    params
        Parameters; defaults to ``SimulationParams()``.
    **overrides
        Fields of :class:`SimulationParams` to replace, e.g. ``n_customers=20_000, seed=3``.

    Returns
    -------
    SimulationResult
        ``lines`` (canonical order-line columns: ``customer_id``, ``order_id``, ``order_ts``,
        ``product_id``, ``quantity``, ``unit_price``, and ``category``, ``product_name``,
        ``country``, ``channel``) and ``truth``.

    Raises
    ------
    ValueError
        (:class:`crmkit.errors.ConfigError`) for invalid parameters.

    Examples
    --------
    >>> res = simulate_transactions(n_customers=200, seed=1)
    >>> list(res.lines.columns[:6])
    ['customer_id', 'order_id', 'order_ts', 'product_id', 'quantity', 'unit_price']
    """
    if params is None:
        params = SimulationParams(**overrides)
    elif overrides:
        params = dataclasses.replace(params, **overrides)
    elif not isinstance(params, SimulationParams):
        raise ConfigError(f"params must be a SimulationParams, got {type(params).__name__}")
    seqs = np.random.SeedSequence(params.seed).spawn(len(_STAGES))
    rngs = {
        name: np.random.Generator(np.random.PCG64(s)) for name, s in zip(_STAGES, seqs, strict=True)
    }

    cat = _make_catalogue(params, rngs["catalogue"])
    cust = _make_customers(params, cat, rngs["customers"])
    if params.bad_experience_rate > 0:
        _add_bad_experiences(params, cust, rngs["experience"])
    orders = _make_orders(params, cust, rngs["times"])
    if params.bad_experience_rate > 0:
        _mark_bad_orders(params, cust, orders, rngs["experience"])
    _draw_order_values(params, cust, orders, rngs["prices"])
    basket = _make_baskets(params, cat, cust, orders, rngs["baskets"])
    line_price = _price_lines(cat, orders, basket)
    return _assemble(
        params, cat, cust, orders, basket, line_price, rngs["dirty"], rngs["experience"]
    )


# --------------------------------------------------------------------------- catalogue


def _make_catalogue(params: SimulationParams, rng: np.random.Generator) -> dict[str, Any]:
    n, n_cat = params.n_products, params.n_categories
    category = rng.permutation(np.arange(n) % n_cat)
    tier = 1 + np.searchsorted(np.cumsum(_TIER_SHARES), rng.random(n), side="right")
    tier = np.minimum(tier, 3)
    # every category gets its first three products (by id) in tiers 1, 2, 3
    by_cat = np.argsort(category, kind="stable")
    first = np.searchsorted(category[by_cat], np.arange(n_cat))
    rank = np.empty(n, dtype=np.int64)
    rank[by_cat] = np.arange(n) - first[category[by_cat]]
    tier = np.where(rank < 3, rank + 1, tier).astype(np.int64)

    base = np.exp(rng.normal(0.0, 0.45, n_cat))
    top_mult = rng.uniform(3.0, 5.0, n_cat)
    mult = np.stack([np.ones(n_cat), np.sqrt(top_mult), top_mult], axis=1)
    list_price = base[category] * mult[category, tier - 1] * np.exp(rng.normal(0.0, 0.2, n))
    pop_rank = rng.permutation(n)  # 0 = most popular
    weight = 1.0 / (pop_rank + 1.0) ** params.zipf_exponent
    weight /= weight.sum()
    # popularity-weighted harmonic mean list price = price_level (the harmonic mean is what
    # sets how many lines a budget buys, so basket sizes vary little between seeds)
    list_price *= params.price_level * np.dot(weight, 1.0 / list_price)
    list_price = np.maximum(np.round(list_price, 2), 0.01)
    by_pop = np.argsort(pop_rank)  # product indices, most popular first

    k = params.n_affinities
    # antecedents: the k cheapest of the popular products (ranks 1..3k; the top seller is left
    # out to keep lift high), so budgets let them into baskets often; consequents: random
    # products outside that range, tiers 1-2 first so the bundles stay affordable
    popular = by_pop[1 : 3 * k + 1]
    antecedents = popular[np.lexsort((rng.random(len(popular)), list_price[popular]))[:k]]
    rest = by_pop[3 * k + 1 :]
    consequents = rest[np.lexsort((rng.random(len(rest)), tier[rest] == 3))[:k]]
    in_rule = np.zeros(n, dtype=bool)
    in_rule[antecedents] = True
    in_rule[consequents] = True
    is_consumable = np.zeros(n, dtype=bool)
    n_cons = params.n_consumables
    if n_cons:  # consumables are cheap: random tier 1 products first, then tier 2, 3
        eligible = np.flatnonzero(~in_rule)
        eligible = eligible[np.lexsort((rng.random(len(eligible)), tier[eligible]))]
        is_consumable[eligible[:n_cons]] = True
    cycle_days = np.full(n, np.nan)
    cycle_days[is_consumable] = rng.integers(14, 91, size=n_cons).astype(float)

    cat_names = np.array(
        [
            _CATEGORY_NAMES[i] if i < len(_CATEGORY_NAMES) else f"Category {i + 1:02d}"
            for i in range(n_cat)
        ],
        dtype=object,
    )
    width = max(4, len(str(n)))
    product_ids = [f"P{i + 1:0{width}d}" for i in range(n)]
    names = [
        f"{cat_names[c]} {_TIER_NAMES[t - 1]} {i + 1:03d}" + (" Refill" if cons else "")
        for i, (c, t, cons) in enumerate(zip(category, tier, is_consumable, strict=True))
    ]
    return {
        "category": category,
        "tier": tier,
        "list_price": list_price,
        "weight": weight,
        "antecedents": antecedents,
        "consequents": consequents,
        "is_consumable": is_consumable,
        "cycle_days": cycle_days,
        "cat_names": cat_names,
        "product_ids": product_ids,
        "names": names,
    }


# --------------------------------------------------------------------------- customers


def _make_customers(
    params: SimulationParams, cat: dict[str, Any], rng: np.random.Generator
) -> dict[str, Any]:
    n = params.n_customers
    horizon_weeks = ((params.end_ts - params.start_ts).days + 1) / 7.0
    t0 = rng.uniform(0.0, params.acquisition_weeks, n)
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p_drop = rng.beta(params.a, params.b, n)
    nu = rng.gamma(params.q, 1.0 / params.gamma, n)
    window = horizon_weeks - t0
    n_events = rng.poisson(lam * window)  # purchases in an immortal life through `end`
    # repeat purchases before dropout, >= 1 (p_drop is clipped away from 0 for numpy)
    k_drop = rng.geometric(np.clip(p_drop, 1e-12, 1.0))
    died = k_drop <= n_events
    n_repeat = np.minimum(k_drop, n_events).astype(np.int64)

    cat_weight = np.bincount(cat["category"], weights=cat["weight"], minlength=params.n_categories)
    fav_cat = _draw(rng, cat_weight, n)
    country = _draw(rng, np.array(_COUNTRY_SHARES), n)
    n_cons = params.n_consumables
    if n_cons:
        cons_ids = np.flatnonzero(cat["is_consumable"])
        adopter = rng.random(n) < params.consumable_adoption
        fav_cons = cons_ids[_draw(rng, cat["weight"][cons_ids], n)]
        fav_cons = np.where(adopter, fav_cons, -1)
        tolerance = rng.uniform(0.75, 1.0, n)
        cycle_ns = np.where(
            adopter,
            np.round(cat["cycle_days"][np.maximum(fav_cons, 0)] * tolerance * _NS_PER_DAY),
            0,
        ).astype(np.int64)
    else:
        fav_cons = np.full(n, -1, dtype=np.int64)
        cycle_ns = np.zeros(n, dtype=np.int64)
    return {
        "t0": t0,
        "window": window,
        "lam": lam,
        "p_drop": p_drop,
        "nu": nu,
        "n_events": n_events,
        "k_drop": k_drop,
        "n_repeat": n_repeat,
        "died": died,
        "fav_cat": fav_cat,
        "country": country,
        "fav_cons": fav_cons,
        "cycle_ns": cycle_ns,
    }


def _add_bad_experiences(
    params: SimulationParams, cust: dict[str, Any], rng: np.random.Generator
) -> None:
    """Dropout after a bad experience, on top of BG/NBD's: each order (the first one too) is
    a bad experience with probability ``rho = bad_experience_rate``, after which the customer
    quits with probability ``pi = bad_experience_dropout``. The first fatal order (index ``F``,
    0 = the first purchase) is ``Geometric(rho * pi) - 1``; the customer dies at order
    ``min(K, F)`` (``K``: BG/NBD's dropout order) if that is within the data."""
    fatal_p = params.bad_experience_rate * params.bad_experience_dropout
    n = params.n_customers
    fatal = (
        rng.geometric(fatal_p, n).astype(np.int64) - 1
        if fatal_p > 0
        else np.full(n, np.iinfo(np.int64).max)
    )
    death = np.minimum(cust["k_drop"], fatal)
    cust["died"] = death <= cust["n_events"]
    cust["n_repeat"] = np.minimum(death, cust["n_events"]).astype(np.int64)
    cust["quit_bad"] = cust["died"] & (fatal <= cust["k_drop"])


def _mark_bad_orders(
    params: SimulationParams,
    cust: dict[str, Any],
    orders: dict[str, Any],
    rng: np.random.Generator,
) -> None:
    """``orders["bad"]``: the fatal order of customers who quit after a bad experience (their
    last), and every other order with the probability of a bad experience that did not make
    the customer quit, ``rho (1 - pi) / (1 - rho pi)``."""
    rho, pi = params.bad_experience_rate, params.bad_experience_dropout
    c = orders["cust"]
    last = orders["pos"] == cust["n_repeat"][c]
    bad = rng.random(orders["n_orders"]) < rho * (1.0 - pi) / (1.0 - rho * pi)
    orders["bad"] = bad | (last & cust["quit_bad"][c])


def _draw_segments(
    rng: np.random.Generator,
    cum: np.ndarray,
    seg_start: np.ndarray,
    seg_end: np.ndarray,
    seg: np.ndarray,
) -> np.ndarray:
    """Positions drawn within segments ``[seg_start[s], seg_end[s])`` of the weights whose
    cumulative sum is ``cum``, one per entry of ``seg``, proportionally to the weights."""
    cum_before = np.concatenate(([0.0], cum))[seg_start]
    seg_total = cum[seg_end - 1] - cum_before
    target = rng.random(len(seg))
    target *= seg_total[seg]
    target += cum_before[seg]
    pos = np.searchsorted(cum, target, side="right")
    del target
    return np.clip(pos, seg_start[seg], seg_end[seg] - 1, out=pos)


def _draw(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    """Indices drawn with probability proportional to ``weights`` (vectorised)."""
    cum = np.cumsum(weights, dtype=float)
    idx = np.searchsorted(cum, rng.random(size) * cum[-1], side="right")
    return np.minimum(idx, len(weights) - 1).astype(np.int64)


def _time_of_day(rng: np.random.Generator, channel: np.ndarray) -> np.ndarray:
    """Seconds after midnight from the intraday profile of each order's channel."""
    hour = np.where(
        channel == _CHANNELS.index("store"),
        _draw(rng, _HOURLY_STORE, len(channel)),
        _draw(rng, _HOURLY_ONLINE, len(channel)),
    )
    return hour * 3600 + rng.integers(0, 3600, len(channel))


def _make_orders(
    params: SimulationParams, cust: dict[str, Any], rng: np.random.Generator
) -> dict[str, Any]:
    n = params.n_customers
    n_repeat = cust["n_repeat"]
    counts = 1 + n_repeat
    n_orders = int(counts.sum())
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])

    # first m of N sorted uniforms on [0, W): U_(j) = S_j / (S_m + Gamma(N - m + 1))
    rep_cust = np.repeat(np.arange(n), n_repeat)
    cs = np.cumsum(rng.standard_exponential(int(n_repeat.sum())))
    rep_start = offsets[:-1] - np.arange(n)  # start of each customer's block in rep arrays
    before = np.concatenate(([0.0], cs))[rep_start]  # cumulative sum before the block
    has_rep = n_repeat > 0
    s_last = np.zeros(n)
    s_last[has_rep] = cs[rep_start[has_rep] + n_repeat[has_rep] - 1] - before[has_rep]
    g = np.zeros(n)
    g[has_rep] = rng.standard_gamma((cust["n_events"] - n_repeat + 1)[has_rep].astype(float))
    cs -= before[rep_cust]
    cs /= (s_last + g)[rep_cust]  # now the uniform order statistics
    t = np.empty(n_orders)
    is_first = np.zeros(n_orders, dtype=bool)
    is_first[offsets[:-1]] = True
    t[is_first] = cust["t0"]
    t[~is_first] = cust["t0"][rep_cust] + cust["window"][rep_cust] * cs
    del cs, rep_cust, is_first
    order_cust = np.repeat(np.arange(n, dtype=np.int64), counts)

    horizon_days = (params.end_ts - params.start_ts).days + 1
    day = np.minimum(np.floor(t * 7.0).astype(np.int64), horizon_days - 1)
    del t
    channel = _draw(rng, np.array(_CHANNEL_SHARES), n_orders).astype(np.int8)
    ts = params.start_ts.value + day * _NS_PER_DAY
    del day
    ts += _time_of_day(rng, channel) * _NS_PER_SECOND

    # each customer's orders sorted by final timestamp (same-day orders may swap) -> rank
    perm = np.lexsort((ts, order_cust))
    ts, channel = ts[perm], channel[perm]
    pos = np.arange(n_orders) - offsets[order_cust]
    cutoff_excl = (params.cutoff_ts + pd.Timedelta(days=1)).value
    stats = {
        "first_ts": ts[offsets[:-1]],
        "last_ts": ts[offsets[1:] - 1],
        "n_orders": counts,
        "n_calibration": np.bincount(order_cust[ts < cutoff_excl], minlength=n),
    }
    # then all orders in time order (ties keep customer order): order index = time rank
    perm = np.argsort(ts, kind="stable")
    return {
        "n_orders": n_orders,
        "cust": order_cust[perm],
        "ts": ts[perm],
        "channel": channel[perm],
        "pos": pos[perm],
        "stats": stats,
    }


# --------------------------------------------------------------------------- baskets


def _make_baskets(
    params: SimulationParams,
    cat: dict[str, Any],
    cust: dict[str, Any],
    orders: dict[str, Any],
    rng: np.random.Generator,
) -> dict[str, Any]:
    n_prod = params.n_products
    n_orders = orders["n_orders"]
    n_cat = params.n_categories
    # popularity draws, within the favourite category (segments 0..n_cat-1) or the whole
    # catalogue (segment n_cat); products laid out grouped by category
    by_cat = np.argsort(cat["category"], kind="stable")
    cum = np.cumsum(cat["weight"][by_cat])
    cat_end = np.searchsorted(cat["category"][by_cat], np.arange(n_cat), side="right")
    seg_start = np.concatenate(([0], cat_end[:-1], [0]))
    seg_end = np.concatenate((cat_end, [n_prod]))
    fav = cust["fav_cat"][orders["cust"]]
    list_price = cat["list_price"]

    # consumables: adopters rebuy their consumable in the first order >= cycle after the last;
    # it is put in the basket first and counts towards the order value
    cons_orders = np.zeros(0, dtype=np.int64)
    adopters = cust["fav_cons"] >= 0
    if adopters.any():
        oc = orders["cust"]
        ad_orders = np.flatnonzero(adopters[oc])
        ad_pos = orders["pos"][ad_orders]
        ad_orders = ad_orders[np.argsort(ad_pos, kind="stable")]
        bounds = np.concatenate(([0], np.cumsum(np.bincount(ad_pos))))
        include = np.zeros(n_orders, dtype=bool)
        last = np.zeros(params.n_customers, dtype=np.int64)
        ts, cycle = orders["ts"], cust["cycle_ns"]
        for j in range(len(bounds) - 1):  # loop over order rank, vectorised over customers
            idx = ad_orders[bounds[j] : bounds[j + 1]]
            cj = oc[idx]
            due = np.ones(len(idx), dtype=bool) if j == 0 else ts[idx] - last[cj] >= cycle[cj]
            include[idx[due]] = True
            last[cj[due]] = ts[idx[due]]
        cons_orders = np.flatnonzero(include)
        del include, ad_orders, ad_pos
    cons_prod = cust["fav_cons"][orders["cust"][cons_orders]]
    cons_qty = _draw_quantity(rng, len(cons_orders))

    # planted affinities A -> B: one coin per order and rule, drawn up front. A candidate A is
    # judged with the *expected* value of its B (confidence x list price), so whether A gets
    # into a basket does not depend on the coin; if it does and the coin says yes, B (qty 1)
    # comes along. Hence P(B in order | A in order) = affinity_confidence exactly.
    k = params.n_affinities
    conf = params.affinity_confidence
    rule_of_a = np.full(n_prod, -1, dtype=np.int64)
    rule_of_a[cat["antecedents"]] = np.arange(k)
    rule_of_b = np.full(n_prod, -1, dtype=np.int64)
    rule_of_b[cat["consequents"]] = np.arange(k)
    coins = rng.random((n_orders, k)) < conf
    b_of_a = np.append(cat["consequents"], 0)[rule_of_a]  # -1 -> dummy
    extra_of_a = np.where(rule_of_a >= 0, conf * list_price[b_of_a], 0.0)

    # fill each basket up to its order value (rounds of one candidate per open order)
    value = orders["value"]
    cap = value * (1.0 + _BASKET_TOLERANCE)
    enough = value * (1.0 - _BASKET_TOLERANCE)
    spent = np.zeros(n_orders)
    n_items = np.zeros(n_orders, dtype=np.int64)
    spent[cons_orders] = list_price[cons_prod] * cons_qty
    n_items[cons_orders] = 1
    misses = np.zeros(n_orders, dtype=np.int64)
    open_ = np.flatnonzero(spent < enough)
    got_order, got_prod, got_qty = [cons_orders], [cons_prod], [cons_qty]
    own_cons = cust["fav_cons"][orders["cust"]]  # -1 for non-adopters
    tier1 = cat["tier"] == 1
    for _ in range(_MAX_ROUNDS):  # rounds over candidates, vectorised over open orders
        if not len(open_):
            break
        m = len(open_)
        seg = np.where(rng.random(m) < params.category_loyalty, fav[open_], n_cat)
        prod = by_cat[_draw_segments(rng, cum, seg_start, seg_end, seg)]
        qty = _draw_quantity(rng, m)
        force = (n_items[open_] == 0) & (misses[open_] >= _FORCE_AFTER) & tier1[prod]
        qty[force] = 1
        line_value = list_price[prod] * qty
        ok = force | (spent[open_] + line_value + extra_of_a[prod] <= cap[open_])
        ok &= prod != own_cons[open_]  # adopters buy their consumable only on its cycle
        acc = open_[ok]
        got_order.append(acc)
        got_prod.append(prod[ok])
        got_qty.append(qty[ok])
        spent[acc] += line_value[ok]
        a_acc = np.flatnonzero(rule_of_a[prod[ok]] >= 0)
        if len(a_acc):
            bundled = a_acc[coins[acc[a_acc], rule_of_a[prod[ok][a_acc]]]]
            b_prod = b_of_a[prod[ok][bundled]]
            got_order.append(acc[bundled])
            got_prod.append(b_prod)
            got_qty.append(np.ones(len(bundled), dtype=np.int64))
            spent[acc[bundled]] += list_price[b_prod]
        n_items[acc] += 1
        misses[acc] = 0
        misses[open_[~ok]] += 1
        done = (spent[open_] >= enough[open_]) | (
            (n_items[open_] > 0) & (misses[open_] >= _MAX_MISSES)
        )
        open_ = open_[~done]
    empty = np.flatnonzero(n_items == 0)  # only if _MAX_ROUNDS ran out before _FORCE_AFTER
    got_order.append(empty)
    got_prod.append(
        by_cat[_draw_segments(rng, cum, seg_start, seg_end, np.full(len(empty), n_cat))]
    )
    got_qty.append(np.ones(len(empty), dtype=np.int64))
    del spent, n_items, misses, cap, enough, fav, own_cons

    # the same product drawn twice in an order is one line with the quantities added up
    raw = np.concatenate(got_order) * n_prod + np.concatenate(got_prod)
    raw_qty = np.concatenate(got_qty)
    del got_order, got_prod, got_qty
    srt = np.argsort(raw, kind="stable")
    raw, raw_qty = raw[srt], raw_qty[srt]
    first = np.flatnonzero(np.concatenate(([True], raw[1:] != raw[:-1])))
    keys = raw[first]
    line_qty = np.add.reduceat(raw_qty, first) if len(raw) else raw_qty
    del raw, raw_qty, srt, first

    # a B drawn on its own in an order whose A came without it (coin says no) is taken out
    if k:
        o, pr = np.divmod(keys, n_prod)
        rb = rule_of_b[pr]
        b_idx = np.flatnonzero(rb >= 0)
        a_keys = o[b_idx] * n_prod + cat["antecedents"][rb[b_idx]]
        pos = np.minimum(np.searchsorted(keys, a_keys), len(keys) - 1)
        with_a = keys[pos] == a_keys
        drop = b_idx[with_a & ~coins[o[b_idx], rb[b_idx]]]
        keep = np.ones(len(keys), dtype=bool)
        keep[drop] = False
        keys, line_qty = keys[keep], line_qty[keep]
        del o, pr, rb, keep
    del coins

    line_order, product = np.divmod(keys, n_prod)
    del keys
    return {
        "order": line_order,
        "product": product.astype(np.int32),
        "quantity": line_qty.astype(np.int64),
    }


def _draw_quantity(rng: np.random.Generator, size: int) -> np.ndarray:
    """Line quantities 1..6 with :data:`_QUANTITY_SHARES`."""
    return 1 + _draw(rng, np.array(_QUANTITY_SHARES), size)


def _draw_order_values(
    params: SimulationParams, cust: dict[str, Any], orders: dict[str, Any], rng: np.random.Generator
) -> None:
    """Order values ``z ~ Gamma(shape=p, rate=nu_i)`` (stored as ``orders["value"]``)."""
    orders["value"] = rng.gamma(params.p, 1.0 / cust["nu"][orders["cust"]])


def _price_lines(
    cat: dict[str, Any],
    orders: dict[str, Any],
    basket: dict[str, Any],
) -> np.ndarray:
    """Unit prices: list prices rescaled so that each basket is worth its order value."""
    lp = cat["list_price"][basket["product"]]
    list_value = np.bincount(
        basket["order"], weights=lp * basket["quantity"], minlength=orders["n_orders"]
    )
    scale = orders["value"] / list_value
    lp *= scale[basket["order"]]
    return np.maximum(np.round(lp, 2, out=lp), 0.01, out=lp)


# --------------------------------------------------------------------------- dirty rows + output


def _dirty_count(params: SimulationParams, n_clean: int) -> int:
    if params.dirty_fraction == 0:
        return 0
    k = int(round(params.dirty_fraction / len(DIRTY_KINDS) * n_clean))
    return max(1, k) if params.n_customers >= 50 else k


_LINE_FIELDS = ("num", "cancel", "cust", "ts", "prod", "qty", "price", "country", "channel")


def _assemble(
    params: SimulationParams,
    cat: dict[str, Any],
    cust: dict[str, Any],
    orders: dict[str, Any],
    basket: dict[str, Any],
    price: np.ndarray,
    rng: np.random.Generator,
    rng_returns: np.random.Generator,
) -> SimulationResult:
    n_prod = params.n_products
    n_clean = len(price)
    n_orders = orders["n_orders"]
    k = _dirty_count(params, n_clean)
    end_excl = (params.end_ts + pd.Timedelta(days=1)).value
    lo = basket["order"]

    # guest orders (missing customer id): 1-3 distinct products each, k lines in total
    g_sizes = 1 + _draw(rng, np.array([0.6, 0.3, 0.1]), k)
    if k:
        g_sizes = g_sizes[: np.searchsorted(np.cumsum(g_sizes), k) + 1]
        g_sizes[-1] -= int(g_sizes.sum()) - k
    n_guest = len(g_sizes)
    horizon_days = (params.end_ts - params.start_ts).days + 1
    g_channel = _draw(rng, np.array(_CHANNEL_SHARES), n_guest)
    g_ts = (
        params.start_ts.value
        + rng.integers(0, horizon_days, n_guest) * _NS_PER_DAY
        + _time_of_day(rng, g_channel) * _NS_PER_SECOND
    )
    g_country = _draw(rng, np.array(_COUNTRY_SHARES), n_guest)
    g_perm = np.argsort(g_ts, kind="stable")
    g_sizes, g_ts, g_channel, g_country = (x[g_perm] for x in (g_sizes, g_ts, g_channel, g_country))
    g_line_order = np.repeat(np.arange(n_guest), g_sizes)
    g_rank = np.arange(k) - np.repeat(np.cumsum(g_sizes) - g_sizes, g_sizes)
    g_first = _draw(rng, cat["weight"], n_guest)
    g_step = rng.integers(1, (n_prod + 1) // 2, n_guest)  # 2 * step < n_prod: distinct
    g_product = (g_first[g_line_order] + g_rank * g_step[g_line_order]) % n_prod

    # order numbers in time order over clean + guest orders (clean first on equal times)
    ots = orders["ts"]
    clean_num = np.arange(1, n_orders + 1) + np.searchsorted(g_ts, ots, side="left")
    guest_num = np.arange(1, n_guest + 1) + np.searchsorted(ots, g_ts, side="right")

    def clean_rows(idx: np.ndarray, **changes: np.ndarray) -> dict[str, np.ndarray]:
        o = lo[idx]
        row = {
            "num": clean_num[o],
            "cancel": np.zeros(len(idx), dtype=bool),
            "cust": orders["cust"][o],
            "ts": ots[o],
            "prod": basket["product"][idx].astype(np.int64),
            "qty": basket["quantity"][idx],
            "price": price[idx],
            "country": cust["country"][orders["cust"][o]],
            "channel": orders["channel"][o].astype(np.int64),
        }
        row.update(changes)
        return row

    parts = []
    # missing_customer_id
    parts.append(
        {
            "num": guest_num[g_line_order],
            "cancel": np.zeros(k, dtype=bool),
            "cust": np.full(k, -1, dtype=np.int64),
            "ts": g_ts[g_line_order],
            "prod": g_product,
            "qty": _draw_quantity(rng, k),
            "price": cat["list_price"][g_product],
            "country": g_country[g_line_order],
            "channel": g_channel[g_line_order],
        }
    )
    # cancellation: distinct clean lines, one delay per cancelled order
    k_cancel = min(k, n_clean)
    src = np.sort(rng.choice(n_clean, size=k_cancel, replace=False))
    src_orders, inv = np.unique(lo[src], return_inverse=True)
    delay = (
        rng.integers(1, 6, len(src_orders)) * _NS_PER_DAY
        + rng.integers(0, 6 * 3600, len(src_orders)) * _NS_PER_SECOND
    )
    cancel_ts = np.minimum(ots[lo[src]] + delay[inv], end_excl - _NS_PER_SECOND)
    parts.append(
        clean_rows(
            src, cancel=np.ones(k_cancel, dtype=bool), ts=cancel_ts, qty=-basket["quantity"][src]
        )
    )
    # non_product: a postage line in distinct clean orders
    k_post = min(k, n_orders)
    first_line = np.searchsorted(lo, rng.choice(n_orders, size=k_post, replace=False))
    parts.append(
        clean_rows(
            first_line,
            prod=np.full(k_post, n_prod, dtype=np.int64),
            qty=np.ones(k_post, dtype=np.int64),
            price=np.array(_POSTAGE_PRICES)[rng.integers(0, len(_POSTAGE_PRICES), k_post)],
        )
    )
    # duplicate: exact copies of distinct clean lines
    k_dup = min(k, n_clean)
    parts.append(clean_rows(rng.choice(n_clean, size=k_dup, replace=False)))
    # non_positive_price: a free line (price 0) in distinct clean orders
    k_zero = min(k, n_orders)
    first_line = np.searchsorted(lo, rng.choice(n_orders, size=k_zero, replace=False))
    parts.append(
        clean_rows(
            first_line,
            prod=_draw(rng, cat["weight"], k_zero),
            qty=np.ones(k_zero, dtype=np.int64),
            price=np.zeros(k_zero),
        )
    )
    n_returns = 0
    if "bad" in orders:
        # bad experiences: the first line of each bad order comes back 2-14 days later
        # (a negative quantity under the order's own id, not a cancellation)
        bad_orders = np.flatnonzero(orders["bad"])
        first_line = np.searchsorted(lo, bad_orders)
        delay = (
            rng_returns.integers(*_RETURN_DAYS, len(bad_orders)) * _NS_PER_DAY
            + rng_returns.integers(0, 10 * 3600, len(bad_orders)) * _NS_PER_SECOND
        )
        parts.append(
            clean_rows(
                first_line,
                ts=np.minimum(ots[bad_orders] + delay, end_excl - _NS_PER_SECOND),
                qty=-basket["quantity"][first_line],
            )
        )
        n_returns = len(bad_orders)
    dirty = {
        "missing_customer_id": int(k),
        "cancellation": int(k_cancel),
        "non_product": int(k_post),
        "duplicate": int(k_dup),
        "non_positive_price": int(k_zero),
    }
    d = {f: np.concatenate([part[f] for part in parts]) for f in _LINE_FIELDS}
    d_order = np.lexsort((d["prod"], d["num"], ~d["cancel"], d["ts"]))
    d = {f: arr[d_order] for f, arr in d.items()}
    # clean lines are already sorted by (order_ts, order_id, product_id): insert the dirty rows
    clean_ts = ots[lo]
    ins = _insertion_points(clean_ts, clean_num[lo], basket["product"], d)
    del clean_ts

    def merged(clean: np.ndarray, dirty_values: np.ndarray) -> np.ndarray:
        return np.insert(clean, ins, dirty_values.astype(clean.dtype, copy=False))

    lines = _materialise(
        params,
        cat,
        n_orders + n_guest,
        cancel_nums=d["num"][d["cancel"]],
        columns={
            "num": lambda: merged(clean_num[lo], np.where(d["cancel"], -d["num"], d["num"])),
            "cust": lambda: merged(orders["cust"][lo], d["cust"]),
            "ts": lambda: merged(ots[lo], d["ts"]),
            "prod": lambda: merged(basket["product"], d["prod"]),
            "qty": lambda: merged(basket["quantity"], d["qty"]),
            "price": lambda: merged(price, d["price"]),
            "country": lambda: merged(cust["country"][orders["cust"]][lo], d["country"]),
            "channel": lambda: merged(orders["channel"][lo], d["channel"]),
        },
    )

    stats = orders["stats"]
    customers = _truth_customers(params, cat, cust, stats)
    if "bad" in orders:
        customers["n_bad_experiences"] = np.bincount(
            orders["cust"][orders["bad"]], minlength=params.n_customers
        ).astype(np.int64)
        customers["quit_after_bad_experience"] = cust["quit_bad"]
    truth = SimulationTruth(
        params=params,
        customers=customers,
        products=_truth_products(cat),
        rules=pd.DataFrame(
            {
                "antecedent": _take(cat["product_ids"], cat["antecedents"]),
                "consequent": _take(cat["product_ids"], cat["consequents"]),
                "planted_confidence": np.full(
                    params.n_affinities, float(params.affinity_confidence)
                ),
            }
        ),
        dirty=dirty,
        n_clean_lines=int(n_clean),
        n_return_lines=int(n_returns),
    )
    return SimulationResult(lines=lines, truth=truth)


def _insertion_points(
    ts: np.ndarray, num: np.ndarray, prod: np.ndarray, d: dict[str, np.ndarray]
) -> np.ndarray:
    """Where the sorted dirty rows ``d`` go among the sorted clean rows (after equal rows).

    Rows are ordered by ``(ts, not cancel, num, prod)``; clean rows are never cancellations.
    Rows with equal ``ts`` are few (usually the lines of one order), so ties are resolved by
    stepping through them, vectorised over the dirty rows.
    """
    lo = np.searchsorted(ts, d["ts"], side="left")
    hi = np.searchsorted(ts, d["ts"], side="right")
    out = lo.copy()
    normal = ~d["cancel"]  # cancellations go before every clean row of the same time
    width = int((hi - lo)[normal].max()) if normal.any() else 0
    for j in range(width):
        at = lo + j
        live = normal & (at < hi)
        at = np.minimum(at, len(ts) - 1)
        before = (num[at] < d["num"]) | ((num[at] == d["num"]) & (prod[at] <= d["prod"]))
        out += live & before
    return out


def _labels(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """``prefix`` + zero-padded numbers as an Arrow string array (vectorised)."""
    if len(numbers) == 0:
        return pa.array([], type=pa.string())
    digits = np.strings.zfill(numbers.astype(np.int64).astype("U"), width)
    arr = pa.array(np.strings.add(prefix, digits), type=pa.string())
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _take(labels: pa.Array | list[str], idx: np.ndarray) -> pd.Series:
    """A pandas ``str`` column of ``labels[idx]`` (NaN where ``idx < 0``)."""
    if not isinstance(labels, pa.Array):
        labels = pa.array(labels, type=pa.string())
    idx = np.asarray(idx)
    mask = idx < 0
    indices = pa.array(np.where(mask, 0, idx), mask=mask if mask.any() else None)
    return pd.Series(labels.take(indices), dtype="str")


def _materialise(
    params: SimulationParams,
    cat: dict[str, Any],
    n_all_orders: int,
    cancel_nums: np.ndarray,
    columns: dict[str, Any],
) -> pd.DataFrame:
    """Build the output frame one column at a time (each integer column is freed after use).

    ``columns`` maps field names to callables returning the merged integer arrays; ``num`` is
    the order number, negated for cancellation rows.
    """
    n_cust = params.n_customers
    cust_labels = _labels("C", np.arange(1, n_cust + 1), max(6, len(str(n_cust))))
    order_width = max(7, len(str(n_all_orders)))
    cancelled = np.unique(cancel_nums)
    order_labels = pa.concat_arrays(
        [
            _labels("O", np.arange(1, n_all_orders + 1), order_width),
            _labels("CO", cancelled, order_width),
        ]
    )
    out: dict[str, pd.Series] = {}
    num = columns["num"]()
    neg = num < 0
    num -= 1
    num[neg] = n_all_orders + np.searchsorted(cancelled, -(num[neg] + 1))
    out["order_id"] = _take(order_labels, num)
    del num, neg
    out["customer_id"] = _take(cust_labels, columns["cust"]())
    out["order_ts"] = pd.Series(columns["ts"]().view("datetime64[ns]"), copy=False)
    prod = columns["prod"]()
    out["product_id"] = _take([*cat["product_ids"], POSTAGE_PRODUCT_ID], prod)
    out["product_name"] = _take([*cat["names"], "POSTAGE"], prod)
    category = np.append(cat["category"], -1)[prod]
    del prod
    out["category"] = _take([str(x) for x in cat["cat_names"]], category)
    del category
    out["quantity"] = pd.Series(columns["qty"]().astype(np.int64, copy=False), copy=False)
    out["unit_price"] = pd.Series(columns["price"]().astype(np.float64, copy=False), copy=False)
    out["country"] = _take(list(_COUNTRIES), columns["country"]())
    out["channel"] = _take(list(_CHANNELS), columns["channel"]())
    return pd.DataFrame({c: out.pop(c) for c in LINE_COLUMNS}, copy=False)


def _truth_customers(
    params: SimulationParams, cat: dict[str, Any], cust: dict[str, Any], stats: dict[str, Any]
) -> pd.DataFrame:
    n = params.n_customers
    cutoff_excl = (params.cutoff_ts + pd.Timedelta(days=1)).value
    last_ts = stats["last_ts"]
    death = np.where(cust["died"], last_ts, np.iinfo(np.int64).min)  # int64 min is NaT
    alive = ~cust["died"] | (last_ts >= cutoff_excl)
    return pd.DataFrame(
        {
            "customer_id": _take(
                _labels("C", np.arange(1, n + 1), max(6, len(str(n)))), np.arange(n)
            ),
            "first_purchase_ts": pd.Series(stats["first_ts"].view("datetime64[ns]")),
            "lam": cust["lam"],
            "p_drop": cust["p_drop"],
            "nu": cust["nu"],
            "death_ts": pd.Series(death.view("datetime64[ns]")),
            "alive_at_cutoff": alive,
            "n_orders_calibration": stats["n_calibration"].astype(np.int64),
            "n_orders_holdout": (stats["n_orders"] - stats["n_calibration"]).astype(np.int64),
            "country": _take(list(_COUNTRIES), cust["country"]),
            "favourite_category": _take([str(x) for x in cat["cat_names"]], cust["fav_cat"]),
            "consumable_id": _take(cat["product_ids"], cust["fav_cons"]),
        }
    )


def _truth_products(cat: dict[str, Any]) -> pd.DataFrame:
    n = len(cat["product_ids"])
    return pd.DataFrame(
        {
            "product_id": _take(cat["product_ids"], np.arange(n)),
            "product_name": _take(cat["names"], np.arange(n)),
            "category": _take([str(x) for x in cat["cat_names"]], cat["category"]),
            "price_tier": cat["tier"].astype(np.int64),
            "list_price": cat["list_price"],
            "is_consumable": cat["is_consumable"],
            "cycle_days": cat["cycle_days"],
            "popularity": cat["weight"],
        }
    )
