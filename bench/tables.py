"""The small-tree tables: throughput and watch latency per client, CPU time.

Each function returns the markdown lines of one table; :mod:`bench.report`
puts them in order with their captions.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.cells import cell, fmt, ratio, ratio_cell
from bench.daemons import CEILING, MICRO_KINDS, NAMES
from bench.labels import CLIENT_TITLES, SHORT
from bench.micro import CLIENT_COUNTS
from bench.results import Results

__all__ = [
    "CPU_ROWS",
    "MICRO_ROWS",
    "PINNED_TESTS",
    "cpu_table",
    "micro_kinds",
    "micro_table",
    "split_table",
]

#: (test, clients, field, title, higher is better)
MICRO_ROWS: list[tuple[str, int, str, str, bool]] = [
    ("seq_write_read", 1, "rate", "seq write+read (pairs/s)", True),
    ("directory_1000", 1, "rate", "DIRECTORY of 1,000 children (listings/s)", True),
    ("transaction_10_writes", 1, "rate", "transaction of 10 writes (txn/s)", True),
    ("watch_latency", 1, "lat_us_p50", "watch write->event p50 (us)", False),
    ("watch_latency", 1, "lat_us_p99", "watch write->event p99 (us)", False),
    *[
        ("concurrent_write_read", n, "rate", f"{n} concurrent clients (pairs/s)", True)
        for n in CLIENT_COUNTS
    ],
    ("connection_open_close", 1, "rate", "connection open+close (conns/s)", True),
]
#: Rows only one client measures (``bench.micro.run_load``): not shown empty
#: in the other clients' tables.
ONE_CLIENT = {"connection_open_close": "pyxenstored"}
#: The tests that ``--pin`` runs a second time, pinned.
PINNED_TESTS = (
    "seq_write_read",
    "directory_1000",
    "transaction_10_writes",
    "watch_latency",
)
#: (test, clients, title) of the CPU-time tables.
CPU_ROWS = [
    ("seq_write_read", 1, "seq write+read"),
    ("directory_1000", 1, "DIRECTORY of 1,000 children"),
    ("transaction_10_writes", 1, "transaction of 10 writes (per request)"),
    ("watch_latency", 1, "watch (write + event)"),
    *[("concurrent_write_read", n, f"{n} concurrent clients") for n in CLIENT_COUNTS],
]


def micro_kinds(res: Results, client: str) -> list[str]:
    """The daemons in a client's tables: the three under test, and the
    ceiling when it ran with that client."""
    return [
        kind
        for kind in MICRO_KINDS
        if kind != CEILING
        or any(
            r.get("client") == client and r.get("daemon") == kind for r in res.records
        )
    ]


def micro_table(res: Results, client: str, pinned: bool = False) -> list[str]:
    """One client's figures per daemon, with py / null and py / C."""
    kinds = micro_kinds(res, client)
    ratios = [k for k in (CEILING, "c") if k in kinds]
    names = {CEILING: "null Python server (ceiling)"}
    title = CLIENT_TITLES[client] + (" (pinned to one CPU)" if pinned else "")
    lines = [
        f"**{title}**",
        "",
        "| load | "
        + " | ".join(names.get(k, NAMES[k]) for k in kinds)
        + "".join(f" | py / {SHORT[k]}" for k in ratios)
        + " |",
        "|---|" + "---:|" * (len(kinds) + len(ratios)),
    ]
    for test, n, field, row_title, _ in MICRO_ROWS:
        if pinned and test not in PINNED_TESTS:
            continue
        if ONE_CLIENT.get(test, client) != client:
            continue
        match: dict[str, object] = {
            "phase": "micro",
            "client": client,
            "test": test,
            "clients": n,
            "pinned": pinned,
            "field": field,
        }
        cells = [cell(res, **match, daemon=kind)[1] for kind in kinds]
        cells += [ratio_cell(res, "py", k, **match)[1] for k in ratios]
        lines.append(f"| {row_title} | {' | '.join(cells)} |")
    return lines


def cpu_table(res: Results, clients: Sequence[str]) -> list[str]:
    """The daemons' own CPU time per request, per client kind (unpinned)."""
    columns = [(c, micro_kinds(res, c)) for c in clients]
    head = []
    for client, kinds in columns:
        head += [f"{client}: {SHORT[k]}" for k in kinds]
        head += [f"{client}: py / {SHORT[k]}" for k in (CEILING, "c") if k in kinds]
    lines = [f"| load | {' | '.join(head)} |", "|---|" + "---:|" * len(head)]
    for test, n, title in CPU_ROWS:
        cells = []
        for client, kinds in columns:
            match: dict[str, object] = {
                "phase": "micro",
                "client": client,
                "test": test,
                "clients": n,
                "pinned": False,
                "field": "daemon_cpu_us_per_req",
            }
            meds = {kind: res.median(**match, daemon=kind) for kind in kinds}
            cells += [fmt(meds[k], 1) for k in kinds]
            cells += [ratio(meds["py"], meds[k]) for k in (CEILING, "c") if k in kinds]
        lines.append(f"| {title} | {' | '.join(cells)} |")
    return lines


def split_table(res: Results, client: str) -> list[str]:
    """User and kernel parts of the daemons' CPU time per request."""
    kinds = micro_kinds(res, client)
    lines = [
        "| load | "
        + " | ".join(f"{NAMES[k]}: user | {NAMES[k]}: kernel" for k in kinds)
        + " |",
        "|---|" + "---:|" * (2 * len(kinds)),
    ]
    for test, n, title in CPU_ROWS:
        cells = []
        for kind in kinds:
            for field in ("daemon_user_us_per_req", "daemon_sys_us_per_req"):
                value = res.median(
                    phase="micro",
                    client=client,
                    daemon=kind,
                    test=test,
                    clients=n,
                    pinned=False,
                    field=field,
                )
                cells.append(fmt(value, 1))
        lines.append(f"| {title} | {' | '.join(cells)} |")
    return lines
