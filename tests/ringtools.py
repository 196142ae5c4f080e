"""Helpers shared by the integration tests that reach into guests' rings."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from pyxenstored.client.sync import Client

__all__ = ["Page", "drain"]


class Page:
    """Direct access to a domain's ring page, as a (malicious) guest has."""

    def __init__(self, directory: Path, domid: int) -> None:
        fd = os.open(directory / f"ring-{domid}", os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 4096, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self.words = memoryview(self._map).cast("I")

    def __getitem__(self, word: int) -> int:
        return int(self.words[word])

    def __setitem__(self, word: int, value: int) -> None:
        self.words[word] = value & 0xFFFFFFFF

    def snapshot(self) -> bytes:
        return bytes(self._map)

    def close(self) -> None:
        self.words.release()
        self._map.close()


def drain(client: Client) -> list[tuple[str, str]]:
    """Events queued to ``client`` so far (barrier request, no waiting)."""
    client.get_domain_path(0)
    events: list[tuple[str, str]] = []
    while True:
        try:
            event = client.wait_watch(timeout=0)
        except TimeoutError:
            return events
        events.append((event.path, event.token))
