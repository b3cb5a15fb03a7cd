"""Churn features on Spark count a cancellation prefix only where the lines show the
convention, as the local engine and the cleaning rule decide (issue 15): Superstore-style
``CA-2019-103800`` and ``CUST-17`` orders are ordinary orders (cancellation_rate 0; before,
1.0 for a customer with only such orders), while Online Retail-style ``C`` orders with
negative lines still count; the Spark customer table equals the local one."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from crmkit.data.clean import clean_lines
from crmkit.pipelines.features import customer_table as local_customer_table

if shutil.which("java") is None:
    pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime", allow_module_level=True)

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

COLUMNS = ["customer_id", "order_id", "order_ts", "product_id", "quantity", "unit_price"]
SUPERSTORE = [
    ("k1", "CA-2019-103800", "2021-03-01 10:00:00", "P1", 2, 16.45),
    ("k1", "CA-2019-152156", "2021-05-05 10:00:00", "P3", 2, 130.98),
    ("k2", "US-2019-108966", "2021-06-07 10:00:00", "P2", 1, 957.58),
    ("k3", "CUST-17", "2021-07-01 10:00:00", "P4", 3, 7.31),
    ("k3", "CUST-18", "2021-08-01 10:00:00", "P4", -1, 7.31),  # an ordinary return
    ("k4", "ORD-5", "2021-09-01 10:00:00", "P1", 1, 5.0),
]
RETAIL = [
    ("u1", "536365", "2021-03-01 10:00:00", "P1", 6, 2.55),
    ("u1", "C536379", "2021-03-02 10:00:00", "P1", -1, 2.55),  # a cancellation
    ("u1", "536380", "2021-05-05 10:00:00", "P3", 2, 3.0),
    ("u2", "536381", "2021-06-07 10:00:00", "P2", 1, 9.5),
]


def lines_of(rows) -> pd.DataFrame:
    raw = pd.DataFrame(rows, columns=COLUMNS)
    raw["order_ts"] = pd.to_datetime(raw["order_ts"])
    raw["quantity"] = raw["quantity"].astype("float64")
    return clean_lines(raw, {"returns": "net"}).lines


@pytest.mark.parametrize(
    ("rows", "rates"),
    [(SUPERSTORE, [0.0, 0.0, 0.0, 0.0]), (RETAIL, [1 / 3, 0.0])],
    ids=["superstore", "online-retail"],
)
def test_spark_cancellations_follow_the_convention(spark, tmp_path, rows, rates):
    from crmkit.spark import customer_table, read_lines, write_customers
    from tests.spark.test_spark_features import assert_same_table

    lines = lines_of(rows)
    lines.to_parquet(tmp_path / "lines.parquet", index=False)
    table = customer_table(read_lines(spark, tmp_path / "lines.parquet"), "2021-12-31")
    write_customers(table, tmp_path / "out")
    got = pd.read_parquet(tmp_path / "out")
    local = local_customer_table(lines, "2021-12-31")
    assert local["cancellation_rate"].tolist() == rates
    assert_same_table(local, got, "cancellation convention")
