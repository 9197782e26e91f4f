"""A stop at a chosen moment of a unit's work: the KeyboardInterrupt that Ctrl-C, SIGTERM or the UI's
Terminate raise in a run's thread, raised as that thread opens a chosen file (an audit hook)."""

import fnmatch
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

_ARMED: list[tuple[str, int]] = []  # (path pattern, thread): at most one, disarmed once it fires


def _stop_on_open(event: str, args: tuple) -> None:
    if event != "open" or not _ARMED or not isinstance(args[0], str | os.PathLike):
        return
    pattern, thread = _ARMED[0]
    if threading.get_ident() == thread and fnmatch.fnmatch(os.fspath(args[0]), pattern):
        _ARMED.clear()
        raise KeyboardInterrupt(f"stopped as {args[0]} was opened")


sys.addaudithook(_stop_on_open)  # a hook cannot be removed: it does nothing unless armed


@contextmanager
def stopped_on_open(pattern: str) -> Iterator[None]:
    """The block must be stopped (KeyboardInterrupt) as this thread first opens a path matching ``pattern``."""
    _ARMED[:] = [(pattern, threading.get_ident())]
    try:
        with pytest.raises(KeyboardInterrupt, match="stopped as"):
            yield
    finally:
        _ARMED.clear()


def files_under(folder: str) -> dict[str, bytes]:
    """Every file below ``folder`` and its bytes (temporary files included)."""
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found
