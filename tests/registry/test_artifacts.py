"""Artifacts: deterministic packing, safe unpacking, integrity checks on every load."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_helpers import Doubler, X, blob, register
from sqlalchemy import update

from modelport import Registry, Settings
from modelport.errors import ArtifactError, ConfigError, IntegrityError, UnsafeArtifact
from modelport.registry.archive import digest, pack, unpack
from modelport.registry.artifacts import LocalArtifactStore, S3ArtifactStore, open_store
from modelport.registry.tables import versions


@pytest.fixture
def reg(settings: Settings) -> Iterator[Registry]:
    """A SQLite registry: integrity is the artifact store's business, not the database's."""
    with Registry(settings=settings) as r:
        yield r


# --- packing ------------------------------------------------------------------------


def _model_folder(root: Path) -> Path:
    folder = root / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"\x00weights" * 100)
    (folder / "sub" / "config.json").write_text('{"a": 1}')
    return folder


def test_pack_is_deterministic(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    first = pack(folder, tmp_path / "a.tar")
    os.utime(folder / "model.bin", (1, 1))
    (folder / "sub" / "config.json").chmod(0o600)
    assert pack(folder, tmp_path / "b.tar") == first
    assert first == digest(tmp_path / "a.tar")
    unpack(tmp_path / "a.tar", tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "config.json").read_text() == '{"a": 1}'


def test_pack_refuses_symlinks_and_special_files(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    (folder / "link").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeArtifact, match="symlink: link"):
        pack(folder, tmp_path / "a.tar")
    (folder / "link").unlink()
    os.mkfifo(folder / "pipe")
    with pytest.raises(UnsafeArtifact, match="special file: pipe"):
        pack(folder, tmp_path / "a.tar")


def test_pack_stores_hard_links_as_plain_files(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    os.link(folder / "model.bin", folder / "copy.bin")
    pack(folder, tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert all(m.isfile() or m.isdir() for m in tar.getmembers())
    unpack(tmp_path / "a.tar", tmp_path / "out")
    assert (tmp_path / "out" / "copy.bin").read_bytes() == (folder / "model.bin").read_bytes()


# --- unpacking hostile archives -----------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


HOSTILE = {
    "parent": _member("../evil"),
    "nested parent": _member("model/../../evil"),
    "absolute": _member("/tmp/evil"),
    "windows absolute": _member("C:\\evil"),
    "windows parent": _member("..\\evil"),
    "symlink": _member("weights", tarfile.SYMTYPE, "/etc/passwd"),
    "relative symlink": _member("weights", tarfile.SYMTYPE, "../../etc/passwd"),
    "hard link": _member("weights", tarfile.LNKTYPE, "/etc/passwd"),
    "fifo": _member("pipe", tarfile.FIFOTYPE),
    "device": _member("disk", tarfile.CHRTYPE),
}


def _archive(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        ok = tarfile.TarInfo("model.bin")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"abc"))
        for m in members:
            tar.addfile(m, io.BytesIO(b"") if m.isfile() else None)
    return path


@pytest.mark.parametrize("case", list(HOSTILE))
def test_unpack_refuses_hostile_members(case: str, tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a.tar", HOSTILE[case])
    dest = tmp_path / "deep" / "dest"
    dest.parent.mkdir()
    with pytest.raises(UnsafeArtifact, match="artifact member"):
        unpack(archive, dest)
    assert not dest.exists()  # refused before anything was written
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.tar", "deep"]


def test_a_hostile_archive_with_a_matching_digest_is_still_refused(reg: Registry) -> None:
    """The digest proves the bytes are what was registered, not that they are safe."""
    register(reg, "m")
    archive = _archive(reg.cache_dir.parent / "evil.tar", HOSTILE["parent"])
    sha, size = digest(archive)
    reg.artifacts.put(archive, sha)
    with reg.store.engine.begin() as conn:
        conn.execute(update(versions).values(sha256=sha, size=size))
    with pytest.raises(UnsafeArtifact, match="escapes the artifact folder"):
        reg.load("m:1", trusted=True)


# --- integrity ----------------------------------------------------------------------


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_artifact_is_refused(reg: Registry) -> None:
    register(reg, "m")
    mv = reg.get_version("m", 1)
    _tamper(blob(reg, mv.sha256))
    with pytest.raises(IntegrityError) as err:
        reg.load("m:1", trusted=True)
    message = str(err.value)
    assert message.startswith("m:1: the stored artifact fails its checksum")
    assert mv.sha256[:12] in message
    assert "will not be loaded" in message


def test_a_tampered_artifact_is_refused_even_when_cached(reg: Registry) -> None:
    register(reg, "m")
    reg.load("m:1", trusted=True)  # unpacked into the cache
    _tamper(blob(reg, reg.get_version("m", 1).sha256))
    with pytest.raises(IntegrityError):
        reg.load("m:1", trusted=True)


def test_registering_again_repairs_a_damaged_blob(reg: Registry) -> None:
    register(reg, "m")
    _tamper(blob(reg, reg.get_version("m", 1).sha256))
    register(reg, "m")  # the same bytes: put() finds the stored copy damaged, rewrites it
    assert reg.load("m:1", trusted=True).predict(X).tolist() == (X.sum(axis=1) * 2).tolist()


def test_a_missing_artifact_is_a_clear_error(reg: Registry) -> None:
    register(reg, "m")
    blob(reg, reg.get_version("m", 1).sha256).unlink()
    with pytest.raises(ArtifactError, match="is missing from"):
        reg.load("m:1", trusted=True)


@pytest.mark.parametrize("sha", ["../../../etc/passwd", "A" * 64, "0" * 63, "/" + "0" * 63])
def test_a_recorded_digest_is_never_used_as_a_path(reg: Registry, sha: str) -> None:
    register(reg, "m")
    with reg.store.engine.begin() as conn:
        conn.execute(update(versions).values(sha256=sha))
    with pytest.raises(UnsafeArtifact, match="is not a sha256 digest"):
        reg.load("m:1", trusted=True)
    with pytest.raises(UnsafeArtifact):
        reg.artifacts.put(reg.cache_dir / "x", sha)


def test_fetch_unpacks_once_and_reuses_the_cache(reg: Registry) -> None:
    sha = reg.get_version("m", register(reg, "m")).sha256
    first = reg.artifacts.fetch(sha, reg.cache_dir)
    marker = first / "marker"
    marker.write_text("still here")
    assert reg.artifacts.fetch(sha, reg.cache_dir) == first
    assert marker.exists()
    assert [p.name for p in reg.cache_dir.iterdir()] == [sha]  # no temporary leftovers


# --- choosing a store ---------------------------------------------------------------


def test_open_store(tmp_path: Path) -> None:
    local = open_store(str(tmp_path / "a"))
    assert isinstance(local, LocalArtifactStore)
    assert local.root == tmp_path / "a"
    assert isinstance(open_store(f"file://{tmp_path}/b"), LocalArtifactStore)
    assert isinstance(open_store("~/artifacts"), LocalArtifactStore)
    assert open_store("~/artifacts").url == str(Path.home() / "artifacts")
    assert isinstance(open_store("s3://bucket/prefix", endpoint_url="http://127.0.0.1:1"),
                      S3ArtifactStore)
    with pytest.raises(ConfigError, match="unsupported artifact store"):
        open_store("ftp://host/dir")
    with pytest.raises(ConfigError, match="names no bucket"):
        open_store("s3:///prefix")


def test_registering_the_same_model_twice_stores_one_blob(reg: Registry) -> None:
    register(reg, "m", Doubler())
    register(reg, "n", Doubler())
    blobs = [p for p in (Path(reg.artifacts.url) / "sha256").rglob("*") if p.is_file()]
    assert len(blobs) == 1
