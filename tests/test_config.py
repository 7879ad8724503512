"""The lab YAML: the example validates, and every broken file says which file, key and why."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import EXAMPLE_LAB
from trackerdcs.config import ConfigError, load_config


def example() -> dict:
    return yaml.safe_load(EXAMPLE_LAB.read_text())


def check_error(tmp_path, data, *expected: str) -> str:
    path = tmp_path / "lab.yml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for text in expected:
        assert text in message, message
    return message


def test_example_lab_is_valid():
    cfg = load_config(EXAMPLE_LAB)
    assert [c.name for c in cfg.crates] == ["sy4527"]
    hv3 = next(c for c in cfg.power.channels if c.name == "hv_m4")
    limits = cfg.limits_for(hv3)
    assert limits.vmax == 400.0  # channel override beats the kind's default
    assert limits.rup == 50.0
    assert cfg.limits_for(cfg.power.channels[4]).vmax == 12.0


def test_unknown_key_is_named(tmp_path):
    data = example()
    data["power"]["channels"][1]["vmaxx"] = 3
    check_error(tmp_path, data, "power.channels.1.vmaxx", "unknown key")


def test_wrong_type_is_named(tmp_path):
    data = example()
    data["mqtt"]["port"] = "eighteen"
    check_error(tmp_path, data, "mqtt.port", "integer")


def test_out_of_range_is_named(tmp_path):
    data = example()
    data["power"]["channels"][0]["vmax"] = -5
    check_error(tmp_path, data, "power.channels.0.vmax", "greater than 0")


def test_channel_on_missing_board(tmp_path):
    data = example()
    data["power"]["channels"][0]["board"] = 7
    check_error(tmp_path, data, "power.channels.0.board", "no board 7")


def test_channel_beyond_board_size(tmp_path):
    data = example()
    data["power"]["channels"][0]["channel"] = 12
    check_error(tmp_path, data, "power.channels.0.channel", "has 12 channels")


def test_kind_must_match_board(tmp_path):
    data = example()
    data["power"]["channels"][0]["kind"] = "lv"
    check_error(tmp_path, data, "power.channels.0.kind", "hv board")


def test_duplicate_number_and_name(tmp_path):
    data = example()
    data["power"]["channels"][1]["number"] = 0
    check_error(tmp_path, data, "power.channels.1.number", "defined twice")
    data = example()
    data["power"]["channels"][1]["name"] = "hv_m1"
    check_error(tmp_path, data, "power.channels.1.name", "defined twice")


def test_inconsistent_limits(tmp_path):
    data = example()
    data["power"]["defaults"]["hv"]["iset"] = 500
    check_error(tmp_path, data, "power.defaults", "iset 500.0 exceeds imax 100.0")


def test_unknown_default_key(tmp_path):
    data = example()
    data["power"]["defaults"]["lv"]["ramp"] = 5
    check_error(tmp_path, data, "power.defaults", "unknown key(s) for lv: ramp")


def test_bad_prefix(tmp_path):
    data = example()
    data["crates"][0]["prefixes"]["hv"] = "hv/"
    check_error(tmp_path, data, "crates.0.prefixes", "must look like '/hv'")


def test_bad_backend(tmp_path):
    data = example()
    data["crates"][0]["backend"] = "modbus"
    check_error(tmp_path, data, "crates.0.backend", "'epics' or 'caenwrapper'")


def test_reserved_channel_name(tmp_path):
    data = example()
    data["power"]["channels"][0]["name"] = "all"
    check_error(tmp_path, data, "power.channels.0.name", "may not be 'all'")


def test_not_yaml(tmp_path):
    check_error(tmp_path, "mqtt: [unclosed\n", "not valid YAML", "line 2")


def test_not_a_mapping(tmp_path):
    check_error(tmp_path, "- a\n- b\n", "top level must be a mapping")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yml")


def test_credentials_come_from_the_environment(monkeypatch):
    cfg = load_config(EXAMPLE_LAB)
    monkeypatch.setenv("TRACKERDCS_MQTT_USERNAME", "operator")
    monkeypatch.setenv("TRACKERDCS_MQTT_PASSWORD", "s3cret")
    assert (cfg.mqtt.username, cfg.mqtt.password) == ("operator", "s3cret")


def test_daemon_refuses_a_broken_file_with_the_key(tmp_path):
    data = example()
    data["crates"][0]["boards"][0]["channels"] = 0
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(data))
    for module in ("trackerdcs.power.daemon", "trackerdcs.cli"):
        args = ["--config", str(path)] if module.endswith("daemon") else ["check-config", str(path)]
        result = subprocess.run(
            [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2
        assert "crates.0.boards.0.channels" in result.stderr
        assert str(path) in result.stderr
