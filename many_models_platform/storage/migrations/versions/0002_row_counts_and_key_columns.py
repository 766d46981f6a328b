"""Row counts where users look, and key columns for BI.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-10

* ``key_status`` gains ``rows_in``, ``rows_out``, ``rows_dropped``, ``rows_merged`` and
  ``drop_detail`` (each stage's per-key row accounting);
* ``run_summary`` gains ``rows_landed``, ``rows_dropped``, ``rows_merged``, ``files_rejected``,
  ``stopped_at_stage`` and ``stop_reason``;
* new table ``key_columns``: one row per key column of each published key.

Every new column is nullable, so tables with rows take them as they are. A column or table that
is already there (a warehouse made by ``metadata.create_all`` of this version) is kept. Offline
(``--sql``) it writes every statement.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mssql

from many_models_platform.storage.migrations import column_names

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The types as of this revision (see storage/warehouse.py for why each is what it is).
LONG_TEXT = sa.Text().with_variant(mssql.NVARCHAR("max"), "mssql")


def _new_columns() -> dict[str, list[sa.Column]]:
    return {
        "key_status": [
            sa.Column("rows_in", sa.Integer, nullable=True),
            sa.Column("rows_out", sa.Integer, nullable=True),
            sa.Column("rows_dropped", sa.Integer, nullable=True),
            sa.Column("rows_merged", sa.Integer, nullable=True),
            sa.Column("drop_detail", LONG_TEXT, nullable=True),
        ],
        "run_summary": [
            sa.Column("rows_landed", sa.BigInteger, nullable=True),
            sa.Column("rows_dropped", sa.BigInteger, nullable=True),
            sa.Column("rows_merged", sa.BigInteger, nullable=True),
            sa.Column("files_rejected", sa.Integer, nullable=True),
            sa.Column("stopped_at_stage", sa.String(32), nullable=True),
            sa.Column("stop_reason", LONG_TEXT, nullable=True),
        ],
    }


def _key_columns() -> list:
    return [
        sa.Column("use_case", sa.String(64), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("column_name", sa.Unicode(256), nullable=False),
        sa.Column("value", sa.Unicode(1024), nullable=False),
        sa.PrimaryKeyConstraint("use_case", "key", "position", name="pk_key_columns"),
    ]


def upgrade() -> None:
    offline = context.is_offline_mode()
    bind = None if offline else op.get_bind()
    for table, columns in _new_columns().items():
        present = set() if offline else column_names(bind, table)
        for column in columns:
            if column.name not in present:
                op.add_column(table, column)
    if offline or "key_columns" not in set(sa.inspect(bind).get_table_names()):
        op.create_table("key_columns", *_key_columns())


def downgrade() -> None:
    op.drop_table("key_columns")
    for table, columns in _new_columns().items():
        for column in reversed(columns):
            op.drop_column(table, column.name)
