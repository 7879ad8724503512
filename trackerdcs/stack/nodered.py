"""Node-RED, the operators' control UI, for the local stack and the tests, on loopback only.

Nothing secret is written into the repository. The editor's password comes from
`TRACKERDCS_NODE_RED_PASSWORD`, or is generated for this run and written (mode 0600) to
`<state>/admin-password`; Node-RED gets only its bcrypt hash, made by the `bcryptjs` that ships
with Node-RED. The credential secret comes from `TRACKERDCS_NODE_RED_SECRET`, or is generated
once and kept in `<state>/credential-secret` (0600), so saved credentials stay readable.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackerdcs.config import LabConfig
from trackerdcs.safety.alarms import ALARMS_PREFIX
from trackerdcs.safety.audit import AUDIT_PREFIX
from trackerdcs.safety.config import rule_chiller, rule_modules
from trackerdcs.safety.interlock import interlock_prefix
from trackerdcs.safety.liveness import heartbeats
from trackerdcs.safety.rules import RULE_KINDS
from trackerdcs.safety.sequencer import PREFIX as SEQUENCER_PREFIX
from trackerdcs.stack.process import ManagedProcess

NODE_RED_DIR = Path(__file__).resolve().parents[2] / "node-red"
FLOWS = NODE_RED_DIR / "flows.json"
SETTINGS = NODE_RED_DIR / "settings.js"
RED_JS = NODE_RED_DIR / "node_modules" / "node-red" / "red.js"
BCRYPTJS = NODE_RED_DIR / "node_modules" / "bcryptjs"
PASSWORD_ENV = "TRACKERDCS_NODE_RED_PASSWORD"
SECRET_ENV = "TRACKERDCS_NODE_RED_SECRET"
USERNAME = "admin"

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


def hash_password(password: str) -> str:
    """A bcrypt hash of `password` (given to node on stdin, never on a command line)."""
    check_installed()
    done = subprocess.run(
        [node_binary(), "-e", _HASH_JS, str(BCRYPTJS)],
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


def ui_lab(cfg: LabConfig) -> dict[str, Any]:
    """What the flows need to know about the lab (`TRACKERDCS_UI_LAB`): prefixes, limits, each
    source's heartbeat with the factor after which it counts as stale (as the alarm service
    judges it: trackerdcs.safety.liveness), the interlock rules, and the safety services'
    prefixes (the sequencer only when the lab has modules)."""
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
    }


@dataclass
class NodeRed:
    """Node-RED serving the repo's flows for one lab; `state_dir` holds its user dir and login."""

    cfg: LabConfig
    state_dir: Path
    port: int = 1880
    host: str = "127.0.0.1"
    flows: Path = FLOWS
    _password: str | None = field(default=None, repr=False)

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
        return f"editor {self.url} (user {USERNAME}, password in {where})"

    def env(self) -> dict[str, str]:
        return {
            "TRACKERDCS_NODE_RED_HOST": self.host,
            "TRACKERDCS_NODE_RED_USER": USERNAME,
            "TRACKERDCS_NODE_RED_PASSWORD_HASH": hash_password(self.password),
            "TRACKERDCS_NODE_RED_SECRET": self.credential_secret(),
            "TRACKERDCS_MQTT_HOST": self.cfg.mqtt.host,
            "TRACKERDCS_MQTT_PORT": str(self.cfg.mqtt.port),
            "TRACKERDCS_UI_LAB": json.dumps(ui_lab(self.cfg)),
            "PORT": str(self.port),
        }

    def answers(self) -> bool:
        """True when the dashboard answers HTTP 200."""
        try:
            with urllib.request.urlopen(self.dashboard_url, timeout=1) as reply:
                return reply.status == 200
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
