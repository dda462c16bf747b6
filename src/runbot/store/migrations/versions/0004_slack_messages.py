"""slack message refs and seen deliveries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 10:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import runbot.store.types

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('slack_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('approval_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('ts', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('thread_ts', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('rendered_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', runbot.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', runbot.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('slack_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_slack_messages_key'), ['key'], unique=True)
        batch_op.create_index(batch_op.f('ix_slack_messages_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_slack_messages_approval_id'), ['approval_id'], unique=False)

    op.create_table('slack_seen_events',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('seen_at', runbot.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('slack_seen_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_slack_seen_events_seen_at'), ['seen_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('slack_seen_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_slack_seen_events_seen_at'))
    op.drop_table('slack_seen_events')
    with op.batch_alter_table('slack_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_slack_messages_approval_id'))
        batch_op.drop_index(batch_op.f('ix_slack_messages_run_id'))
        batch_op.drop_index(batch_op.f('ix_slack_messages_key'))
    op.drop_table('slack_messages')
