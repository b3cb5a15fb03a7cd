"""Writing outputs: all-or-nothing output folders (staging on the target's file system and
one atomic commit), the CSV writer that neutralises spreadsheet formulas, and Parquet files.
The one module that writes command outputs."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from crmkit.errors import DataContractError

__all__ = ["staged_output", "write_parquet", "write_csv", "neutralise_csv_cells"]

log = logging.getLogger(__name__)

#: Stagings of this process: an output folder written inside one of them (``audiences/``
#: inside a scoring run's staging folder) is already all-or-nothing through the outer one.
_ACTIVE_STAGES: set[Path] = set()
#: Name of the staging folders and of the lock inside an ``out_dir`` that is a mount point.
_INSIDE_STAGE = ".crmkit-staging-"
_INSIDE_LOCK = ".crmkit-lock"


@contextmanager
def staged_output(out_dir: str | os.PathLike, *, kind: str | None = None) -> Iterator[Path]:
    """Write a command's outputs all-or-nothing.

    ``out_dir`` is resolved first (a symlink, or a folder under one, is followed to the real
    folder). Writers of one folder take turns: a lock file ``.<out>.crmkit-lock`` beside it
    (``.crmkit-lock`` inside a mount point) is held from staging to commit, and a second
    run waits for the first (logging that it waits). The lock file also records, per
    ``kind``, the entries the last run of that kind wrote.

    Yields a staging folder on the target's file system: beside the real ``out_dir``, or
    inside it when ``out_dir`` is a mount point (which cannot be renamed). When the block
    finishes, the outputs replace those in ``out_dir``:

    - beside: files of ``out_dir`` the block did not write are hard-linked into the staging
      folder, which gets the folder's mode and owner and then swaps places with ``out_dir``
      in one atomic rename (``renameat2(RENAME_EXCHANGE)`` on Linux; a new ``out_dir`` is
      the staging folder renamed). A reader, or a process killed at any moment, sees the
      previous outputs or the new ones, never a mix.
    - inside (a mount point, or where the swap is not available): each entry is put in
      place with an atomic rename (a folder by an atomic swap); a previous entry is removed
      only after its replacement is in place.

    ``kind`` names the output set (``"score"``): entries the previous run of the same kind
    wrote and this one did not (``customers.parquet`` after a ``--format csv`` score) are
    removed, only once the new set is in place. Without a ``kind``, and for every other
    file in ``out_dir`` (a user's notes, another command's outputs), entries not written
    are kept. When the block raises, the staging folder is removed and ``out_dir`` is left
    as it was. A process killed with SIGKILL leaves its staging folder behind; the next run
    of that folder removes it.
    """
    out = Path(out_dir)
    if _inside_active_stage(out):
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    real = Path(os.path.realpath(out))
    if real.exists() and not real.is_dir():
        raise DataContractError(f"--out {out} exists and is not a directory", rule="output_dir")
    real.parent.mkdir(parents=True, exist_ok=True)  # a symlink to a folder not created yet
    inside = real.is_dir() and (os.path.ismount(real) or not os.access(real.parent, os.W_OK))
    # absolute: a JVM (the Spark engine) resolves relative paths against its own start
    # folder, not this process's current one
    where, prefix = (real, _INSIDE_STAGE) if inside else (real.parent, f".{real.name}.staging-")
    with _locked(real, inside) as record:
        _remove_stale_stagings(real)
        try:
            stage = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
        except OSError as exc:
            raise DataContractError(
                f"--out {out} cannot be written: {exc.strerror} ({where})", rule="output_dir"
            ) from None
        _ACTIVE_STAGES.add(stage)
        try:
            yield stage
            _commit(stage, real, record, inside, kind)
        finally:
            _ACTIVE_STAGES.discard(stage)
            shutil.rmtree(stage, ignore_errors=True)


def _inside_active_stage(out: Path) -> bool:
    path = Path(os.path.abspath(out))
    return any(path == s or s in path.parents for s in _ACTIVE_STAGES)


def _remove_stale_stagings(real: Path) -> None:
    """Staging folders of killed runs (the caller holds the folder's lock: no run is
    writing them)."""
    stale = list(real.parent.glob(f".{_glob_escape(real.name)}.staging-*"))
    if real.is_dir():
        stale += list(real.glob(f"{_INSIDE_STAGE}*"))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)


def _glob_escape(name: str) -> str:
    """``name`` with the glob characters ``*?[`` escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


class _Record:
    """The lock file's content: per kind of output set, the entries of ``out_dir`` the last
    run of that kind wrote (``{"sets": {"score": [...]}}``)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.sets: dict[str, set[str]] = {}
        if fd is not None:
            try:
                data = json.loads(os.pread(fd, 1 << 20, 0) or b"{}")
                self.sets = {str(k): set(v) for k, v in data.get("sets", {}).items()}
            except (OSError, ValueError, AttributeError, TypeError):
                self.sets = {}  # unreadable: treat nothing as a previous output

    def previous(self, kind: str | None) -> set[str]:
        return set(self.sets.get(kind, ())) if kind else set()

    def save(self, kind: str | None, written: set[str], also: set[str] = frozenset()) -> None:
        """Record ``written`` (and ``also``) as ``kind``'s entries; an entry belongs to the
        kind that wrote it last."""
        if self.fd is None:
            return
        sets = {k: v - written for k, v in self.sets.items()}
        if kind:
            sets[kind] = written | set(also)
        body = {"sets": {k: sorted(v) for k, v in sorted(sets.items()) if v}, "pid": os.getpid()}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(body) + "\n").encode(), 0)


@contextmanager
def _locked(real: Path, inside: bool) -> Iterator[_Record]:
    """Hold the folder's lock (``flock``; none where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield _Record(None)
        return
    path = real / _INSIDE_LOCK if inside else real.parent / f".{real.name}.crmkit-lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise DataContractError(
            f"--out {real} cannot be written: {exc.strerror} ({path})", rule="output_dir"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting: another crmkit run is writing %s", real)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield _Record(fd)
    finally:
        os.close(fd)  # releases the lock


def _commit(stage: Path, out: Path, record: _Record, inside: bool, kind: str | None) -> None:
    """Put the staged outputs in place (see :func:`staged_output`)."""
    written = {p.name for p in stage.iterdir()}
    previous = record.previous(kind) - written  # the last run's entries not written again
    if not inside and not out.exists():
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it 0700
        try:
            os.rename(stage, out)
            record.save(kind, written)
            return
        except OSError:  # out appeared meanwhile
            pass
    if not inside and _swap_folder(stage, out, written | previous | _own_names(out)):
        record.save(kind, written)
        return
    # a killed run leaves both sets listed: the next run removes what it does not write
    record.save(kind, written, also=previous)
    _commit_each(stage, out, sorted(written), sorted(previous))
    record.save(kind, written)


def _own_names(out: Path) -> set[str]:
    return {_INSIDE_LOCK} | {p.name for p in out.glob(f"{_INSIDE_STAGE}*")}


def _swap_folder(stage: Path, out: Path, skip: set[str]) -> bool:
    """Complete the staging folder with the entries of ``out`` to keep, give it ``out``'s
    mode and owner and swap the two; ``False`` (``out`` unchanged, the staging folder back
    to the new entries) when that is not possible."""
    try:
        for item in out.iterdir():  # keep what this run does not write
            if item.name in skip:
                continue
            target = stage / item.name
            if item.is_dir() and not item.is_symlink():
                shutil.copytree(item, target, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(item, target, follow_symlinks=False)
        st, own = out.stat(), stage.stat()
        if (st.st_uid, st.st_gid) != (own.st_uid, own.st_gid):
            os.chown(stage, st.st_uid, st.st_gid)
        os.chmod(stage, st.st_mode & 0o7777)
        if _exchange(stage, out):
            return True
    except OSError:
        pass
    for item in list(stage.iterdir()):  # undo the links: the entry-wise commit follows
        if item.name not in skip:
            _remove(item)
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


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


def _commit_each(stage: Path, out: Path, written: list[str], previous: list[str]) -> None:
    """Put each staged entry into ``out`` with an atomic rename (a folder by an atomic swap
    where possible); what it replaces, and the previous run's entries this run did not
    write, are moved into a folder of the staging folder (removed with it) only after the
    new entries are in place. Staging and ``out`` are on one file system."""
    out.mkdir(exist_ok=True)
    old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=stage))
    for name in written:
        item, target = stage / name, out / name
        if os.path.isdir(target) and not os.path.islink(target):
            if not (item.is_dir() and _exchange(item, target)):
                os.rename(target, old / name)
                os.rename(item, target)
        else:
            os.replace(item, target)
    for name in previous:
        if os.path.lexists(out / name):
            os.rename(out / name, old / name)


# --------------------------------------------------------------------------------------------
# CSV

#: First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: A text cell that is a plain number (ASCII digits; the same pattern in Java for Spark).
PLAIN_NUMBER = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
_PLAIN_NUMBER = re.compile(PLAIN_NUMBER)


def _neutralise(value: object) -> object:
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_START)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def neutralise_csv_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells cannot run as spreadsheet formulas.

    A text cell (in a text, categorical or object column, or the index) starting with
    ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading single quote
    (``'=HYPERLINK(...)``), as OWASP recommends against CSV injection. Numbers are left
    alone: numeric columns (``-12.5``) are numbers, and a text cell that is a plain number
    (a product id ``-1``) is read as that number by a spreadsheet, not as a formula.
    """
    out = frame.copy(deep=False)
    for i in range(frame.shape[1]):
        s = frame.iloc[:, i]
        if _is_text(s):
            cells = s.astype(object)
            risky = cells.str[:1].isin(FORMULA_START).to_numpy()  # non-text cells: False
            if risky.any():
                cells = cells.copy()
                cells[risky] = cells[risky].map(_neutralise)
                out.isetitem(i, cells)
    if _is_text(out.index.to_series()):
        out.index = pd.Index([_neutralise(v) for v in out.index], name=_neutralise(out.index.name))
    out.columns = [_neutralise(c) for c in out.columns]
    return out


def _is_text(s: pd.Series) -> bool:
    return not (
        pd.api.types.is_numeric_dtype(s)
        or pd.api.types.is_bool_dtype(s)
        or pd.api.types.is_datetime64_any_dtype(s)
        or isinstance(s.dtype, pd.PeriodDtype | pd.IntervalDtype)
    )


def write_csv(
    frame: pd.DataFrame, path: str | os.PathLike | None, *, index: bool = False, **kwargs: object
) -> Path | str:
    """Write ``frame`` as CSV (UTF-8) with its text cells neutralised
    (:func:`neutralise_csv_cells`); ``path=None`` returns the text. Every CSV crmkit
    writes goes through here. ``kwargs`` go to :meth:`pandas.DataFrame.to_csv`."""
    kwargs.setdefault("encoding", "utf-8")
    text = neutralise_csv_cells(frame).to_csv(path, index=index, **kwargs)
    return Path(path) if path is not None else text


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a frame as Parquet (pyarrow, no index)."""
    p = Path(path)
    frame.to_parquet(p, engine="pyarrow", index=False)
    return p
