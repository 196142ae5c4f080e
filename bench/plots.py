"""The two PNG plots of a run: throughput against clients, latency and
memory against domains.

matplotlib is in the ``bench`` dependency group only: without it the run
says so and writes no plots.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.daemons import CEILING, KINDS, MICRO_KINDS, NAMES
from bench.labels import CLIENT_TITLES, LAT_TITLES
from bench.micro import CLIENT_COUNTS
from bench.results import Results, as_float
from bench.scale import LAT_TESTS

__all__ = ["plot"]

COLORS = {"null": "tab:gray", "py": "tab:blue", "c": "tab:orange", "ox": "tab:green"}


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
    drawn = (_throughput(plt, res, out_dir), _latency(plt, res, out_dir))
    return [path for path in drawn if path is not None]


def _throughput(plt: Any, res: Results, out_dir: Path) -> Path | None:
    """Throughput against the number of clients, one panel per client."""
    clients = [
        c for c in CLIENT_TITLES if any(r.get("client") == c for r in res.records)
    ]
    if not clients:
        return None
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
    return path


def _latency(plt: Any, res: Results, out_dir: Path) -> Path | None:
    """p50 latency of each request, and the daemons' RSS, against the
    number of domains."""
    if not res.target_sizes():
        return None
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    flat = list(axes.flat)
    labels = {}
    for kind in KINDS:
        capped = res.capped(kind)
        labels[kind] = NAMES[kind] + (
            f" (capped at {capped:,})" if capped is not None else ""
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
                        pinned=False,
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
        _domains_axes(ax, "p50 latency (us, log scale)", _wrap(LAT_TITLES[test]))
    ax = flat[len(LAT_TESTS)]
    for kind in KINDS:
        mems = [r for r in res.memory_records(kind) if r.get("domains")]
        if mems:
            ax.plot(
                [as_float(r["domains"]) for r in mems],
                [(as_float(r["VmRSS"]) or 0) / 1024 for r in mems],
                marker="o",
                color=COLORS[kind],
                label=labels[kind],
            )
    _domains_axes(ax, "resident memory (MiB)", "daemon RSS")
    fig.suptitle(
        "Request latency (libxenstore client) and memory against the number of domains"
    )
    fig.tight_layout()
    path = out_dir / "bench-latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _domains_axes(ax: Any, ylabel: str, title: str) -> None:
    """A big-tree panel: the number of domains across, both axes log."""
    ax.set_xscale("log")
    _log_y(ax)
    ax.set_xlabel("domains (47 nodes each)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


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
