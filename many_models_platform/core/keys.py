"""Partition-key encoding.

Keys come from data, so any value may hold commas, slashes, quotes, ``..`` or non-ASCII
text. Dagster's UI cannot backfill keys with commas, lake paths must never escape their
root, and SQL must never see a raw value. One reversible encoding serves all three:

* each key column's value is UTF-8 percent-encoded, keeping only ``A-Z a-z 0-9 - _``;
* the empty string becomes ``~`` (which is otherwise always escaped);
* values are joined with ``.`` (which is otherwise always escaped).

The result only holds ``[A-Za-z0-9_%~.-]``, never starts with ``.``, never holds ``..``
and is distinct for distinct tuples, so it is safe as a file name, a Dagster partition
key and an MLflow model name suffix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from urllib.parse import quote, unquote

SEPARATOR = "."
EMPTY = "~"
_SAFE = re.compile(r"[A-Za-z0-9_\-%~.]+")


def _encode_value(value: object) -> str:
    if value is None:
        raise ValueError("a key value cannot be null")
    text = str(value)
    if text == "":
        return EMPTY
    # quote() keeps "_.-~" unescaped; we escape "." and "~" too so they can act as markers.
    return quote(text, safe="").replace(".", "%2E").replace("~", "%7E")


def encode_key(values: Sequence[object]) -> str:
    """Encode a tuple of key-column values as one partition key."""
    if not values:
        raise ValueError("a key needs at least one value")
    return SEPARATOR.join(_encode_value(v) for v in values)


def decode_key(key: str) -> tuple[str, ...]:
    """Invert :func:`encode_key`; values come back as strings."""
    if not is_encoded_key(key):
        raise ValueError(f"not an encoded partition key: {key!r}")
    return tuple("" if part == EMPTY else unquote(part, errors="strict") for part in key.split(SEPARATOR))


def is_encoded_key(key: str) -> bool:
    """True when ``key`` could have come from :func:`encode_key` (used to reject path tricks)."""
    if not key or not _SAFE.fullmatch(key):
        return False
    return all(part and (part == EMPTY or EMPTY not in part) for part in key.split(SEPARATOR))


NAME_LIMIT = 120  # the longest key that names its files, folders and models as it is


def key_name(key: str) -> str:
    """A key as it names files, folders and registered models: itself, or for a key longer than
    NAME_LIMIT (40 CJK characters encode to 360) its first 80 characters, ``=`` and a digest of
    all of it, so no name outgrows a file system's 255 bytes or MLflow's 256 characters.
    ``=`` never occurs in an encoded key, so such a name is never another key's."""
    if len(key) <= NAME_LIMIT:
        return key
    return f"{key[:80]}={hashlib.sha256(key.encode()).hexdigest()[:32]}"


def key_label(columns: Sequence[str], key: str) -> str:
    """Human-readable ``col=value`` form for reports and BI."""
    return ", ".join(f"{c}={v}" for c, v in zip(columns, decode_key(key), strict=True))
