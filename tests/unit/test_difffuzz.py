"""The randomized differential test's own machinery, without daemons.

The generator must give the same steps for a seed (a failing seed is
replayed by number), ddmin must find a minimal subsequence, and each
documented difference must apply exactly where it says.
"""

from __future__ import annotations

from tests.difffuzz.model import CONNECTIONS, Step, generate
from tests.difffuzz.oracle import DOCUMENTED, _ddmin, compare
from tests.difffuzz.runner import Message, Observation
from tests.integration.scenario import Op

FAR = 10**9


def _obs(conn: int, *messages: Message) -> Observation:
    return tuple(messages if i == conn else () for i in range(CONNECTIONS))


def _documented(step: Step, c: Observation, ours: Observation) -> list[str]:
    return [d.name for d in DOCUMENTED if d.applies(step, c, ours)]


def test_a_seed_always_gives_the_same_steps() -> None:
    assert generate(7, 300) == generate(7, 300)
    assert generate(7, 300) != generate(8, 300)
    ops = {step.op for step in generate(7, 300)}
    assert {Op.WRITE, Op.RM, Op.WATCH, Op.TRANSACTION_END, Op.SET_PERMS} <= ops


def test_ddmin_finds_a_minimal_subsequence() -> None:
    steps = generate(3, 64)
    needed = {steps[5], steps[40]}
    found = _ddmin(steps, lambda cand: needed <= set(cand), FAR)
    assert found == [steps[5], steps[40]]


def test_a_difference_is_the_first_undocumented_one() -> None:
    steps = [
        Step(0, Op.GET_PERMS, (b"@introduceDomain",)),
        Step(0, Op.READ, (b"/x",)),
        Step(0, Op.READ, (b"/y",)),
    ]
    c = [
        _obs(0, ("ERROR", b"EINVAL\0")),
        _obs(0, ("READ", b"1")),
        _obs(0, ("READ", b"2")),
    ]
    ours = [_obs(0, ("GET_PERMS", b"n0\0")), c[1], _obs(0, ("READ", b"3"))]
    diff = compare(steps, c, ours)
    assert diff is not None
    assert diff.steps == steps
    assert diff.signature() == ("READ", (("own", "payload"),))


def test_documented_differences_apply_only_where_they_say() -> None:
    # Everything else that differs is a difference, documented nowhere.
    tx_dir = Step(0, Op.DIRECTORY, (b"/r",), tx=1)
    twice = _obs(0, ("DIRECTORY", b"b\0a\0b\0"))
    once = _obs(0, ("DIRECTORY", b"b\0a\0"))
    assert not _documented(tx_dir, twice, once)
    unwatch = Step(0, Op.UNWATCH, (b"/x/", b"t"))
    enoent, einval = _obs(0, ("ERROR", b"ENOENT\0")), _obs(0, ("ERROR", b"EINVAL\0"))
    assert not _documented(unwatch, enoent, einval)

    special = Step(3, Op.GET_PERMS, (b"@releaseDomain",))
    c = _obs(3, ("ERROR", b"EINVAL\0"))
    assert _documented(special, c, _obs(3, ("ERROR", b"EACCES\0")))
    assert not _documented(special, c, _obs(3, ("ERROR", b"ENOENT\0")))
