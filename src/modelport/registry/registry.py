"""The registry: named, versioned models with aliases, over a metadata store and an
artifact store."""

from __future__ import annotations

import getpass
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelport.datatypes import shape_matches
from modelport.errors import FlavorError, InvalidInput, InvalidName, ModelOutputError
from modelport.flavors import get_flavor, infer_flavor
from modelport.model import Model, ModelVersion
from modelport.profile import profile
from modelport.registry.artifacts import ArtifactStore, open_store, pack
from modelport.registry.store import AliasEvent, Store
from modelport.settings import Settings
from modelport.signature import (
    FieldSpec,
    Signature,
    check_output_rows,
    infer_signature,
    output_specs,
    rows_of,
    sample_rows,
)

# fullmatch, not match + "$": "$" also matches before a trailing newline
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
VERSION = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() also accepts "²" and "٣"
ACTOR_MAX = 128  # the width of the actor/created_by columns
REASON_MAX = 2000


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
        try:
            self.artifacts: ArtifactStore = open_store(
                artifacts or self.settings.resolved_artifacts,
                endpoint_url=self.settings.s3_endpoint_url,
            )
        except BaseException:
            self.store.close()
            raise
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
        signature: Signature | None = None,
    ) -> ModelVersion:
        """Save `model` as the next version of `name`.

        The signature is inferred from `sample_input` (a few rows: array, DataFrame or
        records) and the outputs from predicting on it, which also proves the model
        works before it is stored. A `signature` written by hand (input names, types
        and shapes the sample cannot show, such as FP32 or a variable dimension) is
        used instead; `sample_input` must then fit it, and outputs it declares must be
        the ones the model answers. The drift profile comes from `reference_data` (the
        training set, ideally) or else the sample.
        """
        check_name(name)
        # cheap checks first: a bad metric should not cost a model save
        recorded = {"metrics": jsonable(metrics or {}, "metrics"),
                    "params": jsonable(params or {}, "params"),
                    "tags": jsonable(tags or {}, "tags")}
        flavor_name = flavor or infer_flavor(model)
        flavor_cls = get_flavor(flavor_name)
        if signature is None:
            signature = infer_signature(sample_input, allow_nan=allow_nan)
            sample = signature.decode(sample_input)
        else:
            signature = signature.model_copy(deep=True)
            signature.allow_nan = signature.allow_nan or allow_nan
            sample = signature.decode(sample_input)  # names what does not fit
            signature.sample = signature.sample or sample_rows(sample)
        reference = signature.decode(reference_data) if reference_data is not None else sample
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
            signature.outputs = _outputs(signature, raw)
            try:
                check_output_rows(signature.encode_outputs(raw), rows_of(sample), name)
            except ModelOutputError as exc:
                raise FlavorError(f"the model fails on its own sample_input: {exc}") from None
            archive = Path(tmp) / "artifact.tar"
            sha256, size = pack(folder, archive)
            self.artifacts.put(archive, sha256)
            number = self.store.add_version(name, {
                "flavor": flavor_name,
                "options": options,
                "signature": signature.model_dump(mode="json"),
                **recorded,
                "profile": profile(reference, signature),
                "sha256": sha256,
                "size": size,
                "created_by": self._actor(),
            }, description)
            # Identical bytes are stored once. If another version with these bytes was
            # deleted between our put and our insert, its delete removed the blob we
            # were about to reference: put it back while we still hold the archive.
            if not self.artifacts.exists(sha256):
                self.artifacts.put(archive, sha256)
        return self.store.get_version(name, number)

    # --- reading --------------------------------------------------------------------

    def resolve(self, ref: str) -> ModelVersion:
        """`name@alias`, `name:version`, or `name` (its latest version)."""
        name, alias, version = parse_ref(ref)
        return self.store.resolve(name, alias, version)

    def get_version(self, name: str, version: int) -> ModelVersion:
        check_name(name)
        return self.store.get_version(name, version)

    def list_models(self) -> list[dict[str, Any]]:
        """One entry per model: name, description, latest_version, versions, aliases."""
        return self.store.list_models()

    def list_versions(self, name: str) -> list[ModelVersion]:
        check_name(name)
        return self.store.list_versions(name)

    def load(self, ref: str | ModelVersion, *, trusted: bool = False) -> Model:
        """Fetch, verify (sha256) and load a version; `trusted` allows pickle/code."""
        record = ref if isinstance(ref, ModelVersion) else self.resolve(ref)
        path = self.artifacts.fetch(record.sha256, self.cache_dir, label=record.ref)
        return Model(record, path, trusted=trusted).load()

    # --- aliases --------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int, *,
                  reason: str | None = None, actor: str | None = None) -> int | None:
        """Point `alias` at `version`; returns the version it pointed at before.

        `actor` is recorded as who moved it (the admin API passes the API key's name);
        by default `settings.user` or the login name.
        """
        check_name(name)
        check_alias(alias)
        return self.store.set_alias(name, alias, version, actor=self._actor(actor),
                                    reason=reason)

    def get_alias(self, name: str, alias: str) -> int:
        check_name(name)
        check_alias(alias)
        return self.store.get_alias(name, alias)

    def remove_alias(self, name: str, alias: str, *, reason: str | None = None,
                     actor: str | None = None) -> int:
        """Remove `alias`; returns the version it pointed at."""
        check_name(name)
        check_alias(alias)
        return self.store.remove_alias(name, alias, actor=self._actor(actor), reason=reason)

    def rollback(self, name: str, alias: str, *, reason: str | None = None,
                 actor: str | None = None, expect: int | None = None) -> ModelVersion:
        """Move `alias` back to the version it pointed at before its last move.

        Rollbacks undo moves one at a time: after 1 → 2 → 3, two rollbacks give 2,
        then 1, and a third raises Conflict. Raises Conflict too when that earlier
        version has been deleted since, and when `expect` is given and the alias no
        longer points at it.
        """
        check_name(name)
        check_alias(alias)
        target = self.store.rollback(name, alias, actor=self._actor(actor), reason=reason,
                                     expect=expect)
        return self.store.get_version(name, target)

    def record_decision(self, name: str, alias: str, kind: str, *, current: int | None,
                        candidate: int, reason: str, actor: str | None = None) -> None:
        """Record a decision about `alias` that moved nothing: `refuse` (a gate kept
        `candidate` out) or `hold` (a guard watched it through its window)."""
        check_name(name)
        check_alias(alias)
        self.store.record_decision(name, alias, kind, current=current, candidate=candidate,
                                   actor=self._actor(actor), reason=reason[:REASON_MAX])

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """Every move of `alias` (or of all the model's aliases), oldest first."""
        check_name(name)
        if alias is not None:
            check_alias(alias)
        return self.store.alias_history(name, alias)

    def delete_version(self, name: str, version: int) -> None:
        """Delete a version and, unless another version shares it, its artifact.

        Raises Conflict (409) while an alias points at the version.
        """
        check_name(name)
        orphan = self.store.delete_version(name, version)
        if orphan:
            self.artifacts.delete(orphan)

    def _actor(self, given: str | None = None) -> str | None:
        if given:
            return given[:ACTOR_MAX]
        if self.settings.user:
            return self.settings.user[:ACTOR_MAX]
        try:
            return getpass.getuser()[:ACTOR_MAX]
        except (KeyError, OSError):
            return None


def _outputs(signature: Signature, raw: Any) -> list[FieldSpec]:
    """The outputs the model answered on its sample; those the signature declares, when
    it declares them and the answer fits them."""
    answered = output_specs(signature.encode_outputs(raw))
    if not signature.outputs:
        return answered
    got = {s.name: s for s in answered}
    if sorted(got) != sorted(s.name for s in signature.outputs):
        declared = "; ".join(s.describe() for s in signature.outputs)
        raise InvalidInput(f"the signature declares outputs {declared}, the model answers "
                           + "; ".join(s.describe() for s in answered))
    for spec in signature.outputs:
        answer = got[spec.name]
        if answer.datatype != spec.datatype or not shape_matches(answer.shape, spec.shape):
            raise InvalidInput(f"the signature declares output {spec.describe()}, the model "
                               f"answers {answer.describe()}")
    return signature.outputs


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """Split `name@alias` / `name:version` / `name` into (name, alias, version).

    Each part is validated; anything else raises InvalidName.
    """
    if not isinstance(ref, str):
        raise InvalidName(f"a model reference is a string, got {type(ref).__name__}")
    if "@" in ref:
        name, _, alias = ref.partition("@")
        check_name(name)
        check_alias(alias)
        return name, alias, None
    if ":" in ref:
        name, _, number = ref.rpartition(":")
        check_name(name)
        if not VERSION.fullmatch(number) or int(number) < 1:
            raise InvalidName(f"{ref!r}: a version is a positive integer, as in {name}:1")
        return name, None, int(number)
    check_name(ref)
    return ref, None, None


def check_name(name: str) -> None:
    """Model names: 1-128 letters, digits, '.', '_', '-'; never a path."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"invalid model name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )


def check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not ALIAS.fullmatch(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: use 1-64 letters, digits, '_' or '-', starting with a letter"
        )


def jsonable(values: dict[str, Any], what: str) -> dict[str, Any]:
    """Metrics, params and tags as plain JSON: numpy values unwrapped, NaN refused.

    NaN and infinities are refused rather than stored: JSON has neither, and
    PostgreSQL's JSON type rejects them.
    """
    if not isinstance(values, dict):
        raise InvalidInput(f"{what} must be a dict, got {type(values).__name__}")
    return {str(k): _json_value(v, f"{what}[{k!r}]") for k, v in values.items()}


def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{where} is {value}: JSON has no NaN or infinity; use None")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _json_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise InvalidInput(f"{where} must be a JSON value, got {type(value).__name__}")


__all__ = ["Registry", "check_alias", "check_name", "parse_ref"]
