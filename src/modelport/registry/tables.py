"""The registry's SQL schema (SQLAlchemy Core); Alembic migrations evolve it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from modelport.connections.sql import UTCDateTime

metadata = MetaData()

models = Table(
    "mp_models",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("description", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    # the last version number issued: numbers are never reused, even after a delete
    Column("last_version", Integer, nullable=False, server_default=text("0")),
)

versions = Table(
    "mp_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), ForeignKey("mp_models.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("flavor", String(32), nullable=False),
    Column("options", JSON, nullable=False),
    Column("signature", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("profile", JSON, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(128), nullable=True),
    UniqueConstraint("name", "version", name="uq_mp_versions_name_version"),
)

aliases = Table(
    "mp_aliases",
    metadata,
    Column("name", String(128), ForeignKey("mp_models.name"), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

alias_events = Table(
    "mp_alias_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, index=True),
    Column("alias", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # set | rollback | remove
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(128), nullable=True),
    Column("reason", Text, nullable=True),
)
