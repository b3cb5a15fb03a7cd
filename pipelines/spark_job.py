"""crmkit under ``spark-submit``: the same commands as the ``crmkit`` CLI, run as a Spark
application on a cluster (``docs/spark.md``, "Running on a cluster").

    spark-submit --master yarn --deploy-mode client \\
        --archives crmkit-env.tar.gz#env \\
        --conf spark.executorEnv.PYSPARK_PYTHON=./env/bin/python \\
        pipelines/spark_job.py score hdfs:///shop/lines/ --out /mnt/crm/scores --engine spark

Everything after the script's path is a ``crmkit`` command line. The Spark engine uses the
session spark-submit configured (master, executors, memory); set ``MLFLOW_TRACKING_URI`` to
the team's tracking server in the driver's environment so the registered model is loaded
from, and the run recorded in, that server. Exit code 2 on a crmkit error (bad input, no
model), as the CLI.
"""

from crmkit.cli import main

if __name__ == "__main__":
    main()
