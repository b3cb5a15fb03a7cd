"""The customer scorer: every fitted component of a training run in one portable bundle, and
the scoring of new order lines with it.

A :class:`CustomerScorer` holds

- the pipeline settings (features, CLV horizon and discounting, churn risk bands, the
  recommendation and next-best-action rules, the cleaning rules applied to scoring input);
- the CLV parameters (purchase model and Gamma-Gamma) fitted at the training date;
- the churn scorer (:class:`crmkit.pipelines.churn.ChurnScorer`: LightGBM booster,
  calibration, feature settings);
- the recommender's product-level state (:meth:`crmkit.models.recommend.Recommender.save_state`);
- the input contract (the canonical columns the model was trained on).

It holds parameters and aggregates only: no customer id and no customer-level row (the
bundle is what is registered in MLflow; ``tests/pipelines/test_train_score.py`` scans it).

:meth:`CustomerScorer.score` turns cleaned order lines and an as-of date into the per-customer
table (segment, RFM scores, P(alive), expected purchases, CLV, churn probability, risk band,
reasons, next best action) and the ranked recommendation lists. Scoring refits nothing
except the per-cutoff BG/NBD features of the churn model (see ``ChurnScorer``); RFM scores by
quantile are recomputed on the scored population, as RFM scoring is defined.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crmkit.errors import DataContractError
from crmkit.models.p_alive import P_ALIVE_MEANING

__all__ = [
    "CustomerScorer",
    "ScoreOutput",
    "BUNDLE_FORMAT",
    "CUSTOMER_COLUMNS",
    "REQUIRED_INPUT",
    "CATALOGUE_INPUT",
]

#: Version of the bundle layout written by :meth:`CustomerScorer.save`.
BUNDLE_FORMAT = 1

#: Columns scoring input must have (canonical names, see :mod:`crmkit.data.schema`) when the
#: model was trained with them; a missing one is an error naming it.
REQUIRED_INPUT = ("customer_id", "order_id", "order_ts", "product_id", "quantity", "unit_price")

#: Input policy for the optional columns (``amount, category, product_name, country,
#: channel``): a column behind a feature of the churn model (``ChurnScorer.required_columns``,
#: e.g. ``category``, ``country``, ``channel`` for the distinct-category, country and channel
#: features) must be present when the model was trained with it - leaving it out would change
#: the scores, so it is an error naming the column, raised before any work. The catalogue
#: columns below may be left out: the recommender's catalogue (learned at training) holds the
#: category and name of every product it knows, so the scores and lists are unchanged (tested)
#: and a note says so; products new since training then have none. ``amount`` is derived from
#: quantity x unit_price when missing.
CATALOGUE_INPUT = ("category", "product_name")

#: Columns of ``customers.parquet``, in order.
CUSTOMER_COLUMNS = (
    "customer_id",
    "segment",
    "r_score",
    "f_score",
    "m_score",
    "frequency",
    "recency",
    "T",
    "monetary_value",
    "total_spend",
    "p_alive",
    "expected_purchases",
    "expected_spend",
    "clv",
    "churn_probability",
    "churn_risk_band",
    "churn_reasons",
    "next_best_action",
    "action_value",
    "action_product_id",
)

_NUMERIC_INPUT = ("quantity", "unit_price", "amount")

#: From this many order lines on, :meth:`CustomerScorer.score` builds the recommendation
#: lists in a second process by default.
PARALLEL_MIN_LINES = 1_000_000


def _can_fork() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()


class _RecsChild:
    """``recommender.recommend_for(...)`` in a forked process (the data are shared by
    copy-on-write, not pickled); the lists come back through a Parquet file, written a chunk
    of customers at a time (``Recommender.iter_recommend_for``)."""

    def __init__(self, recommender: Any, lines: pd.DataFrame, when: Any, scores: Any) -> None:
        import multiprocessing as mp
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="crmkit-recs-")
        self._path = os.path.join(self._dir, "recs.parquet")
        self._err = os.path.join(self._dir, "error.txt")
        ctx = mp.get_context("fork")
        self._proc = ctx.Process(
            target=_recs_child_main,
            args=(recommender, lines, when, scores, self._path, self._err),
            daemon=True,
        )
        self._proc.start()

    def result(self) -> pd.DataFrame:
        import shutil

        try:
            self._proc.join()
            if self._proc.exitcode != 0:
                msg = (
                    Path(self._err).read_text("utf-8")
                    if os.path.exists(self._err)
                    else f"exit code {self._proc.exitcode}"
                )
                raise DataContractError(
                    f"building the recommendation lists failed: {msg}", rule="recommendations"
                )
            return pd.read_parquet(self._path)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def abort(self) -> None:
        import shutil

        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()
        shutil.rmtree(self._dir, ignore_errors=True)


def _recs_child_main(
    recommender: Any, lines: pd.DataFrame, when: Any, scores: Any, path: str, err: str
) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from crmkit.models.recommend import empty_recommendations

        # streamed a chunk of customers at a time: the whole list is never held here
        writer = None
        for part in recommender.iter_recommend_for(lines, when, customer_scores=scores):
            table = pa.Table.from_pandas(part, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            del part, table
        if writer is None:
            empty_recommendations().to_parquet(path, engine="pyarrow", index=False)
        else:
            writer.close()
    except BaseException as exc:  # reported to the parent, which raises
        Path(err).write_text(f"{type(exc).__name__}: {exc}", "utf-8")
        os._exit(1)
    os._exit(0)


@dataclass
class ScoreOutput:
    """What :meth:`CustomerScorer.score` produced.

    Attributes
    ----------
    customers
        One row per customer (columns :data:`CUSTOMER_COLUMNS`).
    recommendations
        ``customer_id, rank, product_id, kind, score, reason`` (and the recommender's extra
        columns), ranked per customer.
    as_of
        The scoring date.
    notes
        Plain-words remarks (skipped parts, fallbacks).
    """

    customers: pd.DataFrame
    recommendations: pd.DataFrame
    as_of: pd.Timestamp
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Top-line figures: customers scored, segment and action sizes, total CLV."""
        c = self.customers
        return {
            "as_of": str(self.as_of.date()),
            "customers": int(len(c)),
            "segments": {str(k): int(v) for k, v in c["segment"].value_counts().items()},
            "next_best_action": {
                str(k): int(v) for k, v in c["next_best_action"].value_counts().items()
            },
            "clv_total": float(c["clv"].sum()),
            "clv_mean": float(c["clv"].mean()) if len(c) else 0.0,
            "expected_purchases_total": float(c["expected_purchases"].sum()),
            "churn_high_risk": int((c["churn_risk_band"] == "high").sum()),
            "recommendations": int(len(self.recommendations)),
            "p_alive": P_ALIVE_MEANING,
        }


def _check_input(
    lines: pd.DataFrame, trained_columns: dict[str, str], used: tuple[str, ...] = ()
) -> list[str]:
    """The scoring input has the columns and kinds of types the model was trained on (else a
    :class:`DataContractError` naming the column); returns notes on the fallbacks used for
    optional columns the model was trained with and the input lacks. ``used``: further columns
    the model's components need (the churn model's feature sources)."""
    if not isinstance(lines, pd.DataFrame):
        raise DataContractError(
            f"scoring input must be a DataFrame of order lines, got {type(lines).__name__}",
            rule="input_type",
        )
    need = [c for c in REQUIRED_INPUT if c in trained_columns]
    need += [c for c in used if c in trained_columns and c != "amount" and c not in need]
    missing = [c for c in need if c not in lines.columns]
    if missing:
        raise DataContractError(
            f"scoring input lacks the column(s) {missing} the model was trained with and "
            f"uses (it needs {need}; trained on {sorted(trained_columns)})",
            column=missing[0],
            rule="missing_column",
        )
    for col in _NUMERIC_INPUT:
        if col in lines.columns and not pd.api.types.is_numeric_dtype(lines[col]):
            raise DataContractError(
                f"column {col!r} must be numeric (the model was trained on numbers), got "
                f"{lines[col].dtype}",
                column=col,
                rule="wrong_type",
            )
    if not pd.api.types.is_datetime64_any_dtype(lines["order_ts"]):
        raise DataContractError(
            f"column 'order_ts' must hold timestamps, got {lines['order_ts'].dtype}",
            column="order_ts",
            rule="wrong_type",
        )
    absent = [
        c
        for c in CATALOGUE_INPUT
        if c in trained_columns and c not in lines.columns and c not in need
    ]
    if absent:
        return [
            f"the input has no {' / '.join(absent)} column (the model was trained with it): "
            "the model's catalogue supplies it for the products it knows; products new since "
            "training have none"
        ]
    return []


class CustomerScorer:
    """Every fitted component of a training run; scores order lines (see the module
    docstring).

    Parameters
    ----------
    config
        The pipeline settings (:class:`crmkit.pipelines.config.PipelineConfig`).
    clv
        ``{"model": name, "unit": "W", "params": {...}, "gamma_gamma": {...}}``: the fitted
        CLV parameters.
    churn
        A :class:`crmkit.pipelines.churn.ChurnScorer` (``None``: no churn scores).
    recommender
        A fitted or state-loaded :class:`crmkit.models.recommend.Recommender` (``None``: no
        recommendations).
    trained_as_of
        The training date.
    input_columns
        ``{column: dtype}`` of the cleaned training lines.
    metrics
        The gate metrics measured at training.
    """

    def __init__(
        self,
        config: Any,
        clv: dict[str, Any],
        churn: Any,
        recommender: Any,
        trained_as_of: pd.Timestamp,
        input_columns: dict[str, str],
        metrics: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.clv = clv
        self.churn = churn
        self.recommender = recommender
        self.trained_as_of = pd.Timestamp(trained_as_of)
        self.input_columns = dict(input_columns)
        self.metrics = dict(metrics or {})

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the bundle into the folder ``path`` (created): ``scorer.json``, ``churn/``,
        ``recommender/``."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": BUNDLE_FORMAT,
            "trained_as_of": str(self.trained_as_of.date()),
            "config": self.config.model_dump(mode="json"),
            "clv": self.clv,
            "input_columns": self.input_columns,
            "metrics": self.metrics,
            "churn": self.churn is not None,
            "recommender": self.recommender is not None,
        }
        (p / "scorer.json").write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
        if self.churn is not None:
            self.churn.save(p / "churn")
        if self.recommender is not None:
            self.recommender.save_state(p / "recommender")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> CustomerScorer:
        """Read a bundle written by :meth:`save`."""
        from crmkit.models.recommend import Recommender
        from crmkit.pipelines.churn import ChurnScorer
        from crmkit.pipelines.config import PipelineConfig

        p = Path(path)
        f = p / "scorer.json"
        if not f.is_file():
            raise DataContractError(
                f"{p} is not a crmkit scorer bundle (no scorer.json)", rule="model_bundle"
            )
        meta = json.loads(f.read_text("utf-8"))
        if meta.get("format") != BUNDLE_FORMAT:
            raise DataContractError(
                f"scorer bundle format {meta.get('format')!r} is not supported by this crmkit "
                f"(expects {BUNDLE_FORMAT}); retrain with `crmkit train`",
                rule="model_bundle",
            )
        return cls(
            config=PipelineConfig(**meta["config"]),
            clv=meta["clv"],
            churn=ChurnScorer.load(p / "churn") if meta["churn"] else None,
            recommender=Recommender.load_state(p / "recommender") if meta["recommender"] else None,
            trained_as_of=pd.Timestamp(meta["trained_as_of"]),
            input_columns=meta["input_columns"],
            metrics=meta.get("metrics", {}),
        )

    # -- CLV -----------------------------------------------------------------------------------
    def clv_models(self) -> tuple[Any, Any]:
        """The purchase and spend models with the stored parameters."""
        from crmkit.models.clv import GammaGamma
        from crmkit.models.clv_validation import MODELS

        cfg = self.config.clv
        purchase = MODELS[self.clv["model"]].from_params(
            self.clv["params"], penalizer=cfg.penalizer
        )
        spend = GammaGamma.from_params(self.clv["gamma_gamma"], penalizer=cfg.penalizer)
        return purchase, spend

    def clv_scores(self, lines: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
        """``p_alive, expected_purchases, expected_spend, clv`` per customer at ``as_of``;
        ``p_alive`` is missing where it is not a measurement (BG/NBD one-time buyers, a fit
        without dropout: :mod:`crmkit.models.p_alive`)."""
        from crmkit.features.rfm import UNIT_DAYS, rfm_summary
        from crmkit.models.clv_value import customer_lifetime_value
        from crmkit.models.p_alive import reported_p_alive

        cfg = self.config.clv
        purchase, spend = self.clv_models()
        summary = rfm_summary(lines, as_of, unit=self.clv["unit"])
        value = customer_lifetime_value(
            purchase,
            spend,
            summary,
            unit_days=UNIT_DAYS[self.clv["unit"]],
            horizon_periods=cfg.horizon_periods,
            period_days=cfg.period_days,
            discount_rate=cfg.discount_rate,
            margin=cfg.margin,
            n_draws=0,
        )
        p_alive = reported_p_alive(purchase, summary, UNIT_DAYS[self.clv["unit"]])
        out = pd.DataFrame({"p_alive": p_alive.to_numpy()}, index=summary.index)
        return out.join(value.customers[["expected_purchases", "expected_spend", "clv"]])

    def p_alive_note(self, missing: int) -> str | None:
        """The summary note on ``missing`` customers without ``p_alive``
        (:func:`crmkit.models.p_alive.p_alive_note`)."""
        from crmkit.features.rfm import UNIT_DAYS
        from crmkit.models.p_alive import p_alive_note

        return p_alive_note(self.clv_models()[0], missing, UNIT_DAYS[self.clv["unit"]])

    # -- scoring -------------------------------------------------------------------------------
    def score(
        self,
        lines: pd.DataFrame,
        as_of: object | None = None,
        *,
        progress: Any = None,
        parallel: bool | None = None,
    ) -> ScoreOutput:
        """Score every customer with a purchase on or before ``as_of`` (default: the last
        day of ``lines``) from cleaned order lines.

        Parameters
        ----------
        lines
            Cleaned order lines (:func:`crmkit.data.clean.clean_lines`).
        as_of
            Scoring date; only lines up to the end of that day are used.
        progress
            Optional ``callable(str)`` told about each step.
        parallel
            Build the recommendation lists in a second (forked) process while this one
            computes features and churn scores - the two longest steps, on two cores. Default:
            from :data:`PARALLEL_MIN_LINES` lines on, where fork is available. Results are
            identical either way (tested).
        """
        from crmkit.features.behaviour import behaviour_features
        from crmkit.models.actions import assign_next_best_action
        from crmkit.models.recommend import empty_recommendations
        from crmkit.pipelines.features import behaviour_settings, customer_table, default_as_of

        def say(msg: str) -> None:
            if progress is not None:
                progress(msg)

        used = tuple(self.churn.required_columns()) if self.churn is not None else ()
        notes = _check_input(lines, self.input_columns, used)
        when = pd.Timestamp(as_of).normalize() if as_of is not None else default_as_of(lines)
        first = lines["order_ts"].min()
        if len(lines) == 0 or first > when + pd.Timedelta(days=1):
            raise DataContractError(
                f"no order lines on or before the scoring date {when.date()}"
                + (f" (the data starts {first.date()})" if len(lines) else ""),
                column="order_ts",
                rule="empty_window",
            )
        prefixes = tuple(self.config.cleaning.cancellation_prefixes)
        say("CLV: P(alive), expected purchases, discounted value")
        clv = self.clv_scores(lines, when)
        if note := self.p_alive_note(int(clv["p_alive"].isna().sum())):
            notes.append(note)
        scores = clv[["p_alive", "clv"]]
        recs = empty_recommendations()
        child = None
        if self.recommender is not None:
            if parallel is None:
                parallel = len(lines) >= PARALLEL_MIN_LINES
            if parallel and _can_fork():
                say("recommendations: ranked lists per customer (in a second process)")
                child = _RecsChild(self.recommender, lines, when, scores)
            else:
                say("recommendations: ranked lists per customer")
                recs = self.recommender.recommend_for(lines, when, customer_scores=scores)
        try:
            say("features: RFM summary, scores, segments, behaviour")
            settings = behaviour_settings(self.config.features, prefixes)
            behaviour = behaviour_features(lines, when, **settings)
            table = customer_table(
                lines,
                when,
                self.config.features,
                cancellation_prefixes=prefixes,
                behaviour=behaviour,
            )
            customers = table.join(clv, how="left")
            if self.churn is not None:
                say("churn: features and LightGBM probabilities")
                shared = behaviour if self.churn.behaviour_settings() == settings else None
                churn = self.churn.score(lines, when, behaviour=shared)
                customers = customers.join(
                    churn[["churn_probability", "churn_risk_band", "churn_reasons"]], how="left"
                )
                unscored = int(customers["churn_probability"].isna().sum())
                if unscored:
                    notes.append(
                        f"{unscored:,} customers are outside the churn model's scored-customer "
                        "rule and have no churn probability"
                    )
            else:
                customers["churn_probability"] = np.nan
                customers["churn_risk_band"] = pd.NA
                customers["churn_reasons"] = ""
                notes.append("no churn model in this bundle")
            if child is not None:
                say("recommendations: waiting for the second process")
                recs = child.result()
                child = None
        finally:
            if child is not None:
                child.abort()
        customers.index.name = "customer_id"
        say("next best action")
        # a p_alive that is not a measurement is missing in the output; the actions read it
        # as 1 (alive), the purchase model's own assumption (crmkit.models.p_alive)
        acts = assign_next_best_action(
            customers.reset_index().fillna({"p_alive": 1.0}), recs, self.config.actions
        )
        acts = acts.set_index("customer_id") if "customer_id" in acts.columns else acts
        customers = customers.join(
            acts[["next_best_action", "action_value", "action_product_id"]], how="left"
        )
        if "total_spend" not in customers.columns:
            customers["total_spend"] = np.nan
        out = customers.reset_index()[list(CUSTOMER_COLUMNS)]
        return ScoreOutput(out, recs.reset_index(drop=True), when, notes)
