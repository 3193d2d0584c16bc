"""The fuzz suite's plumbing: per-test timing, the summary at the end, `results.json`."""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.fuzz import profiles
from tests.fuzz.loop_thread import LoopThread

RESULTS = Path(__file__).parent / "results.json"
_seconds: dict[str, float] = {}


HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.fuzz)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    profiles.current_test = item.nodeid
    started = time.monotonic()
    yield
    _seconds[item.nodeid] = time.monotonic() - started


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


def _rows() -> list[dict[str, object]]:
    return [{"target": target, "cases": n, "seconds": round(_seconds.get(profiles.tests[target], 0), 1),
             "test": profiles.tests[target]} for target, n in sorted(profiles.cases.items())]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = _rows()
    if not rows:
        return
    tr = terminalreporter
    tr.section(f"fuzz targets ({profiles.PROFILE} profile)")
    for r in rows:
        tr.write_line(f"{r['target']:<28} {r['cases']:>8} cases {r['seconds']:>8} s")
    if profiles.LONG:
        RESULTS.write_text(json.dumps({"profile": profiles.PROFILE, "targets": rows},
                                      indent=2) + "\n")
        tr.write_line(f"written to {RESULTS}")
