"""chimp_image_result.targetRule: which rule computed an image's targets and dispense point.

The worker now computes crystal targets and dispense points by the published CHiMP arithmetic
(at the detector's 1352 x 1688 input, rounded half to even) unless ``target_rule = original``
is chosen. Every result records its rule so that results made by another rule than the one
configured are stale (``replay --rule-changed``). Results stored before this revision were all
computed at the original resolution: they are backfilled with 'original'.

Revision ID: worker_0004
Revises: worker_0003
Create Date: 2026-12-06 14:30:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'worker_0004'
down_revision: Union[str, Sequence[str], None] = 'worker_0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('chimp_image_result', schema=None) as batch_op:
        batch_op.add_column(sa.Column('targetRule', sa.String(length=16), nullable=True, comment='published | original: how targets and the dispense point were computed'))
    op.execute("UPDATE chimp_image_result SET targetRule = 'original' WHERE state = 'done'")


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('chimp_image_result', schema=None) as batch_op:
        batch_op.drop_column('targetRule')
