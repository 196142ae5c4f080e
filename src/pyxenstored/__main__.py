"""``python -m pyxenstored`` runs the ``pyxenstore`` client tool."""

from __future__ import annotations

import sys

from pyxenstored.cli.xenstore import main

sys.exit(main())
