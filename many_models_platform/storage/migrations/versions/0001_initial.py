"""The six published tables: predictions, key_metrics, key_status, promotion_history,
run_summary, model_family.

Revision ID: 0001
Revises:
Create Date: 2025-06-01

Also adopts a warehouse made before migrations existed (``metadata.create_all``, no
``alembic_version``): a table that exists is kept with its rows; its missing nullable
columns are added (``promotion_history.decided_by``) and its 4-byte float columns are
widened to DOUBLE (the oldest warehouses). A missing NOT NULL column cannot be added to a
table with rows, so that stops the upgrade with a message. Offline (``--sql``) it creates
every table.
"""

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mssql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The types as of this revision (see storage/warehouse.py for why each is what it is).
LONG_TEXT = sa.Text().with_variant(mssql.NVARCHAR("max"), "mssql")
DATE = sa.Date().with_variant(mssql.DATE(), "mssql")
TIMESTAMP = sa.DateTime().with_variant(mssql.DATETIME2(), "mssql")
DOUBLE = sa.Double().with_variant(mssql.FLOAT(53), "mssql")


def _key_cols() -> list[sa.Column]:
    return [
        sa.Column("use_case", sa.String(64), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("run_date", DATE, nullable=False),
    ]


def _predictions() -> list:
    return [
        *_key_cols(),
        sa.Column("row_index", sa.Integer, nullable=False),
        sa.Column("key_label", sa.Unicode(1024), nullable=False),
        sa.Column("period", TIMESTAMP, nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("prediction", DOUBLE, nullable=True),
        sa.Column("predicted_label", sa.Unicode(256), nullable=True),
        sa.Column("actual", DOUBLE, nullable=True),
        sa.Column("model_name", sa.String(600), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("dagster_run_id", sa.String(64), nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("use_case", "key", "run_date", "row_index", name="pk_predictions"),
    ]


def _key_metrics() -> list:
    return [
        *_key_cols(),
        sa.Column("model_role", sa.String(16), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("value", DOUBLE, nullable=True),
        sa.Column("model_name", sa.String(600), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("estimator", sa.String(128), nullable=True),
        sa.Column("dagster_run_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("use_case", "key", "run_date", "model_role", "metric", name="pk_key_metrics"),
    ]


def _key_status() -> list:
    return [
        *_key_cols(),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("key_label", sa.Unicode(1024), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", LONG_TEXT, nullable=True),
        sa.Column("dagster_run_id", sa.String(64), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("use_case", "key", "run_date", "stage", name="pk_key_status"),
    ]


def _promotion_history() -> list:
    return [
        *_key_cols(),
        sa.Column("decided_at", TIMESTAMP, nullable=False),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("reason", LONG_TEXT, nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("candidate_version", sa.Integer, nullable=True),
        sa.Column("candidate_value", DOUBLE, nullable=True),
        sa.Column("champion_version", sa.Integer, nullable=True),
        sa.Column("champion_value", DOUBLE, nullable=True),
        sa.Column("production_version", sa.Integer, nullable=True),
        sa.Column("decided_by", sa.Unicode(256), nullable=True),
        sa.Column("dagster_run_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("use_case", "key", "run_date", "dagster_run_id", name="pk_promotion_history"),
    ]


def _run_summary() -> list:
    return [
        sa.Column("use_case", sa.String(64), nullable=False),
        sa.Column("run_date", DATE, nullable=False),
        sa.Column("dagster_run_id", sa.String(64), nullable=False),
        sa.Column("keys_total", sa.Integer, nullable=False),
        sa.Column("keys_published", sa.Integer, nullable=False),
        sa.Column("keys_failed", sa.Integer, nullable=False),
        sa.Column("keys_promoted", sa.Integer, nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("metric_p10", DOUBLE, nullable=True),
        sa.Column("metric_p50", DOUBLE, nullable=True),
        sa.Column("metric_p90", DOUBLE, nullable=True),
        sa.Column("published_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("use_case", "run_date", "dagster_run_id", name="pk_run_summary"),
    ]


def _model_family() -> list:
    return [
        sa.Column("use_case", sa.String(64), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("key_label", sa.Unicode(1024), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("candidate_version", sa.Integer, nullable=True),
        sa.Column("candidate_value", DOUBLE, nullable=True),
        sa.Column("production_version", sa.Integer, nullable=True),
        sa.Column("production_source_version", sa.Integer, nullable=True),
        sa.Column("production_value", DOUBLE, nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("snapshot_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("use_case", "key", name="pk_model_family"),
    ]


TABLES: dict[str, Callable[[], list]] = {
    "predictions": _predictions,
    "key_metrics": _key_metrics,
    "key_status": _key_status,
    "promotion_history": _promotion_history,
    "run_summary": _run_summary,
    "model_family": _model_family,
}

# information_schema.columns.data_type of a 4-byte float: DuckDB, PostgreSQL, SQL Server
SINGLE_PRECISION = {"float", "real", "float4"}


def upgrade() -> None:
    if context.is_offline_mode():
        for name, spec in TABLES.items():
            op.create_table(name, *spec())
        return
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for name, spec in TABLES.items():
        if name not in existing:
            op.create_table(name, *spec())
        else:
            _adopt(bind, name, [c for c in spec() if isinstance(c, sa.Column)])


def _adopt(bind: sa.Connection, name: str, columns: list[sa.Column]) -> None:
    """Bring a table made by ``metadata.create_all`` (before migrations) to this revision."""
    present = _column_types(bind, name)
    for column in columns:
        found = present.get(column.name)
        if found is None:
            if not column.nullable:
                raise RuntimeError(
                    f"warehouse table {name} lacks NOT NULL column {column.name}: add it by hand "
                    "(or drop the table to have it recreated), then rerun"
                )
            op.add_column(name, column)
        elif isinstance(column.type, sa.Double) and found.lower() in SINGLE_PRECISION:
            op.alter_column(name, column.name, type_=column.type, existing_nullable=column.nullable)


def _column_types(bind: sa.Connection, table: str) -> dict[str, str]:
    schema = "SCHEMA_NAME()" if bind.dialect.name == "mssql" else "current_schema()"
    rows = bind.execute(
        sa.text(
            "SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_name = :table AND table_schema = {schema}"
        ),
        {"table": table},
    )
    return {r[0]: r[1] for r in rows}


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
