"""API keys: generation, hashing, the key file, constant-time checks."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelport import security
from modelport.errors import ConfigError, InvalidInput
from modelport.security import KeyStore, add_key, generate_key, hash_key, remove_key
from modelport.settings import ServerSettings, Settings


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def entry(name: str, key: str, scopes: list[str]) -> dict[str, Any]:
    return {"name": name, "hash": hash_key(key), "scopes": scopes}


# --- keys and hashes ------------------------------------------------------------------


def test_generated_keys_are_long_random_and_prefixed() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert key.startswith("mp_")
        assert len(key) == 3 + 43  # 32 bytes in unpadded URL-safe base64
        assert key[3:].replace("-", "").replace("_", "").isalnum()


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert hash_key("abc") != hash_key("abd")


def test_authenticate_returns_the_matching_entry(tmp_path: Path) -> None:
    admin, predict = generate_key(), generate_key()
    path = write_yaml(tmp_path / "keys.yaml", {"keys": [
        entry("ops", admin, ["admin"]), entry("web", predict, ["predict"])]})
    store = KeyStore.load(path)
    assert len(store) == 2
    assert store.names == ["ops", "web"]
    found = store.authenticate(admin)
    assert found is not None
    assert found.name == "ops"
    assert found.allows("admin")
    assert not found.allows("predict")
    web = store.authenticate(predict)
    assert web is not None
    assert web.name == "web"
    assert store.authenticate(admin + "x") is None
    assert store.authenticate("") is None
    assert store.authenticate(hash_key(admin)) is None  # the hash is not the key


def test_every_entry_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [generate_key() for _ in range(3)]
    store = KeyStore(security._parse({"keys": [
        entry(f"k{i}", k, ["predict"]) for i, k in enumerate(keys)]}, Path("mem")))
    calls: list[tuple[bytes, bytes]] = []
    real = security.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    found = store.authenticate(keys[0])
    assert found is not None
    assert found.name == "k0"
    # no early exit at the first entry's match: every entry was compared
    assert len(calls) == 3
    assert all(isinstance(a, bytes) and len(a) == 32 for a, _ in calls)
    calls.clear()
    assert store.authenticate("wrong") is None
    assert len(calls) == 3


def test_empty_store_accepts_nothing() -> None:
    store = KeyStore()
    assert len(store) == 0
    assert store.authenticate(generate_key()) is None


# --- from settings --------------------------------------------------------------------


def test_no_key_file_gives_an_empty_store(tmp_path: Path) -> None:
    assert len(KeyStore.from_settings(Settings(home=tmp_path))) == 0


def test_required_predict_key_without_a_key_file_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, server=ServerSettings(require_predict_key=True))
    with pytest.raises(ConfigError, match="api_keys_file"):
        KeyStore.from_settings(settings)


def test_from_settings_loads_the_file(tmp_path: Path) -> None:
    key = generate_key()
    path = write_yaml(tmp_path / "keys.yaml", {"keys": [entry("ops", key, ["admin"])]})
    store = KeyStore.from_settings(
        Settings(home=tmp_path, server=ServerSettings(api_keys_file=path)))
    assert store.source == str(path)
    assert store.authenticate(key) is not None


# --- key file errors ------------------------------------------------------------------

GOOD_HASH = hash_key("k")


@pytest.mark.parametrize(("content", "message"), [
    ("keys: [", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping with a 'keys' list"),
    ("keys: {}\n", "expected a mapping with a 'keys' list"),
    ("keys: [hello]\n", r"keys\[0\]: expected a mapping"),
    (f"keys: [{{hash: '{GOOD_HASH}', scopes: [admin]}}]\n", r"keys\[0\].name"),
    ("keys: [{name: ops, scopes: [admin]}]\n", "key 'ops': hash"),
    (f"keys: [{{name: ops, hash: '{GOOD_HASH.upper()}', scopes: [admin]}}]\n", "hash"),
    (f"keys: [{{name: ops, hash: '{GOOD_HASH}'}}]\n", "key 'ops': scopes"),
    (f"keys: [{{name: ops, hash: '{GOOD_HASH}', scopes: []}}]\n", "non-empty list"),
    (f"keys: [{{name: ops, hash: '{GOOD_HASH}', scopes: admin}}]\n", "non-empty list"),
    (f"keys: [{{name: ops, hash: '{GOOD_HASH}', scopes: [admn]}}]\n",
     "unknown scope.*admn.*admin, predict"),
    (f"keys: [{{name: ops, hash: '{GOOD_HASH}', scopes: [admin], scope: x}}]\n",
     "unknown field.*scope"),
    (f"keys: [{{name: ops, hash: '{GOOD_HASH}', scopes: [admin]}},"
     f" {{name: ops, hash: '{hash_key('other')}', scopes: [admin]}}]\n", "listed twice"),
    (f"keys: [{{name: ops, hash: '{GOOD_HASH}', scopes: [admin]}},"
     f" {{name: web, hash: '{GOOD_HASH}', scopes: [predict]}}]\n",
     "'web'.*same hash as key 'ops'"),
])
def test_bad_key_files_are_config_errors_naming_the_file(
        tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        KeyStore.load(path)
    assert str(path) in str(info.value)


def test_a_pasted_key_is_refused_and_never_echoed(tmp_path: Path) -> None:
    key = generate_key()
    path = write_yaml(tmp_path / "keys.yaml",
                      {"keys": [{"name": "ops", "hash": key, "scopes": ["admin"]}]})
    with pytest.raises(ConfigError, match="never the key itself") as info:
        KeyStore.load(path)
    assert key not in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        KeyStore.load(path)
    assert str(path) in str(info.value)


def test_json_key_file(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [entry("ops", key, ["admin", "predict"])]}))
    found = KeyStore.load(path).authenticate(key)
    assert found is not None
    assert found.scopes == {"admin", "predict"}
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        KeyStore.load(path)
    assert str(path) in str(info.value)


# --- add_key / remove_key -------------------------------------------------------------


def test_add_key_creates_a_private_file_and_returns_the_key_once(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "keys.yaml"
    key = add_key(path, "ops", ["admin"])
    assert key.startswith("mp_")
    assert key not in path.read_text()  # only its hash is stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == {
        "keys": [{"name": "ops", "hash": hash_key(key), "scopes": ["admin"]}]}
    web = add_key(path, "web", ["predict", "predict"])
    store = KeyStore.load(path)
    assert store.names == ["ops", "web"]
    found = store.authenticate(web)
    assert found is not None
    assert found.scopes == {"predict"}


def test_add_key_again_rotates_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    old = add_key(path, "ops", ["admin"])
    add_key(path, "web", ["predict"])
    new = add_key(path, "ops", ["admin", "predict"])
    store = KeyStore.load(path)
    assert store.authenticate(old) is None
    found = store.authenticate(new)
    assert found is not None
    assert found.scopes == {"admin", "predict"}
    assert sorted(store.names) == ["ops", "web"]


def test_add_key_keeps_json_files_json(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = add_key(path, "ops", ["admin"])
    assert json.loads(path.read_text())["keys"][0]["hash"] == hash_key(key)


@pytest.mark.parametrize(("name", "scopes", "message"), [
    ("ops", [], "at least one scope"),
    ("ops", ["root"], "unknown scope 'root'"),
    ("", ["admin"], "invalid key name"),
    ("has space", ["admin"], "invalid key name"),
    ("x" * 129, ["admin"], "invalid key name"),
])
def test_add_key_refuses_bad_input_and_leaves_the_file(
        tmp_path: Path, name: str, scopes: list[str], message: str) -> None:
    path = tmp_path / "keys.yaml"
    add_key(path, "first", ["admin"])
    before = path.read_text()
    with pytest.raises(InvalidInput, match=message):
        add_key(path, name, scopes)
    assert path.read_text() == before


def test_add_key_refuses_to_edit_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys: [oops]\n")
    with pytest.raises(ConfigError, match=r"keys\.yaml"):
        add_key(path, "ops", ["admin"])
    assert path.read_text() == "keys: [oops]\n"


def test_remove_key_revokes_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    ops = add_key(path, "ops", ["admin"])
    web = add_key(path, "web", ["predict"])
    remove_key(path, "ops")
    store = KeyStore.load(path)
    assert store.authenticate(ops) is None
    assert store.authenticate(web) is not None
    with pytest.raises(InvalidInput, match="no key named 'ops'"):
        remove_key(path, "ops")
