"""Population-level statistics of the recommender (``PopulationStats``): the lists of a part of
the customers, built from their lines alone with the whole population's statistics, are
exactly their rows of the whole population's lists; the statistics rebuilt from per-group and
per-product parts (as the Spark engine builds them) are bit-identical to those of the whole
lines; statistics that do not fit the lines are refused."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from crmkit.data.clean import clean_lines
from crmkit.data.io import load_transactions
from crmkit.data.simulate import simulate_transactions
from crmkit.errors import ConfigError, DataContractError
from crmkit.models.recommend import (
    PopulationStats,
    Recommender,
    _customer_group_parts,
    _cutoff,
    _exact_partials,
    _fit_logit,
    _new_product_table,
    _population_segments,
    _product_gap_sums,
    _purchases,
    _select,
    _stack,
    _usable_clv,
)

AS_OF = "2023-06-30"
LATER = "2023-12-31"


def lines_with_new_products(n_customers: int, seed: int, n_new: int) -> pd.DataFrame:
    """Simulated lines to the end of 2023 where the ``n_new`` best sellers after ``AS_OF`` are
    renamed ``<id>-v2`` (products new since a training at ``AS_OF``; the first of them with
    a category unknown at training) and have new names."""
    sim = simulate_transactions(n_customers=n_customers, seed=seed)
    lines = clean_lines(load_transactions(sim.lines)).lines.copy()
    late = lines["order_ts"] > pd.Timestamp(AS_OF) + pd.Timedelta(days=1)
    top = lines.loc[late, "product_id"].value_counts().index[:n_new]
    renamed = late & lines["product_id"].isin(top)
    lines.loc[renamed, "product_id"] = lines.loc[renamed, "product_id"] + "-v2"
    lines.loc[renamed, "product_name"] = lines.loc[renamed, "product_name"] + " (new)"
    lines.loc[renamed & (lines["product_id"] == top[0] + "-v2"), "category"] = "Gadgets"
    return lines


@pytest.fixture(scope="module")
def case():
    """The lines with 12 new products, a recommender fitted at ``AS_OF`` and scores."""
    lines = lines_with_new_products(900, 5, 12)
    late = lines["order_ts"] > pd.Timestamp(AS_OF) + pd.Timedelta(days=1)
    ids = pd.unique(lines["customer_id"])
    rng = np.random.default_rng(3)
    scores = pd.DataFrame(
        {
            "customer_id": ids,
            "p_alive": rng.uniform(0.05, 1.0, len(ids)),
            "clv": rng.gamma(2.0, 80.0, len(ids)),
        }
    )
    rec = Recommender().fit(lines[~late], AS_OF, customer_scores=scores)
    return lines, rec, scores


def _groups(ids: pd.Series, n: int) -> np.ndarray:
    """A bucket per customer, by a hash of the id (customers interleaved, not in id ranges)."""
    return pd.util.hash_array(ids.astype("str").to_numpy(dtype=object)) % n


def test_parts_with_population_stats_equal_the_whole(case):
    lines, rec, scores = case
    full = rec.recommend_for(lines, LATER, scores)
    kinds = set(full["kind"])
    assert {"cross_sell", "up_sell", "resell", "reactivation"} <= kinds
    stats = rec.population_stats(lines, LATER, scores)
    new = stats.new_products
    assert new["product_id"].str.endswith("-v2").sum() == 12  # and a few first sold late
    assert new["product_id"].is_monotonic_increasing
    assert full["product_id"].isin(new["product_id"]).sum() > 20  # new products are re-sold
    assert (new["category"] == "Gadgets").sum() == 1 and stats.n_known == len(rec.products_)
    assert stats.segments is not None and len(stats.segments) == full["customer_id"].nunique()
    assert stats.clv_mean == pytest.approx(scores["clv"].mean(), rel=1e-12)

    # bit for bit, by construction: a row's score does not depend on the rows scored with it
    # (test_calibration_probability_of_a_row_does_not_depend_on_the_other_rows)
    bucket = _groups(lines["customer_id"], 5)
    rows = _groups(full["customer_id"], 5)
    parts, differs = [], 0
    for b in range(5):
        part = lines[bucket == b]
        got = rec.recommend_for(part, LATER, scores, population=stats)
        want = full[rows == b].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        parts.append(got)
        alone = rec.recommend_for(part, LATER, scores)  # the part as its own population
        if len(alone) != len(want) or not alone.equals(want):
            differs += 1
    # without the population's statistics the parts' lists differ (segments, gaps, CLV mean)
    assert differs == 5
    whole = pd.concat(parts).sort_values(["customer_id", "rank"], kind="stable")
    pd.testing.assert_frame_equal(whole.reset_index(drop=True), full, check_exact=True)
    # the streamed pieces and the statistics of the whole lines give the same lists
    again = rec.iter_recommend_for(lines, LATER, scores, population=stats)
    pd.testing.assert_frame_equal(pd.concat(list(again), ignore_index=True), full)


def test_lists_built_in_chunks_of_customers_are_bit_identical(case, monkeypatch):
    """In chunks of 97 customers (the bounded-memory path of large inputs) the lists are the
    one-piece lists bit for bit, scores included: every score is computed row by row with
    elementwise operations in a fixed order, so a row's value does not depend on the rows
    around it (on an AVX-512 CPU the float32 ``X @ w`` of the calibration model did)."""
    import crmkit.models.recommend as recommend

    lines, rec, scores = case
    one = rec.recommend_for(lines, LATER, scores)
    monkeypatch.setattr(recommend, "CHUNK_CUSTOMERS", 97)
    pieces = list(rec.iter_recommend_for(lines, LATER, scores))
    assert len(pieces) == -(-one["customer_id"].nunique() // 97) > 8
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), one, check_exact=True)
    chunked = rec.recommend_for(lines, LATER, scores)
    pd.testing.assert_frame_equal(chunked, one, check_exact=True)
    assert len(one) > 5000 and one["score"].nunique() > 0.9 * len(one)


@pytest.mark.parametrize("d", [7, 10])  # the unseen kinds' and the re-sell features
def test_calibration_probability_of_a_row_does_not_depend_on_the_other_rows(d):
    """``_Logit.predict`` of a row is the same bits whatever rows are scored with it (a slice
    at any offset and length, a strided view, C or Fortran order). With ``X @ w`` in float32
    (OpenBLAS sgemv: unrolled blocks and tails chosen by the number of rows) 45 (7 features)
    and 2 (10 features) of these values differed with the SkylakeX kernel of an AVX-512 CPU,
    by up to 1e-6 relative: the 0.4 % of list scores that differed between a whole and its
    parts. The values are the model's: within 1e-12 (relative) of the same sum done row by
    row in exact arithmetic (``math.fsum``)."""
    rng = np.random.default_rng(d)
    X = _stack([rng.normal(size=4099) for _ in range(d)])
    y = (rng.uniform(size=4099) < 1.0 / (1.0 + np.exp(-X[:, 0] - 0.5 * X[:, 1]))).astype(float)
    model = _fit_logit(X, y)
    full = model.predict(X)
    differ = 0
    for start in (0, 1, 3, 5, 17):
        for n in (1, 2, 3, 5, 8, 33, 1000, 4094):
            differ += int((model.predict(X[start : start + n]) != full[start : start + n]).sum())
    assert differ == 0
    assert np.array_equal(model.predict(X[1::2]), full[1::2])
    assert np.array_equal(model.predict(np.ascontiguousarray(X)), full)
    w = model.coef[1:] / model.scale
    b = model.coef[0] - math.fsum(model.mean * w)
    z = np.array([math.fsum([b, *(row.astype(np.float64) * w)]) for row in X])
    np.testing.assert_allclose(full, 1.0 / (1.0 + np.exp(-z)), rtol=1e-12, atol=0)
    assert full.min() < 0.2 and full.max() > 0.8  # a real model, not a constant


def test_stats_from_parts_are_bit_identical(case):
    """Per customer group: measures and repeat gaps; per product: new-product catalogue rows
    and gap sums in customer order; CLV mean from exact partial sums - merged, the same."""
    lines, rec, scores = case
    stats = rec.population_stats(lines, LATER, scores)
    cutoff = _cutoff(LATER)
    known = rec._products
    bucket = _groups(lines["customer_id"], 4)
    groups = [_customer_group_parts(lines[bucket == b], cutoff, known) for b in range(4)]
    pairs = pd.concat([g.repeats for g in groups], ignore_index=True)
    gaps = _product_gap_sums(pairs.sample(frac=1.0, random_state=1))
    new_ids = pd.Index(sorted(set().union(*(g.new_products for g in groups))))
    # new products: every line of one product at a time, in line order
    past = lines[(lines["order_ts"] < cutoff) & ~lines["product_id"].isin(known)]
    tables = []
    for _, one in past.groupby("product_id", sort=False):
        table, basis = _new_product_table(one, _purchases(one, cutoff, None), 0)
        tables.append(table)
    assert new_ids.equals(pd.Index(stats.new_products["product_id"]))
    measures = pd.concat([g.measures for g in groups], ignore_index=True)
    segments, cut = _population_segments(measures.iloc[::-1], rec.reactivation_min_value_quantile)
    clv = [_usable_clv(scores, g.customers) for g in groups]
    clv_mean = math.fsum(sum((_exact_partials(v) for v in clv[::-1]), [])) / sum(map(len, clv))
    got = PopulationStats.from_parts(
        rec,
        LATER,
        new_products=pd.concat(tables[::-1], ignore_index=True),
        value_basis=basis,
        gaps=gaps,
        segments=segments,
        spend_cut=cut,
        clv_mean=clv_mean,
    )
    assert got.cutoff == stats.cutoff and got.n_known == stats.n_known
    assert got.value_basis == stats.value_basis == "price"
    pd.testing.assert_frame_equal(got.new_products, stats.new_products, check_exact=True)
    assert np.array_equal(got.repeat_buyers, stats.repeat_buyers)
    assert np.array_equal(got.log_gap_sum, stats.log_gap_sum)  # bit for bit
    assert (stats.repeat_buyers > 0).sum() > 100
    pd.testing.assert_series_equal(got.segments, stats.segments)
    assert got.spend_cut == stats.spend_cut and got.clv_mean == stats.clv_mean
    assert set(stats.segments) >= {"champions", "at_risk", "hibernating", "lost"}
    # the merged statistics give the same lists
    part = lines[bucket == 2]
    pd.testing.assert_frame_equal(
        rec.recommend_for(part, LATER, scores, population=got),
        rec.recommend_for(part, LATER, scores, population=stats),
    )


def test_statistics_that_do_not_fit_are_refused(case):
    lines, rec, scores = case
    stats = rec.population_stats(lines, LATER, scores)
    some = lines[lines["customer_id"].isin(pd.unique(lines["customer_id"])[:30])]
    with pytest.raises(ConfigError, match="cutoff"):
        rec.recommend_for(some, "2023-11-30", scores, population=stats)
    with pytest.raises(ConfigError, match="without it"):
        rec.recommend_for(some, LATER, scores, population=rec.population_stats(lines, LATER))
    narrow = dataclasses.replace(stats, segments=stats.segments.drop(some["customer_id"].iloc[0]))
    with pytest.raises(DataContractError) as err:
        rec.recommend_for(some, LATER, scores, population=narrow)
    assert err.value.rule == "population_stats" and err.value.column == "customer_id"
    odd = some.copy()
    odd.loc[odd.index[0], "product_id"] = "NEVER-SEEN"
    with pytest.raises(DataContractError) as err:
        rec.recommend_for(odd, LATER, scores, population=stats)
    assert err.value.rule == "population_stats" and err.value.column == "product_id"
    shifted = dataclasses.replace(stats, n_known=stats.n_known - 1)
    with pytest.raises(ConfigError, match="another recommender"):
        rec.recommend_for(some, LATER, scores, population=shifted)


def test_selection_does_not_depend_on_the_other_customers():
    """A customer's list is chosen from their own candidates only: close scores are not tied
    by adding them to an offset sized by the largest score of the whole chunk (customer 1's
    1e6 here; with unseen_share=1 the reserved rows compete for the slots beside the forced
    reactivation row)."""
    cust = np.array([0, 0, 0, 1], dtype=np.int32)
    prod = np.array([0, 1, 2, 3], dtype=np.int32)
    kind = np.array([2, 0, 0, 0], dtype=np.int8)  # re-sell, then cross-sell
    score = np.array([1.0, 0.5, 0.5 + 1e-10, 1e6])
    forced = np.array([True, False, False, False])
    args = {"top_n": 2, "n_unseen": 2, "n_p": 4}
    pick, rank = _select(cust, prod, kind, score, forced, **args)
    assert pick.tolist() == [0, 2, 3] and rank.tolist() == [1, 2, 1]
    alone, rank = _select(cust[:3], prod[:3], kind[:3], score[:3], forced[:3], **args)
    assert alone.tolist() == [0, 2] and rank.tolist() == [1, 2]
