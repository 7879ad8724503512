#!/usr/bin/env python3
"""Write `.env` for the container stack: `.env.example` with a new random value for every secret.

    deploy/init-env.py                 .env next to docker-compose.yml (refuses to overwrite one)
    deploy/init-env.py -o other.env    elsewhere

Every empty `*PASSWORD*` or `*SECRET*` gets 32 random hex digits; `NODE_RED_PASSWORD_HASH` gets
the bcrypt hash of a new editor password, which is printed once and stored nowhere: keep it.
The hash is made with pyca's `bcrypt` (pinned in requirements.txt): this Python's, else that of
the repo's virtualenv (`.venv`, `scripts/setup.sh` makes it; `$TRACKERDCS_VENV`), else with
`htpasswd -B`: a `$2b$` hash, which Node-RED's `adminAuth` (bcryptjs) reads. Without any of
them it stays empty and the script says how to make it with the Node-RED image. Mosquitto's
password file is not made here: the broker's container writes it from `.env` with
`mosquitto_passwd` (its own PBKDF2-SHA512 `$7$` format; Mosquitto reads no bcrypt). The file is
written with mode 0600. Runs with any python3 >= 3.11 on the DAQ PC, `bcrypt` installed or not.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HASH_KEY = "NODE_RED_PASSWORD_HASH"


_HASH_WITH_BCRYPT = (
    "import sys, bcrypt; "
    "print(bcrypt.hashpw(sys.stdin.read().encode(), bcrypt.gensalt(rounds=10)).decode())"
)


def bcrypt_hash(password: str) -> str | None:
    """A `$2b$` bcrypt hash (cost 10) of `password`, or None when no local tool can make one."""
    try:
        import bcrypt  # pyca/bcrypt; Python's `crypt` is gone from 3.13
    except ImportError:
        pass
    else:
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode("ascii")
    venv_python = ROOT / os.environ.get("TRACKERDCS_VENV", ".venv") / "bin" / "python"
    if venv_python.is_file():
        out = subprocess.run([str(venv_python), "-c", _HASH_WITH_BCRYPT], input=password,
                             text=True, capture_output=True, check=False)  # fmt: skip
        if out.returncode == 0 and out.stdout.startswith("$2b$"):
            return out.stdout.strip()
    htpasswd = shutil.which("htpasswd")
    if htpasswd:
        out = subprocess.run([htpasswd, "-inbBC", "10", ""], input=password, text=True,
                             capture_output=True, check=False)  # fmt: skip
        hashed = out.stdout.strip().lstrip(":")
        if out.returncode == 0 and hashed.startswith("$2y$"):
            return "$2b$" + hashed[4:]  # the same algorithm; bcryptjs reads both
    return None


def render(example: str) -> tuple[str, str, bool]:
    """(the .env text, the Node-RED editor's password, whether its hash was made)."""
    editor_password = secrets.token_urlsafe(15)
    hashed = bcrypt_hash(editor_password)
    lines = []
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and not value:
            if key == HASH_KEY:
                value = f"'{hashed}'" if hashed else ""
            elif "PASSWORD" in key or "SECRET" in key:
                value = secrets.token_hex(16)
        lines.append(f"{key}{sep}{value}" if sep and not line.startswith("#") else line)
    return "\n".join(lines) + "\n", editor_password, hashed is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write .env with new secrets from .env.example")
    p.add_argument("-o", "--output", type=Path, default=ROOT / ".env")
    p.add_argument("--example", type=Path, default=ROOT / ".env.example")
    args = p.parse_args(argv)
    if args.output.exists():
        print(f"{args.output} exists: not overwritten (docs/deployment.md, 'Secrets')",
              file=sys.stderr)  # fmt: skip
        return 1
    text, editor_password, hashed = render(args.example.read_text())
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    print(f"wrote {args.output} (mode 0600): every secret is new")
    if hashed:
        print(f"Node-RED editor: user admin, password {editor_password}")
        print("  (shown once and stored nowhere: keep it in the lab's password manager)")
    else:
        print(f"{HASH_KEY} is empty: no bcrypt tool here. Once the images are built:")
        print("  echo -n 'the password' | docker compose run --rm --no-deps -T --entrypoint python "
              "nodered -m trackerdcs.deploy hash-password")  # fmt: skip
        print(f"  and put the hash in {args.output} as {HASH_KEY}='...' (single quotes)")
    print("Grafana: user admin, password GRAFANA_ADMIN_PASSWORD in .env; MQTT users: mosquitto/acl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
