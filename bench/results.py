"""The records of a run, indexed: medians, spreads and per-repetition ratios.

A run writes one JSON object per line to ``results.jsonl``; everything the
report prints is read through :class:`Results`, which knows nothing of
markdown or plots.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Record", "Results", "as_float", "as_int", "load"]

Record = dict[str, object]


def as_float(value: object) -> float | None:
    """A record's figure as a float; None for anything else (bool included:
    ``pinned`` and ``capped`` are flags, not figures)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def as_int(value: object) -> int:
    """A count (domains, watches, target size) that the record must hold."""
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"not a number: {value!r}")


def load(path: Path) -> list[Record]:
    """The records of a results.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.startswith("{")]


class Results:
    """Records of one run, indexed for the tables, the targets and the plots.

    A query is keyword arguments: ``field`` names the figure, every other
    keyword a value the record must hold (``phase="micro", daemon="py"``).
    Records with an ``error`` never match.
    """

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
            value = as_float(r.get(field))
            if value is not None:
                out[r.get("rep"), i] = value
        return out

    def median(self, **match: object) -> float | None:
        vals = self.values(**match)
        return statistics.median(vals) if vals else None

    def ratios(self, num: str, den: str, **match: object) -> list[float]:
        """Daemon ``num``'s figure over daemon ``den``'s, one per repetition.

        Both figures come from the same repetition (records matching
        ``match``, each with its ``daemon``), so the ratios' spread is the
        run's noise on the ratio itself.
        """
        return self.paired({"daemon": num}, {"daemon": den}, **match)

    def paired(self, num: Record, den: Record, **common: object) -> list[float]:
        """The figure of the records matching ``num`` over that of those
        matching ``den`` (each also matching ``common``, with its
        ``field``), one ratio per repetition: two figures measured in the
        same repetition (the median, where a side has several)."""
        sides = []
        for side in (num, den):
            reps: dict[object, list[float]] = {}
            for (rep, _), value in self._by_rep(**side, **common).items():
                reps.setdefault(rep, []).append(value)
            sides.append({rep: statistics.median(v) for rep, v in reps.items()})
        top, bottom = sides
        return [top[rep] / bottom[rep] for rep in top if bottom.get(rep)]

    # -- the big-tree phase --

    def target_sizes(self) -> list[int]:
        """The tree sizes (domains) the population aimed at, smallest first."""
        return sorted(
            {as_int(r["target"]) for r in self.records if r.get("test") == "populate"}
        )

    def scale_sizes(self, kind: str) -> list[int]:
        """The tree sizes at which the daemon's memory was measured."""
        return sorted(
            {
                as_int(r["domains"])
                for r in self.memory_records(kind)
                if r.get("domains")
            }
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
                return as_float(r.get("bytes_per_node"))
        return None

    def common_size(self) -> int | None:
        """The largest tree that pyxenstored and C xenstored both reached."""
        py, c = set(self.scale_sizes("py")), set(self.scale_sizes("c"))
        both = py & c
        return max(both) if both else None

    def populate_record(self, kind: str, target: int) -> Record | None:
        """The daemon's population step towards ``target`` domains."""
        return next(
            (
                r
                for r in self.records
                if r.get("test") == "populate"
                and r.get("daemon") == kind
                and r.get("target") == target
            ),
            None,
        )

    def reached(self, kind: str, target: int) -> int | None:
        """The size the daemon's tree had when it was measured for ``target``."""
        rec = self.populate_record(kind, target)
        return None if rec is None else as_int(rec["domains"])

    def capped(self, kind: str) -> int | None:
        """The size at which the daemon ran out of population time, if it did."""
        rec = next(
            (
                r
                for r in self.records
                if r.get("test") == "populate"
                and r.get("daemon") == kind
                and r.get("capped")
            ),
            None,
        )
        return None if rec is None else as_int(rec["domains"])

    def growth(
        self, kind: str, test: str, domains: int, *, pinned: bool = False
    ) -> list[float]:
        """p50 latency of ``test`` on the daemon grown to ``domains`` over
        that of the reference daemon (the smallest tree) measured in turn
        with it, one ratio per repetition."""
        return self.paired(
            {"phase": "scale", "domains": domains},
            {"phase": "scale_reference", "alongside": domains},
            daemon=kind,
            test=test,
            pinned=pinned,
            field="lat_us_p50",
        )

    def watch_cost(self, kind: str, test: str, lo: int, hi: int) -> list[float]:
        """p50 latency of ``test`` with ``hi`` watches registered over that
        with ``lo``, measured in turn, one ratio per repetition."""
        return self.paired(
            {"watches": hi},
            {"watches": lo},
            phase="scale",
            daemon=kind,
            test=test,
            field="lat_us_p50",
        )

    def watch_counts(self, *tests: str) -> list[int]:
        """The watch counts the ``tests`` ran with, fewest first."""
        return sorted(
            {
                as_int(r["watches"])
                for r in self.records
                if r.get("test") in tests and r.get("watches")
            }
        )
