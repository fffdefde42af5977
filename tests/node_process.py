"""Run ``dicom-node serve`` and ``dicom-node worker`` as real processes for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import yaml

from dicom_node.export import echo
from dicom_node.services import free_port, wait_until
from dicom_node.settings import DestinationSettings

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class NodeProcess:
    """A running ``dicom-node serve``."""

    proc: subprocess.Popen[bytes]
    port: int
    config_path: Path
    spool_dir: Path
    log_path: Path


def write_config(folder: Path, broker_url: str, archive_port: int, **extra: Any) -> Path:
    """Write a node configuration for a test; ``extra`` updates top-level sections."""
    config: dict[str, Any] = {
        "spool_dir": str(folder / "spool"),
        "pipelines_dir": str(REPO / "config" / "pipelines"),
        "scp": {"ae_title": "DICOM_NODE", "host": "127.0.0.1", "port": free_port(),
                "min_free_bytes": 0, "acse_timeout_s": 5, "dimse_timeout_s": 30,
                "network_timeout_s": 30},
        "stability": {"quiet_seconds": 2, "poll_seconds": 0.25},
        "broker": {"url": broker_url},
        "export": {"destinations": [{"name": "archive", "ae_title": "ORTHANC",
                                     "host": "127.0.0.1", "port": archive_port,
                                     "timeout_s": 5}],
                   "backoff_initial_s": 1, "backoff_max_s": 5},
        "job_poll_seconds": 0.25,
    }  # fmt: skip
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def run_node(config_path: Path) -> Iterator[NodeProcess]:
    """Start ``dicom-node serve`` and wait until it answers C-ECHO."""
    config = yaml.safe_load(config_path.read_text())
    port = int(config["scp"]["port"])
    log_path = config_path.parent / "node.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    dest = DestinationSettings(
        name="node", ae_title="DICOM_NODE", host="127.0.0.1", port=port, timeout_s=2
    )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"node exited: {log_path.read_text()[-3000:]}")
            return echo("TEST_SCU", dest)[0]

        wait_until(ready, 60, "dicom-node serve", interval_s=0.2)
        yield NodeProcess(proc, port, config_path, Path(config["spool_dir"]), log_path)
    finally:
        _stop(proc)


@contextmanager
def run_worker(config_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``dicom-node worker`` as a real Celery worker process."""
    log_path = config_path.parent / "worker.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "worker", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        yield proc
    finally:
        _stop(proc)


def storescu(
    port: int, files: list[Path] | Path, *, calling_ae: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    """Send files (or a folder, scanned) with dcmtk's storescu; TCP_NODELAY is set."""
    args = ["storescu", "-v", "-aet", calling_ae, "-aec", "DICOM_NODE", "-to", "10", "-ta", "10",
            "-td", "30"]  # fmt: skip
    if isinstance(files, Path):
        args += ["+sd", "+r", "127.0.0.1", str(port), str(files)]
    else:
        args += ["127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TCP_NODELAY="1"),
        check=False,
    )


def child_pids(pid: int) -> list[int]:
    """The PIDs of a process's children (a Celery worker's pool processes)."""
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in result.stdout.split()]


def storescu_as_they_are(
    port: int, files: list[Path], folder: Path, *, calling_ae: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    """Send files in one association, each in its own SOP class and transfer syntax.

    storescu's default proposals cover neither every storage SOP class (e.g. Legacy
    Converted Enhanced CT) nor compressed syntaxes; a profile (``-xf``) proposes
    exactly what the files are, so nothing is converted on the way.
    """
    pairs = sorted(
        {
            (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            for meta in (pydicom.dcmread(f, stop_before_pixels=True).file_meta for f in files)
        }
    )
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for index, ts in enumerate(syntaxes):
        lines += [f"[TS{index}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[PC]"]
    for index, (sop_class, ts) in enumerate(pairs, start=1):
        lines.append(f"PresentationContext{index} = {sop_class}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[P]", "PresentationContexts = PC"]
    config = folder / "storescu-profile.cfg"
    config.write_text("\n".join(lines) + "\n")
    args = ["storescu", "-v", "-aet", calling_ae, "-aec", "DICOM_NODE", "-to", "10", "-ta", "10",
            "-td", "30", "-xf", str(config), "P", "127.0.0.1", str(port)]  # fmt: skip
    args += [str(f) for f in files]
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TCP_NODELAY="1"),
        check=False,
    )
