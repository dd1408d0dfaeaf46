"""chat completions

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 05:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chat_requests",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("adapter_id", sa.String(length=64), nullable=True),
        sa.Column("adapter_key", sa.String(length=255), nullable=True),
        sa.Column("generation", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_chat_requests_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_chat_requests")),
        sa.UniqueConstraint("id", name=op.f("uq_chat_requests_id")),
    )
    with op.batch_alter_table("chat_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_chat_requests_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_chat_requests_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("chat_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_chat_requests_created_at"))
        batch_op.drop_index(batch_op.f("ix_chat_requests_project_id"))
    op.drop_table("chat_requests")
