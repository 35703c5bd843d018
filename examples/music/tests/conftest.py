"""Shared fixtures: a small generated data set (made once) and an isolated registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from modelport import Registry, Settings

from music.data import Config, Dataset, generate
from music.interactions import normalize

DATA = Config(users=600, tracks=2_000, listens=60_000, seed=7)
"""The data set of the trainer's tests: big enough for ALS to beat popularity clearly."""


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
