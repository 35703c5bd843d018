"""Artifact archives: a folder packed into a deterministic tar, and unpacked safely.

Packing is deterministic (sorted members, zeroed times and owners, fixed modes), so
identical folders give identical bytes and a single stored blob. Unpacking trusts
nothing about the archive: every member is checked first (no absolute paths, no
`..`, no links, nothing but regular files and folders), and the extraction itself
uses tarfile's `data` filter as a second line of defence.
"""

from __future__ import annotations

import hashlib
import re
import stat
import tarfile
from pathlib import Path

from modelport.errors import ArtifactError, UnsafeArtifact

CHUNK = 1 << 20


def pack(folder: Path, archive: Path) -> tuple[str, int]:
    """Pack `folder` into a deterministic tar; return its (sha256, size)."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            # TarInfo built by hand rather than by gettarinfo(), which turns a second
            # hard link to one file into a link member that unpack() would then refuse
            info = tarfile.TarInfo(rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if stat.S_ISLNK(mode):
                raise UnsafeArtifact(f"artifact folder holds a symlink: {rel}")
            if stat.S_ISDIR(mode):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif stat.S_ISREG(mode):
                info.type, info.mode = tarfile.REGTYPE, 0o644
                with path.open("rb") as f:
                    info.size = path.stat().st_size
                    tar.addfile(info, f)
            else:
                raise UnsafeArtifact(f"artifact folder holds a special file: {rel}")
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
        # the data filter's own refusals are TarErrors too (FilterError)
        if isinstance(exc, tarfile.FilterError):
            raise UnsafeArtifact(f"artifact archive refused: {exc}") from exc
        raise ArtifactError(f"artifact archive is unreadable: {exc}") from exc


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse a member that could write outside the destination or is not plain data."""
    name = member.name
    # both separators: an archive made on Windows may be unpacked on Windows
    parts = re.split(r"[\\/]", name)
    if not name or "\x00" in name:
        raise UnsafeArtifact(f"artifact member {name!r} has an empty or invalid name")
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise UnsafeArtifact(f"artifact member {name!r} has an absolute path")
    if ".." in parts:
        raise UnsafeArtifact(f"artifact member {name!r} escapes the artifact folder ('..')")
    if member.issym() or member.islnk():
        raise UnsafeArtifact(f"artifact member {name!r} is a link (to {member.linkname!r})")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArtifact(f"artifact member {name!r} is not a regular file or folder")


def digest(path: Path) -> tuple[str, int]:
    """sha256 (hex) and size in bytes of a file, read in chunks."""
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
