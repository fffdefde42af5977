"""The container images and the compose stack, run for real with podman.

``make container-images`` builds the node and worker images (and the companions
from Debian's packages, deploy/compose.offline.yaml); the stack comes up with
podman-compose: node, web, CPU worker, Redis, PostgreSQL, and the demo profile's
Orthanc and OHIF. A phantom CT goes in from this machine with dcmtk's storescu;
its SEG and SR must arrive in the stack's Orthanc. Then the stack goes down,
volumes and all.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from dicom_node.export import echo
from dicom_node.phantom import ChestPhantom
from dicom_node.services import free_port, orthanc_rest, orthanc_study_objects, wait_until
from dicom_node.settings import DestinationSettings
from dicom_node.web.auth import hash_password
from tests.node_process import REPO, storescu

# Building the images the first time on a fresh machine takes most of this.
pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(3600)]

#: The user the images run as: the secret files must be readable by it.
IMAGE_UID = 10001
PODMAN_ENV = {"CONTAINERS_CONF": str(REPO / "deploy" / "podman" / "containers.conf")}


@dataclass(frozen=True)
class Stack:
    """A running compose project and its ports on this machine."""

    project: str
    dicom_port: int
    web_port: int
    orthanc_http: str
    ohif_port: int
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run podman-compose on this project."""
        return subprocess.run(
            [str(REPO / ".venv" / "bin" / "podman-compose"), "-p", self.project,
             "-f", "deploy/compose.yaml", "-f", "deploy/compose.offline.yaml",
             "--profile", "demo", *args],
            capture_output=True, text=True, timeout=timeout, cwd=REPO, env=self.env,
            check=False,
        )  # fmt: skip

    def exec(self, service: str, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a command in a service's container."""
        return subprocess.run(
            ["podman", "exec", f"{self.project}_{service}_1", *command],
            capture_output=True, text=True, timeout=300, env=self.env, check=False,
        )  # fmt: skip

    def logs(self) -> str:
        """The last lines of every service's log, for a failure message."""
        out = []
        for service in ("node", "web", "worker-cpu", "postgres", "redis", "orthanc"):
            result = subprocess.run(
                ["podman", "logs", "--tail", "30", f"{self.project}_{service}_1"],
                capture_output=True, text=True, timeout=60, env=self.env, check=False,
            )  # fmt: skip
            out.append(f"--- {service}\n{result.stdout}{result.stderr}")
        return "\n".join(out)


def _secrets(folder: Path) -> Path:
    """The secret files a site makes (README "Deploying"), readable by the image's user."""
    folder.mkdir(mode=0o700)
    password = uuid.uuid4().hex
    users = [{"name": "admin", "password_hash": hash_password("admin-pw-5"), "role": "admin"}]
    files = {
        "postgres_password": password,
        "DICOM_NODE_DATABASE_URL": f"postgresql+psycopg://dicom_node:{password}@postgres/dicom_node",
        "DICOM_NODE_WEB__SESSION_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
        "DICOM_NODE_WEB__USERS": json.dumps(users),
        "DICOM_NODE_WEB__METRICS_TOKEN": uuid.uuid4().hex,
    }
    for name, value in files.items():
        path = folder / name
        path.write_text(value)
        if name.startswith("DICOM_NODE_"):
            os.chown(path, IMAGE_UID, IMAGE_UID)
            path.chmod(0o400)
        else:
            path.chmod(0o444)  # PostgreSQL's own user reads it
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = subprocess.run(
        ["make", "container-images"], capture_output=True, text=True, timeout=3000, cwd=REPO,
        check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    folder = tmp_path_factory.mktemp("compose")
    ports = {
        name: free_port() for name in ("dicom", "web", "orthanc_dicom", "orthanc_http", "ohif")
    }
    env = dict(
        os.environ,
        **PODMAN_ENV,
        DICOM_NODE_SECRETS=str(_secrets(folder / "secrets")),
        DICOM_NODE_DICOM_PORT=str(ports["dicom"]),
        DICOM_NODE_WEB_PORT=str(ports["web"]),
        ORTHANC_DICOM_PORT=str(ports["orthanc_dicom"]),
        ORTHANC_HTTP_PORT=str(ports["orthanc_http"]),
        OHIF_PORT=str(ports["ohif"]),
        DICOM_NODE_QUIET_SECONDS="3",
    )
    stack = Stack(
        f"dn{uuid.uuid4().hex[:8]}", ports["dicom"], ports["web"],
        f"http://127.0.0.1:{ports['orthanc_http']}", ports["ohif"], env,
    )  # fmt: skip
    try:
        up = stack.compose("up", "-d")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        dest = DestinationSettings(
            ae_title="DICOM_NODE", host="127.0.0.1", port=stack.dicom_port, timeout_s=3
        )
        try:
            wait_until(lambda: echo("STORESCU", dest)[0], 240, "the node's C-ECHO", 2)
            wait_until(lambda: orthanc_rest(stack.orthanc_http, "/system"), 120, "Orthanc", 1)
            wait_until(lambda: _get(f"http://127.0.0.1:{stack.web_port}/health")[0] == 200,
                       120, "the dashboard", 1)  # fmt: skip
        except Exception as exc:
            raise AssertionError(stack.logs()) from exc
        yield stack
    finally:
        down = stack.compose("down", "-v", timeout=300)
        assert down.returncode == 0, down.stderr[-2000:]


def _get(url: str, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def test_a_study_sent_to_the_stack_comes_back_as_seg_and_sr(stack: Stack, tmp_path: Path) -> None:
    study = ChestPhantom(slices=40, size=256, pixel_spacing_mm=1.4).write(tmp_path / "ct")
    sent = storescu(stack.dicom_port, tmp_path / "ct")
    assert sent.returncode == 0, sent.stderr
    found: dict[str, pydicom.Dataset] = {}

    def arrived() -> bool:
        for raw in orthanc_study_objects(stack.orthanc_http, study.study_uid, {"SEG", "SR"}):
            ds = pydicom.dcmread(BytesIO(raw))
            found[ds.Modality] = ds
        return {"SEG", "SR"} <= found.keys()

    try:
        wait_until(arrived, 420, "SEG and SR in the stack's Orthanc", interval_s=2)
    except Exception as exc:
        raise AssertionError(stack.logs()) from exc
    assert found["SEG"].StudyInstanceUID == study.study_uid
    assert found["SEG"].ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    # OHIF reads the same study through its nginx, from Orthanc's DICOMweb.
    status, body = _get(
        f"http://127.0.0.1:{stack.ohif_port}/dicom-web/studies?StudyInstanceUID={study.study_uid}"
    )
    assert status == 200
    assert study.study_uid in body.decode()
    status, page = _get(f"http://127.0.0.1:{stack.ohif_port}/")
    assert status == 200
    assert b"app-config.js" in page


def test_doctor_passes_inside_the_stack(stack: Stack) -> None:
    result = stack.exec("node", "dicom-node", "doctor", "--model-timeout", "300")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "postgresql" in result.stdout  # the state DB is the stack's PostgreSQL
    assert "all checks passed" in result.stdout


def test_health_checks_and_the_dashboard(stack: Stack) -> None:
    for service in ("node", "web", "worker-cpu"):
        check = subprocess.run(
            ["podman", "healthcheck", "run", f"{stack.project}_{service}_1"],
            capture_output=True, text=True, timeout=120, env=stack.env, check=False,
        )  # fmt: skip
        assert check.returncode == 0, f"{service}: {check.stdout}{check.stderr}"
    status, body = _get(f"http://127.0.0.1:{stack.web_port}/ready")
    assert status == 200, body
    assert json.loads(body)["checks"] == {
        "database": True, "broker": True, "spool_writable": True, "workers": True,
    }  # fmt: skip
    # /metrics with the scraper's token from the secret file, never from the image.
    token = (Path(stack.env["DICOM_NODE_SECRETS"]) / "DICOM_NODE_WEB__METRICS_TOKEN").read_text()
    status, metrics = _get(
        f"http://127.0.0.1:{stack.web_port}/metrics", Authorization=f"Bearer {token}"
    )
    assert status == 200
    assert b'dicom_node_queue_workers{queue="cpu"} 1.0' in metrics
