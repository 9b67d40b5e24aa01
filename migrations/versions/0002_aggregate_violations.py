"""violations aggregated: one row per (session, kind, resource, operation) with a count

Revision ID: 0002_violation_counts
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002_violation_counts'
down_revision = '0001'
branch_labels = None
depends_on = None

# Longest resource kept (characters): a PostgreSQL btree entry must stay under ~2.7 kB.
RESOURCE_LIMIT = 512
_SAME = ("v2.session_id = violations.session_id AND v2.kind = violations.kind "
         "AND v2.resource = violations.resource AND v2.operation = violations.operation")


def upgrade() -> None:
    with op.batch_alter_table('violations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('count', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('first_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_at', sa.DateTime(timezone=True), nullable=True))
    op.execute(f"UPDATE violations SET resource = substr(resource, 1, {RESOURCE_LIMIT}) "
               f"WHERE length(resource) > {RESOURCE_LIMIT}")
    # Fold the rows written one per violation into the oldest row of each group.
    op.execute(f"UPDATE violations SET count = (SELECT count(*) FROM violations v2 WHERE {_SAME}), "
               f"first_at = (SELECT min(v2.created_at) FROM violations v2 WHERE {_SAME}), "
               f"last_at = (SELECT max(v2.created_at) FROM violations v2 WHERE {_SAME})")
    op.execute("DELETE FROM violations WHERE id NOT IN (SELECT min(id) FROM violations "
               "GROUP BY session_id, kind, resource, operation)")
    with op.batch_alter_table('violations', schema=None) as batch_op:
        batch_op.alter_column('count', server_default=None)
        batch_op.alter_column('first_at', existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.alter_column('last_at', existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.create_unique_constraint(batch_op.f('uq_violations_session_id'),
                                          ['session_id', 'kind', 'resource', 'operation'])


def downgrade() -> None:
    with op.batch_alter_table('violations', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_violations_session_id'), type_='unique')
        batch_op.drop_column('last_at')
        batch_op.drop_column('first_at')
        batch_op.drop_column('count')
