"""``dicom-node demo``: the whole job on one machine, from a phantom CT to SEG + SR in Orthanc.

It uses a running Redis and Orthanc where they answer on their default ports,
and otherwise starts private ones on loopback in a temporary folder. It starts
the node in this process and one worker as a child process, sends a synthetic
chest CT, waits for the results to arrive in Orthanc, prints what arrived, and
cleans up everything it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import click
import yaml
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.cli.options import configure_logging
from dicom_node.export import echo, send_files
from dicom_node.node import Node
from dicom_node.result_summary import segment_labels, sr_measurements
from dicom_node.services import (
    ServiceError,
    free_port,
    orthanc_rest,
    orthanc_study_objects,
    redis_ping,
    run_orthanc,
    run_redis,
    wait_until,
)
from dicom_node.settings import DestinationSettings, load_settings
from dicom_node.state import JobState

logger = logging.getLogger(__name__)

_TOLERANCE = 0.05


@contextlib.contextmanager
def _broker(folder: Path) -> Iterator[str]:
    try:
        if redis_ping(6379):
            click.echo("broker: using the Redis already running on 127.0.0.1:6379 (db 15)")
            yield "redis://127.0.0.1:6379/15"
            return
    except OSError:
        pass
    with run_redis(folder / "redis") as redis:
        click.echo(f"broker: started redis-server on 127.0.0.1:{redis.port}")
        yield redis.url


@contextlib.contextmanager
def _archive(folder: Path) -> Iterator[tuple[DestinationSettings, str]]:
    default = DestinationSettings(name="archive", ae_title="ORTHANC", host="127.0.0.1", port=4242)
    pynetdicom_log = logging.getLogger("pynetdicom")
    level = pynetdicom_log.level
    pynetdicom_log.setLevel(logging.CRITICAL)  # a refused probe is expected, not an error
    try:
        running = echo("DICOM_NODE", default)[0]
    finally:
        pynetdicom_log.setLevel(level)
    with contextlib.suppress(OSError, ValueError):
        if running and orthanc_rest("http://127.0.0.1:8042", "/system"):
            click.echo("archive: using the Orthanc already running on 127.0.0.1:4242 / :8042")
            yield default, "http://127.0.0.1:8042"
            return
    with run_orthanc(folder / "orthanc") as orthanc:
        click.echo(
            f"archive: started Orthanc, DICOM 127.0.0.1:{orthanc.dicom_port}, "
            f"HTTP {orthanc.http_url}"
        )
        dest = DestinationSettings(
            name="archive", ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port
        )
        yield dest, orthanc.http_url


@contextlib.contextmanager
def _worker(config_path: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "worker", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _demo_web(port: int, password: str) -> dict[str, object]:
    """The dashboard of the demo: loopback only, one admin, a fresh password and secret."""
    from dicom_node.web.auth import hash_password

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            port = 0  # taken: let the OS pick; the URL is printed
    return {
        "enabled": True,
        "demo": True,
        "host": "127.0.0.1",
        "port": port,
        "session_secret": secrets.token_urlsafe(32),
        "users": [{"name": "admin", "password_hash": hash_password(password), "role": "admin"}],
    }


def _print_summary(
    files: list[bytes], true_volumes: dict[str, float], label_names: dict[str, str]
) -> bool:
    datasets: list[Dataset] = [dcmread(BytesIO(raw)) for raw in files]
    segs = [ds for ds in datasets if ds.Modality == "SEG"]
    srs = [ds for ds in datasets if ds.Modality == "SR"]
    for ds in datasets:
        click.echo(
            f"  {ds.Modality:3s} series {ds.SeriesNumber}: '{ds.SeriesDescription}' "
            f"({ds.SOPClassUID.name})"
        )
    if len(segs) != 1 or len(srs) != 1:
        click.echo(f"expected one SEG and one SR, got {len(segs)} and {len(srs)}")
        return False
    labels = segment_labels(segs[0])
    measured = sr_measurements(srs[0])
    ok = True
    click.echo(f"  {'segment':<12} {'measured mL':>12} {'true mL':>10} {'error':>8}")
    for number, label in sorted(labels.items()):
        volume = measured.get(number, {}).get("Volume")
        key = label_names.get(label, "")
        truth = true_volumes.get(key)
        if volume is None or truth is None:
            click.echo(f"  {label:<12} {'missing':>12}")
            ok = False
            continue
        error = (volume - truth) / truth
        ok = ok and abs(error) <= _TOLERANCE
        click.echo(f"  {label:<12} {volume:>12.1f} {truth:>10.1f} {error:>+8.1%}")
    return ok


@click.command()
@click.option("--slices", default=120, show_default=True, help="Phantom slices (>= 100).")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to wait for results.")
@click.option("--keep", is_flag=True, help="Keep the temporary folder (logs, spool).")
@click.option(
    "--dashboard-port", default=8080, show_default=True, help="Dashboard port (busy: any free)."
)
@click.option("--stay", is_flag=True, help="Keep the node and its dashboard up until Ctrl-C.")
@click.option("-v", "--verbose", count=True)
def demo(
    slices: int, timeout: float, keep: bool, dashboard_port: int, stay: bool, verbose: int
) -> int:
    """Send a synthetic chest CT through the node and show the results from Orthanc."""
    configure_logging(verbose, quiet=not verbose)
    folder = Path(tempfile.mkdtemp(prefix="dicom-node-demo-"))
    click.echo(f"demo folder: {folder}")
    pipelines_dir = Path("config/pipelines").resolve()
    if not pipelines_dir.is_dir():
        raise click.ClickException("run the demo from the repository root (config/pipelines)")
    password = secrets.token_urlsafe(9)  # a fresh one per demo, printed below
    try:
        with contextlib.ExitStack() as stack:
            broker_url = stack.enter_context(_broker(folder))
            dest, archive_url = stack.enter_context(_archive(folder))
            config = {
                "spool_dir": str(folder / "spool"),
                "pipelines_dir": str(pipelines_dir),
                "scp": {"ae_title": "DICOM_NODE", "host": "127.0.0.1", "port": free_port(),
                        "min_free_bytes": 0},
                "stability": {"quiet_seconds": 3, "poll_seconds": 0.5},
                "broker": {"url": broker_url},
                "export": {
                    "destinations": [dest.model_dump(mode="json", exclude={"password"})],
                    "backoff_initial_s": 2,
                },
                "job_poll_seconds": 0.5,
                "web": _demo_web(dashboard_port, password),
            }  # fmt: skip
            config_path = folder / "node.yaml"
            config_path.write_text(yaml.safe_dump(config))
            settings = load_settings(config_path)

            node = Node(settings)
            handle = node.start()
            stack.callback(node.stop)
            click.echo(f"node: receiving as DICOM_NODE on 127.0.0.1:{handle.port}")
            if node.web is not None:
                click.echo(f"dashboard: {node.web.url}  (log in as admin, password {password})")
            stack.enter_context(_worker(config_path, folder / "worker.log"))
            click.echo(f"worker: started (log {folder / 'worker.log'})")

            t0 = time.monotonic()
            from dicom_node.phantom import ChestPhantom  # scipy: the worker extra's

            phantom = ChestPhantom(slices=slices)
            study = phantom.write(folder / "phantom")
            click.echo(
                f"phantom: {slices} slices {phantom.size}x{phantom.size} CT written in "
                f"{time.monotonic() - t0:.1f} s"
            )
            node_dest = DestinationSettings(
                name="node", ae_title="DICOM_NODE", host="127.0.0.1", port=handle.port
            )
            t0 = time.monotonic()
            results = send_files("DEMO_MODALITY", node_dest, list(study.paths))
            sent_at = time.monotonic()
            failed = [r for r in results if not r.ok]
            if failed:
                raise click.ClickException(f"{len(failed)} instances refused: {failed[0].error}")
            click.echo(f"sent: {len(results)} instances in {sent_at - t0:.1f} s")
            click.echo("waiting for the study to complete, the worker to run, the export ...")

            def arrived() -> bool:
                jobs = node.state.jobs(list(JobState))
                if any(j.state in (JobState.FAILED, JobState.SKIPPED) for j in jobs):
                    raise click.ClickException(f"job ended {jobs[0].state}: {jobs[0].reason}")
                return bool(jobs) and all(j.state is JobState.DONE for j in jobs)

            try:
                wait_until(arrived, timeout, "results", interval_s=0.25)
            except ServiceError as exc:
                raise click.ClickException(f"{exc}; see {folder}/worker.log") from exc
            elapsed = time.monotonic() - sent_at
            files = orthanc_study_objects(archive_url, study.study_uid, {"SEG", "SR"})
            click.echo(f"arrived in Orthanc ({archive_url}):")
            spec = node.pipelines["ct-body-lung"]
            ok = _print_summary(
                files, study.true_volumes_ml, {label.label: label.name for label in spec.labels}
            )
            click.echo(f"seconds from last instance sent to results stored: {elapsed:.1f}")
            if not ok:
                click.echo(f"FAILED: a volume is off by more than {_TOLERANCE:.0%}")
                return 1
            click.echo("demo ok")
            if stay and node.web is not None:
                click.echo(f"dashboard stays up at {node.web.url}; Ctrl-C stops everything")
                with contextlib.suppress(KeyboardInterrupt):
                    threading.Event().wait()
            return 0
    finally:
        if keep:
            click.echo(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
