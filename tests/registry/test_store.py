"""The SQL side of the registry: migrations, URLs, error translation, timestamps,
and the rollback rule on its own."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from registry_helpers import register
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import StatementError

from modelport import Registry, Settings
from modelport.connections.sql import parse_url
from modelport.errors import ConfigError, NotReady
from modelport.registry import database
from modelport.registry.database import MIGRATIONS, VERSION_TABLE, schema_revision
from modelport.registry.store import AliasEvent, Store, previous_version
from modelport.registry.tables import metadata, models

HEAD = "0002"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.close()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


# --- migrations ---------------------------------------------------------------------


def test_a_new_registry_is_at_the_latest_revision(store: Store) -> None:
    assert schema_revision(store.engine) == HEAD
    tables = set(inspect(store.engine).get_table_names())
    assert {VERSION_TABLE, "mp_models", "mp_versions", "mp_aliases",
            "mp_alias_events"} <= tables
    with store.engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() \
            == [HEAD]
        # the migrations build exactly the schema that tables.py declares
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_reopening_is_a_no_op(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(db_url).close()

    def fail(*_: object, **__: object) -> None:
        raise AssertionError("an up-to-date registry must not run migrations")

    monkeypatch.setattr(database.command, "upgrade", fail)
    reopened = Store(db_url)
    assert schema_revision(reopened.engine) == HEAD
    reopened.close()


def test_an_up_to_date_registry_opens_read_only(tmp_path: Path) -> None:
    """Opening takes no write lock unless there is something to migrate."""
    home = tmp_path / "home"
    with Registry(settings=Settings(home=home)) as reg:
        register(reg, "m")
    url = f"sqlite:///file:{home / 'registry.db'}?mode=ro&uri=true"
    with Registry(url=url, settings=Settings(home=home)) as reader:
        assert reader.resolve("m").version == 1
        with pytest.raises(NotReady, match="readonly"):
            reader.set_alias("m", "production", 1)


def test_an_old_registry_is_upgraded_and_keeps_its_data(
        db_url: str, tmp_path: Path) -> None:
    """A registry made by the first release (revision 0001) opens and upgrades in place."""
    engine = create_engine(parse_url(db_url))
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO mp_models (name, created_at) VALUES ('m', :t)"),
                      {"t": now})
        for v in (1, 2, 5):
            conn.execute(text(
                "INSERT INTO mp_versions (name, version, flavor, options, signature, "
                "metrics, params, tags, profile, sha256, size, created_at) VALUES "
                "('m', :v, 'python', '{}', '{}', '{}', '{}', '{}', '{}', :sha, 1, :t)"),
                {"v": v, "sha": "0" * 64, "t": now})
    engine.dispose()
    reg = Registry(url=db_url, settings=Settings(home=tmp_path / "home"))
    try:
        assert schema_revision(reg.store.engine) == HEAD
        assert reg.store.latest_version("m") == 5
        assert register(reg, "m") == 6  # the counter was filled from the existing versions
    finally:
        reg.close()


def test_a_newer_schema_is_refused(db_url: str) -> None:
    Store(db_url).close()
    engine = create_engine(parse_url(db_url))
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(ConfigError, match="0099, newer than this modelport knows"):
        Store(db_url)


# --- URLs and errors ----------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_an_unreachable_database_is_not_ready_and_hides_its_password() -> None:
    url = f"postgresql://scott:tiger-secret@127.0.0.1:{_closed_port()}/registry"
    with pytest.raises(NotReady) as err:
        Store(url)
    assert err.value.status_code == 503
    assert "unavailable" in str(err.value)
    assert "tiger-secret" not in str(err.value)
    assert "scott:***@127.0.0.1" in str(err.value)


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://x/y", "mysql+nosuchdriver://h/db"])
def test_an_unusable_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        Store(url)


def test_postgres_scheme_spellings_mean_psycopg(pg_url: str) -> None:
    for scheme in ("postgres://", "postgresql://"):
        store = Store(scheme + pg_url.split("://", 1)[1])
        assert store.engine.dialect.driver == "psycopg"
        store.close()


def test_default_location_is_a_sqlite_file_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    with Registry(settings=settings) as reg:
        register(reg, "m")
    assert (tmp_path / "home" / "registry.db").is_file()
    assert any((tmp_path / "home" / "artifacts" / "sha256").rglob("*"))
    assert Settings(home=Path("~/mp")).home == Path.home() / "mp"


def test_timestamps_are_utc_whatever_the_zone_given(store: Store) -> None:
    in_tokyo = datetime(2030, 1, 1, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    with store.engine.begin() as conn:
        conn.execute(models.insert().values(name="m", created_at=in_tokyo, last_version=0))
    with store.engine.connect() as conn:
        got = conn.execute(models.select()).mappings().one()["created_at"]
    assert got == datetime(2030, 1, 1, 0, 0, tzinfo=UTC)
    assert got.utcoffset() == timedelta(0)
    with pytest.raises(StatementError, match="timezone-aware"), store.engine.begin() as conn:
        conn.execute(models.insert().values(name="n", created_at=datetime(2030, 1, 1),
                                            last_version=0))


# --- the rollback rule --------------------------------------------------------------


def _events(*moves: tuple[str, int | None]) -> list[AliasEvent]:
    at = datetime.now(UTC)
    return [AliasEvent(name="m", alias="prod", kind=kind, from_version=None, to_version=to,
                       at=at, actor=None, reason=None) for kind, to in moves]


@pytest.mark.parametrize(("moves", "current", "expected"), [
    ([("set", 1)], 1, None),
    ([("set", 1), ("set", 2)], 2, 1),
    ([("set", 1), ("set", 2), ("set", 3)], 3, 2),
    ([("set", 1), ("set", 2), ("set", 3), ("rollback", 2)], 2, 1),
    ([("set", 1), ("set", 2), ("set", 3), ("rollback", 2), ("rollback", 1)], 1, None),
    ([("set", 1), ("set", 2), ("rollback", 1), ("set", 3)], 3, 1),
    ([("set", 1), ("set", 2), ("remove", None), ("set", 3)], 3, None),
    ([("set", 1), ("set", 2), ("set", 2)], 2, 1),  # a repeated set is not a move
    ([("set", 1), ("set", 2)], 1, None),  # history disagrees with the alias: no guess
])
def test_previous_version(moves: list[tuple[str, int | None]], current: int,
                          expected: int | None) -> None:
    assert previous_version(_events(*moves), current) == expected
