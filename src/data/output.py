"""Writing outputs: all-or-nothing output folders (staging beside the target and one atomic
commit) and Parquet files. The one module that writes command outputs."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from crmkit.errors import DataContractError

__all__ = ["staged_output", "write_parquet"]


@contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Write a command's outputs all-or-nothing.

    Yields a staging folder beside ``out_dir``. When the block finishes, the outputs replace
    those in ``out_dir`` in one step: files of ``out_dir`` the block did not write are
    hard-linked into the staging folder, which then swaps places with ``out_dir`` in a single
    atomic rename (``renameat2(RENAME_EXCHANGE)`` on Linux; a new ``out_dir`` is the staging
    folder renamed). A reader, or a process killed at any moment, sees the previous outputs
    or the new ones, never a mix. Where the swap is not available (other systems, a
    symlinked or mounted ``out_dir``), each entry is moved in with an atomic rename instead.

    When the block raises, the staging folder is removed and ``out_dir`` is left as it was.
    A process killed with SIGKILL leaves its ``.<out>.staging-*`` folder behind (nothing
    can clean up after it); ``out_dir`` is untouched and later runs are unaffected (each
    run stages in a folder of its own), so such a folder can simply be deleted.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise DataContractError(f"--out {out} exists and is not a directory", rule="output_dir")
    # absolute: a JVM (the Spark engine) resolves relative paths against its own start
    # folder, not this process's current one
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent.absolute()))
    try:
        yield stage
        _commit(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _commit(stage: Path, out: Path) -> None:
    """Put the staged outputs in place (see :func:`staged_output`)."""
    if out.is_symlink() or (out.exists() and os.path.ismount(out)):
        _commit_each(stage, out)
        return
    if not out.exists():
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it 0700
        try:
            os.rename(stage, out)
            return
        except OSError:  # out appeared meanwhile
            pass
    try:
        for item in out.iterdir():  # keep what this run does not write
            target = stage / item.name
            if not os.path.lexists(target):
                if item.is_dir() and not item.is_symlink():
                    shutil.copytree(item, target, symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(item, target, follow_symlinks=False)
        os.chmod(stage, out.stat().st_mode & 0o7777)
    except OSError:
        _commit_each(stage, out)
        return
    if not _exchange(stage, out):
        _commit_each(stage, out)
    # else: the staging folder now holds the previous outputs; the caller removes it


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike, *, follow_symlinks=True):  # noqa: ANN001, ANN202
    if os.path.islink(src) and not follow_symlinks:
        os.symlink(os.readlink(src), dst)
        return dst
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``); ``False``
    when the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # no libc symbol (glibc < 2.28, musl < 1.2.?)
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def _commit_each(stage: Path, out: Path) -> None:
    """Move each staged entry into ``out`` with an atomic rename (the fallback)."""
    out.mkdir(exist_ok=True)
    for item in sorted(stage.iterdir()):
        target = out / item.name
        if target.is_dir() and item.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a frame as Parquet (pyarrow, no index)."""
    p = Path(path)
    frame.to_parquet(p, engine="pyarrow", index=False)
    return p
