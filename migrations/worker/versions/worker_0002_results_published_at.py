"""chimp_inspection.resultsPublishedAt: two-phase completion, so results-ready is never lost.

The completion commit and the results-ready publish cannot be one transaction; a worker killed
between them used to leave a done inspection that nobody announced. ``resultsPublishedAt`` is
set only after the broker confirms the event, so "done and NULL" is a debt a redelivered
message can see and pay. Inspections completed before this revision were announced by the
old code (best effort): they are backfilled with their completion time so that they are not
announced a second time.

Revision ID: worker_0002
Revises: worker_0001
Create Date: 2026-11-25 02:29:09.571686

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'worker_0002'
down_revision: Union[str, Sequence[str], None] = 'worker_0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('chimp_inspection', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resultsPublishedAt', sa.DateTime(), nullable=True, comment='when the broker confirmed results-ready; NULL while done: still owed'))
    op.execute(
        "UPDATE chimp_inspection SET resultsPublishedAt = completedAt WHERE state = 'done'"
    )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('chimp_inspection', schema=None) as batch_op:
        batch_op.drop_column('resultsPublishedAt')
