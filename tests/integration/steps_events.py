"""The differential scenario, part 2: watches, transactions, large listings.

See ``steps_nodes.py``; :func:`scenario` is the whole script, in order.
"""

from __future__ import annotations

from tests.integration.scenario import Op, RawClient, Recorder, Reply, payload
from tests.integration.steps_nodes import (
    pyxs_nodes,
    raw_domains,
    raw_nodes,
    raw_paths,
    raw_perm_syntax,
    raw_perms,
    tools_basics,
    tools_perms,
)

__all__ = ["scenario"]


def raw_watches(r: Recorder) -> None:
    """Watches: events, their order relative to replies, and their paths.

    ``w`` watches; ``o`` (another connection) makes the changes.
    """
    w = r.raw_client()
    o = r.raw_client()
    _register(r, w, o)
    _fire(r, w, o)
    _unregister(r, w, o)


def _register(r: Recorder, w: RawClient, o: RawClient) -> None:
    r.raw("watch: setup /wt/sub/leaf", o, Op.WRITE, b"/wt/sub/leaf\0L")
    r.raw("WATCH /wt tok1 (OK then initial event)", w, Op.WATCH, payload("/wt", "tok1"))
    r.raw("WATCH /wt tok1 again", w, Op.WATCH, payload("/wt", "tok1"))
    r.raw("WATCH /wt tok2", w, Op.WATCH, payload("/wt", "tok2"))
    r.raw("WATCH existing descendant", w, Op.WATCH, payload("/wt/sub/leaf", "leaf"))
    r.raw("WATCH non-existent below", w, Op.WATCH, payload("/wt/sub/none/deep", "deep"))
    r.raw("WATCH relative rel/wt", w, Op.WATCH, payload("rel/wt", "relative"))
    r.raw("WATCH @introduceDomain", w, Op.WATCH, payload("@introduceDomain", "intro"))
    r.raw("WATCH @releaseDomain", w, Op.WATCH, payload("@releaseDomain", "release"))
    r.raw("WATCH @other special", w, Op.WATCH, payload("@other", "other"))
    r.raw("WATCH one string", w, Op.WATCH, payload("/wt"))
    r.raw("WATCH bad path", w, Op.WATCH, payload("/wt/", "bad"))
    r.raw("WATCH ignores tx_id", w, Op.WATCH, payload("/wt2", "tx"), tx_id=99)
    r.raw("WATCH with a depth", r.raw_client(), Op.WATCH, payload("/wt", "depth", "1"))
    r.raw("write by watcher: event before OK", w, Op.WRITE, b"/wt/sub/leaf\0v2")


def _fire(r: Recorder, w: RawClient, o: RawClient) -> None:
    r.raw("other writes /wt/x", o, Op.WRITE, b"/wt/x\0v")
    r.events("events for /wt/x", w)
    r.raw("other mkdir /wt/m", o, Op.MKDIR, payload("/wt/m"))
    r.raw("other mkdir existing /wt/m", o, Op.MKDIR, payload("/wt/m"))
    r.events("events for mkdirs", w)
    r.raw(
        "other set_perms /wt/sub/leaf",
        o,
        Op.SET_PERMS,
        payload("/wt/sub/leaf", "n0", "r1"),
    )
    r.events("events for set_perms", w)
    r.raw("other write relative target", o, Op.WRITE, b"/local/domain/0/rel/wt/c\0v")
    r.events("events for relative watch", w)
    r.raw("other rm /wt/sub subtree", o, Op.RM, payload("/wt/sub"))
    r.events("events for subtree rm", w)
    r.raw("other rm missing /wt/none", o, Op.RM, payload("/wt/none"))
    r.events("events for rm of missing", w)
    r.raw(
        "other set_perms @releaseDomain",
        o,
        Op.SET_PERMS,
        payload("@releaseDomain", "n0"),
    )
    r.events("events for special set_perms", w)


def _unregister(r: Recorder, w: RawClient, o: RawClient) -> None:
    r.raw("UNWATCH /wt tok2", w, Op.UNWATCH, payload("/wt", "tok2"))
    r.raw("UNWATCH unknown token", w, Op.UNWATCH, payload("/wt", "nope"))
    r.raw("UNWATCH one string", w, Op.UNWATCH, payload("/wt"))
    r.raw("UNWATCH relative", w, Op.UNWATCH, payload("rel/wt", "relative"))
    r.raw("other rm /wt", o, Op.RM, payload("/wt"))
    r.events("events for rm /wt", w)
    r.raw("RESET_WATCHES", w, Op.RESET_WATCHES, payload(""))
    r.raw("other write after reset", o, Op.WRITE, b"/wt/again\0v")
    r.events("no events after reset", w)
    r.raw("UNWATCH after reset", w, Op.UNWATCH, payload("/wt", "tok1"))
    r.raw("WATCH / root", w, Op.WATCH, payload("/", "root"))
    r.raw("other write seen by root watch", o, Op.WRITE, b"/anything\0v")
    r.events("events for root watch", w)


def removal_order(r: Recorder) -> None:
    """The order of the events of a subtree removal, direct and in a tx."""
    w = r.raw_client()
    o = r.raw_client()
    tree = (b"/dfs/a/x\0", b"/dfs/a/y\0", b"/dfs/b\0")
    for node in tree:
        r.raw(f"dfs: write {node[:-1].decode()}", o, Op.WRITE, node)
    for path in ("/dfs", "/dfs/a", "/dfs/a/x", "/dfs/a/y", "/dfs/b"):
        r.raw(f"dfs: WATCH {path}", w, Op.WATCH, payload(path, "t" + path))
    r.raw("dfs: rm /dfs", o, Op.RM, payload("/dfs"))
    r.events("dfs: events of rm, in order", w)
    for node in tree:
        r.raw(f"dfs: write {node[:-1].decode()} again", o, Op.WRITE, node)
    r.events("dfs: events of rewrite", w)
    tx = _tx_id(r.raw("dfs: TRANSACTION_START", o, Op.TRANSACTION_START, payload("")))
    r.raw("dfs: tx READ /dfs/b", o, Op.READ, payload("/dfs/b"), tx)
    r.raw("dfs: tx rm /dfs", o, Op.RM, payload("/dfs"), tx)
    r.raw("dfs: commit", o, Op.TRANSACTION_END, payload("T"), tx)
    r.events("dfs: events of rm in tx, in order", w)
    tx = _tx_id(r.raw("dfs: TRANSACTION_START 2", o, Op.TRANSACTION_START, payload("")))
    r.raw("dfs: tx READ /dfs/b missing", o, Op.READ, payload("/dfs/b"), tx)
    r.raw("dfs: tx write /dfs/a/y", o, Op.WRITE, b"/dfs/a/y\0", tx)
    r.raw("dfs: tx write /dfs/b", o, Op.WRITE, b"/dfs/b\0", tx)
    r.raw("dfs: tx write /dfs/a/x", o, Op.WRITE, b"/dfs/a/x\0", tx)
    r.raw("dfs: commit 2", o, Op.TRANSACTION_END, payload("T"), tx)
    r.events("dfs: events of creation in tx, in order", w)


def pyxs_watches(r: Recorder) -> None:
    c = r.pyxs_client()
    m = c.monitor()
    r.pyxs("pyxs watch /pw", lambda: m.watch(b"/pw", b"ptok"))
    r.monitor_events("pyxs initial event", c, m)
    r.pyxs("pyxs watch /pw duplicate", lambda: m.watch(b"/pw", b"ptok"))
    r.pyxs("pyxs watch @releaseDomain", lambda: m.watch(b"@releaseDomain", b"prel"))
    r.pyxs("pyxs write /pw/a", lambda: c.write(b"/pw/a", b"1"))
    r.pyxs("pyxs delete /pw", lambda: c.delete(b"/pw"))
    r.monitor_events("pyxs events for write+delete", c, m)
    r.pyxs("pyxs unwatch /pw", lambda: m.unwatch(b"/pw", b"ptok"))
    r.pyxs(
        "pyxs unwatch unknown",
        lambda: c.execute_command(Op.UNWATCH, b"/pw\0", b"ptok\0"),
    )
    r.pyxs("pyxs write after unwatch", lambda: c.write(b"/pw/b", b"2"))
    r.monitor_events("pyxs events after unwatch", c, m)


def tool_watches(r: Recorder) -> None:
    r.tool_watch(
        "xenstore-watch /tw: 3 events",
        "/tw",
        3,
        [
            lambda: r.tool("tw: write /tw/a", "xenstore-write", "/tw/a", "1"),
            lambda: r.tool("tw: rm /tw", "xenstore-rm", "/tw"),
        ],
    )
    r.tool_watch("xenstore-watch @introduceDomain", "@introduceDomain", 1, [])


def transactions(r: Recorder) -> None:
    """``a`` runs transactions; ``b`` watches /tx and interferes."""
    a = r.raw_client()
    b = r.raw_client()
    _transaction_life(r, a, b)
    _transaction_conflicts(r, a, b)
    _transaction_ends(r, a, b)
    pyxs_transactions(r)


def _transaction_life(r: Recorder, a: RawClient, b: RawClient) -> None:
    r.raw("tx setup /tx/a", b, Op.WRITE, b"/tx/a\x000")
    r.raw("tx setup /other/x", b, Op.WRITE, b"/other/x\x000")
    r.raw("tx watcher on /tx", b, Op.WATCH, payload("/tx", "txw"))
    start = r.raw("TRANSACTION_START", a, Op.TRANSACTION_START, payload(""))
    t1 = _tx_id(start)
    r.raw("tx READ /tx/a", a, Op.READ, payload("/tx/a"), t1)
    r.raw("tx WRITE /tx/a", a, Op.WRITE, b"/tx/a\x001", t1)
    r.raw("tx READ own write", a, Op.READ, payload("/tx/a"), t1)
    r.raw("tx MKDIR /tx/m", a, Op.MKDIR, payload("/tx/m"), t1)
    r.raw("tx DIRECTORY /tx", a, Op.DIRECTORY, payload("/tx"), t1)
    r.raw("tx SET_PERMS /tx/m", a, Op.SET_PERMS, payload("/tx/m", "n0", "r2"), t1)
    r.raw("tx GET_PERMS /tx/m", a, Op.GET_PERMS, payload("/tx/m"), t1)
    r.raw("outside READ /tx/a", b, Op.READ, payload("/tx/a"))
    r.raw("outside DIRECTORY /tx", b, Op.DIRECTORY, payload("/tx"))
    r.raw("nested TRANSACTION_START", a, Op.TRANSACTION_START, payload(""), t1)
    r.raw("TRANSACTION_START unknown tx_id", a, Op.TRANSACTION_START, payload(""), 999)
    r.raw("unrelated write during tx", b, Op.WRITE, b"/other/x\x001")
    r.raw("tx GET_DOMAIN_PATH (tx checked)", a, Op.GET_DOMAIN_PATH, payload("3"), t1)
    r.raw("TRANSACTION_END bad payload X", a, Op.TRANSACTION_END, payload("X"), t1)
    r.raw("TRANSACTION_END without NUL", a, Op.TRANSACTION_END, b"T", t1)
    r.raw("TRANSACTION_END two strings", a, Op.TRANSACTION_END, payload("T", "F"), t1)
    r.raw("TRANSACTION_END commit", a, Op.TRANSACTION_END, payload("T"), t1)
    r.events("watch events of commit", b)
    r.raw("READ after commit", a, Op.READ, payload("/tx/a"))
    r.raw("TRANSACTION_END of ended tx", a, Op.TRANSACTION_END, payload("T"), t1)
    r.raw("TRANSACTION_END tx_id 0", a, Op.TRANSACTION_END, payload("T"))
    r.raw("TRANSACTION_END unknown id", a, Op.TRANSACTION_END, payload("F"), 4242)


def _transaction_conflicts(r: Recorder, a: RawClient, b: RawClient) -> None:
    # Another connection rewrites, with the same value, a node the
    # transaction read: EAGAIN.
    t2 = _tx_id(
        r.raw("TRANSACTION_START (conflict)", a, Op.TRANSACTION_START, payload(""))
    )
    r.raw("conflict tx READ /tx/a", a, Op.READ, payload("/tx/a"), t2)
    r.raw("conflict tx WRITE /tx/b", a, Op.WRITE, b"/tx/b\0b", t2)
    r.raw("other rewrites /tx/a same value", b, Op.WRITE, b"/tx/a\x001")
    r.raw("conflict commit -> EAGAIN", a, Op.TRANSACTION_END, payload("T"), t2)
    r.raw("READ /tx/b not applied", a, Op.READ, payload("/tx/b"))
    r.events("events after conflict", b)
    # Creating a sibling changes the parent the transaction created under.
    t3 = _tx_id(
        r.raw("TRANSACTION_START (sibling)", a, Op.TRANSACTION_START, payload(""))
    )
    r.raw("sibling tx WRITE /tx/n1", a, Op.WRITE, b"/tx/n1\0x", t3)
    r.raw("other creates /tx/n2", b, Op.WRITE, b"/tx/n2\0y")
    r.raw("sibling commit", a, Op.TRANSACTION_END, payload("T"), t3)


def _transaction_ends(r: Recorder, a: RawClient, b: RawClient) -> None:
    t4 = _tx_id(
        r.raw("TRANSACTION_START (abort)", a, Op.TRANSACTION_START, payload(""))
    )
    r.raw("abort tx RM /tx", a, Op.RM, payload("/tx"), t4)
    r.raw("abort tx READ removed", a, Op.READ, payload("/tx/a"), t4)
    r.raw("abort tx DIRECTORY /", a, Op.DIRECTORY, payload("/"), t4)
    r.raw("TRANSACTION_END abort", a, Op.TRANSACTION_END, payload("F"), t4)
    r.raw("READ after abort", a, Op.READ, payload("/tx/a"))
    t5 = _tx_id(
        r.raw("TRANSACTION_START (rm commit)", a, Op.TRANSACTION_START, payload(""))
    )
    r.raw("tx RM /tx/m", a, Op.RM, payload("/tx/m"), t5)
    r.raw("tx WRITE /tx/m/again", a, Op.WRITE, b"/tx/m/again\0z", t5)
    r.raw("commit rm+recreate", a, Op.TRANSACTION_END, payload("T"), t5)
    r.events("events of rm+recreate", b)
    t6 = _tx_id(
        r.raw("TRANSACTION_START (reset)", a, Op.TRANSACTION_START, payload(""))
    )
    r.raw("RESET_WATCHES aborts tx", a, Op.RESET_WATCHES, payload(""))
    r.raw("READ in tx after reset", a, Op.READ, payload("/tx/a"), t6)


def pyxs_transactions(r: Recorder) -> None:
    c = r.pyxs_client()
    d = r.pyxs_client()
    r.pyxs("pyxs transaction start", c.transaction)
    r.pyxs("pyxs tx write", lambda: c.write(b"/ptx/a", b"1"))
    r.pyxs("pyxs tx read", lambda: c.read(b"/ptx/a"))
    r.pyxs("pyxs other read outside", lambda: d.read(b"/ptx/a"))
    r.pyxs("pyxs commit", c.commit)
    r.pyxs("pyxs start (conflict)", c.transaction)
    r.pyxs("pyxs tx read (conflict)", lambda: c.read(b"/ptx/a"))
    r.pyxs("pyxs other write", lambda: d.write(b"/ptx/a", b"2"))
    r.pyxs("pyxs commit conflict", c.commit)
    r.pyxs("pyxs start (rollback)", c.transaction)
    r.pyxs("pyxs tx delete", lambda: c.delete(b"/ptx"))
    r.pyxs("pyxs rollback", c.rollback)
    r.pyxs("pyxs read after rollback", lambda: c.read(b"/ptx/a"))


def _tx_id(replies: list[Reply]) -> int:
    """The id a TRANSACTION_START reply carries (0 if it failed)."""
    for reply in replies:
        if reply.op == "TRANSACTION_START":
            return int(reply.payload.rstrip(b"\0"))
    return 0


def big_directory(r: Recorder) -> None:
    """A child list longer than one payload: E2BIG, then DIRECTORY_PART."""
    pairs = [
        s for i in range(300) for s in (f"/big/child-with-long-name-{i:03}", str(i))
    ]
    r.tool("create 300 children", "xenstore-write", *pairs)
    r.tool("list big directory", "xenstore-list", "/big")
    r.tool("ls big directory", "xenstore-ls", "/big")
    c = r.pyxs_client()
    r.pyxs("pyxs list big directory", lambda: c.list(b"/big"))
    s = r.raw_client()
    r.raw("raw DIRECTORY big", s, Op.DIRECTORY, payload("/big"))
    offset = 0
    for part in range(1, 4):
        got = r.raw(
            f"raw DIRECTORY_PART part {part}",
            s,
            Op.DIRECTORY_PART,
            payload("/big", str(offset)),
        )
        offset += len(_part_body(got))
    r.raw(
        "raw DIRECTORY_PART past the end",
        s,
        Op.DIRECTORY_PART,
        payload("/big", "99999"),
    )
    r.raw("raw DIRECTORY_PART offset abc", s, Op.DIRECTORY_PART, payload("/big", "abc"))
    r.raw("raw DIRECTORY_PART no offset", s, Op.DIRECTORY_PART, payload("/big"))
    r.raw(
        "raw DIRECTORY_PART missing node", s, Op.DIRECTORY_PART, payload("/none", "0")
    )
    r.raw("raw DIRECTORY_PART bad path", s, Op.DIRECTORY_PART, payload("/big/", "0"))


def _part_body(replies: list[Reply]) -> bytes:
    """A DIRECTORY_PART reply without its generation (empty if failed)."""
    if len(replies) != 1 or replies[0].op != "DIRECTORY_PART":
        return b""
    body = replies[0].payload
    return body[body.index(b"\0") + 1 :]


def control(r: Recorder) -> None:
    r.control("control help", "help")
    r.control("control unknown command", "no-such-command")
    r.raw("raw CONTROL empty", r.raw_client(), Op.CONTROL, b"")


def protocol_violation(r: Recorder) -> None:
    s = r.raw_client()
    s.send(Op.READ, b"x" * 16, length=4097)
    r.raw("payload over 4096: connection dropped", s, Op.READ, payload("/"))
    r.tool("ls -fp / (final tree)", "xenstore-ls", "-fp", "/")


def scenario(r: Recorder) -> None:
    """The whole script; each step records one answer."""
    tools_basics(r)
    tools_perms(r)
    pyxs_nodes(r)
    raw_paths(r)
    raw_nodes(r)
    raw_perm_syntax(r)
    raw_perms(r)
    raw_domains(r)
    raw_watches(r)
    removal_order(r)
    pyxs_watches(r)
    tool_watches(r)
    transactions(r)
    big_directory(r)
    control(r)
    protocol_violation(r)
