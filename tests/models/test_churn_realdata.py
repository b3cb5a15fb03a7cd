"""The churn stage on the full CDNOW cohort with the default config: slow (about 40 s alone on
2 cores - 566k training rows - hence its own file); the fast churn tests, Online Retail
included, are in test_churn.py."""

from __future__ import annotations

import pytest

from crmkit.pipelines.churn import ChurnConfig, compute_churn

from .test_churn import assert_beats_every_baseline

CDNOW_AS_OF = "1998-03-31"


@pytest.mark.slow
@pytest.mark.realdata
def test_cdnow_beats_every_baseline(shared_data):
    """CDNOW (the full 23,570-customer cohort) at 1998-03-31, H = 90, default config (24
    weekly training cutoffs, 565,680 training rows)."""
    from crmkit.data.clean import clean_lines
    from crmkit.data.io import load_transactions

    lines = clean_lines(load_transactions(shared_data / "cdnow" / "CDNOW_master.txt")).lines
    m = compute_churn(lines, CDNOW_AS_OF, ChurnConfig()).metrics
    rows = [f"CDNOW at {m['as_of']} (H = {m['window_days']} days):"]
    for name in ("lightgbm", "recency_rule", "rfm_score", "bgnbd"):
        rows.append(
            f"  {name:13s} ROC-AUC {m[name]['roc_auc']:.5f}  PR-AUC {m[name]['pr_auc']:.5f}"
        )
    print("\n" + "\n".join(rows))
    assert_beats_every_baseline(m)
    assert m["counts"]["train_cutoffs"] == 24 and m["counts"]["test_customers"] == 23570
