"""Quota limits, per-domain overrides and the comparison rule.

PROTOCOL.md section 10.  Quotas apply only to unprivileged domains.  A value
of 0 means unlimited.  C changed its boundaries in 4.22 from "at most N" to
"at most N-1"; :class:`QuotaRule` selects which reading is used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from pyxenstored.errors import InvalidArgument

__all__ = ["QUOTA_NAMES", "Limits", "Quota", "QuotaRule", "Quotas"]


class QuotaRule(Enum):
    """How a count is compared with its limit."""

    #: Refuse when the count after the operation would be above N (<= 4.21).
    AT_MOST_N = "4.21"
    #: Refuse when the count after the operation would reach N (4.22).
    BELOW_N = "4.22"


@dataclass(frozen=True, slots=True)
class Limits:
    """The quota values that apply to one domain (0 = unlimited)."""

    nodes: int = 1000
    watches: int = 128
    outstanding: int = 20
    memory: int = 2621440
    soft_memory: int = 2097152
    transactions: int = 10
    transaction_nodes: int = 1024
    node_permissions: int = 5
    path_max: int = 2048
    node_size: int = 2048


#: The :class:`Limits` fields a request is checked against.
Quota = Literal[
    "nodes",
    "watches",
    "memory",
    "transactions",
    "transaction_nodes",
    "node_permissions",
    "path_max",
    "node_size",
]

#: GET_QUOTA names in C 4.22's order, mapped to :class:`Limits` fields.
QUOTA_NAMES: dict[str, str] = {
    "nodes": "nodes",
    "watches": "watches",
    "outstanding": "outstanding",
    "memory": "memory",
    "soft-memory": "soft_memory",
    "transactions": "transactions",
    "transaction-nodes": "transaction_nodes",
    "node-permissions": "node_permissions",
    "path-max": "path_max",
    "node-size": "node_size",
}
#: Other spellings accepted on input (``xenstore.txt`` says ``permissions``).
_ALIASES = {"permissions": "node-permissions", "path-length": "path-max"}


def field_for(name: str) -> str:
    """The :class:`Limits` field of a quota name.

    Raises:
        InvalidArgument: unknown quota name.
    """
    name = _ALIASES.get(name, name)
    try:
        return QUOTA_NAMES[name]
    except KeyError:
        raise InvalidArgument(f"unknown quota {name!r}") from None


@dataclass(slots=True)
class Quotas:
    """Global defaults plus per-domain overrides."""

    defaults: Limits = field(default_factory=Limits)
    rule: QuotaRule = QuotaRule.AT_MOST_N
    per_domain: dict[int, Limits] = field(default_factory=dict)

    def for_domain(self, domid: int) -> Limits:
        return self.per_domain.get(domid, self.defaults)

    def would_exceed(self, domid: int, quota: Quota, count_after: int) -> bool:
        """True if ``count_after`` is over ``domid``'s ``quota`` (a
        :class:`Limits` field name) under the active rule (0: no limit).

        The one quota check (callers skip it for privileged callers).
        """
        limit: int = getattr(self.per_domain.get(domid, self.defaults), quota)
        if limit == 0:
            return False
        if self.rule is QuotaRule.AT_MOST_N:
            return count_after > limit
        return count_after >= limit

    def set_default(self, name: str, value: int) -> None:
        self.defaults = dataclasses.replace(self.defaults, **{field_for(name): value})

    def set_domain(self, domid: int, name: str, value: int) -> None:
        current = self.for_domain(domid)
        self.per_domain[domid] = dataclasses.replace(
            current, **{field_for(name): value}
        )

    def forget_domain(self, domid: int) -> None:
        self.per_domain.pop(domid, None)
