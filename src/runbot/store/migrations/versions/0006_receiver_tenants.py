"""receivers are tenants, sliced unpacking, Grafana extras

Alerts are keyed by (receiver, fingerprint, startsAt) instead of (fingerprint, startsAt), incidents carry
the receiver they belong to, a big delivery's progress is recorded as it is unpacked (big notifications are
unpacked in slices, in a table of its own), and alerts keep the fields a Grafana contact point adds (links, values).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_KEY = 'uq_alerts_receiver_fingerprint_starts'
# SQLite's constraint from 0001 has no name: name it for the batch copy so it can be dropped
SQLITE_NAMES = {'uq': 'uq_%(table_name)s_%(column_0_name)s_%(column_1_name)s'}


def _old_key_name(conn: sa.Connection) -> str | None:
    for uc in sa.inspect(conn).get_unique_constraints('alerts'):
        if uc['column_names'] == ['fingerprint', 'starts_at']:
            return uc['name']
    return None


def upgrade() -> None:
    conn = op.get_bind()
    sqlite = conn.dialect.name == 'sqlite'
    op.execute("UPDATE alerts SET receiver = '' WHERE receiver IS NULL")
    old = _old_key_name(conn)
    with op.batch_alter_table('alerts', schema=None,
                              naming_convention=SQLITE_NAMES if sqlite else None) as batch_op:
        if old is not None or sqlite:
            batch_op.drop_constraint(old or 'uq_alerts_fingerprint_starts_at', type_='unique')
        batch_op.alter_column('receiver', existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                              server_default='')
        batch_op.add_column(sa.Column('extras', sa.JSON(), nullable=True))
        batch_op.create_unique_constraint(NEW_KEY, ['receiver', 'fingerprint', 'starts_at'])
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('receiver', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                      server_default=''))
    # an existing incident belongs to the receiver of its alerts
    op.execute("UPDATE incidents SET receiver = coalesce((SELECT min(alerts.receiver) FROM alerts "
               "WHERE alerts.incident_id = incidents.id), '')")
    op.create_table('webhook_delivery_progress',
    sa.Column('delivery_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('unpacked', sa.Integer(), nullable=False),
    sa.Column('new', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('delivery_id')
    )


def downgrade() -> None:
    op.drop_table('webhook_delivery_progress')
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.drop_column('receiver')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_constraint(NEW_KEY, type_='unique')
        batch_op.drop_column('extras')
        batch_op.alter_column('receiver', existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=True,
                              server_default=None)
        batch_op.create_unique_constraint('alerts_fingerprint_starts_at_key', ['fingerprint', 'starts_at'])
