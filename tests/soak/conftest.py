"""The soak test is long: only ``make soak`` (PYXS_SOAK=1) collects it."""

from __future__ import annotations

import os

collect_ignore = [] if os.environ.get("PYXS_SOAK") == "1" else ["soak_test.py"]
