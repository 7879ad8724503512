"""Node-RED, the operators' control UI, for the local stack and the tests, on loopback only.

Nothing secret is written into the repository. The editor's password comes from
`TRACKERDCS_NODE_RED_PASSWORD`, or is generated for this run and written (mode 0600) to
`<state>/admin-password`; Node-RED gets only its bcrypt hash, made by the `bcryptjs` that
node-red/package.json pins. The credential secret comes from `TRACKERDCS_NODE_RED_SECRET`, or is
generated once and kept in `<state>/credential-secret` (0600), so saved credentials stay readable.

The dashboard's login (node-red/login/) is off on loopback unless asked for (`login=True`, or
`TRACKERDCS_UI_LOGIN=on`); its users are `TRACKERDCS_UI_USERS` and `users` (hashed here), the
editor's admin too. The History page reads the lab's InfluxDB as the read-only user `nodered`
(created here, with a password new for each run), and its CSV export runs `trackerdcs export`.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackerdcs.config import LabConfig, influx_seconds
from trackerdcs.ingest.conf import TelegrafConf, load_telegraf_conf
from trackerdcs.ingest.export import lab_measurements
from trackerdcs.ingest.influxdb import DATABASE, InfluxClient
from trackerdcs.safety.alarms import ALARMS_PREFIX
from trackerdcs.safety.audit import AUDIT_PREFIX
from trackerdcs.safety.config import rule_chiller, rule_modules
from trackerdcs.safety.interlock import interlock_prefix
from trackerdcs.safety.liveness import heartbeats
from trackerdcs.safety.rules import RULE_KINDS
from trackerdcs.safety.sequencer import PREFIX as SEQUENCER_PREFIX
from trackerdcs.stack.influx import DOWNSAMPLED_RP, RAW_RP, TELEGRAF_CONF, ensure_user
from trackerdcs.stack.process import ManagedProcess

NODE_RED_DIR = Path(__file__).resolve().parents[2] / "node-red"
FLOWS = NODE_RED_DIR / "flows.json"
SETTINGS = NODE_RED_DIR / "settings.js"
RED_JS = NODE_RED_DIR / "node_modules" / "node-red" / "red.js"
BCRYPTJS = NODE_RED_DIR / "node_modules" / "bcryptjs"
PASSWORD_ENV = "TRACKERDCS_NODE_RED_PASSWORD"
SECRET_ENV = "TRACKERDCS_NODE_RED_SECRET"
USERNAME = "admin"
ROLES = ("viewer", "operator", "admin")  # node-red/login/index.js ROLES
INFLUX_READER = "nodered"  # the History page's read-only InfluxDB user
GRAFANA_URL_ENV = "TRACKERDCS_GRAFANA_URL"  # where operators reach Grafana, for the page's links

_HASH_JS = (
    "const b = require(process.argv[1]); let s = '';"
    "process.stdin.on('data', d => s += d).on('end', () => process.stdout.write(b.hashSync(s, 10)))"
)


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node (Node.js) is not installed: run scripts/setup.sh")
    return node


def check_installed() -> None:
    if not RED_JS.exists():
        raise RuntimeError(
            f"Node-RED is not installed in {NODE_RED_DIR}: run scripts/setup.sh (npm install)"
        )


def hash_password(password: str, home: Path | None = None) -> str:
    """A bcrypt hash of `password` (given to node on stdin, never on a command line), made by
    the bcryptjs of node-red/ (or of `home`, the container's /opt/node-red)."""
    if home is None:
        check_installed()
    bcryptjs = BCRYPTJS if home is None else home.resolve() / "node_modules" / "bcryptjs"
    if not bcryptjs.exists():
        raise RuntimeError(f"no bcryptjs in {bcryptjs.parent}: give Node-RED's directory (--home)")
    done = subprocess.run(
        [node_binary(), "-e", _HASH_JS, str(bcryptjs)],
        input=password,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def _private_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    path.chmod(0o600)


def ui_rules(cfg: LabConfig) -> list[dict[str, Any]]:
    """The lab's interlock rules as the pages state their consequences ("stopping the chiller
    ramps down the HV of M1-M4 through chiller_running"): what each watches, the modules it
    protects and the chiller it watches or acts on (both resolved as the interlock service does:
    `rule_modules`, `rule_chiller`; `chiller` is the chiller's name, None for a rule that uses
    none), its action and what it does to the chiller. `margin`/`sensor`: a dew-point rule's;
    `resettable`: it takes `/interlock/cmd/reset/{rule}` (docs/topics.md)."""
    rules = []
    for rule in cfg.interlocks.rules:
        chiller = rule_chiller(cfg, rule)
        rules.append(
            {
                "name": rule.name,
                "kind": rule.kind,
                "modules": rule_modules(cfg, rule),
                "chiller": chiller.name if chiller else None,
                "action": str(rule.action),
                "chiller_setpoint": rule.chiller_setpoint,
                "margin": getattr(rule, "margin", None),
                "sensor": getattr(rule, "sensor", None),
                "watches": RULE_KINDS[rule.kind].summary,
                "resettable": RULE_KINDS[rule.kind].resettable,
            }
        )
    return rules


def ui_history(cfg: LabConfig, telegraf: TelegrafConf) -> dict[str, Any]:
    """Where the History page reads (node-red/src/history.js): the database, its retention
    policies (the raw one's retention in s, None when infinite; the downsampled copy's interval)
    and the measurements of the lab's data by source (telegraf.conf, as `trackerdcs export`)."""
    raw = influx_seconds(cfg.influx.raw_retention)
    return {
        "database": DATABASE,
        "raw": RAW_RP,
        "downsampled": DOWNSAMPLED_RP,
        "raw_retention": None if raw == float("inf") else raw,
        "downsample_interval": influx_seconds(cfg.influx.downsample_interval),
        "measurements": lab_measurements(cfg, telegraf),
    }


def export_command(config_path: Path, telegraf_conf: Path, python: str = sys.executable) -> str:
    """`trackerdcs export` as the flows run it (TRACKERDCS_UI_EXPORT, one shell line: the exec
    node appends `lab --from ... --to ...`), for the lab YAML at `config_path`."""
    argv = [python, "-m", "trackerdcs.cli", "export", "--config", str(config_path)]
    return shlex.join([*argv, "--telegraf-conf", str(telegraf_conf)])


def ui_users(users: list[tuple[str, str, str]], home: Path | None = None) -> str:
    """TRACKERDCS_UI_USERS for (name, role, password) triples: `name:role:bcrypt-hash ...`."""
    for name, role, _ in users:
        if role not in ROLES:
            raise ValueError(f"user {name}: role {role!r} is not one of {', '.join(ROLES)}")
    return " ".join(f"{n}:{r}:{hash_password(p, home)}" for n, r, p in users)


def ui_lab(
    cfg: LabConfig, telegraf: TelegrafConf | None = None, results_dir: Path | None = None
) -> dict[str, Any]:
    """What the flows need to know about the lab (`TRACKERDCS_UI_LAB`): prefixes, limits, each
    source's heartbeat with the factor after which it counts as stale (as the alarm service
    judges it: trackerdcs.safety.liveness), the interlock rules, the safety services' prefixes
    (the sequencer only when the lab has modules), given telegraf.conf, where the History
    page reads (`ui_history`), and the folder of IV scan results the Module tests page lists
    (`results_dir`, default `ivscan.results_dir`)."""
    power: dict[str, dict[str, str]] = {}
    for crate in cfg.crates:
        for kind, prefix in sorted(crate.prefixes.items()):
            power[prefix] = {"kind": str(kind), "crate": crate.name}
    limits: dict[str, dict[str, dict[str, float]]] = {}
    for ch in cfg.power.channels:
        prefix = next(
            (c.prefixes[ch.kind] for c in cfg.crates if ch.kind in c.prefixes), f"/{ch.kind}"
        )
        lim = cfg.limits_for(ch)
        limits.setdefault(prefix, {})[ch.name] = {"vmax": lim.vmax, "imax": lim.imax}
    chillers = [
        {"name": c.name, "prefix": c.prefix, "setpoint": [c.setpoint_min, c.setpoint_max],
         "modules": cfg.cooled_by(c)}
        for c in cfg.chillers
    ]  # fmt: skip
    return {
        "lab": cfg.lab,
        "power": power,
        "chillers": chillers,
        "sensors": [s.name for s in cfg.sensors],
        "modules": list(cfg.modules()),
        "limits": limits,
        "heartbeats": heartbeats(cfg),
        "liveness_factor": cfg.alarms.liveness_factor,
        "interlock": {"prefix": interlock_prefix(cfg), "rules": ui_rules(cfg)},
        "sequencer": SEQUENCER_PREFIX if cfg.modules() else None,
        "alarms": ALARMS_PREFIX,
        "audit": AUDIT_PREFIX,
        "history": ui_history(cfg, telegraf) if telegraf is not None else None,
        "ivscan_results": str(results_dir or cfg.ivscan.results_dir),
    }


@dataclass
class NodeRed:
    """Node-RED serving the repo's flows for one lab; `state_dir` holds its user dir and login.

    `login`: the dashboard's login on or off (None: TRACKERDCS_UI_LOGIN decides, else off on
    loopback); `users`: (name, role, password) besides TRACKERDCS_UI_USERS; `config_path`: the
    lab YAML, for the History page's InfluxDB and CSV export (None: no history)."""

    cfg: LabConfig
    state_dir: Path
    port: int = 1880
    host: str = "127.0.0.1"
    flows: Path = FLOWS
    login: bool | None = None
    users: list[tuple[str, str, str]] = field(default_factory=list)
    config_path: Path | None = None
    telegraf_conf: Path = TELEGRAF_CONF
    grafana_url: str | None = None
    results_dir: Path | None = None  # IV scan results (default: ivscan.results_dir)
    _password: str | None = field(default=None, repr=False)
    reader_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def dashboard_url(self) -> str:
        return f"{self.url}dashboard/"

    @property
    def password_file(self) -> Path:
        return self.state_dir / "admin-password"

    @property
    def password(self) -> str:
        """The editor's password: from the environment, else new for this run (and saved)."""
        if self._password is None:
            given = os.environ.get(PASSWORD_ENV)
            self._password = given or secrets.token_urlsafe(15)
            if given:
                self.password_file.unlink(missing_ok=True)
            else:
                _private_file(self.password_file, self._password)
        return self._password

    def credential_secret(self) -> str:
        given = os.environ.get(SECRET_ENV)
        if given:
            return given
        path = self.state_dir / "credential-secret"
        if not path.exists():
            _private_file(path, secrets.token_hex(32))
        return path.read_text().strip()

    def login_hint(self) -> str:
        """Where to log into the editor (never the password itself)."""
        where: Path | str = self.password_file
        if self.password_file.is_relative_to(Path.cwd()):
            where = self.password_file.relative_to(Path.cwd())
        if os.environ.get(PASSWORD_ENV):
            where = f"${PASSWORD_ENV}"
        login = "on" if self.login or os.environ.get("TRACKERDCS_UI_LOGIN") == "on" else "off"
        return f"editor {self.url} (user {USERNAME}, password in {where}); dashboard login {login}"

    def history_env(self) -> dict[str, str]:
        """The History page's InfluxDB (as the read-only user `nodered`, created or given a new
        password here: InfluxDB must be up) and its CSV export (`trackerdcs export`, which reads
        the lab YAML's credential variables: the same user)."""
        assert self.config_path is not None
        influx = self.cfg.influx
        admin = InfluxClient(influx.url, username=influx.username, password=influx.password)
        ensure_user(admin, INFLUX_READER, self.reader_password, "READ")
        return {
            "TRACKERDCS_UI_INFLUX_URL": influx.url,
            "TRACKERDCS_UI_INFLUX_USERNAME": INFLUX_READER,
            "TRACKERDCS_UI_INFLUX_PASSWORD": self.reader_password,
            influx.username_env: INFLUX_READER,
            influx.password_env: self.reader_password,
            "TRACKERDCS_UI_EXPORT": export_command(self.config_path, self.telegraf_conf),
        }

    def env(self) -> dict[str, str]:
        telegraf = load_telegraf_conf(self.telegraf_conf) if self.config_path else None
        given = os.environ.get("TRACKERDCS_UI_USERS", "")
        env = {
            "TRACKERDCS_NODE_RED_HOST": self.host,
            "TRACKERDCS_NODE_RED_USER": USERNAME,
            "TRACKERDCS_NODE_RED_PASSWORD_HASH": hash_password(self.password),
            "TRACKERDCS_NODE_RED_SECRET": self.credential_secret(),
            "TRACKERDCS_UI_USERS": " ".join(filter(None, [given, ui_users(self.users)])),
            "TRACKERDCS_MQTT_HOST": self.cfg.mqtt.host,
            "TRACKERDCS_MQTT_PORT": str(self.cfg.mqtt.port),
            "TRACKERDCS_UI_LAB": json.dumps(ui_lab(self.cfg, telegraf, self.results_dir)),
            "TRACKERDCS_UI_GRAFANA_URL": self.grafana_url or os.environ.get(GRAFANA_URL_ENV, ""),
            "PORT": str(self.port),
        }
        if self.login is not None:
            env["TRACKERDCS_UI_LOGIN"] = "on" if self.login else "off"
        if self.config_path is not None:
            env.update(self.history_env())
        return env

    def answers(self) -> bool:
        """True when Node-RED serves the dashboard: HTTP 200, or, with the login on, the login
        form in front of it (node-red/login/)."""
        try:
            with urllib.request.urlopen(self.dashboard_url, timeout=1) as reply:
                return reply.status == 200
        except urllib.error.HTTPError as exc:
            return exc.code == 401 and b"/login" in exc.read()
        except OSError:
            return False

    def process(self, log_path: Path | None = None) -> ManagedProcess:
        """The Node-RED process (not started), on a fresh copy of the flows in `state_dir`.

        Deploying from the editor changes that copy only: the UI's sources are node-red/src/.
        """
        check_installed()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        flows = shutil.copyfile(self.flows, self.state_dir / "flows.json")
        argv = [node_binary(), str(RED_JS), "--settings", str(SETTINGS)]
        argv += ["--userDir", str(self.state_dir / "userdir"), "--port", str(self.port)]
        argv.append(str(flows))
        return ManagedProcess(
            "node-red",
            argv,
            log_path=log_path or self.state_dir / "node-red.log",
            env=self.env(),
            ready=lambda proc: "Started flows" in proc.output() and self.answers(),
            ready_timeout=60,
            cwd=NODE_RED_DIR,
        )
