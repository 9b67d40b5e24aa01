"""session events: agent output chunks compressed with lz4 instead of pglz on PostgreSQL (issue 16)

A chatty agent's 12 MB of output, stored in ~1 MB `lines` rows, cost PostgreSQL ~300 ms of CPU to
compress with the default pglz, on the cores the agent and the worker share; lz4 takes ~120 ms. Only new
values are compressed the new way (no rewrite). A server built without lz4, or older than 14, keeps pglz.

Revision ID: 0004_events_lz4
Revises: 0003_session_usage
"""
from alembic import op


revision = '0004_events_lz4'
down_revision = '0003_session_usage'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(
        "DO $$ BEGIN EXECUTE 'ALTER TABLE session_events ALTER COLUMN data SET COMPRESSION lz4'; "
        "EXCEPTION WHEN feature_not_supported OR syntax_error THEN NULL; END $$")


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(
        "DO $$ BEGIN EXECUTE 'ALTER TABLE session_events ALTER COLUMN data SET COMPRESSION default'; "
        "EXCEPTION WHEN feature_not_supported OR syntax_error THEN NULL; END $$")
