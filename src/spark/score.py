"""The customer-level half of ``crmkit score --engine spark``: every customer's segment, RFM
scores and summary, CLV and churn scores computed on Spark with a trained
:class:`crmkit.pipelines.scorer.CustomerScorer`, equal to the local
:meth:`~crmkit.pipelines.scorer.CustomerScorer.score` (its ``customers`` table up to and
including ``churn_reasons``; the next best action needs the recommendation lists and is not
computed here).

* :func:`customer_scores` - the table: :func:`crmkit.spark.customer_table` with the scorer's
  feature settings, joined with :func:`crmkit.spark.clv.clv_scores` and :func:`churn_scores`.
* :func:`churn_features` - the Spark counterpart of :func:`crmkit.models.churn.churn_features`
  with a :class:`~crmkit.pipelines.churn.ChurnScorer`'s settings: the same columns, in the
  same order, under the same definitions.
* :func:`churn_scores` - ``churn_probability, churn_risk_band, churn_reasons`` of the
  customers matching the scored-customer rule, from the scorer's own LightGBM model, on each
  batch of customers in ``mapInPandas``.

The churn model's behavioural features are computed per customer by the local functions
(:func:`crmkit.features.behaviour.behaviour_features`, ``rfm_summary``) on groups of whole
customers in ``applyInPandas`` - each a function of the customer's own lines in file order -
rather than taken from :func:`crmkit.spark.customer_table`, whose plain Spark sums agree with
the local ones only to rounding: the churn reasons print money to the cent (e.g. "average
order value 557.88"), and a last-bit difference on a half cent prints another text.

What reaches the driver: the table of unique weekly ``(frequency, recency, T)`` patterns with
their weights (for the BG/NBD features, fitted there as in the local scorer) and their
predictions, and a few rows when a check fails. No order line and no customer row is
collected. The checks (CLV spend, scored-customer rule) and the pattern table are Spark
queries of their own; :func:`customer_scores` persists the two per-customer tables they read
so that the order lines are aggregated once for each.

Exactness
---------
Ids, counts, days, RFM scores, segments, risk bands and reasons are identical to the local
engine's. Every churn feature is identical bit for bit (behavioural features as above; RFM
quintiles ranked over all customers; the weekly summary and hence the BG/NBD parameters and
features), and so are the churn probabilities. The customer table's float sums agree to
rounding (relative ~1e-12, see :mod:`crmkit.spark.features`), and so do ``monetary_value``,
expected spend and CLV (within 1e-9, tested on the sample data and Online Retail).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.storagelevel import StorageLevel

from crmkit.errors import DataContractError
from crmkit.pipelines.scorer import CUSTOMER_COLUMNS
from crmkit.spark.clv import clv_scores, weighted_patterns
from crmkit.spark.features import _prepare, _with_quintile, customer_table

__all__ = ["SCORE_COLUMNS", "churn_features", "churn_scores", "customer_scores"]

#: Columns of :func:`customer_scores`: ``crmkit.pipelines.scorer.CUSTOMER_COLUMNS`` up to
#: and including ``churn_reasons``.
SCORE_COLUMNS = CUSTOMER_COLUMNS[: CUSTOMER_COLUMNS.index("churn_reasons") + 1]
_PATTERN = ["frequency", "recency", "T"]


# --------------------------------------------------------------------------------------------
# churn features


def _check_churn_columns(lines: DataFrame, churn: Any, when: object) -> None:
    """The input checks of :meth:`ChurnScorer.score` (missing columns, a bad date: its own
    errors), run by it on an empty pandas frame with the columns of ``lines``; the empty
    frame's own complaint (no purchase line) is not one."""
    if not isinstance(lines, DataFrame):
        raise DataContractError(
            f"expected a Spark DataFrame of cleaned order lines, got {type(lines).__name__}",
            rule="input_type",
        )
    try:
        churn.score(_empty_like(lines), when)
    except DataContractError as exc:
        if exc.rule != "empty_window":
            raise


#: Optional line columns behind behavioural features (distinct counts, usual values).
_OPTIONAL = ("product_id", "category", "country", "channel")
#: The weekly RFM summary of the BG/NBD features, as columns of :func:`_behaviour`.
_WEEKLY = {"frequency": "bg_frequency", "recency": "bg_recency", "T": "bg_T"}


def _local_features(pdf: pd.DataFrame, cut: pd.Timestamp, settings: dict, extra: list[str]):
    """The local behaviour features, ``monetary_value`` and the weekly summary of a pandas
    group of prepared lines (whole customers)."""
    from crmkit.features.behaviour import behaviour_features
    from crmkit.features.rfm import rfm_summary

    names = {"q": "quantity", "a": "amount", **{f"x_{c}": c for c in extra}}
    pdf = pdf.sort_values(["_file", "_row"], kind="stable").rename(columns=names)
    pdf["order_ts"] = pd.to_datetime(pdf.pop("ts").to_numpy(np.int64), unit="ns")
    f = behaviour_features(pdf, cut, **settings)
    s = rfm_summary(pdf, cut, unit="W").reindex(f.index)
    f["monetary_value"] = s["monetary_value"].fillna(0.0).to_numpy()
    for col, name in _WEEKLY.items():
        f[name] = s[col].to_numpy()
    for c in f.columns:
        if isinstance(f[c].dtype, pd.CategoricalDtype):
            f[c] = [None if pd.isna(v) else str(v) for v in f[c].astype(object)]
    return f.reset_index()


def _behaviour(lines: DataFrame, cut: pd.Timestamp, churn: Any, groups: int | None) -> DataFrame:
    """``customer_id``, the columns of :func:`crmkit.features.behaviour.behaviour_features`
    with the churn model's settings, ``monetary_value`` and the weekly ``frequency, recency,
    T`` (as ``bg_frequency, bg_recency, bg_T``) of :func:`crmkit.features.rfm.rfm_summary`,
    computed by those local functions on groups of whole customers (``applyInPandas``, keyed
    on a hash of the customer id into ``groups`` groups), each group's lines in file order.

    Each of these numbers depends on the customer's own lines only, taken in file order (the
    order of the local ``np.bincount`` sums), so each is identical to the local engine's, bit
    for bit - the money sums the churn reasons print to the cent included (Spark's own sums
    of :func:`crmkit.spark.customer_table` agree only to rounding, which can flip a printed
    cent). The usual ``country`` / ``channel`` come back as strings."""
    from crmkit.features.behaviour import _cutoff_ns
    from crmkit.spark.features import _validate

    settings = churn.behaviour_settings()
    extra = [c for c in _OPTIONAL if c in lines.columns]
    base = _prepare(lines, extra)
    _validate(base, cut)  # the local engine's errors, before any Python worker starts
    if groups is None:
        conf = lines.sparkSession.conf.get("spark.sql.shuffle.partitions", "200")
        groups = max(int(conf or 200), 1)
    cutoff = _cutoff_ns(cut)
    past = base.where(F.col("ts") < F.lit(cutoff)).select(
        F.pmod(F.xxhash64("customer_id"), F.lit(groups)).alias("_group"),
        "customer_id",
        "order_id",
        "ts",
        "q",
        "a",
        F.col("line.file").alias("_file"),
        F.col("line.row").alias("_row"),
        *[f"x_{c}" for c in extra],
    )

    # the output columns and types, from one line on the driver
    probe = pd.DataFrame(
        {"customer_id": ["c"], "order_id": ["o"], "ts": [cutoff - 86_400 * 10**9]}
        | {"q": [1.0], "a": [1.0], "_file": [""], "_row": [0]}
        | {f"x_{c}": ["x"] for c in extra}
    )
    kinds = {"int64": T.LongType(), "float64": T.DoubleType()}
    cols = _local_features(probe, cut, settings, extra)

    def local(pdf: pd.DataFrame) -> pd.DataFrame:
        if not (pdf["q"] > 0).any():  # only returns: no buyer here (the local functions raise)
            return cols.iloc[:0]
        return _local_features(pdf.drop(columns="_group"), cut, settings, extra)

    fields = [T.StructField("customer_id", lines.schema["customer_id"].dataType, True)]
    fields += [
        T.StructField(c, kinds.get(str(cols[c].dtype), T.StringType()), True)
        for c in cols.columns[1:]
    ]
    return past.groupBy("_group").applyInPandas(local, T.StructType(fields))


def _bgnbd_predictions(summary: DataFrame, window_days: int) -> tuple[pd.DataFrame, str | None]:
    """The BG/NBD columns of :func:`crmkit.models.churn.churn_features` for each weekly
    ``(frequency, recency, T)`` pattern: a :class:`~crmkit.models.clv.BetaGeo` fitted on the
    driver on :func:`~crmkit.spark.clv.weighted_patterns` (identical to the local fit on the
    whole summary) and its predictions for every pattern. When the fit fails or any output is
    not finite (the local rule, over all customers = over all patterns), the columns are NaN
    and the second value is the local note."""
    from crmkit.models.churn import _bgnbd_columns
    from crmkit.models.clv import BetaGeo

    cols = _bgnbd_columns(window_days)
    patterns = weighted_patterns(summary, _PATTERN)
    out = patterns[_PATTERN].copy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = BetaGeo().fit(patterns[_PATTERN], weights=patterns["weight"])
            h = window_days / 7.0
            frame = patterns[_PATTERN]
            out[cols[0]] = model.conditional_probability_alive(frame).to_numpy()
            out[cols[1]] = model.conditional_expected_number_of_purchases_up_to_time(
                h, frame
            ).to_numpy()
            out[cols[2]] = 1.0 - model.probability_of_purchases_in_window(frame, 0.0, h).to_numpy()
        bad = ~np.isfinite(out[list(cols)].to_numpy(dtype=np.float64))
        if bad.any():
            raise ValueError(f"{int(bad.sum())} non-finite BG/NBD outputs")
    except Exception as exc:  # the features degrade to NaN, as locally
        for c in cols:
            out[c] = np.nan
        first = str(exc).splitlines()[0] if str(exc) else ""
        return out, f"{type(exc).__name__}: {first}"
    return out, None


def churn_features(
    lines: DataFrame,
    when: object,
    churn: Any,
    *,
    notes: list[str] | None = None,
    groups: int | None = None,
    persist: bool = False,
) -> DataFrame:
    """``customer_id`` and the churn features of every customer with a purchase on or before
    ``when``: the columns of :func:`crmkit.models.churn.churn_features` with ``churn``'s
    settings (a :class:`~crmkit.pipelines.churn.ChurnScorer`), in the same order, under the
    same definitions.

    * the behavioural features and ``monetary_value``, per customer, by the local functions
      on groups of whole customers (see :func:`_behaviour`; identical, bit for bit);
    * ``active_span_days = tenure_days - recency_days``, ``orders_per_month = n_orders /
      max(tenure_days / (365.25 / 12), 1)``;
    * ``r_score, f_score, m_score, rfm_score``: quintiles of ``recency_days`` (worst = most
      days first), ``n_orders`` and ``total_spend``, ranked over all these customers with
      :func:`crmkit.spark.features._with_quintile` (ties by customer id), as
      :func:`crmkit.features.segments.score_rfm`;
    * with ``churn.bgnbd_features``: ``bg_p_alive, bg_expected_purchases_{H}d,
      bg_p_no_purchase_{H}d`` of a BG/NBD fitted on the driver on the unique weekly
      ``(frequency, recency, T)`` patterns with their weights (one Spark query;
      :func:`_bgnbd_predictions`), identical to the local fit, predicted there for each
      pattern and joined to the customers by pattern (a broadcast of the small pattern
      table). A failed fit gives NaN and the local note, appended to ``notes``;
    * ``window_q4_share`` (a constant of the date and window).

    ``groups``: number of customer groups of the local computation (default
    ``spark.sql.shuffle.partitions``); each group's lines are one pandas frame in a Python
    worker. ``persist``: keep the per-customer behaviour table (``MEMORY_AND_DISK``) for
    the pattern query and later ones.
    """
    from crmkit.models.churn import _bgnbd_columns, _check_window, _cutoff_day, _q4_share

    _check_churn_columns(lines, churn, when)
    window = _check_window(churn.window_days)
    cut = _cutoff_day(when, "as_of")
    b = _behaviour(lines, cut, churn, groups)
    if persist:
        b = b.persist(StorageLevel.MEMORY_AND_DISK)
    behaviour = [c for c in b.columns[1:] if c != "monetary_value" and c not in _WEEKLY.values()]
    tenure = F.col("tenure_days").cast("double")
    t = b.select(
        "customer_id",
        *behaviour,
        (F.col("tenure_days") - F.col("recency_days")).alias("active_span_days"),
        (
            F.col("n_orders").cast("double") / F.greatest(tenure / F.lit(365.25 / 12.0), F.lit(1.0))
        ).alias("orders_per_month"),
        "monetary_value",
        *_WEEKLY.values(),
    )
    t = _with_quintile(t, "r_score", [F.col("recency_days").cast("double").desc()])
    t = _with_quintile(t, "f_score", [F.col("n_orders").cast("double").asc()])
    t = _with_quintile(t, "m_score", [F.col("total_spend").asc()])
    scores = [F.col(c).cast("long") for c in ("r_score", "f_score", "m_score")]
    t = t.select(
        "customer_id",
        *behaviour,
        "active_span_days",
        "orders_per_month",
        "monetary_value",
        scores[0].alias("r_score"),
        scores[1].alias("f_score"),
        scores[2].alias("m_score"),
        (scores[0] + scores[1] + scores[2]).alias("rfm_score"),
        *[F.col(v).alias(k) for k, v in _WEEKLY.items()],
    )
    last = t.columns[: -len(_WEEKLY)]
    if churn.bgnbd_features:
        preds, failed = _bgnbd_predictions(t.select("customer_id", *_PATTERN), window)
        if failed is not None and notes is not None:
            notes.append(f"BG/NBD features at {cut.date()} are missing: {failed}")
        schema = T.StructType([T.StructField(c, T.DoubleType(), True) for c in preds.columns])
        table = lines.sparkSession.createDataFrame(preds, schema)
        t = t.join(F.broadcast(table), _PATTERN, "left")
        last += list(_bgnbd_columns(window))
    return t.select(*last).withColumn("window_q4_share", F.lit(_q4_share(cut, window)))


# --------------------------------------------------------------------------------------------
# churn scores


def _selected(churn: Any) -> Column:
    """The scored-customer rule of :func:`crmkit.models.churn.select_customers` (whose checks
    of the rule's settings run first, on an empty frame)."""
    from crmkit.models.churn import select_customers

    empty = pd.DataFrame({"n_orders": np.zeros(0, np.int64), "recency_days": np.zeros(0, np.int64)})
    select_customers(
        empty, min_orders=churn.min_orders, active_within_days=churn.active_within_days
    )
    keep = F.col("n_orders") >= F.lit(churn.min_orders)
    if churn.active_within_days is not None:
        keep = keep & (F.col("recency_days") <= F.lit(churn.active_within_days))
    return keep


def churn_scores(
    lines: DataFrame,
    when: object,
    churn: Any,
    *,
    features: DataFrame | None = None,
    notes: list[str] | None = None,
    persist: bool = False,
) -> DataFrame:
    """``customer_id, churn_probability, churn_risk_band, churn_reasons`` of the customers
    matching ``churn``'s scored-customer rule at ``when``, as
    :meth:`crmkit.pipelines.churn.ChurnScorer.score`.

    The features are :func:`churn_features` (or ``features``, its output for these lines and
    date; ``notes`` and ``persist`` are passed to it). Each batch of the selected customers is
    scored in ``mapInPandas`` by the scorer's own model: ``model.predict_proba`` (calibrated
    P(churn)), ``model.top_reasons`` joined by ``"; "`` (empty without reasons) and the risk
    band of the local ``_risk_band`` (``low`` / ``medium`` / ``high``, a string here). The
    categorical features (``country``, ``channel``, strings in Spark) are mapped back to the
    model's category values before the model encodes them, so they get the local codes.
    Every output is a function of the customer's own feature row, so batches do not matter.

    Raises
    ------
    DataContractError
        Missing columns (as locally), bad rule settings, no purchase before ``when``, or no
        customer matching the rule (checked by one Spark query).
    """
    from crmkit.models.churn import _cutoff_day
    from crmkit.pipelines.churn import _risk_band

    _check_churn_columns(lines, churn, when)
    cut = _cutoff_day(when, "as_of")
    keep = _selected(churn)
    f = features
    if f is None:
        f = churn_features(lines, cut, churn, notes=notes, persist=persist)
    if not f.where(keep).select("customer_id").limit(1).collect():
        raise DataContractError(
            f"no customer matches the scored-customer rule at {cut.date()}", rule="empty_window"
        )
    model, k, thresholds = churn.model, churn.top_reasons, churn.risk_thresholds
    columns = [c for c in f.columns if c != "customer_id"]
    lookups = {
        c: {str(v): v for v in values} for c, values in model.categories_.items() if c in columns
    }

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if batch.empty:
                continue
            X = batch.set_index("customer_id")[columns]
            for c, lookup in lookups.items():
                X[c] = pd.Categorical(X[c].astype(object).map(lambda v, m=lookup: m.get(v, v)))
            proba = model.predict_proba(X)[:, 1]
            if k:
                reasons = model.top_reasons(X, k=k).map("; ".join).to_numpy(dtype=object)
            else:
                reasons = np.full(len(X), "", dtype=object)
            yield pd.DataFrame(
                {
                    "customer_id": batch["customer_id"].to_numpy(),
                    "churn_probability": proba,
                    "churn_risk_band": np.asarray(_risk_band(proba, thresholds), dtype=object),
                    "churn_reasons": reasons,
                }
            )

    schema = T.StructType(
        [
            T.StructField("customer_id", f.schema["customer_id"].dataType, True),
            T.StructField("churn_probability", T.DoubleType(), True),
            T.StructField("churn_risk_band", T.StringType(), True),
            T.StructField("churn_reasons", T.StringType(), True),
        ]
    )
    return f.where(keep).mapInPandas(score, schema)


# --------------------------------------------------------------------------------------------
# the customers table


def _empty_like(lines: DataFrame) -> pd.DataFrame:
    """An empty pandas frame with the kinds of columns of ``lines`` (numbers, timestamps -
    ``order_ts`` read as nanoseconds is one -, other), for the local input checks."""
    cols: dict[str, pd.Series] = {}
    for field in lines.schema.fields:
        kind = field.dataType
        if isinstance(kind, T.TimestampType | T.TimestampNTZType) or (
            field.name == "order_ts" and isinstance(kind, T.LongType)
        ):
            dtype = "datetime64[ns]"
        elif isinstance(kind, T.IntegralType):
            dtype = "int64"
        elif isinstance(kind, T.NumericType):
            dtype = "float64"
        else:
            dtype = "object"
        cols[field.name] = pd.Series(dtype=dtype)
    return pd.DataFrame(cols)


def _p_alive_notes(table: DataFrame, scorer: Any) -> list[str]:
    """The local scorer's note on missing ``p_alive`` values (:mod:`crmkit.models.p_alive`),
    counted from the customers' frequencies."""
    from crmkit.features.rfm import UNIT_DAYS
    from crmkit.models.p_alive import finds_no_dropout, model_kind

    purchase = scorer.clv_models()[0]
    unit_days = UNIT_DAYS[scorer.clv["unit"]]
    if finds_no_dropout(purchase, unit_days):
        missing = table.count()
    elif model_kind(purchase) == "bgnbd":
        missing = table.where(F.col("frequency") <= F.lit(0.0)).count()
    else:
        missing = 0
    note = scorer.p_alive_note(int(missing))
    return [note] if note else []


def customer_scores(
    lines: DataFrame,
    scorer: Any,
    when: object | None = None,
    *,
    notes: list[str] | None = None,
    persist: bool = True,
) -> DataFrame:
    """The customers table of :meth:`crmkit.pipelines.scorer.CustomerScorer.score` up to and
    including ``churn_reasons`` (:data:`SCORE_COLUMNS`), computed on Spark.

    * ``segment, r_score, f_score, m_score, frequency, recency, T, monetary_value,
      total_spend``: :func:`crmkit.spark.customer_table` with the scorer's feature settings
      and cancellation prefixes;
    * ``p_alive, expected_purchases, expected_spend, clv``: :func:`crmkit.spark.clv.clv_scores`
      from that table;
    * ``churn_probability, churn_risk_band, churn_reasons``: :func:`churn_scores` (the churn
      model's own behaviour settings); null for customers outside the scored-customer rule.
      Without a churn model: null, null and ``""``, as locally.

    ``persist`` (default on) keeps the two per-customer tables (feature table, churn
    behaviour table; ``MEMORY_AND_DISK``) for the driver's queries (CLV spend check, BG/NBD
    patterns, the churn rule check) and the output, so that the order lines are aggregated
    once for each instead of once per query; they stay cached until the caller unpersists
    them (``spark.catalog.clearCache()``) or the session ends.

    The input is checked as the local scorer checks it (``_check_input`` on the column kinds:
    the same :class:`~crmkit.errors.DataContractError` for a missing or mistyped column the
    model was trained with); its notes, the note of a failed BG/NBD fit and "no churn model"
    are appended to ``notes``.

    Parameters
    ----------
    lines
        Cleaned order lines as a Spark DataFrame (:func:`crmkit.spark.read_lines`).
    scorer
        The trained :class:`~crmkit.pipelines.scorer.CustomerScorer`.
    when
        The scoring date (default: the last day with an order line).

    Returns
    -------
    pyspark.sql.DataFrame
        Lazy, one row per customer with a purchase on or before ``when``, in no particular
        order (:func:`crmkit.spark.write_customers` writes it sorted by ``customer_id``).
    """
    from crmkit.pipelines.scorer import _check_input
    from crmkit.spark.features import default_as_of

    if not isinstance(lines, DataFrame):
        raise DataContractError(
            f"scoring input must be a Spark DataFrame of order lines, got {type(lines).__name__}",
            rule="input_type",
        )
    churn = scorer.churn
    used = tuple(churn.required_columns()) if churn is not None else ()
    said = _check_input(_empty_like(lines), scorer.input_columns, used)
    notes = notes if notes is not None else []
    notes.extend(said)
    day = pd.Timestamp(when).normalize() if when is not None else default_as_of(lines)
    prefixes = tuple(scorer.config.cleaning.cancellation_prefixes)
    table = customer_table(lines, day, scorer.config.features, cancellation_prefixes=prefixes)
    if persist:
        table = table.persist(StorageLevel.MEMORY_AND_DISK)
    out = table.select(*SCORE_COLUMNS[:10]).join(
        clv_scores(lines, scorer, day, table=table), "customer_id", "left"
    )
    notes.extend(_p_alive_notes(table, scorer))
    if churn is not None:
        scores = churn_scores(lines, day, churn, notes=notes, persist=persist)
        out = out.join(scores, "customer_id", "left")
    else:
        out = out.select(
            "*",
            F.lit(None).cast("double").alias("churn_probability"),
            F.lit(None).cast("string").alias("churn_risk_band"),
            F.lit("").alias("churn_reasons"),
        )
        notes.append("no churn model in this bundle")
    return out.select(*SCORE_COLUMNS)
