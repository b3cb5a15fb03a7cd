"""Next best actions on the demo sample (issue 15): ``crmkit demo`` run for real (the sample of
``make demo``: 5,000 customers, seed 0), then its customers.parquet checked.

- a customer silent for over a year gets ``none`` or ``win_back``, never an offer (before:
  382 of the 720 got ``cross_sell``, 202 ``replenishment``, 99 ``up_sell``; nobody ``none``);
- no customer gets an action whose expected value does not exceed its cost, recomputed here
  from the output columns with the definitions of ``crmkit.models.action_value``;
- the counts per action are printed and equal summary.json's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from crmkit.models.action_value import ActionCosts

CRMKIT = str(Path(sys.executable).with_name("crmkit"))


def _expected_value(c: pd.DataFrame) -> np.ndarray:
    """P(acts) x value per the README's actions table, from customers.parquet's columns (a
    missing p_alive - not a measurement - is read as 1, as the scorer does)."""
    p_alive = c["p_alive"].fillna(1.0)
    churn = c["churn_probability"].fillna(1.0 - p_alive).to_numpy(float)
    p = np.select(
        [c["next_best_action"] == "win_back", c["next_best_action"] == "loyalty_reward"],
        [p_alive.to_numpy(float), churn],
        1.0 - churn,
    )
    return p * c["action_value"].to_numpy(float)


def test_demo_actions_pay_their_cost_and_silent_customers_get_no_offer(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    run = subprocess.run(
        [CRMKIT, "demo", "--out", str(tmp_path / "demo")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    scores = tmp_path / "demo" / "scores"
    c = pd.read_parquet(scores / "customers.parquet")
    c["next_best_action"] = c["next_best_action"].astype("str")
    assert len(c) == 5000
    counts = c["next_best_action"].value_counts()
    print("actions:", counts.to_dict())
    summary = json.loads((scores / "summary.json").read_text())
    assert {k: v for k, v in summary["next_best_action"].items() if v} == counts.to_dict()

    # silent for over a year (features.unit is days): no offer, only win-back or nothing
    silent = c[(c["T"] - c["recency"]) > 365]
    got = silent["next_best_action"].value_counts().to_dict()
    print(f"{len(silent)} customers silent for over a year:", got)
    assert len(silent) > 500
    assert set(got) <= {"none", "win_back"}, got
    assert got.get("none", 0) > 0.8 * len(silent)

    # every action pays: expected value x (1 - discount) > contact, with the numbers
    ev = _expected_value(c)
    costs = ActionCosts()
    acted = c["next_best_action"] != "none"
    for action, rows in c[acted].groupby("next_best_action"):
        cost = getattr(costs, action)
        net = ev[rows.index] * (1 - cost.discount) - cost.contact
        print(f"{action}: {len(rows)} customers, smallest net expected value {net.min():.4f}")
        assert (net > 0).all(), (action, rows.loc[net <= 0, ["customer_id", "action_value"]])
    # none is no free pass: the customers left without an action are a large share of the shop
    assert 0.2 * len(c) < counts["none"] < 0.8 * len(c)
    assert (c.loc[~acted, "action_value"] == 0).all()
