"""The SQL warehouse BI reads: DuckDB file by default, PostgreSQL, or SQL Server / Synapse.

One URL (``MMP_WAREHOUSE_URL``) picks the backend; docs/tables.md is the data dictionary.

* **Schema.** The tables below are the schema; Alembic owns it (``storage/migrations``).
  :meth:`Warehouse.ensure_schema` runs ``upgrade head``, once per ``Warehouse`` and only when
  the one-query version check says the database is not at head.
* **Idempotency.** Writes replace a slice: the rows of (use case, run date, keys) in the
  per-key tables, the rows with the new rows' primary keys in the history tables, or a use
  case's rows in a snapshot table. Deletes and inserts run in one transaction, so a rerun or
  a crash never leaves duplicates or half a key. Frames are checked before anything is
  written: no row outside the slice, no duplicate primary key (Synapse does not enforce
  primary keys, so this check is what keeps it clean there).
* **Bulk loads** take each backend's fast path: DuckDB scans an Arrow table, PostgreSQL
  (psycopg2) runs ``COPY ... FROM STDIN`` with CSV written by polars, SQL Server (pyodbc)
  uses ``fast_executemany``. Nothing is inserted row by row.
* Every value travels as a bound parameter, Arrow or CSV data: key values never reach SQL text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

metadata = sa.MetaData(naming_convention={"pk": "pk_%(table_name)s"})

# Column types. What is ASCII by construction (encoded keys, use-case names, run ids, stage,
# status, metric and estimator names) is VARCHAR everywhere: on SQL Server that keeps every
# primary key under the 900-byte index key limit (NVARCHAR would double it). Text that comes
# from data or people (key labels, class labels, reasons, user names) is NVARCHAR on SQL Server
# and VARCHAR/TEXT elsewhere. SQL Server gets DATE, DATETIME2 and FLOAT(53) explicitly, so the
# DDL does not depend on the server version the dialect detects.
Ascii = sa.String
Unicode = sa.Unicode
LONG_TEXT = sa.Text().with_variant(mssql.NVARCHAR("max"), "mssql")
DATE = sa.Date().with_variant(mssql.DATE(), "mssql")
TIMESTAMP = sa.DateTime().with_variant(mssql.DATETIME2(), "mssql")
DOUBLE = sa.Double().with_variant(mssql.FLOAT(53), "mssql")


def _key_cols() -> list[sa.Column]:
    """The three columns every per-key table starts with."""
    return [
        sa.Column("use_case", Ascii(64), nullable=False),
        sa.Column("key", Ascii(512), nullable=False),  # the encoded key: [A-Za-z0-9_%~.-] only
        sa.Column("run_date", DATE, nullable=False),
    ]


predictions = sa.Table(
    "predictions",
    metadata,
    *_key_cols(),
    sa.Column("row_index", sa.Integer, nullable=False),
    sa.Column("key_label", Unicode(1024), nullable=False),
    sa.Column("period", TIMESTAMP, nullable=True),
    sa.Column("kind", Ascii(16), nullable=False),  # forecast | holdout | scoring
    sa.Column("prediction", DOUBLE, nullable=True),
    sa.Column("predicted_label", Unicode(256), nullable=True),
    sa.Column("actual", DOUBLE, nullable=True),
    sa.Column("model_name", Ascii(600), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("dagster_run_id", Ascii(64), nullable=False),
    sa.Column("published_at", TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint("use_case", "key", "run_date", "row_index"),
)

key_metrics = sa.Table(
    "key_metrics",
    metadata,
    *_key_cols(),
    sa.Column("model_role", Ascii(16), nullable=False),  # candidate | champion
    sa.Column("metric", Ascii(32), nullable=False),
    sa.Column("value", DOUBLE, nullable=True),
    sa.Column("model_name", Ascii(600), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("estimator", Ascii(128), nullable=True),
    sa.Column("dagster_run_id", Ascii(64), nullable=False),
    sa.PrimaryKeyConstraint("use_case", "key", "run_date", "model_role", "metric"),
)

key_status = sa.Table(
    "key_status",
    metadata,
    *_key_cols(),
    sa.Column("stage", Ascii(32), nullable=False),
    sa.Column("key_label", Unicode(1024), nullable=False),
    sa.Column("status", Ascii(16), nullable=False),  # ok | failed | skipped | missing
    sa.Column("reason", LONG_TEXT, nullable=True),
    sa.Column("dagster_run_id", Ascii(64), nullable=True),
    sa.Column("updated_at", TIMESTAMP, nullable=True),
    sa.PrimaryKeyConstraint("use_case", "key", "run_date", "stage"),
)

promotion_history = sa.Table(
    "promotion_history",
    metadata,
    *_key_cols(),
    sa.Column("decided_at", TIMESTAMP, nullable=False),
    sa.Column("decision", Ascii(32), nullable=False),  # promoted | kept_champion | rejected | rolled_back
    sa.Column("reason", LONG_TEXT, nullable=False),
    sa.Column("metric", Ascii(32), nullable=False),
    sa.Column("candidate_version", sa.Integer, nullable=True),
    sa.Column("candidate_value", DOUBLE, nullable=True),
    sa.Column("champion_version", sa.Integer, nullable=True),
    sa.Column("champion_value", DOUBLE, nullable=True),
    sa.Column("production_version", sa.Integer, nullable=True),
    sa.Column("decided_by", Unicode(256), nullable=True),
    sa.Column("dagster_run_id", Ascii(64), nullable=False),  # or "rollback-<id>" for a manual rollback
    sa.PrimaryKeyConstraint("use_case", "key", "run_date", "dagster_run_id"),
)

model_family = sa.Table(
    "model_family",
    metadata,
    sa.Column("use_case", Ascii(64), nullable=False),
    sa.Column("key", Ascii(512), nullable=False),
    sa.Column("key_label", Unicode(1024), nullable=False),
    sa.Column("metric", Ascii(32), nullable=False),
    sa.Column("candidate_version", sa.Integer, nullable=True),
    sa.Column("candidate_value", DOUBLE, nullable=True),
    sa.Column("production_version", sa.Integer, nullable=True),
    sa.Column("production_source_version", sa.Integer, nullable=True),
    sa.Column("production_value", DOUBLE, nullable=True),
    sa.Column("status", Ascii(32), nullable=False),  # current | behind | unpromoted | production_only
    sa.Column("snapshot_at", TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint("use_case", "key"),
)

run_summary = sa.Table(
    "run_summary",
    metadata,
    sa.Column("use_case", Ascii(64), nullable=False),
    sa.Column("run_date", DATE, nullable=False),
    sa.Column("dagster_run_id", Ascii(64), nullable=False),
    sa.Column("keys_total", sa.Integer, nullable=False),
    sa.Column("keys_published", sa.Integer, nullable=False),
    sa.Column("keys_failed", sa.Integer, nullable=False),
    sa.Column("keys_promoted", sa.Integer, nullable=False),
    sa.Column("metric", Ascii(32), nullable=False),
    sa.Column("metric_p10", DOUBLE, nullable=True),
    sa.Column("metric_p50", DOUBLE, nullable=True),
    sa.Column("metric_p90", DOUBLE, nullable=True),
    sa.Column("published_at", TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint("use_case", "run_date", "dagster_run_id"),
)

# The newest migration (migrations/versions/). Bump it with every new revision; a test checks
# that it is Alembic's head. It only spares ensure_schema() the Alembic import when at head.
SCHEMA_REVISION = "0001"

PER_KEY_TABLES = (predictions, key_metrics, key_status)
HISTORY_TABLES = (promotion_history, run_summary)
SNAPSHOT_TABLES = (model_family,)

# Keys per DELETE ... IN (...): SQL Server accepts at most 2,100 parameters per statement.
_DELETE_CHUNK = 500
# Rows per COPY (PostgreSQL) and per executemany batch (SQL Server and other backends).
_COPY_BATCH = 250_000
_EXECUTEMANY_BATCH = 10_000


def create_warehouse_engine(url: str | sa.URL, read_only: bool = False) -> sa.Engine:
    """The engine for a warehouse URL, with each backend's bulk-load settings.

    * ``postgresql://`` without a driver means psycopg2 (SQLAlchemy 2.1 would pick psycopg 3,
      which this project does not install); COPY needs psycopg2.
    * ``mssql+pyodbc://`` gets ``fast_executemany=True``.
    * ``duckdb:///`` with ``read_only`` opens the file read-only (no writer lock).
    """
    u = sa.make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg2")
    kwargs: dict[str, Any] = {}
    if u.get_backend_name() == "duckdb" and read_only:
        kwargs["connect_args"] = {"read_only": True}
    if u.get_backend_name() == "mssql" and u.get_driver_name() == "pyodbc":
        kwargs["fast_executemany"] = True
    return sa.create_engine(u, **kwargs)


@dataclass(frozen=True)
class WriteStep:
    """One table's part of a write: delete these slices, then bulk-load ``frame``."""

    table: sa.Table
    deletes: tuple[sa.Delete, ...]
    frame: pl.DataFrame | None


class Warehouse:
    def __init__(self, url: str, read_only: bool = False):
        self.url = url
        self.read_only = read_only
        self._engine: sa.Engine | None = None
        self._schema_ready = False

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = create_warehouse_engine(self.url, self.read_only)
        return self._engine

    def dispose(self) -> None:
        """Release the file lock (DuckDB allows one writer process) once a stage is done."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- schema ---------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Bring the schema to Alembic's head; one query when it is already there.

        Runs on every publish, so the answer is cached on this instance. Upgrades are
        serialised: in a process by a lock (Alembic is not thread-safe), across processes by
        the database (DuckDB's file lock, an advisory lock on PostgreSQL, an application lock
        on SQL Server, taken in the migration environment). A warehouse created before
        migrations existed (tables, no ``alembic_version``) is adopted by the first revision:
        missing tables are created, missing nullable columns added, 4-byte floats widened.
        """
        if self._schema_ready:
            return
        current = self.current_revision()
        if current == SCHEMA_REVISION:  # the common case, without importing Alembic (~0.3 s)
            self._schema_ready = True
            return
        from .migrations import head_revision, is_known_revision, upgrade

        head = head_revision()
        if current == head:
            self._schema_ready = True
            return
        if current is not None and not is_known_revision(current):
            raise RuntimeError(
                f"warehouse {self.url} is at schema revision {current!r}, which this version of "
                f"many_models_platform does not know (its newest is {head!r}): upgrade the package"
            )
        if self.read_only:
            raise RuntimeError(f"warehouse {self.url} is not at schema revision {head} and was opened read-only")
        with _UPGRADE_LOCK, self.connect() as conn, conn.begin():
            upgrade(conn)
        self._schema_ready = True

    def current_revision(self) -> str | None:
        """The Alembic revision the database is at; ``None`` before the first migration."""
        with self.connect() as conn:
            try:
                versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
            except sa.exc.DBAPIError:  # no alembic_version table: a new or pre-migrations warehouse
                return None
            finally:
                conn.rollback()
        return versions[0] if len(versions) == 1 else None

    # -- writes ---------------------------------------------------------------------------

    def replace_keys(
        self,
        use_case: str,
        run_date: Any,
        keys: Sequence[str],
        frames: Mapping[str, pl.DataFrame],
        append: Mapping[str, pl.DataFrame] | None = None,
    ) -> None:
        """Replace these keys' rows for ``run_date`` in every per-key table, in one transaction.

        ``append`` rows (promotion history, run summary) are inserted in the same transaction,
        after deleting any row with the same primary key, so reruns stay idempotent.
        """
        self._write(plan_replace_keys(use_case, run_date, keys, frames, append))

    def replace_use_case(self, table_name: str, use_case: str, frame: pl.DataFrame) -> None:
        """Replace every row of a per-use-case snapshot table (``model_family``) in one transaction."""
        self._write(plan_replace_use_case(table_name, use_case, frame))

    def _write(self, steps: Sequence[WriteStep]) -> None:
        with self.connect() as conn, conn.begin():
            for step in steps:
                for statement in step.deletes:
                    conn.execute(statement)
                if step.frame is not None and step.frame.height:
                    self._insert(conn, step.table, step.frame)

    def _insert(self, conn: sa.Connection, table: sa.Table, frame: pl.DataFrame) -> None:
        """Bulk-load ``frame`` (columns in table order) inside the caller's transaction."""
        dialect = conn.dialect
        if dialect.name == "duckdb":
            self._insert_arrow(conn, table, frame)
        elif dialect.name == "postgresql" and dialect.driver == "psycopg2":
            self._copy_postgres(conn, table, frame)
        else:
            self._insert_executemany(conn, table, frame)

    def _insert_arrow(self, conn: sa.Connection, table: sa.Table, frame: pl.DataFrame) -> None:
        # DuckDB scans the Arrow table in place instead of binding row by row.
        q = conn.dialect.identifier_preparer
        raw = conn.connection.driver_connection
        view = f"_mmp_{table.name}_batch"
        cols = ", ".join(q.quote(c) for c in frame.columns)
        raw.register(view, frame.to_arrow())
        try:
            conn.exec_driver_sql(f"INSERT INTO {q.format_table(table)} ({cols}) SELECT {cols} FROM {q.quote(view)}")
        finally:
            # after a failed insert DuckDB refuses everything until rollback, unregistering too;
            # the next register() of the same name replaces the view anyway
            with contextlib.suppress(Exception):
                raw.unregister(view)

    def _copy_postgres(self, conn: sa.Connection, table: sa.Table, frame: pl.DataFrame) -> None:
        # COPY FROM STDIN on the connection that holds the transaction. polars writes CSV the way
        # COPY reads it: NULL is an unquoted empty field, an empty string is "", and fields with
        # commas, quotes or line breaks are quoted with "" escaping (backslashes are plain data).
        q = conn.dialect.identifier_preparer
        cols = ", ".join(q.quote(c) for c in frame.columns)
        sql = f"COPY {q.format_table(table)} ({cols}) FROM STDIN WITH (FORMAT csv, ENCODING 'UTF8')"
        raw = conn.connection.driver_connection
        dbapi = conn.dialect.loaded_dbapi
        with raw.cursor() as cursor:
            for part in frame.iter_slices(_COPY_BATCH):
                buffer = io.BytesIO()
                part.write_csv(buffer, include_header=False, null_value="", quote_style="necessary")
                buffer.seek(0)
                try:
                    cursor.copy_expert(sql, buffer)
                except dbapi.Error as exc:  # raise it as SQLAlchemy does for every other statement
                    raise sa.exc.DBAPIError.instance(sql, None, exc, dbapi.Error) from exc

    def _insert_executemany(self, conn: sa.Connection, table: sa.Table, frame: pl.DataFrame) -> None:
        # One executemany per batch: pyodbc sends each batch as parameter arrays when the engine
        # has fast_executemany (create_warehouse_engine sets it for mssql+pyodbc).
        if conn.dialect.name == "mssql":
            frame = _finite_or_null(frame)  # SQL Server's float has no NaN or infinity
        statement = insert_statement(table)
        for part in frame.iter_slices(_EXECUTEMANY_BATCH):
            conn.execute(statement, part.to_dicts())

    # -- reads ----------------------------------------------------------------------------

    def connect(self, wait_seconds: float = 120.0) -> sa.Connection:
        """A connection; on DuckDB, wait for another process's file lock instead of failing."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                return self.engine.connect()
            except sa.exc.DBAPIError as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                self.dispose()
                time.sleep(0.5)

    def query(self, sql: str, **params: Any) -> pl.DataFrame:
        with self.connect() as conn:
            result = conn.execute(sa.text(sql), params)
            rows = result.fetchall()
            return pl.DataFrame([tuple(r) for r in rows], schema=list(result.keys()), orient="row")

    def table_names(self) -> Iterable[str]:
        return sa.inspect(self.engine).get_table_names()


# -- write plans: the statements a write issues, checked before anything is written ---------


def plan_replace_keys(
    use_case: str,
    run_date: Any,
    keys: Sequence[str],
    frames: Mapping[str, pl.DataFrame],
    append: Mapping[str, pl.DataFrame] | None = None,
) -> list[WriteStep]:
    """The deletes and loads of :meth:`Warehouse.replace_keys`, in execution order."""
    run_date = _as_date(run_date)
    keys = list(dict.fromkeys(keys))
    unknown = set(frames) - {t.name for t in PER_KEY_TABLES}
    unknown |= set(append or {}) - {t.name for t in HISTORY_TABLES}
    if unknown:
        raise ValueError(f"not a table this write can replace: {sorted(unknown)}")
    scope = {"use_case": use_case, "run_date": run_date}
    steps = []
    for table in PER_KEY_TABLES:
        deletes = tuple(
            table.delete().where(
                table.c.use_case == use_case,
                table.c.run_date == run_date,
                table.c.key.in_(keys[i : i + _DELETE_CHUNK]),
            )
            for i in range(0, len(keys), _DELETE_CHUNK)
        )
        frame = _prepare(table, frames.get(table.name), scope)
        if frame is not None:
            outside = frame.filter(
                (pl.col("use_case") != use_case) | (pl.col("run_date") != run_date) | ~pl.col("key").is_in(keys)
            )
            if outside.height:
                raise ValueError(
                    f"{table.name}: {outside.height} rows outside ({use_case!r}, {run_date}, the given keys), "
                    f"e.g. key {outside['key'][0]!r}: they would not be replaced on a rerun"
                )
        steps.append(WriteStep(table, deletes, frame))
    for name, raw in (append or {}).items():
        table = metadata.tables[name]
        frame = _prepare(table, raw, {"use_case": use_case})
        if frame is None:
            continue
        if (frame["use_case"] != use_case).any():
            raise ValueError(f"{name}: rows of another use case than {use_case!r}")
        steps.append(WriteStep(table, tuple(_delete_primary_keys(table, frame)), frame))
    return steps


def plan_replace_use_case(table_name: str, use_case: str, frame: pl.DataFrame) -> list[WriteStep]:
    """The delete and load of :meth:`Warehouse.replace_use_case`."""
    if table_name not in {t.name for t in SNAPSHOT_TABLES}:
        raise ValueError(f"not a per-use-case snapshot table: {table_name!r}")
    table = metadata.tables[table_name]
    prepared = _prepare(table, frame, {"use_case": use_case})
    if prepared is not None and (prepared["use_case"] != use_case).any():
        raise ValueError(f"{table_name}: rows of another use case than {use_case!r}")
    return [WriteStep(table, (table.delete().where(table.c.use_case == use_case),), prepared)]


def insert_statement(table: sa.Table) -> sa.Insert:
    """The INSERT the executemany path binds batches to (SQL Server and other backends)."""
    return table.insert()


def _prepare(table: sa.Table, frame: pl.DataFrame | None, defaults: dict[str, Any]) -> pl.DataFrame | None:
    """The frame's columns in table order, timestamps as naive UTC; rejects duplicate primary keys."""
    if frame is None or frame.height == 0:
        return None
    missing = {k: v for k, v in defaults.items() if k not in frame.columns}
    if missing:
        frame = frame.with_columns([pl.lit(v).alias(k) for k, v in missing.items()])
    absent = [c.name for c in table.columns if c.name not in frame.columns]
    if absent:
        raise ValueError(f"{table.name}: frame lacks columns {absent}")
    frame = frame.select([c.name for c in table.columns])
    fixes = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            fixes.append(pl.col(name).dt.convert_time_zone("UTC").dt.replace_time_zone(None))
        elif isinstance(table.c[name].type, sa.Date) and not isinstance(dtype, pl.Date):
            fixes.append(pl.col(name).cast(pl.Date))
    if fixes:
        frame = frame.with_columns(fixes)
    pk = [c.name for c in table.primary_key.columns]
    dupes = frame.select(pk).is_duplicated()
    if dupes.any():
        first = frame.filter(dupes).select(pk).row(0, named=True)
        raise ValueError(f"{table.name}: {int(dupes.sum())} rows share a primary key, e.g. {first}")
    return frame


def _delete_primary_keys(table: sa.Table, frame: pl.DataFrame) -> Iterable[sa.Delete]:
    """Deletes for the rows with the same primary key as ``frame``'s, keys in chunks."""
    pk = [c.name for c in table.primary_key.columns]
    if "key" not in pk:
        for row in frame.select(pk).unique(maintain_order=True).iter_rows(named=True):
            yield table.delete().where(*[table.c[c] == v for c, v in row.items()])
        return
    rest = [c for c in pk if c != "key"]
    for values, part in frame.select(pk).unique(maintain_order=True).group_by(rest, maintain_order=True):
        keys = part["key"].to_list()
        fixed = [table.c[c] == v for c, v in zip(rest, values, strict=True)]
        for i in range(0, len(keys), _DELETE_CHUNK):
            yield table.delete().where(*fixed, table.c.key.in_(keys[i : i + _DELETE_CHUNK]))


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def _finite_or_null(frame: pl.DataFrame) -> pl.DataFrame:
    floats = [n for n, t in frame.schema.items() if t.is_float()]
    if not floats:
        return frame
    return frame.with_columns([pl.when(pl.col(n).is_finite()).then(pl.col(n)).otherwise(None).alias(n) for n in floats])


# One schema upgrade at a time in this process, whatever the database: Alembic's ``context``
# and ``op`` are module-level proxies, so two upgrades in two threads would trample each other.
# Across processes the database serialises them (see ``migrations.serialise_upgrades``).
_UPGRADE_LOCK = threading.Lock()
