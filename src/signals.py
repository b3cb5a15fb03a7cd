"""Termination signals: SIGTERM (what schedulers, ``kill`` and container runtimes send)
unwinds a command as Ctrl-C does, so open MLflow runs end FAILED and staged outputs are
removed instead of the process dying on the spot with its runs left RUNNING.

Only entry points call :func:`raise_on_sigterm`; importing this module does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = [
    "Terminated",
    "raise_on_sigterm",
    "EXIT_CODE",
    "block_sigterm",
    "unblock_sigterm",
    "sigterm_deferred",
]

#: Exit status of a command ended by SIGTERM (128 + 15, the shell convention).
EXIT_CODE = 128 + signal.SIGTERM


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM.

    A :class:`BaseException` (like :class:`KeyboardInterrupt`), so that ``except Exception``
    handlers do not swallow it; context managers such as
    :func:`crmkit.tracking.stage_run` and :func:`crmkit.data.output.staged_output` see it
    and clean up (run FAILED, previous outputs kept).
    """


def _handler(signum: int, frame: FrameType | None) -> None:
    # a second SIGTERM while cleaning up must not interrupt the cleanup
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(f"terminated by signal {signal.Signals(signum).name}")


def raise_on_sigterm() -> bool:
    """Make SIGTERM raise :class:`Terminated` in the main thread (once: later SIGTERMs
    are ignored while the command unwinds). Returns ``False`` when not called from the
    main thread (only it may install signal handlers), ``True`` otherwise."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _handler)
    return True


def block_sigterm() -> object:
    """Hold SIGTERM back in this thread (it stays pending); returns the previous mask for
    :func:`unblock_sigterm` (``None`` where the system has no ``pthread_sigmask``)."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def unblock_sigterm(previous: object) -> None:
    """Restore the mask :func:`block_sigterm` returned; a SIGTERM that arrived meanwhile is
    delivered now (its handler raises :class:`Terminated` here)."""
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # type: ignore[arg-type]


@contextmanager
def sigterm_deferred() -> Iterator[None]:
    """Run a short step that must not be cut in half (ending an MLflow run) with SIGTERM
    held back; it is delivered when the step is done."""
    held = block_sigterm()
    try:
        yield
    finally:
        unblock_sigterm(held)
