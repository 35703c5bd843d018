"""The connection helpers every component shares: redaction, backoff, SQL errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from modelport.connections import backoff_delay, redact, retry, unavailable
from modelport.connections.sql import sql_error
from modelport.errors import ConfigError, ModelportError, NotReady


def test_a_url_loses_its_password_and_a_webhook_also_its_path() -> None:
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact("redis://[::1]:6379/0") == "redis://[::1]:6379/0"
    assert redact("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact("https://u:pw@hooks.example/T000/B000/XXXX", path=False) == \
        "https://hooks.example/…"


def test_backoff_doubles_up_to_its_cap_and_jitter_keeps_half() -> None:
    assert [backoff_delay(a, 0.1, cap=0.5) for a in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert backoff_delay(10_000, 0.1, cap=30.0) == 30.0  # a long outage does not overflow
    pauses = [backoff_delay(3, 1.0, jitter=True) for _ in range(200)]
    assert all(4.0 <= p <= 8.0 for p in pauses) and len(set(pauses)) > 1


async def test_retry_gives_up_after_its_retries_and_on_what_is_not_transient() -> None:
    calls: list[int] = []

    async def failing() -> int:
        calls.append(1)
        raise OSError("refused")

    with pytest.raises(OSError, match="refused"):
        await retry(failing, retries=2, backoff=0.001, transient=lambda e: True)
    assert len(calls) == 3
    with pytest.raises(OSError, match="refused"):
        await retry(failing, retries=2, backoff=0.001, transient=lambda e: False)
    assert len(calls) == 4


def test_unavailable_names_the_service_with_the_errors_first_line() -> None:
    error = unavailable("Redis redis://cache:6379/0", OSError("refused\nmore detail"))
    assert isinstance(error, NotReady)
    assert error.message == "Redis redis://cache:6379/0 is unavailable: refused"


def _raised(url: str, sql: str) -> sa_exc.SQLAlchemyError:
    with pytest.raises(sa_exc.SQLAlchemyError) as info, create_engine(url).connect() as conn:
        conn.execute(text(sql))
    return info.value


def test_sql_errors_split_outages_from_wrong_queries(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    wrong = sql_error("SQL database x", _raised(url, "SELEKT 1"))
    assert type(wrong) is ModelportError and wrong.status_code == 500
    assert wrong.message.startswith("SQL database x failed: near \"SELEKT\"")

    locker = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        locked = sql_error("SQL database x",
                           _raised(f"{url}?timeout=0", "CREATE TABLE t (id INTEGER)"))
    finally:
        locker.close()
    assert isinstance(locked, NotReady)
    assert locked.message == "SQL database x is unavailable: database is locked"

    absent = sql_error("SQL database x", sa_exc.NoSuchTableError("scores"))
    assert isinstance(absent, ConfigError)
    assert absent.message == "SQL database x has no table scores"
