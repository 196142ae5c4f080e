"""Hypothesis strategies for structurally plausible xenstore requests.

Each operation gets payloads shaped like its real arguments (PROTOCOL.md
2 and 9), drawn from small alphabets so that requests meet each other:
the same few paths, domids, tokens and quota names come back again and
again, valid or not.  A fraction of payloads is then corrupted (a byte
changed, the last NUL dropped, junk or NULs inserted), and actions may
truncate a message, announce an oversized one, or pipeline several.
"""

from __future__ import annotations

from hypothesis import strategies as st

from pyxenstored.wire.ops import Op
from tests.fuzz.harness import SOCKETS, Action, Request

#: Paths that exist (or are about to), in every form a client may use.
PATHS = [
    "/",
    "/f",
    "/f/a",
    "/f/a/b",
    "/f/b",
    "/tool/xenstored",
    "/local/domain",
    "/local/domain/0/backend",
    "/local/domain/1",
    "/local/domain/1/data",
    "/local/domain/1/data/x",
    "/local/domain/2/data/y",
    "/local/domain/3",
    "data",
    "data/x",
    "data/x/y",
    "name",
    "device/vif/0/state",
    "control/shutdown",
    "@releaseDomain",
    "@introduceDomain",
    "@other",
]
#: Paths the protocol refuses (PROTOCOL.md 4).
INVALID_PATHS = [
    "",
    "//",
    "/f/",
    "/f//a",
    "f b",
    "/f.a",
    "/\xe9t\xe9",
    "/a\x01",
    "/" + "p" * 3100,
    "data/" + "q" * 2100,
]
DOMIDS = ["0", "1", "2", "3", "4", "7", "32752", "32757", "65535", "65536", "x", ""]
TOKENS = ["t", "tok", "", "a b", "\xff", "w" * 300]
PERM_LETTERS = ["n", "r", "w", "b", "x", ""]
PERM_DOMIDS = ["0", "1", "2", "3", "5", "0x1", "010", "-1", "65536", "", "1x"]
QUOTAS = [
    "nodes",
    "watches",
    "outstanding",
    "memory",
    "transactions",
    "transaction-nodes",
    "node-permissions",
    "path-max",
    "node-size",
    "permissions",
    "bogus",
]
NUMBERS = ["0", "1", "2", "5", "10", "1000", "4294967295", "x", "-1", ""]
CONTROL = [
    "check",
    "help",
    "memreport",
    "quota",
    "quota 1",
    "quota set nodes 5",
    "quota-soft",
    "print hello",
    "log off",
    "log on",
    "logfile",
    "bogus",
    "",
]
UNKNOWN_OPS = [15, 16, 20, 30, 31, 255, 0xFFFF, 0xFFFFFFFF]


def _z(*parts: str) -> bytes:
    """NUL-terminated strings, the payload of most requests."""
    return b"".join(p.encode("latin-1") + b"\0" for p in parts)


path = st.one_of(
    st.sampled_from(PATHS),
    st.sampled_from(INVALID_PATHS),
    st.lists(
        st.sampled_from(["a", "b", "c", "-", "_", "@"]), min_size=1, max_size=4
    ).map(lambda parts: "/f/" + "/".join(parts)),
)
domid = st.sampled_from(DOMIDS)
number = st.sampled_from(NUMBERS)
perm = st.builds(
    lambda a, b: a + b, st.sampled_from(PERM_LETTERS), st.sampled_from(PERM_DOMIDS)
)
value = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([2000, 2100, 4000]).map(lambda n: b"v" * n),
)


def _payload(op: int) -> st.SearchStrategy[bytes]:
    """Arguments shaped for ``op``."""
    if op in (Op.READ, Op.DIRECTORY, Op.GET_PERMS, Op.MKDIR, Op.RM):
        return path.map(_z)
    if op == Op.WRITE:
        return st.builds(lambda p, v: _z(p) + v, path, value)
    if op == Op.SET_PERMS:
        return st.builds(
            lambda p, ps: _z(p, *ps), path, st.lists(perm, min_size=0, max_size=6)
        )
    if op == Op.WATCH:
        return st.builds(
            lambda p, t, d: _z(p, t, *d),
            path,
            st.sampled_from(TOKENS),
            st.sampled_from([(), (), ("0",), ("2",), ("x",)]),
        )
    if op == Op.UNWATCH:
        return st.builds(lambda p, t: _z(p, t), path, st.sampled_from(TOKENS))
    if op in (Op.TRANSACTION_START, Op.RESET_WATCHES):
        return st.sampled_from([b"\0", b""])
    if op == Op.TRANSACTION_END:
        return st.sampled_from([b"T\0", b"T\0", b"F\0", b"X\0", b"", b"T"])
    if op == Op.INTRODUCE:
        return st.builds(
            lambda d, g, p: _z(d, g, p),
            domid,
            st.sampled_from(["0", "1044479", "x"]),
            st.sampled_from(["1", "0", "7", "x"]),
        )
    if op in (
        Op.RELEASE,
        Op.RESUME,
        Op.IS_DOMAIN_INTRODUCED,
        Op.GET_DOMAIN_PATH,
        Op.QUIESCE,
    ):
        return domid.map(_z)
    if op == Op.SET_TARGET:
        return st.builds(lambda a, b: _z(a, b), domid, domid)
    if op == Op.DIRECTORY_PART:
        return st.builds(lambda p, n: _z(p, n), path, number)
    if op == Op.GET_FEATURE:
        return st.one_of(st.just(b""), domid.map(_z))
    if op == Op.SET_FEATURE:
        return st.builds(
            lambda d, n: _z(d, n), domid, st.sampled_from(["0", "3", "7", "15"])
        )
    if op == Op.GET_QUOTA:
        return st.one_of(
            st.just(b""),
            st.sampled_from(QUOTAS).map(_z),
            st.builds(lambda d, q: _z(d, q), domid, st.sampled_from(QUOTAS)),
        )
    if op == Op.SET_QUOTA:
        return st.one_of(
            st.builds(lambda q, n: _z(q, n), st.sampled_from(QUOTAS), number),
            st.builds(
                lambda d, q, n: _z(d, q, n), domid, st.sampled_from(QUOTAS), number
            ),
        )
    if op == Op.CONTROL:
        return st.sampled_from(CONTROL).map(lambda c: _z(*c.split(" ")) if c else b"")
    if op == Op.ADD_DOMAIN_WATCHES:
        return st.builds(
            lambda d, pairs: _z(d, *[x for pair in pairs for x in pair]),
            domid,
            st.lists(st.tuples(path, st.sampled_from(TOKENS)), max_size=3),
        )
    if op == Op.GET_DOMAIN_WATCHES:
        return st.builds(lambda d, n: _z(d, n), domid, number)
    return st.binary(max_size=32)


def _corrupt(payload: bytes, how: tuple[int, int, int]) -> bytes:
    """Damage a payload the way a buggy or hostile client would."""
    kind, where, byte = how
    if kind == 0 or not payload:
        return payload + bytes([byte])
    at = where % len(payload)
    if kind == 1:
        return payload[:at] + bytes([byte]) + payload[at + 1 :]
    if kind == 2:
        return payload[:-1]
    if kind == 3:
        return payload[:at] + b"\0" + payload[at:]
    return payload[:at]


OPS = [int(op) for op in Op if op not in (Op.WATCH_EVENT, Op.ERROR, Op.INVALID)]
#: Common operations come up more often than the domain management ones.
WEIGHTED_OPS = [
    *OPS,
    *[Op.WRITE, Op.READ, Op.MKDIR, Op.RM, Op.DIRECTORY, Op.SET_PERMS] * 3,
    *[Op.TRANSACTION_START, Op.TRANSACTION_END, Op.WATCH] * 2,
    *UNKNOWN_OPS[:3],
]


@st.composite
def request(draw: st.DrawFn) -> Request:
    op = draw(st.sampled_from(WEIGHTED_OPS))
    payload = draw(_payload(op))
    if draw(st.integers(0, 9)) == 0:
        how = draw(
            st.tuples(st.integers(0, 4), st.integers(0, 5000), st.integers(0, 255))
        )
        payload = _corrupt(payload, how)
    payload = payload[:4096]
    tx: str | int = draw(
        st.sampled_from(["none", "none", "none", "open", "open", "id"])
    )
    if tx == "id":
        tx = draw(st.integers(1, 0xFFFFFFFF))
    return Request(op, payload, tx)


#: Channels: sockets first, then the guests' rings.
channel = st.integers(0, SOCKETS + 1)


@st.composite
def action(draw: st.DrawFn) -> Action:
    mode = draw(
        st.sampled_from(
            ["whole"] * 12
            + ["split", "split", "pipeline", "pipeline", "truncate", "oversize"]
        )
    )
    where = draw(channel)
    if mode == "pipeline":
        requests = tuple(draw(st.lists(request(), min_size=2, max_size=8)))
    else:
        requests = (draw(request()),)
    cut = draw(st.integers(0, 0xFFFFFFFF)) if mode in ("truncate", "oversize") else 0
    return Action(where, mode, requests, cut)


examples = st.lists(action(), min_size=1, max_size=25)
