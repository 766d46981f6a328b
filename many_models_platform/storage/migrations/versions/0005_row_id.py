"""The scoring row's own id in predictions.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08

* ``predictions`` gains ``row_id`` (Unicode(256), nullable): the value of the use case's
  ``scoring_source.row_id`` column on the scoring row a prediction was made for (a customer id,
  a Kaggle test.csv's ``id``), so scored rows join back to the rows the user sent. NULL on
  holdout rows, on forecast periods without a scoring row, and when no row id is configured.

The column is nullable, so a table with rows takes it as it is; a warehouse made by
``metadata.create_all`` of this version already has it. Offline (``--sql``) it writes the statement.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from many_models_platform.storage.migrations import column_names

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if context.is_offline_mode() or "row_id" not in column_names(op.get_bind(), "predictions"):
        op.add_column("predictions", sa.Column("row_id", sa.Unicode(256), nullable=True))


def downgrade() -> None:
    op.drop_column("predictions", "row_id")
