"""Artifacts in an S3-compatible store: moto's server on a loopback port stands in for
S3 (it speaks the real HTTP protocol, so boto3 is exercised end to end)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from registry_helpers import X, register

from modelport import Registry, Settings
from modelport.errors import ArtifactError, ConfigError, IntegrityError, NotReady

pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and nothing read from the developer's own AWS setup."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def bucket(s3_endpoint: str, aws_env: None) -> str:
    name = f"models-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def reg(tmp_path: Path, s3_endpoint: str, bucket: str) -> Iterator[Registry]:
    settings = Settings(home=tmp_path / "home", artifacts=f"s3://{bucket}/team/models",
                        s3_endpoint_url=s3_endpoint)
    with Registry(settings=settings) as r:
        yield r


def test_round_trip(reg: Registry, s3: Any, bucket: str) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    data = rng.normal(size=(60, 3))
    clf = LogisticRegression().fit(data, (data[:, 0] > 0).astype(int))
    mv = reg.register("clf", clf, sample_input=data[:5])
    key = f"team/models/sha256/{mv.sha256}"
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == mv.size
    assert not any((reg.settings.home / "artifacts").glob("*"))  # nothing went to disk
    reg.set_alias("clf", "production", 1)
    np.testing.assert_array_equal(reg.load("clf@production").predict(data), clf.predict(data))


def test_a_tampered_object_is_refused(reg: Registry, s3: Any, bucket: str) -> None:
    sha = reg.get_version("m", register(reg, "m")).sha256
    key = f"team/models/sha256/{sha}"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[100] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    with pytest.raises(IntegrityError, match="m:1: the stored artifact fails its checksum"):
        reg.load("m:1", trusted=True)


def test_delete_removes_the_object(reg: Registry, s3: Any, bucket: str) -> None:
    sha = reg.get_version("m", register(reg, "m")).sha256
    assert reg.artifacts.exists(sha)
    reg.delete_version("m", 1)
    assert not reg.artifacts.exists(sha)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_a_missing_object_is_a_clear_error(reg: Registry, s3: Any, bucket: str) -> None:
    sha = reg.get_version("m", register(reg, "m")).sha256
    s3.delete_object(Bucket=bucket, Key=f"team/models/sha256/{sha}")
    with pytest.raises(ArtifactError, match="is missing from the store"):
        reg.load("m:1", trusted=True)


def test_a_missing_bucket_is_a_config_error(
        tmp_path: Path, s3_endpoint: str, aws_env: None) -> None:
    settings = Settings(home=tmp_path / "home", s3_endpoint_url=s3_endpoint)
    with Registry(artifacts="s3://no-such-bucket", settings=settings) as reg:
        with pytest.raises(ConfigError, match="NoSuchBucket"):
            register(reg, "m")
        with pytest.raises(Exception, match="no model named"):
            reg.list_versions("m")  # nothing was recorded


def test_an_unreachable_endpoint_is_not_ready(tmp_path: Path, aws_env: None) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(home=tmp_path / "home", s3_endpoint_url=f"http://127.0.0.1:{port}")
    with Registry(artifacts="s3://bucket", settings=settings) as reg, \
            pytest.raises(NotReady, match="unreachable"):
        reg.artifacts.exists("0" * 64)


def test_a_registry_on_s3_serves_what_another_process_registered(
        reg: Registry, tmp_path: Path) -> None:
    """A second registry (another replica) on the same database and bucket: its own
    cache is empty, so it fetches and verifies from S3."""
    register(reg, "m")
    other = Settings(home=tmp_path / "replica", registry_url=reg.settings.resolved_registry_url,
                     artifacts=reg.settings.artifacts, s3_endpoint_url=reg.settings.s3_endpoint_url)
    with Registry(settings=other) as replica:
        assert replica.load("m:1", trusted=True).predict(X).tolist() == \
            (X.sum(axis=1) * 2).tolist()
