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


def redact_exception(exc: BaseException, secrets: Iterable[str] = ()) -> BaseException:
    """``exc`` with credentials masked in its message and in its causes' messages.

    The result is of the same type (``except`` clauses and ``isinstance`` still match, the type's
    name is unchanged) and keeps the traceback, so a boundary (a Dagster step, the CLI) can
    re-raise it without losing what failed. ``exc`` itself comes back when nothing needs masking.
    The chain is kept as ``__cause__`` only (``__suppress_context__`` is set), so re-raising it
    inside an ``except`` block does not chain the unmasked original back in."""
    secrets = tuple(secrets)
    chain = list(_chain(exc))
    if all(redact(_message(e), secrets) == _message(e) for e in chain):
        return exc
    masked: BaseException | None = None
    for original in reversed(chain):  # innermost cause first
        masked = _masked_copy(original, redact(_message(original), secrets), cause=masked)
    assert masked is not None
    return masked


def _chain(exc: BaseException):
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not hide the error itself
        return repr(exc.args)


_MASKED_TYPES: dict[type, type] = {}


def _masked_copy(exc: BaseException, message: str, cause: BaseException | None) -> BaseException:
    """An instance of a subclass of ``type(exc)`` named like it, whose text is ``message``."""
    cls = type(exc)
    try:
        masked_cls = _MASKED_TYPES.get(cls)
        if masked_cls is None:
            namespace = {
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__str__": lambda self: self.args[0] if self.args else "",
                "__repr__": lambda self: f"{cls.__name__}({self.args[0] if self.args else ''!r})",
                "__reduce__": lambda self: (RuntimeError, (f"{cls.__name__}: {self}",)),
            }
            masked_cls = _MASKED_TYPES.setdefault(cls, type(cls.__name__, (cls,), namespace))
        copy = cls.__new__(masked_cls)
        copy.args = (message,)
    except Exception:  # a type that cannot be subclassed or built without its arguments
        copy = RuntimeError(f"{cls.__module__}.{cls.__qualname__}: {message}")
    copy.__cause__ = cause
    copy.__suppress_context__ = True
    return copy.with_traceback(exc.__traceback__)
