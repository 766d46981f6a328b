"""Credentials never reach output: every URI, connection string or error text shown to a person
(CLI, logs, Dagster metadata, exceptions) goes through :func:`redact` first.

It masks what the platform's own settings can carry: the password of ``scheme://user:password@host``
URLs (SQLAlchemy, MLflow, PostgreSQL), ``password=``/``pwd=`` and Azure ``AccountKey=``,
``SharedAccessSignature=``, ``sig=`` values in connection strings and query strings, ODBC
values in braces, and any exact secret the caller names (values from the environment).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

MASK = "***"

# user:password@ in a URL (the user stays visible: it tells which role is connecting)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<secret>[^@\s/]+)(?P<tail>@)")
# key=value pairs in connection strings, query strings and ODBC strings; braces may hold ';'
_SECRET_PAIR = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|accountkey|account_key|sharedaccesssignature|sig|secret|token|"
    r"client_secret|access_token)\s*[=:]\s*)(?P<secret>\{(?:[^}]|\}\})*\}|[^;&\s,'\"]+)",
    re.IGNORECASE,
)
# the same inside a URL-encoded query value (odbc_connect=...Pwd%3Dsecret%3B...)
_ENCODED_PAIR = re.compile(
    r"(?P<head>(?:password|pwd|accountkey|sharedaccesssignature|sig)%3D)(?P<secret>.*?)(?=%3B|&|\s|$)",
    re.IGNORECASE,
)
# Environment variables whose values are secrets wherever they appear in text.
SECRET_ENV_VARS = (
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "MMP_SERVING_API_KEYS",
    "PGPASSWORD",
)


def redact(text: object, secrets: Iterable[str] = ()) -> str:
    """``text`` as a string with credentials masked; ``secrets`` are extra exact values to mask."""
    out = str(text)
    out = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", out)
    out = _ENCODED_PAIR.sub(lambda m: f"{m['head']}{MASK}", out)
    out = _SECRET_PAIR.sub(lambda m: f"{m['head']}{MASK}", out)
    for value in (*secrets, *(os.environ.get(v, "") for v in SECRET_ENV_VARS)):
        if value and len(value) >= 4:
            out = out.replace(value, MASK)
    return out
