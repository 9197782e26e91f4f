"""Redacting secrets (passwords in URLs and DSNs, storage credentials) from what is shown to people."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Query parameters and DSN keywords that carry a secret (libpq's password and sslpassword, and the
# usual names of keys and tokens in fsspec and cloud URLs).
_SECRET_NAME = r"[A-Za-z0-9_.-]*(?:password|passwd|secret|token|key)[A-Za-z0-9_.-]*"
_SECRET_PARAMETER = re.compile(rf"([?&]{_SECRET_NAME}=)[^&]*", re.IGNORECASE)
# libpq keyword form: ``password = 'it''s'`` or ``password=it\ s``; a quoted value may hold spaces.
_SECRET_KEYWORD = re.compile(rf"(\b{_SECRET_NAME}\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` (or a libpq keyword DSN) with every password and secret parameter shown as ``***``.

    The user information ends at the last ``@`` before the first ``/`` after the scheme, as libpq
    reads it: a password may hold ``#``, ``?`` or ``@``, which ``urllib`` would take for the end of
    the host and show.
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return _SECRET_KEYWORD.sub(rf"\g<1>{MASK}", url)
    rest = url[scheme.end() :]
    slash = rest.find("/")
    authority = rest if slash < 0 else rest[:slash]
    at = authority.rfind("@")
    if at >= 0:
        user, colon, _ = authority[:at].partition(":")
        rest = f"{user}:{MASK}" + rest[at:] if colon else rest
    return scheme.group() + _SECRET_PARAMETER.sub(rf"\g<1>{MASK}", rest)


def redact_options(options: dict[str, Any]) -> dict[str, str]:
    """Storage options as safe to show: their names, every value masked (any of them may be a key)."""
    return {name: MASK for name in options}
