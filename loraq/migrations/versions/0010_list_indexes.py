"""list indexes

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 05:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# (table, index, columns): each list query's filter then its newest-first order, in one index.
INDEXES = [
    ("jobs", "ix_jobs_project_id_status_seq", ["project_id", "status", "seq"]),
    ("job_events", "ix_job_events_job_id_seq", ["job_id", "seq"]),
    ("checkpoints", "ix_checkpoints_job_id_seq", ["job_id", "seq"]),
    ("files", "ix_files_project_id_purpose_seq", ["project_id", "purpose", "seq"]),
]


def upgrade() -> None:
    for table, name, columns in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    for table, name, _columns in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(name)
