"""Spark CSV audiences neutralise formula cells exactly as the local CSV writer does
(issue 15, section 4: CSV injection)."""

from __future__ import annotations

import pandas as pd
import pytest

pytestmark = [
    pytest.mark.spark,
    pytest.mark.xdist_group("spark"),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]
ARROW = "spark.sql.execution.arrow.pyspark.enabled"


@pytest.mark.parametrize("arrow", ["true", "false"])
def test_spark_csv_audience_cells_equal_the_local_writer(spark, tmp_path, arrow):
    import crmkit.spark.actions as sa
    from crmkit.models.actions import read_audience, write_audiences

    frame = pd.DataFrame(
        {
            "customer_id": ["=1+1", "-42", "@A1", "C1", "\tx"],
            "rank": [1, 2, 3, 4, 5],
            "action_value": [5.0, 4.0, 3.0, 2.0, -1.5],
            "product_id": ["+SUM(1)", None, "-2+3", "P1", "-7"],
            "segment": ["loyal"] * 5,
            "clv": [1.0, 2.0, 3.0, 4.0, -5.5],
            "p_alive": [0.5] * 5,
            "churn_probability": [0.1] * 5,
        }
    )
    write_audiences({"win_back": frame}, tmp_path / "local", fmt="csv")
    # the missing product as a Python None, whichever way (Arrow or not) the session converts
    # pandas frames: without Arrow, pandas 3's missing text (NaN) would become the text "NaN"
    on_spark = frame.astype({"product_id": object})
    on_spark["product_id"] = on_spark["product_id"].where(frame["product_id"].notna(), None)
    before = spark.conf.get(ARROW, "false")
    spark.conf.set(ARROW, arrow)
    try:
        sdf = spark.createDataFrame(on_spark)
    finally:
        spark.conf.set(ARROW, before)
    sa.write_audiences({"win_back": sdf}, tmp_path / "spark", fmt="csv")
    local = read_audience(tmp_path / "local" / "win_back.csv")
    got = read_audience(tmp_path / "spark" / "win_back.csv")
    pd.testing.assert_frame_equal(got, local, check_exact=True)
    assert local["customer_id"].tolist() == ["'=1+1", "-42", "'@A1", "C1", "'\tx"]
    assert local["product_id"].tolist()[::2] == ["'+SUM(1)", "'-2+3", "-7"]
    assert local["action_value"].tolist()[-1] == -1.5 and local["clv"].tolist()[-1] == -5.5
