"""session events: a `lines` row's events as zstd-compressed JSON in `blob` (issue 16)

A chatty agent's 200,000 lines were ~12 MB of JSON text in `data`, which PostgreSQL parsed (the json
type checks its input) and compressed again (lz4) on the cores the agent and the worker share: 80-90 ms
of its CPU per session, and most of the wait at the end of the agent step. The worker now sends the
chunk compressed (zstd, ~14 ms for the same lines), stored as is: EXTERNAL storage, so PostgreSQL never
tries to compress it again. Rows written before keep their events in `data` and read as before;
downgrade moves every blob's events back into `data`.

Revision ID: 0005_events_blob
Revises: 0004_events_lz4
"""
import json

import sqlalchemy as sa
import zstandard
from alembic import op


revision = '0005_events_blob'
down_revision = '0004_events_lz4'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('session_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('blob', sa.LargeBinary(), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE session_events ALTER COLUMN blob SET STORAGE EXTERNAL")


def downgrade() -> None:
    bind = op.get_bind()
    events = sa.table('session_events', sa.column('id', sa.BigInteger()), sa.column('data', sa.JSON()),
                      sa.column('blob', sa.LargeBinary()))
    rows = bind.execute(sa.select(events.c.id, events.c.blob).where(events.c.blob.is_not(None))).all()
    decompressor = zstandard.ZstdDecompressor()
    for row in rows:  # the events as they were stored before 0005 (a damaged blob stops it here)
        data = json.loads(decompressor.decompress(row.blob))
        bind.execute(sa.update(events).where(events.c.id == row.id).values(data=data))
    with op.batch_alter_table('session_events', schema=None) as batch_op:
        batch_op.drop_column('blob')
