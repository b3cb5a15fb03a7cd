"""Time splits: boundaries, rolling cutoffs and leak-free snapshots."""

from __future__ import annotations

import pandas as pd
import pytest

from crmkit.errors import DataContractError
from crmkit.features.rfm import rfm_summary
from crmkit.features.split import calibration_holdout_split, rolling_cutoffs, snapshots, split_at


def _lines(stamps, customers=None):
    n = len(stamps)
    return pd.DataFrame(
        {
            "customer_id": customers or ["a"] * n,
            "order_id": [f"o{i}" for i in range(n)],
            "order_ts": pd.to_datetime(stamps, format="ISO8601"),
            "quantity": [1.0] * n,
            "unit_price": [10.0] * n,
            "amount": [10.0] * n,
        }
    )


def test_split_boundary_is_the_end_of_the_cutoff_day():
    lines = _lines(["2023-01-31 23:59:59", "2023-02-01 00:00:00", "2023-02-01 00:00:01"])
    past, future = split_at(lines, "2023-01-31")
    assert past["order_id"].tolist() == ["o0"]
    assert future["order_id"].tolist() == ["o1", "o2"]
    past, _ = split_at(lines, "2023-02-01 00:00:00")  # midnight: the whole day
    assert past["order_id"].tolist() == ["o0", "o1", "o2"]
    past, _ = split_at(lines, "2023-02-01 00:00:00.5")  # an instant: inclusive
    assert past["order_id"].tolist() == ["o0", "o1"]


def test_calibration_holdout_split():
    lines = _lines(["2023-01-01", "2023-03-15", "2023-06-30 12:00", "2023-07-01"])
    cal, hold = calibration_holdout_split(lines, "2023-03-14", "2023-06-30")
    assert cal["order_id"].tolist() == ["o0"]
    assert hold["order_id"].tolist() == ["o1", "o2"]
    with pytest.raises(DataContractError, match="must come after"):
        calibration_holdout_split(lines, "2023-06-30", "2023-06-30")


def test_rolling_cutoffs():
    lines = _lines(pd.date_range("2022-01-01", "2022-12-31", freq="D").astype(str).tolist())
    cuts = rolling_cutoffs(lines, every="30D", min_history_days=90, horizon_days=90)
    assert cuts[-1] == pd.Timestamp("2022-10-02")  # 2022-12-31 minus 90 days
    assert cuts[0] >= pd.Timestamp("2022-04-01")
    assert all((b - a) == pd.Timedelta(days=30) for a, b in zip(cuts, cuts[1:]))
    assert len(cuts) == 7
    monthly = rolling_cutoffs(lines, every="MS", horizon_days=31)
    assert monthly == list(pd.date_range("2022-04-01", "2022-11-01", freq="MS"))
    assert rolling_cutoffs(lines, every="30D", n=2, horizon_days=90) == cuts[-2:]
    with pytest.raises(DataContractError, match="runs past the data"):
        rolling_cutoffs(lines, last="2022-12-01", horizon_days=90)
    with pytest.raises(DataContractError, match="no cutoff fits"):
        rolling_cutoffs(lines, min_history_days=400)
    with pytest.raises(DataContractError, match="offset alias"):
        rolling_cutoffs(lines, every="fortnightly")


def test_snapshots_are_leak_free():
    lines = _lines(
        ["2023-01-05", "2023-02-10", "2023-03-20", "2023-01-07", "2023-03-02"],
        customers=["a", "a", "a", "b", "b"],
    )
    cuts = [pd.Timestamp("2023-01-31"), pd.Timestamp("2023-02-28")]
    snap = snapshots(lines, cuts, rfm_summary, unit="D")
    assert snap.index.names == ["cutoff", "customer_id"]
    assert snap.loc[(cuts[0], "a"), "frequency"] == 0
    assert snap.loc[(cuts[1], "a"), "frequency"] == 1
    assert snap.loc[(cuts[1], "a"), "T"] == 54
    # One second after the first cutoff: the first snapshot does not move, the second does.
    planted = pd.concat(
        [lines, _lines(["2023-02-01 00:00:01", "2023-02-01 00:00:01"], customers=["a", "c"])],
        ignore_index=True,
    )
    moved = snapshots(planted, cuts, rfm_summary, unit="D")
    pd.testing.assert_frame_equal(moved.loc[[cuts[0]]], snap.loc[[cuts[0]]])
    assert moved.loc[(cuts[1], "a"), "frequency"] == 2
    assert (cuts[1], "c") in moved.index
    seen = []
    snapshots(lines, cuts, rfm_summary, progress=lambda i, n, c: seen.append((i, n, c)))
    assert seen == [(1, 2, cuts[0]), (2, 2, cuts[1])]
