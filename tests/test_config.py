"""The lab YAML: the example validates, and every broken file says which file, key and why."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import EXAMPLE_LAB
from trackerdcs.config import ConfigError, load_config, parse_config


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
    data["power"]["channels"][0]["channel"] = 16  # an A1515TG has 16
    check_error(tmp_path, data, "power.channels.0.channel", "has 16 channels")


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
    check_error(tmp_path, data, "power.defaults.lv.ramp", "unknown key")


ONE_LEVEL = "must be one topic level, '/' and a name such as '/hv' or '/julabo'"


@pytest.mark.parametrize(
    ("where", "value", "key"),
    [(("crates", 0, "prefixes", "hv"), "hv/", "crates.0.prefixes.hv"),
     (("crates", 0, "prefixes", "hv"), "/lab1/hv", "crates.0.prefixes.hv"),
     (("crates", 0, "prefixes", "lv"), "/lv/", "crates.0.prefixes.lv"),
     (("crates", 0, "prefixes", "lv"), "/+", "crates.0.prefixes.lv"),
     (("julabo", "prefix"), "/lab1/julabo", "julabo.prefix"),
     (("julabo", "prefix"), "julabo", "julabo.prefix"),
     (("power", "interlock_topic"), "/lab1/interlock/status", "power.interlock_topic")],
)  # fmt: skip
def test_every_prefix_is_one_topic_level(tmp_path, where, value, key):
    """/+/cmd/# (audit, retained-command alarms), /+/availability and Telegraf's /+/status
    match one level: a prefix of two would be invisible to them."""
    data = example()
    target = data
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value
    check_error(tmp_path, data, f"{key}: {ONE_LEVEL}", f"got {value.rsplit('/status')[0]!r}")


def test_a_listed_chillers_prefix_and_the_interlock_topic_are_checked_too(tmp_path):
    data = example()
    data["chillers"] = [{**data.pop("julabo"), "name": "coldbox", "prefix": "/lab1/coldbox"}]
    check_error(tmp_path, data, f"chillers.0.prefix: {ONE_LEVEL}")
    data = example()
    data["power"]["interlock_topic"] = "/interlock/state"
    check_error(tmp_path, data, "power.interlock_topic: must be the interlock's <prefix>/status")
    data = example()
    data["sensors"][0]["name"] = "lab1/sensor_1"
    check_error(tmp_path, data, "sensors.0.name")


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


# -- chiller, sensors and the virtual lab -------------------------------------------------------


def test_example_cooling_sections():
    cfg = load_config(EXAMPLE_LAB)
    assert cfg.julabo is not None and cfg.julabo.prefix == "/julabo"
    assert (cfg.julabo.setpoint_min, cfg.julabo.setpoint_max) == (-30.0, 40.0)
    assert cfg.julabo.serial.parity == "E" and cfg.julabo.serial.bytesize == 7
    assert [(s.name, s.kind.value, s.module) for s in cfg.sensors] == [
        ("sensor_1", "room", None),
        *((f"temp_m{i}", "module", f"M{i}") for i in range(1, 5)),
    ]
    assert cfg.sensors[1].prefix == "/temp_m1" and cfg.sensors[1].max_temperature == 30.0
    assert cfg.virtual_lab is not None and cfg.virtual_lab.leakage_doubling == 7.0
    assert {m: [c.name for c in chs] for m, chs in cfg.modules().items()}["M2"] == [
        "hv_m2",
        "lv_m2",
    ]


def test_cooling_sections_are_optional(tmp_path):
    data = example()
    for key in ("julabo", "sensors", "virtual_lab"):
        del data[key]
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    assert (cfg.julabo, cfg.sensors, cfg.virtual_lab) == (None, [], None)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("url", "COM3", "julabo.url: expected a device path"),
        ("url", "socket://127.0.0.1", "expected socket://HOST:PORT"),
        ("setpoint_min", 50, "setpoint_min 50.0 must be below setpoint_max 40.0"),
        ("poll_interval", 0, "julabo.poll_interval: Input should be greater than 0"),
        ("prefix", "julabo", f"julabo.prefix: {ONE_LEVEL}"),
        ("prefix", "/hv", "julabo.prefix: '/hv' is taken by crate sy4527"),
        ("baud", 9600, "julabo.baud: unknown key"),
        ("model", "fl900", "julabo.model: unknown Julabo model 'fl900' (known: full, fl, fp50-mh"),
        ("retries", -1, "julabo.retries"),
    ],
)
def test_julabo_errors_name_the_key(tmp_path, key, value, expected):
    data = example()
    data["julabo"][key] = value
    check_error(tmp_path, data, expected)


def test_julabo_serial_settings_are_checked(tmp_path):
    data = example()
    data["julabo"]["serial"]["parity"] = "X"
    check_error(tmp_path, data, "julabo.serial.parity")


@pytest.mark.parametrize(
    ("index", "key", "value", "expected"),
    [
        (1, "module", None, "sensors.1: a module sensor needs 'module'"),
        (0, "module", "M1", "sensors.0: 'module' is only for kind: module"),
        (2, "module", "M9", "sensors.2.module: no power channel powers module 'M9'"),
        (3, "name", "hv", "sensors.3.name: topic '/hv' is taken by crate sy4527"),
        (4, "name", "temp_m1", "sensors.4.name: topic '/temp_m1' is taken by sensor temp_m1"),
        (0, "source", "COM3", "sensors.0.source: expected a device path"),
        (0, "kind", "outdoor", "sensors.0.kind"),
        (0, "stale_timeout", -1, "sensors.0.stale_timeout"),
        (0, "interval", 1, "sensors.0.interval: unknown key"),
        (0, "humidity_tolerance", -1, "sensors.0.humidity_tolerance"),
    ],
)
def test_sensor_errors_name_the_key(tmp_path, index, key, value, expected):
    data = example()
    data["sensors"][index][key] = value
    check_error(tmp_path, data, expected)


def test_virtual_lab_errors_name_the_key(tmp_path):
    data = example()
    data["virtual_lab"]["crate"] = "sy5527"
    check_error(tmp_path, data, "virtual_lab.crate: no crate named 'sy5527'")
    data = example()
    data["virtual_lab"]["room_humidity"] = 120
    check_error(tmp_path, data, "virtual_lab.room_humidity")
    data = example()
    data["virtual_lab"]["chiller"] = {"model": "fp51"}
    check_error(tmp_path, data, "virtual_lab.chiller.model: unknown Julabo model 'fp51'")


def test_cooling_daemons_refuse_a_broken_file_with_the_key(tmp_path):
    data = example()
    data["sensors"][0]["stale_timeout"] = "soon"
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(data))
    for module in ("trackerdcs.julabo.daemon", "trackerdcs.sensors.daemon", "trackerdcs.sim.lab"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--config", str(path)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 2, (module, result.stderr)
        assert "sensors.0.stale_timeout" in result.stderr and str(path) in result.stderr


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("mqtt.command_max_age", 0, "mqtt.command_max_age: Input should be greater than 0"),
        ("mqtt.command_clock_skew", -1, "mqtt.command_clock_skew"),
        ("mqtt.command_rate_limit", {"rate": 0}, "mqtt.command_rate_limit.rate"),
        ("mqtt.command_rate_limit", {"rate": 5, "bust": 2}, "command_rate_limit.bust: unknown key"),
        ("power.command_max_age", -2, "power.command_max_age"),
        ("alarms.liveness_factor", 1, "alarms.liveness_factor: Input should be greater than"),
        ("sequencer.heartbeat", 0, "sequencer.heartbeat"),
    ],
)
def test_command_safety_settings_are_checked(tmp_path, path, value, expected):
    data = example()
    section, key = path.split(".")
    data.setdefault(section, {})[key] = value
    check_error(tmp_path, data, expected)


def test_command_safety_settings_and_their_overrides():
    data = example()
    lab = parse_config(data)
    assert (lab.mqtt.command_max_age, lab.mqtt.command_clock_skew) == (5.0, 2.0)
    assert lab.mqtt.command_rate_limit is None and lab.power.command_max_age is None
    data["julabo"]["command_max_age"] = 30
    data["mqtt"]["command_rate_limit"] = {"rate": 10}
    lab = parse_config(data)
    assert lab.julabo.command_max_age == 30.0 and lab.mqtt.command_rate_limit.burst == 10


# -- board models ---------------------------------------------------------------------------------
def test_unknown_board_model_names_the_key_and_the_known_models(tmp_path):
    data = example()
    data["crates"][0]["boards"][0]["model"] = "A9999"
    check_error(tmp_path, data, "crates.0.boards.0.model", "unknown board model 'A9999'",
                "known: A1515TG, A7435SN, A2519, generic")  # fmt: skip


@pytest.mark.parametrize(
    ("board", "expected"),
    [
        ({"kind": "hv", "channels": 12, "model": "A1515TG"}, "board model A1515TG has 16 channels"),
        ({"kind": "lv", "model": "A1515TG"}, "kind: board model A1515TG is an hv board"),
        ({"kind": "hv"}, "channels: required for a generic board"),
        ({"channels": 4}, "kind: give the board's kind (hv, lv) or its model"),
        ({"model": "A2519", "settings": {"rup": 5}}, "settings.rup: board model A2519 has no RUp"),
    ],
)
def test_board_must_agree_with_its_model(tmp_path, board, expected):
    data = example()
    data["crates"][0]["boards"] = {0: board, 2: {"model": "A2519"}}
    data["power"]["channels"] = []
    check_error(tmp_path, data, "crates.0.boards.0", expected)


@pytest.mark.parametrize(
    ("where", "key", "value", "expected"),
    [
        ("defaults", "imrange", "Low", "power.defaults.lv.imrange: board model A2519 has no"),
        ("channel", "ovvthr", 11, "power.channels.0.ovvthr: board model A1515TG has no OVVThr"),
        ("channel", "pdwn", "Ramp", None),  # an A1515TG has PDwn
        ("defaults", "kill_rate", 500, "power.defaults.lv.kill_rate: board model A2519 has no"),
        ("board", "imrange", "Medium", "imrange: ImRange must be one of High, Low"),
        ("board", "tripint", -1, "greater than or equal to 0"),
        ("lvboard", "unvthr", 20, "unvthr: UNVThr must be at most 15 V"),
    ],
)  # fmt: skip
def test_a_setting_the_model_lacks_or_refuses_is_an_error(tmp_path, where, key, value, expected):
    data = example()
    if where == "defaults":
        data["power"]["defaults"]["lv"][key] = value
    elif where == "channel":
        data["power"]["channels"][0][key] = value
    else:
        data["crates"][0]["boards"][0 if where == "board" else 2]["settings"] = {key: value}
    if expected is None:
        path = tmp_path / "lab.yml"
        path.write_text(yaml.safe_dump(data))
        assert load_config(path).limits_for(load_config(path).power.channels[0]).pdwn == "Ramp"
    else:
        check_error(tmp_path, data, expected)


def test_old_lv_ramp_rates_are_converted_with_a_warning(tmp_path):
    data = example()
    lv = data["power"]["defaults"]["lv"]
    del lv["ruptime"], lv["rdwtime"]
    lv.update(rup=5, rdwn=10)  # V/s, as every lab file had it before board models
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    limits = cfg.limits_for(next(c for c in cfg.power.channels if c.name == "lv_m1"))
    assert (limits.ruptime, limits.rdwtime, limits.rup) == (2100.0, 1050.0, None)  # 10.5 V
    assert cfg.warnings[:2] == [
        "power.defaults.lv.rup: board model A2519 ramps by time: rup 5 V/s converted to "
        "ruptime 2100 ms for channel 'lv_m1' (vset 10.5 V); write ruptime (ms) instead",
        "power.defaults.lv.rdwn: board model A2519 ramps by time: rdwn 10 V/s converted to "
        "rdwtime 1050 ms for channel 'lv_m1' (vset 10.5 V); write rdwtime (ms) instead",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "trackerdcs.cli", "check-config", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "warning: power.defaults.lv.rup:" in result.stderr
    del lv["vset"]  # nothing to convert with: say how to write it
    path.write_text(yaml.safe_dump(data))
    check_error(
        tmp_path, data, "power.defaults.lv.rup: board model A2519 ramps by time, not rate: "
        "write ruptime (ms to ramp to the set point) instead of rup (V/s); channel 'lv_m1' "
        "has no vset to convert it with",
    )  # fmt: skip
    lv["vset"] = 0  # 0 is a value: no ramp time follows from it, and the error says so
    message = check_error(tmp_path, data, "instead of rup (V/s); channel 'lv_m1' has vset 0 V, "
                          "from which no ramp time follows")  # fmt: skip
    assert "no vset" not in message


def test_ramp_seconds_in_each_boards_terms():
    cfg = load_config(EXAMPLE_LAB)
    hv = cfg.limits_for(cfg.power.channels[0])  # 50 V/s
    lv = cfg.limits_for(cfg.power.channels[4])  # 2000 ms
    assert hv.ramp_seconds(100, up=True) == 2.0 and hv.ramp_seconds(-25, up=False) == 0.5
    assert lv.ramp_seconds(10.5, up=True) == 2.0 and lv.ramp_seconds(3, up=False) == 2.0
