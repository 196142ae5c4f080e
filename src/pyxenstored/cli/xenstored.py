"""``pyxenstored``: the daemon's command line.

Quota options carry C xenstored's names, meanings and defaults
(PROTOCOL.md section 10).  The daemon always runs in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence

from pyxenstored import __version__
from pyxenstored.engine.engine import EngineConfig
from pyxenstored.errors import InvalidArgument
from pyxenstored.server.config import Config, default_socket_path
from pyxenstored.server.daemon import Daemon, SocketInUse
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyxenstored",
        description="xenstore daemon (foreground). Serves dom0 clients on a "
        "Unix socket.",
    )
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
    p.add_argument("-F", "--pid-file", metavar="FILE", help="write the pid here")
    p.add_argument("--log-file", metavar="FILE", help="log here instead of stderr")
    p.add_argument(
        "-T", "--trace-file", metavar="FILE", help="trace every request, reply, event"
    )
    p.add_argument(
        "-v", "-V", "--verbose", action="count", default=0, help="more logging"
    )
    p.add_argument("-N", "--no-fork", action="store_true", help="accepted; always so")
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


def config_from_args(args: argparse.Namespace) -> Config:
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
    return Config(
        socket_path=args.socket or default_socket_path(),
        engine=engine,
        pid_file=args.pid_file,
        log_file=args.log_file,
        trace_file=args.trace_file,
        verbose=args.verbose,
        watch_event_timeout=timeout,
        host_dir=args.host_dir,
        quiesce_timeout=args.quiesce_timeout,
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
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
    log.info("event loop: %s", "asyncio" if factory is None else "uvloop")
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(Daemon(config).serve())
    except SocketInUse as error:
        print(f"pyxenstored: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"pyxenstored: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
