"""The differential scenario, part 1: nodes, permissions, malformed requests.

Each function is one act of the script that ``test_differential.py`` runs
against both daemons; every call on the :class:`Recorder` is one compared
operation.  Labels name the operation and are unique.
"""

from __future__ import annotations

from tests.integration.scenario import Op, Recorder, payload

__all__ = [
    "pyxs_nodes",
    "raw_domains",
    "raw_nodes",
    "raw_paths",
    "raw_perm_syntax",
    "raw_perms",
    "tools_basics",
    "tools_perms",
]


def tools_basics(r: Recorder) -> None:
    """Node operations through Debian's command-line tools."""
    r.tool("ls -fp / (initial tree)", "xenstore-ls", "-fp", "/")
    r.tool("write /d/a", "xenstore-write", "/d/a", "1")
    r.tool("read /d/a", "xenstore-read", "/d/a")
    r.tool("write /d/b/c creates /d/b", "xenstore-write", "/d/b/c", "hello world")
    r.tool("read -p /d/b/c", "xenstore-read", "-p", "/d/b/c")
    r.tool("read intermediate /d/b", "xenstore-read", "/d/b")
    r.tool("read missing /d/missing", "xenstore-read", "/d/missing")
    r.tool("read missing parent /nope/x", "xenstore-read", "/nope/x")
    r.tool("exists /d/a", "xenstore-exists", "/d/a")
    r.tool("exists missing", "xenstore-exists", "/d/nope")
    r.tool(
        "write two pairs (one transaction)", "xenstore-write", "/d/x", "1", "/d/y", "2"
    )
    r.tool("read two keys (one transaction)", "xenstore-read", "/d/x", "/d/y")
    r.tool("list /d", "xenstore-list", "/d")
    r.tool("ls -f /d", "xenstore-ls", "-f", "/d")
    r.tool("write escaped value", "xenstore-write", "/d/esc", r"a\x01b\tc\\d")
    r.tool("read escaped value", "xenstore-read", "/d/esc")
    r.tool("read -R raw value", "xenstore-read", "-R", "/d/esc")
    r.tool("write empty value", "xenstore-write", "/d/empty", "")
    r.tool("read empty value", "xenstore-read", "/d/empty")
    r.tool("rm /d/x", "xenstore-rm", "/d/x")
    r.tool("rm missing node, parent exists", "xenstore-rm", "/d/nope")
    r.tool("rm missing node, parent missing", "xenstore-rm", "/nope/deeper")
    r.tool("write /d/t1/t2/t3", "xenstore-write", "/d/t1/t2/t3", "x")
    r.tool("rm -t /d/t1/t2/t3", "xenstore-rm", "-t", "/d/t1/t2/t3")
    r.tool("list /d after rm -t", "xenstore-list", "/d")
    r.tool("multi-call: xenstore read", "xenstore", "read", "/d/a")
    r.tool("multi-call: xenstore ls", "xenstore", "ls", "/d/b")
    r.tool("read invalid char", "xenstore-read", "/d/a b")
    r.tool("write trailing slash", "xenstore-write", "/d/a/", "v")
    r.tool("write double slash", "xenstore-write", "/d//a", "v")
    r.tool("write relative rel/k", "xenstore-write", "rel/k", "v")
    r.tool("read relative rel/k", "xenstore-read", "rel/k")
    r.tool("read absolute of relative", "xenstore-read", "/local/domain/0/rel/k")
    r.tool("rm root", "xenstore-rm", "/")
    r.tool("rm subtree /d/b", "xenstore-rm", "/d/b")
    r.tool("exists /d/b/c after subtree rm", "xenstore-exists", "/d/b/c")


def tools_perms(r: Recorder) -> None:
    """xenstore-chmod and xenstore-ls -p."""
    r.tool("chmod n0 r5 (dom5 absent)", "xenstore-chmod", "/d/a", "n0", "r5")
    r.tool("ls -p /d after chmod", "xenstore-ls", "-p", "/d")
    r.tool("chmod owner dom7 absent", "xenstore-chmod", "/d/a", "n7")
    r.tool("chmod malformed letter", "xenstore-chmod", "/d/a", "x0")
    r.tool("chmod missing node", "xenstore-chmod", "/d/none", "n0")
    r.tool("write /d/r/s/t", "xenstore-write", "/d/r/s/t", "deep")
    r.tool("chmod -r /d/r b0 r3", "xenstore-chmod", "-r", "/d/r", "b0", "r3")
    r.tool("ls -fp /d/r", "xenstore-ls", "-fp", "/d/r")
    r.tool("chmod -u /d/r/s/t", "xenstore-chmod", "-u", "/d/r/s/t", "r0")
    r.tool("ls -fp /d after chmod -u", "xenstore-ls", "-fp", "/d")
    r.tool("chmod @releaseDomain", "xenstore-chmod", "@releaseDomain", "n0", "r9")


def pyxs_nodes(r: Recorder) -> None:
    """Node operations through pyxs."""
    c = r.pyxs_client()
    r.pyxs("pyxs write /p/a", lambda: c.write(b"/p/a", b"v1"))
    r.pyxs("pyxs read /p/a", lambda: c.read(b"/p/a"))
    r.pyxs("pyxs write value with NULs", lambda: c.write(b"/p/nul", b"a\0b\0"))
    r.pyxs("pyxs read value with NULs", lambda: c.read(b"/p/nul"))
    r.pyxs("pyxs mkdir /p/dir/sub", lambda: c.mkdir(b"/p/dir/sub"))
    r.pyxs("pyxs mkdir existing /p/a", lambda: c.mkdir(b"/p/a"))
    r.pyxs("pyxs read /p/a after mkdir", lambda: c.read(b"/p/a"))
    r.pyxs("pyxs mkdir /", lambda: c.mkdir(b"/"))
    r.pyxs("pyxs list /p", lambda: c.list(b"/p"))
    r.pyxs("pyxs list /", lambda: c.list(b"/"))
    r.pyxs("pyxs list leaf", lambda: c.list(b"/p/a"))
    r.pyxs("pyxs list missing", lambda: c.list(b"/p/none"))
    r.pyxs("pyxs exists /p/dir", lambda: c.exists(b"/p/dir"))
    r.pyxs("pyxs exists missing", lambda: c.exists(b"/p/none"))
    r.pyxs("pyxs read /", lambda: c.read(b"/"))
    r.pyxs("pyxs read missing", lambda: c.read(b"/p/none"))
    r.pyxs("pyxs get_perms /p/a", lambda: c.get_perms(b"/p/a"))
    r.pyxs(
        "pyxs set_perms /p/a n0 r1 w2 b3",
        lambda: c.set_perms(b"/p/a", [b"n0", b"r1", b"w2", b"b3"]),
    )
    r.pyxs("pyxs get_perms after set", lambda: c.get_perms(b"/p/a"))
    r.pyxs("pyxs set_perms owner absent", lambda: c.set_perms(b"/p/a", [b"b4"]))
    r.pyxs("pyxs set_perms on missing node", lambda: c.set_perms(b"/p/none", [b"n0"]))
    r.pyxs("pyxs get_perms @introduceDomain", lambda: c.get_perms(b"@introduceDomain"))
    r.pyxs("pyxs get_perms missing", lambda: c.get_perms(b"/p/none"))
    r.pyxs("pyxs delete /p/dir", lambda: c.delete(b"/p/dir"))
    r.pyxs("pyxs delete missing, parent exists", lambda: c.delete(b"/p/dir"))
    r.pyxs("pyxs delete missing, parent missing", lambda: c.delete(b"/p/dir/sub"))
    r.pyxs("pyxs get_domain_path 0", lambda: c.get_domain_path(0))
    r.pyxs("pyxs get_domain_path 7", lambda: c.get_domain_path(7))
    r.pyxs("pyxs is_domain_introduced 0", lambda: c.is_domain_introduced(0))
    r.pyxs("pyxs is_domain_introduced 7", lambda: c.is_domain_introduced(7))
    r.pyxs("pyxs unknown op 128", lambda: c.execute_command(128, b"/p\0"))
    r.pyxs("pyxs client-sent WATCH_EVENT", lambda: c.execute_command(15, b"/p\0t\0"))
    r.pyxs("pyxs client-sent ERROR", lambda: c.execute_command(16, b"EINVAL\0"))
    r.pyxs("pyxs walk /p", lambda: list(c.walk(b"/p")))


def raw_paths(r: Recorder) -> None:
    """Requests only a raw client can send: bad paths and payloads."""
    s = r.raw_client()
    r.raw("raw WRITE /e/a", s, Op.WRITE, b"/e/a\0value")
    r.raw("raw READ invalid char", s, Op.READ, payload("/e/a b"))
    r.raw("raw READ dot", s, Op.READ, payload("/e/a.b"))
    r.raw("raw READ trailing slash", s, Op.READ, payload("/e/"))
    r.raw("raw READ double slash", s, Op.READ, payload("/e//a"))
    r.raw("raw READ special path", s, Op.READ, payload("@releaseDomain"))
    r.raw("raw READ empty path", s, Op.READ, payload(""))
    r.raw("raw READ without NUL", s, Op.READ, b"/e/a")
    r.raw("raw READ two strings", s, Op.READ, payload("/e/a", "x"))
    r.raw("raw READ empty payload", s, Op.READ, b"")
    r.raw("raw READ path of 3072 bytes", s, Op.READ, payload("/" + "a" * 3071))
    r.raw("raw READ path of 3073 bytes", s, Op.READ, payload("/" + "a" * 3072))
    r.raw("raw READ path of 2048 bytes", s, Op.READ, payload("/" + "a" * 2047))
    r.raw("raw READ path of 2049 bytes", s, Op.READ, payload("/" + "a" * 2048))
    r.raw(
        "raw READ 2048 bytes below a home",
        s,
        Op.READ,
        payload("/local/domain/0/" + "a" * 2048),
    )
    r.raw("raw READ relative", s, Op.READ, payload("rel/k"))
    r.raw("raw READ unknown tx_id", s, Op.READ, payload("/e/a"), tx_id=77)
    r.raw("raw WRITE without NUL", s, Op.WRITE, b"/e/b")
    r.raw("raw WRITE value with NULs", s, Op.WRITE, b"/e/n\0a\0\0b")
    r.raw("raw READ value with NULs", s, Op.READ, payload("/e/n"))
    r.raw("raw WRITE empty value", s, Op.WRITE, b"/e/z\0")
    r.raw("raw WRITE /", s, Op.WRITE, b"/\0rootvalue")
    r.raw("raw READ /", s, Op.READ, payload("/"))
    r.raw("raw WRITE special path", s, Op.WRITE, b"@releaseDomain\0x")
    r.raw("raw MKDIR /", s, Op.MKDIR, payload("/"))
    r.raw("raw MKDIR bad path", s, Op.MKDIR, payload("/e/"))
    r.raw("raw RM bad path", s, Op.RM, payload("/e//a"))
    r.raw("raw RM /", s, Op.RM, payload("/"))


def raw_nodes(r: Recorder) -> None:
    """DIRECTORY and GET_PERMS, malformed and special."""
    s = r.raw_client()
    r.raw("raw DIRECTORY missing", s, Op.DIRECTORY, payload("/e/none"))
    r.raw("raw DIRECTORY leaf", s, Op.DIRECTORY, payload("/e/a"))
    r.raw("raw DIRECTORY /e", s, Op.DIRECTORY, payload("/e"))
    r.raw("raw DIRECTORY special", s, Op.DIRECTORY, payload("@introduceDomain"))
    r.raw("raw GET_PERMS @releaseDomain", s, Op.GET_PERMS, payload("@releaseDomain"))
    r.raw("raw GET_PERMS @unknownSpecial", s, Op.GET_PERMS, payload("@unknownSpecial"))
    r.raw("raw GET_PERMS bad path", s, Op.GET_PERMS, payload("/e/"))


#: Permission entries both daemons read alike (C parses with strtol(.., 0)).
PERM_SYNTAX = ("r0 5", "r0x-5", "r0-5", "r08", "r0x1_0", "r5 ", "r0x", "r+5", "r00")
#: Entries C stores (as stale, truncated or sign-extended domids) and we
#: refuse: see DELIBERATE_DIFFERENCES in test_differential.py.
PERMS_C_STORES = ("r-5", "r65536", "r 5", "r99999999999999999999")


def raw_perm_syntax(r: Recorder) -> None:
    """SET_PERMS payloads the tools would refuse to send."""
    s = r.raw_client()
    r.raw("raw SET_PERMS path only", s, Op.SET_PERMS, payload("/e/a"))
    r.raw("raw SET_PERMS bad letter", s, Op.SET_PERMS, payload("/e/a", "x0"))
    r.raw("raw SET_PERMS no domid", s, Op.SET_PERMS, payload("/e/a", "r"))
    r.raw("raw SET_PERMS empty entry", s, Op.SET_PERMS, payload("/e/a", ""))
    r.raw("raw SET_PERMS trailing garbage", s, Op.SET_PERMS, payload("/e/a", "r5x"))
    r.raw("raw SET_PERMS no final NUL", s, Op.SET_PERMS, b"/e/a\0n0")
    r.raw("raw SET_PERMS octal domid", s, Op.SET_PERMS, payload("/e/a", "n0", "r010"))
    r.raw("raw SET_PERMS hex owner", s, Op.SET_PERMS, payload("/e/a", "b0x0", "w0x9"))
    r.raw("raw GET_PERMS after octal/hex", s, Op.GET_PERMS, payload("/e/a"))
    r.raw("raw WRITE /e/q", s, Op.WRITE, b"/e/q\0")
    for perm in PERM_SYNTAX:
        r.raw(
            f"raw SET_PERMS n0 {perm!r}", s, Op.SET_PERMS, payload("/e/q", "n0", perm)
        )
        r.raw(f"raw GET_PERMS after {perm!r}", s, Op.GET_PERMS, payload("/e/q"))
    for perm in PERMS_C_STORES:
        r.raw(
            f"raw SET_PERMS n0 {perm!r}", s, Op.SET_PERMS, payload("/e/q", "n0", perm)
        )
    # C's copy of /e/q now differs; remove it so the final tree compares.
    r.raw("raw RM /e/q", s, Op.RM, payload("/e/q"))


def raw_perms(r: Recorder) -> None:
    """SET_PERMS owner checks, special nodes."""
    s = r.raw_client()
    r.raw("raw SET_PERMS absent owner", s, Op.SET_PERMS, payload("/e/a", "r12"))
    r.raw(
        "raw SET_PERMS absent owner, missing node",
        s,
        Op.SET_PERMS,
        payload("/e/x", "r12"),
    )
    r.raw(
        "raw SET_PERMS @introduceDomain",
        s,
        Op.SET_PERMS,
        payload("@introduceDomain", "n0", "r3"),
    )
    r.raw(
        "raw GET_PERMS @introduceDomain", s, Op.GET_PERMS, payload("@introduceDomain")
    )
    r.raw(
        "raw SET_PERMS @unknownSpecial",
        s,
        Op.SET_PERMS,
        payload("@unknownSpecial", "n0"),
    )
    r.raw(
        "raw SET_PERMS bad path, absent owner", s, Op.SET_PERMS, payload("/e/", "r12")
    )
    r.raw("raw SET_PERMS bad path, bad perm", s, Op.SET_PERMS, payload("/e/", "q1"))
    r.raw(
        "raw SET_PERMS @releaseDomain absent owner",
        s,
        Op.SET_PERMS,
        payload("@releaseDomain", "n12"),
    )


def raw_domains(r: Recorder) -> None:
    """Domain operations without guests, and message types C does not know."""
    s = r.raw_client()
    r.raw("raw GET_DOMAIN_PATH 5", s, Op.GET_DOMAIN_PATH, payload("5"))
    r.raw("raw GET_DOMAIN_PATH abc", s, Op.GET_DOMAIN_PATH, payload("abc"))
    r.raw("raw GET_DOMAIN_PATH empty", s, Op.GET_DOMAIN_PATH, payload(""))
    r.raw("raw GET_DOMAIN_PATH no NUL", s, Op.GET_DOMAIN_PATH, b"5")
    r.raw("raw IS_DOMAIN_INTRODUCED 0", s, Op.IS_DOMAIN_INTRODUCED, payload("0"))
    r.raw("raw IS_DOMAIN_INTRODUCED 5", s, Op.IS_DOMAIN_INTRODUCED, payload("5"))
    r.raw(
        "raw IS_DOMAIN_INTRODUCED DOMID_SELF",
        s,
        Op.IS_DOMAIN_INTRODUCED,
        payload("32752"),
    )
    r.raw("raw IS_DOMAIN_INTRODUCED abc", s, Op.IS_DOMAIN_INTRODUCED, payload("abc"))
    r.raw("raw GET_DOMAIN_PATH 007", s, Op.GET_DOMAIN_PATH, payload("007"))
    r.raw("raw RELEASE dom5 (not introduced)", s, Op.RELEASE, payload("5"))
    r.raw("raw RELEASE dom0", s, Op.RELEASE, payload("0"))
    r.raw("raw RESUME dom5 (not introduced)", s, Op.RESUME, payload("5"))
    r.raw("raw SET_TARGET dom5 dom6", s, Op.SET_TARGET, payload("5", "6"))
    for op in (20, 100, 0xFFFF, Op.WATCH_EVENT, Op.ERROR):
        r.raw(f"raw unknown type {op}", s, op, payload("/e/a"))
    for op, name in (
        (27, "QUIESCE"),
        (28, "ADD_DOMAIN_WATCHES"),
        (29, "GET_DOMAIN_WATCHES"),
    ):
        r.raw(f"raw seed op {name} with a bad domid", s, op, payload("/e/a"))
    r.raw("raw GET_FEATURE (own connection)", s, Op.GET_FEATURE, b"")
    r.raw("raw SET_FEATURE for dom0", s, Op.SET_FEATURE, payload("0", "1"))
    r.raw("raw GET_QUOTA (names)", s, Op.GET_QUOTA, b"")
    r.raw("raw SET_QUOTA nodes", s, Op.SET_QUOTA, payload("nodes", "1000"))
    r.raw("raw READ after all that", s, Op.READ, payload("/e/a"))
