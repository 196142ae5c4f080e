"""Path canonicalisation (PROTOCOL.md 4) and permissions (PROTOCOL.md 5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxenstored.errors import InvalidArgument
from pyxenstored.paths import (
    canonicalize,
    measured_length,
    parent_of,
)
from pyxenstored.perms import (
    Access,
    Perm,
    access_for,
    format_perms,
    parse_domid,
    parse_perm,
    parse_perms,
)

HOME = "/local/domain/5"

# -- paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "special", "expected"),
    [
        ("/", False, "/"),
        ("/a", False, "/a"),
        ("/A-z_0/9", False, "/A-z_0/9"),
        ("/a@b", False, "/a@b"),  # '@' is a legal character past the start
        ("/tool/xenstored", False, "/tool/xenstored"),
        ("a", False, f"{HOME}/a"),
        ("a/b-c", False, f"{HOME}/a/b-c"),
        ("data@x", False, f"{HOME}/data@x"),
        ("@releaseDomain", True, "@releaseDomain"),
        ("@introduceDomain", True, "@introduceDomain"),
        ("@anything", True, "@anything"),  # a legal (never firing) watch path
        ("/" + "a" * 3071, False, "/" + "a" * 3071),  # 3072 bytes: the limit
        (
            "a" * (3072 - len(HOME) - 1),
            False,
            f"{HOME}/" + "a" * (3072 - len(HOME) - 1),
        ),
    ],
)
def test_canonical_paths(path: str, special: bool, expected: str) -> None:
    assert canonicalize(path, HOME, allow_special=special) == expected


@pytest.mark.parametrize(
    ("path", "special"),
    [
        ("", False),
        ("", True),
        ("//", False),
        ("/a//b", False),
        ("//a", False),
        ("/a/", False),
        ("/a/b/", False),
        ("a/", False),
        ("a//b", False),
        ("/a.b", False),
        ("/.", False),
        ("..", False),
        ("/a b", False),
        ("/a\tb", False),
        ("/a\nb", False),
        ("/a\n", False),
        ("/a\0b", False),
        ("/caf\xe9", False),  # byte 0xe9 (Latin-1 decoding of the payload)
        ("/a\x7f", False),
        ("/a~b", False),
        ("/a:b", False),
        ("/a+b", False),
        ("@releaseDomain", False),  # special paths only where allowed
        ("@introduceDomain", False),
        ("@x", False),
        ("/" + "a" * 3072, False),  # 3073 bytes
        ("/" + "a" * 3072, True),
        ("a" * (3072 - len(HOME)), False),  # relative, 3073 once resolved
        ("@a b", True),
    ],
)
def test_invalid_paths(path: str, special: bool) -> None:
    with pytest.raises(InvalidArgument):
        canonicalize(path, HOME, allow_special=special)


@pytest.mark.parametrize(
    ("path", "parent"),
    [
        ("/a", "/"),
        ("/a/b", "/a"),
        ("/a/b/c", "/a/b"),
        ("/local/domain/5", "/local/domain"),
    ],
)
def test_parent_of(path: str, parent: str) -> None:
    assert parent_of(path) == parent


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/local/domain/5/abc", 3),
        ("/local/domain/12345/abc", 3),  # any domid of up to 5 digits
        ("/local/domain/123456/abc", len("/local/domain/123456/abc")),
        ("/local/domain/7/a/b", 3),  # not necessarily the caller's domid
        ("/local/domain/5", len("/local/domain/5")),  # no prefix with its '/'
        ("/vm/abc", 7),
        ("/local/domainx/5/abc", len("/local/domainx/5/abc")),
    ],
)
def test_measured_length_for_the_path_quota(path: str, expected: int) -> None:
    assert measured_length(path) == expected


# -- permission strings ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "access", "domid"),
    [
        ("n0", Access.NONE, 0),
        ("r5", Access.READ, 5),
        ("w12", Access.WRITE, 12),
        ("b3", Access.BOTH, 3),
        ("b65535", Access.BOTH, 65535),
        ("r010", Access.READ, 8),  # leading 0: octal, like C's strtol(.., 0)
        ("r00", Access.READ, 0),
        ("r0x10", Access.READ, 16),  # 0x: hex
        ("r0X1f", Access.READ, 31),
        ("w0xffff", Access.WRITE, 65535),
        ("r+5", Access.READ, 5),  # C accepts a sign; a positive one is harmless
    ],
)
def test_parse_perm(text: str, access: Access, domid: int) -> None:
    perm = parse_perm(text)
    assert (perm.access, perm.domid, perm.stale) == (access, domid, False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "r",  # empty domid
        "x5",  # bad letter
        "R5",
        "5",
        "rr5",
        "r-1",  # negative
        "r-0x5",
        "r0x-5",  # negative behind a hex prefix
        "r0-5",  # negative behind an octal prefix
        "r+0x-5",
        "r65536",  # above 65535
        "r0x10000",
        "r0200000",  # octal 65536
        "r99999999999999999999",
        "r5x",  # trailing garbage
        "r5 ",
        "r0 5",
        "r0x 5",
        "r0x",  # prefix without digits
        "r08",  # not an octal digit
        "r0x1g",
        "r0x1_0",  # Python's digit separator is not C syntax
        "r1_0",
        "r\xb2",  # a Latin-1 superscript digit
    ],
)
def test_malformed_perm_is_einval(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_perm(text)


def test_parse_perms_needs_an_entry() -> None:
    with pytest.raises(InvalidArgument):
        parse_perms([])
    with pytest.raises(InvalidArgument):
        parse_perms(["r0", "bogus"])


def test_format_is_plain_decimal_owner_first() -> None:
    perms = parse_perms(["b0x10", "r010", "n+3", "w0"])
    assert format_perms(perms) == ["b16", "r8", "n3", "w0"]


@given(
    st.lists(
        st.tuples(st.sampled_from("nrwb"), st.integers(0, 65535)),
        min_size=1,
        max_size=8,
    )
)
def test_decimal_round_trip(entries: list[tuple[str, int]]) -> None:
    texts = [f"{letter}{domid}" for letter, domid in entries]
    assert format_perms(parse_perms(texts)) == texts


@pytest.mark.parametrize(
    ("text", "expected"), [("0", 0), ("5", 5), ("65535", 65535), ("00007", 7)]
)
def test_parse_domid(text: str, expected: int) -> None:
    assert parse_domid(text) == expected


@pytest.mark.parametrize(
    "text", ["", "-1", "+5", "65536", "0x5", "5a", " 5", "5 ", "1e3", "\xb2", "999999"]
)
def test_parse_domid_is_strict(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_domid(text)


# -- the access decision (PROTOCOL.md 5.2) -------------------------------------


def P(*texts: str) -> tuple[Perm, ...]:  # noqa: N802 - reads like a literal
    return parse_perms(list(texts))


STALE_B5 = Perm(Access.BOTH, 5, stale=True)


@pytest.mark.parametrize(
    ("perms", "domid", "target", "privileged", "expected"),
    [
        # 1. privileged: everything, whatever the list says.
        (P("n5"), 0, None, True, Access.ALL),
        (P("n5", "n0"), 0, None, True, Access.ALL),
        # 2. the owner has full access whatever its letter.
        (P("n5"), 5, None, False, Access.ALL),
        (P("r5", "n5"), 5, None, False, Access.ALL),
        # ... and so does a caller whose SET_TARGET target is the owner.
        (P("n9"), 5, 9, False, Access.ALL),
        # 3. the first matching entry wins.
        (P("n0", "r5", "n5"), 5, None, False, Access.READ),
        (P("n0", "n5", "r5"), 5, None, False, Access.NONE),
        (P("n0", "w5"), 5, None, False, Access.WRITE),
        (P("n0", "b5"), 5, None, False, Access.BOTH),
        (P("b0", "n5"), 5, None, False, Access.NONE),
        # entries naming the target match too, in list order.
        (P("n0", "r9"), 5, 9, False, Access.READ),
        (P("n0", "w9", "r5"), 5, 9, False, Access.WRITE),
        (P("n0", "r5", "w9"), 5, 9, False, Access.READ),
        # 4. no match: the owner's letter is the default.
        (P("r0"), 7, None, False, Access.READ),
        (P("b0", "n5"), 6, None, False, Access.BOTH),
        (P("n0", "b5"), 6, None, False, Access.NONE),
        (P("w0", "r7"), 6, 5, False, Access.WRITE),
        # stale entries grant nothing and are skipped.
        ((Perm(Access.NONE, 0), STALE_B5), 5, None, False, Access.NONE),
        ((Perm(Access.READ, 0), STALE_B5), 5, None, False, Access.READ),
        (
            (Perm(Access.NONE, 0), STALE_B5, Perm(Access.WRITE, 5)),
            5,
            None,
            False,
            Access.WRITE,
        ),
    ],
)
def test_access_for(
    perms: tuple[Perm, ...],
    domid: int,
    target: int | None,
    privileged: bool,
    expected: Access,
) -> None:
    assert access_for(perms, domid, target, privileged) == expected


_LETTER = {"n": Access.NONE, "r": Access.READ, "w": Access.WRITE, "b": Access.BOTH}
entries = st.tuples(st.sampled_from("nrwb"), st.integers(0, 9), st.booleans())


@given(
    st.lists(entries, min_size=1, max_size=6),
    st.integers(0, 9),
    st.one_of(st.none(), st.integers(0, 9)),
)
def test_access_matches_the_written_rules(
    raw: list[tuple[str, int, bool]], domid: int, target: int | None
) -> None:
    perms = tuple(
        Perm(_LETTER[letter], d, stale and i > 0)
        for i, (letter, d, stale) in enumerate(raw)
    )
    owner = perms[0]
    if owner.domid in (domid, target):
        expected = Access.READ | Access.WRITE | Access.OWNER
    else:
        matching = [p for p in perms[1:] if not p.stale and p.domid in (domid, target)]
        expected = matching[0].access if matching else owner.access
    got = access_for(perms, domid, target, False)
    assert got == expected
    assert access_for(perms, domid, target, True) == Access.ALL
    if owner.domid not in (domid, target):
        assert not got & Access.OWNER
