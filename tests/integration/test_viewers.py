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

import re
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page
from scipy import ndimage

from dicom_node.phantom import ChestPhantom, PhantomLabel, PhantomStudy
from dicom_node.services import (
    OrthancHandle,
    RedisHandle,
    orthanc_rest,
    run_orthanc,
    wait_until,
)
from dicom_node.state import JobState, StateDB
from pipelines.manifest import JobManifest, read_manifest
from tests.browsers import chromium
from tests.node_process import REPO, run_node, run_worker, storescu, write_config
from tests.ohif_server import serve_ohif

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts" / "viewers"
PHANTOM = ChestPhantom(slices=40, size=256, pixel_spacing_mm=1.4)
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
# Headless WebGL through SwiftShader: OHIF renders with WebGL.
WEBGL = ("--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-default-apps")  # fmt: skip


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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless with SwiftShader WebGL (no browser is downloaded)."""
    with chromium(*WEBGL) as launched:
        yield launched


# The viewport OHIF shows, through the cornerstone3D object the app exposes as a global.
_VIEWPORT = "cornerstone.getRenderingEngines()[0].getViewports()[0]"
_GO_TO_Z = (
    "async (z) => { const vp = " + _VIEWPORT + "; const ids = vp.getImageIds();"
    " let best = 0, distance = Infinity;"
    " ids.forEach((id, i) => { const p = cornerstone.metaData.get('imagePlaneModule', id)"
    ".imagePositionPatient; const d = Math.abs(p[2] - z); if (d < distance) { distance = d;"
    " best = i; } });"
    " await vp.setImageIdIndex(best); vp.render();"
    " await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));"
    " return best; }"
)
_TO_CANVAS = (
    "(points) => { const vp = " + _VIEWPORT + ";"
    " const box = vp.canvas.getBoundingClientRect();"
    " return { box: [box.x, box.y, box.width, box.height],"
    " points: points.map(p => vp.worldToCanvas(p)) }; }"
)
_CURRENT_Z = (
    "() => { const vp = " + _VIEWPORT + "; return cornerstone.metaData.get('imagePlaneModule',"
    " vp.getCurrentImageId()).imagePositionPatient[2]; }"
)


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _open_study(page: Page, url: str, study_uid: str) -> None:
    page.goto(f"{url}/viewer?StudyInstanceUIDs={study_uid}")
    # A first visit starts OHIF's guided tour over the viewport; a reader closes it.
    page.get_by_text("Skip all").click(timeout=60_000)
    page.get_by_text("SEG", exact=True).wait_for(timeout=60_000)
    page.get_by_text("SR", exact=True).wait_for(timeout=60_000)


def _key_images(orthanc: OrthancHandle) -> dict[str, float]:
    """Tracking identifier to the z of its planar region's image, from the archived SR."""
    found = orthanc_rest(
        orthanc.http_url, "/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}}
    )
    sr = pydicom.dcmread(
        BytesIO(orthanc_rest(orthanc.http_url, f"/instances/{found[0]}/file", raw=True))
    )
    positions = {}
    for instance in orthanc_rest(orthanc.http_url, "/instances"):
        tags = orthanc_rest(orthanc.http_url, f"/instances/{instance}/simplified-tags")
        if tags.get("Modality") == "CT":
            positions[tags["SOPInstanceUID"]] = float(tags["ImagePositionPatient"].split("\\")[2])
    keys = {}
    measurements = next(i for i in sr.ContentSequence if i.ValueType == "CONTAINER")
    for group in measurements.ContentSequence:
        items = {i.ConceptNameCodeSequence[0].CodeValue: i for i in group.ContentSequence}
        region = next((i for i in group.ContentSequence if i.ValueType == "SCOORD"), None)
        if region is not None:
            uid = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            keys[str(items["112039"].TextValue)] = positions[str(uid)]
    return keys


def test_ohif_draws_the_seg_over_the_lungs_and_lists_the_sr_volumes(
    delivered: Delivered, browser: Browser
) -> None:
    labels = PHANTOM.labels()
    k = int(np.argmax((labels == PhantomLabel.RIGHT_LUNG).sum(axis=(1, 2))))
    ox, oy, oz = PHANTOM.origin_mm
    z = oz + k * PHANTOM.slice_thickness_mm
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    with serve_ohif(delivered.ohif.http_port) as ohif:
        _open_study(page, ohif.url, delivered.study.study_uid)
        _shot(page, "01-study")

        # The SEG, over the slice where the right lung is largest.
        page.get_by_text("SEG", exact=True).dblclick()
        page.get_by_role("button", name="Yes").click(timeout=60_000)
        wait_until(
            lambda: page.evaluate(
                "() => window.services.segmentationService.getSegmentations()"
                ".some(s => Object.keys(s.segments || {}).length === 3)"
            ),
            60, "OHIF to load the SEG's three segments", interval_s=0.5,
        )  # fmt: skip
        page.evaluate(_GO_TO_Z, z)
        _shot(page, "02-seg")
        rows, columns = np.mgrid[4 : PHANTOM.size - 4 : 6, 4 : PHANTOM.size - 4 : 6]
        world = [
            [ox + c * PHANTOM.pixel_spacing_mm, oy + r * PHANTOM.pixel_spacing_mm, z]
            for r, c in zip(rows.ravel(), columns.ravel(), strict=True)
        ]
        mapped = page.evaluate(_TO_CANVAS, world)
        x0, y0, width, height = mapped["box"]
        canvas = np.asarray(
            Image.open(
                BytesIO(page.screenshot(clip={"x": x0, "y": y0, "width": width, "height": height}))
            ).convert("RGB")
        ).astype(int)
        truth = {
            "right lung": _eroded(labels[k] == PhantomLabel.RIGHT_LUNG),
            "left lung": _eroded(labels[k] == PhantomLabel.LEFT_LUNG),
            "outside the body": _eroded(np.isin(labels[k], (PhantomLabel.AIR, PhantomLabel.TABLE))),
        }
        tests = {
            "right lung": lambda p: p[2] - p[0] > 30,  # blue (80, 160, 255)
            "left lung": lambda p: p[0] - p[2] > 30,  # orange (255, 120, 80)
            "outside the body": lambda p: p.max() - p.min() < 12,  # grey: no colour at all
        }
        for name, region in truth.items():
            hits = []
            for (cx, cy), r, c in zip(mapped["points"], rows.ravel(), columns.ravel(), strict=True):
                if region[r, c] and 0 <= cy < canvas.shape[0] and 0 <= cx < canvas.shape[1]:
                    hits.append(tests[name](canvas[int(cy), int(cx)]))
            assert len(hits) > 20, (name, len(hits))
            assert np.mean(hits) > 0.95, (name, np.mean(hits))

        # The SR: each structure's measurements on its key image, found with OHIF's arrows.
        page.get_by_text("SR", exact=True).dblclick()
        wait_until(
            lambda: page.evaluate(
                "() => window.services.displaySetService.getActiveDisplaySets()"
                ".some(d => d.Modality === 'SR' && d.isLoaded && d.measurements.length === 3"
                " && d.measurements.every(m => m.loaded))"
            ),
            60, "OHIF to load the SR's three measurements", interval_s=0.5,
        )  # fmt: skip
        keys = _key_images(delivered.ohif)
        # Finding Site (the structure, as OHIF prints it) to tracking identifier and label name.
        structures = {
            "Entire body": ("Body", "body"),
            "Right lung": ("Right lung", "right_lung"),
            "Left lung": ("Left lung", "left_lung"),
        }
        volumes = {
            identifier: delivered.manifest.measurements[f"{name}.volume_ml"]
            for identifier, name in structures.values()
        }
        seen: dict[str, str] = {}
        for step in range(3):
            text = _sr_text(page, previous=list(seen.values()))
            site = re.search(r"363698007: (Entire body|Right lung|Left lung)", text)
            assert site is not None, text
            identifier = structures[site.group(1)][0]
            seen[identifier] = text
            assert f"Volume: {volumes[identifier]:.2f} ml" in text
            assert page.evaluate(_CURRENT_Z) == pytest.approx(keys[identifier], abs=1e-3)
            _shot(page, f"03-sr-{step + 1}")
            page.locator("[data-cy=viewport-action-arrows-right]").click()
        assert set(seen) == set(volumes)
        listed = page.evaluate(
            "() => window.services.displaySetService.getActiveDisplaySets()"
            ".filter(d => d.Modality === 'SR')[0].measurements"
            ".map(m => [m.TrackingIdentifier, m.labels[0].value])"
        )
        assert dict(listed) == {name: f"{volume:.2f} ml" for name, volume in volumes.items()}
    page.close()
    assert errors == []


def _sr_text(page: Page, previous: list[str]) -> str:
    """The SR measurement text the viewport shows now (a new one after a step)."""
    found: list[str] = []

    def shown() -> bool:
        texts: list[Any] = page.evaluate(
            "() => Array.from(document.querySelectorAll('[data-cy=viewport-pane] svg text'))"
            ".map(t => t.textContent)"
        )
        current = [t for t in texts if "Volume:" in t and t not in previous]
        found[:] = current[:1]
        return bool(current)

    wait_until(shown, 30, "an SR measurement on the viewport", interval_s=0.25)
    return found[0]


def _eroded(region: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """A region without its outer 3 pixels: far enough from any edge to have one colour."""
    return np.asarray(ndimage.binary_erosion(region, iterations=3))
