"""Which model URIs ``crmkit score`` loads, and the fingerprint of a model folder.

A pyfunc model folder contains Python code (the model's ``python_model`` file) that MLflow
imports when it loads the model: pointing ``--model`` at a folder runs that folder's code.
Registry models (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``) and a tracked run's model
(``runs:/RUN_ID/PATH``) load by default; anything else (a local folder, ``file://``, a
bucket URI) only with ``trust_model_dir`` (``--trust-model-dir``), and a local folder is
then identified by :func:`folder_sha256`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from crmkit.errors import CrmkitError

__all__ = ["TRUSTED_SCHEMES", "check_model_source", "folder_sha256", "local_folder"]

#: URI prefixes that load without ``--trust-model-dir``.
TRUSTED_SCHEMES = ("models:/", "runs:/")


def local_folder(uri: str) -> Path | None:
    """The local folder ``uri`` names (a path or a ``file:`` URI), else ``None``."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # s3://, dbfs:/ ... (not a drive letter)
        return None
    return Path(uri)


def folder_sha256(folder: str | os.PathLike) -> str:
    """SHA-256 fingerprint of a folder's files.

    The hex SHA-256 of the lines ``<relative path>\\0<hex sha256 of the file>\\n``, one per
    file (symlinked files followed), in the order of the relative paths (``/``-separated).
    Any change of a file's content, name or place changes it.
    """
    root = Path(folder)
    files = [p for p in root.rglob("*") if p.is_file()]
    h = hashlib.sha256()
    for rel, p in sorted((p.relative_to(root).as_posix(), p) for p in files):
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
        h.update(f"{rel}\0{digest.hexdigest()}\n".encode())
    return h.hexdigest()


def check_model_source(uri: str, *, trust_model_dir: bool = False) -> str | None:
    """Refuse a model URI whose code is not from the registry or a tracked run unless
    ``trust_model_dir``; returns the :func:`folder_sha256` of a trusted local folder
    (``None`` for registry and run models and for remote URIs).

    Raises
    ------
    CrmkitError
        ``uri`` is neither ``models:/`` nor ``runs:/`` and ``trust_model_dir`` is false, or
        a trusted local folder does not exist.
    """
    if uri.startswith(TRUSTED_SCHEMES):
        return None
    folder = local_folder(uri)
    if not trust_model_dir:
        what = "a model folder" if folder is not None else "a model outside the registry"
        raise CrmkitError(
            f"--model {uri} is {what}: loading it runs the Python code inside it, so it is "
            "loaded only with --trust-model-dir (pass it if you trust that folder); or score "
            "with a registered model (models:/NAME@ALIAS, models:/NAME/VERSION) or a run's "
            "model (runs:/RUN_ID/PATH)"
        )
    if folder is None:
        return None
    if not folder.is_dir():
        raise CrmkitError(f"--model {uri}: no such folder")
    return folder_sha256(folder)
