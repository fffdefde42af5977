"""``dicom-node doctor`` on a healthy site, then with each fault provoked for real.

The site: a real Redis, a real Orthanc as the archive, ``dicom-node serve`` on
its port, a real Celery worker, and the state DB on PostgreSQL. Each fault is
made the way it happens at a site: the broker's port has nothing behind it,
the archive's port is closed, the spool is a read-only mount, a pipeline uses
a queue no worker consumes, a bundle's weights are corrupt. The right line
fails, the others pass, and the exit code says so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dicom_node.broker import make_producer, workers_by_queue
from dicom_node.doctor import check_destination
from dicom_node.services import (
    OrthancHandle,
    PostgresHandle,
    RedisHandle,
    free_port,
    run_orthanc,
    wait_until,
)
from dicom_node.settings import BrokerSettings, DestinationSettings, load_settings
from tests.conftest import new_postgres_database
from tests.node_process import REPO, run_node, run_worker, write_config

pytestmark = pytest.mark.slow


def _pipeline_yaml(name: str, *, rename: str | None = None, **replace: str) -> str:
    text = (REPO / "config" / "pipelines" / f"{name}.yaml").read_text()
    # The shipped files name their bundles relative to themselves.
    text = text.replace("../../models/", f"{REPO / 'models'}/")
    if rename is not None:
        text = text.replace(f"name: {name}\n", f"name: {rename}\n", 1)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def _pipelines(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


@dataclass(frozen=True)
class Site:
    """A running site and the pieces a fault needs."""

    folder: Path
    config: Path
    broker_url: str
    database_url: str
    archive_port: int
    scp_port: int
    pipelines: dict[str, Path]


def doctor(config: Path, *prefix: str) -> tuple[int, dict[str, bool], str]:
    """Run ``dicom-node doctor`` as a process; return its exit code, the lines, the text."""
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "dicom_node", "doctor", "--config", str(config),
         "--worker-timeout", "3", "--model-timeout", "120"],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )  # fmt: skip
    lines = {}
    for line in result.stdout.splitlines():
        verdict, _, rest = line.partition("  ")
        if verdict in ("PASS", "FAIL"):
            lines[rest.split(":", 1)[0]] = verdict == "PASS"
    return result.returncode, lines, result.stdout + result.stderr


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisHandle,
    orthanc: OrthancHandle,
    postgres_server: PostgresHandle,
) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("doctor")
    broken = folder / "broken_bundle"
    shutil.copytree(REPO / "models" / "ct_chest_unet", broken)
    (broken / "models" / "model.pt").write_bytes(b"these are not the weights you are looking for")
    common = {"ct-body-lung": _pipeline_yaml("ct-body-lung")}
    pipelines = {
        "healthy": _pipelines(folder / "healthy", common),
        "gpu": _pipelines(
            folder / "gpu",
            {
                **common,
                "ct-gpu": _pipeline_yaml(
                    "ct-body-lung", rename="ct-gpu", **{"queue: cpu": "queue: gpu"}
                ),
            },
        ),  # fmt: skip
        "broken": _pipelines(
            folder / "broken",
            {
                **common,
                "ct-broken": _pipeline_yaml(
                    "ct-chest-unet",
                    rename="ct-broken",
                    **{
                        "enabled: false": "enabled: true",
                        f"{REPO / 'models'}/ct_chest_unet": str(broken),
                    },
                ),
            },
        ),  # fmt: skip
    }
    database_url = new_postgres_database(postgres_server)
    broker_url = redis_server.db_url(13)
    node_dir = folder / "node"
    node_dir.mkdir()
    config = write_config(
        node_dir, broker_url, orthanc.dicom_port, database_url=database_url,
        pipelines_dir=str(pipelines["healthy"]),
    )  # fmt: skip
    # The worker knows every pipeline the faults below name (a site's worker shares the
    # node's configuration; here each doctor run reads a variant of it).
    worker_dir = folder / "worker"
    worker_dir.mkdir()
    worker_config = write_config(
        worker_dir, broker_url, orthanc.dicom_port, database_url=database_url,
        pipelines_dir=str(pipelines["broken"]),
    )  # fmt: skip
    scp_port = int(yaml.safe_load(config.read_text())["scp"]["port"])
    with run_node(config), run_worker(worker_config):
        app = make_producer(BrokerSettings(url=broker_url))
        wait_until(lambda: bool((workers_by_queue(app, 1.0) or {}).get("cpu")), 120, "a cpu worker")
        app.close()
        yield Site(
            folder, config, broker_url, database_url, orthanc.dicom_port, scp_port, pipelines
        )


def _variant(site: Site, name: str, **changes: object) -> Path:
    folder = site.folder / name
    folder.mkdir()
    settings: dict[str, object] = {
        "database_url": site.database_url,
        "pipelines_dir": str(site.pipelines["healthy"]),
        "scp": {"port": site.scp_port},
    }
    settings.update(changes)
    return write_config(folder, site.broker_url, site.archive_port, **settings)


def test_healthy_site_passes_every_check(site: Site) -> None:
    code, lines, out = doctor(site.config)
    assert code == 0, out
    assert lines == {
        "configuration": True,
        "spool": True,
        "state DB": True,
        "broker": True,
        "clock": True,
        "workers cpu": True,
        "model ct-body-lung": True,
        "destination archive": True,
        "receiver port": True,
    }, out
    assert "in use by a node answering C-ECHO as DICOM_NODE" in out
    assert "all checks passed" in out


def test_broker_down(site: Site) -> None:
    config = _variant(site, "broker-down", broker={"url": f"redis://127.0.0.1:{free_port()}/0"})
    code, lines, out = doctor(config)
    assert code == 1
    assert {name for name, ok in lines.items() if not ok} == {"broker", "clock"}, out
    assert "does not answer" in out


def test_archive_down(site: Site) -> None:
    config = _variant(site, "archive-down")
    text = config.read_text().replace(f"port: {site.archive_port}", f"port: {free_port()}")
    config.write_text(text)
    code, lines, out = doctor(config)
    assert code == 1
    assert {name for name, ok in lines.items() if not ok} == {"destination archive"}, out
    assert "not established" in out


def test_spool_read_only(site: Site) -> None:
    config = _variant(site, "read-only")
    spool = site.folder / "read-only" / "spool"
    spool.mkdir()
    # A read-only mount, as a spool on a read-only NFS export would be (root ignores modes).
    mount = ["unshare", "--map-root-user", "--mount", "sh", "-c",
             'mount --bind -o ro "$0" "$0" && exec "$@"', str(spool)]  # fmt: skip
    code, lines, out = doctor(config, *mount)
    assert code == 1
    assert {name for name, ok in lines.items() if not ok} == {"spool"}, out
    assert "Read-only file system" in out


def test_no_worker_for_a_queue(site: Site) -> None:
    config = _variant(site, "no-gpu-worker", pipelines_dir=str(site.pipelines["gpu"]))
    code, lines, out = doctor(config)
    assert code == 1
    assert {name for name, ok in lines.items() if not ok} == {"workers gpu"}, out
    assert "no live worker consumes queue 'gpu', which ct-gpu use(s)" in out


def test_model_that_does_not_load(site: Site) -> None:
    config = _variant(site, "broken-model", pipelines_dir=str(site.pipelines["broken"]))
    code, lines, out = doctor(config)
    assert code == 1
    assert {name for name, ok in lines.items() if not ok} == {"model ct-broken"}, out
    assert lines["model ct-body-lung"] is True


def test_health_of_the_worker_role(site: Site) -> None:
    """A container's health check: a worker on this host answers the broker's ping."""

    def health(config: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dicom_node", "health", "worker", "--config", str(config)],
            capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        )  # fmt: skip

    alive = health(site.config)
    assert alive.returncode == 0, alive.stdout + alive.stderr
    assert "answered the ping" in alive.stdout
    # Another broker database: no worker there, so none answers.
    alone = _variant(site, "no-worker", broker={"url": site.broker_url.rsplit("/", 1)[0] + "/12"})
    assert health(alone).returncode == 1


def test_a_dicomweb_destination_is_asked_over_http(tmp_path: Path) -> None:
    """A STOW-RS archive is checked with a QIDO-RS request, not C-ECHO."""
    with run_orthanc(tmp_path / "orthanc", dicomweb=True) as archive:
        good = DestinationSettings(
            name="web", kind="dicomweb", url=f"{archive.http_url}/dicom-web", timeout_s=5
        )
        check = check_destination(load_settings(None), good)
        assert check.ok, check.detail
        assert "answered HTTP 200" in check.detail
        wrong = good.model_copy(update={"url": f"{archive.http_url}/no-dicom-web"})
        check = check_destination(load_settings(None), wrong)
        assert not check.ok
        assert "HTTP 404" in check.detail
