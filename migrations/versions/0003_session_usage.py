"""session usage: input and output tokens, cost in USD, and a budget in USD

Revision ID: 0003_session_usage
Revises: 0002_violation_counts
"""
from alembic import op
import sqlalchemy as sa


revision = '0003_session_usage'
down_revision = '0002_violation_counts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL means "not reported": an agent that prints no usage has none, not zero.
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('input_tokens', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('output_tokens', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('cost_usd', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('budget_usd', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('budget_usd')
        batch_op.drop_column('cost_usd')
        batch_op.drop_column('output_tokens')
        batch_op.drop_column('input_tokens')
