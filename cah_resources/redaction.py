"""Redacting secrets (passwords in URLs and DSNs, storage credentials) from what is shown to people."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Query parameters and DSN keywords that carry a secret (libpq's password and sslpassword, the usual
# names of keys and tokens in fsspec and cloud URLs, and a presigned URL's signature and credential:
# S3's X-Amz-Signature, Google's X-Goog-Signature, Azure's sig).
_SECRET_NAME = r"(?:[A-Za-z0-9_.-]*(?:password|passwd|secret|token|key|signature|credential)[A-Za-z0-9_.-]*|sig)"
_SECRET_PARAMETER = re.compile(rf"([?&]{_SECRET_NAME}=)[^&]*", re.IGNORECASE)
# libpq keyword form: ``password = 'it''s'`` or ``password=it\ s``; a quoted value may hold spaces.
# SQLAlchemy's reading of user information: a user without ':' or '/', then ':', a password up to '@'.
_SQLALCHEMY_USERINFO = re.compile(r"[^:/@]*:[^@]*@")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_SECRET_KEYWORD = re.compile(rf"(\b{_SECRET_NAME}\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` (or a libpq keyword DSN) with every password and secret parameter shown as ``***``.

    The password is masked as far as either reader of a DSN takes it: libpq ends the user
    information at the last ``@`` before the first ``/`` (a password may hold ``#``, ``?`` or ``@``,
    which ``urllib`` would take for the end of the host), SQLAlchemy at the first ``@`` after the
    user's ``:`` (a password may hold ``/``). A URL with a port and an ``@`` in its path is masked
    past the port: shown too little, never too much.
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return _SECRET_KEYWORD.sub(rf"\g<1>{MASK}", url)
    rest = url[scheme.end() :]
    slash = rest.find("/")
    authority = rest if slash < 0 else rest[:slash]
    sqlalchemy = _SQLALCHEMY_USERINFO.match(rest)
    at = max(authority.rfind("@"), sqlalchemy.end() - 1 if sqlalchemy else -1)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = f"{user}:{MASK}" + rest[at:] if colon else rest
    return scheme.group() + _SECRET_PARAMETER.sub(rf"\g<1>{MASK}", rest)


def redact_text(text: str) -> str:
    """``text`` (an error message, say) with every URL in it redacted as ``redact_url`` does."""
    return _URL_IN_TEXT.sub(lambda found: redact_url(found.group()), text)


def redact_options(options: dict[str, Any]) -> dict[str, str]:
    """Storage options as safe to show: their names, every value masked (any of them may be a key)."""
    return {name: MASK for name in options}
