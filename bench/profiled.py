"""Run a module under cProfile, every Python thread included, and save the merged stats.

python -m bench.profiled OUT.prof MODULE [ARGS...]

cProfile alone sees the main thread only; here each thread started with `threading` gets its own
profiler, merged at exit. Callbacks that libca runs on its own C threads are not profiled: the
runner's per-thread CPU table accounts for them.
"""

from __future__ import annotations

import atexit
import cProfile
import os
import pstats
import runpy
import sys
import threading
import time
from typing import Any

_profiles: list[cProfile.Profile] = []


def _start_thread_profiler(frame: Any, event: str, arg: Any) -> None:
    """`threading.setprofile` hook: replaces itself by a fresh profiler in the new thread."""
    sys.setprofile(None)
    profile = cProfile.Profile()
    _profiles.append(profile)
    profile.enable()


def _log(text: str) -> None:
    """A line in the daemon's log format, so that the runner can time it."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    print(f"{stamp},{int(now % 1 * 1000):03d} bench.profiled: {text}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out, module, *args = argv
    sys.argv = [module, *args]
    real_exit = os._exit

    def leave(code: int) -> None:
        """A daemon that leaves with `os._exit` (trackerdcs.runner, skip_exit_handlers): the
        profile is saved first."""
        os._exit = real_exit
        raise SystemExit(code)

    os._exit = leave
    main_profile = cProfile.Profile()
    threading.setprofile(_start_thread_profiler)
    code = 0
    main_profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        main_profile.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        _log(f"{module} returned")
        stats = pstats.Stats(main_profile)
        for profile in list(_profiles):
            profile.disable()
            stats.add(profile)
        stats.dump_stats(out)
        _log(f"profile written to {out}")
    _timed_shutdown()
    return code


def _timed_shutdown() -> None:
    """Run the atexit handlers now, logging how long they take (the rest is thread joins).

    pyepics' `finalize_libca` runs first, on its own; its atexit registration is then a no-op.
    """
    ca = sys.modules.get("epics.ca")
    if ca is not None:  # pyepics' own atexit handler, timed on its own
        _log("epics.ca.finalize_libca start")
        ca.finalize_libca()
    _log("atexit handlers start")
    atexit._run_exitfuncs()
    _log("atexit handlers done")
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    _log(f"threads left: {', '.join(threads) or 'none'}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
