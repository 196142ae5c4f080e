"""Live update in the daemon: write the state, exec the new program, restore.

The engine decides whether a started update may proceed
(:mod:`pyxenstored.engine.liveupdate`) and turns its state into records
(:mod:`pyxenstored.engine.livestate`); this module does the I/O around
it, as C xenstored does (MIGRATION.md b.7):

1. poll the session until it may proceed (or fails: the ``-s`` request is
   answered with the reason);
2. collect what the shells hold (socket descriptors, ring ports, input not
   yet handled, output not yet sent) and write the state stream to
   ``$XENSTORED_RUNDIR/state_dump``, with the ``OK`` of the ``-s`` request
   queued on its connection;
3. make the listening socket, every client socket and the event-channel
   descriptor survive exec, and exec the new program with our arguments
   (or ``-c``'s) followed by ``-U``.

An update that cannot happen changes nothing: if the state cannot be
written or the exec fails, everything is put back (descriptors closed on
exec again, the VIRQ bound again, the file removed) and the ``-s`` request
is answered with the reason; the daemon serves on.

The other half, :func:`load_state`, is what the new program runs first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from typing import TYPE_CHECKING

from pyxenstored.engine.livestate import capture
from pyxenstored.engine.liveupdate import LiveUpdate, Verdict, verdict
from pyxenstored.migration.xsstate import (
    StateStream,
    StateStreamError,
    WatchData,
    decode_state,
    encode_state,
)
from pyxenstored.wire.ops import Op
from pyxenstored.wire.packet import encode_packet
from pyxenstored.wire.payload import OK

if TYPE_CHECKING:
    from pyxenstored.server.daemon import Daemon

__all__ = ["STATE_FILE", "StateUnreadable", "Updater", "binary_problem", "load_state"]

log = logging.getLogger(__name__)

#: Where C writes the state, under ``$XENSTORED_RUNDIR``.
STATE_FILE = "state_dump"

#: Seconds between two looks at a started update that must wait.
POLL_INTERVAL = 0.05


class StateUnreadable(Exception):
    """The saved state cannot be read: the new program must not serve."""


def binary_problem(path: str) -> str | None:
    """Why ``path`` cannot be the new program (C's words), None if it can."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "File not accessible."
    if not stat.S_ISREG(mode) or not mode & (
        stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    ):
        return "File not executable."
    return None


def load_state(path: str) -> StateStream:
    """Read and decode a saved state (live update or ``--restore``).

    Raises:
        StateUnreadable: missing, unreadable or not a valid stream; the
            message names the file and, for a bad stream, the byte offset.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise StateUnreadable(
            f"cannot read the saved state {path}: {error.strerror}"
        ) from None
    try:
        return decode_state(data)
    except StateStreamError as error:
        raise StateUnreadable(f"{path}: bad xenstore state stream: {error}") from None


class Updater:
    """Carries out the engine's live-update session in the daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._timer: asyncio.Handle | None = None

    @property
    def state_path(self) -> str:
        return os.path.join(self.daemon.config.rundir, STATE_FILE)

    def start(self) -> None:
        """``live-update -s`` arrived: look at once, then every so often."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_soon(self._poll)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _poll(self) -> None:
        self._timer = None
        engine = self.daemon.engine
        lu = engine.live_update
        if lu is None or lu.request is None:
            return  # aborted, or its connection went
        now = engine.clock()
        decision, reason = verdict(engine, lu, now)
        if decision is Verdict.GO:
            decision, reason = self._shell_verdict(lu, now)
        if decision is Verdict.WAIT:
            self._timer = asyncio.get_running_loop().call_later(
                POLL_INTERVAL, self._poll
            )
            return
        if decision is Verdict.GO:
            reason = self._perform(lu)  # returns only if the update failed
            log.error("live update failed: %s", reason.replace("\n", "; "))
        else:
            log.warning("live update refused: %s", reason.replace("\n", "; "))
        self._answer(lu, reason)

    def _shell_verdict(self, lu: LiveUpdate, now: float) -> tuple[Verdict, str]:
        """What only the shell knows: output still in socket buffers, rings
        in the middle of a migration (QUIESCE)."""
        unsent, quiesced = self.daemon.update_blockers()
        if not unsent and not quiesced:
            return Verdict.GO, ""
        assert lu.started_at is not None
        if now < lu.started_at + lu.timeout:
            return Verdict.WAIT, ""
        if lu.force and not quiesced:
            log.warning("live update forced: %s", "; ".join(unsent))
            return Verdict.GO, ""
        return Verdict.REJECT, "\n".join(["Update blocked by:", *quiesced, *unsent])

    def _answer(self, lu: LiveUpdate, text: str) -> None:
        engine = self.daemon.engine
        assert lu.request is not None
        engine.reply(lu.conn, lu.request, text.encode() + b"\0")
        engine.end_live_update()
        self.daemon.flush()

    # -- the update itself ------------------------------------------------------

    def _perform(self, lu: LiveUpdate) -> str:
        """Write the state and exec the new program; the reason if not.

        Whatever fails, and wherever (a bug of ours too), what was done is
        undone: the descriptors are closed on exec again, the VIRQ bound
        again, the state file removed.
        """
        daemon = self.daemon
        path = self.state_path
        stage = "Dump state error"
        written = prepared = False
        try:
            data = self._state(lu)
            stage = "Dump write error"
            written = True
            _write_file(path, data)
            stage = "Error activating new binary"
            argv = self._argv(lu)
            log.info(
                "live update: state saved (%d bytes); exec %s",
                len(data),
                " ".join(argv),
            )
            prepared = True
            daemon.prepare_exec()
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.execv(lu.binary, argv)
            raise AssertionError("exec returned")  # pragma: no cover
        except Exception as error:
            if not isinstance(error, (OSError, ValueError)):
                log.exception("live update: internal error")
            if prepared:
                daemon.exec_failed()
            if written:
                _remove(path)
            if isinstance(error, OSError) and error.strerror:
                where = error.filename or (path if written and not prepared else "")
                return f"{stage}: {where + ': ' if where else ''}{error.strerror}"
            return f"{stage}: {error}"

    def _state(self, lu: LiveUpdate) -> bytes:
        """The state stream, with the ``OK`` of the ``-s`` request queued."""
        daemon = self.daemon
        assert lu.request is not None
        ios = daemon.connection_io()
        request = lu.request
        ok = encode_packet(Op.CONTROL, request.req_id, request.tx_id, OK)
        for io in ios:
            if io.conn is lu.conn:
                io.out_data += ok
        evtchn_fd = -1 if daemon.guests is None else daemon.platform_or_fail().fileno()
        version, records = capture(
            daemon.engine, ios, socket_fd=daemon.listening_fd(), evtchn_fd=evtchn_fd
        )
        if lu.version is not None:
            if lu.version < version:
                log.warning(
                    "live update: version %d asked for: watch depths and "
                    "domain feature words are not saved",
                    lu.version,
                )
                records = [
                    WatchData(r.conn_id, r.path, r.token)
                    if isinstance(r, WatchData)
                    else r
                    for r in records
                ]
            version = lu.version
        return encode_state(records, version)

    def _argv(self, lu: LiveUpdate) -> list[str]:
        """C's rule: ``-c``'s words or our own arguments, then ``-U`` once."""
        if lu.cmdline is not None:
            args = lu.cmdline.split()
        else:
            args = list(self.daemon.config.argv)
        if "-U" not in args and "--live-update" not in args:
            args.append("-U")
        return [lu.binary, *args]


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` whole and on disk; a partial file is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        _remove(path)
        raise
    os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
