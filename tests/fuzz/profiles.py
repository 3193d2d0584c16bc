"""How hard the fuzz suite tries: the `ci` profile (a few hundred cases a target, part of the
normal test run) or `long` (at least 10 000 a target, `./dev fuzz`), chosen with
`TOWNSQUARE_FUZZ_PROFILE`. Every target also counts the cases it really ran, so the summary
printed at the end (and `results.json` after a long run) states what was tried, not what was
asked for.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, Phase, settings

PROFILE = os.environ.get("TOWNSQUARE_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise RuntimeError(f"TOWNSQUARE_FUZZ_PROFILE must be ci or long, not {PROFILE!r}")
LONG = PROFILE == "long"
LONG_CASES = 10_000

# Deadlines are ours (bounds.deadline, socket timeouts): Hypothesis's own deadline would turn
# a loaded machine into a failure, and a hang never returns for it to measure anyway.
_BASE = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
    print_blob=True,
)

# Cases each target ran in this process, by target name (one case = one input thrown at it),
# and the test that ran each target (its time is that test's time).
cases: Counter[str] = Counter()
tests: dict[str, str] = {}
current_test = ""


def fuzz_settings(ci: int = 300, batch: int = 1) -> settings:
    """Settings for one target: `ci` examples in the short profile; in the long profile enough
    examples that `batch` inputs per example add up to LONG_CASES. Batches (server targets)
    are not shrunk: each failure names the one input that caused it, and shrinking fifty
    connections at a time would take longer than the run."""
    examples = -(-LONG_CASES // batch) if LONG else ci
    if batch > 1:
        return settings(_BASE, max_examples=examples,
                        phases=(Phase.explicit, Phase.reuse, Phase.generate))
    return settings(_BASE, max_examples=examples)


def count(target: str, n: int = 1) -> None:
    cases[target] += n
    tests.setdefault(target, current_test)
