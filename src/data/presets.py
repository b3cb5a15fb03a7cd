"""Column presets for known shop exports (``--preset NAME`` / ``data.preset``).

A preset names, per crmkit column, the header(s) a shop system's order export uses for it
(the first one present in the file wins), so such an export loads with no ``--map``. The
header names follow the systems' documented exports:

- ``shopify`` - Shopify's *Orders* CSV export: one row per line item; ``Name`` is the order
  number (``#1001``); the order-level fields (``Email``, ``Financial Status``, ``Paid at``,
  ``Created at``, ``Cancelled at``, ...) are filled on the order's first row only (crmkit carries
  them to the order's other rows, see :mod:`crmkit.data.orders`).
- ``woocommerce`` - the one-row-per-item order exports of WooCommerce's export plugins
  ("Advanced Order Export": ``Order Number``, ``Order Status``, ``Order Date``,
  ``Email (Billing)``, ``SKU``, ``Item Name``, ``Quantity``, ``Item Cost``; the Import Export
  Suite / Customer-Order CSV Export: ``order_number``, ``status``, ``order_date``,
  ``customer_email`` / ``billing_email``, ``customer_id``).
- ``magento`` - ``sales_order`` joined with ``sales_order_item``: ``increment_id``,
  ``created_at``, ``customer_email`` / ``customer_id``, ``sku``, ``name``, ``qty_ordered``,
  ``price``, ``status`` (``closed`` is Magento's fully refunded order).
- ``shopware`` - Shopware 5's "orders" export profile (one line per position: ``number``,
  ``orderTime``, ``customerId``, ``articleNumber``, ``articleName``, ``quantity``, ``price``,
  ``status`` as the numeric order state) and Shopware 6 style headers (``orderNumber``,
  ``orderDateTime``, ``customerNumber``, ``productNumber``, ``state``).
- ``online-retail`` - the UCI Online Retail columns (``InvoiceNo``, ``StockCode``, ...).

Without ``--preset``, a file whose headers carry a preset's *signature* (e.g. Shopify's
``Name`` + ``Lineitem quantity`` + ``Lineitem price``) gets that preset, with a note.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from crmkit.errors import DataContractError

__all__ = [
    "Preset",
    "PRESETS",
    "resolve_preset",
    "preset_mapping",
    "detect_preset",
    "choose_preset",
]


@dataclass(frozen=True)
class Preset:
    """The headers of one shop system's order export.

    Attributes
    ----------
    name
        The preset's name (``--preset NAME``).
    columns
        ``{crmkit column: header spellings}``; the first spelling present in the file (compared
        case-, space- and punctuation-insensitively) is mapped.
    signature
        Normalised headers that, all present, identify the export without ``--preset``.
    status_values
        ``{raw status: crmkit status}`` for systems that write codes (Shopware's numeric order
        states, Magento's ``closed``).
    """

    name: str
    columns: dict[str, tuple[str, ...]]
    signature: tuple[str, ...] = ()
    status_values: dict[str, str] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "shopify": Preset(
        "shopify",
        {
            "order_id": ("Name",),
            "customer_id": ("Email", "Customer Email"),
            "order_ts": ("Created at", "Paid at", "Processed at"),
            "product_id": ("Lineitem sku",),
            "product_name": ("Lineitem name",),
            "quantity": ("Lineitem quantity",),
            "unit_price": ("Lineitem price",),
            "order_status": ("Financial Status",),
            "cancelled_at": ("Cancelled at",),
            "country": ("Billing Country", "Shipping Country"),
            "channel": ("Source",),
        },
        signature=("name", "lineitemquantity", "lineitemprice"),
    ),
    "woocommerce": Preset(
        "woocommerce",
        {
            "order_id": ("Order Number", "Order ID", "order_number", "order_id"),
            "customer_id": (
                "Email (Billing)",
                "Billing Email",
                "billing_email",
                "customer_email",
                "Customer User ID",
                "Customer ID",
                "customer_id",
                "customer_user",
            ),
            "order_ts": ("Order Date", "order_date", "Date Created", "date_created"),
            "product_id": ("SKU", "Item SKU", "item_sku", "Product ID", "product_id"),
            "product_name": ("Item Name", "item_name", "Product Name"),
            "quantity": ("Quantity", "Qty", "item_quantity", "quantity"),
            "unit_price": ("Item Cost", "item_cost", "Item Price", "item_price"),
            "order_status": ("Order Status", "status", "Status"),
            "country": ("Country Code (Billing)", "Billing Country", "billing_country"),
        },
        signature=("ordernumber", "itemcost"),
    ),
    "magento": Preset(
        "magento",
        {
            "order_id": ("increment_id",),
            "customer_id": ("customer_email", "customer_id"),
            "order_ts": ("created_at",),
            "product_id": ("sku",),
            "product_name": ("name",),
            "quantity": ("qty_ordered",),
            "unit_price": ("price",),
            "order_status": ("status",),
            "country": ("country_id",),
        },
        signature=("incrementid", "qtyordered"),
        status_values={"closed": "refunded", "canceled": "cancelled", "holded": "on_hold"},
    ),
    "shopware": Preset(
        "shopware",
        {
            "order_id": ("number", "orderNumber"),
            "customer_id": ("customerNumber", "customerId", "email", "customerEmail"),
            "order_ts": ("orderTime", "orderDateTime", "orderDate"),
            "product_id": ("articleNumber", "productNumber"),
            "product_name": ("articleName", "productName", "label"),
            "quantity": ("quantity",),
            "unit_price": ("price", "unitPrice"),
            "order_status": ("status", "state", "orderStatus"),
        },
        signature=("ordertime", "articlenumber"),
        # Shopware 5 order states (s_core_states): -1 cancelled, 4 cancelled / rejected;
        # 0 open, 1 in process, 2 completed, 3 partially completed, 5-8 delivery states.
        status_values={"-1": "cancelled", "4": "cancelled"},
    ),
    "online-retail": Preset(
        "online-retail",
        {
            "order_id": ("InvoiceNo", "Invoice"),
            "customer_id": ("CustomerID", "Customer ID"),
            "order_ts": ("InvoiceDate",),
            "product_id": ("StockCode",),
            "product_name": ("Description",),
            "quantity": ("Quantity",),
            "unit_price": ("UnitPrice", "Price"),
            "country": ("Country",),
        },
    ),
}


def _norm(name: object) -> str:
    from crmkit.data.schema import normalise_header

    return normalise_header(name)


def resolve_preset(name: str | None) -> Preset | None:
    """The :class:`Preset` called ``name`` (``None`` for none).

    Raises
    ------
    DataContractError
        An unknown name (rule ``preset``), listing the known ones.
    """
    if name is None or name == "":
        return None
    key = str(name).strip().lower().replace("_", "-")
    if key == "onlineretail":
        key = "online-retail"
    if key not in PRESETS:
        raise DataContractError(
            f"unknown preset {name!r}; crmkit knows {sorted(PRESETS)}",
            column="preset",
            rule="preset",
        )
    return PRESETS[key]


def detect_preset(headers: Iterable[object]) -> Preset | None:
    """The preset whose signature headers are all among ``headers`` (``None`` if none or if
    several match)."""
    have = {_norm(h) for h in headers}
    hits = [p for p in PRESETS.values() if p.signature and set(p.signature) <= have]
    return hits[0] if len(hits) == 1 else None


def preset_mapping(
    headers: Iterable[object], preset: Preset, mapping: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``{file header: crmkit column}`` for ``preset`` on a file with ``headers``; the explicit
    ``mapping`` wins (for its headers and for the crmkit columns it maps)."""
    headers = [str(h) for h in headers]
    by_norm: dict[str, str] = {}
    for h in headers:
        by_norm.setdefault(_norm(h), h)
    explicit = dict(mapping or {})
    taken = set(explicit.values())
    out: dict[str, str] = {}
    for canon, spellings in preset.columns.items():
        if canon in taken:
            continue
        for s in spellings:
            h = by_norm.get(_norm(s))
            if h is not None and h not in explicit and h not in out:
                out[h] = canon
                break
    out.update(explicit)
    return out


def choose_preset(
    headers: Iterable[object], preset: str | None, mapping: Mapping[str, str] | None
) -> tuple[Preset | None, dict[str, str] | None, list[str]]:
    """The preset for a file (``preset``, else the one its headers identify when no mapping is
    given), the column mapping to use and the loader's note (shared by both engines)."""
    headers = list(headers)
    chosen = resolve_preset(preset)
    notes: list[str] = []
    if chosen is None and not mapping:
        chosen = detect_preset(headers)
        if chosen is not None:
            notes.append(f"preset: {chosen.name} (recognised from the file's headers)")
    elif chosen is not None:
        notes.append(f"preset: {chosen.name}")
    if chosen is not None:
        mapping = preset_mapping(headers, chosen, mapping)
    return chosen, (dict(mapping) if mapping else None), notes
