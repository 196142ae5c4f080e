"""The node tree, transactions and quotas (pure, no I/O)."""

from __future__ import annotations

from pyxenstored.store.node import Change, Node
from pyxenstored.store.quota import Limits, QuotaRule, Quotas
from pyxenstored.store.transaction import Transaction
from pyxenstored.store.tree import Caller, Store

__all__ = [
    "Caller",
    "Change",
    "Limits",
    "Node",
    "QuotaRule",
    "Quotas",
    "Store",
    "Transaction",
]
