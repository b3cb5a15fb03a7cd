"""The MLflow pyfunc model ``crmkit-customer-scorer`` (logged as *models from code*: MLflow
stores this file and the bundle folder, no pickle).

Input: order lines in crmkit's canonical columns (``customer_id, order_id, order_ts,
product_id, quantity, unit_price`` and optional ``amount, category, product_name, country,
channel``), as a DataFrame or the REST ``dataframe_split`` form; ``order_ts`` may be
timestamps or ISO strings. The lines are cleaned with the training run's cleaning rules, then
scored (:meth:`crmkit.pipelines.scorer.CustomerScorer.score`).

Params: ``as_of`` (ISO date; default: the last day of the input) and ``output``
(``customers``, the default, or ``recommendations``).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class CustomerScorerModel(PythonModel):
    """pyfunc wrapper of :class:`crmkit.pipelines.scorer.CustomerScorer`."""

    def load_context(self, context):  # noqa: ANN001, ANN201 - MLflow reads type hints
        from crmkit.pipelines.scorer import CustomerScorer

        self.scorer = CustomerScorer.load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):  # noqa: ANN001, ANN201
        from crmkit.pipelines.score import score_frame

        params = params or {}
        as_of = params.get("as_of") or None
        output = params.get("output") or "customers"
        result = score_frame(self.scorer, pd.DataFrame(model_input), as_of)
        if output == "recommendations":
            return result.recommendations
        if output != "customers":
            raise ValueError(
                f"params.output must be 'customers' or 'recommendations', got {output!r}"
            )
        return result.customers


mlflow.models.set_model(CustomerScorerModel())
