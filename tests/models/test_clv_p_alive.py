"""P(alive) agrees with what the data show (issue 15, section 5).

Before the fix ``p_alive`` was the purchase model's number for everyone: BG/NBD's 1.0 for
every one-time buyer (by construction) and about 1 for everyone on Online Retail, whose fits
find no dropout. On the demo shop the segment means read ``lost`` 0.505 vs ``at_risk`` 0.107
(one-time buyers at 1.0 in ``lost``); on Online Retail every segment read 0.996 - 1.000 and
BG/NBD's 1 - P(alive) ranked the next quarter's churners worse than chance (ROC-AUC 0.32,
``crmkit churn`` at 2011-07-01). Now a P(alive) that is not a measurement is missing (NaN,
:mod:`crmkit.models.p_alive`) and the measured ones are checked against the simulator's
ground truth."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from crmkit.models.clv import BetaGeo, ModifiedBetaGeo, ParetoNBD
from crmkit.models.p_alive import finds_no_dropout, p_alive_note, reported_p_alive

DEMO_AS_OF = "2023-06-30"


def _fit(cls, summary):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls().fit(summary)


@pytest.fixture(scope="module")
def demo():
    """The demo shop (as `make demo`): summary (weeks), segments and the ground truth."""
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions
    from crmkit.data.simulate import simulate_transactions
    from crmkit.features.rfm import rfm_summary
    from crmkit.pipelines.features import customer_table

    sim = simulate_transactions(n_customers=5000, seed=0, acquisition_weeks=75)
    lines = clean_lines(load_transactions(sim.lines)).lines
    summary = rfm_summary(lines, DEMO_AS_OF, unit="W")
    table = customer_table(lines, DEMO_AS_OF)
    truth = sim.truth.customers.set_index("customer_id")["alive_at_cutoff"]
    return summary, table["segment"].astype(str), truth.reindex(summary.index).astype(float)


@pytest.fixture(scope="module")
def online_retail(shared_data):
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions
    from crmkit.features.rfm import rfm_summary
    from crmkit.pipelines.features import customer_table

    lines = clean_lines(load_transactions(shared_data / "online_retail.parquet")).lines
    summary = rfm_summary(lines, "2011-12-09", unit="W")
    return summary, customer_table(lines, "2011-12-09")["segment"].astype(str)


def test_bgnbd_p_alive_is_missing_for_one_time_buyers_and_ordered_by_segment(demo):
    summary, segment, truth = demo
    model = _fit(BetaGeo, summary)
    p = reported_p_alive(model, summary)
    once = summary["frequency"].to_numpy() == 0
    assert once.sum() == 1106
    assert p[once].isna().all() and p[~once].notna().all()
    assert p_alive_note(model, int(p.isna().sum())).startswith(
        "p_alive is missing for 1,106 one-time buyers"
    )
    means = p.groupby(segment).mean()
    # measured 0.084 < 0.101 < 0.260 < 0.588 (loyal), 0.722 (champions)
    assert means["lost"] < means["at_risk"] < min(means["loyal"], means["champions"])
    assert means["hibernating"] < min(means["loyal"], means["champions"])
    # and they are right: the share of customers truly alive per segment (simulator truth)
    alive = truth[~once].groupby(segment[~once]).mean()
    diff = (means - alive).dropna().abs()
    assert len(diff) == 7 and diff.max() < 0.03, diff


@pytest.mark.parametrize("cls", [ModifiedBetaGeo, ParetoNBD])
def test_p_alive_of_one_time_buyers_falls_with_time_since_purchase(demo, cls):
    """MBG/NBD and Pareto/NBD let a one-time buyer drop out: their P(alive) is reported for
    everyone and falls with the time since the (only) purchase."""
    summary, segment, _ = demo
    model = _fit(cls, summary)
    p = reported_p_alive(model, summary)
    assert p.notna().all() and p_alive_note(model, 0) is None
    once = summary[summary["frequency"] == 0]
    weeks = once["T"].to_numpy()
    order = np.argsort(weeks, kind="stable")
    assert np.all(np.diff(p[once.index].to_numpy()[order]) <= 1e-12)
    by_age = p[once.index].groupby(pd.cut(once["T"], [0, 13, 26, 52, 80])).mean()
    assert by_age.is_monotonic_decreasing and by_age.iloc[0] - by_age.iloc[-1] > 0.4
    grid = pd.DataFrame({"frequency": 0.0, "recency": 0.0, "T": [1.0, 10.0, 52.0, 104.0]})
    assert np.all(np.diff(reported_p_alive(model, grid).to_numpy()) < 0)


def test_online_retail_fits_find_no_dropout_and_report_no_p_alive(online_retail):
    summary, segment = online_retail
    for cls in (BetaGeo, ModifiedBetaGeo, ParetoNBD):
        model = _fit(cls, summary)
        raw = model.conditional_probability_alive(summary)
        assert raw.mean() > 0.99  # the model's number: about 1 for everyone
        assert finds_no_dropout(model)
        p = reported_p_alive(model, summary)
        assert p.isna().all()
        assert "finds no dropout" in p_alive_note(model, len(p))
    # the segments no longer read "alive" for the lost: no number at all, with the note
    assert p.groupby(segment).mean().isna().all()


def test_demo_fit_has_dropout():
    model = BetaGeo.from_params({"r": 0.76, "alpha": 4.39, "a": 0.77, "b": 2.46})
    assert not finds_no_dropout(model)
    assert finds_no_dropout(BetaGeo.from_params({"r": 0.8, "alpha": 9.9, "a": 0.003, "b": 7.2}))


def test_demo_score_segment_table_reads_sensibly(tmp_path):
    """`crmkit demo` as a user runs it: the printed P(alive) per segment is ordered lost <
    at_risk < hibernating < loyal < champions (before: lost 0.505 above at_risk 0.107), the
    segments of one-time buyers show '-', and the note says why."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    crmkit = str(Path(sys.executable).with_name("crmkit"))
    res = subprocess.run(
        [crmkit, "demo", "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    table = res.stdout[res.stdout.index("P(alive)") :]
    rows = dict(re.findall(r"^  (\w+) +[\d,]+ +[\d.]+% +[\d,.]+ +([\d.]+|-)$", table, re.M))
    assert rows["new"] == rows["promising"] == "-"
    p = {k: float(v) for k, v in rows.items() if v != "-"}
    assert p["lost"] < p["at_risk"] < p["hibernating"] < p["loyal"] < p["champions"], p
    assert "p_alive is missing for 1,106 one-time buyers" in res.stdout + res.stderr
