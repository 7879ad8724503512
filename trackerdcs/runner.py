"""What every daemon's `main()` shares: arguments, logging, the lab YAML, the loop, a clean stop.

    def main(argv=None) -> int:
        return daemon_main("trackerdcs-julabo", __doc__, build=JulaboDaemon.from_args, argv=argv)

`build(cfg, loop, args)` returns an object with `start()` and `stop()`; it runs on an asyncio loop
until SIGTERM or SIGINT. `validate(cfg, args)` may refuse a configuration that is valid YAML but
gives this daemon nothing to do (its message goes to stderr, exit status 2).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Protocol

from trackerdcs.config import ConfigError, LabConfig, load_config
from trackerdcs.logs import setup_logging

log = logging.getLogger(__name__)


class Daemon(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


Build = Callable[[LabConfig, asyncio.AbstractEventLoop, argparse.Namespace], Daemon]
Validate = Callable[[LabConfig, argparse.Namespace], str | None]
AddArguments = Callable[[argparse.ArgumentParser], None]


def daemon_main(
    prog: str,
    doc: str | None,
    build: Build,
    argv: list[str] | None = None,
    *,
    add_arguments: AddArguments | None = None,
    validate: Validate | None = None,
    skip_exit_handlers: bool = False,
) -> int:
    """Parse `--config FILE [-v]` and the daemon's own options, then serve until SIGTERM.

    `skip_exit_handlers`: after a clean stop, leave without running atexit handlers (pyepics'
    handler destroys the CA context, which takes tens of seconds with thousands of
    subscriptions; everything has been released explicitly by then).
    """
    description = (doc or prog).strip().split("\n")[0]
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="lab YAML file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose, name=prog.removeprefix("trackerdcs-"))
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    problem = validate(cfg, args) if validate is not None else None
    if problem:
        print(f"{args.config}: {problem}", file=sys.stderr)
        return 2
    asyncio.run(_serve(build, cfg, args))
    if skip_exit_handlers:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


async def _serve(build: Build, cfg: LabConfig, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = build(cfg, loop, args)
    daemon.start()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        daemon.stop()
