"""``dicom-node status`` on the node machine and over the REST API of a real uvicorn server."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI

from dicom_node.cli import main
from dicom_node.logs import JsonFormatter
from dicom_node.settings import Settings
from dicom_node.web import create_app, start_web_server
from dicom_node.web.models import OverviewPublic
from dicom_node.web.server import WebServerHandle
from tests.unit.web.conftest import PASSWORDS


@pytest.fixture
def config_file(settings: Settings, tmp_path: Path) -> Path:
    """The test node's configuration as a YAML file, as ``status`` reads it."""
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"web"})))
    return path


@pytest.fixture
def served(app: FastAPI, settings: Settings) -> Iterator[WebServerHandle]:
    """The dashboard served by uvicorn in a thread, on a port the OS picked."""
    handle = start_web_server(app, settings.web)
    yield handle
    handle.stop()


@pytest.mark.usefixtures("done_job", "failed_job")
def test_status_on_the_node_machine(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "received     last hour 16 instances, 2 studies" in out
    assert "DONE 1" in out
    assert "FAILED 1" in out
    assert "failures     1 in the last 24 h" in out
    assert "queues       cpu 0" in out
    assert "workers      0 online" in out
    assert main(["status", "--config", str(config_file), "--json"]) == 0
    overview = OverviewPublic.model_validate_json(capsys.readouterr().out)
    assert overview.failures_24h == 1


@pytest.mark.usefixtures("done_job")
def test_status_over_the_api(
    served: WebServerHandle,
    config_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert served.port > 0
    assert served.url == f"http://127.0.0.1:{served.port}"
    monkeypatch.setenv("DICOM_NODE_STATUS_PASSWORD", PASSWORDS["viewer"])
    assert main(["status", "--url", served.url, "--user", "viewer", "--json"]) == 0
    remote = OverviewPublic.model_validate_json(capsys.readouterr().out)
    assert main(["status", "--config", str(config_file), "--json"]) == 0
    local = OverviewPublic.model_validate_json(capsys.readouterr().out)
    assert remote.last_hour == local.last_hour
    assert remote.jobs_by_state == local.jobs_by_state
    monkeypatch.setenv("DICOM_NODE_STATUS_PASSWORD", "wrong")
    assert main(["status", "--url", served.url, "--user", "viewer"]) == 1
    assert "refused the name or password" in capsys.readouterr().err


def test_server_stops_and_frees_its_port(app: FastAPI, settings: Settings) -> None:
    handle = start_web_server(app, settings.web)
    with socket.create_connection(("127.0.0.1", handle.port), timeout=2):
        pass
    handle.stop()
    assert not handle.thread.is_alive()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", handle.port), timeout=2),
    ):
        pass


def test_json_log_lines() -> None:
    record = logging.LogRecord(
        "dicom_node.x", logging.WARNING, __file__, 1, "job %d: %s", (7, "ok"), None
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING"
    assert line["logger"] == "dicom_node.x"
    assert line["message"] == "job 7: ok"
    assert line["time"].endswith("+00:00")


def test_create_app_opens_its_own_state_db(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from tests.unit.web.conftest import login

    app = create_app(settings)  # no node in this process: it opens the spool and state DB
    with TestClient(app) as browser:
        login(browser, "admin")
        assert browser.get("/api/overview").status_code == 200
    assert app.state.ctx.owns_state is True
