"""Hypothesis-driven protocol fuzzing of one real pyxenstored.

Every example is a sequence of structurally plausible requests (every
type, 27-29 included, unknown ones too; paths, domids, permissions and
tokens from small alphabets, valid and not; random transaction ids;
corrupted payloads, truncated messages, oversized headers, pipelines)
sent by three socket clients and two guests over their rings.  After
each example the daemon must be alive, must have answered every
well-formed request exactly once, and CONTROL ``check`` must find the
tree consistent and every quota account equal to a recount (see
tests/fuzz/harness.py for the exact rules).

The normal test run plays a fixed, derandomised set (the ``ci`` profile
of tests/conftest.py) in about two minutes; ``make fuzz`` plays many more
(``FUZZ_EXAMPLES``, default 10000, under the ``dev`` profile).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.harness import Action, Harness
from tests.fuzz.strategies import examples

#: Examples per run: a CI-sized default, ``make fuzz`` sets many more.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2500"))
#: Seconds the whole run may take (pytest-timeout): examples take ~30 ms.
BUDGET = 240 + EXAMPLES // 10


@pytest.mark.timeout(BUDGET)
def test_protocol_fuzz(fuzz_harness: Harness) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(examples)
    def example(actions: list[Action]) -> None:
        fuzz_harness.run(actions)

    example()
    assert fuzz_harness.stats.examples >= EXAMPLES
