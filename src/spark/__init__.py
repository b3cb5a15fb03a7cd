"""crmkit on Apache Spark: the customer table of ``crmkit features`` computed with Spark
DataFrame operations, equal to the local engine's (``docs/spark.md``).

Needs the ``spark`` extra (``pip install 'crmkit[spark]'``) and a Java 17 runtime. Importing
this package imports PySpark; nothing else in crmkit does.
"""

try:
    import pyspark  # noqa: F401
except ImportError as exc:  # pragma: no cover - the dev and spark extras install it
    raise ImportError(
        "crmkit's Spark engine needs PySpark and a Java 17 runtime: pip install 'crmkit[spark]'"
    ) from exc

from crmkit.spark.features import (  # noqa: E402
    LINE_ORDER,
    customer_table,
    default_as_of,
    read_lines,
    segment_summary,
    write_customers,
)
from crmkit.spark.session import spark_session  # noqa: E402

__all__ = [
    "LINE_ORDER",
    "customer_table",
    "default_as_of",
    "read_lines",
    "segment_summary",
    "spark_session",
    "write_customers",
]
