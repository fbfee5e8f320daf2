from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    return path


def _problems(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {p.key_path: p.message for p in exc.value.problems}


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, "mongo:\n  uri: mongodb://db:27017\n"), {})
    assert settings.mongo.uri.get_secret_value() == "mongodb://db:27017"
    assert settings.http.port == 8080
    assert settings.logging.format == "auto"


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "mongo:\n  databse: x\nhttp:\n  port: 99999\nloging: {}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, {})
    problems = _problems(exc)
    assert problems["mongo.uri"] == "required setting is missing"
    assert problems["mongo.databse"] == "unknown setting (misspelt?)"
    assert "http.port" in problems
    assert problems["loging"] == "unknown setting (misspelt?)"


def test_environment_overrides_the_file_with_typed_values(tmp_path: Path) -> None:
    path = _write(tmp_path, "mongo:\n  uri: mongodb://file\nhttp:\n  port: 1\n")
    env = {
        "BRIDGE__MONGO__URI": "mongodb://env",
        "BRIDGE__HTTP__PORT": "9000",
        "bridge__logging__level": "debug",
        "UNRELATED": "x",
    }
    settings = load_settings(path, env)
    assert settings.mongo.uri.get_secret_value() == "mongodb://env"
    assert settings.http.port == 9000
    assert settings.logging.level == "debug"


def test_settings_from_environment_alone() -> None:
    settings = load_settings(None, {"BRIDGE__MONGO__URI": "mongodb://only-env"})
    assert settings.mongo.uri.get_secret_value() == "mongodb://only-env"


def test_secret_from_file_strips_the_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "uri"
    secret.write_text("mongodb://user:pw@db\n")
    path = _write(tmp_path, f"mongo:\n  uri_file: {secret}\n")
    settings = load_settings(path, {})
    assert settings.mongo.uri.get_secret_value() == "mongodb://user:pw@db"
    assert "pw" not in repr(settings)


def test_secret_file_through_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "uri"
    secret.write_text("mongodb://from-file")
    settings = load_settings(None, {"BRIDGE__MONGO__URI_FILE": str(secret)})
    assert settings.mongo.uri.get_secret_value() == "mongodb://from-file"


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, f"mongo:\n  uri_file: {tmp_path / 'missing'}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, {})
    message = _problems(exc)["mongo.uri_file"]
    assert "cannot read" in message
    assert "No such file" in message


def test_value_and_file_together_is_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "uri"
    secret.write_text("x")
    path = _write(tmp_path, f"mongo:\n  uri: a\n  uri_file: {secret}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, {})
    assert "not both" in _problems(exc)["mongo.uri_file"]


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path / "nope.yaml", {})
    assert "cannot read the settings file" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_settings(_write(tmp_path, "mongo: [\n"), {})
    assert "not valid YAML" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_settings(_write(tmp_path, "- a list\n"), {})
    assert "mapping" in str(exc.value)


def test_override_into_a_scalar_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "mongo:\n  uri: x\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, {"BRIDGE__MONGO__URI__DEEP": "y"})
    assert "BRIDGE__MONGO__URI__DEEP" in _problems(exc)


def test_the_shipped_example_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "config.example.yaml"
    settings = load_settings(example, {})
    assert settings.mongo.database


def test_enabled_platform_sections_name_what_they_miss(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "mongo:\n  uri: x\nmatrix:\n  enabled: true\n  server_name: example.org\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path, {})
    message = _problems(exc)["matrix"]
    assert message == (
        "required when matrix.enabled is true: matrix.homeserver_url, matrix.as_token, "
        "matrix.hs_token"
    )


def test_list_values_from_the_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, "mongo:\n  uri: x\n")
    settings = load_settings(
        path, {"BRIDGE__MATRIX__INVITES__SERVERS": "[example.org, ops.example.org]"}
    )
    assert settings.matrix.invites.servers == ("example.org", "ops.example.org")


def test_runbook_run_timings_are_settings_and_checked_together() -> None:
    env = {
        "BRIDGE__MONGO__URI": "mongodb://db",
        "BRIDGE__RUNBOOKS__HEARTBEAT_INTERVAL_S": "1",
        "BRIDGE__RUNBOOKS__STALE_AFTER_S": "5",
        "BRIDGE__RUNBOOKS__SWEEP_INTERVAL_S": "2",
    }
    runbooks = load_settings(None, env).runbooks
    assert (runbooks.heartbeat_interval_s, runbooks.stale_after_s) == (1.0, 5.0)
    assert runbooks.sweep_interval_s == 2.0
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {**env, "BRIDGE__RUNBOOKS__STALE_AFTER_S": "2"})
    assert "runbooks" in str(caught.value)
    assert "three heartbeat_interval_s" in str(caught.value)


def test_delivery_leases_and_retries_are_settings() -> None:
    env = {
        "BRIDGE__MONGO__URI": "mongodb://db",
        "BRIDGE__DELIVERY__LEASE_TTL_S": "12",
        "BRIDGE__DELIVERY__RETRY_BASE_S": "0.5",
        "BRIDGE__DELIVERY__RETRY_CAP_S": "30",
    }
    delivery = load_settings(None, env).delivery
    assert (delivery.lease_ttl_s, delivery.retry_base_s, delivery.retry_cap_s) == (12, 0.5, 30)
    with pytest.raises(ConfigError):
        load_settings(None, {**env, "BRIDGE__DELIVERY__LEASE_TTL_S": "1"})
