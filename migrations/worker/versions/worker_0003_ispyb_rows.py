"""chimp_ispyb_row: the ISPyB rows the worker wrote, so re-processing never destroys staff work.

Re-processing used to delete every auto BLSubSample of an image and the dispense point it had
written. On a facility's ISPyB that unqueued points staff had queued (ContainerQueueSample is
ON DELETE CASCADE), failed on collected ones (DataCollection, RESTRICT) and replaced dispense
points staff had moved. The worker now records each row it inserts (which analyser, the
coordinates it wrote) and replaces only its own unreferenced, unedited rows.

Rows written before this revision are backfilled from chimp_detection (auto sub-samples) and
chimp_image_result (dispense points), with the coordinates the worker computed: a row staff
moved in the meantime is recognised as edited and kept.

Revision ID: worker_0003
Revises: worker_0002
Create Date: 2026-12-02 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import context, op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


# revision identifiers, used by Alembic.
revision: str = 'worker_0003'
down_revision: Union[str, Sequence[str], None] = 'worker_0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

ID11 = sa.Integer().with_variant(mysql.INTEGER(display_width=11, unsigned=True), 'mariadb').with_variant(mysql.INTEGER(display_width=11, unsigned=True), 'mysql')
ID10 = sa.Integer().with_variant(mysql.INTEGER(display_width=10, unsigned=True), 'mariadb').with_variant(mysql.INTEGER(display_width=10, unsigned=True), 'mysql')

BACKFILL_SUBSAMPLES = """
INSERT INTO chimp_ispyb_row
  (tableName, rowId, blSampleId, blSampleImageId, analyser, posX, posY, score, createdAt)
SELECT 'BLSubSample', d.blSubSampleId, ss.blSampleId, d.blSampleImageId,
       COALESCE(r.analyser, 'chimp'), p.posX, p.posY, d.score, r.updatedAt
FROM chimp_detection d
JOIN chimp_image_result r ON r.blSampleImageId = d.blSampleImageId
JOIN BLSubSample ss ON ss.blSubSampleId = d.blSubSampleId
LEFT JOIN Position p ON p.positionId = ss.positionId
WHERE d.blSubSampleId IS NOT NULL AND ss.source = 'auto'
"""

BACKFILL_DISPENSE = """
INSERT INTO chimp_ispyb_row
  (tableName, rowId, blSampleId, blSampleImageId, analyser, posX, posY, score, createdAt)
SELECT 'BLSamplePosition', r.blSamplePositionId, bp.blSampleId, r.blSampleImageId,
       COALESCE(r.analyser, 'chimp'), r.dispenseX, r.dispenseY, NULL, r.updatedAt
FROM chimp_image_result r
JOIN BLSamplePosition bp ON bp.blSamplePositionId = r.blSamplePositionId
WHERE r.blSamplePositionId IS NOT NULL
"""


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('chimp_ispyb_row',
    sa.Column('tableName', sa.String(length=32), nullable=False, comment='BLSubSample or BLSamplePosition'),
    sa.Column('rowId', ID11, autoincrement=False, nullable=False, comment='blSubSampleId or blSamplePositionId'),
    sa.Column('blSampleId', ID10, nullable=False),
    sa.Column('blSampleImageId', ID11, nullable=False, comment='the image whose result wrote the row'),
    sa.Column('analyser', sa.String(length=32), nullable=False, comment='chimp or baseline'),
    sa.Column('posX', sa.Double(), nullable=True, comment='x as written, image pixels'),
    sa.Column('posY', sa.Double(), nullable=True, comment='y as written, image pixels'),
    sa.Column('score', sa.Float(), nullable=True, comment='detector score of a target'),
    sa.Column('createdAt', sa.DateTime(), nullable=False),
    sa.Column('keptReason', sa.String(length=64), nullable=True, comment="why re-processing kept it, e.g. 'queued by staff'; NULL: current"),
    sa.Column('keptAt', sa.DateTime(), nullable=True),
    sa.CheckConstraint("tableName IN ('BLSubSample', 'BLSamplePosition')", name='chimp_ispyb_row_table_ck'),
    sa.PrimaryKeyConstraint('tableName', 'rowId'),
    comment='chimp-worker: ISPyB rows it wrote (sub-samples, dispense points), kept why'
    )
    with op.batch_alter_table('chimp_ispyb_row', schema=None) as batch_op:
        batch_op.create_index('chimp_ispyb_row_image_idx', ['blSampleImageId'], unique=False)
        batch_op.create_index('chimp_ispyb_row_sample_idx', ['blSampleId', 'tableName'], unique=False)

    # Offline (--sql, for a DBA): the ISPyB tables are there. Online: only when they are (a
    # worker-only upgrade of an empty database has nothing to backfill from).
    if context.is_offline_mode() or sa.inspect(op.get_bind()).has_table('BLSubSample'):
        op.execute(BACKFILL_SUBSAMPLES)
        op.execute(BACKFILL_DISPENSE)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('chimp_ispyb_row', schema=None) as batch_op:
        batch_op.drop_index('chimp_ispyb_row_sample_idx')
        batch_op.drop_index('chimp_ispyb_row_image_idx')

    op.drop_table('chimp_ispyb_row')
