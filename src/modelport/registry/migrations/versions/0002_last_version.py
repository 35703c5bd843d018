"""Version numbers are never reused: each model keeps a counter of the last one issued.

Before, the next number was max(version) + 1, so deleting the newest version let the
next registration take its number again, and `iris:3` in an old audit trail, a log or
a deployment note would name a different model than the one it did.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("mp_models", sa.Column("last_version", sa.Integer, nullable=False,
                                         server_default=sa.text("0")))
    op.execute(
        "UPDATE mp_models SET last_version = COALESCE("
        "(SELECT MAX(v.version) FROM mp_versions v WHERE v.name = mp_models.name), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("mp_models") as batch:
        batch.drop_column("last_version")
