"""Getting a Spark session for crmkit: the running one, or a local one on this machine."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["NANOS_AS_LONG", "spark_session"]

#: Spark cannot read Parquet ``TIMESTAMP(NANOS)`` columns (what pandas writes for
#: ``datetime64[ns]``) unless this is on; they are then read as exact ``long`` nanoseconds.
NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"


def spark_session(
    master: str | None = None, *, app_name: str = "crmkit", shuffle_partitions: int | None = None
) -> SparkSession:
    """The active Spark session, or a new one.

    Under ``spark-submit`` or in a notebook on a cluster the running session is returned
    unchanged (apart from :data:`NANOS_AS_LONG`, set when reading lines). Otherwise a session
    is started on ``master`` (default ``CRMKIT_SPARK_MASTER`` or ``local[*]``) with the driver
    bound to 127.0.0.1, the web UI and the console progress bar off, and - on a ``local``
    master - the Python workers started with this interpreter (``PYSPARK_PYTHON``, unless
    already set) so that they see the same packages.

    Parameters
    ----------
    master
        Spark master URL of a new session, e.g. ``"local[2]"``.
    app_name
        Application name of a new session.
    shuffle_partitions
        ``spark.sql.shuffle.partitions`` of a new session (Spark's default 200 is far too many
        for one machine).
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    launched = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit / pyspark shell set it
    if master is not None or not launched:
        url = master or os.environ.get("CRMKIT_SPARK_MASTER", "local[*]")
        builder = builder.master(url)
        if url.startswith("local"):
            # the workers run this interpreter; under spark-submit or on a cluster the job's
            # own settings (PYSPARK_PYTHON, spark.pyspark.python) decide, untouched
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            builder = (
                builder.config("spark.driver.host", "127.0.0.1")
                .config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.ui.enabled", "false")
            )
    builder = builder.config("spark.ui.showConsoleProgress", "false").config(NANOS_AS_LONG, "true")
    if shuffle_partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(int(shuffle_partitions)))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
