"""One local Spark session per test process, shared by every Spark test module.

Every Spark test module marks itself ``pytest.mark.xdist_group("spark")``: the Makefile runs
``pytest -n 2 --dist loadgroup``, which sends a group to one worker, so the JVM (~15-20 s to
start, ~1 GB) starts once, not once per worker."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def spark():
    if shutil.which("java") is None:
        pytest.skip("java is not on PATH: PySpark needs a Java 17 runtime")
    from crmkit.spark import spark_session

    session = spark_session("local[2]", shuffle_partitions=1)
    session.conf.set("spark.sql.adaptive.enabled", "false")  # tiny data: fewer planning steps
    yield session
    session.stop()
