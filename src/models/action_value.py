"""Expected value and cost of each next best action: an action is taken only when it pays.

:func:`crmkit.models.actions.assign_next_best_action` keeps a rule's customer only when the
action's **expected value exceeds its cost**; a customer for whom no eligible action pays gets
``none``. Per action ``a`` and customer:

``expected_value = P(the customer acts on it) x value``

``cost = contact + discount x expected_value``

and the action is kept when ``expected_value > cost``, i.e. ``expected_value x (1 -
discount) > contact``. ``contact`` is the fixed cost of one contact (an e-mail, a push, a
letter) in the currency of the data; ``discount`` is the share of the value the action gives
away when the customer acts (a voucher or reward: 10 % off a purchase whose margin is 40 % of
the price costs 0.25 of the margin it brings). Both are set per action in ``actions.costs``.

What the customer table offers for ``P`` and ``value`` (``churn`` is ``churn_probability``,
or ``1 - p_alive`` where the churn model did not score the customer):

=================================== ================== =====================================
action                              P(acts on it)      value
=================================== ================== =====================================
``win_back``                        ``p_alive``        ``clv x churn`` (the CLV at risk)
``replenishment``, ``cross_sell``,  ``1 - churn``      the offer's recommendation ``score``
``up_sell``                                            (expected value of the offer)
``loyalty_reward``                  ``churn``          ``clv`` (the CLV the reward protects)
``referral_ask``                    ``1 - churn``      ``clv`` (a referred friend worth about
                                                       as much as the referrer, at most)
=================================== ================== =====================================

The offers' ``score`` already holds the BG/NBD P(alive) (:mod:`crmkit.models.recommend`);
``1 - churn`` adds what that misses for a customer silent for a long time: the churn model
sees the recency and says how likely any purchase in its window is. ``action_value`` (what
ranks an audience) is the ``value`` column above; the expected value is derived from it
and the customer's probabilities (:func:`expected_value_of_assigned`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ActionCost",
    "ActionCosts",
    "VoucherCost",
    "DEFAULT_COSTS",
    "action_pays",
    "expected_values",
    "expected_value_of_assigned",
]


class ActionCost(BaseModel):
    """The cost of one action (``actions.costs.<action>``).

    Attributes
    ----------
    contact
        Fixed cost of one contact, in the currency of the data (default 0.10: an e-mail,
        sending plus the list's share of the tool).
    discount
        Share of the action's value given away when the customer acts, in [0, 1) (default 0:
        a plain message; a voucher or reward costs its share of the margin).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    contact: float = Field(0.10, ge=0)
    discount: float = Field(0.0, ge=0, lt=1)


class VoucherCost(ActionCost):
    """:class:`ActionCost` of an action that gives something away (a win-back voucher, a
    loyalty reward): by default 10 % off, about 0.25 of the margin of the purchase it brings."""

    discount: float = Field(0.25, ge=0, lt=1)


class ActionCosts(BaseModel):
    """The cost of every action (``actions.costs``): an e-mail (contact 0.10) each; the
    win-back voucher and the loyalty reward also give away 0.25 of the value they bring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    win_back: VoucherCost = VoucherCost()
    replenishment: ActionCost = ActionCost()
    loyalty_reward: VoucherCost = VoucherCost()
    referral_ask: ActionCost = ActionCost()
    cross_sell: ActionCost = ActionCost()
    up_sell: ActionCost = ActionCost()


#: Default costs (:class:`ActionCosts`), as a mapping.
DEFAULT_COSTS: dict[str, ActionCost] = dict(ActionCosts())


_P_ALIVE = ("win_back",)
_P_CHURN = ("loyalty_reward",)


def _probability(action: str, p_alive: np.ndarray, churn: np.ndarray) -> np.ndarray:
    """P(the customer acts on ``action``) (module docstring)."""
    if action in _P_ALIVE:
        return p_alive
    if action in _P_CHURN:
        return churn
    return 1.0 - churn


def expected_values(
    values: Mapping[str, np.ndarray], p_alive: np.ndarray, churn: np.ndarray
) -> dict[str, np.ndarray]:
    """``P(acts) x value`` per action (module docstring).

    Parameters
    ----------
    values
        ``{action: value per customer}`` (the rule's ``action_value``).
    p_alive, churn
        Per customer: P(alive) and the churn probability (missing ones already replaced).
    """
    return {a: _probability(a, p_alive, churn) * np.asarray(v) for a, v in values.items()}


def action_pays(expected: np.ndarray, cost: ActionCost) -> np.ndarray:
    """Where ``expected`` exceeds its cost: ``expected x (1 - discount) > contact``."""
    return np.asarray(expected) * (1.0 - cost.discount) > cost.contact


def expected_value_of_assigned(customers: pd.DataFrame) -> pd.Series:
    """The expected value of each customer's assigned action, from the output of
    :func:`~crmkit.models.actions.assign_next_best_action` (``next_best_action``,
    ``action_value``, ``p_alive``, ``churn_probability``; a missing ``p_alive`` - not a
    measurement, :mod:`crmkit.models.p_alive` - counts as 1 as in the scoring job, a missing
    churn probability as ``1 - p_alive``); 0 for ``none``."""
    p = customers["p_alive"].to_numpy(dtype=np.float64, na_value=np.nan)
    p = np.where(np.isnan(p), 1.0, p)
    churn = customers["churn_probability"].to_numpy(dtype=np.float64, na_value=np.nan)
    churn = np.where(np.isnan(churn), 1.0 - p, churn)
    value = customers["action_value"].to_numpy(dtype=np.float64)
    action = customers["next_best_action"].astype("str").to_numpy(dtype=object)
    out = np.zeros(len(customers))
    for a in DEFAULT_COSTS:
        m = action == a
        out[m] = _probability(a, p[m], churn[m]) * value[m]
    return pd.Series(out, index=customers.index, name="expected_value")
