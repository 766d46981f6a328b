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
* **Batches.** :meth:`Warehouse.replacing` loads a run's keys a batch at a time and commits
  them together, so what the caller and the client hold is one batch, whatever the number of
  keys (on DuckDB the batches are spooled to Parquet files and loaded in the one transaction
  at the end: DuckDB holds a transaction's appended Arrow batches in memory until commit).
* **Bulk loads** take each backend's fast path: DuckDB scans an Arrow table, PostgreSQL
  (psycopg2) runs ``COPY ... FROM STDIN`` with CSV written by polars, SQL Server (pyodbc)
  uses ``fast_executemany``. Nothing is inserted row by row.
* Every value travels as a bound parameter, Arrow or CSV data: key values never reach SQL text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import math
import numbers
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

from .redaction import redact, redact_exception

metadata = sa.MetaData(naming_convention={"pk": "pk_%(table_name)s"})

# Column types. What is ASCII by construction (encoded keys, use-case names, run ids, stage,
# status, metric and estimator names) is VARCHAR everywhere: on SQL Server that keeps every
# primary key under the 900-byte index key limit (NVARCHAR would double it). Text that comes
# from data or people (key labels, class labels, reasons, user names) is NVARCHAR on SQL Server
# and VARCHAR/TEXT elsewhere. SQL Server gets DATE, DATETIME2 and FLOAT(53) explicitly, so the
# DDL does not depend on the server version the dialect detects.
Ascii = sa.String
Unicode = sa.Unicode
KEY_LENGTH = 512  # the longest encoded key the tables hold (PostgreSQL and SQL Server enforce it)
LABEL_LENGTH = 256  # the longest class label predictions hold; raw drops rows with longer ones, counted
ROW_ID_LENGTH = 256  # the longest row id (scoring_source.row_id) predictions hold; raw drops longer ones, counted
LONG_TEXT = sa.Text().with_variant(mssql.NVARCHAR("max"), "mssql")
DATE = sa.Date().with_variant(mssql.DATE(), "mssql")
TIMESTAMP = sa.DateTime().with_variant(mssql.DATETIME2(), "mssql")
DOUBLE = sa.Double().with_variant(mssql.FLOAT(53), "mssql")


def _key_cols() -> list[sa.Column]:
    """The three columns every per-key table starts with."""
    return [
        sa.Column("use_case", Ascii(64), nullable=False),
        sa.Column("key", Ascii(KEY_LENGTH), nullable=False),  # the encoded key: [A-Za-z0-9_%~.-] only
        sa.Column("run_date", DATE, nullable=False),
    ]


predictions = sa.Table(
    "predictions",
    metadata,
    *_key_cols(),
    sa.Column("row_index", sa.Integer, nullable=False),
    sa.Column("key_label", Unicode(1024), nullable=False),
    sa.Column("row_id", Unicode(ROW_ID_LENGTH), nullable=True),  # the scoring row's id (scoring_source.row_id)
    sa.Column("period", TIMESTAMP, nullable=True),
    sa.Column("period_index", sa.BigInteger, nullable=True),  # an integer period (period NULL)
    sa.Column("kind", Ascii(16), nullable=False),  # forecast | holdout | scoring
    sa.Column("prediction", DOUBLE, nullable=True),
    sa.Column("predicted_label", Unicode(LABEL_LENGTH), nullable=True),
    sa.Column("actual", DOUBLE, nullable=True),
    sa.Column("actual_label", Unicode(LABEL_LENGTH), nullable=True),  # classification/anomaly: the actual class
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
    # rows the stage received, kept, removed and folded into other rows (rows_in = out + dropped + merged)
    sa.Column("rows_in", sa.Integer, nullable=True),
    sa.Column("rows_out", sa.Integer, nullable=True),
    sa.Column("rows_dropped", sa.Integer, nullable=True),
    sa.Column("rows_merged", sa.Integer, nullable=True),
    sa.Column("drop_detail", LONG_TEXT, nullable=True),  # "reason: n; reason: n"
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
    sa.Column("key", Ascii(KEY_LENGTH), nullable=False),
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
    # what ingest saw in the landing zone, and where the run stopped (NULL: it did not stop)
    sa.Column("rows_landed", sa.BigInteger, nullable=True),
    sa.Column("rows_dropped", sa.BigInteger, nullable=True),
    sa.Column("rows_merged", sa.BigInteger, nullable=True),
    sa.Column("files_rejected", sa.Integer, nullable=True),
    sa.Column("stopped_at_stage", Ascii(32), nullable=True),
    sa.Column("stop_reason", LONG_TEXT, nullable=True),
    sa.PrimaryKeyConstraint("use_case", "run_date", "dagster_run_id"),
)

# One row per key column of every published key (``core.keys.decode_key``), so BI can slice by
# store or brand without parsing labels. A key's values never change (the encoded key is made
# of them), so the rows of a key are replaced whenever it is published, whatever the run date.
key_columns = sa.Table(
    "key_columns",
    metadata,
    sa.Column("use_case", Ascii(64), nullable=False),
    sa.Column("key", Ascii(KEY_LENGTH), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),  # 0-based, in the order of the use case's `keys`
    sa.Column("column_name", Unicode(256), nullable=False),
    sa.Column("value", Unicode(1024), nullable=False),
    sa.PrimaryKeyConstraint("use_case", "key", "position"),
)

# The newest migration (migrations/versions/). Bump it with every new revision; a test checks
# that it is Alembic's head. It only spares ensure_schema() the Alembic import when at head.
SCHEMA_REVISION = "0005"

PER_KEY_TABLES = (predictions, key_metrics, key_status)
HISTORY_TABLES = (promotion_history, run_summary)
SNAPSHOT_TABLES = (model_family,)
KEY_TABLES = (key_columns,)  # per key, whatever the run date

# The per-use-case wide key table (``keys_<use case>``) is not in ``metadata``: its columns
# come from the use case. Its name, and every name of ``key_table_columns``, fits PostgreSQL's
# 63-byte identifiers.
KEY_TABLE_PREFIX = "keys_"
_MAX_IDENTIFIER_BYTES = 63

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
    ensure_table: bool = False  # a table outside the migrations (keys_<use case>): create it first


def url_secrets(url: str | sa.URL) -> tuple[str, ...]:
    """The password of a database URL, as an exact secret for :func:`redaction.redact`."""
    try:
        password = sa.make_url(url).password
    except Exception:
        return ()
    return (str(password),) if password else ()


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

    @property
    def enforces_lengths(self) -> bool:
        """Whether the database refuses text longer than its column (DuckDB and SQLite do not)."""
        return sa.make_url(self.url).get_backend_name() not in ("duckdb", "sqlite")

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
                f"warehouse {redact(self.url)} is at schema revision {current!r}, which this version of "
                f"many_models_platform does not know (its newest is {head!r}): upgrade the package"
            )
        if self.read_only:
            raise RuntimeError(
                f"warehouse {redact(self.url)} is not at schema revision {head} and was opened read-only"
            )
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
        with self.replacing(use_case, run_date) as load:
            load(keys, frames, append)

    @contextlib.contextmanager
    def replacing(self, use_case: str, run_date: Any) -> Iterator[LoadBatch]:
        """``load(keys, frames, append)`` a batch of keys at a time (as :meth:`replace_keys`);
        every batch commits together when the block ends, and none if it raises.

        A key may be loaded once per replacement (a second batch would silently replace the
        first on one backend and fail on another). On DuckDB each batch's frames are written to
        Parquet files in a temporary directory and loaded, a table at a time, in the one
        transaction at the end (``INSERT ... SELECT`` from the files is written to disk as it
        goes; Arrow batches appended inside a transaction stay in memory until it commits).
        Elsewhere the transaction is open throughout and each batch is loaded as it comes
        (``COPY`` on PostgreSQL), so the server holds the uncommitted rows, not this process.
        """
        seen: set[str] = set()

        def planned(keys: Sequence[str], frames: Mapping[str, pl.DataFrame] | None, append) -> list[WriteStep]:
            keys = list(dict.fromkeys(keys))
            again = seen.intersection(keys)
            if again:
                raise ValueError(f"keys loaded twice in one replacement, e.g. {sorted(again)[0]!r}")
            seen.update(keys)
            return plan_replace_keys(use_case, run_date, keys, frames or {}, append)

        if self.engine.dialect.name == "duckdb":
            with tempfile.TemporaryDirectory(prefix="mmp-publish-") as folder:
                spool = _Spool(Path(folder))
                yield lambda keys, frames=None, append=None: spool.add(planned(keys, frames, append))
                with self.connect() as conn, conn.begin():
                    spool.load(conn, self._insert)
            return
        with self.connect() as conn, conn.begin():
            yield lambda keys, frames=None, append=None: self._run(conn, planned(keys, frames, append))

    def replace_use_case(self, table_name: str, use_case: str, frame: pl.DataFrame) -> None:
        """Replace every row of a per-use-case snapshot table (``model_family``) in one transaction."""
        self._write(plan_replace_use_case(table_name, use_case, frame))

    def _write(self, steps: Sequence[WriteStep]) -> None:
        with self.connect() as conn, conn.begin():
            self._run(conn, steps)

    def _run(self, conn: sa.Connection, steps: Sequence[WriteStep]) -> None:
        """Each step's deletes, then its load, inside the caller's transaction."""
        for step in steps:
            if step.ensure_table:
                _ensure_table(conn, step.table)
            for statement in step.deletes:
                conn.execute(statement)
            if step.frame is not None and step.frame.height:
                self._insert(conn, step.table, step.frame)

    def _insert(self, conn: sa.Connection, table: sa.Table, frame: pl.DataFrame | list[str]) -> None:
        """Bulk-load ``frame`` (columns in table order) inside the caller's transaction; on
        DuckDB ``frame`` may be a list of Parquet files of such frames (:class:`_Spool`)."""
        dialect = conn.dialect
        if isinstance(frame, list):
            self._insert_parquet(conn, table, frame)
        elif dialect.name == "duckdb":
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

    def _insert_parquet(self, conn: sa.Connection, table: sa.Table, files: list[str]) -> None:
        # one statement for all of a table's batches: DuckDB streams the files into the table
        q = conn.dialect.identifier_preparer
        cols = ", ".join(q.quote(c.name) for c in table.columns)
        sql = f"INSERT INTO {q.format_table(table)} ({cols}) SELECT {cols} FROM read_parquet($files)"
        conn.exec_driver_sql(sql, {"files": files})

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
                    # a driver's message may carry the connection string: never show its password
                    raise redact_exception(exc, url_secrets(self.url))  # noqa: B904 (the chain is kept, masked)
                self.dispose()
                time.sleep(0.5)

    def query(self, sql: str, **params: Any) -> pl.DataFrame:
        with self.connect() as conn:
            result = conn.execute(sa.text(sql), params)
            rows = result.fetchall()
            # types from every row, not the first 100 (a reason that is NULL on the first keys)
            return pl.DataFrame(
                [tuple(r) for r in rows], schema=list(result.keys()), orient="row", infer_schema_length=None
            )

    def table_names(self) -> Iterable[str]:
        return sa.inspect(self.engine).get_table_names()


# ``load(keys, frames, append)`` of :meth:`Warehouse.replacing`
LoadBatch = Callable[..., None]


class _Spool:
    """DuckDB's batches of one replacement: the steps' deletes, and their frames as Parquet files."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.steps: list[WriteStep] = []
        self.files: dict[str, tuple[sa.Table, list[str]]] = {}  # table name -> (table, its files)

    def add(self, steps: Sequence[WriteStep]) -> None:
        for step in steps:
            self.steps.append(WriteStep(step.table, step.deletes, None, step.ensure_table))
            if step.frame is not None and step.frame.height:
                path = self.folder / f"{len(self.steps):06d}.parquet"
                step.frame.write_parquet(path, statistics=False)
                self.files.setdefault(step.table.name, (step.table, []))[1].append(str(path))

    def load(self, conn: sa.Connection, insert: Callable[[sa.Connection, sa.Table, list[str]], None]) -> None:
        """Every delete (batches hold disjoint keys, so their order does not matter), then each
        table's files in one ``INSERT ... SELECT``."""
        for step in self.steps:
            if step.ensure_table:
                _ensure_table(conn, step.table)
            for statement in step.deletes:
                conn.execute(statement)
        for table, files in self.files.values():
            insert(conn, table, files)


# -- frames: every frame that reaches a table has the table's own types ------------------------


def polars_schema(table: sa.Table) -> dict[str, pl.DataType]:
    """The polars type of each column of ``table``: the one place frames get their schema from.

    Frames built from Python records must not let polars guess from the first rows (a reason or
    a metric that is NULL in the first 100 rows made it guess wrong and crash a publish).
    """
    return {c.name: _polars_type(c.type) for c in table.columns}


def _polars_type(kind: sa.types.TypeEngine) -> pl.DataType:
    if isinstance(kind, sa.Integer):  # BigInteger included; the database checks the range
        return pl.Int64()
    if isinstance(kind, sa.Float):  # Double
        return pl.Float64()
    if isinstance(kind, sa.DateTime):
        return pl.Datetime("us")
    if isinstance(kind, sa.Date):
        return pl.Date()
    if isinstance(kind, sa.String):  # Unicode, Text
        return pl.Utf8()
    raise TypeError(f"no polars type for {kind!r}")


def records_frame(table: sa.Table, rows: Iterable[Mapping[str, Any]], **fixed: Any) -> pl.DataFrame:
    """A frame of ``table``'s columns from Python records, each value coerced to its column's type.

    Text columns take any value (as ``str``), numbers may be ints, floats, numpy scalars, None or
    NaN, timestamps may be ISO text or aware datetimes (stored as naive UTC). ``fixed`` gives
    columns one value for every row. A value that cannot be read as its type becomes NULL.
    """
    schema = polars_schema(table)
    coerce = {name: _COERCE[type(dtype)] for name, dtype in schema.items()}
    columns: dict[str, list] = {name: [] for name in schema}
    for row in rows:
        for name, values in columns.items():
            values.append(coerce[name](fixed[name] if name in fixed else row.get(name)))
    return pl.DataFrame(columns, schema=schema)


def _to_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


def _to_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, numbers.Integral):  # bool, int, numpy integers
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number) if math.isfinite(number) else None


def _to_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)  # NaN and infinity stay (SQL Server stores them as NULL)
    except (TypeError, ValueError):
        return None


def _to_datetime(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    elif not isinstance(value, dt.datetime) and isinstance(value, dt.date):
        value = dt.datetime.combine(value, dt.time())
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _to_date(value: Any) -> dt.date | None:
    return None if value is None else _as_date(value)


_COERCE = {
    pl.Utf8: _to_text,
    pl.String: _to_text,
    pl.Int64: _to_int,
    pl.Float64: _to_float,
    pl.Datetime: _to_datetime,
    pl.Date: _to_date,
}


def _ensure_table(conn: sa.Connection, table: sa.Table) -> None:
    """Create ``table``, or drop and recreate it when its columns differ (the use case's key
    columns changed), inside the write's transaction."""
    if sa.inspect(conn).has_table(table.name):
        probe = sa.select(sa.text("*")).select_from(table).where(sa.false())
        if list(conn.execute(probe).keys()) == [c.name for c in table.columns]:
            return
        table.drop(conn)
    table.create(conn)


# -- write plans: the statements a write issues, checked before anything is written ---------


def plan_replace_keys(
    use_case: str,
    run_date: Any,
    keys: Sequence[str],
    frames: Mapping[str, pl.DataFrame],
    append: Mapping[str, pl.DataFrame] | None = None,
) -> list[WriteStep]:
    """The deletes and loads of :meth:`Warehouse.replace_keys`, in execution order.

    ``frames`` may hold ``key_columns`` (one row per key column of each key): its rows replace
    the keys' rows whatever the run date, and the use case's wide table ``keys_<use case>`` is
    built from them and replaced the same way (created, or rebuilt when the key columns changed).
    """
    run_date = _as_date(run_date)
    keys = list(dict.fromkeys(keys))
    unknown = set(frames) - {t.name for t in (*PER_KEY_TABLES, *KEY_TABLES)}
    unknown |= set(append or {}) - {t.name for t in HISTORY_TABLES}
    if unknown:
        raise ValueError(f"not a table this write can replace: {sorted(unknown)}")
    scope = {"use_case": use_case, "run_date": run_date}
    steps = []
    for table in PER_KEY_TABLES:
        frame = _prepare(table, frames.get(table.name), scope)
        _refuse_outside(table, frame, keys, use_case, run_date)
        steps.append(WriteStep(table, _delete_keys(table, keys, use_case=use_case, run_date=run_date), frame))
    if "key_columns" in frames and keys:
        frame = _prepare(key_columns, frames["key_columns"], {"use_case": use_case})
        _refuse_outside(key_columns, frame, keys, use_case)
        steps.append(WriteStep(key_columns, _delete_keys(key_columns, keys, use_case=use_case), frame))
        if frame is not None:
            wide, wide_frame = key_table_frame(use_case, frame)
            steps.append(WriteStep(wide, _delete_keys(wide, keys), wide_frame, ensure_table=True))
    for name, raw in (append or {}).items():
        table = metadata.tables[name]
        frame = _prepare(table, raw, {"use_case": use_case})
        if frame is None:
            continue
        if (frame["use_case"] != use_case).any():
            raise ValueError(f"{name}: rows of another use case than {use_case!r}")
        steps.append(WriteStep(table, tuple(_delete_primary_keys(table, frame)), frame))
    return steps


def _delete_keys(table: sa.Table, keys: Sequence[str], **fixed: Any) -> tuple[sa.Delete, ...]:
    """DELETEs of these keys' rows (and ``fixed`` column values), 500 keys per statement."""
    where = [table.c[c] == v for c, v in fixed.items()]
    return tuple(
        table.delete().where(*where, table.c.key.in_(keys[i : i + _DELETE_CHUNK]))
        for i in range(0, len(keys), _DELETE_CHUNK)
    )


def _refuse_outside(
    table: sa.Table, frame: pl.DataFrame | None, keys: Sequence[str], use_case: str, run_date: dt.date | None = None
) -> None:
    """Rows outside the replaced slice would survive a rerun as duplicates: refuse them."""
    if frame is None:
        return
    outside = (pl.col("use_case") != use_case) | ~pl.col("key").is_in(list(keys))
    if run_date is not None:
        outside = outside | (pl.col("run_date") != run_date)
    bad = frame.filter(outside)
    if bad.height:
        scope = f"({use_case!r}, {run_date}, the given keys)" if run_date else f"({use_case!r}, the given keys)"
        raise ValueError(
            f"{table.name}: {bad.height} rows outside {scope}, e.g. key {bad['key'][0]!r}: "
            "they would not be replaced on a rerun"
        )


# -- the per-use-case key table ---------------------------------------------------------------


def key_table_name(use_case: str) -> str:
    """``keys_<use case>``; a name too long for PostgreSQL ends in a hash of the use case instead."""
    name = f"{KEY_TABLE_PREFIX}{use_case}"
    if len(name) <= _MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha1(use_case.encode()).hexdigest()[:8]
    return f"{name[: _MAX_IDENTIFIER_BYTES - 9]}_{digest}"


def key_table_columns(names: Sequence[str]) -> list[str]:
    """The SQL column of each key column: its name as in the source, quoted by SQLAlchemy.

    A name that clashes with ``key``/``key_label`` or an earlier column (case-insensitively, as
    DuckDB and SQL Server compare names) gets ``_<position>`` (1-based) appended; a name longer
    than 63 bytes is cut to fit first.
    """
    taken = {"key", "key_label"}
    out = []
    for position, name in enumerate(names, start=1):
        column = _fit_identifier(name)
        if not column.strip() or column.casefold() in taken:
            column = _fit_identifier(name, f"_{position}")
        if column.casefold() in taken:
            column = f"key_column_{position}"
        taken.add(column.casefold())
        out.append(column)
    return out


def _fit_identifier(name: str, suffix: str = "") -> str:
    room = _MAX_IDENTIFIER_BYTES - len(suffix.encode())
    return name.encode()[:room].decode(errors="ignore") + suffix


def key_table(use_case: str, names: Sequence[str]) -> sa.Table:
    """The wide key table of a use case: ``key``, ``key_label`` and one text column per key column."""
    name = key_table_name(use_case)
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("key", Ascii(KEY_LENGTH), nullable=False),
        sa.Column("key_label", Unicode(1024), nullable=False),
        *[sa.Column(c, Unicode(1024), nullable=False) for c in key_table_columns(names)],
        sa.PrimaryKeyConstraint("key", name=f"pk_{name}"[:_MAX_IDENTIFIER_BYTES]),
    )


def key_table_frame(use_case: str, long: pl.DataFrame) -> tuple[sa.Table, pl.DataFrame]:
    """(``keys_<use case>``, its rows) from ``key_columns`` rows: one row per key."""
    long = long.sort("key", "position")
    names = long.filter(pl.col("key") == long["key"][0])["column_name"].to_list()
    table = key_table(use_case, names)
    columns = [c.name for c in table.columns][2:]
    rows = []
    for (key,), part in long.group_by("key", maintain_order=True):
        if part["column_name"].to_list() != names:
            raise ValueError(
                f"key_columns: key {key!r} has key columns {part['column_name'].to_list()}, others {names}"
            )
        values = part["value"].to_list()
        label = ", ".join(f"{n}={v}" for n, v in zip(names, values, strict=True))
        rows.append({"key": key, "key_label": label, **dict(zip(columns, values, strict=True))})
    return table, records_frame(table, rows)


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
    """The frame's columns in table order and types (:func:`polars_schema`), timestamps as naive
    UTC, a nullable column it lacks as NULL (files of an earlier version); rejects duplicate
    primary keys."""
    if frame is None or frame.height == 0:
        return None
    missing = {k: v for k, v in defaults.items() if k not in frame.columns}
    if missing:
        frame = frame.with_columns([pl.lit(v).alias(k) for k, v in missing.items()])
    frame = frame.with_columns(
        pl.lit(None, dtype=_polars_type(c.type)).alias(c.name)
        for c in table.columns
        if c.nullable and c.name not in frame.columns
    )
    absent = [c.name for c in table.columns if c.name not in frame.columns]
    if absent:
        raise ValueError(f"{table.name}: frame lacks columns {absent}")
    frame = frame.select([c.name for c in table.columns])
    want = polars_schema(table)
    fixes = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            fixes.append(pl.col(name).dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(want[name]))
        elif dtype != want[name]:
            fixes.append(pl.col(name).cast(want[name]))
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
