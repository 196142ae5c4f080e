"""The steps of a differential run and their seeded random generator.

A :class:`Step` is one raw request on one of the connections: three dom0
sockets and guest domain 1's ring.
Transactions are named by *labels*, never by number: the step that starts
one carries a fresh label, later steps name it, and the player
(:mod:`.runner`) maps each label to whatever id that daemon returned.  A
label with no (successful) start maps to an id no daemon gave out, so a
shrunk sequence that lost its TRANSACTION_START still means something.

With the guest (connection 3) permissions, their hiding of existence and
the filtering of watch events take part.  The generator keeps the path
space small (names ``a``-``d`` under ``/x``, ``/r`` and the guest's home,
and the same names relative to the connection's home) so that requests on
different connections collide: removals of parents under open
transactions, re-creations, conflicting commits, events on overlapping
watches.  It avoids the inputs that only exercise documented differences
(see :mod:`.oracle`) or C 4.17's own bugs: watch depths, non-decimal
numbers, long paths, quotas, SET_PERMS of special nodes by the guest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tests.integration.scenario import Op

__all__ = [
    "CONNECTIONS",
    "GUEST",
    "GUEST_CONN",
    "SOCKETS",
    "Generator",
    "Step",
    "generate",
]

#: dom0 socket connections every run uses (numbered from 0).
SOCKETS = 3
#: Domains: dom0; 1 and 2 exist and are introduced; 3 exists only; 7 is absent.
INTRODUCED = (1, 2)
EXISTING = (3,)
ABSENT = 7
#: The introduced domain that also sends requests, over its ring; its
#: connection is number :data:`SOCKETS`, after the sockets.
GUEST = 1
GUEST_CONN = SOCKETS
CONNECTIONS = SOCKETS + 1
NAMES = ("a", "b", "c", "d")
ROOTS = ("/x", "/r")
#: The guest's home: dom0 gives it to the guest at every reset.
GUEST_HOME = f"/local/domain/{GUEST}"
TOKENS = ("t1", "t2", "t3")
#: Invalid paths (PROTOCOL.md 4.1), sent now and then.
BAD_PATHS = (
    "/x/",
    "/x//a",
    "x/a/",
    "",
    "/x/a b",
    "/x/a.b",
    "/x/\xe9",
    "/x/a/../b",
)
SPECIAL = ("@introduceDomain", "@releaseDomain")

#: What the generator never sends, and why: documented differences it would
#: only exercise (docs/protocol-notes.md), and C 4.17 bugs.
NOT_GENERATED = {
    "WATCH with a depth": "C 4.17 has no watch depth (EINVAL); pyxenstored does",
    "non-decimal or out-of-range numbers": "C 4.17 uses atoi(); we are strict",
    "permission domids with prefixes, signs, > 65535": "strtol() in C 4.17",
    "paths over 2048 bytes": "path-max applies to sockets in C 4.17, not here",
    "quota boundaries": "at most N here, N+1 for some quotas in C 4.17",
    "GET/SET_FEATURE, GET/SET_QUOTA, CONTROL, seed ops 27-29": "ENOSYS in C 4.17",
    "SET_PERMS of a special node by the guest": (
        "C 4.17 answers a stale errno where it refuses (EAGAIN left by its last "
        "non-blocking read, or no reply at all when errno is 0)"
    ),
    "SET_PERMS of another '@' name": ("kills C 4.17 when the connection holds a watch"),
    "INTRODUCE, RELEASE, RESUME, SET_TARGET in the stream": (
        "domain life cycles are not compared here (see test_guest_differential)"
    ),
}


@dataclass(frozen=True)
class Step:
    """One request: connection, type, arguments and transaction label.

    ``args`` are the NUL-terminated strings of the payload, except for
    WRITE whose second argument is the raw value.  ``tx`` is the label of
    the transaction named in the header (0: none, -1: an id never given
    out); ``label`` is the label TRANSACTION_START gives the new one.
    """

    conn: int
    op: Op
    args: tuple[bytes, ...]
    tx: int = 0
    label: int = 0

    def payload(self) -> bytes:
        if self.op is Op.WRITE:
            return self.args[0] + b"\0" + self.args[1]
        return b"".join(a + b"\0" for a in self.args)

    def __str__(self) -> str:
        args = " ".join(_show(a) for a in self.args)
        if self.op is Op.WRITE:
            args = f"{_show(self.args[0])} = {self.args[1]!r}"
        tx = "" if self.tx == 0 else f" [tx {'?' if self.tx < 0 else self.tx}]"
        new = f" -> tx {self.label}" if self.label else ""
        return f"c{self.conn} {self.op.name} {args}{tx}{new}".rstrip()


def _show(arg: bytes) -> str:
    text = arg.decode("latin-1")
    if text and text.isprintable() and " " not in text:
        return text
    return repr(arg)


@dataclass
class _Conn:
    """What the generator remembers of one connection."""

    open_tx: list[int] = field(default_factory=list)
    ended_tx: list[int] = field(default_factory=list)
    watches: list[tuple[bytes, bytes]] = field(default_factory=list)


class Generator:
    """Random steps from a seeded :class:`random.Random`."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.conns = [_Conn() for _ in range(CONNECTIONS)]
        self.next_label = 1
        #: Recently used paths: picked again often, so requests collide.
        self.hot: list[str] = []

    # -- paths ---------------------------------------------------------------

    def _fresh_path(self) -> str:
        rnd = self.rnd
        depth = rnd.choices((0, 1, 2, 3, 4), (1, 8, 6, 3, 1))[0]
        names = [rnd.choice(NAMES) for _ in range(depth)]
        roll = rnd.random()
        if roll < 0.25:
            # Relative: the home of a socket is /local/domain/0, the guest's
            # is its own.
            return "/".join(names) if names else rnd.choice(NAMES)
        if roll < 0.3:
            return "/".join([GUEST_HOME, *names])
        return "/".join([rnd.choice(ROOTS), *names])

    def path(self, *, shallow: bool = False) -> bytes:
        """A path, often a recent one (``shallow``: often its parent)."""
        rnd = self.rnd
        if rnd.random() < 0.02:
            return rnd.choice(BAD_PATHS).encode("latin-1")
        if self.hot and rnd.random() < 0.55:
            path = rnd.choice(self.hot)
            if shallow and "/" in path.strip("/") and rnd.random() < 0.6:
                path = path.rsplit("/", 1)[0] or path
        else:
            path = self._fresh_path()
            if shallow and rnd.random() < 0.5:
                path = "/".join(path.split("/")[:3]) or path
        self.hot.append(path)
        del self.hot[:-12]
        return path.encode()

    def read_path(self) -> bytes:
        """A path to read: sometimes one outside the test area."""
        if self.rnd.random() < 0.05:
            return self.rnd.choice(
                ("/", "/tool", "/local/domain", "@foo", *SPECIAL)
            ).encode()
        return self.path()

    # -- other arguments -----------------------------------------------------

    def value(self) -> bytes:
        rnd = self.rnd
        return rnd.choices(
            (b"", b"1", b"v", b"abc", b"\0z", bytes(rnd.choices(b"xyz09", k=5))),
            (3, 4, 4, 2, 1, 2),
        )[0]

    def domid(self) -> int:
        return self.rnd.choices((0, *INTRODUCED, *EXISTING, ABSENT), (5, 5, 2, 2, 1))[0]

    def perms(self) -> tuple[bytes, ...]:
        rnd = self.rnd
        count = rnd.choices((1, 2, 3), (3, 4, 2))[0]
        out = []
        for i in range(count):
            domid = self.domid() if i or rnd.random() < 0.5 else 0
            out.append(f"{rnd.choice('nrwb')}{domid}".encode())
        return tuple(out)

    def watch_path(self) -> bytes:
        rnd = self.rnd
        roll = rnd.random()
        if roll < 0.08:
            return rnd.choice((*SPECIAL, "@foo")).encode()
        if roll < 0.12:
            return b"/"
        return self.path(shallow=True)

    def tx_for(self, c: _Conn) -> int:
        """A transaction for a data operation: often one that is open."""
        rnd = self.rnd
        if c.open_tx and rnd.random() < 0.5:
            return rnd.choice(c.open_tx)
        if c.ended_tx and rnd.random() < 0.02:
            return rnd.choice(c.ended_tx)
        if rnd.random() < 0.005:
            return -1
        return 0

    # -- steps ---------------------------------------------------------------

    def step(self) -> Step:
        rnd = self.rnd
        conn = rnd.choices(range(CONNECTIONS), (3,) * SOCKETS + (2,))[0]
        c = self.conns[conn]
        kind = rnd.choices(
            (
                "read",
                "write",
                "mkdir",
                "rm",
                "directory",
                "directory_part",
                "get_perms",
                "set_perms",
                "watch",
                "unwatch",
                "start",
                "end",
                "reset_watches",
                "domain_path",
                "introduced",
            ),
            (8, 12, 4, 8, 6, 2, 3, 5, 4, 2, 4, 5, 0.4, 0.5, 0.5),
        )[0]
        if kind == "read":
            return Step(conn, Op.READ, (self.read_path(),), self.tx_for(c))
        if kind == "write":
            return Step(conn, Op.WRITE, (self.path(), self.value()), self.tx_for(c))
        if kind == "mkdir":
            return Step(conn, Op.MKDIR, (self.path(),), self.tx_for(c))
        if kind == "rm":
            return Step(conn, Op.RM, (self.path(shallow=True),), self.tx_for(c))
        if kind == "directory":
            return Step(conn, Op.DIRECTORY, (self.read_path(),), self.tx_for(c))
        if kind == "directory_part":
            offset = rnd.choice((0, 0, 2, 4, rnd.randrange(16)))
            args = (self.read_path(), str(offset).encode())
            return Step(conn, Op.DIRECTORY_PART, args, self.tx_for(c))
        if kind == "get_perms":
            return Step(conn, Op.GET_PERMS, (self.read_path(),), self.tx_for(c))
        if kind == "set_perms":
            # Special nodes from dom0 only, and never another "@" name: where
            # C 4.17's set_perms_special() refuses, do_set_perms() answers
            # with a stale errno (EAGAIN from its last non-blocking read, or
            # no reply at all when errno is 0), and SET_PERMS @foo by a
            # connection holding a watch kills it.
            special = conn != GUEST_CONN and rnd.random() < 0.05
            path = rnd.choice(SPECIAL).encode() if special else self.path()
            return Step(conn, Op.SET_PERMS, (path, *self.perms()), self.tx_for(c))
        if kind == "watch":
            watch = (self.watch_path(), rnd.choice(TOKENS).encode())
            c.watches.append(watch)
            return Step(conn, Op.WATCH, watch)
        if kind == "unwatch":
            if c.watches and rnd.random() < 0.8:
                watch = rnd.choice(c.watches)
                c.watches.remove(watch)
            else:
                watch = (self.watch_path(), rnd.choice(TOKENS).encode())
            return Step(conn, Op.UNWATCH, watch)
        if kind == "start":
            if len(c.open_tx) >= 3:
                return self.step()
            label = self.next_label
            self.next_label += 1
            c.open_tx.append(label)
            # Rarely with a transaction in the header: EBUSY / ENOENT.
            tx = self.tx_for(c) if rnd.random() < 0.05 else 0
            return Step(conn, Op.TRANSACTION_START, (b"",), tx, label)
        if kind == "end":
            if c.ended_tx and rnd.random() < 0.03:
                return Step(conn, Op.TRANSACTION_END, (b"T",), rnd.choice(c.ended_tx))
            if not c.open_tx:
                return self.step()
            tx = rnd.choice(c.open_tx)
            c.open_tx.remove(tx)
            c.ended_tx.append(tx)
            how = rnd.choices((b"T", b"F", b"X"), (14, 5, 1))[0]
            return Step(conn, Op.TRANSACTION_END, (how,), tx)
        if kind == "reset_watches":
            c.watches.clear()
            c.ended_tx.extend(c.open_tx)
            c.open_tx.clear()
            return Step(conn, Op.RESET_WATCHES, (b"",))
        if kind == "domain_path":
            return Step(conn, Op.GET_DOMAIN_PATH, (str(self.domid()).encode(),))
        return Step(conn, Op.IS_DOMAIN_INTRODUCED, (str(self.domid()).encode(),))

    def steps(self, count: int) -> list[Step]:
        return [self.step() for _ in range(count)]


def generate(seed: int, count: int) -> list[Step]:
    """``count`` random steps from ``seed`` (always the same ones)."""
    return Generator(seed).steps(count)
