"""The ``crmkit`` command line: thin wrappers that parse arguments, call a pipeline and print
a summary. Heavy libraries are imported inside the commands so ``crmkit --help`` is fast.

Every command that writes takes ``--out DIR``; outputs are written all-or-nothing. Errors
caused by input or configuration print a clear message and exit with status 2.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from crmkit import __version__
from crmkit.errors import CrmkitError, os_error_message

app = typer.Typer(
    name="crmkit",
    help="Customer intelligence from raw e-commerce transaction logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

log = logging.getLogger("crmkit")


def _err(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)


def _info(msg: str) -> None:
    typer.echo(msg, err=True)


def _check_date(value: str | None) -> str | None:
    """Refuse a date option that is no calendar date (``2023-02-30``) or lies outside the
    years crmkit represents, before any data is read."""
    if value is None:
        return None
    import pandas as pd

    from crmkit.errors import shorten

    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise typer.BadParameter(
            f"{shorten(value)!r} is not a valid date ({exc}); give YYYY-MM-DD"
        ) from None
    if ts is pd.NaT or not 1678 <= ts.year <= 2261:
        raise typer.BadParameter(f"{shorten(value)!r} is not a date between 1678 and 2261")
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    version: Annotated[
        Optional[bool],  # noqa: UP045 - typer needs Optional here
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """crmkit: validate, featurise, model and score customers from order lines."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory (created).")]
ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--config", "-c", help="Pipeline YAML (see pipelines/train.yaml)."),
]


MapOpt = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--map", help="Column mapping 'File Header=canonical_name' (repeatable)."),
]
NamesOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Comma-separated column names for a file without a header row."),
]


PresetOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="A known shop export: shopify, woocommerce, magento, shopware, online-retail "
        "(maps its columns; --map wins). Stored with a trained model, so score needs it not."
    ),
]


def _data_overrides(
    map_: list[str] | None, names: str | None, preset: str | None = None
) -> dict[str, object]:
    return {
        "columns": _parse_map(map_) or None,
        "names": [n.strip() for n in names.split(",")] if names else None,
        "preset": preset,
    }


_QUALITY_WARNINGS: list[str] = []


def _defer_warnings(report) -> None:  # noqa: ANN001
    """Keep the data-quality warnings of ``report``: :func:`main` prints them on stderr when
    the command has succeeded, after everything else it printed."""
    _QUALITY_WARNINGS.extend(getattr(report, "warnings", None) or [])


def _print_warnings() -> None:
    for w in _QUALITY_WARNINGS:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    _QUALITY_WARNINGS.clear()


def _parse_map(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise CrmkitError(f"--map takes 'File Header=canonical_name', got {item!r}")
        k, v = item.rsplit("=", 1)
        out[k.strip()] = v.strip()
    return out


@app.command()
def simulate(
    out: OutOpt,
    customers: Annotated[
        Optional[int], typer.Option(help="Number of customers.")  # noqa: UP045
    ] = None,
    lines: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Approximate number of order lines (sets --customers)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
) -> None:
    """Generate order lines from a known process, with the ground truth.

    BG/NBD purchasing, Gamma-Gamma spend, planted product affinities, dirty rows.
    Writes OUT/lines.parquet (or lines.csv), OUT/truth.json, OUT/truth_customers.parquet,
    OUT/truth_products.parquet and OUT/truth_rules.parquet.
    """
    from crmkit.data.io import staged_output, write_parquet
    from crmkit.data.simulate import customers_for_lines, simulate_transactions

    if fmt not in {"parquet", "csv"}:
        raise CrmkitError(f"--format must be parquet or csv, got {fmt!r}")
    if customers is not None and lines is not None:
        raise CrmkitError("give --customers or --lines, not both")
    n = customers if customers is not None else customers_for_lines(lines) if lines else 5000
    t0 = time.perf_counter()
    _info(f"simulating {n:,} customers (seed {seed}) ...")
    res = simulate_transactions(n_customers=n, seed=seed)
    _write_simulation(res, out, fmt, staged_output, write_parquet)
    _info(
        f"wrote {len(res.lines):,} order lines for {n:,} customers to {out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )


def _write_simulation(res, out, fmt, staged_output, write_parquet) -> Path:  # noqa: ANN001
    import json

    from crmkit.data.output import write_csv

    with staged_output(out) as stage:
        if fmt == "csv":
            write_csv(res.lines, stage / "lines.csv", date_format="%Y-%m-%d %H:%M:%S")
        else:
            write_parquet(res.lines, stage / "lines.parquet")
        (stage / "truth.json").write_text(
            json.dumps(res.truth.to_json_dict(), indent=2, default=str) + "\n", encoding="utf-8"
        )
        write_parquet(res.truth.customers, stage / "truth_customers.parquet")
        write_parquet(res.truth.products, stage / "truth_products.parquet")
        write_parquet(res.truth.rules, stage / "truth_rules.parquet")
    return Path(out) / ("lines.csv" if fmt == "csv" else "lines.parquet")


@app.command()
def validate(
    data: Annotated[
        Path, typer.Argument(help="Transaction file: CSV/TSV/TXT(.gz), Parquet, Excel.")
    ],
    out: OutOpt,
    config: ConfigOpt = None,
    map_: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--map", help="Column mapping 'File Header=canonical_name' (repeatable)."),
    ] = None,
    date_format: Annotated[
        Optional[str], typer.Option(help="strptime format of the timestamp column.")  # noqa: UP045
    ] = None,
    encoding: Annotated[
        Optional[str], typer.Option(help="Text encoding (detected when not given).")  # noqa: UP045
    ] = None,
    delimiter: Annotated[
        Optional[str], typer.Option(help="Field delimiter (detected when not given).")  # noqa: UP045
    ] = None,
    sheet: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Excel sheet name or index (0 is the first; default: the first holding data)."
        ),
    ] = None,
    names: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Comma-separated column names for a file without a header row."),
    ] = None,
    preset: PresetOpt = None,
    as_of: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Analysis date: lines after it are dropped (and counted).", callback=_check_date
        ),
    ] = None,
    returns: Annotated[
        Optional[str], typer.Option(help="drop (default) or net: returns reduce spend.")  # noqa: UP045
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="local, or spark: DATA may then be a Parquet or CSV file or directory, and "
            "OUT/lines.parquet is a Parquet data set (docs/spark.md)."
        ),
    ] = "local",
) -> None:
    """Check a transaction file against the data contract and clean it.

    Writes OUT/lines.parquet (canonical columns) and OUT/quality_report.json.
    Prints the data-quality report. On any error OUT receives no output.
    """
    if engine not in ("local", "spark"):
        raise typer.BadParameter(f"must be local or spark, got {engine!r}", param_hint="--engine")
    from crmkit.pipelines.config import load_config
    from crmkit.pipelines.validate import LINES_FILE, REPORT_FILE, run_validate

    if engine == "spark":
        from crmkit.spark.clean import run_validate  # noqa: F811 - same contract, on Spark

    cfg = load_config(
        config,
        overrides={
            "data": {
                "columns": _parse_map(map_) or None,
                "date_format": date_format,
                "encoding": encoding,
                "delimiter": delimiter,
                "sheet": sheet,
                "names": [n.strip() for n in names.split(",")] if names else None,
                "preset": preset,
            },
            "cleaning": {"as_of": as_of, "returns": returns},
        },
    )
    t0 = time.perf_counter()
    _info(f"validating {data} ...")
    result = run_validate(data, out, cfg)
    _defer_warnings(result.report)
    typer.echo(result.report.render())
    _info(f"wrote {out / LINES_FILE} and {out / REPORT_FILE} in {time.perf_counter() - t0:.1f} s")


@app.command()
def features(
    data: Annotated[Path, typer.Argument(help="Transaction file (raw or validated lines).")],
    out: OutOpt,
    as_of: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Analysis date (default: the last day with data).", callback=_check_date),
    ] = None,
    unit: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Time unit of recency/T: D, W (days/7) or M (days/30.4375)."),
    ] = None,
    map_: MapOpt = None,
    names: NamesOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    engine: Annotated[
        str,
        typer.Option(
            help="local, or spark: DATA is then cleaned lines (a Parquet file or directory, "
            "e.g. validate's lines.parquet) and OUT gets customers.parquet (a Parquet data set) "
            "and segments.csv only (docs/spark.md)."
        ),
    ] = "local",
) -> None:
    """Customer features at an analysis date: RFM summary, scores, segment, behaviour.

    Loads and cleans DATA (as `validate` does), then writes OUT/customers.parquet (one row
    per customer), OUT/kpis.json (retention KPIs and the segment table), OUT/cohorts.parquet,
    OUT/segments.csv and the plots cohort_heatmap.png and segment_sizes.png. Prints the
    segment table.
    """
    if engine not in ("local", "spark"):
        raise typer.BadParameter(f"must be local or spark, got {engine!r}", param_hint="--engine")
    from crmkit.pipelines.config import load_config
    from crmkit.pipelines.features import render_segments, run_features
    from crmkit.pipelines.validate import load_and_clean

    cfg = load_config(
        config,
        overrides={"features": {"unit": unit}, "data": _data_overrides(map_, names, preset)},
    )
    t0 = time.perf_counter()
    if engine == "spark":
        from crmkit.spark.pipeline import run_features as run_spark_features

        _info(f"computing customer features of the cleaned lines {data} with Spark")
        sres = run_spark_features(
            data,
            out,
            cfg.features,
            as_of,
            cancellation_prefixes=tuple(cfg.cleaning.cancellation_prefixes),
        )
        typer.echo(f"Segments at {sres.as_of.date()} ({sres.n_customers:,} customers):")
        typer.echo(render_segments(sres.segments))
        _info(f"wrote {out}/customers.parquet and segments.csv in {time.perf_counter() - t0:.1f} s")
        return
    _info(f"[1/2] loading and cleaning {data}")
    cleaned = load_and_clean(data, cfg)
    _defer_warnings(cleaned.report)
    _info(f"      {len(cleaned.lines):,} clean order lines")
    _info("[2/2] computing customer features")
    res = run_features(
        cleaned.lines,
        out,
        cfg.features,
        as_of,
        cancellation_prefixes=tuple(cfg.cleaning.cancellation_prefixes),
    )
    typer.echo(f"Segments at {res.as_of.date()} ({len(res.customers):,} customers):")
    typer.echo(render_segments(res.segments))
    _info(
        f"wrote {out}/customers.parquet, kpis.json, cohorts.parquet and plots "
        f"in {time.perf_counter() - t0:.1f} s"
    )


def _load_clean(data: Path, cfg):  # noqa: ANN001, ANN202
    from crmkit.pipelines.validate import load_and_clean

    _info(f"loading and cleaning {data}")
    cleaned = load_and_clean(data, cfg)
    _defer_warnings(cleaned.report)
    _info(f"      {len(cleaned.lines):,} clean order lines")
    return cleaned


TrackingOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns)."),
]
ProjectOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="The shop's project name: one registered model crmkit-PROJECT and one champion "
        "per shop (registry.project)."
    ),
]
AsOfOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Analysis date (default: the last day with data).", callback=_check_date),
]
HoldoutOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Evaluate on the data after --as-of up to this date.", callback=_check_date),
]


@app.command()
def clv(
    data: Annotated[Path, typer.Argument(help="Transaction file (raw or validated lines).")],
    out: OutOpt,
    as_of: AsOfOpt = None,
    unit: Annotated[
        Optional[str], typer.Option(help="Model time unit: D, W (days/7) or M.")  # noqa: UP045
    ] = None,
    holdout_end: HoldoutOpt = None,
    horizon: Annotated[
        Optional[int], typer.Option(help="CLV horizon in periods (months).")  # noqa: UP045
    ] = None,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="bgnbd, mbgnbd, pareto_nbd or auto (backtest champion)."),
    ] = None,
    map_: MapOpt = None,
    names: NamesOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Probabilistic CLV: BG/NBD (or MBG/NBD, Pareto/NBD) and Gamma-Gamma.

    Writes OUT/params.json, OUT/customers.parquet (p_alive, expected purchases, next purchase
    date, expected spend, CLV and intervals), the P(alive) plot and, with --holdout-end,
    OUT/holdout_metrics.json and the validation plots.
    """
    from crmkit.pipelines.clv import run_clv
    from crmkit.pipelines.config import load_config
    from crmkit.pipelines.features import default_as_of

    cfg = load_config(
        config,
        overrides={
            "clv": {"unit": unit, "horizon_periods": horizon, "model": model},
            "data": _data_overrides(map_, names, preset),
        },
    )
    t0 = time.perf_counter()
    lines = _load_clean(data, cfg).lines
    when = as_of or str(default_as_of(lines).date())
    _info(f"fitting CLV models at {when}")
    res = run_clv(lines, when, out, cfg.clv, holdout_end=holdout_end)
    p = res.params
    typer.echo(f"CLV at {when}: model {res.model_name}, {len(res.customers):,} customers")
    for name in (res.model_name, "gamma_gamma"):
        if name in p and isinstance(p[name], dict):
            vals = {k: v for k, v in p[name].items() if isinstance(v, int | float)}
            typer.echo(f"  {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in vals.items()))
    for w in p.get("warnings", []):
        typer.secho(f"  warning: {w}", fg=typer.colors.YELLOW)
    _info(f"wrote {out}/params.json, customers.parquet in {time.perf_counter() - t0:.1f} s")


@app.command()
def basket(
    data: Annotated[Path, typer.Argument(help="Order lines, or a basket file (--baskets).")],
    out: OutOpt,
    min_support: Annotated[Optional[float], typer.Option(help="Minimum support.")] = None,  # noqa: UP045
    min_confidence: Annotated[
        Optional[float], typer.Option(help="Minimum confidence.")  # noqa: UP045
    ] = None,
    level: Annotated[
        Optional[str], typer.Option(help="product or category.")  # noqa: UP045
    ] = None,
    baskets: Annotated[
        bool, typer.Option("--baskets", help="DATA holds one basket per line (Groceries).")
    ] = False,
    map_: MapOpt = None,
    names: NamesOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Frequent itemsets and association rules (arules conventions).

    Writes OUT/itemsets.parquet, OUT/rules.parquet, OUT/summary.json and OUT/rules.png.
    """
    from crmkit.data.io import load_baskets
    from crmkit.pipelines.basket import run_basket
    from crmkit.pipelines.config import load_config

    cfg = load_config(
        config,
        overrides={
            "basket": {
                "min_support": min_support,
                "min_confidence": min_confidence,
                "level": level,
            },
            "data": _data_overrides(map_, names, preset),
        },
    )
    t0 = time.perf_counter()
    source = load_baskets(data) if baskets else _load_clean(data, cfg).lines
    res = run_basket(source, out, cfg.basket)
    s = res.summary
    typer.echo(
        f"{s.get('n_baskets', 0):,} baskets, {s.get('n_items', 0):,} items: "
        f"{s.get('n_itemsets', 0):,} frequent itemsets, {s.get('n_rules', 0):,} rules"
    )
    for m in res.messages:
        typer.secho(f"  note: {m}", fg=typer.colors.YELLOW)
    _info(f"wrote {out}/rules.parquet and itemsets.parquet in {time.perf_counter() - t0:.1f} s")


@app.command()
def recommend(
    data: Annotated[Path, typer.Argument(help="Transaction file (raw or validated lines).")],
    out: OutOpt,
    as_of: AsOfOpt = None,
    top_n: Annotated[Optional[int], typer.Option(help="Products per customer.")] = None,  # noqa: UP045
    holdout_end: HoldoutOpt = None,
    map_: MapOpt = None,
    names: NamesOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ranked cross-sell / up-sell / re-sell / reactivation lists per customer.

    Writes OUT/recommendations.parquet and, with --holdout-end, OUT/metrics.json (precision,
    recall, hit rate and revenue captured at N, against the popularity and own-items
    baselines).
    """
    from crmkit.pipelines.basket import run_recommend
    from crmkit.pipelines.config import load_config
    from crmkit.pipelines.features import default_as_of

    cfg = load_config(
        config,
        overrides={
            "recommend": {"top_n": top_n},
            "data": _data_overrides(map_, names, preset),
        },
    )
    t0 = time.perf_counter()
    lines = _load_clean(data, cfg).lines
    when = as_of or str(default_as_of(lines).date())
    res = run_recommend(lines, when, out, cfg.recommend, holdout_end=holdout_end)
    recs = res.recommendations
    typer.echo(
        f"{len(recs):,} recommendations for {recs['customer_id'].nunique():,} customers at {when}"
    )
    if res.metrics:
        typer.echo(json.dumps(res.metrics.get("lists", res.metrics), indent=2, default=str)[:2000])
    for m in res.messages:
        typer.secho(f"  note: {m}", fg=typer.colors.YELLOW)
    _info(f"wrote {out}/recommendations.parquet in {time.perf_counter() - t0:.1f} s")


AsOfOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--as-of",
        help="Analysis date YYYY-MM-DD (default: the last day of the data).",
        callback=_check_date,
    ),
]


@app.command()
def churn(
    data: Annotated[Path, typer.Argument(help="Transaction file.")],
    out: OutOpt,
    as_of: AsOfOpt = None,
    window_days: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--window-days", help="Churn window H in days (default 90)."),
    ] = None,
    config: ConfigOpt = None,
    map_: MapOpt = None,
    names: NamesOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Train and evaluate the LightGBM churn model at --as-of and score its customers.

    Features at a cutoff use only data up to it; its label is "no purchase in the next
    --window-days days". Training and validation cutoffs are earlier ones whose label
    windows end by --as-of. When the data cover the window after --as-of, the model and the
    baselines (recency rule, RFM score, BG/NBD) are evaluated there; otherwise customers are
    scored and metrics.json says why there are no test metrics. Writes OUT/metrics.json,
    OUT/customers.parquet (churn_probability, risk_band, top_reasons) and the plots.
    """
    from crmkit.pipelines.churn import run_churn
    from crmkit.pipelines.config import load_config
    from crmkit.pipelines.features import default_as_of

    cfg = load_config(
        config,
        overrides={
            "churn": {"window_days": window_days},
            "data": _data_overrides(map_, names, preset),
        },
    )
    t0 = time.perf_counter()
    lines = _load_clean(data, cfg).lines
    when = as_of or str(default_as_of(lines).date())
    res = run_churn(
        lines,
        when,
        out,
        cfg.churn,
        progress=_info,
        cancellation_prefixes=tuple(cfg.cleaning.cancellation_prefixes),
    )
    m = res.metrics
    if m.get("metrics"):
        typer.echo(f"test cutoff {when} (window {cfg.churn.window_days} days):")
        typer.echo(_render_churn_metrics(m["metrics"].get("test") or m["metrics"]))
    else:
        typer.echo(f"no test metrics at {when}: {m.get('reason')}")
    bands = res.customers["risk_band"].value_counts()
    typer.echo("risk bands: " + ", ".join(f"{k} {int(v):,}" for k, v in bands.items()))
    _info(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")


def _render_churn_metrics(block: dict) -> str:  # type: ignore[type-arg]
    cols = ("roc_auc", "pr_auc", "brier", "log_loss", "top_decile_lift")
    rows = [f"  {'model':<22}" + "".join(f"{c:>16}" for c in cols)]
    for name, vals in block.items():
        if isinstance(vals, dict) and "roc_auc" in vals:
            rows.append(
                f"  {name:<22}"
                + "".join(
                    f"{vals.get(c):>16.4f}" if isinstance(vals.get(c), float | int) else f"{'':>16}"
                    for c in cols
                )
            )
    return "\n".join(rows)


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Transaction file.")],
    config: ConfigOpt = None,
    as_of: AsOfOpt = None,
    map_: MapOpt = None,
    names: NamesOpt = None,
    preset: PresetOpt = None,
    tracking_uri: TrackingOpt = None,
    project: ProjectOpt = None,
    engine: Annotated[
        str,
        typer.Option(
            help="local, or spark: DATA is then cleaned lines (a Parquet file or directory, "
            "e.g. validate's lines.parquet); CLV is fitted on every customer, churn, basket "
            "and gate on a stratified sample (spark: in the config, docs/spark.md)."
        ),
    ] = "local",
) -> None:
    """Train everything and register the customer-scorer model.

    One MLflow parent run with nested runs validate, features, clv, churn and basket; the
    bundled pyfunc model is registered (registry.model_name) and gets the champion alias
    only if its gate metrics are no worse than the current champion's.
    """
    if engine not in ("local", "spark"):
        raise typer.BadParameter(f"must be local or spark, got {engine!r}", param_hint="--engine")
    from crmkit.pipelines.config import load_config

    if engine == "spark":
        from crmkit.spark.train import run_train
    else:
        from crmkit.pipelines.train import run_train

    cfg = load_config(
        config,
        overrides={"data": _data_overrides(map_, names, preset), "registry": {"project": project}},
    )
    t0 = time.perf_counter()
    res = run_train(data, cfg, as_of=as_of, tracking_uri=tracking_uri, progress=_info)
    _defer_warnings(getattr(res, "quality", None))
    _print_train(res)
    _info(f"done in {time.perf_counter() - t0:.1f} s")


def _print_train(res) -> None:  # noqa: ANN001
    g = res.gate
    typer.echo(f"training run {res.run_id} (experiment {res.experiment_id}) at {res.as_of.date()}")
    typer.echo(f"model {res.model_name} version {res.model_version}")
    typer.echo("gate metrics (higher is better):")
    rows = g.get("comparison") or [
        {"metric": k, "challenger": v, "champion": None} for k, v in g["challenger_metrics"].items()
    ]
    for r in rows:
        ch = r.get("champion")
        typer.echo(f"  {r['metric']:<24} new {_fmt(r.get('challenger'))}   champion {_fmt(ch)}")
    typer.echo(f"gate: {g.get('decision')}")
    for n in res.notes[:10]:
        typer.secho(f"  note: {n}", fg=typer.colors.YELLOW)


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float | int) else "-"


@app.command()
def score(
    data: Annotated[Path, typer.Argument(help="Transaction file.")],
    out: OutOpt,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Model URI (default models:/crmkit-customer-scorer@champion)."),
    ] = None,
    as_of: AsOfOpt = None,
    fmt: Annotated[
        Optional[str], typer.Option("--format", help="parquet (default) or csv.")  # noqa: UP045
    ] = None,
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", "-c", help="Score YAML (see pipelines/score.yaml)."),
    ] = None,
    map_: MapOpt = None,
    names: NamesOpt = None,
    preset: PresetOpt = None,
    tracking_uri: TrackingOpt = None,
    project: ProjectOpt = None,
    engine: Annotated[
        str,
        typer.Option(
            help="local, or spark: DATA is then cleaned lines (a Parquet file or directory) "
            "and the tables are written as Parquet data sets (docs/spark.md)."
        ),
    ] = "local",
    trust_model_dir: Annotated[
        bool,
        typer.Option(
            "--trust-model-dir",
            help="Allow --model to be a local folder (or another non-registry URI): loading "
            "it runs the Python code inside it. Its sha256 is printed and logged.",
        ),
    ] = False,
) -> None:
    """Score every customer with the registered model (the batch-scoring entry point).

    Writes OUT/customers.parquet (segment, RFM scores, P(alive), expected purchases, CLV,
    churn probability, risk band, reasons, next_best_action), OUT/recommendations.parquet,
    OUT/audiences/<action>.parquet, OUT/summary.json and OUT/quality_report.json, all or
    nothing: a failed or interrupted run leaves the previous outputs untouched.
    """
    from crmkit.pipelines.config import load_score_config
    from crmkit.pipelines.score import run_score
    from crmkit.tracking import configure

    if engine not in ("local", "spark"):
        raise typer.BadParameter(f"must be local or spark, got {engine!r}", param_hint="--engine")
    cfg = load_score_config(config, overrides={"data": _data_overrides(map_, names, preset)})
    if project is not None and model is None:  # the project's champion
        from crmkit.pipelines.config import load_config

        reg = load_config(None, overrides={"registry": {"project": project}}).registry
        model = f"models:/{reg.model_name}@{reg.alias}"
    t0 = time.perf_counter()
    configure(tracking_uri, cfg.score.experiment)
    options = dict(
        model_uri=model,
        as_of=as_of,
        config=cfg,
        fmt=fmt,
        progress=_info,
        trust_model_dir=trust_model_dir,
    )
    if engine == "spark":
        from crmkit.spark.pipeline import run_score as run_spark_score

        sres = run_spark_score(data, out, **options)
        s = sres.summary
        typer.echo(
            f"scored {s['customers']:,} customers at {s['as_of']} with {sres.model['uri']} "
            f"(version {sres.model['version']}) on Spark"
        )
        typer.echo("segments: " + ", ".join(f"{k} {v:,}" for k, v in s["segments"].items()))
        typer.echo(
            f"CLV total {s['clv_total']:,.2f} (mean {s['clv_mean']:,.2f}); "
            f"high churn risk {s['churn_high_risk']:,}; recommendations {s['recommendations']:,}"
        )
        typer.echo(
            "next best action: " + ", ".join(f"{k} {v:,}" for k, v in s["next_best_action"].items())
        )
        for n in sres.notes:
            typer.secho(f"  note: {n}", fg=typer.colors.YELLOW)
        _info(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")
        return
    res = run_score(data, out, **options)
    _defer_warnings(res.quality)
    _print_score(res)
    _info(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")


def _print_score(res) -> None:  # noqa: ANN001
    s = res.output.summary()
    c = res.output.customers
    typer.echo(
        f"scored {s['customers']:,} customers at {s['as_of']} with {res.model['uri']} "
        f"(version {res.model['version']})"
    )
    typer.echo(f"  {'segment':<16} {'customers':>9} {'share':>7} {'mean CLV':>10} {'P(alive)':>9}")
    g = c.groupby("segment", observed=True).agg(
        n=("customer_id", "size"), clv=("clv", "mean"), p=("p_alive", "mean")
    )
    for name, r in g.sort_values("n", ascending=False).iterrows():
        typer.echo(
            f"  {name!s:<16} {int(r['n']):>9,} {r['n'] / max(len(c), 1):>7.1%} "
            f"{r['clv']:>10,.2f} {'-' if r['p'] != r['p'] else format(r['p'], '.3f'):>9}"
        )
    typer.echo(
        f"CLV total {s['clv_total']:,.2f} (mean {s['clv_mean']:,.2f}); "
        f"high churn risk {s['churn_high_risk']:,}; recommendations {s['recommendations']:,}"
    )
    typer.echo(
        "next best action: " + ", ".join(f"{k} {v:,}" for k, v in s["next_best_action"].items())
    )
    for n in res.output.notes:
        typer.secho(f"  note: {n}", fg=typer.colors.YELLOW)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("out/demo"),
    customers: Annotated[int, typer.Option(help="Customers in the sample.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed of the sample.")] = 0,
) -> None:
    """The main job end to end on the embedded sample data: train, then score.

    Generates the sample (seeded simulator, CSV as a shop would export it), runs
    `crmkit train` on it (tracked in ./mlruns, model registered) and `crmkit score` with the
    champion, and prints where the outputs are and how to open the MLflow UI.
    """
    from crmkit.data.io import staged_output, write_parquet
    from crmkit.data.simulate import simulate_transactions
    from crmkit.pipelines.config import load_config
    from crmkit.pipelines.features import render_segments
    from crmkit.pipelines.score import run_score
    from crmkit.pipelines.train import run_train
    from crmkit.tracking import configure, default_tracking_uri

    t0 = time.perf_counter()
    _info(f"[1/3] generating the sample: {customers:,} customers, seed {seed}")
    # A shop that keeps acquiring customers until shortly before the analysis date.
    res = simulate_transactions(n_customers=customers, seed=seed, acquisition_weeks=75)
    sample = _write_simulation(res, out / "sample", "csv", staged_output, write_parquet)
    _info(f"      {len(res.lines):,} order lines -> {sample}")
    cfg_path = Path("pipelines/train.yaml")
    cfg = load_config(cfg_path if cfg_path.is_file() else None)
    as_of = str(res.truth.params.cutoff)
    _info(f"[2/3] crmkit train {sample} --as-of {as_of}")
    tr = run_train(sample, cfg, as_of=as_of, progress=_info)
    typer.echo(tr.quality.render())
    typer.echo(
        f"\nSegments at {tr.as_of.date()} ({int(tr.segments['customers'].sum()):,} customers):"
    )
    typer.echo(render_segments(tr.segments))
    _print_train(tr)
    _info(f"[3/3] crmkit score {sample} --as-of {as_of} --out {out / 'scores'}")
    configure(None, cfg.registry.experiment)
    sc = run_score(
        sample,
        out / "scores",
        model_uri=f"models:/{cfg.registry.model_name}/{tr.model_version}",
        as_of=as_of,
        config=cfg,
        progress=_info,
    )
    _print_score(sc)
    uri = default_tracking_uri()
    typer.echo(f"\noutputs: {out}/scores (customers, recommendations, audiences/)")
    typer.echo(f"MLflow UI: mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)")
    _info(f"done in {time.perf_counter() - t0:.1f} s")


def main() -> None:
    """Console-script entry point."""
    from crmkit.signals import EXIT_CODE, Terminated, raise_on_sigterm

    raise_on_sigterm()  # SIGTERM unwinds like Ctrl-C: MLflow runs FAILED, outputs kept
    try:
        app()
    except SystemExit as exc:  # the end of every command run (click's standalone mode)
        if not exc.code:
            _print_warnings()
        raise
    except Terminated:
        _err("terminated (SIGTERM): open MLflow runs are marked FAILED, --out is unchanged")
        sys.exit(EXIT_CODE)
    except CrmkitError as exc:
        _err(str(exc))
        sys.exit(2)
    except OSError as exc:
        # disk full, read-only or forbidden output folder, ...: the system's reason, no
        # traceback (outputs are staged, so nothing half-written is left in --out)
        _err(os_error_message(exc))
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
