"""Markdown tables and PNG plots from the JSON-lines records of a run."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.daemons import CEILING, KINDS, MICRO_KINDS, NAMES
from bench.micro import CLIENT_COUNTS
from bench.scale import LAT_TESTS

__all__ = ["Results", "header", "load", "plot", "tables"]

Record = dict[str, object]

CLIENT_TITLES = {
    "libxenstore": "dom0 clients on the socket: libxenstore (xsbench)",
    "pyxenstored": "dom0 clients on the socket: pyxenstored's Client",
    "ring": "guests on shared-memory rings: pyxenstored's Client over GuestRing",
}
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
]
LAT_TITLES = {
    "read": "read",
    "write": "write",
    "dir": "directory",
    "perms": "get_perms",
    "txn": "transaction (start, read, 2 writes, commit)",
}
COLORS = {"null": "tab:gray", "py": "tab:blue", "c": "tab:orange", "ox": "tab:green"}
#: The ratios' targets against the ceiling, from the performance issue.
CEILING_TARGET = 0.9


def _num(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _int(value: object) -> int:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"not a number: {value!r}")


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


class Results:
    """Records of one run, indexed for the tables."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.records = list(records)
        self.errors = [r for r in self.records if "error" in r]

    def values(self, **match: object) -> list[float]:
        """The numeric ``field`` of every record matching ``match``."""
        return list(self._by_rep(**match).values())

    def _by_rep(self, **match: object) -> dict[tuple[object, int], float]:
        """The numeric ``field`` of every record matching ``match``, by
        (repetition, record number)."""
        field = str(match.pop("field"))
        out = {}
        for i, r in enumerate(self.records):
            if "error" in r or any(r.get(k) != v for k, v in match.items()):
                continue
            value = _num(r.get(field))
            if value is not None:
                out[r.get("rep"), i] = value
        return out

    def ratios(self, num: str, den: str, **match: object) -> list[float]:
        """Daemon ``num``'s figure over daemon ``den``'s, one per repetition.

        Both figures come from the same repetition (records matching
        ``match``, each with its ``daemon``), so the ratios' spread is the
        run's noise on the ratio itself.
        """
        sides = []
        for kind in (num, den):
            reps: dict[object, list[float]] = {}
            for (rep, _), value in self._by_rep(**match, daemon=kind).items():
                reps.setdefault(rep, []).append(value)
            sides.append({rep: statistics.median(v) for rep, v in reps.items()})
        top, bottom = sides
        return [top[rep] / bottom[rep] for rep in top if bottom.get(rep)]

    def ratio_cell(
        self, num: str, den: str, **match: object
    ) -> tuple[float | None, str]:
        """The median ratio per repetition and a cell "median [min-max]"."""
        vals = self.ratios(num, den, **match)
        if not vals:
            return None, "-"
        med = statistics.median(vals)
        if len(vals) == 1:
            return med, f"{med:.2f}"
        return med, f"{med:.2f} [{min(vals):.2f}-{max(vals):.2f}]"

    def median(self, **match: object) -> float | None:
        vals = self.values(**match)
        return statistics.median(vals) if vals else None

    def cell(self, **match: object) -> tuple[float | None, str]:
        """The median and a cell "median [min-max]"."""
        vals = self.values(**match)
        if not vals:
            return None, "-"
        med = statistics.median(vals)
        digits = 0 if med >= 100 else 1
        if len(vals) == 1:
            return med, _fmt(med, digits)
        return med, f"{_fmt(med, digits)} [{_fmt(min(vals), digits)}-" + (
            f"{_fmt(max(vals), digits)}]"
        )

    # -- scale --

    def scale_sizes(self, kind: str) -> list[int]:
        return sorted(
            {
                _int(r["domains"])
                for r in self.records
                if r.get("phase") == "scale"
                and r.get("daemon") == kind
                and r.get("test") == "memory"
                and r.get("domains")
            }
        )

    def targets(self) -> list[int]:
        return sorted(
            {_int(r["target"]) for r in self.records if r.get("test") == "populate"}
        )

    def memory_records(self, kind: str) -> list[Record]:
        return [
            r
            for r in self.records
            if r.get("phase") == "scale"
            and r.get("daemon") == kind
            and r.get("test") == "memory"
        ]

    def bytes_per_node(self, kind: str, domains: int) -> float | None:
        for r in self.memory_records(kind):
            if r.get("domains") == domains:
                return _num(r.get("bytes_per_node"))
        return None

    def common_size(self) -> int | None:
        """The largest tree that pyxenstored and C xenstored both reached."""
        py, c = set(self.scale_sizes("py")), set(self.scale_sizes("c"))
        both = py & c
        return max(both) if both else None

    def reached(self, kind: str, target: int) -> int | None:
        """The size the daemon's tree had when it was measured for ``target``."""
        for r in self.records:
            if (
                r.get("test") == "populate"
                and r.get("daemon") == kind
                and r.get("target") == target
            ):
                return _int(r["domains"])
        return None


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def _micro_kinds(res: Results, client: str) -> list[str]:
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
    kinds = _micro_kinds(res, client)
    ratios = [k for k in (CEILING, "c") if k in kinds]
    names = {CEILING: "null Python server (ceiling)"}
    title = CLIENT_TITLES[client] + (" (pinned to one CPU)" if pinned else "")
    lines = [
        f"**{title}**",
        "",
        "| load | "
        + " | ".join(names.get(k, NAMES[k]) for k in kinds)
        + "".join(f" | py / {_SHORT[k]}" for k in ratios)
        + " |",
        "|---|" + "---:|" * (len(kinds) + len(ratios)),
    ]
    for test, n, field, row_title, _ in MICRO_ROWS:
        if pinned and test not in PINNED_TESTS:
            continue
        match: dict[str, object] = {
            "phase": "micro",
            "client": client,
            "test": test,
            "clients": n,
            "pinned": pinned,
            "field": field,
        }
        cells = [res.cell(**match, daemon=kind)[1] for kind in kinds]
        cells += [res.ratio_cell("py", k, **match)[1] for k in ratios]
        lines.append(f"| {row_title} | {' | '.join(cells)} |")
    return lines


_SHORT = {CEILING: "null", "py": "py", "c": "C", "ox": "ox"}
#: The tests that ``--pin`` runs a second time, pinned.
PINNED_TESTS = (
    "seq_write_read",
    "directory_1000",
    "transaction_10_writes",
    "watch_latency",
)


CPU_ROWS = [
    ("seq_write_read", 1, "seq write+read"),
    ("directory_1000", 1, "DIRECTORY of 1,000 children"),
    ("transaction_10_writes", 1, "transaction of 10 writes (per request)"),
    ("watch_latency", 1, "watch (write + event)"),
    *[("concurrent_write_read", n, f"{n} concurrent clients") for n in CLIENT_COUNTS],
]


def cpu_table(res: Results, clients: Sequence[str]) -> list[str]:
    """The daemons' own CPU time per request, per client kind (unpinned)."""
    columns = [(c, _micro_kinds(res, c)) for c in clients]
    head = []
    for client, kinds in columns:
        head += [f"{client}: {_SHORT[k]}" for k in kinds]
        head += [f"{client}: py / {_SHORT[k]}" for k in (CEILING, "c") if k in kinds]
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
            cells += [_fmt(meds[k], 1) for k in kinds]
            cells += [_ratio(meds["py"], meds[k]) for k in (CEILING, "c") if k in kinds]
        lines.append(f"| {title} | {' | '.join(cells)} |")
    return lines


def split_table(res: Results, client: str) -> list[str]:
    """User and kernel parts of the daemons' CPU time per request."""
    kinds = _micro_kinds(res, client)
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
                cells.append(_fmt(value, 1))
        lines.append(f"| {title} | {' | '.join(cells)} |")
    return lines


def scale_tables(res: Results) -> list[str]:
    out: list[str] = []
    targets = res.targets()
    if not targets:
        return out
    # population
    out += [
        "**Population** (WRITE + SET_PERMS per node, pipelined over 2 "
        "connections; seconds for that step, requests/s)",
        "",
        "| daemon | " + " | ".join(f"to {t:,} domains" for t in targets) + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for kind in KINDS:
        cells = []
        for t in targets:
            rec = next(
                (
                    r
                    for r in res.records
                    if r.get("test") == "populate"
                    and r.get("daemon") == kind
                    and r.get("target") == t
                ),
                None,
            )
            if rec is None:
                cells.append("-")
                continue
            text = f"{rec['seconds']} s, {_fmt(_num(rec['rate']))}/s"
            if rec.get("capped"):
                text += f" (**capped at {_int(rec['domains']):,}**)"
            cells.append(text)
        out.append(f"| {NAMES[kind]} | {' | '.join(cells)} |")
    out.append("")
    # latency
    out += [
        "**Latency of single requests** (libxenstore, `bench/xslat.c`; p50 "
        "[p99] in microseconds, median over repetitions; nodes spread over "
        "all domains)",
        "",
        "| request | domains | pyxenstored | C xenstored | oxenstored | py / C |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for test in LAT_TESTS:
        for t in targets:
            meds: dict[str, float | None] = {}
            cells = []
            for kind in KINDS:
                size = res.reached(kind, t)
                if size is None:
                    meds[kind] = None
                    cells.append("-")
                    continue
                match = {"phase": "scale", "daemon": kind, "test": test}
                p50 = res.median(**match, domains=size, field="lat_us_p50")
                p99 = res.median(**match, domains=size, field="lat_us_p99")
                meds[kind] = p50
                text = f"{_fmt(p50, 1)} [{_fmt(p99, 0)}]"
                if size != t:
                    text += f" at {size:,}"
                cells.append(text)
            ratio = _ratio(meds["py"], meds["c"])
            if res.reached("c", t) != t or res.reached("py", t) != t:
                ratio += "*" if ratio != "-" else ""
            out.append(
                f"| {LAT_TITLES[test].split(' (')[0]} | {t:,} | "
                f"{' | '.join(cells)} | {ratio} |"
            )
    out.append("")
    if any(line.endswith("* |") for line in out):
        out += ["\\* the two daemons were not measured on the same tree size.", ""]
    # growth
    small, big = targets[0], targets[-1]
    out += [
        f"**Latency growth**: p50 at the largest tree over p50 at {small:,} "
        "domains (target: pyxenstored <= 1.2)",
        "",
        "| request | pyxenstored | C xenstored | oxenstored |",
        "|---|---:|---:|---:|",
    ]
    for test in LAT_TESTS:
        cells = []
        for kind in KINDS:
            a_size, b_size = res.reached(kind, small), res.reached(kind, big)
            if a_size is None or b_size is None:
                cells.append("-")
                continue
            match = {"phase": "scale", "daemon": kind, "test": test}
            a = res.median(**match, domains=a_size, field="lat_us_p50")
            b = res.median(**match, domains=b_size, field="lat_us_p50")
            cells.append(f"{_ratio(b, a)} ({b_size:,} vs {a_size:,})")
        out.append(f"| {LAT_TITLES[test].split(' (')[0]} | {' | '.join(cells)} |")
    out.append("")
    # memory
    common = res.common_size()
    mem_targets = [t for t in targets if t >= 1000] or targets
    out += [
        "**Resident memory**: VmRSS from /proc/PID/status; bytes per node = "
        "(RSS - RSS before population) / nodes added (RssAnon gives the same "
        "figures within 1%)",
        "",
        "| daemon | RSS before | "
        + " | ".join(f"bytes/node at {t:,} domains" for t in mem_targets)
        + " | RSS at the largest tree | / C"
        + (f" at {common:,} domains |" if common else " |"),
        "|---|---:|" + "---:|" * len(mem_targets) + "---:|---:|",
    ]
    c_common = res.bytes_per_node("c", common) if common else None
    for kind in KINDS:
        mems = res.memory_records(kind)
        if not mems:
            continue
        cells = []
        for t in mem_targets:
            size = res.reached(kind, t)
            value = res.bytes_per_node(kind, size) if size else None
            text = _fmt(value)
            if size is not None and size != t and value is not None:
                text += f" at {size:,}"
            cells.append(text)
        mine = res.bytes_per_node(kind, common) if common else None
        out.append(
            f"| {NAMES[kind]} | {_fmt((_num(mems[0]['VmRSS']) or 0) / 1024, 1)} MiB"
            f" | {' | '.join(cells)} | "
            f"{_fmt((_num(mems[-1]['VmRSS']) or 0) / 1024, 1)} MiB "
            f"({_fmt(_num(mems[-1]['domains']))} domains) | {_ratio(mine, c_common)} |"
        )
    out.append("")
    # watches
    counts = sorted(
        {
            _int(r["watches"])
            for r in res.records
            if r.get("test") in ("watch1", "nowatch") and r.get("watches")
        }
    )
    if len(counts) >= 2:
        lo, hi = counts[0], counts[-1]
        out += [
            f"**Watches** (one dom0 connection holds {lo:,} or {hi:,} watches, "
            "one per domain's control/shutdown, at the largest tree; p50 us)",
            "",
            f"| daemon | write firing 1 watch, {lo:,} watches | ... {hi:,} "
            f"watches | ratio | write firing none, {lo:,} | ... {hi:,} | ratio "
            f"| registering {hi:,} watches |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind in KINDS:
            cells = []
            for test in ("watch1", "nowatch"):
                m = {"phase": "scale", "daemon": kind, "test": test}
                a = res.median(**m, watches=lo, field="lat_us_p50")
                b = res.median(**m, watches=hi, field="lat_us_p50")
                cells += [_fmt(a, 1), _fmt(b, 1), _ratio(b, a)]
            reg = res.median(
                phase="scale",
                daemon=kind,
                test="watch1",
                watches=hi,
                field="register_s",
            )
            cells.append(f"{_fmt(reg, 2)} s")
            out.append(f"| {NAMES[kind]} | {' | '.join(cells)} |")
        out.append("")
    return out


def targets_table(res: Results) -> list[str]:
    """The performance targets, each with the measured figure and a verdict."""
    rows: list[tuple[str, str, str]] = []

    # The small-tree targets: libxenstore's unpinned figures; a ratio is
    # the median over repetitions of the ratio within each [min-max].
    match: dict[str, object] = {
        "phase": "micro",
        "client": "libxenstore",
        "pinned": False,
    }

    def against(
        test: str, n: int, field: str, title: str, den: str, target: float
    ) -> None:
        m = {**match, "test": test, "clients": n, "field": field}
        py, other = res.median(**m, daemon="py"), res.median(**m, daemon=den)
        ratio, cell = res.ratio_cell("py", den, **m)
        name = f"{title}: py/{_SHORT[den]} >= {target}"
        if py is None or other is None or ratio is None:
            rows.append((name, "-", "not measured"))
            return
        rows.append(
            (
                name,
                f"{cell} ({py:,.0f} vs {other:,.0f})",
                "met"
                if ratio >= target
                else f"not met ({(1 - ratio / target) * 100:.0f}% short)",
            )
        )

    throughput = [
        ("seq_write_read", 1, "sequential write+read"),
        ("directory_1000", 1, "DIRECTORY (1,000 children)"),
        ("transaction_10_writes", 1, "transaction of 10 writes"),
        ("concurrent_write_read", 16, "16-client throughput"),
    ]
    for test, n, title in throughput:
        if test != "directory_1000":
            against(test, n, "rate", title, CEILING, CEILING_TARGET)
    for test, n, title in throughput:
        against(test, n, "rate", title, "c", 1.0)
    m = {**match, "test": "watch_latency", "clients": 1, "field": "lat_us_p50"}
    py, c = res.median(**m, daemon="py"), res.median(**m, daemon="c")
    ratio, cell = res.ratio_cell("py", "c", **m)
    if py is not None and c is not None and ratio is not None:
        rows.append(
            (
                "watch latency p50 <= C's",
                f"{py:.1f} us vs {c:.1f} us ({cell}x)",
                "met" if ratio <= 1 else f"not met ({(ratio - 1) * 100:.0f}% slower)",
            )
        )
    targets = res.targets()
    if targets:
        small, big = targets[0], targets[-1]
        a_size, b_size = res.reached("py", small), res.reached("py", big)
        worst = 0.0
        parts = []
        for test in LAT_TESTS:
            m = {"phase": "scale", "daemon": "py", "test": test}
            a = res.median(**m, domains=a_size, field="lat_us_p50")
            b = res.median(**m, domains=b_size, field="lat_us_p50")
            if a and b:
                worst = max(worst, b / a)
                parts.append(f"{LAT_TITLES[test].split(' (')[0]} {b / a:.2f}")
        if parts and b_size is not None and a_size is not None:
            rows.append(
                (
                    f"latency at {big:,} domains <= 1.2x of {small:,}",
                    f"{', '.join(parts)} (at {b_size:,} vs {a_size:,})",
                    "met" if worst <= 1.2 else f"not met (worst {worst:.2f}x)",
                )
            )
    counts = sorted(
        {
            _int(r["watches"])
            for r in res.records
            if r.get("test") == "watch1" and r.get("watches")
        }
    )
    if len(counts) >= 2:
        m = {"phase": "scale", "daemon": "py", "test": "watch1"}
        a = res.median(**m, watches=counts[0], field="lat_us_p50")
        b = res.median(**m, watches=counts[-1], field="lat_us_p50")
        if a and b:
            # "the same": within the run-to-run noise of one figure (~10%)
            rows.append(
                (
                    f"write firing 1 watch: same cost with {counts[0]:,} or "
                    f"{counts[-1]:,} watches",
                    f"{a:.1f} us vs {b:.1f} us ({b / a:.2f}x)",
                    "met (no dearer, within the 10% noise)"
                    if b / a <= 1.1
                    else f"not met ({(b / a - 1) * 100:.0f}% dearer)",
                )
            )
    common = res.common_size()
    if common:
        py_b = res.bytes_per_node("py", common)
        c_b = res.bytes_per_node("c", common)
        if py_b and c_b:
            rows.append(
                (
                    "memory per node <= 2x C's",
                    f"{py_b:,.0f} vs {c_b:,.0f} bytes/node at {common:,} domains "
                    f"({py_b / c_b:.2f}x)",
                    "met" if py_b <= 2 * c_b else f"not met ({py_b / c_b:.1f}x)",
                )
            )
    lines = [
        "| target | measured | verdict |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
    ]
    return lines


def header(res: Results) -> list[str]:
    """The run and the machine it ran on, from the first and last records."""
    first = next((r for r in res.records if r.get("test") == "machine"), None)
    if first is None:
        return []
    last = next((r for r in reversed(res.records) if r.get("test") == "end"), {})
    pin = first.get("pin_cpu")
    pinning = (
        "all figures unpinned (the daemon and its clients go wherever the "
        "scheduler puts them)"
        + (
            f"; the pinned single-client figures (daemon and client on CPU "
            f"{pin}) follow the headline tables"
            if isinstance(pin, int)
            else ""
        )
    )
    return [
        f"pyxenstored benchmark, {first.get('started', '?')}: "
        f"{first.get('reps', '?')} repetition(s) of {first.get('duration', '?')} s "
        f"loads{' (quick)' if first.get('quick') else ''}, "
        f"{last.get('seconds', '?')} s; source {first.get('source', '?')}; "
        f"pyxenstored and the null server on {first.get('py_event_loop', '?')}",
        "",
        f"Machine: {first.get('cpu_model', '?')}, {first.get('nproc', '?')} CPUs "
        f"(nproc), Linux {first.get('kernel', '?')}, Python "
        f"{first.get('python', '?')}; load average (1, 5, 15 min) "
        f"{first.get('loadavg', '?')} at the start, {last.get('loadavg', '?')} "
        f"at the end; {pinning}.",
        "",
    ]


def tables(res: Results) -> str:
    """The whole report in markdown, the machine first."""
    out: list[str] = [*header(res), "### Targets", "", *targets_table(res), ""]
    micro_clients = [
        client
        for client in CLIENT_TITLES
        if any(r.get("client") == client for r in res.records)
    ]
    out += [
        "### Small tree: throughput and watch latency",
        "",
        "Cells: median over repetitions [min-max], unpinned. The null Python "
        "server (`bench/nullserver.py`, on the same event loop as pyxenstored, "
        "socket clients only) is the ceiling: a dict, no permissions, no "
        "transactions' isolation, the cheapest watches. py / null and py / C "
        "are the ratio within each repetition, median [min-max] (for "
        "throughput higher is better; for latencies lower is better).",
        "",
    ]
    for client in micro_clients:
        out += [*micro_table(res, client), ""]
    pinned_clients = [
        client
        for client in micro_clients
        if any(
            r.get("client") == client
            and r.get("pinned")
            and r.get("test") in PINNED_TESTS
            for r in res.records
        )
    ]
    if pinned_clients:
        out += [
            "### Small tree, pinned: the single-client loads again, the "
            "daemon and the client on one CPU",
            "",
            "Less noisy than the figures above, and not what a host sees: "
            "on this machine a request that crosses CPUs costs more than one "
            "that does not, and whether it does is the scheduler's choice.",
            "",
        ]
        for client in pinned_clients:
            out += [*micro_table(res, client, pinned=True), ""]
    cpu_clients = [
        c
        for c in ("libxenstore", "ring")
        if any(
            r.get("client") == c and "daemon_cpu_us_per_req" in r for r in res.records
        )
    ]
    if cpu_clients:
        out += [
            "**The daemon's own CPU time per request** (unpinned loads; "
            "microseconds, median; from /proc/PID/task/*/schedstat around each "
            "load, so it does not depend on the scheduling noise above; "
            "`null` = the null Python server, `ring` = guests on rings)",
            "",
            *cpu_table(res, cpu_clients),
            "",
        ]
    for client in cpu_clients:
        if any("daemon_user_us_per_req" in r for r in res.records):
            out += [
                f"**User and kernel time of that CPU** ({client} client; "
                "microseconds per request, median; from the utime and stime "
                "of /proc/PID/stat, which the kernel keeps in 10 ms ticks: "
                "good over a whole load, not per request)",
                "",
                *split_table(res, client),
                "",
            ]
    scale = scale_tables(res)
    if scale:
        out += ["### Big trees: 10 to 10,000 domains", "", *scale]
    if res.errors:
        out += ["### Failures", ""]
        out += [
            f"- {NAMES.get(str(r.get('daemon')), r.get('daemon'))} / "
            f"{r.get('client')} / {r.get('test')}: {r['error']}"
            for r in res.errors
        ]
        out.append("")
    return "\n".join(out)


def plot(res: Results, out_dir: Path) -> list[Path]:
    """The two PNG plots; none (with a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install --group bench)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    # 1. throughput against the number of clients
    clients = [
        c for c in CLIENT_TITLES if any(r.get("client") == c for r in res.records)
    ]
    if clients:
        fig, axes = plt.subplots(1, len(clients), figsize=(5 * len(clients), 4.2))
        axes_list = list(axes) if len(clients) > 1 else [axes]
        for ax, client in zip(axes_list, clients, strict=True):
            for kind in MICRO_KINDS:
                xs, ys, lo, hi = [], [], [], []
                for n in CLIENT_COUNTS:
                    vals = res.values(
                        phase="micro",
                        client=client,
                        daemon=kind,
                        test="concurrent_write_read",
                        clients=n,
                        field="requests_per_s",
                    )
                    if vals:
                        med = statistics.median(vals)
                        xs.append(n)
                        ys.append(med)
                        lo.append(med - min(vals))
                        hi.append(max(vals) - med)
                if xs:
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=[lo, hi],
                        marker="o",
                        capsize=3,
                        color=COLORS[kind],
                        linestyle="--" if kind == CEILING else "-",
                        label=NAMES[kind] + (" (ceiling)" if kind == CEILING else ""),
                    )
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(CLIENT_COUNTS), [str(n) for n in CLIENT_COUNTS])
            ax.set_xlabel("concurrent clients (processes)")
            ax.set_ylabel("requests/s (write+read pairs x 2)")
            ax.set_ylim(bottom=0)
            ax.set_title(_wrap(CLIENT_TITLES[client]), fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Throughput against the number of clients (median, min-max bars)")
        fig.tight_layout()
        path = out_dir / "bench-throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # 2. latency against the number of domains
    if res.targets():
        fig, axes = plt.subplots(2, 3, figsize=(14, 8))
        flat = list(axes.flat)
        labels = {}
        for kind in KINDS:
            capped = [
                r
                for r in res.records
                if r.get("test") == "populate"
                and r.get("daemon") == kind
                and r.get("capped")
            ]
            labels[kind] = NAMES[kind] + (
                f" (capped at {_int(capped[0]['domains']):,})" if capped else ""
            )
        for ax, test in zip(flat, LAT_TESTS, strict=False):
            for kind in KINDS:
                sizes = res.scale_sizes(kind)
                pts = [
                    (
                        s,
                        res.median(
                            phase="scale",
                            daemon=kind,
                            test=test,
                            domains=s,
                            field="lat_us_p50",
                        ),
                    )
                    for s in sizes
                ]
                got = [(s, v) for s, v in pts if v is not None]
                if got:
                    ax.plot(
                        [s for s, _ in got],
                        [v for _, v in got],
                        marker="o",
                        color=COLORS[kind],
                        label=labels[kind],
                    )
            ax.set_xscale("log")
            _log_y(ax)
            ax.set_xlabel("domains (47 nodes each)")
            ax.set_ylabel("p50 latency (us, log scale)")
            ax.set_title(_wrap(LAT_TITLES[test]), fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        ax = flat[len(LAT_TESTS)]
        for kind in KINDS:
            mems = [
                r
                for r in res.records
                if r.get("phase") == "scale"
                and r.get("daemon") == kind
                and r.get("test") == "memory"
                and r.get("domains")
            ]
            if mems:
                ax.plot(
                    [_num(r["domains"]) for r in mems],
                    [(_num(r["VmRSS"]) or 0) / 1024 for r in mems],
                    marker="o",
                    color=COLORS[kind],
                    label=labels[kind],
                )
        ax.set_xscale("log")
        _log_y(ax)
        ax.set_xlabel("domains (47 nodes each)")
        ax.set_ylabel("resident memory (MiB)")
        ax.set_title("daemon RSS", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(
            "Request latency (libxenstore client) and memory against the number "
            "of domains"
        )
        fig.tight_layout()
        path = out_dir / "bench-latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _log_y(ax: Any) -> None:
    """A log y axis labelled 10, 20, 30, 50, 100... instead of powers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _wrap(text: str, width: int = 48) -> str:
    words = text.split()
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(lines)


def load(path: Path) -> list[Record]:
    """The records of a results.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.startswith("{")]
