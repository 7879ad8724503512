"""A Mosquitto broker for the local stack and the tests, on loopback only."""

from __future__ import annotations

import shutil
from pathlib import Path

from trackerdcs.stack.process import ManagedProcess, port_open


def mosquitto_config(
    port: int, host: str = "127.0.0.1", extra: str = "", persistence: Path | None = None
) -> str:
    """A loopback-only development broker: anonymous access is acceptable on 127.0.0.1 alone.
    With `persistence` (a directory), retained messages survive a restart, as in production."""
    keep = (
        f"persistence true\npersistence_location {persistence}/\n"
        if persistence is not None
        else "persistence false\n"
    )
    return (
        f"listener {port} {host}\n"
        "allow_anonymous true\n"
        f"{keep}"
        "set_tcp_nodelay true\n"
        "log_dest stderr\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        "connection_messages true\n"
        "user root\n"
        f"{extra}"
    )


def mosquitto_process(
    workdir: Path, port: int, host: str = "127.0.0.1", extra: str = "",
    persistence: Path | None = None,
) -> ManagedProcess:  # fmt: skip
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = Path(workdir) / f"mosquitto-{port}.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    if persistence is not None:
        persistence.mkdir(parents=True, exist_ok=True)
    conf.write_text(mosquitto_config(port, host, extra, persistence))
    return ManagedProcess(
        "mosquitto",
        [binary, "-c", str(conf)],
        log_path=Path(workdir) / f"mosquitto-{port}.log",
        ready=lambda _: port_open(host, port),
    )
