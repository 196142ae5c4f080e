"""Differential test: pyxenstored answers every dom0 client as C xenstored does.

One scripted scenario (``steps_nodes.py`` + ``steps_events.py``) runs once
against pyxenstored and once against Debian's Xen 4.17 C xenstored, through
real clients: the ``xenstore-*`` tools, pyxs, and a raw socket client for
what those cannot send (``scenario.py``).  Every answer is recorded and the
two records are compared operation by operation.

Operations listed in :data:`DELIBERATE_DIFFERENCES` are where PROTOCOL.md
makes our daemon answer differently from C 4.17; for those each side is
checked against its own expected answer (:data:`EXPECTED`) instead, and
where only a daemon-private number differs the rest must still be equal
(:data:`NORMALISE`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import CDaemon, RunningDaemon
from tests.integration.scenario import Recorder, Reply, Step
from tests.integration.steps_events import scenario
from tests.integration.steps_nodes import PERMS_C_STORES

#: Below this many compared operations the scenario has lost coverage.
MIN_OPERATIONS = 150

Check = Callable[[object], bool]


def _error(name: str) -> Check:
    """The answer is exactly one ERROR reply carrying ``name``."""

    def check(answer: object) -> bool:
        return _single(answer) == ("ERROR", name.encode() + b"\0")

    return check


def _reply(op: str, body: bytes) -> Check:
    """The answer is exactly one reply of type ``op`` carrying ``body``."""

    def check(answer: object) -> bool:
        return _single(answer) == (op, body)

    return check


def _single(answer: object) -> tuple[str, bytes] | None:
    if isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], Reply):
        return answer[0].op, answer[0].payload
    return None


def _pyxs_error(name: str) -> Check:
    return lambda answer: answer == ("error", name)


def _tool(status: int, stream: int, needle: str) -> Check:
    """A tool's (status, stdout, stderr): exit status, ``needle`` in a stream."""

    def check(answer: object) -> bool:
        return (
            isinstance(answer, tuple)
            and answer[0] == status
            and isinstance(answer[stream], str)
            and needle in answer[stream]
        )

    return check


def _perms(body: bytes) -> Check:
    return _reply("GET_PERMS", body)


def _watch_ok(path: str, token: str) -> Check:
    """WATCH accepted: OK, then the initial event."""

    def check(answer: object) -> bool:
        return isinstance(answer, list) and [(a.op, a.payload) for a in answer] == [
            ("WATCH", b"OK\0"),
            ("WATCH_EVENT", f"{path}\0{token}\0".encode()),
        ]

    return check


def _directory_part(answer: object) -> bool:
    """A DIRECTORY_PART reply: decimal generation, whole NUL-ended names."""
    single = _single(answer)
    if single is None or single[0] != "DIRECTORY_PART":
        return False
    gen, _, body = single[1].partition(b"\0")
    return gen.isdigit() and (body == b"" or body.endswith(b"\0"))


def _without_generation(answer: object) -> object:
    """A DIRECTORY_PART answer with its generation number blanked."""
    single = _single(answer)
    if single is None or single[0] != "DIRECTORY_PART":
        return answer
    return single[1].partition(b"\0")[2]


_FEATURES = (
    "PROTOCOL.md 2 + 8.3: {op} is an optional operation this daemon implements "
    "(C has GET/SET_FEATURE from 4.21 and GET/SET_QUOTA from 4.22); "
    "C 4.17 has no handler and answers ENOSYS"
)
_SPECIAL_PERMS = (
    "PROTOCOL.md 2 (GET_PERMS: 'special @ paths allowed') + 4.1: GET_PERMS "
    "reads the permissions of @introduceDomain/@releaseDomain; C 4.17 predates "
    "that (upstream made them nodes in 4.18) and rejects any '@' path with EINVAL"
)
_PATH_MAX = (
    "PROTOCOL.md 4.2 recommendation: privileged/socket callers are limited "
    "only by XENSTORE_ABS_PATH_MAX (3072), the path-max quota (2048) applies to "
    "unprivileged domains; C 4.17 applies path-max to every caller"
)
_STRICT_DOMID = (
    "PROTOCOL.md 1.3 + 8.3: domids are parsed strictly (0..65535, else EINVAL) "
    "as in current C; C 4.17 used atoi(), so garbage meant domain 0"
)
_CONTROL = (
    "PROTOCOL.md 8.3: CONTROL output is implementation-defined, and our help "
    "also announces the seed-migration ops (PROTOCOL.md 2, 27/28/29)"
)
_GENERATION = (
    "PROTOCOL.md 9: DIRECTORY_PART's first string is the node's generation, "
    "a counter private to each daemon; everything after it must be equal"
)
_PERM_DOMID = (
    "PROTOCOL.md 5.1 recommendation: accept plain decimal and C's hex/octal "
    "prefixes, refuse negative values and values above 65535 with EINVAL; C "
    "4.17 uses strtol() and stores such entries (stale, sign-extended or "
    "truncated to 32 bits) and also skips leading whitespace"
)

_SEED = (
    "PROTOCOL.md 2 + 11: types 27/28/29 are this project's seed migration "
    "operations (QUIESCE, ADD_/GET_DOMAIN_WATCHES), so a bad domid is EINVAL; "
    "C has no such types and answers ENOSYS"
)
_SEED_OPS = ("QUIESCE", "ADD_DOMAIN_WATCHES", "GET_DOMAIN_WATCHES")

#: op label -> why pyxenstored deliberately answers differently from C 4.17.
DELIBERATE_DIFFERENCES: dict[str, str] = {
    **{f"raw SET_PERMS n0 {perm!r}": _PERM_DOMID for perm in PERMS_C_STORES},
    "raw GET_FEATURE (own connection)": _FEATURES.format(op="GET_FEATURE"),
    "raw SET_FEATURE for dom0": _FEATURES.format(op="SET_FEATURE"),
    "raw GET_QUOTA (names)": _FEATURES.format(op="GET_QUOTA"),
    "raw SET_QUOTA nodes": _FEATURES.format(op="SET_QUOTA"),
    "WATCH with a depth": (
        "PROTOCOL.md 6.1 + 8.3: a socket connection has every supported feature "
        "(GET_FEATURE answers 7), WATCHDEPTH included, so WATCH takes a third "
        "'depth' string; C 4.17 knows no depth and answers EINVAL"
    ),
    "pyxs get_perms @introduceDomain": _SPECIAL_PERMS,
    "raw GET_PERMS @releaseDomain": _SPECIAL_PERMS,
    "raw GET_PERMS @introduceDomain": _SPECIAL_PERMS,
    "raw READ path of 2049 bytes": _PATH_MAX,
    "raw READ path of 3072 bytes": _PATH_MAX,
    "raw GET_DOMAIN_PATH abc": _STRICT_DOMID,
    "raw GET_DOMAIN_PATH empty": _STRICT_DOMID,
    "raw IS_DOMAIN_INTRODUCED abc": _STRICT_DOMID,
    "raw DIRECTORY_PART offset abc": (
        "PROTOCOL.md 1.3 recommends strict numbers; C 4.17 reads the offset "
        "with atoi(), so 'abc' means offset 0"
    ),
    "raw DIRECTORY_PART part 1": _GENERATION,
    "raw DIRECTORY_PART part 2": _GENERATION,
    "raw DIRECTORY_PART part 3": _GENERATION,
    "raw DIRECTORY_PART past the end": _GENERATION,
    "control help": _CONTROL,
    "control unknown command": _CONTROL,
    **{f"raw seed op {name} with a bad domid": _SEED for name in _SEED_OPS},
}

#: Per deliberate step: (check of C's answer, check of pyxenstored's answer).
EXPECTED: dict[str, tuple[Check, Check]] = {
    **{
        f"raw SET_PERMS n0 {perm!r}": (_reply("SET_PERMS", b"OK\0"), _error("EINVAL"))
        for perm in PERMS_C_STORES
    },
    "raw GET_FEATURE (own connection)": (
        _error("ENOSYS"),
        _reply("GET_FEATURE", b"7\0"),
    ),
    # dom0 is introduced at start-up, so its features are fixed (8.3).
    "raw SET_FEATURE for dom0": (_error("ENOSYS"), _error("EBUSY")),
    "raw GET_QUOTA (names)": (
        _error("ENOSYS"),
        _reply(
            "GET_QUOTA",
            b"nodes watches outstanding memory soft-memory transactions "
            b"transaction-nodes node-permissions path-max node-size\0",
        ),
    ),
    "raw SET_QUOTA nodes": (_error("ENOSYS"), _reply("SET_QUOTA", b"OK\0")),
    **{
        f"raw seed op {name} with a bad domid": (_error("ENOSYS"), _error("EINVAL"))
        for name in _SEED_OPS
    },
    "WATCH with a depth": (_error("EINVAL"), _watch_ok("/wt", "depth")),
    "pyxs get_perms @introduceDomain": (
        _pyxs_error("EINVAL"),
        lambda a: a == ("ok", [b"n0"]),
    ),
    # Set to n0,r9 by xenstore-chmod and to n0,r3 earlier in the scenario.
    "raw GET_PERMS @releaseDomain": (_error("EINVAL"), _perms(b"n0\0r9\0")),
    "raw GET_PERMS @introduceDomain": (_error("EINVAL"), _perms(b"n0\0r3\0")),
    "raw READ path of 2049 bytes": (_error("EINVAL"), _error("ENOENT")),
    "raw READ path of 3072 bytes": (_error("EINVAL"), _error("ENOENT")),
    "raw GET_DOMAIN_PATH abc": (
        _reply("GET_DOMAIN_PATH", b"/local/domain/0\0"),
        _error("EINVAL"),
    ),
    "raw GET_DOMAIN_PATH empty": (
        _reply("GET_DOMAIN_PATH", b"/local/domain/0\0"),
        _error("EINVAL"),
    ),
    "raw IS_DOMAIN_INTRODUCED abc": (
        _reply("IS_DOMAIN_INTRODUCED", b"T\0"),
        _error("EINVAL"),
    ),
    "raw DIRECTORY_PART offset abc": (_directory_part, _error("EINVAL")),
    "raw DIRECTORY_PART part 1": (_directory_part, _directory_part),
    "raw DIRECTORY_PART part 2": (_directory_part, _directory_part),
    "raw DIRECTORY_PART part 3": (_directory_part, _directory_part),
    "raw DIRECTORY_PART past the end": (_directory_part, _directory_part),
    "control help": (_tool(0, 1, "quota-soft"), _tool(0, 1, "seed-migration")),
    "control unknown command": (
        _tool(3, 2, "Command not supported"),
        _tool(3, 2, "seed-migration"),
    ),
}

#: Deliberate steps whose answers must still be equal once normalised.
NORMALISE: dict[str, Callable[[object], object]] = {
    "raw DIRECTORY_PART part 1": _without_generation,
    "raw DIRECTORY_PART part 2": _without_generation,
    "raw DIRECTORY_PART part 3": _without_generation,
    "raw DIRECTORY_PART past the end": _without_generation,
}


# -- the test -----------------------------------------------------------------


def run(socket_path: Path) -> list[Step]:
    """The scenario's recorded answers from the daemon serving ``socket_path``."""
    with Recorder(socket_path) as recorder:
        scenario(recorder)
    return recorder.steps


def test_same_answers_as_c_xenstored(
    daemon: RunningDaemon, c_xenstored: CDaemon
) -> None:
    ours = run(daemon.socket)
    theirs = run(c_xenstored.socket)

    assert [s.label for s in ours] == [s.label for s in theirs]
    assert len(ours) >= MIN_OPERATIONS, f"only {len(ours)} operations compared"
    assert set(DELIBERATE_DIFFERENCES) == set(EXPECTED)
    labels = {s.label for s in ours}
    assert set(DELIBERATE_DIFFERENCES) <= labels, (
        "a deliberate step is not in the scenario"
    )

    mismatches: list[str] = []
    for mine, c in zip(ours, theirs, strict=True):
        label = mine.label
        if label in DELIBERATE_DIFFERENCES:
            c_ok, ours_ok = EXPECTED[label]
            same = label not in NORMALISE or (
                NORMALISE[label](mine.answer) == NORMALISE[label](c.answer)
            )
            if not (c_ok(c.answer) and ours_ok(mine.answer) and same):
                mismatches.append(
                    f"{label} (deliberate: {DELIBERATE_DIFFERENCES[label]}):\n"
                    f"  C:    {c.answer!r}\n  ours: {mine.answer!r}"
                )
        elif mine.answer != c.answer:
            mismatches.append(
                f"{label}:\n  C:    {c.answer!r}\n  ours: {mine.answer!r}"
            )
    assert not mismatches, (
        f"{len(mismatches)} of {len(ours)} answers differ:\n" + "\n".join(mismatches)
    )
    assert daemon.alive()
