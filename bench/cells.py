"""The text of one cell: figures, "median [min-max]" and ratios.

Shared by the tables and the targets, so that a figure reads the same
wherever the report prints it.
"""

from __future__ import annotations

import statistics

from bench.results import Results

__all__ = ["cell", "fmt", "ratio", "ratio_cell"]


def fmt(value: float | None, digits: int = 0) -> str:
    """A figure with thousands separators; "-" for one not measured."""
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` to two decimals; "-" when either is missing (or b is 0)."""
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def cell(res: Results, **match: object) -> tuple[float | None, str]:
    """The median of the matching figures and a cell "median [min-max]"."""
    vals = res.values(**match)
    if not vals:
        return None, "-"
    med = statistics.median(vals)
    # small figures (latencies of a few microseconds) keep one decimal
    digits = 0 if med >= 100 else 1
    if len(vals) == 1:
        return med, fmt(med, digits)
    return med, f"{fmt(med, digits)} [{fmt(min(vals), digits)}-" + (
        f"{fmt(max(vals), digits)}]"
    )


def ratio_cell(
    res: Results, num: str, den: str, **match: object
) -> tuple[float | None, str]:
    """The median of the per-repetition ratios ``num`` / ``den`` (see
    :meth:`Results.ratios`) and a cell "median [min-max]"."""
    vals = res.ratios(num, den, **match)
    return (statistics.median(vals) if vals else None), spread(vals)


def spread(values: list[float]) -> str:
    """Ratios of a run's repetitions as a cell "median [min-max]"."""
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} [{min(values):.2f}-{max(values):.2f}]"
