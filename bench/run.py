"""``make bench``: pyxenstored against C xenstored and oxenstored, one run.

Starts the three daemons, runs the same loads against each with the same
clients, and prints markdown tables with each figure and the ratio
pyxenstored / C.  The small-tree tables have a ceiling beside them: a
do-nothing Python server on pyxenstored's event loop
(``bench/nullserver.py``), run with the same clients in the same run, and
the ratio pyxenstored / that server.  Every figure is measured unpinned
(``--pin`` adds pinned single-client and big-tree latency figures after
the headline ones).
Raw results are JSON lines in
``/tmp/pyxenstored-bench/<time>/results.jsonl``, beside the tables
(``report.md``, which starts with the machine and its load), the plots
and the daemons' logs.

Phases (docs/benchmarks.md explains each load):

``micro``
    A small tree.  Sequential write+read, DIRECTORY of 1,000 children, a
    transaction of 10 writes, watch write-to-event latency and 1/4/16
    concurrent clients, from three clients: libxenstore (the peers'
    ``xsbench``), pyxenstored's own blocking ``Client`` on the socket
    (``bench/pyclient.py``), and simulated guests on shared-memory rings
    (the same client over ``GuestRing``).  The null server takes the two
    socket clients only.  Repeated ``--reps`` times, interleaved across the
    daemons; tables give medians and min-max, ratios per repetition.
``scale``
    A fresh daemon at a time, grown to 10, 1,000 and 10,000 domains of
    libxl's nodes: latency of single requests at each size, resident
    memory per node, and a write firing one watch among 10 or 10,000.

Usage::

    python -m bench.run [--quick] [--reps N] [--duration S] [--phases ...]
                        [--pin] [--out DIR] [--plots-dir DIR]
                        [--report-only FILE]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

from bench import report
from bench.daemons import (
    CEILING,
    KINDS,
    MICRO_KINDS,
    NAMES,
    PY_EVENT_LOOP,
    Daemon,
    DaemonDied,
    peers_dir,
    python_interpreter,
    start,
)
from bench.micro import prepare_guests, run_load, xsbench_path
from bench.scale import ScaleConfig, build_xslat, scale_daemon

__all__ = ["main"]

Record = dict[str, object]
CLIENTS = ("libxenstore", "pyxenstored", "ring")
#: The clients the null server takes: it has no guest rings.
SOCKET_CLIENTS = ("libxenstore", "pyxenstored")
DEFAULT_OUT = Path("/tmp/pyxenstored-bench")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Sink:
    """Appends records to results.jsonl as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[Record] = []
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def add(self, records: Sequence[Record]) -> None:
        for record in records:
            self.records.append(record)
            self._file.write(json.dumps(record) + "\n")
            if "error" in record:
                _log(
                    f"  FAILED: {record.get('daemon')} {record.get('test')}: "
                    f"{record['error']}"
                )
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def machine() -> Record:
    model = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "phase": "machine",
        "test": "machine",
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "python_interpreter": python_interpreter(),
        "kernel": platform.release(),
        "loadavg": _loadavg(),
        "source": _source_state(),
        "py_event_loop": _py_event_loop(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _py_event_loop() -> str:
    """The event loop pyxenstored runs on, as ``--event-loop`` resolves it."""
    from pyxenstored.cli.xenstored import loop_factory

    if loop_factory(PY_EVENT_LOOP[0]) is None:
        return "asyncio"
    return f"uvloop {importlib.metadata.version('uvloop')}"


def _source_state() -> str:
    """The commit under test, and how many files under src/ differ from it.

    With ``PYTHONPATH`` pointing at another copy of the sources (such as a
    ``git archive`` of one commit), says where pyxenstored came from.
    """
    import pyxenstored

    repo = Path(__file__).resolve().parents[1]
    package = Path(pyxenstored.__file__).resolve().parent
    if package != repo / "src" / "pyxenstored":
        return f"pyxenstored {pyxenstored.__version__} imported from {package.parent}"
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git work tree)"
    return f"{head}" + (
        f" + {len(changed)} changed files under src/" if changed else ""
    )


def _loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def _stop_on_signal() -> None:
    """SIGTERM/SIGHUP unwind like ^C, so every finally stops its daemons."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def run_micro(
    out: Path, sink: Sink, reps: int, duration: float, pin_cpu: int | None
) -> None:
    daemons: dict[str, Daemon] = {}
    try:
        for kind in MICRO_KINDS:
            daemons[kind] = start(kind, out / f"micro-{kind}")
            if kind != CEILING:
                prepare_guests(daemons[kind])
        _log(
            f"micro: {len(daemons)} daemons up, {len(CLIENTS)} clients, "
            f"{reps} repetitions{', then pinned' if pin_cpu is not None else ''}"
        )
        dead: set[str] = set()
        for rep in range(reps):
            for kind, daemon in daemons.items():
                if kind in dead:
                    continue
                for client in SOCKET_CLIENTS if kind == CEILING else CLIENTS:
                    t0 = time.monotonic()
                    records = run_load(client, daemon, duration, rep, pin_cpu)
                    sink.add(records)
                    _log(
                        f"  rep {rep + 1}/{reps} {NAMES[kind]:<18} / {client:<12}"
                        f" {time.monotonic() - t0:5.1f} s"
                    )
                    if not daemon.alive():
                        dead.add(kind)
                        sink.add(
                            [
                                {
                                    "phase": "micro",
                                    "daemon": kind,
                                    "client": client,
                                    "test": "*",
                                    "error": f"{NAMES[kind]} died (see {daemon.log})",
                                }
                            ]
                        )
                        break
    finally:
        for daemon in daemons.values():
            daemon.stop()


def run_scale(out: Path, sink: Sink, config: ScaleConfig) -> None:
    xslat = build_xslat(out / "build")
    for kind in KINDS:
        directory = out / f"scale-{kind}"
        _log(f"scale: {NAMES[kind]}")
        t0 = time.monotonic()
        try:
            sink.add(scale_daemon(kind, directory, config, xslat))
        except (DaemonDied, subprocess.SubprocessError, OSError) as exc:
            sink.add(
                [{"phase": "scale", "daemon": kind, "test": "*", "error": repr(exc)}]
            )
        finally:
            # The ring page files (sparse) are not worth keeping.
            for ring in directory.glob("ring-*"):
                ring.unlink()
        _log(f"scale: {NAMES[kind]} done in {time.monotonic() - t0:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="about 1 minute: 1 repetition, short loads, up to 1,000 domains",
    )
    p.add_argument(
        "--reps", type=int, help="repetitions of the small-tree loads (5; quick: 1)"
    )
    p.add_argument(
        "--duration", type=float, help="seconds per small-tree load (0.6; quick: 0.4)"
    )
    p.add_argument("--phases", default="micro,scale", help="micro,scale")
    p.add_argument("--sizes", help="domain counts (10,1000,5000,10000; quick: 10,1000)")
    p.add_argument(
        "--scale-reps", type=int, help="latency repetitions per size (5; quick: 1)"
    )
    p.add_argument(
        "--budget", type=float, help="seconds of population per daemon (110; quick: 30)"
    )
    p.add_argument(
        "--py-event-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="pyxenstored --event-loop (auto: uvloop when installed, as in "
        "the bench dependency group)",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="also run the single-client loads with the daemon and the client "
        "on one CPU (tables after the unpinned ones), and the scale phase's "
        "latencies the same way after the unpinned ones",
    )
    # Unpinned is the default now; kept so that older command lines work.
    p.add_argument("--no-pin", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"results parent directory ({DEFAULT_OUT})",
    )
    p.add_argument(
        "--plots-dir",
        type=Path,
        help="where the PNG plots go (default: the results directory)",
    )
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="RESULTS_JSONL",
        help="only print the tables (and plots) of an earlier run",
    )
    args = p.parse_args(argv)

    if args.report_only is not None:
        res = report.Results(report.load(args.report_only))
        print(report.tables(res))
        for path in report.plot(res, args.plots_dir or args.report_only.parent):
            _log(f"plot: {path}")
        return 0

    PY_EVENT_LOOP[0] = args.py_event_loop
    quick = args.quick
    reps = args.reps or (1 if quick else 5)
    duration = args.duration or (0.4 if quick else 0.6)
    default_sizes = "10,1000" if quick else "10,1000,5000,10000"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    config = ScaleConfig(
        sizes=sizes,
        budget=args.budget or (30.0 if quick else 110.0),
        lat_secs=0.2,
        reps=args.scale_reps or (1 if quick else 5),
        watch_counts=[10, 10000],
        pin_cpu=(os.cpu_count() or 1) - 1 if args.pin and not args.no_pin else None,
    )
    phases = set(args.phases.split(","))

    for tool in (xsbench_path(), peers_dir() / "start-c-xenstored.sh"):
        if not tool.exists():
            _log(f"missing {tool}: run `make deps` first (it builds the peers)")
            return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out / stamp
    out.mkdir(parents=True)
    latest = args.out / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(out.name)
    sink = Sink(out / "results.jsonl")
    sink.add(
        [
            {
                **machine(),
                "quick": quick,
                "reps": reps,
                "duration": duration,
                "sizes": sizes,
                "scale_reps": config.reps,
                "pin_cpu": config.pin_cpu,
                "budget": config.budget,
            }
        ]
    )
    _log(f"results: {sink.path}")
    load1 = float(_loadavg().split()[0])
    if load1 > 0.5:
        _log(
            f"warning: load average {load1} before starting: other processes "
            "share the 2 cores, the figures will be noisier"
        )
    _stop_on_signal()
    t0 = time.monotonic()
    try:
        for phase in ("micro", "scale"):
            if phase not in phases:
                continue
            try:
                if phase == "micro":
                    run_micro(out, sink, reps, duration, config.pin_cpu)
                else:
                    run_scale(out, sink, config)
            except Exception as exc:
                # Whatever broke (a daemon died, a client failed): the
                # phase's daemons are stopped; report it and go on.
                sink.add([{"phase": phase, "test": "*", "error": repr(exc)}])
    except KeyboardInterrupt:
        _log("interrupted: the daemons are stopped; partial results follow")
    finally:
        elapsed = time.monotonic() - t0
        sink.add(
            [
                {
                    "phase": "machine",
                    "test": "end",
                    "loadavg": _loadavg(),
                    "source": _source_state(),
                    "seconds": round(elapsed),
                }
            ]
        )
        sink.close()
    _log(f"total {elapsed:.0f} s")

    res = report.Results(sink.records)
    text = report.tables(res)
    (out / "report.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    for path in report.plot(res, args.plots_dir or out):
        _log(f"plot: {path}")
    _log(f"report: {out / 'report.md'}")
    _cleanup_leftovers(out)
    return 1 if res.errors else 0


def _cleanup_leftovers(out: Path) -> None:
    """Remove the daemons' sockets and scratch files; keep logs and results."""
    for directory in out.glob("*-*"):
        if not directory.is_dir() or directory.name == "build":
            continue
        for entry in directory.iterdir():
            scratch = entry.name.startswith(("ring-", "notify-", "port-"))
            # "db": oxenstored's dump of its whole tree at exit (45 MB)
            if scratch or entry.name == "db" or entry.is_socket():
                entry.unlink(missing_ok=True)
            elif entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
