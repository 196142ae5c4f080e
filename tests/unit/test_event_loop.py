"""``pyxenstored --event-loop``: uvloop when asked or installed, never required."""

from __future__ import annotations

import sys

import pytest
import uvloop

from pyxenstored.cli.xenstored import build_parser, loop_factory
from pyxenstored.errors import InvalidArgument


def test_asyncio_is_asyncio_s_own_loop() -> None:
    assert loop_factory("asyncio") is None


def test_auto_and_uvloop_take_uvloop_when_installed() -> None:
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails
    assert loop_factory("auto") is None
    with pytest.raises(InvalidArgument, match="uvloop is not installed"):
        loop_factory("uvloop")


def test_the_default_is_auto() -> None:
    assert build_parser().parse_args([]).event_loop == "auto"
