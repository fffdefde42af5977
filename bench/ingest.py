"""Ingest throughput: dcmtk ``storescp``, Orthanc and ``dicom-node serve`` side by side.

One run sends the same synthetic CT study (``ChestPhantom``, 512x512 16-bit
slices) with dcmtk ``storescu`` to four receivers on loopback (the node once
with each ``scp.engine``) and prints, for
each, the median wall time over ``--repeat`` repetitions, the throughput and
the ratio to the dcmtk anchor. It does this twice: one ``storescu`` sending
everything, then four ``storescu`` processes sending disjoint quarters at once
(the anchor is then ``storescp --fork``).

Every repetition gets a fresh, empty receiver (new folder, new process), so
no target can acknowledge a duplicate without writing it. A repetition only
counts if every ``storescu`` exited 0, logged no error, and the receiver holds
exactly the number of instances sent; otherwise the row is marked BROKEN and
the script exits 1, so a broken target never passes for a fast one.

Nothing here asserts on time (DESIGN.md: benchmarks print, tests assert).

Run from the repository root::

    .venv/bin/python bench/ingest.py [--slices 300] [--repeat 3] [--node-processes N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dicom_node.export import echo
from dicom_node.phantom import ChestPhantom
from dicom_node.services import ServiceError, free_port, orthanc_rest, run_orthanc, wait_until
from dicom_node.settings import DestinationSettings, ScpSettings
from dicom_node.spool import Spool
from dicom_node.state.db import InstanceRecord, StateDB

REPO = Path(__file__).resolve().parents[1]

#: dcmtk and Orthanc 1.10 on Linux leave Nagle's algorithm on unless told, which
#: costs ~40 ms per instance; every process this script starts gets this environment.
NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}

CALLING_AE = "BENCH_SCU"
PARALLEL_SENDERS = 4
#: Generous: a 300-slice send takes seconds; this only keeps a hung target from hanging the run.
SEND_TIMEOUT_S = 600
READY_TIMEOUT_S = 60
#: Spawned receiver processes import the node and bind within seconds.
EXTRA_RECEIVERS_TIMEOUT_S = 30
MB = 1_000_000


@dataclass(frozen=True, slots=True)
class Receiver:
    """A receiver started for one repetition.

    Attributes
    ----------
    port : int
        Its DICOM port on 127.0.0.1.
    ae_title : str
        Its AE title (the called AE of ``storescu``).
    count : Callable[[], int]
        How many instances it holds now.
    """

    port: int
    ae_title: str
    count: Callable[[], int]


#: Starts a fresh receiver whose files go under the given folder.
Starter = Callable[[Path], AbstractContextManager[Receiver]]


@dataclass(frozen=True, slots=True)
class Target:
    """A receiver under test, as it appears in one row of the table."""

    label: str
    slug: str
    start: Starter


@dataclass(slots=True)
class Row:
    """The measurements of one target with one sender layout."""

    label: str
    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median_s(self) -> float | None:
        """Median wall time, or None when no repetition finished."""
        return statistics.median(self.seconds) if self.seconds else None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this script started, by its own PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_for_echo(proc: subprocess.Popen[bytes], port: int, ae_title: str, log: Path) -> None:
    """Wait until a receiver answers C-ECHO, failing fast if its process died.

    Raises
    ------
    dicom_node.services.ServiceError
        If the process exits or the deadline passes.
    """
    dest = DestinationSettings(
        name=ae_title, ae_title=ae_title, host="127.0.0.1", port=port, timeout_s=2
    )

    def ready() -> bool:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise ServiceError(f"{ae_title} exited with {proc.returncode}: {tail}")
        return echo(CALLING_AE, dest)[0]

    wait_until(ready, READY_TIMEOUT_S, ae_title, interval_s=0.1)


def _listening_sockets(port: int) -> int:
    """How many IPv4 sockets listen on ``port`` (one per SO_REUSEPORT receiver; Linux)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "0A":  # 0A: TCP_LISTEN
            count += 1
    return count


def _last_error(log: Path) -> str:
    """The last exception line of a log (``OSError: ...``), else its last line."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return (errors or lines or ["(empty log)"])[-1]


def _count_files(folder: Path, pattern: str) -> int:
    return sum(1 for path in folder.rglob(pattern) if path.is_file())


@contextmanager
def storescp(folder: Path, *, fork: bool) -> Iterator[Receiver]:
    """Run dcmtk ``storescp`` writing into ``folder/out``.

    Parameters
    ----------
    folder : pathlib.Path
        Fresh folder for this repetition.
    fork : bool
        Pass ``--fork``: one child process per association.

    Yields
    ------
    Receiver
        The running ``storescp``; ``count`` is the number of files written.
    """
    out = folder / "out"
    out.mkdir(parents=True)
    port = free_port()
    args = ["storescp", *(["--fork"] if fork else []), "-aet", "STORESCP", "-od", str(out)]
    log_path = folder / "storescp.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*args, str(port)], stdout=log, stderr=subprocess.STDOUT, env=NODELAY_ENV
        )
    try:
        _wait_for_echo(proc, port, "STORESCP", log_path)
        yield Receiver(port, "STORESCP", lambda: _count_files(out, "*"))
    finally:
        _stop(proc)


@contextmanager
def orthanc(folder: Path) -> Iterator[Receiver]:
    """Run Debian's Orthanc (``run_orthanc`` sets ``TCP_NODELAY=1`` itself).

    Yields
    ------
    Receiver
        The running Orthanc; ``count`` is ``CountInstances`` of ``/statistics``.
    """
    with run_orthanc(folder) as handle:

        def count() -> int:
            return int(orthanc_rest(handle.http_url, "/statistics")["CountInstances"])

        yield Receiver(handle.dicom_port, handle.ae_title, count)


def node_supports_processes() -> bool:
    """Whether the settings model knows ``scp.processes`` (several SCP processes)."""
    return "processes" in ScpSettings.model_fields


def write_node_config(
    folder: Path, processes: int | None, engine: str = "pynetdicom"
) -> tuple[Path, int]:
    """Write a ``dicom-node serve`` configuration that receives and never routes.

    Parameters
    ----------
    folder : pathlib.Path
        Fresh folder for this repetition; the spool goes in ``folder/spool``.
    processes : int or None
        ``scp.processes``, written only when given and supported.
    engine : str
        ``scp.engine``: ``pynetdicom`` or ``builtin``.

    Returns
    -------
    tuple[pathlib.Path, int]
        The YAML path and the SCP port.
    """
    port = free_port()
    scp: dict[str, object] = {
        "ae_title": "DICOM_NODE",
        "host": "127.0.0.1",
        "port": port,
        "min_free_bytes": 0,
        "engine": engine,
    }
    if processes is not None and node_supports_processes():
        scp["processes"] = processes
    config = {
        "spool_dir": str(folder / "spool"),
        "pipelines_dir": str(REPO / "config" / "pipelines"),
        "scp": scp,
        # No study completes during the run, so nothing routes and no job is sent.
        "stability": {"quiet_seconds": 3600},
        # Receiving needs no broker; nothing listens here and nothing is sent to it.
        "broker": {"url": f"redis://127.0.0.1:{free_port()}/0"},
    }
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


@contextmanager
def dicom_node(folder: Path, processes: int | None, engine: str) -> Iterator[Receiver]:
    """Run ``python -m dicom_node serve`` with a fresh spool.

    Yields
    ------
    Receiver
        The running node; ``count`` is the number of ``instances/**/*.dcm`` in its spool.
    """
    folder.mkdir(parents=True)
    config_path, port = write_node_config(folder, processes, engine)
    instances = folder / "spool" / "instances"
    log_path = folder / "node.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "serve", "-q", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=NODELAY_ENV,
        )
    try:
        _wait_for_echo(proc, port, "DICOM_NODE", log_path)
        if processes is not None and node_supports_processes() and processes > 1:
            # The node answers C-ECHO as soon as its own receiver is up; the extra
            # processes bind later. Timing before they listen would measure one process.
            try:
                wait_until(
                    lambda: _listening_sockets(port) >= processes,
                    EXTRA_RECEIVERS_TIMEOUT_S,
                    f"scp.processes={processes} (one listening socket each)",
                )
            except ServiceError as exc:
                raise ServiceError(
                    f"{exc}; last error in node.log: {_last_error(log_path)}"
                ) from exc
        yield Receiver(port, "DICOM_NODE", lambda: _count_files(instances, "*.dcm"))
    finally:
        _stop(proc)


def split(paths: Sequence[Path], parts: int) -> list[list[Path]]:
    """Split files into ``parts`` disjoint, contiguous runs of nearly equal length."""
    size, extra = divmod(len(paths), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        out.append(list(paths[start:end]))
        start = end
    return [part for part in out if part]


def send(receiver: Receiver, parts: list[list[Path]], folder: Path) -> tuple[float, list[str]]:
    """Run one ``storescu`` per part, all at once, and time them.

    Parameters
    ----------
    receiver : Receiver
        Where to send.
    parts : list[list[pathlib.Path]]
        Disjoint file lists, one per ``storescu`` process.
    folder : pathlib.Path
        Where the ``storescu`` logs go.

    Returns
    -------
    tuple[float, list[str]]
        Seconds from the first ``storescu`` start to the last exit, and what went wrong.
    """
    logs = [folder / f"storescu-{k + 1}.log" for k in range(len(parts))]
    procs: list[subprocess.Popen[bytes]] = []
    start = time.perf_counter()
    for part, log_path in zip(parts, logs, strict=True):
        args = [
            "storescu", "-aet", CALLING_AE, "-aec", receiver.ae_title,
            "-to", "30", "-ta", "30", "-td", "120",
            "127.0.0.1", str(receiver.port), *map(str, part),
        ]  # fmt: skip
        with log_path.open("wb") as log:
            procs.append(
                subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=NODELAY_ENV)
            )
    errors: list[str] = []
    for k, proc in enumerate(procs):
        try:
            proc.wait(timeout=SEND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _stop(proc)
            errors.append(f"storescu {k + 1} still running after {SEND_TIMEOUT_S} s; killed")
    seconds = time.perf_counter() - start
    for k, (proc, log_path) in enumerate(zip(procs, logs, strict=True)):
        if proc.returncode != 0:
            errors.append(f"storescu {k + 1} exited {proc.returncode} (log {log_path})")
        # dcmtk logs "E: ..." / "F: ..." for failures it does not turn into an exit code,
        # such as a C-STORE answered with a failure status.
        bad = [
            line
            for line in log_path.read_text(errors="replace").splitlines()
            if line.startswith(("E:", "F:"))
        ]
        if bad:
            errors.append(f"storescu {k + 1} logged {len(bad)} error line(s), first: {bad[0]}")
    return seconds, errors


def measure(
    target: Target,
    parts: list[list[Path]],
    expected: int,
    runs_dir: Path,
    repeat: int,
    *,
    keep: bool,
) -> Row:
    """Time ``repeat`` sends into fresh receivers of one target.

    Returns
    -------
    Row
        Times of the repetitions that passed every check, and the errors of the others.
    """
    row = Row(target.label)
    for rep in range(1, repeat + 1):
        folder = runs_dir / f"{target.slug}-x{len(parts)}-r{rep}"
        # Start every repetition with no dirty pages from the last one being written back.
        os.sync()
        try:
            with target.start(folder) as receiver:
                seconds, errors = send(receiver, parts, folder)
                stored = receiver.count()
        except (ServiceError, OSError, subprocess.SubprocessError, ValueError) as exc:
            seconds, errors, stored = 0.0, [f"receiver failed: {exc}"], expected
        if stored != expected:
            errors.append(f"expected {expected} instances, found {stored} (see {folder})")
        for error in errors:
            print(f"!!! ERROR {target.label} x{len(parts)} rep {rep}: {error}", flush=True)
        if errors:
            row.errors.extend(errors)
        else:
            row.seconds.append(seconds)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return row


def durable_floor(paths: Sequence[Path], runs_dir: Path, repeat: int) -> tuple[float, float]:
    """Time the node's durable path alone: no network, no DICOM parsing.

    Each repetition writes every file of the study, held in memory beforehand,
    the way the node keeps an instance (``Spool.write_atomic``: temporary file,
    fsync, rename, directory fsync) into a fresh spool; then again with the
    state row committed after each file (``StateDB.record_instance``, SQLite WAL
    with ``synchronous=FULL``). What it shows is what promise 1 costs on this
    disk, which no receiver that keeps it can go below.

    Returns
    -------
    tuple[float, float]
        Median seconds for the files alone, and for files plus rows.
    """
    blobs = [path.read_bytes() for path in paths]
    files_only: list[float] = []
    with_rows: list[float] = []
    for rep in range(repeat):
        for rows, times in ((False, files_only), (True, with_rows)):
            folder = runs_dir / f"floor-{int(rows)}-r{rep}"
            spool = Spool(folder / "spool")
            state = StateDB(f"sqlite:///{folder / 'spool' / 'state.db'}")
            os.sync()
            started = time.perf_counter()
            for k, blob in enumerate(blobs):
                sop = f"1.2.826.0.1.3680043.10.1{k}"
                target = spool.instance_path("1.2.3", "1.2.3.4", sop)
                spool.write_atomic(target, blob)
                if rows:
                    state.record_instance(
                        InstanceRecord(
                            "1.2.3", "1.2.3.4", sop, "1.2.840.10008.5.1.4.1.1.2",
                            "1.2.840.10008.1.2.1", str(target), len(blob), CALLING_AE,
                            None, "CT", "", "", {},
                        )
                    )  # fmt: skip
            times.append(time.perf_counter() - started)
            state.engine.dispose()
            shutil.rmtree(folder, ignore_errors=True)
    return statistics.median(files_only), statistics.median(with_rows)


def _tool_version(args: list[str]) -> str:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not found"
    first = (result.stdout or result.stderr).strip().splitlines()
    return first[0].strip("$ ") if first else "unknown"


def print_header(args: argparse.Namespace, study_bytes: int, files: int) -> None:
    """Print the machine, the study, the method and the caveats."""
    print(
        "ingest benchmark: storescu -> storescp | Orthanc | dicom-node serve, "
        "scp.engine pynetdicom and builtin (127.0.0.1)"
    )
    machine = f"nproc={os.cpu_count()}, {platform.platform()}"
    print(f"machine: {machine}, python {platform.python_version()}")
    dcmtk = _tool_version(["storescp", "--version"])
    print(f"tools: {dcmtk}; {_tool_version(['Orthanc', '--version'])}")
    print(
        f"study: {files} CT slices 512x512 16-bit (ChestPhantom), "
        f"{study_bytes / MB:.1f} MB (1 MB = 10^6 bytes)"
    )
    print(
        f"repetitions: {args.repeat}, median shown; each into a fresh, empty receiver; "
        "time = first storescu start to last storescu exit"
    )
    print(
        "TCP_NODELAY=1 is set in the environment of every storescu, storescp, Orthanc and "
        "dicom-node process (Nagle's algorithm otherwise costs ~40 ms per instance)"
    )
    print(
        "durability: storescp writes without fsync; Orthanc 1.10 fsyncs each file "
        "(SyncStorageArea defaults to true); dicom-node fsyncs each instance and commits "
        "its row before it answers success"
    )
    if args.node_processes is None:
        print("dicom-node SCP processes: the node's default (--node-processes not given)")
    elif node_supports_processes():
        print(f"dicom-node SCP processes: scp.processes = {args.node_processes}")
    else:
        print(
            f"dicom-node SCP processes: --node-processes {args.node_processes} SKIPPED: "
            "dicom_node.settings.ScpSettings has no field 'processes'"
        )
    print("vs storescp: median time / the dcmtk anchor's median in the same block (>1 is slower)")
    print()


def print_table(blocks: list[tuple[int, list[Row]]], study_bytes: int) -> None:
    """Print one block of rows per sender layout."""
    print(f"{'sender':<12}{'target':<18}{'median s':>10}{'MB/s':>9}{'vs storescp':>14}")
    for senders, rows in blocks:
        anchor = rows[0].median_s
        for k, row in enumerate(rows):
            sender = f"sender x{senders}" if k == 0 else ""
            median = row.median_s
            if median is None:
                cells = f"{'-':>10}{'-':>9}{'-':>14}"
            else:
                ratio = f"{median / anchor:14.2f}" if anchor else f"{'-':>14}"
                cells = f"{median:10.2f}{study_bytes / MB / median:9.1f}{ratio}"
            flag = "   BROKEN: see errors" if row.errors else ""
            print(f"{sender:<12}{row.label:<18}{cells}{flag}")
    broken = [(senders, row) for senders, rows in blocks for row in rows if row.errors]
    if broken:
        print()
        print("!!! ERRORS: these rows are not valid measurements")
        for senders, row in broken:
            for error in row.errors:
                print(f"!!! {row.label} x{senders}: {error}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300, help="CT slices (default 300).")
    parser.add_argument("--repeat", type=int, default=3, help="Repetitions per row (default 3).")
    parser.add_argument(
        "--node-processes",
        type=int,
        default=None,
        help="scp.processes for the node, if its settings support it.",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    args = parser.parse_args(argv)
    if args.slices < PARALLEL_SENDERS:
        parser.error(f"--slices must be at least {PARALLEL_SENDERS}, got {args.slices}")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 1 if any target failed a check."""
    args = parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install the Debian package 'dcmtk'", file=sys.stderr)
            return 2
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        study = ChestPhantom(slices=args.slices).write(root / "study")
        paths = list(study.paths)
        study_bytes = sum(path.stat().st_size for path in paths)
        print_header(args, study_bytes, len(paths))
        runs_dir = root / "runs"
        runs_dir.mkdir()

        def node(folder: Path) -> AbstractContextManager[Receiver]:
            return dicom_node(folder, args.node_processes, "pynetdicom")

        def node_builtin(folder: Path) -> AbstractContextManager[Receiver]:
            return dicom_node(folder, args.node_processes, "builtin")

        single = Target("storescp", "storescp", lambda f: storescp(f, fork=False))
        forked = Target("storescp --fork", "storescp-fork", lambda f: storescp(f, fork=True))
        layouts = [(1, single), (PARALLEL_SENDERS, forked)]
        blocks: list[tuple[int, list[Row]]] = []
        for senders, anchor in layouts:
            parts = split(paths, senders)
            targets = [
                anchor,
                Target("orthanc", "orthanc", orthanc),
                Target("dicom-node", "node", node),
                Target("dicom-node builtin", "node-builtin", node_builtin),
            ]
            rows = []
            for target in targets:
                row = measure(target, parts, len(paths), runs_dir, args.repeat, keep=args.keep)
                times = " ".join(f"{seconds:.2f}" for seconds in row.seconds) or "-"
                print(f"... {target.label} x{senders}: {times} s", flush=True)
                rows.append(row)
            blocks.append((senders, rows))
        floor_files, floor_rows = durable_floor(paths, runs_dir, args.repeat)
        print()
        print_table(blocks, study_bytes)
        anchor_s = blocks[0][1][0].median_s
        print()
        print("durable path alone, no network (what promise 1 costs on this disk):")
        for label, seconds in (
            ("fsync'd files", floor_files),
            ("fsync'd files + rows", floor_rows),
        ):
            ratio = f"{seconds / anchor_s:14.2f}" if anchor_s else f"{'-':>14}"
            print(f"{'':<12}{label:<22}{seconds:6.2f}{study_bytes / MB / seconds:9.1f}{ratio}")
        failed = any(row.errors for _, rows in blocks for row in rows)
    finally:
        if args.keep:
            print(f"\nkept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
