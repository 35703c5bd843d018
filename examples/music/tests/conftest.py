"""A small embedded system, prepared once per session and copied for each test.

Preparing runs the real setup (`music.bootstrap`: generated data, tables, a trained and
gated model, the nightly batch) on a small data set, so the tests exercise the same
path `music up` takes; each test gets its own copy, free to post listens.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from modelport import Registry, Settings

from music import bootstrap
from music.als import AlsParams
from music.data import Config, Dataset, generate
from music.interactions import normalize
from music.system import System

SMALL = Config(users=60, tracks=400, listens=8_000, days=60, seed=1)
FAST = AlsParams(factors=16, regularization=0.1, alpha=10.0, iterations=8)
REDIS_URL = os.environ.get("MODELPORT_TEST_REDIS", "redis://127.0.0.1:6379/15")
PG_URL = os.environ.get("MODELPORT_TEST_POSTGRES",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NATS_URL = os.environ.get("MUSIC_TEST_NATS", "nats://127.0.0.1:4222")


DATA = Config(users=600, tracks=2_000, listens=60_000, seed=7)
"""The data set of the trainer's tests: big enough for ALS to beat popularity clearly."""


def quiet(_: str) -> None:
    return None


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("template") / ".modelport"
    system = System(home=home)
    data = bootstrap.ensure_data(system, SMALL, say=quiet)
    bootstrap.ensure_tables(system, data, say=quiet)
    bootstrap.ensure_model(system, data, params=FAST, say=quiet)
    asyncio.run(bootstrap.ensure_topk(system, say=quiet))
    return home


@pytest.fixture
def system(prepared: Path, tmp_path: Path) -> System:
    home = tmp_path / ".modelport"
    shutil.copytree(prepared, home)
    return System(home=home)


def reachable(url: str, default_port: int) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1",
                                       parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def require(name: str, url: str, port: int) -> None:
    if reachable(url, port):
        return
    message = f"{name} is not reachable at {url}"
    if os.environ.get("MODELPORT_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def services() -> dict[str, str]:
    """The real PostgreSQL, Redis and NATS of this machine (skipped when absent)."""
    require("PostgreSQL", PG_URL, 5432)
    require("Redis", REDIS_URL, 6379)
    require("NATS", NATS_URL, 4222)
    return {"database": PG_URL, "redis": REDIS_URL, "broker": NATS_URL}


@pytest.fixture
def redis_url() -> str:
    require("Redis", REDIS_URL, 6379)
    return REDIS_URL


# --- the trainer's tests: generated data, an isolated registry ---------------------------


@pytest.fixture(scope="session")
def small_config() -> Config:
    return DATA


@pytest.fixture(scope="session")
def small(small_config: Config) -> Dataset:
    return generate(small_config)


@pytest.fixture(scope="session")
def events(small: Dataset) -> pd.DataFrame:
    """The small data set's listens in the interactions schema."""
    return normalize(small.listens)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose registry, artifacts and cache live in this test's tmp folder."""
    return Settings(home=tmp_path / "home")


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    with Registry(settings=settings) as reg:
        yield reg
