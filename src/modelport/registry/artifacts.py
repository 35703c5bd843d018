"""Artifact stores: content-addressed blobs on a filesystem or an S3-compatible store.

An artifact is a folder a flavor wrote, packed into a deterministic tar archive and
named by its sha256. The digest is verified every time an artifact is fetched, and an
archive is unpacked only after every member has been checked: no absolute paths, no
`..`, no links, no devices.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from modelport.errors import ArtifactError, IntegrityError, UnsafeArtifact

CHUNK = 1 << 20


class ArtifactStore(ABC):
    """Where packed artifacts live, keyed by sha256."""

    url: str

    @abstractmethod
    def put(self, archive: Path, sha256: str) -> None:
        """Store `archive` under its digest (a no-op when it is already there)."""

    @abstractmethod
    def open(self, sha256: str, dest: Path) -> None:
        """Copy the archive named `sha256` to the file `dest`."""

    @abstractmethod
    def delete(self, sha256: str) -> None: ...

    def fetch(self, sha256: str, cache_dir: Path) -> Path:
        """Verified, unpacked folder of an artifact; cached, re-verified on each fetch."""
        target = cache_dir / sha256
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            archive = Path(tmp) / "artifact.tar"
            self.open(sha256, archive)
            actual, _ = digest(archive)
            if actual != sha256:
                raise IntegrityError(
                    f"artifact {sha256[:12]} fails its checksum (found {actual[:12]}): it was "
                    "changed after registration; refusing to load it"
                )
            if target.is_dir():
                return target
            unpack(archive, Path(tmp) / "unpacked")
            try:
                os.replace(Path(tmp) / "unpacked", target)
            except OSError:
                if not target.is_dir():  # another process won the race: same bytes
                    raise
        return target


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, archive: Path, sha256: str) -> None:
        path = self._path(sha256)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{sha256}.{os.getpid()}.tmp")
        shutil.copyfile(archive, tmp)
        os.replace(tmp, path)  # atomic: readers never see half a file

    def open(self, sha256: str, dest: Path) -> None:
        try:
            shutil.copyfile(self._path(sha256), dest)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {sha256[:12]} is missing from {self.root}") from None

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)


class S3ArtifactStore(ArtifactStore):
    """`s3://bucket/prefix`; any S3-compatible endpoint (MinIO, moto) via `endpoint_url`."""

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        import boto3

        self.url = url
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, sha256: str) -> str:
        return "/".join(p for p in (self.prefix, "sha256", sha256) if p)

    def put(self, archive: Path, sha256: str) -> None:
        try:
            self.client.upload_file(str(archive), self.bucket, self._key(sha256))
        except Exception as exc:
            raise ArtifactError(f"cannot upload to {self.url}: {exc}") from exc

    def open(self, sha256: str, dest: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._key(sha256), str(dest))
        except Exception as exc:
            raise ArtifactError(f"cannot fetch artifact {sha256[:12]} from {self.url}: {exc}") \
                from exc

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))


def open_store(url: str, *, endpoint_url: str | None = None) -> ArtifactStore:
    if url.startswith("s3://"):
        return S3ArtifactStore(url, endpoint_url)
    if "://" in url:
        raise ArtifactError(f"unsupported artifact store {url!r}: use a path or s3://bucket")
    return LocalArtifactStore(url)


def pack(folder: Path, archive: Path) -> tuple[str, int]:
    """Pack `folder` into a deterministic tar; return its (sha256, size)."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                raise UnsafeArtifact(f"artifact folder holds a symlink: {path.relative_to(folder)}")
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isdir():
                tar.addfile(info)
            else:
                with path.open("rb") as f:
                    tar.addfile(info, f)
    return digest(archive)


def unpack(archive: Path, dest: Path) -> None:
    """Unpack after checking every member; raises UnsafeArtifact naming the bad one."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                check_member(m)
            dest.mkdir(parents=True)
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as exc:
        raise ArtifactError(f"artifact archive is unreadable: {exc}") from exc


def check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArtifact(f"artifact member {name!r} has an absolute path")
    if ".." in parts:
        raise UnsafeArtifact(f"artifact member {name!r} escapes the artifact folder ('..')")
    if member.issym() or member.islnk():
        raise UnsafeArtifact(f"artifact member {name!r} is a link")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArtifact(f"artifact member {name!r} is not a regular file or folder")


def digest(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size

