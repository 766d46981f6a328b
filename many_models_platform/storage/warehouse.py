"""The SQL warehouse BI reads: DuckDB file by default, PostgreSQL, or Synapse/SQL Server.

Writes are idempotent per (use case, key, run date): the delete and the insert of a batch
run in one transaction, so a rerun or a crash never leaves duplicates or half a key. Every
value goes through bound parameters; key values never reach SQL text.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl
import sqlalchemy as sa

metadata = sa.MetaData()

_key_cols = lambda: [  # noqa: E731 - the three columns every per-key table starts with
    sa.Column("use_case", sa.String(64), nullable=False),
    sa.Column("key", sa.String(512), nullable=False),
    sa.Column("run_date", sa.Date, nullable=False),
]

predictions = sa.Table(
    "predictions",
    metadata,
    *_key_cols(),
    sa.Column("row_index", sa.Integer, nullable=False),
    sa.Column("key_label", sa.String(1024), nullable=False),
    sa.Column("period", sa.DateTime, nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),  # forecast | holdout | scoring
    sa.Column("prediction", sa.Double, nullable=True),
    sa.Column("predicted_label", sa.String(256), nullable=True),
    sa.Column("actual", sa.Double, nullable=True),
    sa.Column("model_name", sa.String(600), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("dagster_run_id", sa.String(64), nullable=False),
    sa.Column("published_at", sa.DateTime, nullable=False),
    sa.PrimaryKeyConstraint("use_case", "key", "run_date", "row_index"),
)

key_metrics = sa.Table(
    "key_metrics",
    metadata,
    *_key_cols(),
    sa.Column("model_role", sa.String(16), nullable=False),  # candidate | champion
    sa.Column("metric", sa.String(32), nullable=False),
    sa.Column("value", sa.Double, nullable=True),
    sa.Column("model_name", sa.String(600), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("estimator", sa.String(128), nullable=True),
    sa.Column("dagster_run_id", sa.String(64), nullable=False),
    sa.PrimaryKeyConstraint("use_case", "key", "run_date", "model_role", "metric"),
)

key_status = sa.Table(
    "key_status",
    metadata,
    *_key_cols(),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("key_label", sa.String(1024), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # ok | failed | skipped | missing
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("dagster_run_id", sa.String(64), nullable=True),
    sa.Column("updated_at", sa.DateTime, nullable=True),
    sa.PrimaryKeyConstraint("use_case", "key", "run_date", "stage"),
)

promotion_history = sa.Table(
    "promotion_history",
    metadata,
    *_key_cols(),
    sa.Column("decided_at", sa.DateTime, nullable=False),
    sa.Column("decision", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("metric", sa.String(32), nullable=False),
    sa.Column("candidate_version", sa.Integer, nullable=True),
    sa.Column("candidate_value", sa.Double, nullable=True),
    sa.Column("champion_version", sa.Integer, nullable=True),
    sa.Column("champion_value", sa.Double, nullable=True),
    sa.Column("production_version", sa.Integer, nullable=True),
    sa.Column("decided_by", sa.String(256), nullable=True),
    sa.Column("dagster_run_id", sa.String(64), nullable=False),  # or "rollback-<id>" for a manual rollback
    sa.PrimaryKeyConstraint("use_case", "key", "run_date", "dagster_run_id"),
)

model_family = sa.Table(
    "model_family",
    metadata,
    sa.Column("use_case", sa.String(64), nullable=False),
    sa.Column("key", sa.String(512), nullable=False),
    sa.Column("key_label", sa.String(1024), nullable=False),
    sa.Column("metric", sa.String(32), nullable=False),
    sa.Column("candidate_version", sa.Integer, nullable=True),
    sa.Column("candidate_value", sa.Double, nullable=True),
    sa.Column("production_version", sa.Integer, nullable=True),
    sa.Column("production_source_version", sa.Integer, nullable=True),
    sa.Column("production_value", sa.Double, nullable=True),
    sa.Column("status", sa.String(32), nullable=False),  # current | behind | unpromoted | production_only
    sa.Column("snapshot_at", sa.DateTime, nullable=False),
    sa.PrimaryKeyConstraint("use_case", "key"),
)

run_summary = sa.Table(
    "run_summary",
    metadata,
    sa.Column("use_case", sa.String(64), nullable=False),
    sa.Column("run_date", sa.Date, nullable=False),
    sa.Column("dagster_run_id", sa.String(64), nullable=False),
    sa.Column("keys_total", sa.Integer, nullable=False),
    sa.Column("keys_published", sa.Integer, nullable=False),
    sa.Column("keys_failed", sa.Integer, nullable=False),
    sa.Column("keys_promoted", sa.Integer, nullable=False),
    sa.Column("metric", sa.String(32), nullable=False),
    sa.Column("metric_p10", sa.Double, nullable=True),
    sa.Column("metric_p50", sa.Double, nullable=True),
    sa.Column("metric_p90", sa.Double, nullable=True),
    sa.Column("published_at", sa.DateTime, nullable=False),
    sa.PrimaryKeyConstraint("use_case", "run_date", "dagster_run_id"),
)

PER_KEY_TABLES = (predictions, key_metrics, key_status)
_DELETE_CHUNK = 500


class Warehouse:
    def __init__(self, url: str, read_only: bool = False):
        self.url = url
        self.read_only = read_only
        self._engine: sa.Engine | None = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            args = {"read_only": True} if self.read_only and self.url.startswith("duckdb") else {}
            self._engine = sa.create_engine(self.url, connect_args=args)
        return self._engine

    def dispose(self) -> None:
        """Release the file lock (DuckDB allows one writer process) once a stage is done."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def ensure_schema(self) -> None:
        with self._connect() as conn, conn.begin():
            metadata.create_all(conn)

    def replace_keys(
        self,
        use_case: str,
        run_date: Any,
        keys: Sequence[str],
        frames: dict[str, pl.DataFrame],
        append: dict[str, pl.DataFrame] | None = None,
    ) -> None:
        """Replace these keys' rows for ``run_date`` in every per-key table, in one transaction.

        ``append`` rows (promotion history, run summary) are inserted in the same transaction,
        after deleting any row with the same primary key, so reruns stay idempotent.
        """
        with self._connect() as conn, conn.begin():
            for table in PER_KEY_TABLES:
                for i in range(0, len(keys), _DELETE_CHUNK):
                    conn.execute(
                        table.delete().where(
                            table.c.use_case == use_case,
                            table.c.run_date == run_date,
                            table.c.key.in_(keys[i : i + _DELETE_CHUNK]),
                        )
                    )
                frame = frames.get(table.name)
                if frame is not None and frame.height:
                    self._insert(conn, table, frame)
            for name, frame in (append or {}).items():
                if frame.height:
                    table = metadata.tables[name]
                    pk = [c.name for c in table.primary_key.columns]
                    for row in frame.select(pk).unique().iter_rows(named=True):
                        conn.execute(table.delete().where(*[table.c[c] == v for c, v in row.items()]))
                    self._insert(conn, table, frame)

    def replace_use_case(self, table_name: str, use_case: str, frame: pl.DataFrame) -> None:
        """Replace every row of a per-use-case snapshot table (``model_family``) in one transaction."""
        table = metadata.tables[table_name]
        with self._connect() as conn, conn.begin():
            conn.execute(table.delete().where(table.c.use_case == use_case))
            if frame.height:
                self._insert(conn, table, frame)

    def _connect(self, wait_seconds: float = 120.0) -> sa.Connection:
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

    def _insert(self, conn: sa.Connection, table: sa.Table, frame: pl.DataFrame) -> None:
        frame = frame.select([c.name for c in table.columns])
        if conn.dialect.name == "duckdb":
            # DuckDB's fast path: scan an Arrow table instead of binding row by row.
            raw = conn.connection.driver_connection
            view = f"_mmp_{table.name}_batch"
            raw.register(view, frame.to_arrow())
            try:
                conn.exec_driver_sql(f'INSERT INTO "{table.name}" SELECT * FROM "{view}"')
            finally:
                raw.unregister(view)
        else:
            conn.execute(table.insert(), frame.to_dicts())

    def query(self, sql: str, **params: Any) -> pl.DataFrame:
        with self._connect() as conn:
            result = conn.execute(sa.text(sql), params)
            rows = result.fetchall()
            return pl.DataFrame([tuple(r) for r in rows], schema=list(result.keys()), orient="row")

    def table_names(self) -> Iterable[str]:
        return sa.inspect(self.engine).get_table_names()
