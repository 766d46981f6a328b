"""Alembic's entry point for the warehouse (run by ``Warehouse.ensure_schema`` and ``uv run alembic``).

The database comes from, in order: the connection ``Warehouse`` passes in
``config.attributes["connection"]``; ``-x url=...``; ``sqlalchemy.url`` in the config;
``MMP_WAREHOUSE_URL``; the default DuckDB file under ``MMP_HOME``.

``-x synapse=true`` (with ``--sql``) writes a script for Azure Synapse dedicated pools.
"""

from __future__ import annotations

from logging.config import fileConfig
from pathlib import Path

from alembic import context

from many_models_platform.storage.migrations import serialise_upgrades, synapse_ddl
from many_models_platform.storage.warehouse import KEY_TABLE_PREFIX, create_warehouse_engine, metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)  # the `alembic` command line
x_args = context.get_x_argument(as_dictionary=True)


def warehouse_url() -> str:
    from many_models_platform.storage.settings import PlatformSettings

    return x_args.get("url") or config.get_main_option("sqlalchemy.url") or PlatformSettings.from_env().warehouse_url


def run_migrations_offline() -> None:
    """Write the SQL script (``--sql``) instead of running it."""
    synapse = x_args.get("synapse", "").lower() in {"1", "true", "yes"}
    context.configure(
        url=warehouse_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        # Synapse: no DDL inside transactions; no primary key on alembic_version, so that its
        # INSERT needs no OUTPUT clause (which dedicated pools lack)
        transactional_ddl=False if synapse else None,
        version_table_pk=not synapse,
    )
    with synapse_ddl(synapse), context.begin_transaction():
        context.run_migrations()


def include_name(name, type_, parent_names) -> bool:
    """Autogenerate leaves the per-use-case key tables (``keys_<use case>``) alone: the
    publisher makes them from each use case's key columns, outside the migrations."""
    return not (type_ == "table" and name and name.startswith(KEY_TABLE_PREFIX))


def run_on(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True, include_name=include_name)
    # A connection already in a transaction (Warehouse's) keeps it: Alembic then neither
    # begins nor commits, and the caller commits the whole upgrade at once.
    with context.begin_transaction():
        serialise_upgrades(connection)
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = warehouse_url()
    if url.startswith("duckdb:///") and url != "duckdb:///:memory:":
        Path(url.removeprefix("duckdb:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_warehouse_engine(url)
    try:
        with engine.connect() as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
