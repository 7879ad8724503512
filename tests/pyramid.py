"""The suite's test pyramid, counted: in-process tests and tests that use a real process.

A test counts as real-process when a process is started (`subprocess.Popen`, which asyncio's
subprocesses, `ManagedProcess` and `subprocess.run` all go through) during its own setup, call
or teardown, or by one of the fixtures it uses (a module-scoped broker started for an earlier
test still makes this one a real-process test). Everything else is in-process. The counts are
printed at the end of every run (`test pyramid: ...`), for the closing notes of issue 17.
"""

from __future__ import annotations

import subprocess
from collections.abc import Generator
from typing import Any

import pytest

_started = 0
_process_fixtures: set[str] = set()
_kinds: dict[str, str] = {}
_KEY = "pyramid"
_BEFORE = pytest.StashKey[int]()
_original_init = subprocess.Popen.__init__


def _counting_init(self: subprocess.Popen, *args: Any, **kwargs: Any) -> None:
    global _started
    _started += 1
    _original_init(self, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _counting_init  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _original_init  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: Any) -> Generator:
    before = _started
    try:
        return (yield)
    finally:
        if _started > before:
            _process_fixtures.add(fixturedef.argname)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator:
    item.stash[_BEFORE] = _started
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator:
    """The kind travels in the teardown report, so that pytest-xdist's controller, which runs
    no test itself, counts what its workers ran."""
    report = yield
    if call.when == "teardown":
        uses = set(getattr(item, "fixturenames", ())) & _process_fixtures
        started = _started > item.stash.get(_BEFORE, _started)
        report.user_properties.append((_KEY, "real-process" if started or uses else "in-process"))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        for key, kind in report.user_properties:
            if key == _KEY:
                _kinds[report.nodeid] = kind


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _kinds:
        return
    real = sum(1 for kind in _kinds.values() if kind == "real-process")
    terminalreporter.write_line(
        f"test pyramid: {len(_kinds) - real} in-process tests, {real} real-process tests"
    )
