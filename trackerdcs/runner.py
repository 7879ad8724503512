"""What every daemon's `main()` shares: arguments, logging, the lab YAML, the loop, a clean stop.

    def main(argv=None) -> int:
        return daemon_main("trackerdcs-julabo", __doc__, build=JulaboDaemon.from_args, argv=argv)

`build(cfg, loop, args)` returns an object with `start()` and `stop()`; it runs on an asyncio loop
until SIGTERM or SIGINT. `validate(cfg, args)` may refuse a configuration that is valid YAML but
gives this daemon nothing to do (its message goes to stderr, exit status 2).

An exception that escapes a callback of the loop is reported to `trackerdcs.guard.FAULTS`
(logged with the callback and its arguments, counted) instead of being only printed by asyncio.
When the faults turn fatal (a worker thread ended, `guard.MAX_CONSECUTIVE` unexpected errors in
a row from one place), the daemon stops as on SIGTERM (its availability goes `offline`) and
exits with status `guard.EXIT_FAULTS` (70), for its supervisor to restart it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

from trackerdcs.cliargs import add_config, add_version, parse
from trackerdcs.config import ConfigError, LabConfig, load_config
from trackerdcs.guard import EXIT_FAULTS, FAULTS
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
    """Parse `--config FILE` (or a bare `FILE`), `-v`, `--version` and the daemon's own options,
    then serve until SIGTERM.

    `skip_exit_handlers`: after a clean stop, leave without running atexit handlers (pyepics'
    handler destroys the CA context, which takes tens of seconds with thousands of
    subscriptions; everything has been released explicitly by then).
    """
    description = (doc or prog).strip().split("\n")[0]
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_version(parser)
    if add_arguments is not None:
        add_arguments(parser)
    args = parse(parser, argv)
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
    status = EXIT_FAULTS if FAULTS.fatal_reason else 0
    if skip_exit_handlers:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's handler for what escapes a callback or a task: reported to `FAULTS`."""
    exc = context.get("exception")
    if not isinstance(exc, Exception):  # asyncio's own notes (no exception, or a BaseException)
        loop.default_exception_handler(context)
        return
    handle = context.get("handle") or context.get("task") or context.get("future")
    callback = getattr(handle, "_callback", None)
    where = getattr(callback, "__qualname__", None) or context.get("message", "a callback")
    FAULTS.fault(f"the loop callback {where}", exc, getattr(handle, "_args", None) or handle)


async def _serve(build: Build, cfg: LabConfig, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.set_exception_handler(loop_exception_handler)
    FAULTS.on_fatal = lambda reason: loop.call_soon_threadsafe(stop.set)
    daemon = build(cfg, loop, args)
    daemon.start()
    try:
        await stop.wait()
    finally:
        log.info("stopping" + (f" ({FAULTS.fatal_reason})" if FAULTS.fatal_reason else ""))
        daemon.stop()
