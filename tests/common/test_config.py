"""Configuration precedence and the one-line errors a user sees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from passenger.common.config import ConfigError, ServerConfig
from passenger.common.config_sources import resolve


def test_defaults_follow_passenger(tmp_path: Path) -> None:
    config = resolve({"app_root": str(tmp_path)}, environ={})
    assert (config.address, config.port, config.min_instances, config.max_pool_size,
            config.environment, config.start_timeout) == ("0.0.0.0", 3000, 1, 6,
                                                          "development", 90)


def test_command_line_beats_environment_beats_passengerfile(tmp_path: Path) -> None:
    (tmp_path / "Passengerfile.json").write_text(json.dumps(
        {"port": 4000, "max_pool_size": 3, "environment": "staging"}))
    environ = {"PASSENGER_PORT": "5000", "PASSENGER_MAX_POOL_SIZE": "4"}
    config = resolve({"app_root": str(tmp_path), "port": "6000", "max_pool_size": None},
                     environ=environ)
    assert config.port == 6000
    assert config.max_pool_size == 4
    assert config.environment == "staging"


@pytest.mark.parametrize(("cli", "message"), [
    ({"port": "abc"}, "--port: 'abc' is not an integer"),
    ({"port": "70000"}, "--port: 70000 is out of range; allowed: 1..65535"),
    ({"max_pool_size": "0"}, "--max-pool-size: 0 is out of range; allowed: 1..1000"),
    ({"min_instances": "7"}, "--min-instances: 7 exceeds --max-pool-size 6"),
    ({"log_level": "loud"}, "--log-level: 'loud' is not allowed; allowed: debug, info"),
])
def test_invalid_values_name_the_option_and_what_is_allowed(
        tmp_path: Path, cli: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve({"app_root": str(tmp_path), **cli}, environ={})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PASSENGER_PORT: 'x' is not an integer"):
        resolve({"app_root": str(tmp_path)}, environ={"PASSENGER_PORT": "x"})


def test_passengerfile_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "Passengerfile.json").write_text('{"nonsense": 1}')
    with pytest.raises(ConfigError, match=r"Passengerfile\.json 'nonsense': unknown option"):
        resolve({"app_root": str(tmp_path)}, environ={})
    (tmp_path / "Passengerfile.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read as JSON"):
        resolve({"app_root": str(tmp_path)}, environ={})


def test_missing_app_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        resolve({"app_root": str(tmp_path / "nope")}, environ={})


def test_json_round_trip(tmp_path: Path) -> None:
    config = resolve({"app_root": str(tmp_path), "port": "3001"}, environ={})
    assert ServerConfig.from_json(config.to_json()) == config


def test_app_flags_become_routed_apps_with_their_own_options(tmp_path: Path) -> None:
    blog = tmp_path / "blog"
    blog.mkdir()
    (tmp_path / "Passengerfile.json").write_text(json.dumps({"apps": [
        {"app_root": str(blog), "base_uri": "/blog", "server_names": ["Example.com"],
         "min_instances": 2, "max_requests": 10}]}))
    config = resolve({"app_root": str(tmp_path)}, environ={})
    ((route, app),) = config.app_configs()
    assert app.app_root == str(blog) and app.min_instances == 2 and app.max_requests == 10
    assert app.max_pool_size == config.max_pool_size  # pool-wide options stay shared
    assert route.matches("example.com", "/blog/x") and route.matches("example.com", "/blog")
    assert not route.matches("example.com", "/blogger")
    assert not route.matches("other.org", "/blog/x")
    flags = resolve({"app_root": str(tmp_path), "apps": [f"/b={blog}", f"h.org={blog}"]},
                    environ={})
    routes = [r for r, _ in flags.app_configs()]
    assert [(r.server_names, r.base_uri) for r in routes] == [((), "/b"), (("h.org",), "/")]


@pytest.mark.parametrize(("apps", "message"), [
    (["nonsense"], "--app: 'nonsense' is not [HOST][/URI]=PATH"),
    (["/x=/nonexistent"], "--app[0]: '/nonexistent' is not a directory"),
    ([{"app_root": "."}, {"base_uri": "/x"}], "--app[1]: each app needs an 'app_root'"),
    ([{"app_root": ".", "port": 1}], "--app[0] 'port': not a per-app option; allowed:"),
    ([{"app_root": ".", "max_requests": -1}], "--app[0] 'max_requests': -1 is out of range"),
])
def test_bad_app_specs_are_named(tmp_path: Path, apps: list[object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve({"app_root": str(tmp_path), "apps": apps}, environ={})
    assert message in str(err.value)


@pytest.mark.parametrize("plant", ["fifo", "device", "huge"])
def test_a_passengerfile_that_is_not_a_small_regular_file_is_refused_at_once(
        tmp_path: Path, plant: str) -> None:
    """The app's owner must not make `passenger start` hang on a FIFO or read forever."""
    path = tmp_path / "Passengerfile.json"
    if plant == "fifo":
        os.mkfifo(path)
    elif plant == "device":
        path.symlink_to("/dev/zero")
    else:
        path.write_text('{"port": 3001' + " " * (1 << 20) + "}")
    with pytest.raises(ConfigError, match=r"Passengerfile\.json: cannot be read as JSON: "
                                          r"(not a regular file|larger than 1048576 bytes)"):
        resolve({"app_root": str(tmp_path)}, environ={})
