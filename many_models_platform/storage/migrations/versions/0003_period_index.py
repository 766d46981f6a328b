"""Integer periods in predictions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

* ``predictions`` gains ``period_index`` (BIGINT, nullable): a use case whose time column is an
  integer period index (``frequency: period``, or integers that are not calendar times) publishes
  its periods there, with ``period`` NULL. Before, such a period was cast to a timestamp and read
  as microseconds after 1970 (period 44287 became ``1970-01-01 00:00:00.044287``).

The column is nullable, so a table with rows takes it as it is; a warehouse made by
``metadata.create_all`` of this version already has it. Offline (``--sql``) it writes the statement.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from many_models_platform.storage.migrations import column_names

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if context.is_offline_mode() or "period_index" not in column_names(op.get_bind(), "predictions"):
        op.add_column("predictions", sa.Column("period_index", sa.BigInteger, nullable=True))


def downgrade() -> None:
    op.drop_column("predictions", "period_index")
