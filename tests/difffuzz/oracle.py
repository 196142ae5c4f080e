"""Compare two daemons' observations, shrink each difference, run campaigns.

:func:`compare` finds the first step whose observations differ and is not
in :data:`DOCUMENTED`, the explicit list of deliberate differences between
pyxenstored and C xenstored 4.17 (docs/protocol-notes.md, PROTOCOL.md).
Each entry has its reason and a precise predicate on (step, C's
observation, ours); the generator avoids the inputs that only exercise the
others, or C 4.17's own bugs (:data:`tests.difffuzz.model.NOT_GENERATED`),
so nothing else may differ.

:func:`shrink` reduces a differing sequence to a minimal one with the same
kind of difference (:meth:`Difference.signature`): the prefix up to the
difference, then delta debugging (ddmin) over the steps, then
simplification of what is left (no transaction, shorter paths, empty
values, fewer permissions, fewer connections), every candidate re-played
on both daemons from a reset.

:class:`Campaign` plays seeded random sequences; after each difference it
drops the differing step and plays on, so one frequent difference does not
hide the rest of a sequence.  :func:`run_campaign` does it all on two
daemons it starts, and checks pyxenstored's log.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.difffuzz.daemons import Daemons, internal_errors
from tests.difffuzz.model import Step, generate
from tests.difffuzz.runner import Message, Observation, SocketTransport, play
from tests.integration.scenario import Op

__all__ = [
    "DOCUMENTED",
    "Campaign",
    "Difference",
    "Documented",
    "Outcome",
    "Pair",
    "compare",
    "run_campaign",
    "shrink",
]

Predicate = Callable[[Step, Observation, Observation], bool]


@dataclass(frozen=True)
class Documented:
    """A deliberate difference: why, and exactly when it applies."""

    name: str
    reason: str
    applies: Predicate


def _only_reply(obs: Observation, step: Step) -> Message | None:
    """The step's reply when its connection got nothing else."""
    mine = obs[step.conn]
    if len(mine) == 1 and all(not o for i, o in enumerate(obs) if i != step.conn):
        return mine[0]
    return None


def _special_get_perms(step: Step, c: Observation, ours: Observation) -> bool:
    reply = _only_reply(ours, step)
    return (
        step.op is Op.GET_PERMS
        and step.args[0] in (b"@introduceDomain", b"@releaseDomain")
        and _only_reply(c, step) == ("ERROR", b"EINVAL\0")
        and reply is not None
        and (reply[0] == "GET_PERMS" or reply == ("ERROR", b"EACCES\0"))
    )


DOCUMENTED: tuple[Documented, ...] = (
    Documented(
        "GET_PERMS of a special node",
        "PROTOCOL.md 2 (GET_PERMS: 'special @ paths allowed') and 6.5; "
        "docs/protocol-notes.md: C 4.17 answers EINVAL for any '@' path (they "
        "became nodes in 4.18), pyxenstored reads @introduceDomain's and "
        "@releaseDomain's permissions (or answers EACCES to a caller that may "
        "not read them, PROTOCOL.md 5.3)",
        _special_get_perms,
    ),
)


# -- one difference -----------------------------------------------------------


def _reply_kind(messages: tuple[Message, ...]) -> tuple[str, ...]:
    """What a connection got, without payloads except error names."""
    out = []
    for kind, body in messages:
        if kind == "EVENT":
            continue
        if kind == "ERROR":
            kind = "ERROR " + body.rstrip(b"\0").decode("latin-1")
        out.append(kind)
    return tuple(out)


@dataclass
class Difference:
    """A sequence whose last step C and pyxenstored answer differently.

    ``c`` and ``ours`` hold both daemons' observations of every step.
    """

    steps: list[Step]
    c: list[Observation]
    ours: list[Observation]
    #: Seeds where this kind of difference was seen.
    seeds: list[int] = field(default_factory=list)
    shrunk: bool = False

    def signature(self) -> tuple[object, ...]:
        """The kind of difference: the operation and what differs how."""
        step = self.steps[-1]
        parts: set[tuple[str, ...]] = set()
        for i, (theirs, mine) in enumerate(zip(self.c[-1], self.ours[-1], strict=True)):
            if theirs == mine:
                continue
            who = "own" if i == step.conn else "other"
            ck, ok = _reply_kind(theirs), _reply_kind(mine)
            if ck != ok:
                parts.add((who, "reply", " ".join(ck), " ".join(ok)))
            elif _replies(theirs) != _replies(mine):
                parts.add((who, "payload"))
            else:
                ce, oe = _events(theirs), _events(mine)
                how = "more" if oe > ce else "fewer" if oe < ce else "other"
                parts.add((who, "events", how))
        return (step.op.name, tuple(sorted(parts)))

    def report(self) -> str:
        """The sequence, one step a line, with both daemons' answers."""
        head = f"{len(self.steps)} steps" + ("" if self.shrunk else " (not shrunk)")
        if self.seeds:
            head += f"; seen with seeds {', '.join(map(str, sorted(set(self.seeds))))}"
        lines = [head]
        for i, step in enumerate(self.steps):
            lines.append(f"  {i:3d}. {step}")
            for conn, (theirs, mine) in enumerate(
                zip(self.c[i], self.ours[i], strict=True)
            ):
                if not theirs and not mine:
                    continue
                who = "->" if conn == step.conn else f"c{conn} got"
                if theirs == mine:
                    lines.append(f"         {who} {_show(theirs)}")
                else:
                    lines.append(f"         {who} C:    {_show(theirs)}   <-- differs")
                    lines.append(f"         {' ' * len(who)} ours: {_show(mine)}")
        return "\n".join(lines)


def _replies(messages: tuple[Message, ...]) -> list[Message]:
    return [m for m in messages if m[0] != "EVENT"]


def _events(messages: tuple[Message, ...]) -> int:
    return sum(m[0] == "EVENT" for m in messages)


def _show(messages: tuple[Message, ...]) -> str:
    if not messages:
        return "nothing"
    parts = []
    for kind, body in messages:
        text = body.decode("latin-1")
        if kind == "EVENT":
            parts.append("EVENT " + " ".join(text.split("\0")[:-1]))
        elif kind == "ERROR":
            parts.append(text.rstrip("\0"))
        elif kind == "READ" or not text.endswith("\0"):
            parts.append(f"{kind} {body!r}")
        else:
            parts.append(f"{kind} " + "|".join(text.split("\0")[:-1]))
    return "; ".join(parts)


def compare(
    steps: Sequence[Step],
    c: Sequence[Observation],
    ours: Sequence[Observation],
    documented: Counter[str] | None = None,
) -> Difference | None:
    """The first difference not documented (counting documented ones)."""
    for index, (step, theirs, mine) in enumerate(zip(steps, c, ours, strict=True)):
        if theirs == mine:
            continue
        known = next((d for d in DOCUMENTED if d.applies(step, theirs, mine)), None)
        if known is None:
            end = index + 1
            return Difference(list(steps[:end]), list(c[:end]), list(ours[:end]))
        if documented is not None:
            documented[known.name] += 1
    return None


# -- playing on both ----------------------------------------------------------


class Pair:
    """Plays sequences on both daemons at once (one thread each)."""

    def __init__(self, daemons: Daemons) -> None:
        self.daemons = daemons
        self.pool = ThreadPoolExecutor(2)
        self.plays = 0
        self.operations = 0

    def close(self) -> None:
        self.pool.shutdown()

    def play(
        self, steps: Sequence[Step]
    ) -> tuple[list[Observation], list[Observation]]:
        self.daemons.reset()
        sides = (self.daemons.c, self.daemons.ours)
        transports = [side.transports() for side in sides]
        try:
            c, ours = (self.pool.submit(play, t, steps) for t in transports)
            self.plays += 1
            self.operations += len(steps)
            return c.result(), ours.result()
        finally:
            for group in transports:
                for transport in group:
                    if isinstance(transport, SocketTransport):
                        transport.close()

    def difference(
        self, steps: Sequence[Step], documented: Counter[str] | None = None
    ) -> Difference | None:
        c, ours = self.play(steps)
        return compare(steps, c, ours, documented)


# -- shrinking ----------------------------------------------------------------


def _ddmin(
    steps: list[Step], test: Callable[[list[Step]], bool], deadline: float
) -> list[Step]:
    """Zeller's ddmin: a 1-minimal subsequence that still passes ``test``."""
    n = 2
    while len(steps) >= 2 and time.monotonic() < deadline:
        chunk = len(steps) / n
        parts = [steps[round(i * chunk) : round((i + 1) * chunk)] for i in range(n)]
        reduced = False
        for i in range(n):
            complement = [s for j, p in enumerate(parts) if j != i for s in p]
            if complement and test(complement):
                steps, n, reduced = complement, max(n - 1, 2), True
                break
        if not reduced:
            for part in parts:
                if len(part) < len(steps) and test(part):
                    steps, n, reduced = part, 2, True
                    break
        if not reduced:
            if n >= len(steps):
                break
            n = min(len(steps), 2 * n)
    return steps


def _simpler(step: Step) -> Iterable[Step]:
    """Simpler variants of one step, simplest first."""
    if step.conn:
        yield replace(step, conn=0)
    if step.tx and step.op is not Op.TRANSACTION_END:
        yield replace(step, tx=0)
    args = step.args
    if step.op is Op.WRITE and args[1]:
        yield replace(step, args=(args[0], b""))
    if step.op is Op.SET_PERMS and len(args) > 2:
        for i in range(1, len(args)):
            yield replace(step, args=args[:i] + args[i + 1 :])
    if args and args[0].count(b"/") > 1 and step.op is not Op.TRANSACTION_END:
        yield replace(step, args=(args[0].rsplit(b"/", 1)[0], *args[1:]))
    if step.op is Op.DIRECTORY_PART and args[1] != b"0":
        yield replace(step, args=(args[0], b"0"))


def _relabel(steps: list[Step]) -> list[Step]:
    """Number the transactions 1, 2, ... in order of appearance."""
    names: dict[int, int] = {}

    def name(label: int) -> int:
        if label <= 0:
            return label
        return names.setdefault(label, len(names) + 1)

    return [replace(s, tx=name(s.tx), label=name(s.label)) for s in steps]


def shrink(pair: Pair, diff: Difference, deadline: float) -> Difference:
    """A minimal sequence with the same kind of difference as ``diff``."""
    goal = diff.signature()
    best = diff

    def test(candidate: list[Step]) -> bool:
        nonlocal best
        found = pair.difference(candidate)
        if found is not None and found.signature() == goal:
            best = found
            return True
        return False

    steps = _ddmin(list(diff.steps), test, deadline)
    changed = True
    while changed and time.monotonic() < deadline:
        changed = False
        for i in range(len(steps)):
            for variant in _simpler(steps[i]):
                candidate = [*steps[:i], variant, *steps[i + 1 :]]
                if test(candidate):
                    steps, changed = candidate, True
                    break
        steps = _ddmin(steps, test, deadline) if changed else steps
    relabelled = _relabel(steps)
    if not test(relabelled):
        test(steps)
    best.shrunk = time.monotonic() < deadline
    best.seeds = diff.seeds
    return best


# -- campaigns ----------------------------------------------------------------


@dataclass
class Campaign:
    """Seeded random sequences on both daemons; the differences found."""

    pair: Pair
    #: Seconds of shrinking per new kind of difference, and in all.
    shrink_each: float = 30.0
    shrink_total: float = 120.0
    #: Differences skipped per seed before the rest of it is given up.
    skips: int = 8
    differences: dict[tuple[object, ...], Difference] = field(default_factory=dict)
    documented: Counter[str] = field(default_factory=Counter)
    #: What C answered to the operations compared ("WRITE OK", "RM ENOENT",
    #: "event", ...): a check that the streams still exercise what they
    #: should.
    coverage: Counter[str] = field(default_factory=Counter)
    seeds: int = 0
    generated: int = 0
    compared: int = 0
    shrink_seconds: float = 0.0
    log: Callable[[str], None] = lambda _: None

    def run(self, seed: int, ops: int) -> None:
        """Play ``ops`` random steps from ``seed``."""
        self.seeds += 1
        self.generated += ops
        steps = generate(seed, ops)
        for attempt in range(self.skips + 1):
            c, ours = self.pair.play(steps)
            diff = compare(steps, c, ours, self.documented)
            if diff is None:
                self._tally(steps, c)
                return
            self._found(seed, diff)
            differing = len(diff.steps) - 1
            if attempt == self.skips:
                self._tally(steps[:differing], c)
                self.log(f"seed {seed}: over {self.skips} differences, rest skipped")
                return
            # Play on without the differing step.
            del steps[differing]

    def _tally(self, steps: Sequence[Step], observed: Sequence[Observation]) -> None:
        self.compared += len(steps)
        for step, obs in zip(steps, observed, strict=False):
            for kind in _reply_kind(obs[step.conn]):
                answer = kind if kind.startswith("ERROR") else "OK"
                self.coverage[f"{step.op.name} {answer}"] += 1
            self.coverage["event"] += sum(_events(o) for o in obs)

    def _found(self, seed: int, diff: Difference) -> None:
        key = diff.signature()
        known = self.differences.get(key)
        if known is not None:
            known.seeds.append(seed)
            return
        diff.seeds = [seed]
        self.log(f"seed {seed}: new difference {key}; shrinking")
        start = time.monotonic()
        budget = min(self.shrink_each, self.shrink_total - self.shrink_seconds)
        if budget > 0:
            diff = shrink(self.pair, diff, start + budget)
        self.shrink_seconds += time.monotonic() - start
        self.differences[key] = diff
        self.log(f"  {len(diff.steps)} steps after {time.monotonic() - start:.1f} s")

    def report(self) -> str:
        out = [
            f"{len(self.differences)} kind(s) of difference from C xenstored 4.17 "
            f"in {self.seeds} seeds ({self.compared} of {self.generated} "
            "operations compared):"
        ]
        for number, diff in enumerate(self.differences.values(), 1):
            out.append(f"\n#{number}: {diff.signature()}\n{diff.report()}")
        return "\n".join(out)


@dataclass
class Outcome:
    """A finished campaign, with what pyxenstored logged and how it ended."""

    campaign: Campaign
    internal_errors: list[str]
    exit_code: int
    restarts: int
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            not self.campaign.differences
            and not self.internal_errors
            and (self.exit_code == 0)
        )

    def report(self) -> str:
        c = self.campaign
        lines = [
            f"{c.generated} operations in {c.seeds} seeds, {c.compared} compared, "
            f"{c.pair.plays} plays ({c.pair.operations} operations played) in "
            f"{self.seconds:.1f} s, {c.shrink_seconds:.1f} s of it shrinking; "
            f"{self.restarts} daemon restart(s)",
            f"documented differences met: {dict(c.documented) or 'none'}",
            f"differences: {len(c.differences)}",
            "internal errors in pyxenstored's log: "
            f"{len(self.internal_errors)} distinct",
            f"pyxenstored's exit status: {self.exit_code}",
        ]
        if c.differences:
            lines.append("")
            lines.append(c.report())
        if self.internal_errors:
            lines.append("\ninternal errors logged by pyxenstored:")
            for record in self.internal_errors[:5]:
                lines.append("  " + record.replace("\n", "\n    "))
        return "\n".join(lines)


def run_campaign(
    root: Path,
    seeds: Iterable[int],
    ops: int,
    *,
    shrink_each: float,
    shrink_total: float,
    log: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Start both daemons in ``root``, play every seed, stop them."""
    start = time.monotonic()
    daemons = Daemons(root)
    pair = Pair(daemons)
    campaign = Campaign(pair, shrink_each, shrink_total, log=log)
    try:
        for seed in seeds:
            campaign.run(seed, ops)
    finally:
        pair.close()
        code = daemons.stop()
    return Outcome(
        campaign,
        internal_errors(daemons.log()),
        code,
        daemons.restarts,
        time.monotonic() - start,
    )
