"""Alembic environment of the warehouse schema, configured in code (no alembic.ini needed).

``Warehouse.ensure_schema()`` calls :func:`upgrade` with its own connection, inside one
transaction. Developers can run the same environment with ``uv run alembic ...`` from the
repository root (``alembic.ini`` there points here); see docs/tables.md#migrations.

Importing this module registers an Alembic implementation for the ``duckdb`` dialect
(DuckDB runs DDL inside transactions) and, for ``-x synapse=true`` SQL scripts, renders primary
keys as ``NONCLUSTERED ... NOT ENFORCED``, the only kind Azure Synapse dedicated pools accept.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.ddl.impl import DefaultImpl
from alembic.script import ScriptDirectory
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import PrimaryKeyConstraint

MIGRATIONS_DIR = Path(__file__).resolve().parent

# PostgreSQL advisory lock and SQL Server application lock that serialise schema upgrades
# across processes (taken inside the migration transaction, released at commit).
PG_LOCK_ID = 0x6D6D_7077_6801  # "mmpwh" + revision lock 1
MSSQL_LOCK_RESOURCE = "many_models_platform.warehouse.migrations"


def column_names(bind: sa.Connection, table: str) -> set[str]:
    """A table's column names as the database has them (for migrations that add columns a
    warehouse made by ``metadata.create_all`` of a later version already has)."""
    if bind.dialect.name == "sqlite":  # no information_schema; DuckDB cannot reflect columns
        return {c["name"] for c in sa.inspect(bind).get_columns(table)}
    schema = "SCHEMA_NAME()" if bind.dialect.name == "mssql" else "current_schema()"
    rows = bind.execute(
        sa.text(
            f"SELECT column_name FROM information_schema.columns WHERE table_name = :table AND table_schema = {schema}"
        ),
        {"table": table},
    )
    return {r[0] for r in rows}


class DuckDBImpl(DefaultImpl):
    """Alembic's DDL implementation for duckdb-engine: DuckDB has transactional DDL."""

    __dialect__ = "duckdb"
    transactional_ddl = True


def alembic_config(connection: sa.Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for this package's migrations; ``connection`` is used as is (not committed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest revision in ``versions/`` (read once per process)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations under {MIGRATIONS_DIR}")
    return head


def is_known_revision(revision: str) -> bool:
    """True when ``versions/`` has this revision (a newer package may have migrated past it)."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except Exception:  # alembic raises ResolutionError / CommandError for unknown ids
        return False


def upgrade(connection: sa.Connection, revision: str = "head") -> None:
    """Upgrade the schema on ``connection``, in the caller's transaction."""
    command.upgrade(alembic_config(connection), revision)


def serialise_upgrades(connection: sa.Connection) -> None:
    """Wait until no other process is upgrading this database; held until the transaction ends."""
    name = connection.dialect.name
    if name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": PG_LOCK_ID})
    elif name == "mssql":
        connection.execute(
            sa.text(
                "EXEC sp_getapplock @Resource = :resource, @LockMode = 'Exclusive', "
                "@LockOwner = 'Transaction', @LockTimeout = -1"
            ),
            {"resource": MSSQL_LOCK_RESOURCE},
        )
    # DuckDB: one writer process per file, and Warehouse serialises its threads.


_synapse_ddl: contextvars.ContextVar[bool] = contextvars.ContextVar("mmp_synapse_ddl", default=False)


@contextlib.contextmanager
def synapse_ddl(enabled: bool = True) -> Iterator[None]:
    """While active, SQL Server DDL renders primary keys the way Synapse dedicated pools need."""
    token = _synapse_ddl.set(enabled)
    try:
        yield
    finally:
        _synapse_ddl.reset(token)


@compiles(PrimaryKeyConstraint, "mssql")
def _mssql_primary_key(constraint: PrimaryKeyConstraint, compiler, **kw) -> str:
    if not _synapse_ddl.get():
        return compiler.visit_primary_key_constraint(constraint, **kw)
    # Synapse dedicated SQL pools accept only NONCLUSTERED NOT ENFORCED primary keys.
    text = compiler.visit_primary_key_constraint(constraint, **kw)
    if not text:
        return text
    return text.replace("PRIMARY KEY (", "PRIMARY KEY NONCLUSTERED (", 1) + " NOT ENFORCED"
