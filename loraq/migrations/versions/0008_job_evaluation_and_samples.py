"""job evaluation and samples

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 05:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_samples",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("base_output", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_samples_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_job_samples")),
        sa.UniqueConstraint("id", name=op.f("uq_job_samples_id")),
    )
    with op.batch_alter_table("job_samples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_samples_job_id"), ["job_id"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("samples", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("sample_max_new_tokens", sa.Integer(), server_default="64", nullable=False)
        )
        batch_op.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("base_samples", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("base_samples")
        batch_op.drop_column("evaluation")
        batch_op.drop_column("sample_max_new_tokens")
        batch_op.drop_column("samples")
    with op.batch_alter_table("job_samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_samples_job_id"))
    op.drop_table("job_samples")
