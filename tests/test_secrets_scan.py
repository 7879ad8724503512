"""No secret is committed: scripts/scan_secrets.py on the repository, and on planted secrets.

The planted files are written at run time into a temporary directory (each secret is assembled
from pieces), so that no secret-looking text is ever committed, this file included.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCAN = ROOT / "scripts" / "scan_secrets.py"
BEGIN = "-----BEGIN "  # assembled below: never a whole key header in this file


def scan(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCAN), *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_repository_holds_no_secret() -> None:
    """Every file git tracks or would add; a finding names the file and line, value masked."""
    done = scan()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no secret" in done.stdout


def test_secret_files_are_ignored_by_git() -> None:
    for path in (
        ".env",
        "mosquitto/certs/server.key",
        "mosquitto/certs/ca.key",
    ):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{path} is not ignored by git"


def hexes(n: int = 16) -> str:
    return secrets.token_hex(n)


PLANTED = {
    "id_rsa": lambda: f"{BEGIN}RSA PRIVATE KEY-----\nMIIEow{hexes()}\n",
    "server.key": lambda: f"{BEGIN}EC PRIVATE KEY-----\nMHcC{hexes()}\n",
    "key.pem": lambda: f"{BEGIN}PRIVATE KEY-----\nMIGH{hexes()}\n",
    "dot.env": lambda: f"MQTT_PASSWORD_POWER={hexes()}\nGRAFANA_ADMIN_PASSWORD={hexes(6)}\n",
    "settings.py": lambda: f"password = \"{hexes(6)}\"\nAPI_KEY = '{hexes()}'\n",
    "lab.yml": lambda: f"mqtt:\n  host: broker\n  password: {hexes(6)}\n",
    "compose.yml": lambda: f"    environment:\n      TRACKERDCS_MQTT_PASSWORD: {hexes(6)}\n",
    "url.txt": lambda: f"broker: mqtt://operator:{hexes(6)}@daq-pc:1883\n",
    "run.sh": lambda: f"mosquitto_pub -u operator -P '{hexes(6)}' -t /hv/cmd/clear -m 1\n",
    "github.txt": lambda: "token: gh" + "p_" + "A1b2" * 9 + "\n",
    "aws.txt": lambda: "key " + "AK" + "IA" + "ABCDEFGHIJKLMNOP" + "\n",
    "hash.env": lambda: "NODE_RED_PASS" + "WORD_HASH='$" + "2b$10$" + "a" * 53 + "'\n",
    "passwd": lambda: "power:$7$101$" + "A" * 16 + "$" + "B" * 86 + "\n",
    "settings.json": lambda: '{"user": "grafana", "secret": "' + hexes() + '"}\n',
}


@pytest.mark.parametrize("name", PLANTED)
def test_a_planted_secret_is_caught(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(PLANTED[name]())
    done = scan(path)
    assert done.returncode == 1, f"{name} not caught: {done.stdout}"
    assert f"{path}:" in done.stdout or f"{name}:" in done.stdout
    assert hexes() not in done.stdout  # sanity: a fresh value cannot appear
    for line in PLANTED[name]().splitlines():  # the finding masks the value
        value = line.rsplit(" ", 1)[-1]
        if len(value) > 12:
            assert value not in done.stdout


ALLOWED = """\
# placeholders, references and names: none is a secret
MQTT_PASSWORD_POWER=
GRAFANA_ADMIN_PASSWORD=change-me
TRACKERDCS_MQTT_PASSWORD: ${MQTT_PASSWORD_POWER:?run deploy/init-env.py}
mosquitto_sub -u viewer -P "$$MQTT_PASSWORD_VIEWER" -t x -E
mosquitto_pub -u operator -P "$MQTT_PASSWORD_OPERATOR" -t /hv/cmd/clear -m 1
password_env: TRACKERDCS_MQTT_PASSWORD
password = os.environ["TRACKERDCS_MQTT_PASSWORD"]
client.username_pw_set(cfg.username, cfg.password)
secret: ${TRACKERDCS_INFLUX_PASSWORD}
url: mqtt://user:${PASSWORD}@broker:1883
"passport-oauth2-client-password": "0.1.2",
password: <the operator's password>
token = "wrong"  # secret-scan: allow (a test's wrong password)
"""


def test_placeholders_and_references_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "allowed.txt"
    path.write_text(ALLOWED)
    done = scan(path)
    assert done.returncode == 0, done.stdout
