"""pyxenstored with a deliberate bug, for the tests of internal errors.

``python -m tests.faulty [pyxenstored options]`` runs the real daemon, with
one change to the store: committing a node whose value is ``boom`` raises
RuntimeError right after the node was linked into the tree and charged to
its owner, that is half way through the change.  Everything else is the
daemon as shipped.
"""

from __future__ import annotations

import sys

from pyxenstored.cli.xenstored import main
from pyxenstored.store.node import Node
from pyxenstored.store.tree import Store

#: The value whose commit fails.
BOOM = b"boom"

_add = Store._add
_touched = Store.touched
_replace = Store.replace


def _failing_add(self: Store, path: str, node: Node, parent: Node | None) -> None:
    _add(self, path, node, parent)
    if node.value == BOOM:
        raise RuntimeError(f"injected failure adding {path}")


def _failing_touched(self: Store, path: str, node: Node) -> None:
    _touched(self, path, node)
    if node.value == BOOM:
        raise RuntimeError(f"injected failure changing {path}")


def _failing_replace(self: Store, path: str, node: Node) -> None:
    _replace(self, path, node)
    if node.value == BOOM:
        raise RuntimeError(f"injected failure committing {path}")


Store._add = _failing_add  # type: ignore[method-assign]
Store.touched = _failing_touched  # type: ignore[method-assign]
Store.replace = _failing_replace  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
