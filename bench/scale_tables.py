"""The big-tree tables: population, latency, its growth, memory, watches.

Each figure is taken at the size the daemon reached for a target size
(a daemon whose population budget ran out is measured smaller, and the
cell says at what size).
"""

from __future__ import annotations

from bench.cells import fmt, ratio, spread
from bench.daemons import KINDS, NAMES
from bench.labels import lat_name
from bench.results import Results, as_float, as_int
from bench.scale import LAT_TESTS
from bench.targets import LatencyGrowth, threshold

__all__ = ["scale_tables"]


def scale_tables(res: Results) -> list[str]:
    """All the big-tree tables; none when the run had no big-tree phase."""
    sizes = res.target_sizes()
    if not sizes:
        return []
    return [
        *_population(res, sizes),
        *_latency(res, sizes),
        *_growth(res, sizes, pinned=False),
        *_growth(res, sizes, pinned=True),
        *_memory(res, sizes),
        *_watches(res),
    ]


def _population(res: Results, sizes: list[int]) -> list[str]:
    out = [
        "**Population** (WRITE + SET_PERMS per node, pipelined over 2 "
        "connections; seconds for that step, requests/s)",
        "",
        "| daemon | " + " | ".join(f"to {t:,} domains" for t in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for kind in KINDS:
        cells = []
        for t in sizes:
            rec = res.populate_record(kind, t)
            if rec is None:
                cells.append("-")
                continue
            text = f"{rec['seconds']} s, {fmt(as_float(rec['rate']))}/s"
            if rec.get("capped"):
                text += f" (**capped at {as_int(rec['domains']):,}**)"
            cells.append(text)
        out.append(f"| {NAMES[kind]} | {' | '.join(cells)} |")
    out.append("")
    return out


def _latency(res: Results, sizes: list[int]) -> list[str]:
    out = [
        "**Latency of single requests** (libxenstore, `bench/xslat.c`; p50 "
        "[p99] in microseconds, median over repetitions; nodes spread over "
        "all domains)",
        "",
        "| request | domains | pyxenstored | C xenstored | oxenstored | py / C |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for test in LAT_TESTS:
        for t in sizes:
            meds: dict[str, float | None] = {}
            cells = []
            for kind in KINDS:
                size = res.reached(kind, t)
                if size is None:
                    meds[kind] = None
                    cells.append("-")
                    continue
                match = {
                    "phase": "scale",
                    "daemon": kind,
                    "test": test,
                    "pinned": False,
                }
                p50 = res.median(**match, domains=size, field="lat_us_p50")
                p99 = res.median(**match, domains=size, field="lat_us_p99")
                meds[kind] = p50
                text = f"{fmt(p50, 1)} [{fmt(p99, 0)}]"
                if size != t:
                    text += f" at {size:,}"
                cells.append(text)
            py_c = ratio(meds["py"], meds["c"])
            # a ratio of figures taken at two sizes is marked, not hidden
            if res.reached("c", t) != t or res.reached("py", t) != t:
                py_c += "*" if py_c != "-" else ""
            out.append(f"| {lat_name(test)} | {t:,} | {' | '.join(cells)} | {py_c} |")
    out.append("")
    if any(line.endswith("* |") for line in out):
        out += ["\\* the two daemons were not measured on the same tree size.", ""]
    return out


def _growth(res: Results, sizes: list[int], *, pinned: bool) -> list[str]:
    small = sizes[0]
    columns: list[tuple[str, int, str]] = []  # (kind, size reached, heading)
    for kind in KINDS:
        reached = sorted({s for t in sizes if (s := res.reached(kind, t)) is not None})
        # pyxenstored at every size; the others at the largest they reached
        shown = reached if kind == "py" else reached[-1:]
        for size in shown:
            note = " (control)" if size == small else ""
            columns.append((kind, size, f"{NAMES[kind]} {size:,}{note}"))
    if not any(res.growth(k, LAT_TESTS[0], s, pinned=pinned) for k, s, _ in columns):
        return []
    if pinned:
        title = (
            "**Latency growth, pinned** (the same, measured again with each "
            "daemon and `xslat` on one CPU)"
        )
    else:
        title = (
            "**Latency growth**: p50 on the daemon grown to N domains over p50 "
            f"on a second daemon of the same kind holding {small:,} domains, "
            "the two measured in turn (one ratio per repetition: median "
            f"[min-max]). At {small:,} both hold the same tree: that column is "
            "the method's own noise. Target: pyxenstored <= "
            f"{threshold(LatencyGrowth)} at the largest tree, unpinned."
        )
    out = [
        title,
        "",
        "| request | " + " | ".join(h for _, _, h in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for test in LAT_TESTS:
        cells = [
            spread(res.growth(kind, test, size, pinned=pinned))
            for kind, size, _ in columns
        ]
        out.append(f"| {lat_name(test)} | {' | '.join(cells)} |")
    out.append("")
    return out


def _memory(res: Results, sizes: list[int]) -> list[str]:
    common = res.common_size()
    # per-node columns from 1,000 domains on (every size when the run grew
    # no tree that big)
    mem_sizes = [t for t in sizes if t >= 1000] or sizes
    out = [
        "**Resident memory**: VmRSS from /proc/PID/status; bytes per node = "
        "(RSS - RSS before population) / nodes added (RssAnon gives the same "
        "figures within 1%)",
        "",
        "| daemon | RSS before | "
        + " | ".join(f"bytes/node at {t:,} domains" for t in mem_sizes)
        + " | RSS at the largest tree | / C"
        + (f" at {common:,} domains |" if common else " |"),
        "|---|---:|" + "---:|" * len(mem_sizes) + "---:|---:|",
    ]
    c_common = res.bytes_per_node("c", common) if common else None
    for kind in KINDS:
        mems = res.memory_records(kind)
        if not mems:
            continue
        cells = []
        for t in mem_sizes:
            size = res.reached(kind, t)
            value = res.bytes_per_node(kind, size) if size else None
            text = fmt(value)
            if size is not None and size != t and value is not None:
                text += f" at {size:,}"
            cells.append(text)
        mine = res.bytes_per_node(kind, common) if common else None
        out.append(
            f"| {NAMES[kind]} | {fmt((as_float(mems[0]['VmRSS']) or 0) / 1024, 1)} MiB"
            f" | {' | '.join(cells)} | "
            f"{fmt((as_float(mems[-1]['VmRSS']) or 0) / 1024, 1)} MiB "
            f"({fmt(as_float(mems[-1]['domains']))} domains) | "
            f"{ratio(mine, c_common)} |"
        )
    out.append("")
    return out


def _watches(res: Results) -> list[str]:
    counts = res.watch_counts("watch1", "nowatch")
    if len(counts) < 2:
        return []
    lo, hi = counts[0], counts[-1]
    out = [
        f"**Watches** (one dom0 connection holds {lo:,} or {hi:,} watches, "
        "one per domain's control/shutdown, at the largest tree; p50 us, "
        "median over repetitions; the two counts measured in turn, the ratio "
        "per repetition: median [min-max])",
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
            cells += [fmt(a, 1), fmt(b, 1), spread(res.watch_cost(kind, test, lo, hi))]
        reg = res.median(
            phase="scale",
            daemon=kind,
            test="watch1",
            watches=hi,
            field="register_s",
        )
        cells.append(f"{fmt(reg, 2)} s")
        out.append(f"| {NAMES[kind]} | {' | '.join(cells)} |")
    out.append("")
    return out
