"""The model registry and the champion gate of ``crmkit train``: one champion per shop.

**Project.** Every shop (data source) has its own registered model, named after
``registry.project`` (``--project``): ``crmkit-<project>`` (:func:`registered_model_name`;
without a project, ``crmkit-customer-scorer``; ``registry.model_name`` overrides both). The
version is tagged with its project and a fingerprint of its data (``crmkit.project``,
``crmkit.data.source``, ``crmkit.data.products``).

**Gate** (:func:`decide`). The current holder of the alias is a *comparable* holder only
when it belongs to the same project and was trained on the same shop's data - its product
catalogue shares at least ``registry.min_catalogue_overlap`` of the smaller of the two
catalogues with the challenger's (:func:`holder_mismatch`). A holder of another project or
data source is never gated against: the new version is not promoted and the decision says
why (train it under its own ``--project``). Against a comparable holder the challenger is
promoted only when every gate metric was computed, finite, for both (a missing or NaN metric
is never taken as "no worse") and none is worse by more than ``registry.tolerance``. Without
a holder the new version is promoted, and the decision names any metric that could not be
computed. The decision is printed, logged (``registry/gate.json``) and tagged on the version
and on the training run (``crmkit.gate``).

**Portable model** (:func:`log_model`). The pyfunc model carries crmkit's own code
(``code_paths``: a copy of the package, so it loads where crmkit is not installed) and the
pinned requirements of the scorer (:func:`pip_requirements`: the installed version of every
runtime dependency of crmkit).
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "DEFAULT_MODEL_NAME",
    "registered_model_name",
    "decide",
    "holder_mismatch",
    "pip_requirements",
    "package_code",
    "log_and_register",
]

#: Registered model name without a project.
DEFAULT_MODEL_NAME = "crmkit-customer-scorer"
#: Package root (``src/``, imported as ``crmkit``).
_PACKAGE = Path(__file__).resolve().parents[1]


def registered_model_name(project: str | None, model_name: str | None = None) -> str:
    """``model_name`` when given, else ``crmkit-<project>``, else :data:`DEFAULT_MODEL_NAME`."""
    if model_name:
        return model_name
    return f"crmkit-{project}" if project else DEFAULT_MODEL_NAME


def _usable(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(float(v))


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    names: list[str],
    tolerance: float,
    *,
    holder: str = "the champion",
) -> tuple[bool, list[dict[str, Any]], str]:
    """The gate's decision: ``(promoted, rows per metric, reason)`` (module docstring).

    Parameters
    ----------
    challenger, champion
        Gate metrics (higher is better) of the new version and of the comparable holder
        (``None``: there is no holder).
    names
        The gate metrics to compare.
    tolerance
        How much worse a metric may be and still pass.
    holder
        How the reason names the holder (e.g. ``"the champion (version 3)"``).
    """
    if champion is None:
        missing = [n for n in names if not _usable(challenger.get(n))]
        why = "no current champion: the new version becomes the champion"
        if missing:
            why += f" (gate metric(s) {', '.join(missing)} could not be computed on this data)"
        return True, [], why
    rows: list[dict[str, Any]] = []
    worse: list[str] = []
    unknown: list[str] = []
    for name in names:
        a, b = challenger.get(name), champion.get(name)
        if not (_usable(a) and _usable(b)):
            sides = [
                f"{who} {'missing' if v is None else v}"
                for who, v in (("new version", a), ("champion", b))
                if not _usable(v)
            ]
            rows.append({"metric": name, "challenger": a, "champion": b, "verdict": "n/a"})
            unknown.append(f"{name} ({', '.join(sides)})")
            continue
        ok = float(a) >= float(b) - tolerance
        rows.append(
            {
                "metric": name,
                "challenger": a,
                "champion": b,
                "difference": float(a) - float(b),
                "verdict": "ok" if ok else "worse",
            }
        )
        if not ok:
            worse.append(name)
    if unknown:
        return (
            False,
            rows,
            f"gate metric(s) could not be computed: {'; '.join(unknown)} - not promoted over "
            f"{holder}: alias left as it is",
        )
    if worse:
        return False, rows, f"worse than the champion on {', '.join(worse)}: alias left as it is"
    return True, rows, "no gate metric is worse than the champion's: the new version is promoted"


def _catalogue(scorer: Any) -> pd.Index | None:
    rec = getattr(scorer, "recommender", None)
    products = getattr(rec, "products_", None)
    return None if products is None else pd.Index(products.index.astype("str"))


def holder_mismatch(
    holder: Any,
    holder_project: str | None,
    challenger: Any,
    project: str | None,
    min_overlap: float,
) -> str | None:
    """Why the alias holder is not comparable with the challenger (another project, or
    another data source: too few products in common), or ``None`` when it is comparable.
    Order-level models (no catalogue) are compared by project only."""
    if (holder_project or None) != (project or None):
        return f"it belongs to project {holder_project or '(none)'!r}, this run to {project or '(none)'!r}"
    a, b = _catalogue(holder), _catalogue(challenger)
    if a is None or b is None or not len(a) or not len(b):
        return None
    shared = len(a.intersection(b))
    share = shared / min(len(a), len(b))
    if share < min_overlap:
        return (
            f"it was trained on another data source: {shared:,} of its {len(a):,} products are "
            f"among this data's {len(b):,} ({share:.0%} < registry.min_catalogue_overlap "
            f"{min_overlap:.0%})"
        )
    return None


def pip_requirements() -> list[str]:
    """``name==version`` of every installed runtime dependency of crmkit (its
    ``Requires-Dist`` without extras): what the scorer imports, at the versions it was
    trained and tested with."""
    import re
    from importlib.metadata import PackageNotFoundError, requires, version

    names: list[str] = []
    try:
        declared = requires("crmkit") or []
    except PackageNotFoundError:  # pragma: no cover - crmkit not installed
        declared = []
    for req in declared:
        if "extra ==" in req:
            continue
        m = re.match(r"[A-Za-z0-9_.-]+", req)
        if m and m.group(0) not in names:
            names.append(m.group(0))
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # pragma: no cover
            pass
    return out


def package_code(dest: Path) -> Path:
    """A copy of crmkit's source as ``dest/crmkit`` (no caches) for ``code_paths``: MLflow
    puts its parent folder on ``sys.path`` when loading, so ``import crmkit`` finds it."""
    target = Path(dest) / "crmkit"
    shutil.copytree(_PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def log_model(
    scorer: Any,
    bundle: Path,
    signature: Any,
    example: pd.DataFrame,
    registered_name: str | None,
    tmp: Path,
) -> Any:
    """Log the pyfunc model (models from code, :mod:`crmkit.pipelines.scorer_model`) with
    crmkit's code and pinned requirements into the active run; returns MLflow's info."""
    import mlflow

    code = Path(__file__).with_name("scorer_model.py")
    with warnings.catch_warnings():
        # MLflow suggests type hints on predict; the signature is explicit instead.
        warnings.filterwarnings("ignore", message=r"(?s).*type hint.*predict")
        return mlflow.pyfunc.log_model(
            name="customer_scorer",
            python_model=str(code),
            artifacts={"bundle": str(bundle)},
            code_paths=[str(package_code(tmp))],
            signature=signature,
            input_example=example.head(200),
            registered_model_name=registered_name,
            pip_requirements=pip_requirements(),
        )


def log_and_register(
    scorer: Any,
    lines: pd.DataFrame,
    when: pd.Timestamp,
    config: Any,
    register: bool,
    say: Callable[[str], None],
    *,
    data_source: str | None = None,
) -> tuple[str | None, bool, dict[str, Any]]:
    """Log the model, register it as :func:`registered_model_name` and run the gate
    (module docstring) in the active training run. Returns ``(version, promoted, gate)``."""
    import tempfile

    import mlflow

    from crmkit.pipelines.score import ModelLoadError, load_scorer
    from crmkit.pipelines.train import gate_metrics

    reg = config.registry
    name = reg.model_name
    project = getattr(reg, "project", None)
    signature, example = model_signature(scorer)
    with tempfile.TemporaryDirectory(prefix="crmkit-bundle-") as tmp:
        bundle = scorer.save(Path(tmp) / "bundle")
        info = log_model(scorer, bundle, signature, example, name if register else None, Path(tmp))
    gate: dict[str, Any] = {
        "model_uri": info.model_uri,
        "project": project,
        "challenger_metrics": scorer.metrics,
        "gate_metrics": list(reg.gate_metrics),
        "tolerance": reg.tolerance,
    }
    if not register:
        gate["decision"] = "not registered (register=False)"
        mlflow.set_tag("crmkit.gate", gate["decision"])
        return None, False, gate
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    catalogue = _catalogue(scorer)
    tags = {
        "crmkit.project": project or "",
        "crmkit.as_of": str(when.date()),
        "crmkit.data.source": data_source or "",
        "crmkit.data.products": str(0 if catalogue is None else len(catalogue)),
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    champion_metrics = None
    champion_version = None
    mismatch = None
    try:
        champ, champ_info = load_scorer(f"models:/{name}@{reg.alias}")
        champion_version = champ_info["version"]
        champ_tags = client.get_model_version(name, champion_version).tags
        mismatch = holder_mismatch(
            champ,
            champ_tags.get("crmkit.project"),
            scorer,
            project,
            float(getattr(reg, "min_catalogue_overlap", 0.5)),
        )
        if mismatch is None:
            say(f"gate: evaluating the champion (version {champion_version})")
            champion_metrics = gate_metrics(champ, lines, when, config)
    except ModelLoadError as exc:
        gate["champion_error"] = str(exc)
    holder = f"the champion (version {champion_version})"
    if mismatch is not None:
        promoted, rows = False, []
        decision = (
            f"{holder} is not a comparable holder - {mismatch}; not promoted, alias left as it "
            f"is (give this shop its own champion with --project / registry.project)"
        )
    else:
        promoted, rows, decision = decide(
            scorer.metrics, champion_metrics, list(reg.gate_metrics), reg.tolerance, holder=holder
        )
    gate.update(
        version=version,
        champion_version=champion_version,
        champion_metrics=champion_metrics,
        comparable=mismatch is None,
        comparison=rows,
        promoted=promoted,
        decision=decision,
    )
    if promoted:
        client.set_registered_model_alias(name, reg.alias, version)
    client.set_model_version_tag(name, version, "crmkit.gate", decision)
    mlflow.set_tag("crmkit.gate", decision)
    for k, v in scorer.metrics.items():
        client.set_model_version_tag(name, version, f"crmkit.metric.{k}", f"{v:.6f}")
    return version, promoted, gate


def model_signature(scorer: Any) -> tuple[Any, pd.DataFrame]:
    """The model's signature and input example: made-up lines in the columns the model was
    trained on; every column but the required ones is optional (``required=False``)."""
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema

    from crmkit.pipelines.score import score_frame
    from crmkit.pipelines.scorer import REQUIRED_INPUT
    from crmkit.pipelines.train import synthetic_input_example

    # ``amount`` is derived from quantity x unit_price when a file lacks it
    example = synthetic_input_example([c for c in scorer.input_columns if c != "amount"])
    params = {"as_of": "", "output": "customers"}
    try:
        out_example = score_frame(scorer, example).customers
    except Exception:  # the signature then has no output schema
        out_example = None
    with warnings.catch_warnings():
        # integer output columns (ranks, scores) never hold missing values here
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer")
        sig = infer_signature(example, out_example, params=params)
    needed = set(REQUIRED_INPUT)
    if scorer.churn is not None:  # a column behind a churn feature changes the scores
        needed |= set(scorer.churn.required_columns())
    cols = [ColSpec(c.type, c.name, required=c.name in needed) for c in sig.inputs.inputs]
    if "amount" in scorer.input_columns:
        cols.append(ColSpec("double", "amount", required=False))
    sig.inputs = Schema(cols)
    return sig, example
