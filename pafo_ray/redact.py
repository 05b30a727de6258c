"""URIs without their secrets, for everything printed, logged or recorded.

A storage or data URI may carry credentials: ``s3://KEY:SECRET@bucket/p`` (user info) or
``s3://bucket/p?access_key=...&secret_key=...`` (pyarrow reads these from the query).
:func:`redact_uri` drops the user info and every secret query parameter and keeps the
harmless ones (``endpoint_override``, ``scheme``, ``region``, ...), so a redacted URI still
says where the data is. :func:`redact_text` does the same to every URI inside a message,
:func:`redact_tree` to every string of a summary or marker before it is written.

The real URI is used for reading and writing only; it never reaches stdout, a log line,
``summary.json``, a marker or a report.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

# Query keys whose value is a secret (compared lower-case, '-' read as '_').
SECRET_KEYS = frozenset({
    "access_key", "secret_key", "session_token", "token", "password", "passwd", "pwd",
    "secret", "api_key", "apikey", "key", "credential", "credentials", "signature",
    "sig", "auth", "authorization", "access_token", "refresh_token", "client_secret",
    "sas", "sas_token", "x_amz_credential", "x_amz_signature", "x_amz_security_token",
})
# A key that merely contains one of these words is treated as secret too.
_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "signature",
                 "access_key", "api_key", "private")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{},]+")


def is_secret_key(key: str) -> bool:
    norm = key.strip().lower().replace("-", "_")
    return norm in SECRET_KEYS or any(word in norm for word in _SECRET_WORDS)


def redact_uri(uri: str) -> str:
    """``uri`` without user info and without secret query parameters (others kept, in order)."""
    if "://" not in uri:
        return uri
    scheme, _, rest = uri.partition("://")
    rest, hash_sep, fragment = rest.partition("#")
    rest, query_sep, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = authority.rsplit("@", 1)[1]
    out = f"{scheme}://{authority}{slash}{path}"
    if query_sep:
        kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
                if not is_secret_key(k)]
        if kept:
            out += "?" + urlencode(kept, safe=":/")
    if hash_sep:
        out += "#" + fragment
    return out


def redact_text(text: str) -> str:
    """Every URI inside ``text`` redacted (for messages and log lines)."""
    if "://" not in text:
        return text
    return _URI.sub(lambda m: redact_uri(m.group(0)), text)


def redact_tree(obj: Any) -> Any:
    """A copy of a JSON-like tree (dicts, lists, tuples, strings) with every URI redacted."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v) for v in obj)
    return obj


class RedactingFilter:
    """A ``logging`` filter that redacts the URIs in a record's message (args included)."""

    def filter(self, record) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
            except (TypeError, ValueError):  # a malformed record: leave it to logging
                return True
            record.args = None
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        return True


def install_log_filter(*names: str) -> None:
    """Redact URIs in every record that the handlers of the root logger (and of the loggers
    ``names``, e.g. ``"ray"``, which has its own) emit."""
    import logging

    for name in ("", *names):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
