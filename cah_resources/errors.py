"""Exceptions told in one line: what a status row, a log line or a user's error message shows of them."""

from __future__ import annotations

import re

# Object addresses ("<_io.BytesIO object at 0x7f...>") would make the rows of two runs differ.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def one_line(error: BaseException, limit: int = 300) -> str:
    """``Type: message``, whitespace runs (newlines too) collapsed, object addresses dropped, cut at ``limit``."""
    text = _ADDRESS.sub("", " ".join(str(error).split()))
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__)[:limit]
