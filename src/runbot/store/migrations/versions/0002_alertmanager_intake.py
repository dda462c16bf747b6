"""alertmanager intake: pending marker and grouping on alerts, throttle records, rejected webhook bodies

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 08:14:23.591382
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import runbot.store.types

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alert_throttles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('alert_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('runbook_name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('incident_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('at', runbot.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('alert_throttles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_throttles_alert_id'), ['alert_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_alert_throttles_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_alert_throttles_runbook_name'), ['runbook_name'], unique=False)

    op.create_table('webhook_rejects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('received_at', runbot.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('receiver', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('body_size', sa.Integer(), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('truncated', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_rejects', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_rejects_received_at'), ['received_at'], unique=False)

    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('group_key', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('group_labels', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('pending_since', runbot.store.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('note', sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_alerts_group_key'), ['group_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_alerts_pending_since'), ['pending_since'], unique=False)

    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reopened', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.drop_column('reopened')

    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alerts_pending_since'))
        batch_op.drop_index(batch_op.f('ix_alerts_group_key'))
        batch_op.drop_column('note')
        batch_op.drop_column('pending_since')
        batch_op.drop_column('group_labels')
        batch_op.drop_column('group_key')

    with op.batch_alter_table('webhook_rejects', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_rejects_received_at'))

    op.drop_table('webhook_rejects')
    with op.batch_alter_table('alert_throttles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alert_throttles_runbook_name'))
        batch_op.drop_index(batch_op.f('ix_alert_throttles_at'))
        batch_op.drop_index(batch_op.f('ix_alert_throttles_alert_id'))

    op.drop_table('alert_throttles')
