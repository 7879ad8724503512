#!/usr/bin/env python3
"""Fail when a secret is about to be committed: private keys, tokens, password hashes, literal
passwords in assignments, URLs and command lines.

    scripts/scan_secrets.py             every file git tracks or would add (not the ignored ones)
    scripts/scan_secrets.py FILE...     these files

Exit 1 with one line per finding (`path:line: rule: the line, value masked`), 0 when clean.
tests/test_secrets_scan.py runs it on the repository and on planted secrets.

What is allowed (not a secret):
- a value that refers to one: `${VAR}`, `$VAR`, `$$VAR` (compose), `%(name)s`, `{name}` (a
  format string), an environment variable's NAME (`TRACKERDCS_MQTT_PASSWORD`), a key that
  names one (`password_env: ...`);
- the documented placeholders (PLACEHOLDERS: `change-me`, `...`, `<password>`, ...);
- code: a value that is an expression (`args.password`, `os.environ[...]`, `None`);
- a line that says `secret-scan: allow` (say why next to it).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 2_000_000  # bigger files are data, not configuration
ALLOW_MARK = "secret-scan: allow"
PLACEHOLDERS = {
    "change-me", "changeme", "change_me", "placeholder", "example", "password", "secret",
    "your-password", "yourpassword", "xxx", "xxxx", "xxxxxx", "none", "null", "true", "false",
    "required", "redacted", "[redacted]", "...", "***", "******", "wrong", "wrong-password",
    "invalid", "bad-password",
}  # fmt: skip
_KEYWORDS = (
    r"(?:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)"
)
_HASHES = (
    r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}",  # bcrypt (Node-RED's adminAuth, htpasswd -B)
    r"\$[67]\$\d+\$[A-Za-z0-9+/=]{12,}\$[A-Za-z0-9+/=]{40,}",  # mosquitto_passwd (PBKDF2)
    r"\$6\$[./A-Za-z0-9]{8,16}\$[./A-Za-z0-9]{86}",  # sha512-crypt (/etc/shadow)
)


def _rule(name: str, regex: str, group: int = 0) -> tuple[str, re.Pattern[str], int]:
    return name, re.compile(regex), group


# (rule, regex, the group holding the value; 0: the whole match is the secret)
RULES: list[tuple[str, re.Pattern[str], int]] = [
    _rule("private key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    _rule("GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})"),
    _rule("GitLab token", r"\bglpat-[A-Za-z0-9_\-]{20,}"),
    _rule("AWS access key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    _rule("Slack token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    _rule("Google API key", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    _rule("API secret key", r"\bsk-[A-Za-z0-9_\-]{32,}"),
    _rule("JSON web token", r"\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\.[\w-]{10,}"),
    _rule("password hash", "|".join(_HASHES)),
    _rule("password in a URL", r"\b[a-z][a-z0-9+.\-]*://[^/\s:@'\"]+:([^/\s@'\"]+)@[\w.\-]", 1),
    # KEY=value, KEY: value, unquoted (.env, ini, conf, YAML, Dockerfile ENV)
    _rule(
        "secret assignment",
        rf"(?i)^\s*(?:-\s+|export\s+|ENV\s+)?[\"']?([\w.\-]*{_KEYWORDS}[\w.\-]*)[\"']?\s*[=:]\s*"
        r"(?!\s)([^\s\"'#,;{}()\[\]][^\s#,;]*)\s*(?:#.*)?$",
        2,
    ),
    # "key": "value", key = 'value', key="value" (code, JSON, TOML, quoted YAML)
    _rule(
        "secret assignment",
        rf"(?i)([\w.\-]*{_KEYWORDS}[\w.\-]*)[\"']?\s*(?::|=|==|:=)\s*[bfr]?"
        r"[\"']([^\"'\n]*)[\"']",
        2,
    ),
    # command-line options: -P VALUE, --password VALUE, -password VALUE
    _rule(
        "password option",
        r"(?:^|\s)(?:-P|--password|-password|--pw)[ =]+\\?[\"']?([^\s\"'\\]+)",
        1,
    ),
]
# ${VAR} $VAR $$VAR (compose), %(name)s, {name} (format strings, templates), <what goes here>
_REFERENCE = re.compile(r"^(?:\$\$?\{*[A-Za-z_][A-Za-z0-9_]*|%\([\w.]+\)s|\{[^}]*\}|<[^>]*>)")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_VERSION = re.compile(r"^[\^~>=<]*v?\d+(?:\.\d+)+\S*$")  # "passport-...-password": "0.1.2"
_EXPRESSION = re.compile(r"^[A-Za-z_][\w.]*(?:\(.*\)?|\[.*\]?)?$")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.text}"


def allowed_value(value: str, key: str = "", quoted: bool = False) -> bool:
    """True when `value` is not a literal secret (see the module's docstring)."""
    v = value.strip().strip("\\\"'`").rstrip(",;:.)")
    if len(v) < 4 or v.lower() in PLACEHOLDERS or set(v) <= set(".*x-_<>"):
        return True
    if _REFERENCE.match(v) or _ENV_NAME.match(v) or _VERSION.match(v):
        return True
    if key.lower().endswith(("_env", "-env", "_file", "-file", "_path", "_topic", "_name")):
        return True
    if not quoted and _EXPRESSION.match(v) and not v.isalnum():
        return True  # code: args.password, os.environ[...], cfg.secret()
    if not quoted and v in {"str", "bytes", "int", "None", "Optional", "Any"}:
        return True
    return v.startswith(("change-me", "your-", "<"))


def mask(line: str, value: str) -> str:
    shown = value[:3] + "..." if len(value) > 6 else "***"
    return line.strip().replace(value, shown)[:160]


def scan_text(path: str, text: str) -> Iterator[Finding]:
    for number, line in enumerate(text.splitlines(), 1):
        if ALLOW_MARK in line:
            continue
        for rule, pattern, group in RULES:
            for match in pattern.finditer(line):
                value = match.group(group)
                if group:
                    key = match.group(1) if match.re.groups >= 2 else ""
                    quoted = rule == "secret assignment" and match.group(0).rstrip().endswith(
                        ('"', "'")
                    )
                    if allowed_value(value, key, quoted):
                        continue
                yield Finding(path, number, rule, mask(line, value))
                break


def scan_files(paths: Iterable[Path], root: Path = ROOT) -> list[Finding]:
    findings = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue  # deleted in the work tree, a broken link
        if len(data) > MAX_BYTES or b"\0" in data[:8192]:
            continue  # data or binary
        name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        findings.extend(scan_text(name, data.decode("utf-8", errors="replace")))
    return findings


def repository_files(root: Path = ROOT) -> list[Path]:
    """What git tracks, and what it would add (untracked, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    )  # fmt: skip
    names = sorted({n for n in out.stdout.decode().split("\0") if n})
    return [root / n for n in names]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a).resolve() for a in args] if args else repository_files()
    findings = scan_files(paths)
    for finding in findings:
        print(finding)
    if findings:
        print(f"scan_secrets: {len(findings)} possible secret(s); remove them, or mark a false "
              f"positive with '{ALLOW_MARK}' and why", file=sys.stderr)  # fmt: skip
        return 1
    print(f"scan_secrets: {len(paths)} files, no secret")
    return 0


if __name__ == "__main__":
    sys.exit(main())
