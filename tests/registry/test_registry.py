"""The registry on SQLite and on PostgreSQL: versions and their metadata, aliases and
their audit trail, rollback, deletes, names and references, the reference profile."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from registry_helpers import Doubler, RowCounter, X, blob, register, weighted

from modelport import Registry
from modelport.errors import (
    AliasNotFound,
    Conflict,
    InvalidInput,
    InvalidName,
    ModelNotFound,
    VersionNotFound,
)
from modelport.profile import MAX_FEATURES, profile, psi
from modelport.registry import parse_ref
from modelport.registry.archive import digest
from modelport.signature import FieldSpec, Signature, infer_signature


@pytest.fixture(scope="module")
def classifier() -> tuple[Any, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 3))
    target = (data[:, 0] + data[:, 1] > 0).astype(int)
    return LogisticRegression().fit(data, target), data


# --- registering ---------------------------------------------------------------------


def test_register_records_everything(registry: Registry, classifier: Any) -> None:
    clf, data = classifier
    before = datetime.now(UTC)
    mv = registry.register(
        "breast-cancer", clf, sample_input=data[:5], reference_data=data,
        metrics={"auc": np.float64(0.99), "per_class": np.array([0.5, 0.75])},
        params={"C": 1.0, "penalty": "l2"}, tags={"team": "risk", "ticket": 42},
    )
    assert (mv.name, mv.version, mv.ref) == ("breast-cancer", 1, "breast-cancer:1")
    assert mv.flavor == "sklearn"
    assert mv.metrics == {"auc": 0.99, "per_class": [0.5, 0.75]}
    assert mv.params == {"C": 1.0, "penalty": "l2"}
    assert mv.tags == {"team": "risk", "ticket": 42}
    assert [(s.name, s.datatype, s.shape) for s in mv.signature.inputs] == [("input", "FP64", [3])]
    assert [s.name for s in mv.signature.outputs] == ["predictions", "probabilities"]
    assert mv.created_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= mv.created_at <= datetime.now(UTC)
    assert mv.created_by == getpass.getuser()
    assert mv.aliases == []
    # the recorded digest and size are those of the stored blob
    assert digest(blob(registry, mv.sha256)) == (mv.sha256, mv.size)
    # the profile is of the reference data (200 rows), not of the 5-row sample
    assert mv.profile["rows"] == 200
    assert list(mv.profile["features"]) == ["input[0]", "input[1]", "input[2]"]
    first = mv.profile["features"]["input[0]"]
    assert first["kind"] == "numeric"
    assert first["count"] == 200
    assert first["missing"] == 0
    assert sum(first["counts"]) == 200
    assert first["quantiles"]["0.50"] == pytest.approx(float(np.median(data[:, 0])))
    # what was returned is what was stored
    assert registry.get_version("breast-cancer", 1) == mv


def test_a_signature_written_by_hand_is_kept(registry: Registry, classifier: Any) -> None:
    clf, data = classifier
    declared = Signature(layout="columns", inputs=[
        FieldSpec(name=n, datatype="FP32") for n in ("age", "income", "tenure")])
    mv = registry.register("churn", clf, sample_input=data[:5].tolist(), signature=declared)

    assert [s.describe() for s in mv.signature.inputs] == \
        ["age: FP32", "income: FP32", "tenure: FP32"]
    assert [s.describe() for s in mv.signature.outputs] == \
        ["predictions: INT64", "probabilities: FP64 [2]"]
    assert len(mv.signature.sample) == 5 and set(mv.signature.sample[0]) == \
        {"age", "income", "tenure"}
    model = registry.load("churn:1")
    records = [dict(zip(("age", "income", "tenure"), row, strict=True)) for row in data[:20]]
    np.testing.assert_array_equal(model.predict(records),
                                  clf.predict(data[:20].astype(np.float32)))
    with pytest.raises(InvalidInput, match="expected FP32"):
        model.predict([{"age": "old", "income": 1.0, "tenure": 2.0}])


def test_a_signature_written_by_hand_must_fit_the_sample_and_the_model(
        registry: Registry, classifier: Any) -> None:
    clf, data = classifier
    two = Signature(layout="columns", inputs=[FieldSpec(name="a", datatype="FP64"),
                                              FieldSpec(name="b", datatype="FP64")])
    with pytest.raises(InvalidInput, match="expected rows of 2 values"):
        registry.register("churn", clf, sample_input=data[:5].tolist(), signature=two)
    tensor = Signature(layout="tensor", inputs=[FieldSpec(name="x", datatype="FP64",
                                                          shape=[3])])
    wrong = tensor.model_copy(update={"outputs": [FieldSpec(name="score", datatype="FP64")]})
    with pytest.raises(InvalidInput, match="declares outputs score: FP64, the model answers"):
        registry.register("churn", clf, sample_input=data[:5], signature=wrong)
    typed = tensor.model_copy(update={"outputs": [
        FieldSpec(name="predictions", datatype="INT32"),
        FieldSpec(name="probabilities", datatype="FP64", shape=[2])]})
    with pytest.raises(InvalidInput, match="declares output predictions: INT32, the model "
                                           "answers predictions: INT64"):
        registry.register("churn", clf, sample_input=data[:5], signature=typed)
    assert registry.list_models() == []  # nothing stored


def test_versions_count_per_name(registry: Registry) -> None:
    assert [register(registry, "a") for _ in range(3)] == [1, 2, 3]
    assert register(registry, "b") == 1
    assert [v.version for v in registry.list_versions("a")] == [1, 2, 3]
    assert registry.resolve("a").version == 3  # a bare name is the latest version
    registry.set_alias("a", "production", 2)
    listed = registry.list_models()
    assert [(m["name"], m["latest_version"], m["versions"]) for m in listed] == [
        ("a", 3, 3), ("b", 1, 1)]
    assert listed[0]["aliases"] == {"production": 2}


def test_load_by_alias_version_and_latest(registry: Registry, classifier: Any) -> None:
    clf, data = classifier
    registry.register("clf", clf, sample_input=data[:5])
    register(registry, "clf", Doubler())
    registry.set_alias("clf", "production", 1)
    expected = clf.predict(data)
    np.testing.assert_array_equal(registry.load("clf@production").predict(data), expected)
    np.testing.assert_array_equal(registry.load("clf:1").predict(data), expected)
    latest = registry.load("clf", trusted=True)
    assert latest.version == 2
    np.testing.assert_array_equal(latest.predict(X), X.sum(axis=1) * 2)


def test_metadata_must_be_json(registry: Registry) -> None:
    with pytest.raises(InvalidInput, match=r"metrics\['auc'\] is nan"):
        register(registry, "m", metrics={"auc": float("nan")})
    with pytest.raises(InvalidInput, match=r"params\['fn'\] must be a JSON value"):
        register(registry, "m", params={"fn": print})
    with pytest.raises(ModelNotFound):  # nothing was recorded
        registry.list_versions("m")


# --- aliases and their audit trail ---------------------------------------------------


def test_alias_set_move_remove_and_audit_trail(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(3):
        register(registry, "m")
    monkeypatch.setattr(registry.settings, "user", "alice")
    assert registry.set_alias("m", "production", 1) is None
    assert registry.set_alias("m", "production", 2, reason="better auc") == 1
    assert registry.set_alias("m", "production", 2) == 2  # not a move: nothing recorded
    registry.set_alias("m", "staging", 2)
    assert registry.get_version("m", 2).aliases == ["production", "staging"]
    assert registry.resolve("m@production").version == 2
    monkeypatch.setattr(registry.settings, "user", "bob")
    assert registry.remove_alias("m", "production", reason="incident 7") == 2
    with pytest.raises(AliasNotFound):
        registry.get_alias("m", "production")
    assert registry.get_version("m", 2).aliases == ["staging"]

    trail = [(e.kind, e.from_version, e.to_version, e.actor, e.reason)
             for e in registry.alias_history("m", "production")]
    assert trail == [
        ("set", None, 1, "alice", None),
        ("set", 1, 2, "alice", "better auc"),
        ("remove", 2, None, "bob", "incident 7"),
    ]
    everything = registry.alias_history("m")
    assert [(e.alias, e.kind) for e in everything] == [
        ("production", "set"), ("production", "set"), ("staging", "set"),
        ("production", "remove")]
    times = [e.at for e in everything]
    assert times == sorted(times)
    assert all(t.utcoffset() == timedelta(0) for t in times)


def test_alias_errors(registry: Registry) -> None:
    register(registry, "m")
    with pytest.raises(ModelNotFound):
        registry.set_alias("nope", "production", 1)
    with pytest.raises(VersionNotFound):
        registry.set_alias("m", "production", 7)
    for bad in ("9lives", "prod/1", "", "a" * 65, "prod\n"):
        with pytest.raises(InvalidName):
            registry.set_alias("m", bad, 1)
    with pytest.raises(AliasNotFound):
        registry.remove_alias("m", "production")
    with pytest.raises(AliasNotFound) as err:
        registry.load("m@production")
    assert err.value.status_code == 404
    assert registry.alias_history("m") == []


# --- rollback -----------------------------------------------------------------------


def test_rollback_undoes_moves_one_at_a_time(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    for v in (1, 2, 3):
        register(registry, "m")
        registry.set_alias("m", "production", v)
    monkeypatch.setattr(registry.settings, "user", "carol")
    assert registry.rollback("m", "production").version == 2
    assert registry.resolve("m@production").version == 2
    assert registry.rollback("m", "production", reason="still bad").version == 1
    with pytest.raises(Conflict, match="no earlier version to roll back to"):
        registry.rollback("m", "production")
    assert registry.get_alias("m", "production") == 1
    trail = [(e.kind, e.from_version, e.to_version, e.actor)
             for e in registry.alias_history("m", "production")][3:]
    assert trail == [("rollback", 3, 2, "carol"), ("rollback", 2, 1, "carol")]


def test_rollback_after_a_new_move_returns_to_the_version_it_left(registry: Registry) -> None:
    for _ in range(3):
        register(registry, "m")
    registry.set_alias("m", "production", 1)
    registry.set_alias("m", "production", 2)
    assert registry.rollback("m", "production").version == 1
    registry.set_alias("m", "production", 3)
    assert registry.rollback("m", "production").version == 1
    with pytest.raises(Conflict):
        registry.rollback("m", "production")


def test_rollback_refuses_missing_alias_and_deleted_target(registry: Registry) -> None:
    register(registry, "m")
    register(registry, "m")
    with pytest.raises(AliasNotFound):
        registry.rollback("m", "production")
    registry.set_alias("m", "production", 1)
    registry.set_alias("m", "production", 2)
    registry.delete_version("m", 1)
    with pytest.raises(Conflict, match="version 1, where it pointed before, was deleted"):
        registry.rollback("m", "production")
    assert registry.get_alias("m", "production") == 2


# --- deleting -----------------------------------------------------------------------


def test_deleting_an_aliased_version_is_refused(registry: Registry) -> None:
    register(registry, "m")
    registry.set_alias("m", "production", 1)
    registry.set_alias("m", "canary", 1)
    with pytest.raises(Conflict, match="in use by alias canary, production") as err:
        registry.delete_version("m", 1)
    assert err.value.status_code == 409
    mv = registry.get_version("m", 1)
    assert blob(registry, mv.sha256).is_file()


def test_deleting_removes_the_version_and_its_orphaned_artifact(
        registry: Registry, tmp_path: Path) -> None:
    first = registry.get_version("m", register(registry, "m", weighted(tmp_path, 1, 0, 0)))
    second = registry.get_version("m", register(registry, "m", weighted(tmp_path, 0, 1, 0)))
    assert first.sha256 != second.sha256
    registry.delete_version("m", 1)
    with pytest.raises(VersionNotFound):
        registry.get_version("m", 1)
    assert not blob(registry, first.sha256).exists()
    assert blob(registry, second.sha256).is_file()
    assert [v.version for v in registry.list_versions("m")] == [2]
    assert registry.list_models()[0]["latest_version"] == 2
    registry.delete_version("m", 2)
    assert register(registry, "m") == 3  # numbers are never reused, not even the newest
    with pytest.raises(VersionNotFound):
        registry.delete_version("m", 1)
    with pytest.raises(ModelNotFound):
        registry.delete_version("nope", 1)


def test_deleting_keeps_an_artifact_another_version_shares(registry: Registry) -> None:
    register(registry, "m")
    register(registry, "other")
    shared = registry.get_version("m", 1).sha256
    assert registry.get_version("other", 1).sha256 == shared  # identical bytes, one blob
    registry.delete_version("m", 1)
    assert blob(registry, shared).is_file()
    assert registry.load("other:1", trusted=True).predict(X).shape == (4,)
    registry.delete_version("other", 1)
    assert not blob(registry, shared).exists()


# --- names and references -----------------------------------------------------------

BAD_NAMES = ["../x", "/abs", "a/b", "a\\b", "", ".hidden", "-x", "x\n", "a..b", "x" * 129,
             "a b", "café", "a@b", "a:1"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_model_names_are_refused(name: str, registry: Registry) -> None:
    with pytest.raises(InvalidName) as err:
        register(registry, name)
    assert err.value.status_code == 400
    with pytest.raises(InvalidName):
        registry.list_versions(name)
    with pytest.raises(InvalidName):
        registry.delete_version(name, 1)


@pytest.mark.parametrize(("ref", "parsed"), [
    ("iris", ("iris", None, None)),
    ("iris:3", ("iris", None, 3)),
    ("iris:03", ("iris", None, 3)),
    ("iris@production", ("iris", "production", None)),
    ("my.model_v2-b@canary-2", ("my.model_v2-b", "canary-2", None)),
    ("x" * 128 + ":1", ("x" * 128, None, 1)),
])
def test_parse_ref(ref: str, parsed: tuple[str, str | None, int | None]) -> None:
    assert parse_ref(ref) == parsed


@pytest.mark.parametrize("ref", [
    "", "iris:", "iris:0", "iris:-1", "iris:1.5", "iris:latest", "iris:²", "iris:٣",
    "iris@", "iris@1st", "iris@prod@x", "iris:1@prod", "@prod", ":1", "../iris:1",
    "/etc/passwd", "iris@prod/../x", "iris\n", "iris:1\n",
])
def test_parse_ref_refuses(ref: str) -> None:
    with pytest.raises(InvalidName):
        parse_ref(ref)


# --- the reference profile ----------------------------------------------------------


def test_profile_of_a_dataframe_with_numeric_and_string_columns(registry: Registry) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({
        "age": [20, 30, 40, 50, 60, 70, 80, 90],
        "income": [1.5, 2.5, 2.5, 3.5, 4.5, 5.5, 6.5, 100.0],
        "city": ["paris", "oslo", "paris", "rome", "oslo", "paris", "lima", "rome"],
        "member": [True, False, True, True, False, True, True, True],
    })
    mv = registry.register("frame", RowCounter(), sample_input=frame.head(3),
                           reference_data=frame)
    assert mv.signature.model_input == "dataframe"
    prof = mv.profile
    assert prof["rows"] == 8
    assert list(prof["features"]) == ["age", "income", "city", "member"]
    age = prof["features"]["age"]
    assert (age["kind"], age["count"], age["missing"]) == ("numeric", 8, 0)
    assert (age["min"], age["max"], age["mean"]) == (20.0, 90.0, 55.0)
    assert age["quantiles"]["0.50"] == 55.0
    assert age["edges"][0] == 20.0
    assert age["edges"][-1] == 90.0
    assert len(age["counts"]) == len(age["edges"]) - 1
    assert sum(age["counts"]) == 8
    income = prof["features"]["income"]
    assert income["max"] == 100.0
    assert income["quantiles"]["0.50"] == 4.0
    assert prof["features"]["city"] == {
        "kind": "categorical", "count": 8, "missing": 0, "distinct": 4,
        "top": {"paris": 3, "oslo": 2, "rome": 2, "lima": 1},
    }
    assert prof["features"]["member"]["top"] == {"True": 6, "False": 2}
    # the profile is what drift is measured against: itself is stable, a shift is not
    assert psi(age, frame["age"].to_numpy()) == pytest.approx(0.0, abs=1e-9)
    assert psi(age, frame["age"].to_numpy() + 1000) > 0.25
    assert psi(prof["features"]["city"], frame["city"].to_numpy()) == pytest.approx(0.0)
    assert psi(prof["features"]["city"], np.array(["tokyo"] * 8, dtype=object)) > 0.25


def test_profile_caps_wide_inputs_and_counts_missing_values() -> None:
    wide = np.zeros((3, MAX_FEATURES + 50))
    wide[0, 0] = np.nan
    sig = infer_signature(wide, allow_nan=True)
    prof = profile(sig.decode(wide), sig)
    assert len(prof["features"]) == MAX_FEATURES
    assert prof["features"]["input[0]"]["missing"] == 1
    texts = np.array([b"x" * 500, "caf\u00e9", "caf\u00e9"], dtype=object)
    sig = infer_signature({"text": texts})
    top = profile(sig.decode({"text": texts}), sig)["features"]["text"]["top"]
    assert top == {"café": 2, "x" * 100: 1}  # bytes decoded, long values cut
