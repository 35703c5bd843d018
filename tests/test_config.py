"""modelport.yaml as a service reads it: `${ENV}` filled in, defaults, one clear error.

Written against the file and what loading it gives (not where the option classes
live), so that these hold however the configuration is arranged inside.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from modelport.config import ServiceConfig, load_config
from modelport.errors import ConfigError


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "modelport.yaml"


def load(path: Path, text: str, env: Mapping[str, str] | None = None) -> ServiceConfig:
    path.write_text(text)
    return load_config(path, env or {})


def refused(path: Path, text: str, env: Mapping[str, str] | None = None) -> str:
    """The one-line error loading `text` gives."""
    with pytest.raises(ConfigError) as info:
        load(path, text, env)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- ${ENV} interpolation -----------------------------------------------------------------


def test_values_are_filled_from_the_environment_given(path: Path) -> None:
    config = load(path, """
name: ${SERVICE}
models:
  - ref: cancer@${ALIAS}
    name: cancer-${ALIAS}-${ALIAS}
pipelines:
  - name: score
    model: cancer@${ALIAS}
    writer: {type: sql, url: "postgresql://${DB_HOST}:5432/db", table: scores}
""", {"SERVICE": "fraud", "ALIAS": "production", "DB_HOST": "db.internal"})
    assert config.name == "fraud"
    assert config.models[0].ref == "cancer@production"
    assert config.models[0].name == "cancer-production-production"  # each one filled
    writer = config.pipelines[0].writer
    assert writer is not None and writer.model_dump()["url"] == "postgresql://db.internal:5432/db"


def test_a_default_is_used_only_when_the_variable_is_not_set(path: Path) -> None:
    text = "models:\n  - ref: ${REF:-cancer@production}\n"
    assert load(path, text).models[0].ref == "cancer@production"
    assert load(path, text, {"REF": "cancer:3"}).models[0].ref == "cancer:3"
    assert load(path, "name: ${NAME:-}\n").name == ""  # an empty default is a default


def test_a_filled_value_is_read_as_the_option_s_type(path: Path) -> None:
    config = load(path, "models:\n  - ref: m:1\n    workers: ${WORKERS}\n"
                        "    trusted: ${TRUSTED}\n", {"WORKERS": "2", "TRUSTED": "true"})
    assert config.models[0].workers == 2 and config.models[0].trusted is True


def test_a_variable_that_is_not_set_is_named_with_where_it_is_used(path: Path) -> None:
    message = refused(path, "pipelines:\n  - name: p\n    model: m@production\n"
                            "    writer: {type: sql, url: '${DATABASE_URL}'}\n")
    assert message == (f"{path}: pipelines[0].writer.url: ${{DATABASE_URL}} is not set "
                       "in the environment")


def test_values_that_are_not_strings_pass_through_and_dollars_alone_stay(path: Path) -> None:
    config = load(path, "name: costs $5 and {x}\nmodels:\n  - ref: m:1\n    workers: 3\n")
    assert config.name == "costs $5 and {x}" and config.models[0].workers == 3


# --- defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}\n"])
def test_an_empty_file_is_a_service_of_nothing(path: Path, text: str) -> None:
    config = load(path, text)
    assert (config.name, config.models, config.pipelines) == ("modelport", [], [])


def test_a_model_s_options_default_to_auto_placement_untrusted_and_the_service_batching(
        path: Path) -> None:
    model = load(path, "models:\n  - ref: cancer@production\n").models[0]
    assert model.served_name == "cancer"  # the registered name, alias and all stripped
    assert (model.trusted, model.workers, model.on_loop, model.batching) == \
        (False, 0, "auto", None)
    assert load(path, "models:\n  - ref: cancer:4\n    name: c\n").models[0].served_name == "c"


def test_a_pipeline_s_model_is_served_even_when_not_listed(path: Path) -> None:
    config = load(path, """
models:
  - ref: cancer@production
    workers: 2
pipelines:
  - {name: a, model: cancer@production}
  - {name: b, model: cancer:1}
""")
    listed = config.model_for("cancer@production")
    assert listed.workers == 2 and len(config.models) == 1  # the listed one, as listed
    added = config.model_for("cancer:1")
    assert added.ref == "cancer:1" and len(config.models) == 2
    assert added.served_name != listed.served_name  # two models, two names
    assert config.model_for("cancer:1") is added  # asked again: the same one


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("models:\n  - ref: m:1\n    workers: -1\n",
     "models.0.workers: Input should be greater than or equal to 0"),
    ("models:\n  - ref: m:1\n    trusted: maybe\n",
     "models.0.trusted: Input should be a valid boolean"),
    ("models:\n  - name: m\n", "models.0.ref: Field required"),
    ("models:\n  - ref: m:1\n    batching: {max_batch_size: 0}\n",
     "models.0.batching.max_batch_size: Input should be greater than or equal to 1"),
    ("models:\n  - ref: m:1\n    on_loop: true\n    workers: 2\n",
     "models.0: Value error, a model runs on the event loop (on_loop: true) or in worker "
     "processes (workers), not both"),
    ("models:\n  - ref: m:1\n    on_loop: sometimes\n",
     "models.0.on_loop: Value error, expected true, false or auto, got 'sometimes'"),
    ("pipelines:\n  - name: p\n    model: m:1\n    chunk_size: 0\n",
     "pipelines.0.chunk_size: Input should be greater than or equal to 1"),
    ("models: cancer@production\n", "models: Input should be a valid list"),
])
def test_a_bad_value_is_one_error_naming_the_file_and_the_key(
        path: Path, text: str, expected: str) -> None:
    assert refused(path, text).startswith(f"{path}: {expected}")


def test_several_bad_values_are_reported_one_at_a_time(path: Path) -> None:
    message = refused(path, "models:\n  - ref: m:1\n    workers: -1\n    trusted: maybe\n")
    assert message.count("models.0.") == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("models: [ref: m:1\n", "not valid YAML"),
    ("- ref: m:1\n", "expected a mapping at the top level"),
])
def test_a_file_that_is_not_a_config_says_so(path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load(path, text)
    assert str(info.value).startswith(f"{path}: ")


def test_a_missing_file_says_it_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, {})
    assert str(info.value) == f"{missing}: cannot read (No such file or directory)"


@pytest.mark.parametrize(("text", "key"), [
    ("modles:\n  - ref: m:1\n", "modles"),
    ("models:\n  - ref: m:1\n    worker: 2\n", "models.0.worker"),
])
def test_an_unknown_key_is_refused_naming_it(path: Path, text: str, key: str) -> None:
    assert refused(path, text) == f"{path}: {key}: not an option here (misspelt?)"
