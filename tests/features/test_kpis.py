"""Retention KPIs, the cohort table and the plots: every value computed by hand on a tiny set
of lines, period arithmetic, leakage, and figures that save to PNG."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from crmkit.errors import ConfigError, DataContractError
from crmkit.features.kpis import (
    cohort_table,
    kpis_by_segment,
    period_bounds,
    plot_cohort_heatmap,
    plot_segment_sizes,
    retention_kpis,
)
from crmkit.features.segments import rfm_segments, segment_summary

from .test_segments import AS_OF, LATE, TINY, make_lines


@pytest.fixture
def tiny() -> pd.DataFrame:
    return make_lines(TINY)


# --------------------------------------------------------------------------------------------
# retention_kpis
# --------------------------------------------------------------------------------------------


def test_retention_kpis_by_hand(tiny):
    """Periods for as_of 2023-06-30, "M": previous [05-01, 06-01), current [06-01, 07-01).

    previous active a (a1), b (b1), e (e1); current active a (a2), c (c2), d (d1); e's June
    order is a return only. Retained: a. New in June: d (c's first order is January).
    Orders a1 a2 b1 c1 c2 d1 e1 = 7 (r1 is a return); revenue 30+50+40+100+20+60+15-15 = 300.
    June: orders a2 c2 d1, revenue 50+20+60-15 = 115. Repeat buyers: a, c (2 of 5).
    """
    k = retention_kpis(tiny, AS_OF, period="M")
    assert k == {
        "as_of": "2023-06-30T00:00:00",
        "period": "M",
        "previous_start": "2023-05-01T00:00:00",
        "current_start": "2023-06-01T00:00:00",
        "current_end": "2023-07-01T00:00:00",
        "customers_previous": 3,
        "customers_current": 3,
        "customers_retained": 1,
        "retention_rate": pytest.approx(1 / 3),
        "churn_rate": pytest.approx(2 / 3),
        "new_customers": 1,
        "orders_current": 3,
        "revenue_current": pytest.approx(115.0),
        "average_order_value_current": pytest.approx(115 / 3),
        "customers": 5,
        "orders": 7,
        "revenue": pytest.approx(300.0),
        "repeat_purchase_rate": pytest.approx(0.4),
        "purchase_frequency": pytest.approx(1.4),
        "average_order_value": pytest.approx(300 / 7),
    }
    text = json.dumps(k)  # JSON-ready
    assert json.loads(text)["customers_retained"] == 1
    for v in k.values():
        assert v is None or type(v) in (int, float, str)


def test_retention_kpis_window_in_days(tiny):
    """10 days: previous [06-11, 06-21) holds a2; current [06-21, 07-01) holds c2."""
    k = retention_kpis(tiny, AS_OF, period=10)
    assert (k["previous_start"], k["current_start"]) == (
        "2023-06-11T00:00:00",
        "2023-06-21T00:00:00",
    )
    assert k["period"] == "10D"
    assert (k["customers_previous"], k["customers_current"], k["customers_retained"]) == (1, 1, 0)
    assert k["retention_rate"] == 0.0 and k["churn_rate"] == 1.0
    assert k["new_customers"] == 0  # d's first order (06-10) is before the window
    assert k["orders_current"] == 1 and k["revenue_current"] == 20.0


def test_retention_kpis_quarter(tiny):
    """Q: previous [2023-01-01, 04-01) holds c1; current [04-01, 07-01) everything else."""
    k = retention_kpis(tiny, AS_OF, period="Q")
    assert (k["customers_previous"], k["customers_current"], k["customers_retained"]) == (1, 5, 1)
    assert k["retention_rate"] == 1.0 and k["churn_rate"] == 0.0
    assert k["new_customers"] == 4  # a, b, d, e
    assert k["orders_current"] == 6 and k["revenue_current"] == pytest.approx(200.0)


def test_retention_undefined_without_previous_customers(tiny):
    k = retention_kpis(tiny, "2023-01-31", period="M")
    assert k["customers_previous"] == 0 and k["customers_current"] == 1
    assert k["retention_rate"] is None and k["churn_rate"] is None
    assert k["new_customers"] == 1 and k["customers"] == 1
    assert k["repeat_purchase_rate"] == 0.0


@pytest.mark.parametrize(
    ("as_of", "period", "expected"),
    [
        ("2011-09-09", "M", ("2011-07-10", "2011-08-10", "2011-09-10")),
        ("2023-03-30", "M", ("2023-01-31", "2023-02-28", "2023-03-31")),  # day clipped
        ("2024-02-29", "Y", ("2022-03-01", "2023-03-01", "2024-03-01")),
        ("2023-06-30", "Q", ("2023-01-01", "2023-04-01", "2023-07-01")),
        ("2023-06-30", 7, ("2023-06-17", "2023-06-24", "2023-07-01")),
    ],
)
def test_period_bounds(as_of, period, expected):
    from crmkit.data.clean import analysis_cutoff

    got = period_bounds(analysis_cutoff(as_of), period)
    assert tuple(t.strftime("%Y-%m-%d") for t in got) == expected


@pytest.mark.parametrize("period", ["W", 0, -3, True, 1.5])
def test_bad_period(tiny, period):
    with pytest.raises(ConfigError):
        retention_kpis(tiny, AS_OF, period=period)


def test_kpis_bad_input(tiny):
    with pytest.raises(DataContractError) as e:
        retention_kpis(tiny.drop(columns=["amount"]), AS_OF)
    assert e.value.column == "amount"
    with pytest.raises(DataContractError) as e:
        retention_kpis(tiny, "2020-01-01")
    assert e.value.rule == "empty_window"


# --------------------------------------------------------------------------------------------
# cohort_table
# --------------------------------------------------------------------------------------------


def test_cohort_table_by_hand(tiny):
    """Cohorts: 2023-01 {c}, 2023-05 {a, b, e}, 2023-06 {d}; as_of in 2023-06 (period 5 of
    the first cohort). c buys in months 0 and 5; of a, b, e only a buys in June."""
    t = cohort_table(tiny, AS_OF)
    assert list(t.index.astype(str)) == ["2023-01", "2023-05", "2023-06"]
    assert t.index.name == "cohort" and isinstance(t.index, pd.PeriodIndex)
    assert t["cohort_size"].tolist() == [1, 3, 1]
    shares = t.drop(columns=["cohort_size"])
    assert list(shares.columns) == [0, 1, 2, 3, 4, 5]
    nan = np.nan
    expected = np.array(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            [1.0, 1 / 3, nan, nan, nan, nan],
            [1.0, nan, nan, nan, nan, nan],
        ]
    )
    np.testing.assert_array_equal(shares.to_numpy(), expected)


def test_cohort_table_quarters_and_years(tiny):
    q = cohort_table(tiny, AS_OF, freq="Q")
    assert list(q.index.astype(str)) == ["2023Q1", "2023Q2"]
    assert q["cohort_size"].tolist() == [1, 4]
    np.testing.assert_array_equal(q[[0, 1]].to_numpy(), [[1.0, 1.0], [1.0, np.nan]])
    y = cohort_table(tiny, AS_OF, freq="Y")
    assert y["cohort_size"].tolist() == [5] and y[0].tolist() == [1.0]
    with pytest.raises(ConfigError):
        cohort_table(tiny, AS_OF, freq="W")


def test_cohort_table_simulated_is_consistent():
    from crmkit.data.clean import clean_lines
    from crmkit.data.simulate import simulate_transactions

    lines = clean_lines(simulate_transactions(n_customers=500, seed=2).lines).lines
    t = cohort_table(lines, AS_OF)
    shares = t.drop(columns=["cohort_size"])
    assert (shares[0] == 1.0).all()
    assert (
        t["cohort_size"].sum()
        == lines.loc[lines["order_ts"] < "2023-07-01", "customer_id"].nunique()
    )
    assert ((shares >= 0) & (shares <= 1) | shares.isna()).all().all()
    # the NaN triangle: cohort i (months after the first) has exactly i fewer observable cells
    months = (t.index.year - t.index[0].year) * 12 + (t.index.month - t.index[0].month)
    observable = shares.notna().sum(axis=1).to_numpy()
    assert (observable == shares.shape[1] - np.asarray(months)).all()


# --------------------------------------------------------------------------------------------
# Leakage
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("period", ["M", "Q", "Y", 30])
def test_late_purchases_change_no_kpi(tiny, period):
    late = pd.concat([tiny, make_lines(LATE)], ignore_index=True)
    assert retention_kpis(late, AS_OF, period=period) == retention_kpis(tiny, AS_OF, period=period)


def test_late_purchases_change_no_cohort_or_segment_kpi(tiny):
    late = pd.concat([tiny, make_lines(LATE)], ignore_index=True)
    pd.testing.assert_frame_equal(cohort_table(late, AS_OF), cohort_table(tiny, AS_OF))
    pd.testing.assert_frame_equal(
        kpis_by_segment(rfm_segments(late, AS_OF)), kpis_by_segment(rfm_segments(tiny, AS_OF))
    )


# --------------------------------------------------------------------------------------------
# kpis_by_segment
# --------------------------------------------------------------------------------------------


def test_kpis_by_segment(tiny):
    s = rfm_segments(tiny, AS_OF, method="fixed")
    k = kpis_by_segment(s)
    assert list(k.columns) == [
        "customers",
        "customer_share",
        "revenue",
        "revenue_share",
        "revenue_per_customer",
    ]
    assert k.loc["new"].tolist() == pytest.approx([3, 0.6, 100.0, 1 / 3, 100 / 3])
    assert k.loc["loyal"].tolist() == pytest.approx([1, 0.2, 80.0, 80 / 300, 80.0])
    assert k["revenue"].sum() == pytest.approx(retention_kpis(tiny, AS_OF)["revenue"])


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def test_plot_cohort_heatmap(tiny, tmp_path):
    t = cohort_table(tiny, AS_OF)
    ax = plot_cohort_heatmap(t)
    assert len(ax.images) == 1
    assert len(ax.texts) == int(t.drop(columns=["cohort_size"]).notna().to_numpy().sum()) == 9
    assert sorted(x.get_text() for x in ax.texts).count("100%") == 4
    assert "33%" in [x.get_text() for x in ax.texts]
    assert [x.get_text() for x in ax.get_yticklabels()][0] == "2023-01 (n=1)"
    path = tmp_path / "cohorts.png"
    ax.figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_cohort_heatmap_on_given_ax(tiny):
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    out = plot_cohort_heatmap(cohort_table(tiny, AS_OF), ax, annotate=False, colorbar=False)
    assert out is ax and len(ax.texts) == 0 and len(ax.figure.axes) == 1


def test_plot_segment_sizes(tiny, tmp_path):
    summary = segment_summary(rfm_segments(tiny, AS_OF, method="fixed"))
    ax = plot_segment_sizes(summary)
    assert len(ax.patches) == len(summary) == 9
    assert len(ax.texts) == len(summary)
    heights = [p.get_height() for p in ax.patches]
    assert heights == summary["customers"].astype(float).tolist()
    assert [x.get_text() for x in ax.get_xticklabels()] == list(summary.index)
    path = tmp_path / "segments.png"
    ax.figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax2 = plot_segment_sizes(summary, column="total_spend")
    assert [p.get_height() for p in ax2.patches] == summary["total_spend"].tolist()
    with pytest.raises(DataContractError):
        plot_segment_sizes(summary, column="nope")


def test_import_has_no_side_effects():
    code = (
        "import sys; import crmkit.features.kpis, crmkit.features.segments; "
        "print('matplotlib.pyplot' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
