"""Several chillers in one lab: a cold box and a burn-in box.

In-process: the lab YAML's `chillers` list (and the `julabo:` shorthand), the checks that name
the key, the interlock rules' chiller and modules, the client ids, `make run`'s lines, the
health check, the export and the UI's view of the lab. Then the two-chiller virtual lab with
every process real (tests/test_virtual_lab.py TWO_CHILLERS: `coldbox` on /julabo cools M1 and
M2, `burnin` on /julabo_burnin cools M3 and M4): both daemons online together and commanded
each on its own; stopping one, or losing its daemon, ramps down only the modules it cools; the
dew-point rule raises only its chiller; alarms per chiller prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLE_LAB, ROOT, Broker
from tests.ingestlab import TELEGRAF_CONF
from tests.labdata import EXAMPLE
from tests.test_safety_scenarios import SENSOR_TIMEOUT, STATUS_TIMEOUT, SafetyLab, on_at
from tests.test_virtual_lab import TWO_CHILLERS
from trackerdcs.clientids import lab_client_ids
from trackerdcs.config import ConfigError, LabConfig, UnknownChiller, load_config, parse_config
from trackerdcs.health import HealthError, Target, prefixes, target_from_argv
from trackerdcs.ingest.conf import load_telegraf_conf
from trackerdcs.ingest.export import ExportError, Selection, selections
from trackerdcs.safety.alarms import alarm_routes
from trackerdcs.safety.config import check_safety, rule_chiller, rule_modules
from trackerdcs.safety.world import World
from trackerdcs.stack.local import build_entries
from trackerdcs.stack.nodered import ui_lab

M = EXAMPLE.modules  # the modules of every lab here, in the lab file's order
COLD, BURNIN = TWO_CHILLERS["coldbox"][1], TWO_CHILLERS["burnin"][1]  # what each chiller cools


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_LAB.read_text())


def two_chillers(data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The example lab with the example's chiller split into TWO_CHILLERS (ports 5050, 5056)."""
    data = data or example()
    section = data.pop("julabo")
    data["chillers"] = [
        {**section, "name": name, "prefix": prefix, "modules": modules,
         "url": f"socket://127.0.0.1:{5050 if name == 'coldbox' else 5056}"}
        for name, (prefix, modules) in TWO_CHILLERS.items()
    ]  # fmt: skip
    rules = data["interlocks"]["rules"]
    rules[0] = {"name": "coldbox_running", "kind": "chiller_running", "chiller": "coldbox"}
    rules.insert(1, {"name": "burnin_running", "kind": "chiller_running", "chiller": "burnin"})
    dewpoint = next(r for r in rules if r["kind"] == "dewpoint_margin")
    dewpoint["chiller"] = "coldbox"  # and protects what it cools
    del dewpoint["modules"]
    next(r for r in rules if r["kind"] == "heartbeat")["sources"]["/julabo_burnin"] = 25
    return data


def loads(data: dict[str, Any]) -> LabConfig:
    return parse_config(data, "lab.yml")


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        loads(data)
    return str(info.value)


# -- the lab YAML ---------------------------------------------------------------------------------


def test_the_julabo_section_is_a_one_chiller_list():
    lab = loads(example())
    [chiller] = lab.chillers
    assert (chiller.name, chiller.prefix, chiller.modules) == ("julabo", "/julabo", "all")
    assert lab.chiller() is chiller and lab.chiller("julabo") is chiller
    assert lab.cooled_by(chiller) == M
    assert lab.chiller_of(M[2]) is chiller


def test_a_list_of_chillers():
    lab = loads(two_chillers())
    coldbox, burnin = lab.chillers
    assert (coldbox.name, coldbox.prefix, coldbox.url) == ("coldbox", "/julabo",
                                                          "socket://127.0.0.1:5050")  # fmt: skip
    assert (burnin.prefix, lab.cooled_by(burnin)) == ("/julabo_burnin", BURNIN)
    assert lab.chiller_of(COLD[-1]) is coldbox and lab.chiller_of(BURNIN[-1]) is burnin
    assert lab.julabo is None
    with pytest.raises(UnknownChiller, match=r"several chillers \(coldbox, burnin\): name one"):
        lab.chiller()
    with pytest.raises(UnknownChiller, match=r"no chiller named 'cold' \(known: coldbox, burnin\)"):
        lab.chiller("cold")
    data = two_chillers()
    del data["chillers"][1]["prefix"]
    assert loads(data).chiller("burnin").prefix == "/burnin"  # default: /<name>


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(julabo=d["chillers"][0]),
         "julabo: give either `julabo` (one chiller) or `chillers` (a list), not both"),
        (lambda d: d["chillers"][1].pop("name"), "chillers.1.name: required"),
        (lambda d: d["chillers"][1].update(name="coldbox", prefix="/b"),
         "chillers.1.name: 'coldbox' is used twice (chillers.0)"),
        (lambda d: d["chillers"][1].update(prefix="/julabo"),
         "chillers.1.prefix: '/julabo' is taken by chiller coldbox"),
        (lambda d: d["chillers"][1].update(prefix="/hv"),
         "chillers.1.prefix: '/hv' is taken by crate sy4527"),
        (lambda d: d["chillers"][1].update(url="socket://127.0.0.1:5050"),
         "chillers.1.url: 'socket://127.0.0.1:5050' is the line of chiller coldbox"),
        (lambda d: d["chillers"][1].pop("modules"),
         "chillers.1.modules: required when the lab has several chillers (the modules chiller "
         f"burnin cools; known: {', '.join(M)})"),
        (lambda d: d["chillers"][1].update(modules=[COLD[-1]]),
         f"chillers.1.modules: {COLD[-1]} is cooled by chiller coldbox"),
        (lambda d: d["chillers"][1].update(modules=["M9"]),
         "chillers.1.modules: no power channel powers module 'M9'"),
        (lambda d: d["chillers"][1].update(name="bad name"), "chillers.1.name"),
        (lambda d: d["sensors"][0].update(name="julabo_burnin"),
         "sensors.0.name: topic '/julabo_burnin' is taken by chiller burnin"),
    ],
)  # fmt: skip
def test_chiller_list_errors_name_the_key(change, expected):
    data = two_chillers()
    change(data)
    assert expected in refused(data)


def test_rules_name_their_chiller_and_protect_what_it_cools():
    lab = loads(two_chillers())
    check_safety(lab)
    rules = {r.name: r for r in lab.interlocks.rules}
    for name, chiller, modules in (
        ("coldbox_running", "coldbox", COLD),
        ("burnin_running", "burnin", BURNIN),
        ("dewpoint", "coldbox", COLD),
        ("module_temperature", None, M),
    ):
        found = rule_chiller(lab, rules[name])
        assert (found.name if found else None, rule_modules(lab, rules[name])) == (chiller, modules)
    # `modules` given wins: a chiller rule may protect more than its chiller cools
    data = two_chillers()
    data["interlocks"]["rules"][1]["modules"] = "all"
    lab = loads(data)
    assert rule_modules(lab, lab.interlocks.rules[1]) == M
    # one chiller: the rules need no `chiller` key, and protect what it cools
    data = example()
    data["julabo"]["modules"] = COLD
    lab = loads(data)
    running = lab.interlocks.rules[0]
    assert rule_chiller(lab, running).name == "julabo"
    assert rule_modules(lab, running) == M  # the example says `all`


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"kind": "chiller_running"},
         "interlocks.rules.0.chiller: the lab has several chillers (coldbox, burnin): name one"),
        ({"kind": "chiller_running", "chiller": "freezer"},
         "interlocks.rules.0.chiller: no chiller named 'freezer'"),
        ({"kind": "dewpoint_margin", "sensor": "sensor_1", "chiller_setpoint": 20},
         "interlocks.rules.0.chiller: the lab has several chillers"),
        ({"kind": "dewpoint_margin", "sensor": "sensor_1", "chiller": "burnin",
          "chiller_setpoint": 45},
         "interlocks.rules.0.chiller_setpoint: 45 is outside the chiller's range -30..40 "
         "(chiller burnin: setpoint_min/max)"),
    ],
)  # fmt: skip
def test_rules_of_a_lab_of_several_chillers_must_name_one(rule, expected):
    data = two_chillers()
    data["interlocks"]["rules"] = [{"name": "r", **rule}]
    with pytest.raises(ValueError) as info:
        check_safety(loads(data))
    assert expected in str(info.value)


def test_the_world_knows_which_modules_each_chiller_cools():
    world = World(loads(two_chillers()))
    assert world.modules_of("/julabo") == set(COLD)
    assert world.modules_of("/julabo_burnin") == set(BURNIN)
    assert world.chiller_label("/julabo_burnin") == "chiller burnin"
    one = World(loads(example()))
    assert one.modules_of("/julabo") is None and one.chiller_label("/julabo") == "chiller"
    assert {"/julabo/status", "/julabo_burnin/availability"} <= set(world.topics())
    assert alarm_routes(loads(two_chillers()))["/julabo_burnin/status"] == (
        "chiller", "/julabo_burnin"
    )  # fmt: skip


def test_every_connection_of_a_lab_has_its_own_client_id():
    ids = lab_client_ids(loads(two_chillers()))
    assert all(len(users) == 1 for users in ids.values())
    assert {"trackerdcs-simlab-chiller-coldbox", "trackerdcs-simlab-chiller-burnin",
            "trackerdcs-simlab-sensor-temp_m1", "trackerdcs-simlab-sy4527-hv",
            "trackerdcs-simlab-interlock"} <= set(ids)  # fmt: skip
    # names that would make two ids equal are refused at load time
    data = two_chillers()
    data["crates"][0]["name"] = "chiller"
    data["chillers"][1]["name"] = "hv"
    assert (
        "MQTT client id 'trackerdcs-simlab-chiller-hv' would be used by crate chiller "
        "(/hv) and by chiller hv" in refused(data)
    )


def test_the_daemons_build_the_lab_s_client_ids(tmp_path, monkeypatch):
    """Every daemon's MqttLink gets the id `lab_client_ids` lists: no two alike, none other."""
    import asyncio

    from trackerdcs.julabo.daemon import JulaboDaemon
    from trackerdcs.power.daemon import CrateDaemon
    from trackerdcs.safety.alarms_daemon import AlarmsDaemon
    from trackerdcs.safety.dcs_daemon import DcsDaemon
    from trackerdcs.safety.interlock_daemon import InterlockDaemon
    from trackerdcs.sensors.daemon import SensorDaemon

    built: list[str] = []

    class Link:  # MqttLink's constructor: remember the id, connect nowhere
        def __init__(self, cfg, prefix, client_id, **kw) -> None:
            built.append(client_id)

    for module in (
        "trackerdcs.power.daemon",
        "trackerdcs.julabo.daemon",
        "trackerdcs.sensors.service",
        "trackerdcs.safety.interlock_daemon",
        "trackerdcs.safety.alarms_daemon",
        "trackerdcs.safety.dcs_daemon",
    ):
        monkeypatch.setattr(f"{module}.MqttLink", Link)  # fmt: skip
    lab = loads(two_chillers())
    loop = asyncio.new_event_loop()
    try:
        CrateDaemon(lab, "sy4527", loop, backend=object())  # type: ignore[arg-type]
        for chiller in lab.chillers:
            JulaboDaemon(lab, loop, chiller.name)
        SensorDaemon(lab, loop)
        InterlockDaemon(lab, loop)
        AlarmsDaemon(lab, loop, str(tmp_path / "alarms.sqlite"))
        dcs = DcsDaemon(lab, loop)
        # the IV scans' and the recipes' own clients (not MqttLinks)
        built += [dcs.ivscan.client.client_id, dcs.recipes.client.client_id]
    finally:
        loop.close()
    assert sorted(built) == sorted(lab_client_ids(lab))


def test_make_run_starts_a_daemon_per_chiller(tmp_path):
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(two_chillers()))
    entries = {e.name: e for e in build_entries(loads(two_chillers()), path, tmp_path)}
    for name, prefix in (("coldbox", "/julabo"), ("burnin", "/julabo_burnin")):
        entry = entries[f"julabo-{name}"]
        assert entry.endpoint == prefix
        argv = entry.make().argv
        assert argv[-4:] == ["--config", str(path), "--chiller", name][-4:]
        assert argv[argv.index("-m") + 1] == "trackerdcs.julabo.daemon"
    assert "julabo" not in entries
    details = "\n".join(entries["sim-lab"].details)
    assert "Julabo simulator coldbox on socket://127.0.0.1:5050" in details
    assert "Julabo simulator burnin on socket://127.0.0.1:5056" in details
    one = {e.name: e for e in build_entries(loads(example()), EXAMPLE_LAB, tmp_path)}
    assert "--chiller" not in one["julabo"].make().argv  # one chiller: as before


def test_the_health_check_finds_the_daemon_s_chiller():
    lab = loads(two_chillers())
    argv = ["trackerdcs-julabo", "--config", "lab.yml", "--chiller", "burnin"]
    target = target_from_argv(argv)
    assert (target.service, target.chiller) == ("julabo", "burnin")
    assert prefixes(lab, target) == ["/julabo_burnin"]
    with pytest.raises(HealthError, match=r"several chillers .*: give --chiller"):
        prefixes(lab, Target("julabo", "lab.yml"))
    assert prefixes(loads(example()), Target("julabo", "lab.yml")) == ["/julabo"]


def test_the_export_picks_a_chiller_by_its_tag():
    telegraf = load_telegraf_conf(TELEGRAF_CONF, env={})
    lab = loads(two_chillers())
    assert selections(lab, telegraf, "chiller", "burnin") == [
        Selection("julabo", "\"chiller\" = 'burnin'")
    ]  # fmt: skip
    with pytest.raises(ExportError, match="several chillers"):
        selections(lab, telegraf, "chiller", None)
    one = loads(example())  # one chiller, unnamed: all its points (older untagged ones too)
    assert selections(one, telegraf, "chiller", None) == [Selection("julabo", "")]
    # /+/status is read by the chillers' input and the sensors': the tags tell which stores it
    assert selections(one, telegraf, "sensor", "temp_m1") == [
        Selection("sensor", "\"name\" = 'temp_m1'")
    ]  # fmt: skip


def test_the_ui_knows_every_chiller():
    given = ui_lab(loads(two_chillers()))
    assert given["chillers"] == [
        {"name": "coldbox", "prefix": "/julabo", "setpoint": [-30.0, 40.0],
         "modules": COLD},
        {"name": "burnin", "prefix": "/julabo_burnin", "setpoint": [-30.0, 40.0],
         "modules": BURNIN},
    ]  # fmt: skip
    # the pages state each rule's consequences for the chiller it watches and what it cools
    rules = {r["name"]: (r["chiller"], r["modules"]) for r in given["interlock"]["rules"]}
    assert rules["coldbox_running"] == ("coldbox", COLD)
    assert rules["burnin_running"] == ("burnin", BURNIN)
    assert rules["dewpoint"] == ("coldbox", COLD)
    assert rules["module_temperature"] == (None, M)
    one = ui_lab(loads(example()))
    assert [c["name"] for c in one["chillers"]] == ["julabo"]
    running = next(r for r in one["interlock"]["rules"] if r["kind"] == "chiller_running")
    assert (running["chiller"], running["modules"]) == ("julabo", M)


def test_the_deployed_labs_run_a_daemon_per_chiller():
    """docker-compose.yml has a julabo service per chiller of deploy/lab.yml (with --chiller
    when it has several); its commented second-chiller example, the ACL's and .env.example's
    name the same user."""
    from tests.test_deployment import COMPOSE, DUMMY, PROD, argv_of, compose_config

    if COMPOSE is None:
        pytest.skip("docker-compose (v1) is not installed")
    for files, name in ((PROD, "lab.yml"), (DUMMY, "lab.dummy.yml")):
        lab = load_config(ROOT / "deploy" / name)
        services = compose_config(files)["services"].values()
        served = [argv_of(s) for s in services if argv_of(s)[:1] == ["trackerdcs-julabo"]]
        assert len(served) == len(lab.chillers), name
        for argv in served:
            chiller = argv[argv.index("--chiller") + 1] if "--chiller" in argv else None
            assert lab.chiller(chiller) in lab.chillers
    example = re.search(r"^  # julabo-burnin:\n((?:  #   .*\n)+)", (ROOT / PROD[0]).read_text(),
                        re.M)  # fmt: skip
    assert example, "docker-compose.yml: the commented second chiller is gone"
    service = yaml.safe_load(re.sub(r"^  #   ", "", example.group(1), flags=re.M).replace(
        "<<: *trackerdcs", "image: trackerdcs"))  # fmt: skip
    assert service["command"][-2:] == ["--chiller", "burnin"]
    user = service["environment"]["TRACKERDCS_MQTT_USERNAME"]
    assert f"#   user {user}\n" in (ROOT / "mosquitto" / "acl").read_text()
    assert f"MQTT_PASSWORD_{user.upper()}" in service["environment"]["TRACKERDCS_MQTT_PASSWORD"]
    assert f"MQTT_PASSWORD_{user.upper()}=" in (ROOT / ".env.example").read_text()


# -- the two-chiller virtual lab, every process real ---------------------------------------------

INTERLOCKS = {
    "reassert_interval": 0.5,
    "startup_grace": 0.5,
    "rules": [
        {"name": "coldbox_running", "kind": "chiller_running", "chiller": "coldbox",
         "status_timeout": STATUS_TIMEOUT},
        {"name": "burnin_running", "kind": "chiller_running", "chiller": "burnin",
         "status_timeout": STATUS_TIMEOUT},
        {"name": "coldbox_dewpoint", "kind": "dewpoint_margin", "chiller": "coldbox",
         "sensor": "sensor_1", "margin": 2.0, "chiller_setpoint": 20},
        {"name": "heartbeat", "kind": "heartbeat",
         "sources": {"/julabo": 3.0, "/julabo_burnin": 3.0, "/sensor_1": SENSOR_TIMEOUT}},
    ],
}  # fmt: skip
PREFIX = {name: prefix for name, (prefix, _) in TWO_CHILLERS.items()}


@pytest.fixture(scope="module")
def lab(workdir: Path, broker: Broker) -> Iterator[SafetyLab]:
    lab = SafetyLab(workdir, broker, "chillers", interlocks=INTERLOCKS, chillers=2).start()
    lab.rules(lambda r: not any(rule["active"] for rule in r.values()), since=0)
    yield lab
    assert lab.stop() == [0] * 8  # every process exits cleanly on SIGTERM


def julabo(lab: SafetyLab, name: str, action: str, value: Any) -> dict[str, Any]:
    return lab.command(f"{PREFIX[name]}/cmd/{action}", value)


def hv_on(lab: SafetyLab, volts: float = 60.0) -> None:
    """Every module's HV on at `volts`, and wait until it is there."""
    since = lab.client.mark()
    for module in COLD + BURNIN:
        assert lab.command(f"/hv/cmd/setv/{module}", volts)["ok"]
        assert lab.command(f"/hv/cmd/switch/{module}", "on")["ok"]
    lab.hv(lambda m: all(on_at(volts)(m[x]) for x in COLD + BURNIN), since=since)


def interlock_commands(lab: SafetyLab, since: int) -> set[str]:
    """The topics of the commands the interlock service sent since `since`."""
    return {
        m.topic for m in lab.client.messages[since:]
        if "/cmd/" in m.topic and b'"id": "interlock:' in m.payload
    }  # fmt: skip


def cooling(lab: SafetyLab, setpoint: float = 15.0) -> None:
    """Both chillers running at `setpoint`, both chiller rules armed."""
    for name in TWO_CHILLERS:
        assert julabo(lab, name, "setpoint", setpoint)["ok"]
        assert julabo(lab, name, "switch", "on")["ok"]
    lab.rules(lambda r: r["coldbox_running"]["armed"] and r["burnin_running"]["armed"])


def test_both_chiller_daemons_are_online_together_and_commanded_each_on_its_own(lab):
    for prefix in PREFIX.values():
        assert lab.client.wait_for(f"{prefix}/availability").text == "online"
    since = lab.client.mark()
    assert julabo(lab, "coldbox", "setpoint", -5)["ok"]
    assert julabo(lab, "burnin", "setpoint", 25)["ok"]
    assert julabo(lab, "burnin", "switch", "on")["ok"]
    burnin = lab.wait("/julabo_burnin/status", lambda s: s["state"] == "RUNNING", since=since)
    coldbox = lab.wait("/julabo/status", lambda s: s["setpoint"] == -5.0, since=since)
    assert (burnin["chiller"], burnin["setpoint"]) == ("burnin", 25.0)
    assert (coldbox["chiller"], coldbox["state"]) == ("coldbox", "STOPPED")
    state = lab.backdoor("get")  # the simulators agree: each unit got its own commands
    assert state["chillers"]["burnin"]["running"] is True
    assert state["chillers"]["coldbox"]["running"] is False
    assert {m: state["modules"][m]["chiller"] for m in COLD + BURNIN} == {
        **dict.fromkeys(COLD, "coldbox"), **dict.fromkeys(BURNIN, "burnin")
    }  # fmt: skip
    assert julabo(lab, "burnin", "switch", "off")["ok"]
    # one client id each: the broker never closed one for the other (no flapping)
    log = lab.broker.process.output()
    for name in TWO_CHILLERS:
        assert re.search(rf"New client connected .* as trackerdcs-chillers-chiller-{name} ", log)
    assert "already connected" not in log
    offline = [m.topic for m in lab.client.messages
               if m.topic.endswith("/availability") and m.text == "offline"]  # fmt: skip
    assert not offline


def test_stopping_one_chiller_ramps_down_only_the_modules_it_cools(lab):
    cooling(lab)
    hv_on(lab)
    since = lab.client.mark()
    assert julabo(lab, "burnin", "switch", "off")["ok"]
    rules = lab.rules(lambda r: r["burnin_running"]["active"], since=since)
    assert rules["burnin_running"]["reason"] == "chiller burnin STOPPED (REMOTE STOP)"
    assert rules["burnin_running"]["modules"] == BURNIN
    assert not rules["coldbox_running"]["active"]
    hv = lab.hv(lambda m: all(m[x]["state"] == "OFF" for x in BURNIN), since=since)
    assert all(on_at(60)(hv[x]) for x in COLD)  # the cold box goes on
    answer = lab.command(f"/hv/cmd/switch/{BURNIN[0]}", "on")  # inhibited, the cold box's not
    assert not answer["ok"] and "burnin_running (chiller burnin STOPPED" in answer["error"]
    assert lab.command(f"/hv/cmd/switch/{COLD[0]}", "on")["ok"]
    sent = interlock_commands(lab, since)
    assert {f"/hv/cmd/switch/{m}" for m in BURNIN} <= sent
    assert not {f"/hv/cmd/switch/{m}" for m in COLD} & sent

    assert lab.command("/interlock/cmd/reset/burnin_running", "")["ok"]  # stopped on purpose
    lab.rules(lambda r: not r["burnin_running"]["active"], since=since)
    lab.all_off()


def test_a_silent_chiller_daemon_ramps_down_only_its_modules(lab):
    hv_on(lab)
    daemon = next(p for p in lab.processes if p.name == "julabo daemon burnin")
    since = lab.client.mark()
    daemon.stop()  # its last will: /julabo_burnin/availability offline
    rules = lab.rules(lambda r: r["heartbeat"]["active"], since=since)
    assert rules["heartbeat"]["modules"] == BURNIN
    assert "/julabo_burnin offline" in rules["heartbeat"]["reason"]
    hv = lab.hv(lambda m: all(m[x]["state"] == "OFF" for x in BURNIN), since=since)
    assert all(on_at(60)(hv[x]) for x in COLD)
    daemon.start()
    lab.rules(lambda r: not r["heartbeat"]["active"], since=since)
    lab.all_off()


def test_the_dew_point_rule_raises_its_own_chiller_only(lab):
    cooling(lab, 15.0)
    hv_on(lab)
    lab.wait("/temp_m1/status", lambda s: abs((s["temperature"] or 99) - 15) < 1, 10)
    since = lab.client.mark()
    assert lab.backdoor("set room_humidity=75")["ok"]  # dew point 16.4 C: above the modules
    rules = lab.rules(lambda r: r["coldbox_dewpoint"]["active"], since=since)
    assert rules["coldbox_dewpoint"]["modules"] == COLD
    coldbox = lab.wait("/julabo/status", lambda s: s["setpoint"] == 20.0, since=since)
    assert coldbox["state"] == "RUNNING"
    hv = lab.hv(lambda m: all(m[x]["state"] == "OFF" for x in COLD), since=since)
    assert all(on_at(60)(hv[x]) for x in BURNIN)
    assert lab.client.latest("/julabo_burnin/status").json["setpoint"] == 15.0
    sent = interlock_commands(lab, since)
    assert {t for t in sent if t.endswith("/cmd/setpoint")} == {"/julabo/cmd/setpoint"}
    assert lab.backdoor("set room_humidity=45")["ok"]
    lab.rules(lambda r: not r["coldbox_dewpoint"]["active"], since=since)
    lab.all_off()


def test_alarms_and_the_backdoor_name_the_chiller(lab):
    answer = lab.backdoor("julabo fault -1")
    assert not answer["ok"] and "name the chiller (known: coldbox, burnin)" in answer["error"]
    since = lab.client.mark()
    assert lab.backdoor("julabo burnin fault -1")["ok"]  # LOW LEVEL ALARM on the burn-in box
    alarms = lab.alarms(lambda a: any(x["key"] == "chiller_error:/julabo_burnin" for x in a),
                        since)  # fmt: skip
    alarm = next(a for a in alarms if a["key"] == "chiller_error:/julabo_burnin")
    assert alarm["source"] == "/julabo_burnin" and "LOW LEVEL ALARM" in alarm["text"]
    assert not [a for a in alarms if a["source"] == "/julabo" and a["active"]]
    assert lab.backdoor("julabo burnin clear")["ok"]
    lab.wait("/julabo_burnin/status", lambda s: s["state"] == "STOPPED", since=since)
