"""Throwaway PostgreSQL databases for tests (imported explicitly, not a pytest conftest).

The server is the one on 127.0.0.1:5432 (trust auth, user postgres), or ``MMP_TEST_PG``.
Without a server, tests skip, except when ``CI`` is set: then they fail, so CI can never pass
by silently skipping them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

PG_SERVER = os.environ.get("MMP_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes", "on"}


def _admin():
    import psycopg2

    conn = psycopg2.connect(f"{PG_SERVER}/postgres", connect_timeout=5)
    conn.autocommit = True
    return conn


def require_postgres() -> None:
    try:
        _admin().close()
    except Exception as exc:
        message = f"PostgreSQL is not reachable at {PG_SERVER}: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: tests that need it fail instead of skipping)")
        pytest.skip(message)


def sqlalchemy_url(database: str, user: str | None = None) -> str:
    """A psycopg2 SQLAlchemy URL for ``database``, as the user ``user`` if given."""
    base = PG_SERVER.replace("postgresql://", "postgresql+psycopg2://", 1)
    if user:
        scheme, _, rest = base.partition("://")
        rest = rest.split("@", 1)[-1]
        base = f"{scheme}://{user}@{rest}"
    return f"{base}/{database}"


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """Create ``<prefix>_<hex>``; drop it (and its connections) afterwards."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@contextlib.contextmanager
def read_only_role(database: str) -> Iterator[str]:
    """A login role that may only read ``database``'s public schema; dropped afterwards."""
    import psycopg2

    role = f"mmp_ro_{uuid.uuid4().hex[:10]}"
    admin = _admin()
    with admin.cursor() as cur:
        cur.execute(f'CREATE ROLE "{role}" LOGIN')
        cur.execute(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
    db = psycopg2.connect(f"{PG_SERVER}/{database}")
    db.autocommit = True
    with db.cursor() as cur:
        cur.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        cur.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    try:
        yield role
    finally:
        with db.cursor() as cur:
            cur.execute(f'DROP OWNED BY "{role}"')
        db.close()
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()
