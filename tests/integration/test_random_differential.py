"""Randomized differential test: random request streams, C xenstored's answers.

Fixed seeds give a few thousand random requests (``tests/difffuzz``) over
three dom0 sockets and guest domain 1's ring.  Each sequence is played on
pyxenstored and on Debian's C xenstored 4.17; every reply and every watch
event must be equal, except for the documented differences listed (each
with its reason) in :data:`tests.difffuzz.oracle.DOCUMENTED`.  Every other
difference is shrunk to a minimal sequence, and all of them are shown in
the failure message with both daemons' answers.  pyxenstored must also log
no internal error and exit cleanly.

The long version is ``make fuzz-diff`` (``python -m tests.difffuzz``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.difffuzz.oracle import run_campaign

SEEDS = range(1, 33)
OPERATIONS = 250
#: Seconds of shrinking per kind of difference, and in all.
SHRINK_EACH = 15.0
SHRINK_TOTAL = 30.0
#: Below these counts (of C's answers to the operations compared, about half
#: of what the seeds give) the streams have lost coverage.
MIN_COVERAGE = {
    "event": 500,
    "WRITE OK": 400,
    "RM OK": 200,
    "TRANSACTION_END OK": 50,
    "TRANSACTION_END ERROR EAGAIN": 30,
    "RM ERROR EIO": 2,
    "SET_PERMS OK": 60,
    "SET_PERMS ERROR EPERM": 2,
    "READ ERROR EACCES": 40,
    "WRITE ERROR EACCES": 60,
    "DIRECTORY_PART OK": 25,
    "UNWATCH OK": 50,
}


@pytest.mark.timeout(300)
def test_random_streams_get_c_xenstored_answers(short_tmp: Path) -> None:
    outcome = run_campaign(
        short_tmp, SEEDS, OPERATIONS, shrink_each=SHRINK_EACH, shrink_total=SHRINK_TOTAL
    )
    coverage = outcome.campaign.coverage
    thin = {k: coverage[k] for k, least in MIN_COVERAGE.items() if coverage[k] < least}
    if not outcome.ok or thin:
        lost = f"\nthe random streams lost coverage: {thin}" if thin else ""
        pytest.fail(outcome.report() + lost, pytrace=False)
