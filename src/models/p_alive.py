"""P(alive) as reported to a product team: a measurement or nothing.

``p_alive`` in ``customers.parquet`` (and ``crmkit clv``'s customers) is the purchase model's
probability that the customer is still active - able to buy again - given their frequency,
recency and age (:meth:`crmkit.models.clv._PurchaseModel.conditional_probability_alive`). Two
cases are not measurements and are reported as missing (NaN), with a note in the summary:

* **BG/NBD one-time buyers** (``frequency == 0``): BG/NBD lets customers drop out only right
  after a repeat purchase, so a customer who bought once is alive with probability 1 by
  construction, however long ago that purchase was (a one-time buyer silent for two years
  would read ``p_alive 1.0`` beside ``churn_probability 0.96``). MBG/NBD and Pareto/NBD
  (``clv.model: mbgnbd | pareto_nbd``) allow that dropout, and their P(alive) for one-time
  buyers falls with the time since the purchase: it is kept.
* **A fit without dropout** (:func:`finds_no_dropout`): the fitted model says (almost) nobody
  ever drops out - BG/NBD, MBG/NBD with mean dropout probability per purchase
  ``a / (a + b) < 0.001``, Pareto/NBD with an average one-year survival
  ``(beta / (beta + year)) ** s > 0.999``. P(alive) is then about 1 for everyone (Online
  Retail: every model, every cutoff) and says nothing; every customer's is missing.

Downstream the numbers stay the model's: the recommender and the next best action read a
missing ``p_alive`` as 1 (alive, the model's own assumption), so their results are those of
the model. The rule depends only on the model's parameters and each customer's frequency, so
the local and the Spark engine report the same values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "P_ALIVE_MEANING",
    "MIN_MEAN_DROPOUT",
    "MAX_YEAR_SURVIVAL",
    "model_kind",
    "finds_no_dropout",
    "p_alive_measured",
    "reported_p_alive",
    "p_alive_note",
]

#: What ``p_alive`` means, as the score summary (``summary.json`` ``p_alive``) says it.
P_ALIVE_MEANING = (
    "probability that the customer is still active (can buy again) under the purchase model "
    "(clv.model), given their frequency, recency and age; missing where it is not a "
    "measurement: BG/NBD one-time buyers (1 by construction) and every customer when the fit "
    "finds no dropout (notes say how many)"
)
#: BG/NBD, MBG/NBD: below this mean dropout probability per purchase the fit has no dropout.
MIN_MEAN_DROPOUT = 1e-3
#: Pareto/NBD: above this average one-year survival the fit has no dropout.
MAX_YEAR_SURVIVAL = 0.999


def model_kind(model: Any) -> str:
    """The configuration name of a purchase model (``bgnbd``, ``mbgnbd``, ``pareto_nbd``)."""
    from crmkit.models.clv import BetaGeo, ModifiedBetaGeo, ParetoNBD

    if isinstance(model, ModifiedBetaGeo):
        return "mbgnbd"
    if isinstance(model, BetaGeo):
        return "bgnbd"
    if isinstance(model, ParetoNBD):
        return "pareto_nbd"
    return type(model).__name__


def finds_no_dropout(model: Any, unit_days: float = 7.0) -> bool:
    """Whether the fitted purchase model says (almost) nobody ever drops out (thresholds
    :data:`MIN_MEAN_DROPOUT`, :data:`MAX_YEAR_SURVIVAL`; ``unit_days``: days per time unit of
    the model, for Pareto/NBD's year)."""
    p = dict(zip(model._param_names, model._check_is_fitted().tolist()))
    kind = model_kind(model)
    if kind in ("bgnbd", "mbgnbd"):
        return bool(p["a"] / (p["a"] + p["b"]) < MIN_MEAN_DROPOUT)
    if kind == "pareto_nbd":
        year = 365.25 / float(unit_days)
        return bool((p["beta"] / (p["beta"] + year)) ** p["s"] > MAX_YEAR_SURVIVAL)
    return False


def p_alive_measured(model: Any, frequency: Any, unit_days: float = 7.0) -> np.ndarray:
    """Per customer, whether the model's P(alive) is a measurement (module docstring):
    ``False`` for BG/NBD's one-time buyers (``frequency == 0``) and for everyone when the fit
    finds no dropout."""
    x = np.asarray(frequency, dtype=np.float64)
    if finds_no_dropout(model, unit_days):
        return np.zeros(len(x), dtype=bool)
    if model_kind(model) == "bgnbd":
        return x > 0
    return np.ones(len(x), dtype=bool)


def reported_p_alive(model: Any, summary: pd.DataFrame, unit_days: float = 7.0) -> pd.Series:
    """The model's P(alive) for the customers of ``summary`` (``frequency, recency, T``),
    NaN where it is not a measurement (:func:`p_alive_measured`)."""
    with np.errstate(all="ignore"):
        p = model.conditional_probability_alive(summary).to_numpy(dtype=np.float64)
    ok = p_alive_measured(model, summary["frequency"], unit_days)
    return pd.Series(np.where(ok, p, np.nan), index=summary.index, name="p_alive")


def p_alive_note(model: Any, missing: int, unit_days: float = 7.0) -> str | None:
    """The summary note saying why ``missing`` customers have no ``p_alive`` (``None`` when
    none is missing)."""
    if not missing:
        return None
    if finds_no_dropout(model, unit_days):
        return (
            f"p_alive is missing for all {missing:,} customers: the fitted {model_kind(model)} "
            "model finds no dropout in this data (P(alive) would be about 1 for everyone, "
            "a property of the fit, not a measurement)"
        )
    return (
        f"p_alive is missing for {missing:,} one-time buyers: BG/NBD gives every one-time "
        "buyer P(alive) = 1 by construction (dropout only after a repeat purchase); use "
        "clv.model mbgnbd or pareto_nbd for a P(alive) of one-time buyers"
    )
