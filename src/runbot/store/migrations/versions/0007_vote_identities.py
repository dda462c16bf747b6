"""approval votes record the person counted and on whose behalf a host user acted (`--as`)

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-02 04:20:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('approval_votes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('person', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('on_behalf_of', sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('approval_votes', schema=None) as batch_op:
        batch_op.drop_column('on_behalf_of')
        batch_op.drop_column('person')
