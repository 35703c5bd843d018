"""The registry: named, versioned models with aliases, over a metadata store and an
artifact store."""

from __future__ import annotations

import getpass
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import FlavorError, InvalidInput, InvalidName
from modelport.flavors import get_flavor, infer_flavor
from modelport.model import Model
from modelport.monitoring.profile import profile
from modelport.registry.artifacts import ArtifactStore, open_store, pack
from modelport.registry.store import AliasEvent, ModelVersion, Store
from modelport.settings import Settings
from modelport.signature import infer_signature

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class Registry:
    """Register models, move aliases, load versions.

    >>> reg = Registry()                           # from settings (MODELPORT_*)
    >>> mv = reg.register("iris", clf, sample_input=X[:5], metrics={"acc": 0.97})
    >>> reg.set_alias("iris", "production", mv.version)
    >>> reg.load("iris@production").predict(X)
    """

    def __init__(self, url: str | None = None, artifacts: str | None = None, *,
                 settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.store = Store(url or self.settings.resolved_registry_url)
        self.artifacts: ArtifactStore = open_store(
            artifacts or self.settings.resolved_artifacts,
            endpoint_url=self.settings.s3_endpoint_url,
        )
        self.cache_dir = self.settings.resolved_cache_dir

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- registering ----------------------------------------------------------------

    def register(
        self,
        name: str,
        model: Any,
        *,
        sample_input: Any,
        flavor: str | None = None,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        reference_data: Any = None,
        allow_nan: bool = False,
        trusted: bool = False,
        description: str | None = None,
    ) -> ModelVersion:
        """Save `model` as the next version of `name`.

        The signature is inferred from `sample_input` (a few rows: array, DataFrame or
        records) and the outputs from predicting on it, which also proves the model
        works before it is stored. The drift profile comes from `reference_data` (the
        training set, ideally) or else the sample.
        """
        check_name(name)
        flavor_name = flavor or infer_flavor(model)
        flavor_cls = get_flavor(flavor_name)
        signature = infer_signature(sample_input, allow_nan=allow_nan)
        sample = signature.decode(sample_input)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            folder.mkdir()
            options = flavor_cls.save(model, folder, trusted=trusted)
            # load what was saved and predict the sample: the round trip is the check
            loaded = flavor_cls(folder, options, trusted=True)
            loaded.load()
            try:
                raw = loaded.predict(signature.to_model_input(sample))
            except Exception as exc:
                raise FlavorError(f"the model fails on its own sample_input: {exc}") from exc
            signature.outputs = infer_signature(sample_input, signature.encode_outputs(raw)).outputs
            sha256, size = pack(folder, Path(tmp) / "artifact.tar")
            self.artifacts.put(Path(tmp) / "artifact.tar", sha256)
        reference = signature.decode(reference_data) if reference_data is not None else sample
        number = self.store.add_version(name, {
            "flavor": flavor_name,
            "options": options,
            "signature": signature.model_dump(mode="json"),
            "metrics": _jsonable(metrics or {}, "metrics"),
            "params": _jsonable(params or {}, "params"),
            "tags": _jsonable(tags or {}, "tags"),
            "profile": profile(reference, signature),
            "sha256": sha256,
            "size": size,
            "created_by": self._actor(),
        }, description)
        return self.store.get_version(name, number)

    # --- reading --------------------------------------------------------------------

    def resolve(self, ref: str) -> ModelVersion:
        """`name@alias`, `name:version`, or `name` (its latest version)."""
        name, alias, version = parse_ref(ref)
        if alias is not None:
            version = self.store.get_alias(name, alias)
        elif version is None:
            version = self.store.latest_version(name)
        return self.store.get_version(name, version)

    def get_version(self, name: str, version: int) -> ModelVersion:
        return self.store.get_version(name, version)

    def list_models(self) -> list[dict[str, Any]]:
        return self.store.list_models()

    def list_versions(self, name: str) -> list[ModelVersion]:
        return self.store.list_versions(name)

    def load(self, ref: str | ModelVersion, *, trusted: bool = False) -> Model:
        """Fetch, verify (sha256) and load a version; `trusted` allows pickle/code."""
        record = ref if isinstance(ref, ModelVersion) else self.resolve(ref)
        path = self.artifacts.fetch(record.sha256, self.cache_dir)
        return Model(record, path, trusted=trusted).load()

    # --- aliases --------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int, *,
                  reason: str | None = None) -> int | None:
        """Point `alias` at `version`; returns the version it pointed at before."""
        check_alias(alias)
        return self.store.set_alias(name, alias, version, actor=self._actor(), reason=reason)

    def remove_alias(self, name: str, alias: str) -> None:
        self.store.set_alias(name, alias, None, kind="remove", actor=self._actor())

    def rollback(self, name: str, alias: str) -> ModelVersion:
        """Move `alias` back to the version it pointed at before its last move.

        Rollbacks undo moves one at a time: after 1 → 2 → 3, two rollbacks give 2,
        then 1.
        """
        current = self.store.get_alias(name, alias)
        stack: list[int] = []
        for ev in self.store.alias_history(name, alias):
            if ev.kind == "set" and ev.to_version is not None:
                stack.append(ev.to_version)
            elif ev.kind == "rollback" and stack:
                stack.pop()
            elif ev.kind == "remove":
                stack.clear()
        if len(stack) < 2 or stack[-1] != current:
            raise InvalidInput(f"{name}@{alias} has no earlier version to roll back to")
        self.store.set_alias(name, alias, stack[-2], kind="rollback", actor=self._actor())
        return self.store.get_version(name, stack[-2])

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        return self.store.alias_history(name, alias)

    def delete_version(self, name: str, version: int) -> None:
        """Delete a version (refused while an alias points at it) and its artifact."""
        orphan = self.store.delete_version(name, version)
        if orphan:
            self.artifacts.delete(orphan)

    def _actor(self) -> str | None:
        if self.settings.user:
            return self.settings.user
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return None


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """Split `name@alias` / `name:version` / `name`; validates each part."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        check_name(name)
        check_alias(alias)
        return name, alias, None
    if ":" in ref:
        name, _, number = ref.rpartition(":")
        check_name(name)
        if not number.isdigit() or int(number) < 1:
            raise InvalidName(f"{ref!r}: a version is a positive integer, as in {name}:1")
        return name, None, int(number)
    check_name(ref)
    return ref, None, None


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME.match(name) or ".." in name:
        raise InvalidName(
            f"invalid model name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def check_alias(alias: str) -> None:
    if not ALIAS.match(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: use 1-64 letters, digits, '_' or '-', starting with a letter"
        )


def _jsonable(values: dict[str, Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, str | int | float | bool | type(None) | list | dict):
            raise InvalidInput(f"{what}[{key!r}] must be a JSON value, got {type(value).__name__}")
        out[str(key)] = value
    return out


__all__ = ["Registry", "check_alias", "check_name", "parse_ref"]
