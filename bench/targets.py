"""The performance targets: one table of them, and the report's verdicts.

:data:`TARGETS` is the only place a target is written: its name, the
figure it reads (a :class:`Measure`), the comparison and the threshold.
The report's targets table is produced from it row by row, and the
big-tree tables quote their threshold from it (:func:`threshold`).
"""

from __future__ import annotations

import operator
import statistics
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from bench.cells import ratio_cell, spread
from bench.daemons import CEILING
from bench.labels import lat_name
from bench.results import Results
from bench.scale import LAT_TESTS

__all__ = [
    "TARGETS",
    "LatencyGrowth",
    "Measure",
    "MemoryPerNode",
    "Reading",
    "Target",
    "Throughput",
    "WatchCost",
    "CpuPerRequest",
    "WatchLatency",
    "targets_table",
    "threshold",
]


@dataclass(frozen=True, slots=True)
class Reading:
    """What a measure found in a run."""

    #: The figure compared with the target's threshold.
    value: float
    #: The "measured" cell.
    text: str
    #: The sizes or counts the target's name quotes (``{big:,}``).
    names: Mapping[str, object] = field(default_factory=dict)


class Measure(ABC):
    """The figure a target reads from a run's records."""

    __slots__ = ()

    #: When the run lacks the figure: True lists the target as "not
    #: measured", False leaves it out (most name sizes or counts that only
    #: a run with the big-tree phase has).
    listed_unmeasured: ClassVar[bool] = False

    @abstractmethod
    def read(self, res: Results) -> Reading | None:
        """The figure, or None when the run did not measure it."""


#: The small-tree targets read unpinned figures, by default libxenstore's:
#: the peers' own client, and the figures a host sees.
_SMALL_TREE: dict[str, object] = {
    "phase": "micro",
    "client": "libxenstore",
    "pinned": False,
}


@dataclass(frozen=True, slots=True)
class Throughput(Measure):
    """pyxenstored's rate over daemon ``over``'s on a small-tree load: the
    median over repetitions of the ratio within each."""

    listed_unmeasured: ClassVar[bool] = True
    test: str
    clients: int
    over: str
    client: str = "libxenstore"

    def read(self, res: Results) -> Reading | None:
        m = {
            **_SMALL_TREE,
            "client": self.client,
            "test": self.test,
            "clients": self.clients,
        }
        py = res.median(**m, field="rate", daemon="py")
        other = res.median(**m, field="rate", daemon=self.over)
        ratio, cell = ratio_cell(res, "py", self.over, **m, field="rate")
        if py is None or other is None or ratio is None:
            return None
        return Reading(ratio, f"{cell} ({py:,.0f} vs {other:,.0f})")


@dataclass(frozen=True, slots=True)
class CpuPerRequest(Measure):
    """pyxenstored's own CPU time per request over daemon ``over``'s on a
    small-tree load (medians over repetitions: the figure does not depend
    on where the scheduler put the processes)."""

    listed_unmeasured: ClassVar[bool] = True
    test: str
    client: str
    over: str

    def read(self, res: Results) -> Reading | None:
        m = {
            **_SMALL_TREE,
            "client": self.client,
            "test": self.test,
            "clients": 1,
            "field": "daemon_cpu_us_per_req",
        }
        py, other = res.median(**m, daemon="py"), res.median(**m, daemon=self.over)
        if not py or not other:
            return None
        return Reading(py / other, f"{py:.1f} us vs {other:.1f} us ({py / other:.2f}x)")


@dataclass(frozen=True, slots=True)
class WatchLatency(Measure):
    """pyxenstored's write-to-event p50 over daemon ``over``'s, per
    repetition as for :class:`Throughput`."""

    over: str

    def read(self, res: Results) -> Reading | None:
        m = {
            **_SMALL_TREE,
            "test": "watch_latency",
            "clients": 1,
            "field": "lat_us_p50",
        }
        py, other = res.median(**m, daemon="py"), res.median(**m, daemon=self.over)
        ratio, cell = ratio_cell(res, "py", self.over, **m)
        if py is None or other is None or ratio is None:
            return None
        return Reading(ratio, f"{py:.1f} us vs {other:.1f} us ({cell}x)")


@dataclass(frozen=True, slots=True)
class LatencyGrowth(Measure):
    """The worst growth of pyxenstored's p50 latency, over the requests of
    the big-tree phase: at the largest tree, over a daemon holding the
    smallest one measured in turn with it (the median of the ratios of the
    repetitions)."""

    def read(self, res: Results) -> Reading | None:
        sizes = res.target_sizes()
        if not sizes:
            return None
        small, big = sizes[0], sizes[-1]
        b_size = res.reached("py", big)
        if b_size is None:
            return None
        worst = 0.0
        parts = []
        for test in LAT_TESTS:
            ratios = res.growth("py", test, b_size)
            if ratios:
                med = statistics.median(ratios)
                worst = max(worst, med)
                parts.append(f"{lat_name(test)} {spread(ratios)}")
        if not parts:
            return None
        return Reading(
            worst,
            f"{', '.join(parts)} (at {b_size:,} vs {small:,}, measured in turn)",
            {"small": small, "big": big},
        )


@dataclass(frozen=True, slots=True)
class WatchCost(Measure):
    """pyxenstored's p50 of a write firing one watch with the most watches
    registered over that with the fewest, the two measured in turn (the
    median of the ratios of the repetitions)."""

    def read(self, res: Results) -> Reading | None:
        counts = res.watch_counts("watch1")
        if len(counts) < 2:
            return None
        lo, hi = counts[0], counts[-1]
        m = {"phase": "scale", "daemon": "py", "test": "watch1"}
        a = res.median(**m, watches=lo, field="lat_us_p50")
        b = res.median(**m, watches=hi, field="lat_us_p50")
        ratios = res.watch_cost("py", "watch1", lo, hi)
        if not a or not b or not ratios:
            return None
        return Reading(
            statistics.median(ratios),
            f"{a:.1f} us vs {b:.1f} us ({spread(ratios)}x)",
            {"lo": lo, "hi": hi},
        )


@dataclass(frozen=True, slots=True)
class MemoryPerNode(Measure):
    """pyxenstored's bytes per node over daemon ``over``'s, at the largest
    tree both reached."""

    over: str

    def read(self, res: Results) -> Reading | None:
        common = res.common_size()
        if not common:
            return None
        py = res.bytes_per_node("py", common)
        other = res.bytes_per_node(self.over, common)
        if not py or not other:
            return None
        return Reading(
            py / other,
            f"{py:,.0f} vs {other:,.0f} bytes/node at {common:,} domains "
            f"({py / other:.2f}x)",
        )


_COMPARE = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True, slots=True)
class Target:
    """One performance target and how the report words its verdict."""

    #: Formatted with ``threshold`` and the reading's names.
    name: str
    reads: Measure
    compare: Literal[">=", "<="]
    threshold: float
    #: Why it is not met, in the verdict's brackets; formatted with
    #: ``value`` (the figure), ``short`` (% below the threshold) and
    #: ``over`` (% above parity, 1.0).
    missed: str
    met: str = "met"

    def verdict(self, value: float) -> str:
        if _COMPARE[self.compare](value, self.threshold):
            return self.met
        why = self.missed.format(
            value=value,
            short=(1 - value / self.threshold) * 100,
            over=(value - 1) * 100,
        )
        return f"not met ({why})"


_SHORT_OF = "{short:.1f}% short"

#: The performance issue's targets, in the report's order.
TARGETS: tuple[Target, ...] = (
    # small tree, against the ceiling (the null Python server)
    Target(
        "sequential write+read: py/null >= {threshold}",
        reads=Throughput("seq_write_read", 1, over=CEILING),
        compare=">=",
        threshold=0.9,
        missed=_SHORT_OF,
    ),
    Target(
        "transaction of 10 writes: py/null >= {threshold}",
        reads=Throughput("transaction_10_writes", 1, over=CEILING),
        compare=">=",
        threshold=0.9,
        missed=_SHORT_OF,
    ),
    Target(
        "16-client throughput: py/null >= {threshold}",
        reads=Throughput("concurrent_write_read", 16, over=CEILING),
        compare=">=",
        threshold=0.9,
        missed=_SHORT_OF,
    ),
    # small tree, against C xenstored
    Target(
        "sequential write+read: py/C >= {threshold}",
        reads=Throughput("seq_write_read", 1, over="c"),
        compare=">=",
        threshold=1.0,
        missed=_SHORT_OF,
    ),
    Target(
        "DIRECTORY (1,000 children): py/C >= {threshold}",
        reads=Throughput("directory_1000", 1, over="c"),
        compare=">=",
        threshold=0.9,
        missed=_SHORT_OF,
    ),
    Target(
        "transaction of 10 writes: py/C >= {threshold}",
        reads=Throughput("transaction_10_writes", 1, over="c"),
        compare=">=",
        threshold=1.0,
        missed=_SHORT_OF,
    ),
    Target(
        "16-client throughput: py/C >= {threshold}",
        reads=Throughput("concurrent_write_read", 16, over="c"),
        compare=">=",
        threshold=1.0,
        missed=_SHORT_OF,
    ),
    Target(
        "watch latency p50 <= {threshold}x C's (0.9x its speed)",
        reads=WatchLatency(over="c"),
        compare="<=",
        threshold=1.11,
        missed="{over:.0f}% slower",
    ),
    Target(
        "connection open+close (our client): py/C >= {threshold}",
        reads=Throughput("connection_open_close", 1, over="c", client="pyxenstored"),
        compare=">=",
        threshold=0.9,
        missed=_SHORT_OF,
    ),
    # guests on rings
    Target(
        "guest on a ring, seq write+read: py/C >= {threshold}",
        reads=Throughput("seq_write_read", 1, over="c", client="ring"),
        compare=">=",
        threshold=0.9,
        missed=_SHORT_OF,
    ),
    Target(
        "guest on a ring, daemon CPU per request: py <= {threshold}x C's",
        reads=CpuPerRequest("seq_write_read", client="ring", over="c"),
        compare="<=",
        threshold=1.3,
        missed="{value:.2f}x",
    ),
    # big trees
    Target(
        "latency at {big:,} domains <= {threshold}x of {small:,}",
        reads=LatencyGrowth(),
        compare="<=",
        threshold=1.2,
        missed="worst {value:.2f}x",
    ),
    # "the same": within the run-to-run noise of one figure (~10%)
    Target(
        "write firing 1 watch: same cost with {lo:,} or {hi:,} watches",
        reads=WatchCost(),
        compare="<=",
        threshold=1.1,
        missed="{over:.0f}% dearer",
        met="met (no dearer, within the 10% noise)",
    ),
    Target(
        "memory per node <= {threshold:g}x C's",
        reads=MemoryPerNode(over="c"),
        compare="<=",
        threshold=2.0,
        missed="{value:.1f}x",
    ),
)


def threshold(reads: type[Measure]) -> float:
    """The threshold of the target that reads this kind of measure."""
    return next(t.threshold for t in TARGETS if isinstance(t.reads, reads))


def targets_table(res: Results) -> list[str]:
    """The performance targets, each with the measured figure and a verdict."""
    rows: list[tuple[str, str, str]] = []
    for target in TARGETS:
        reading = target.reads.read(res)
        if reading is None:
            if target.reads.listed_unmeasured:
                name = target.name.format(threshold=target.threshold)
                rows.append((name, "-", "not measured"))
            continue
        name = target.name.format(threshold=target.threshold, **reading.names)
        rows.append((name, reading.text, target.verdict(reading.value)))
    return [
        "| target | measured | verdict |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
    ]
