"""Class labels of the actuals in predictions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

* ``predictions`` gains ``actual_label`` (Unicode(256), nullable): the actual class of a
  classification row (``'yes'``, ``'churned'``) and the actual 1/0 of an anomaly row, as text
  next to ``predicted_label``, so BI compares the two. Before, a text class was cast to the
  DOUBLE ``actual`` and published as NULL.

The column is nullable, so a table with rows takes it as it is; a warehouse made by
``metadata.create_all`` of this version already has it. Offline (``--sql``) it writes the statement.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from many_models_platform.storage.migrations import column_names

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if context.is_offline_mode() or "actual_label" not in column_names(op.get_bind(), "predictions"):
        op.add_column("predictions", sa.Column("actual_label", sa.Unicode(256), nullable=True))


def downgrade() -> None:
    op.drop_column("predictions", "actual_label")
