"""``pyxenstored``: the daemon's command line.

It takes C xenstored's options, so that Debian's ``/etc/init.d/xen`` and
``xenstore-control`` can start it in C's place (docs/realxen.md).  As C,
it forks unless ``-N/--no-fork`` is given; unlike C, the parent exits
only once the daemon serves, non-zero with the reason when it does not
(server/startup.py).  Quota options carry C's names, meanings and
defaults (PROTOCOL.md section 10).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from pyxenstored import __version__, rundir
from pyxenstored.engine.engine import Engine, EngineConfig
from pyxenstored.engine.livestate import Restored, RestoreError, cold_start, restore
from pyxenstored.errors import InvalidArgument
from pyxenstored.migration.xsstate import ConnType
from pyxenstored.server import startup
from pyxenstored.server.backends import BACKENDS, make_platform
from pyxenstored.server.config import Config
from pyxenstored.server.daemon import Daemon, SocketInUse
from pyxenstored.server.guests import Platform
from pyxenstored.server.liveupdate import STATE_FILE, StateUnreadable, load_state
from pyxenstored.server.startup import Outcome, PidFile, PidFileHeld, Report
from pyxenstored.store.quota import Limits, QuotaRule, field_for

log = logging.getLogger("pyxenstored")

__all__ = ["build_parser", "main"]


def _positive(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _assignment(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return name, _positive(value)


class _Parser(argparse.ArgumentParser):
    """argparse, with bad input reported in one line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (--help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pyxenstored",
        description="xenstore daemon. Serves dom0 clients on a Unix socket and, "
        "through a hypervisor backend, guest domains on their rings. Forks into "
        "the background once it serves, unless -N is given.",
        add_help=False,
    )
    p.add_argument("-h", "-H", "--help", action="help", help="show this help and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="socket path (default: $XENSTORED_PATH, else "
        "$XENSTORED_RUNDIR/socket, else /var/run/xenstored/socket)",
    )
    p.add_argument(
        "--host-dir",
        metavar="DIR",
        help="serve guest domains through the emulated hypervisor in DIR",
    )
    p.add_argument(
        "--quiesce-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long QUIESCE may drain a ring before answering EBUSY (5)",
    )
    p.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="asyncio's own loop, or uvloop (installed with the 'uvloop' extra); "
        "auto: uvloop when it is installed (default)",
    )
    p.add_argument(
        "--hypervisor",
        choices=BACKENDS,
        default="auto",
        help="how guests are reached: the Xen libraries, the emulation of "
        "--host-dir, or none (sockets only); auto: xen on a dom0, else emulated "
        "with --host-dir, else none (default)",
    )
    p.add_argument(
        "-F",
        "--pid-file",
        metavar="FILE",
        help="lock FILE and write the daemon's pid in it; if another daemon "
        "holds it, exit 0 at once",
    )
    p.add_argument(
        "-P",
        "--output-pid",
        action="store_true",
        help="print the daemon's pid on stdout once it serves",
    )
    p.add_argument("--log-file", metavar="FILE", help="log here instead of stderr")
    p.add_argument(
        "-T", "--trace-file", metavar="FILE", help="trace every request, reply, event"
    )
    p.add_argument(
        "-v", "-V", "--verbose", action="count", default=0, help="more logging"
    )
    p.add_argument(
        "-N",
        "--no-fork",
        action="store_true",
        help="stay in the foreground (default: fork once serving, as C xenstored)",
    )
    p.add_argument(
        "-D",
        "--no-domain-init",
        action="store_true",
        help="do not serve the master domain's own ring at start",
    )
    p.add_argument(
        "--master-domid",
        type=_positive,
        metavar="DOMID",
        help="the domain whose ring is served at start (default: -p's, 0)",
    )
    p.add_argument(
        "-U",
        "--live-update",
        action="store_true",
        help="started by a live update: take over $XENSTORED_RUNDIR/state_dump "
        "(its connections, rings, nodes and watches); never forks",
    )
    p.add_argument(
        "--restore",
        metavar="FILE",
        help="start from a saved xenstore state stream (its nodes, permissions, "
        "quotas and domain features; no connections)",
    )
    c = p.add_argument_group("accepted for C xenstored's command lines")
    c.add_argument(
        "-R",
        "--no-recovery",
        action="store_true",
        help="no effect: there is no database on disk to recover",
    )
    c.add_argument(
        "-I",
        "--internal-db",
        nargs="?",
        const="on",
        choices=("on", "off"),
        metavar="on|off",
        help="no effect: the store is always in memory",
    )
    c.add_argument(
        "-K",
        "--keep-orphans",
        action="store_true",
        help="ignored, with a warning: a dead domain's nodes are always removed",
    )
    q = p.add_argument_group("quotas (unprivileged domains only; 0 = unlimited)")
    q.add_argument(
        "-E", "--entry-nb", type=_positive, metavar="N", help="nodes per domain (1000)"
    )
    q.add_argument(
        "-S", "--entry-size", type=_positive, metavar="N", help="node size (2048)"
    )
    q.add_argument(
        "-W", "--watch-nb", type=_positive, metavar="N", help="watches per domain (128)"
    )
    q.add_argument(
        "-t",
        "--transaction",
        type=_positive,
        metavar="N",
        help="open transactions (10)",
    )
    q.add_argument(
        "-A", "--perm-nb", type=_positive, metavar="N", help="permissions per node (5)"
    )
    q.add_argument(
        "-M",
        "--path-max",
        type=_positive,
        metavar="N",
        help="path length (2048, at most 2048)",
    )
    q.add_argument(
        "-Q",
        "--quota",
        type=_assignment,
        action="append",
        default=[],
        metavar="NAME=N",
        help="set any quota by its GET_QUOTA name",
    )
    q.add_argument(
        "-q",
        "--quota-soft",
        type=_assignment,
        action="append",
        default=[],
        metavar="memory=N",
        help="soft quota (only memory)",
    )
    q.add_argument(
        "--quota-rule",
        choices=[r.value for r in QuotaRule],
        default=QuotaRule.AT_MOST_N.value,
        help="4.21: at most N (default); 4.22: below N",
    )
    q.add_argument(
        "-w",
        "--timeout",
        type=_assignment,
        action="append",
        default=[],
        metavar="watch-event=SECONDS",
        help="watch-event timeout (20)",
    )
    q.add_argument("-p", "--priv-domid", type=_positive, default=0, metavar="DOMID")
    return p


def _limits(args: argparse.Namespace) -> Limits:
    values: dict[str, int] = {}
    for option, name in (
        ("entry_nb", "nodes"),
        ("entry_size", "node_size"),
        ("watch_nb", "watches"),
        ("transaction", "transactions"),
        ("perm_nb", "node_permissions"),
    ):
        if getattr(args, option) is not None:
            values[name] = getattr(args, option)
    if args.path_max is not None:
        values["path_max"] = min(args.path_max, 2048)
    for name, value in args.quota:
        values[field_for(name)] = value
    for name, value in args.quota_soft:
        if name != "memory":
            raise InvalidArgument(f"-q only takes memory, not {name!r}")
        values["soft_memory"] = value
    return dataclasses.replace(Limits(), **values)


def config_from_args(args: argparse.Namespace, argv: Sequence[str] = ()) -> Config:
    """The daemon's settings; ``argv``: the arguments, for a live update."""
    timeout = 20.0
    for name, value in args.timeout:
        if name != "watch-event":
            raise InvalidArgument(f"unknown timeout {name!r}")
        timeout = float(value)
    engine = EngineConfig(
        priv_domid=args.priv_domid,
        limits=_limits(args),
        quota_rule=QuotaRule(args.quota_rule),
    )
    socket_path = args.socket or rundir.socket_path()
    return Config(
        socket_path=socket_path,
        # C writes its live-update state in $XENSTORED_RUNDIR; without it,
        # beside the socket (which is C's /var/run/xenstored by default).
        rundir=os.environ.get("XENSTORED_RUNDIR")
        or os.path.dirname(os.path.abspath(socket_path)),
        engine=engine,
        pid_file=args.pid_file,
        log_file=args.log_file,
        trace_file=args.trace_file,
        verbose=args.verbose,
        watch_event_timeout=timeout,
        host_dir=args.host_dir,
        quiesce_timeout=args.quiesce_timeout,
        domain_init=not args.no_domain_init,
        master_domid=args.master_domid,
        live_update=args.live_update,
        restore_file=args.restore,
        hypervisor=args.hypervisor,
        argv=tuple(argv),
    )


#: Choices of ``--event-loop``.
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``--event-loop NAME`` asks for (None: asyncio's own).

    uvloop is optional: the daemon only uses the loop's portable
    interface, and it is about 15% more requests per second for a single
    client (docs/benchmarks.md).

    Raises:
        InvalidArgument: uvloop was asked for and is not installed.
    """
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise InvalidArgument(
                "uvloop is not installed (pip install 'pyxenstored[uvloop]')"
            ) from None
        return None
    return uvloop.new_event_loop


def _absolute(config: Config) -> Config:
    """``config`` with every path absolute: the forked daemon runs in ``/``."""

    def absolute(path: str | None) -> str | None:
        return None if path is None else os.path.abspath(path)

    return dataclasses.replace(
        config,
        socket_path=os.path.abspath(config.socket_path),
        pid_file=absolute(config.pid_file),
        log_file=absolute(config.log_file),
        trace_file=absolute(config.trace_file),
        host_dir=absolute(config.host_dir),
    )


def _warn_about_accepted_options(args: argparse.Namespace) -> None:
    if args.keep_orphans:
        log.warning(
            "-K/--keep-orphans is ignored: a dead domain's nodes are removed, "
            "as a new domain reusing its domid must not inherit them"
        )
    if args.internal_db == "off":
        log.info("-I off has no effect: the store is always in memory")


def _log_to_syslog() -> None:
    """Send the log to syslog once stderr is gone (C: ``openlog``)."""
    handler = logging.handlers.SysLogHandler(
        "/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
    )
    handler.setFormatter(logging.Formatter("pyxenstored[%(process)d]: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)


class _ReportingDaemon(Daemon):
    """The daemon, calling ``on_ready`` once it serves its socket."""

    def __init__(
        self,
        config: Config,
        platform: Platform | None,
        on_ready: Callable[[], None],
        *,
        engine: Engine | None = None,
        restored: Restored | None = None,
    ) -> None:
        super().__init__(config, engine=engine, platform=platform, restored=restored)
        self._on_ready = on_ready

    async def start(self) -> None:
        await super().start()
        self._on_ready()


def _saved_state(config: Config) -> tuple[Engine, Restored | None] | None:
    """The engine a live update (``-U``) or ``--restore FILE`` starts with.

    Raises:
        StateUnreadable: the state file is missing or not a valid stream.
        RestoreError: it decodes but is not a consistent state.
    """
    if config.live_update:
        path = os.path.join(config.rundir, STATE_FILE)
    elif config.restore_file:
        path = config.restore_file
    else:
        return None
    stream = load_state(path)
    engine = Engine(config.engine)
    # Restored transactions start their age now (a later update waits on it).
    engine.clock = time.monotonic
    try:
        if config.live_update:
            restored = restore(engine, stream)
            log.info(
                "live update: %s read: %d records, %d nodes",
                path,
                len(stream.records),
                len(engine.store),
            )
            return engine, restored
        restore(engine, cold_start(stream))
    except RestoreError as error:
        raise RestoreError(error.offset, f"{path}: {error.reason}") from None
    log.info("restored %d nodes from %s", len(engine.store), path)
    return engine, None


def _ports(restored: Restored) -> dict[int, int]:
    """Local port -> domid of the rings a live update carried over."""
    return {
        saved.evtchn: conn.domid
        for conn, saved in restored.connections
        if saved.conn_type is ConnType.RING
    }


def _parent(launch: startup.Launch, output_pid: bool) -> int:
    """Wait for the forked daemon; exit as its start-up went."""
    try:
        report = launch.wait()
    except KeyboardInterrupt:
        print(
            f"pyxenstored: interrupted; the daemon is pid {launch.pid}", file=sys.stderr
        )
        return 130
    if report.outcome is Outcome.FAILED:
        print(f"pyxenstored: {report.message}", file=sys.stderr)
        return 1
    if report.outcome is Outcome.READY and output_pid:
        print(launch.pid, flush=True)
    return 0


def _serve(
    config: Config,
    factory: Callable[[], asyncio.AbstractEventLoop] | None,
    reporter: startup.Reporter,
    output_pid: bool,
) -> int:
    """Start and run the daemon in this process (forked or not)."""
    detach = reporter.waiting
    detached = False

    def fail(message: str) -> int:
        if not reporter.report(Report(Outcome.FAILED, message)):
            print(f"pyxenstored: {message}", file=sys.stderr)
        if config.log_file or detached:  # else the log is that same stderr
            log.error("%s", message)
        return 1

    def ready() -> None:
        if pid_file is not None:
            pid_file.write()
        if config.live_update:
            # Taken over: the saved state is used up (C removes it too).
            # systemd was told READY by the first program of this process.
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(config.rundir, STATE_FILE))
        else:
            state = "READY=1" + (f"\nMAINPID={os.getpid()}" if detach else "")
            try:
                startup.notify_systemd(state)
            except OSError as error:
                log.warning("cannot notify systemd: %s", error)
        if output_pid and not detach:
            print(os.getpid(), flush=True)
        reporter.report(Report(Outcome.READY))
        if detach:
            nonlocal detached
            detached = True
            startup.detach_stdio()
            if not config.log_file:
                _log_to_syslog()

    try:
        saved = _saved_state(config)
    except (StateUnreadable, RestoreError) as error:
        return fail(str(error))
    engine, restored = saved if saved is not None else (None, None)
    pid_file: PidFile | None = None
    if config.pid_file:
        try:
            pid_file = PidFile.acquire(config.pid_file)
        except PidFileHeld as held:
            log.warning("%s; not starting", held)
            reporter.report(Report(Outcome.HELD, str(held)))
            return 0
        except OSError as error:
            return fail(f"cannot use the pid file {config.pid_file}: {error.strerror}")
    try:
        try:
            if restored is not None:
                platform = make_platform(
                    config, evtchn_fd=restored.evtchn_fd, ports=_ports(restored)
                )
            else:
                platform = make_platform(config)
        except ValueError as error:
            return fail(str(error))
        # The pid file is ours to hold: the daemon would open and close it
        # to write the pid, and closing any descriptor drops our lock.
        daemon = _ReportingDaemon(
            dataclasses.replace(config, pid_file=None),
            platform,
            ready,
            engine=engine,
            restored=restored,
        )
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(daemon.serve())
    except (SocketInUse, OSError) as error:
        return fail(str(error))
    finally:
        if pid_file is not None:
            pid_file.release()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, argv)
        factory = loop_factory(args.event_loop)
    except InvalidArgument as error:
        parser.error(error.message)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    try:
        logging.basicConfig(
            filename=config.log_file,
            level=level,
            format="%(asctime)s pyxenstored[%(process)d] %(levelname)s %(message)s",
        )
    except OSError as error:
        print(f"pyxenstored: cannot open the log file: {error}", file=sys.stderr)
        return 1
    if args.live_update and not args.no_fork and not config.log_file:
        # The program we replace had forked and detached: stderr is
        # /dev/null, and its log went to syslog.
        _log_to_syslog()
    _warn_about_accepted_options(args)
    log.info("event loop: %s", "asyncio" if factory is None else "uvloop")
    reporter = startup.Reporter(None)
    if not args.no_fork and not args.live_update:
        config = _absolute(config)
        side = startup.fork()
        if isinstance(side, startup.Launch):
            return _parent(side, args.output_pid)
        reporter = side
    return _serve(config, factory, reporter, args.output_pid)


if __name__ == "__main__":
    sys.exit(main())
