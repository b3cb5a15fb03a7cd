"""The transaction data contract: canonical order-line columns and header recognition.

crmkit works on *order lines*: one row per product in an order. The canonical columns are

===============  ========  =====================================================
column           required  meaning
===============  ========  =====================================================
``customer_id``  yes       who bought (string)
``order_id``     no        the order / invoice; without it a customer-day is one order
``order_ts``     yes       when (timestamp, naive; time-zone aware input is converted to UTC)
``product_id``   no        what; without it the data is an order-level log
``quantity``     no*       units on the line (order-level logs without it count 1)
``unit_price``   yes*      price per unit, in the shop's currency
``amount``       yes*      line total (quantity x unit_price); may stand in for unit_price
===============  ========  =====================================================

(*) one of ``unit_price`` (with ``quantity``) or ``amount`` is required. Optional descriptive
columns: ``category``, ``product_name``, ``country``, ``channel``. Status columns, read for the
``order_status`` cleaning rule and not carried into the cleaned lines: ``order_status`` (a
shop's order or payment status, e.g. Shopify's ``Financial Status``) and ``cancelled_at``
(a cancellation timestamp; any value marks the order cancelled).

Headers are recognised case-, space- and punctuation-insensitively from :data:`HEADER_SYNONYMS`
(UCI Online Retail / Online Retail II, CDNOW-style order logs and common shop exports).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from crmkit.errors import DataContractError

__all__ = [
    "CANONICAL_COLUMNS",
    "OPTIONAL_COLUMNS",
    "NUMERIC_COLUMNS",
    "HEADER_SYNONYMS",
    "CLEAN_COLUMNS",
    "STATUS_COLUMNS",
    "normalise_header",
    "is_known_header",
    "recognise_columns",
]

#: The six canonical order-line columns, in output order.
CANONICAL_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "order_id",
    "order_ts",
    "product_id",
    "quantity",
    "unit_price",
)
#: Optional descriptive columns carried through when present.
OPTIONAL_COLUMNS: tuple[str, ...] = ("category", "product_name", "country", "channel")
#: Columns parsed as numbers.
NUMERIC_COLUMNS: tuple[str, ...] = ("quantity", "unit_price", "amount")
#: Columns of the cleaned order lines crmkit writes (optional ones only when present).
CLEAN_COLUMNS: tuple[str, ...] = (*CANONICAL_COLUMNS, "amount", *OPTIONAL_COLUMNS)

#: Order status columns: read by the ``order_status`` rule, not part of the cleaned lines.
STATUS_COLUMNS: tuple[str, ...] = ("order_status", "cancelled_at")

_KNOWN = (*CANONICAL_COLUMNS, "amount", *OPTIONAL_COLUMNS, *STATUS_COLUMNS)

#: Header spellings recognised without a mapping, after :func:`normalise_header`.
HEADER_SYNONYMS: dict[str, tuple[str, ...]] = {
    "customer_id": (
        "customerid",
        "customer",
        "customerno",
        "customernumber",
        "custid",
        "clientid",
        "client",
        "userid",
        "user",
        "memberid",
        "buyerid",
        "accountid",
        "email",
        "customeremail",
        "emailaddress",
        "billingemail",
        "masterid",
    ),
    "order_id": (
        "orderid",
        "order",
        "orderno",
        "ordernumber",
        "ordernum",
        "invoiceno",
        "invoice",
        "invoiceid",
        "invoicenumber",
        "transactionid",
        "receiptid",
        "receiptno",
        "basketid",
        "salesorder",
    ),
    "order_ts": (
        "orderts",
        "invoicedate",
        "orderdate",
        "orderdatetime",
        "ordertime",
        "createdat",
        "created",
        "date",
        "datetime",
        "timestamp",
        "purchasedate",
        "transactiondate",
        "saledate",
        "paidat",
        "processedat",
    ),
    "product_id": (
        "productid",
        "stockcode",
        "sku",
        "productsku",
        "variantsku",
        "lineitemsku",
        "productcode",
        "itemid",
        "itemcode",
        "articleid",
        "article",
        "ean",
        "upc",
        "asin",
        "product",
    ),
    "quantity": (
        "quantity",
        "qty",
        "units",
        "unitssold",
        "numberofcds",
        "lineitemquantity",
        "itemquantity",
    ),
    "unit_price": (
        "unitprice",
        "price",
        "itemprice",
        "lineitemprice",
        "priceeach",
        "unitcost",
        "sellingprice",
        "saleprice",
    ),
    "amount": (
        "amount",
        "lineamount",
        "linetotal",
        "sales",
        "revenue",
        "totalprice",
        "linevalue",
        "dollarvalue",
        "netsales",
        "grosssales",
        "lineitemtotal",
        "salesamount",
    ),
    "category": ("category", "productcategory", "productcategoryname", "department", "producttype"),
    "product_name": (
        "productname",
        "description",
        "itemname",
        "title",
        "lineitemname",
        "producttitle",
    ),
    "country": ("country", "billingcountry", "shippingcountry", "countrycode"),
    "channel": ("channel", "saleschannel", "source", "sourcename"),
    "order_status": ("orderstatus", "financialstatus", "paymentstatus", "status"),
    "cancelled_at": ("cancelledat", "canceledat", "cancelleddate", "canceldate"),
}

_SYNONYM_TO_CANONICAL: dict[str, str] = {}
for _canon, _spellings in HEADER_SYNONYMS.items():
    _SYNONYM_TO_CANONICAL[_canon.replace("_", "")] = _canon
    for _s in _spellings:
        _SYNONYM_TO_CANONICAL.setdefault(_s, _canon)


def normalise_header(name: object) -> str:
    """Lower-case a header and drop everything but letters and digits (``"Customer ID"`` ->
    ``"customerid"``, a UTF-8 byte-order mark included)."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def is_known_header(name: object) -> bool:
    """Whether crmkit recognises ``name`` as one of its columns without a mapping."""
    return normalise_header(name) in _SYNONYM_TO_CANONICAL


def recognise_columns(
    headers: Iterable[object], mapping: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Map a file's headers to canonical column names.

    Parameters
    ----------
    headers
        The file's column headers, in order.
    mapping
        Explicit ``{file header: canonical name}`` pairs; they win over recognition. A value
        that is not a canonical name, or a key missing from the file, is an error.

    Returns
    -------
    dict
        ``{file header: canonical name}`` for every header that was recognised or mapped.
        Headers that are neither are left out (ignored).

    Raises
    ------
    DataContractError
        Duplicated headers, two headers recognised as the same canonical column, a bad mapping,
        or a required column that is missing.
    """
    headers = [str(h) for h in headers]
    seen: dict[str, int] = {}
    for h in headers:
        seen[h] = seen.get(h, 0) + 1
    dups = [h for h, n in seen.items() if n > 1]
    if dups:
        raise DataContractError(
            f"the header names {dups} more than once; every column needs a unique name",
            column=dups[0],
            rule="duplicate_header",
        )

    mapping = dict(mapping or {})
    result: dict[str, str] = {}
    for src, dst in mapping.items():
        if dst not in _KNOWN:
            raise DataContractError(
                f"mapping '{src}' -> '{dst}': '{dst}' is not a crmkit column; "
                f"use one of {list(_KNOWN)}",
                column=src,
                rule="column_mapping",
            )
        if src not in headers:
            raise DataContractError(
                f"mapping names the column '{src}', which the file does not have; "
                f"its columns are {headers}",
                column=src,
                rule="column_mapping",
            )
        result[src] = dst

    taken = set(result.values())
    # A header spelled exactly as a crmkit column is an explicit choice: it wins over
    # headers that are only recognised as synonyms of that column.
    for h in headers:
        if h not in result and h in _KNOWN and h not in taken:
            result[h] = h
            taken.add(h)
    explicit = set(taken)
    for h in headers:
        if h in result:
            continue
        canon = _SYNONYM_TO_CANONICAL.get(normalise_header(h))
        if canon is None or canon in explicit:
            continue
        if canon in taken:
            other = next(k for k, v in result.items() if v == canon)
            raise DataContractError(
                f"both '{other}' and '{h}' look like '{canon}'; say which one to use "
                f"with a column mapping (e.g. --map '{other}={canon}')",
                column=canon,
                rule="ambiguous_header",
            )
        result[h] = canon
        taken.add(canon)

    missing = []
    if "customer_id" not in taken:
        missing.append("customer_id")
    if "order_ts" not in taken:
        missing.append("order_ts")
    if "unit_price" not in taken and "amount" not in taken:
        missing.append("unit_price (or amount)")
    if "unit_price" in taken and "amount" not in taken and "quantity" not in taken:
        missing.append("quantity")
    if missing:
        raise DataContractError(
            f"required column(s) {missing} not found among the file's columns {headers}",
            column=missing[0],
            rule="required_column",
            hint="rename the columns to crmkit's names, or map them: "
            "--map 'Your Header=customer_id' (repeatable) or `columns:` in the config",
        )
    return result
