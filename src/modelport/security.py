"""API keys: generated once, stored hashed, checked in constant time, carrying scopes.

A key file (YAML, or JSON when its name ends in `.json`) lists the keys a server
accepts; its path is `settings.server.api_keys_file`::

    keys:
      - name: deployer            # recorded as the actor of alias moves it makes
        hash: sha256:9f86d08…     # hash_key(key); the key itself is never stored
        scopes: [admin]
      - name: web-frontend
        hash: sha256:2c26b46…
        scopes: [predict]

Keys are hashed with plain SHA-256, not a slow password hash (scrypt, PBKDF2): a
generated key carries 256 random bits, so guessing it from its hash is as hopeless
with a fast hash as with a slow one, whereas a slow hash would cost tens of
milliseconds of CPU on every authenticated prediction. Slow hashes exist for
human-chosen passwords, which these are not; `add_key` is the way to make keys.

Protocol-agnostic: the HTTP guard lives in `modelport.server.auth`, and stream
workers or jobs can use the same `KeyStore`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelport.errors import ConfigError, InvalidInput
from modelport.settings import Settings

SCOPES = {
    "admin": "the /admin API: list models, move and roll back aliases, refresh",
    "predict": "prediction routes, when settings.server.require_predict_key is set",
}
"""Every scope a key may carry; a typo in a key file is an error, not a silent no-op."""

PREFIX = "mp_"
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
# the name is recorded as the actor of alias moves (a 128-character column)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


@dataclass(frozen=True)
class ApiKey:
    """One accepted key, as the key file describes it (without the key itself)."""

    name: str
    digest: bytes
    """The raw SHA-256 of the key."""
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def generate_key() -> str:
    """A new random key: `mp_` and 32 random bytes, URL-safe base64 (256 bits)."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """What a key file stores for `key`: `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The keys one server accepts; loaded once at start-up and passed down.

    An empty store (no key file configured) accepts no key at all, so the admin API
    is closed rather than open when nobody set up keys.
    """

    def __init__(self, keys: Iterable[ApiKey] = (), *, source: str | None = None) -> None:
        self._keys = tuple(keys)
        self.source = source
        """Where the keys came from (the file), for error messages."""

    @classmethod
    def load(cls, path: Path) -> KeyStore:
        """Read and check a key file; any problem is a ConfigError naming the file."""
        return cls(_parse(_read(path), path), source=str(path))

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore:
        path = settings.server.api_keys_file
        if path is None:
            if settings.server.require_predict_key:
                raise ConfigError(
                    "server.require_predict_key is set but no server.api_keys_file is "
                    "configured (MODELPORT_SERVER__API_KEYS_FILE): no key could ever pass")
            return cls()
        return cls.load(path)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def names(self) -> list[str]:
        return [k.name for k in self._keys]

    def authenticate(self, key: str) -> ApiKey | None:
        """The entry `key` belongs to, or None.

        The presented key is hashed once and compared with every entry in constant
        time, without stopping at a match: how long this takes says nothing about
        whether, or which, entry matched.
        """
        digest = hashlib.sha256(key.encode()).digest()
        found: ApiKey | None = None
        for entry in self._keys:
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        return found


# --- the key file ---------------------------------------------------------------------


def add_key(path: Path, name: str, scopes: Iterable[str]) -> str:
    """Add key `name` to the key file at `path` (created if missing); return the key.

    The key is returned once and stored only as its hash: show it to the person now.
    Adding a name that exists replaces its key and scopes (a rotation); the server
    picks changes up when it restarts.
    """
    path = Path(path)
    check_key_name(name)
    wanted = sorted(set(scopes))
    if not wanted:
        raise InvalidInput("a key needs at least one scope: " + ", ".join(SCOPES))
    for scope in wanted:
        check_scope(scope)
    entries = _entries(path) if path.exists() else []
    key = generate_key()
    entry = {"name": name, "hash": hash_key(key), "scopes": wanted}
    entries = [e for e in entries if e.get("name") != name] + [entry]
    _parse({"keys": entries}, path)  # never write a file the server would refuse
    _write(path, {"keys": entries})
    return key


def remove_key(path: Path, name: str) -> None:
    """Remove key `name` from the key file (revocation; effective at restart)."""
    path = Path(path)
    entries = _entries(path)
    kept = [e for e in entries if e.get("name") != name]
    if len(kept) == len(entries):
        raise InvalidInput(f"{path}: there is no key named {name!r}")
    _write(path, {"keys": kept})


def check_key_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(f"invalid key name {name!r}: use 1-128 letters, digits, '.', "
                           "'_', '@' or '-', starting with a letter or digit")


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise InvalidInput(f"unknown scope {scope!r}; scopes are: {', '.join(SCOPES)}")


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"API key file {path}: cannot read ({exc.strerror})") from exc
    try:
        return json.loads(text) if _is_json(path) else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if _is_json(path) else "YAML"
        raise ConfigError(f"API key file {path}: not valid {kind}: {exc}") from exc


def _entries(path: Path) -> list[dict[str, Any]]:
    raw = _read(path)
    _parse(raw, path)  # refuse to edit a file we could not load
    return list(raw["keys"])


def _parse(raw: Any, path: Path) -> list[ApiKey]:
    """Check the file's structure; messages name the file and the entry, never a value
    (a hash field may hold a pasted key by mistake, which must not reach the logs)."""
    try:
        if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
            raise _Bad("top level", "expected a mapping with a 'keys' list")
        keys = [_entry(item, i) for i, item in enumerate(raw["keys"])]
        _check_unique(keys)
    except _Bad as bad:
        raise ConfigError(f"API key file {path}: {bad.where}: {bad.problem}") from None
    return keys


class _Bad(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.where, self.problem = where, problem


def _entry(item: Any, i: int) -> ApiKey:
    if not isinstance(item, dict):
        raise _Bad(f"keys[{i}]", "expected a mapping with name, hash and scopes")
    extra = sorted(map(str, set(item) - {"name", "hash", "scopes"}))
    if extra:
        raise _Bad(f"keys[{i}]", f"unknown field(s) {', '.join(extra)}; "
                                 "expected name, hash, scopes")
    name, digest, scopes = item.get("name"), item.get("hash"), item.get("scopes")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Bad(f"keys[{i}].name", "missing or invalid: 1-128 letters, digits, "
                                      "'.', '_', '@' or '-'")
    if not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise _Bad(f"key {name!r}: hash", "expected 'sha256:' and 64 lowercase hex digits "
                                          "(the hash of the key, never the key itself)")
    if not isinstance(scopes, list) or not scopes or \
            not all(isinstance(s, str) for s in scopes):
        raise _Bad(f"key {name!r}: scopes", "expected a non-empty list of scope names")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise _Bad(f"key {name!r}: scopes", f"unknown scope(s) {', '.join(unknown)}; "
                                            f"scopes are: {', '.join(SCOPES)}")
    return ApiKey(name, bytes.fromhex(digest.removeprefix("sha256:")), frozenset(scopes))


def _check_unique(keys: list[ApiKey]) -> None:
    names: set[str] = set()
    digests: dict[bytes, str] = {}
    for k in keys:
        if k.name in names:
            raise _Bad(f"key {k.name!r}", "listed twice; names must be unique")
        if k.digest in digests:
            # the same key under two names: which name (actor) and scopes would it get?
            raise _Bad(f"key {k.name!r}", f"has the same hash as key {digests[k.digest]!r}")
        names.add(k.name)
        digests[k.digest] = k.name


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace the file atomically, readable by its owner only (0600): a server never
    sees half a file, and the list of key names is nobody else's business."""
    text = json.dumps(data, indent=2) + "\n" if _is_json(path) else \
        yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


__all__ = ["SCOPES", "ApiKey", "KeyStore", "add_key", "generate_key", "hash_key",
           "remove_key"]
