"""Shop exports on the Spark engine (issue 15 §2): ``validate --engine spark`` applies the
preset, carries order-level fields to an order's other lines (a window over the order id),
drops the orders whose status says they are not purchases and applies the cancellation prefix
only where the data shows the convention - with the local engine's lines and report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from crmkit.pipelines.config import load_config
from crmkit.pipelines.validate import run_validate as local_validate
from tests.data.shop_exports import order_statuses, retail_slice, write_magento, write_shopify
from tests.spark.test_spark_clean import assert_same_lines, assert_same_report

if shutil.which("java") is None:
    pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime", allow_module_level=True)

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


def _both(path, tmp_path, name, **data):
    from crmkit.spark.clean import run_validate as spark_validate

    cfg = load_config(None, overrides={"data": data})
    loc = local_validate(path, tmp_path / f"{name}_local", cfg)
    got = spark_validate(path, tmp_path / f"{name}_spark", cfg)
    assert got.rows_out == len(loc.lines)
    assert_same_lines(pd.read_parquet(got.lines_path), loc.lines, name)
    assert_same_report(got.report.to_dict(), loc.report.to_dict(), name)
    assert got.report.warnings == loc.report.warnings
    saved = json.loads((tmp_path / f"{name}_spark" / "quality_report.json").read_text())
    assert saved["warnings"] == loc.report.warnings
    return loc


def test_shopify_and_magento_exports_equal_local(spark, shared_data, tmp_path):
    lines = retail_slice(shared_data / "online_retail.parquet", "2010-12-01", "2010-12-08")
    status = order_statuses(lines["order_id"], seed=3)
    cancelled = set(status[status == "paid"].index[:5])
    shop = write_shopify(lines, tmp_path / "orders_export.csv", status, cancelled)
    loc = _both(shop, tmp_path, "shopify")
    t = loc.report.rules.set_index("rule")
    gone = lines["order_id"].map(status).isin({"refunded", "pending", "voided"})
    gone |= lines["order_id"].isin(cancelled)
    assert t.loc["order_status", "rows_dropped"] == int(gone.sum()) > 0
    assert any(n.startswith("order-level fields filled") for n in loc.report.notes)
    assert any("partially refunded" in n for n in loc.report.notes)
    assert loc.report.warnings and loc.report.warnings[0].startswith("rule order_status")

    mag = pd.Series(np.where(status == "paid", "complete", "closed"), index=status.index)
    _both(
        write_magento(lines, tmp_path / "magento.csv", mag), tmp_path, "magento", preset="magento"
    )


def test_prefix_convention_on_spark(spark, write, tmp_path):
    head = "customer_id,order_id,order_ts,product_id,quantity,unit_price\n"
    superstore = write(
        "superstore.csv",
        head
        + "k1,CA-2019-103800,2019-01-03,p1,2,16.45\n"
        + "k2,US-2019-118983,2019-01-04,p2,3,11.78\n"
        + "k1,CA-2019-152156,2019-01-05,p3,2,130.98\n"
        + "k3,CA-2019-138688,2019-01-06,p4,-1,7.31\n",
    )
    loc = _both(superstore, tmp_path, "superstore")
    t = loc.report.rules.set_index("rule")
    assert t.loc["cancellations", "action"].startswith("skipped")
    assert t.loc["returns", "rows_dropped"] == 1 and len(loc.lines) == 3
    retail = write(
        "retail.csv",
        head
        + "c1,536365,2010-12-01,p1,6,2.55\n"
        + "c1,C536379,2010-12-01,p1,-1,2.55\n"
        + "c2,536366,2010-12-02,p2,2,1.85\n",
    )
    loc = _both(retail, tmp_path, "retail")
    assert loc.report.rules.set_index("rule").loc["cancellations", "rows_dropped"] == 1
