"""The dashboard never shares a failure fate with the DICOM receiver.

``dicom-node web serve`` runs beside ``dicom-node serve`` as its own process;
``serve`` with ``web.enabled`` runs it as a child it restarts. Each test kills
one side with SIGKILL, for real, and shows the other still answering.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.export import echo
from dicom_node.services import OrthancHandle, free_port, wait_until
from dicom_node.settings import DestinationSettings
from dicom_node.web.auth import hash_password
from tests.node_process import REPO, run_node, write_config

pytestmark = pytest.mark.slow


def _web_section(port: int) -> dict[str, object]:
    return {
        "port": port,
        "session_secret": "web-process-secret-0123456789",
        "worker_ping_timeout_s": 0.2,
        "users": [{"name": "admin", "password_hash": hash_password("pw-9"), "role": "admin"}],
    }


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _echoes(port: int) -> bool:
    dest = DestinationSettings(ae_title="DICOM_NODE", host="127.0.0.1", port=port, timeout_s=2)
    return echo("TEST_SCU", dest)[0]


def _health(config: Path, role: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", "health", role, "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip


@pytest.fixture
def web_serve(
    tmp_path: Path, broker_url: str, orthanc: OrthancHandle
) -> Iterator[tuple[Path, int]]:
    """A config for serve (dashboard off) and a running ``dicom-node web serve`` beside it."""
    web_port = free_port()
    config = write_config(
        tmp_path, broker_url, orthanc.dicom_port, web=_web_section(web_port), log_level="WARNING"
    )
    log = (tmp_path / "web.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_node", "web", "serve", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{web_port}/health"), 60, "web serve")
        yield config, web_port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_web_serve_outlives_a_killed_receiver_and_the_other_way(
    web_serve: tuple[Path, int],
) -> None:
    config, port = web_serve
    health = f"http://127.0.0.1:{port}/health"
    with run_node(config) as node:
        assert _health(config, "web").returncode == 0
        assert _health(config, "serve").returncode == 0
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=30)
        # The receiver is gone; the dashboard answers as before, and says so of the node.
        assert _answers(health)
        assert not _echoes(node.port)
        failed = _health(config, "serve")
        assert failed.returncode == 1
        assert "unhealthy" in failed.stdout
    with run_node(config) as node:
        web_pid = _listener_pid(port)
        os.kill(web_pid, signal.SIGKILL)
        wait_until(lambda: not _answers(health), 30, "the dashboard gone")
        assert _echoes(node.port)
    # log_level: WARNING is honoured: the dashboard's INFO lines are not there.
    text = (config.parent / "web.log").read_text(errors="replace")
    assert "dashboard http://" in text
    assert " INFO " not in text


def _listener_pid(port: int) -> int:
    result = subprocess.run(
        ["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    )
    match = re.search(r"pid=(\d+)", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def test_serve_restarts_its_dashboard_child_and_keeps_receiving(
    tmp_path: Path, broker_url: str, orthanc: OrthancHandle
) -> None:
    web_port = free_port()
    config = write_config(
        tmp_path, broker_url, orthanc.dicom_port, web={**_web_section(web_port), "enabled": True}
    )
    health = f"http://127.0.0.1:{web_port}/health"
    with run_node(config) as node:
        wait_until(lambda: _answers(health), 60, "the dashboard child")
        child = _listener_pid(web_port)
        assert child != node.proc.pid, "the dashboard runs in serve's own process"
        os.kill(child, signal.SIGKILL)
        assert _echoes(node.port)  # the receiver never noticed
        wait_until(lambda: _answers(health), 60, "the dashboard restarted", interval_s=0.5)
        assert _listener_pid(web_port) not in (child, node.proc.pid)
        assert "dashboard process" in node.log_path.read_text(errors="replace")
