"""The report of a run: markdown from its JSON-lines records, and the plots.

This module puts the sections in order with their captions; the figures
come from :mod:`bench.results`, the tables from :mod:`bench.tables`,
:mod:`bench.scale_tables` and :mod:`bench.targets`, the plots from
:mod:`bench.plots`.  ``Results``, ``load`` and ``plot`` are re-exported
for ``bench/run.py``.
"""

from __future__ import annotations

from bench.daemons import NAMES
from bench.labels import CLIENT_TITLES
from bench.plots import plot
from bench.results import Results, load
from bench.scale_tables import scale_tables
from bench.tables import PINNED_TESTS, cpu_table, micro_table, split_table
from bench.targets import targets_table

__all__ = ["Results", "header", "load", "plot", "tables"]


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
            f"; the pinned single-client figures and big-tree latency "
            f"growth (daemon and client on CPU {pin}) follow the headline "
            "tables"
            if isinstance(pin, int)
            else ""
        )
    )
    # Older records have no interpreter path.
    interpreter = (
        f" ({first['python_interpreter']})" if "python_interpreter" in first else ""
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
        f"{first.get('python', '?')}{interpreter}; load average (1, 5, 15 min) "
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
