"""Writers of real shop-export formats for tests: Online Retail order lines (or any canonical
lines) written as a Shopify *Orders* CSV (the export's full column set, one row per line item,
order-level fields on an order's first row only), a WooCommerce "Advanced Order Export" CSV
and a Magento ``sales_order`` x ``sales_order_item`` CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: The columns of Shopify's Orders export, in its order.
SHOPIFY_COLUMNS = [
    "Name", "Email", "Financial Status", "Paid at", "Fulfillment Status", "Fulfilled at",
    "Accepts Marketing", "Currency", "Subtotal", "Shipping", "Taxes", "Total", "Discount Code",
    "Discount Amount", "Shipping Method", "Created at", "Lineitem quantity", "Lineitem name",
    "Lineitem price", "Lineitem compare at price", "Lineitem sku", "Lineitem requires shipping",
    "Lineitem taxable", "Lineitem fulfillment status", "Billing Name", "Billing Street",
    "Billing Address1", "Billing Address2", "Billing Company", "Billing City", "Billing Zip",
    "Billing Province", "Billing Country", "Billing Phone", "Shipping Name", "Shipping Street",
    "Shipping Address1", "Shipping Address2", "Shipping Company", "Shipping City",
    "Shipping Zip", "Shipping Province", "Shipping Country", "Shipping Phone", "Notes",
    "Note Attributes", "Cancelled at", "Payment Method", "Payment Reference",
    "Refunded Amount", "Vendor", "Outstanding Balance", "Employee", "Location", "Device ID",
    "Id", "Tags", "Risk Level", "Source", "Lineitem discount", "Tax 1 Name", "Tax 1 Value",
    "Tax 2 Name", "Tax 2 Value", "Tax 3 Name", "Tax 3 Value", "Tax 4 Name", "Tax 4 Value",
    "Tax 5 Name", "Tax 5 Value", "Phone", "Receipt Number", "Duties", "Billing Province Name",
    "Shipping Province Name", "Payment ID", "Payment Terms Name", "Next Payment Due At",
    "Payment References",
]  # fmt: skip
#: Columns Shopify writes on every row of an order; every other column only on its first row.
SHOPIFY_LINE_COLUMNS = {
    "Name", "Lineitem quantity", "Lineitem name", "Lineitem price",
    "Lineitem compare at price", "Lineitem sku", "Lineitem requires shipping",
    "Lineitem taxable", "Lineitem fulfillment status", "Vendor", "Lineitem discount",
}  # fmt: skip


def retail_slice(path: Path, start: str, end: str) -> pd.DataFrame:
    """Online Retail lines in ``[start, end)`` that every cleaning rule keeps (identified
    customers, no cancellations, positive quantity and price, products only, no repeated line),
    in canonical columns."""
    raw = pd.read_parquet(path)
    raw = raw[(raw["InvoiceDate"] >= start) & (raw["InvoiceDate"] < end)]
    raw = raw[raw["CustomerID"].notna() & ~raw["InvoiceNo"].str.startswith("C")]
    raw = raw[(raw["Quantity"] > 0) & (raw["UnitPrice"] > 0)]
    raw = raw[raw["StockCode"].str.fullmatch(r"\d{5}[A-Za-z]*")]
    raw = raw.drop_duplicates(["InvoiceNo", "StockCode", "Quantity", "UnitPrice"])
    return pd.DataFrame(
        {
            "customer_id": raw["CustomerID"].astype("int64").astype(str).to_numpy(),
            "order_id": raw["InvoiceNo"].to_numpy(),
            "order_ts": raw["InvoiceDate"].to_numpy(),
            "product_id": raw["StockCode"].to_numpy(),
            "product_name": raw["Description"].to_numpy(),
            "quantity": raw["Quantity"].to_numpy(),
            "unit_price": raw["UnitPrice"].to_numpy(),
            "country": raw["Country"].to_numpy(),
        }
    ).reset_index(drop=True)


def order_statuses(order_ids: pd.Series, seed: int = 0) -> pd.Series:
    """A financial status per order: mostly ``paid``; some refunded, partially refunded,
    pending, voided (deterministic by ``seed``), indexed by order id."""
    orders = pd.unique(order_ids)
    rng = np.random.default_rng(seed)
    status = rng.choice(
        ["paid", "refunded", "partially_refunded", "pending", "voided"],
        size=len(orders),
        p=[0.86, 0.04, 0.04, 0.03, 0.03],
    )
    return pd.Series(status, index=orders)


def write_shopify(
    lines: pd.DataFrame, path: Path, status: pd.Series | None = None, cancelled=()
) -> Path:
    """Write ``lines`` as a Shopify Orders CSV; ``status`` (by order id, default ``paid``)
    fills ``Financial Status``; orders in ``cancelled`` get a ``Cancelled at``."""
    cancelled = set(cancelled)
    n = len(lines)
    oid = lines["order_id"].astype(str)
    first = ~oid.duplicated().to_numpy()
    ts = pd.to_datetime(lines["order_ts"]).dt.strftime("%Y-%m-%d %H:%M:%S +0000")
    amount = lines["quantity"] * lines["unit_price"]
    total = amount.groupby(oid).transform("sum").map("{:.2f}".format)
    st = oid.map(status) if status is not None else pd.Series("paid", index=lines.index)
    cols: dict[str, object] = {c: [""] * n for c in SHOPIFY_COLUMNS}
    cols.update(
        {
            "Name": "#" + oid,
            "Email": "customer" + lines["customer_id"].astype(str) + "@example.com",
            "Financial Status": st,
            "Paid at": ts.where(~st.isin(["pending", "voided"]), ""),
            "Fulfillment Status": "fulfilled",
            "Accepts Marketing": "no",
            "Currency": "GBP",
            "Subtotal": total,
            "Shipping": "0.00",
            "Taxes": "0.00",
            "Total": total,
            "Discount Amount": "0.00",
            "Shipping Method": "Standard",
            "Created at": ts,
            "Lineitem quantity": lines["quantity"].astype(int).astype(str),
            "Lineitem name": lines["product_name"].astype(str),
            "Lineitem price": lines["unit_price"].map("{:.2f}".format),
            "Lineitem sku": lines["product_id"].astype(str),
            "Lineitem requires shipping": "true",
            "Lineitem taxable": "true",
            "Lineitem fulfillment status": "fulfilled",
            "Billing Country": lines["country"].astype(str),
            "Shipping Country": lines["country"].astype(str),
            "Cancelled at": np.where(oid.isin(cancelled), ts, ""),
            "Payment Method": "Shopify Payments",
            "Vendor": "Online Retail",
            "Id": pd.factorize(oid)[0] + 450789469,
            "Risk Level": "Low",
            "Source": "web",
            "Lineitem discount": "0.00",
        }
    )
    frame = pd.DataFrame({c: pd.Series(v, index=lines.index) for c, v in cols.items()})
    frame = frame.astype(str)
    order_cols = [c for c in SHOPIFY_COLUMNS if c not in SHOPIFY_LINE_COLUMNS]
    frame.loc[~first, order_cols] = ""
    frame.to_csv(path, index=False)
    return path


def write_woocommerce(lines: pd.DataFrame, path: Path, status: pd.Series) -> Path:
    """Write ``lines`` as a WooCommerce "Advanced Order Export" CSV (one row per item, order
    fields repeated); ``status`` by order id in WooCommerce's words (``Completed``, ...)."""
    oid = lines["order_id"].astype(str)
    frame = pd.DataFrame(
        {
            "Order Number": oid,
            "Order Status": oid.map(status),
            "Order Date": pd.to_datetime(lines["order_ts"]).dt.strftime("%Y-%m-%d %H:%M"),
            "Customer Note": "",
            "First Name (Billing)": "Ann",
            "Last Name (Billing)": "Smith",
            "Email (Billing)": "c" + lines["customer_id"].astype(str) + "@example.org",
            "Country Code (Billing)": "GB",
            "Payment Method Title": "Direct bank transfer",
            "Cart Discount Amount": "0",
            "Order Subtotal Amount": "0",
            "Order Total Amount": "0",
            "Item #": np.arange(1, len(lines) + 1),
            "SKU": lines["product_id"].astype(str),
            "Item Name": lines["product_name"].astype(str),
            "Quantity": lines["quantity"].astype(int),
            "Item Cost": lines["unit_price"].map("{:.2f}".format),
        }
    )
    frame.to_csv(path, index=False)
    return path


def write_magento(lines: pd.DataFrame, path: Path, status: pd.Series) -> Path:
    """Write ``lines`` as ``sales_order`` joined with ``sales_order_item`` (Magento 2 column
    names, zero-padded increment ids, four-decimal quantities and prices)."""
    oid = lines["order_id"].astype(str)
    frame = pd.DataFrame(
        {
            "entity_id": pd.factorize(oid)[0] + 1,
            "increment_id": "000" + oid,
            "created_at": pd.to_datetime(lines["order_ts"]).dt.strftime("%Y-%m-%d %H:%M:%S"),
            "status": oid.map(status),
            "customer_id": lines["customer_id"].astype(str),
            "customer_email": "m" + lines["customer_id"].astype(str) + "@example.net",
            "grand_total": "0.0000",
            "sku": lines["product_id"].astype(str),
            "name": lines["product_name"].astype(str),
            "qty_ordered": lines["quantity"].map("{:.4f}".format),
            "price": lines["unit_price"].map("{:.4f}".format),
        }
    )
    frame.to_csv(path, index=False)
    return path
