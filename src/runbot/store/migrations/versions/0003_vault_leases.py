"""vault leases: dynamic credentials tracked with the run that obtained them (ids and TTLs, never values)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 08:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import runbot.store.types

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('vault_leases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lease_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('step_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('path', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('renewable', sa.Boolean(), nullable=False),
    sa.Column('ttl_seconds', sa.Integer(), nullable=False),
    sa.Column('renewals', sa.Integer(), nullable=False),
    sa.Column('issued_at', runbot.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', runbot.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_renewed_at', runbot.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', runbot.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoke_reason', sa.Text(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('vault_leases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vault_leases_lease_id'), ['lease_id'], unique=True)
        batch_op.create_index(batch_op.f('ix_vault_leases_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_vault_leases_revoked_at'), ['revoked_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('vault_leases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vault_leases_revoked_at'))
        batch_op.drop_index(batch_op.f('ix_vault_leases_run_id'))
        batch_op.drop_index(batch_op.f('ix_vault_leases_lease_id'))

    op.drop_table('vault_leases')
