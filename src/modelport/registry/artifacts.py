"""Artifact stores: content-addressed blobs on a filesystem or an S3-compatible store.

An artifact is a folder a flavor wrote, packed into a deterministic tar archive (see
`archive`) and named by its sha256. The digest is verified every time an artifact is
fetched for loading, so a blob changed after registration is refused, and an archive
is unpacked only after every member has been checked.

`s3_errors` is the one place where boto3/botocore exceptions become modelport errors.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelport.errors import (
    ArtifactError,
    ConfigError,
    IntegrityError,
    ModelportError,
    NotReady,
    UnsafeArtifact,
)
from modelport.registry.archive import check_member, digest, pack, unpack

SHA256 = re.compile(r"[0-9a-f]{64}")


def check_digest(sha256: str) -> None:
    """Digests become file names and object keys: never let one be a path."""
    if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
        raise UnsafeArtifact(f"{sha256!r} is not a sha256 digest (64 lowercase hex digits)")


class ArtifactStore(ABC):
    """Where packed artifacts live, keyed by sha256."""

    url: str

    @abstractmethod
    def put(self, archive: Path, sha256: str) -> None:
        """Store `archive` under its digest (a no-op when it is already there, intact)."""

    @abstractmethod
    def open(self, sha256: str, dest: Path) -> None:
        """Copy the archive named `sha256` to the file `dest`."""

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the archive; a no-op when it is not there."""

    def fetch(self, sha256: str, cache_dir: Path, *, label: str | None = None) -> Path:
        """Verified, unpacked folder of an artifact.

        The archive is fetched and its sha256 checked on every call, even when the
        unpacked folder is already cached: the store is what can change behind the
        registry's back. `label` (e.g. `iris:3`) names the version in errors.
        """
        check_digest(sha256)
        target = cache_dir / sha256
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as tmp:
            archive = Path(tmp) / "artifact.tar"
            self.open(sha256, archive)
            actual, _ = digest(archive)
            if actual != sha256:
                raise IntegrityError(
                    f"{label or 'artifact'}: the stored artifact fails its checksum "
                    f"(sha256 {actual[:12]}…, the registry recorded {sha256[:12]}…): it was "
                    f"changed or corrupted after registration, so it will not be loaded; "
                    f"restore it in {self.url} or register the model again"
                )
            if target.is_dir():
                return target
            unpack(archive, Path(tmp) / "unpacked")
            try:
                os.replace(Path(tmp) / "unpacked", target)
            except OSError:
                if not target.is_dir():  # else another process won the race: same bytes
                    raise
        return target


class LocalArtifactStore(ArtifactStore):
    """`<root>/sha256/<first two hex digits>/<sha256>`, written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.url = str(self.root)

    def _path(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, archive: Path, sha256: str) -> None:
        path = self._path(sha256)
        # a blob already there is kept only if intact: registering again heals a damaged one
        if path.is_file() and digest(path)[0] == sha256:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sha256[:12]}.", suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(archive, tmp)
                os.replace(tmp, path)  # atomic: readers never see half a file
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            raise ArtifactError(f"cannot store artifact {sha256[:12]} in {self.root}: {exc}") \
                from exc

    def open(self, sha256: str, dest: Path) -> None:
        try:
            shutil.copyfile(self._path(sha256), dest)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {sha256[:12]} is missing from {self.root}") from None
        except OSError as exc:
            raise ArtifactError(f"cannot read artifact {sha256[:12]}: {exc}") from exc

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        try:
            self._path(sha256).unlink(missing_ok=True)
        except OSError as exc:
            raise ArtifactError(f"cannot delete artifact {sha256[:12]}: {exc}") from exc


class S3ArtifactStore(ArtifactStore):
    """`s3://bucket/prefix`; any S3-compatible endpoint (MinIO, moto) via `endpoint_url`.

    Credentials and region come from boto3's usual sources (AWS_* variables,
    ~/.aws, an instance role).
    """

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        try:
            import boto3
        except ImportError:
            raise ConfigError(
                f"artifact store {url} needs boto3: pip install 'modelport[s3]'") from None
        self.url = url
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigError(f"artifact store {url!r} names no bucket: use s3://bucket/prefix")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        with s3_errors(f"artifact store {url}"):
            try:
                self.client: Any = boto3.client("s3", endpoint_url=endpoint_url)
            except ValueError as exc:  # e.g. a malformed endpoint URL
                raise ConfigError(f"S3 endpoint {endpoint_url!r}: {exc}") from exc

    def _key(self, sha256: str) -> str:
        check_digest(sha256)
        return "/".join(p for p in (self.prefix, "sha256", sha256) if p)

    def put(self, archive: Path, sha256: str) -> None:
        # always uploaded: cheap next to training, idempotent, and it heals a damaged blob
        with s3_errors(f"cannot upload artifact {sha256[:12]} to {self.url}"):
            self.client.upload_file(str(archive), self.bucket, self._key(sha256))

    def open(self, sha256: str, dest: Path) -> None:
        with s3_errors(f"cannot fetch artifact {sha256[:12]} from {self.url}"):
            self.client.download_file(self.bucket, self._key(sha256), str(dest))

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        with s3_errors(f"cannot look up artifact {sha256[:12]} in {self.url}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))
            except ClientError as exc:
                if _code(exc) in NOT_FOUND:
                    return False
                raise
        return True

    def delete(self, sha256: str) -> None:
        with s3_errors(f"cannot delete artifact {sha256[:12]} from {self.url}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))


NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Translate boto3/botocore errors raised inside into modelport errors.

    `what` says what was being done; the S3 error code and message follow it.
    """
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ModelportError:
        raise
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        # boto3's transfer manager wraps the S3 error (S3UploadFailedError from a
        # ClientError): translate the error that says what actually went wrong
        cause = exc.__cause__ or exc.__context__
        inner = cause if isinstance(exc, Boto3Error) and isinstance(cause, ClientError) else exc
        raise _translate(inner, what) from exc


def _translate(exc: Exception, what: str) -> ModelportError:
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, ClientError):
        code, message = _code(exc), exc.response.get("Error", {}).get("Message", "")
        if code in NOT_FOUND:
            return ArtifactError(f"{what}: it is missing from the store")
        if code == "NoSuchBucket" or code in DENIED:  # the deployment's settings are wrong
            return ConfigError(f"{what}: {code} {message}".rstrip())
        return ArtifactError(f"{what}: {code} {message}".rstrip())
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ConfigError(f"{what}: no usable AWS credentials ({exc})")
    if isinstance(exc, ConnectionError):  # endpoint unreachable, timeouts
        return NotReady(f"{what}: the object store is unreachable ({exc})")
    return ArtifactError(f"{what}: {exc}")


def open_store(url: str, *, endpoint_url: str | None = None) -> ArtifactStore:
    """A directory (or `file://` URL) or `s3://bucket/prefix`."""
    if url.startswith("s3://"):
        return S3ArtifactStore(url, endpoint_url)
    if url.startswith("file://"):
        return LocalArtifactStore(url.removeprefix("file://"))
    if "://" in url:
        raise ConfigError(f"unsupported artifact store {url!r}: use a directory or s3://bucket")
    return LocalArtifactStore(url)


__all__ = [
    "ArtifactStore",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "check_digest",
    "check_member",
    "digest",
    "open_store",
    "pack",
    "unpack",
]
