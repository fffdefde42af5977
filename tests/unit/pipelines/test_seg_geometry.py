"""SEG geometry on series as scanners send them: tilted and unevenly spaced stacks.

The tilted phantom is sampled on its own sheared planes, so the truth of every
source pixel is known (``ChestPhantom.labels_at``). The SEG must lie on those
planes (one frame per source slice, the source's own position and
orientation) and agree with the truth everywhere except within one source
voxel of a structure's boundary.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from dicom_node.phantom import PhantomLabel, SlicePlane
from dicom_node.result_summary import segment_labels, sr_measurements
from pipelines.manifest import JobManifest
from pipelines.run import run_pipeline
from pipelines.spec import OutputKind, PipelineSpec
from tests.factories import TiltedStudy
from tests.judges import dciodvfy_errors

#: Which phantom labels each segment of ct-body-lung should hold.
TRUTH: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Body": lambda labels: ~np.isin(labels, [PhantomLabel.AIR, PhantomLabel.TABLE]),
    "Right lung": lambda labels: labels == PhantomLabel.RIGHT_LUNG,
    "Left lung": lambda labels: labels == PhantomLabel.LEFT_LUNG,
}
#: Pixels a segment may hold or not. Where a main bronchus runs along a lung within
#: one 7 mm slice, the threshold algorithm keeps it (and its partial-volume rim, one
#: pixel) with the lung; test_body_lung.py holds the airway to account on plain
#: series. That is the algorithm's limit on coarse slices, not geometry.
DONT_CARE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Body": lambda labels: np.zeros(labels.shape, dtype=bool),
    "Right lung": lambda labels: ndimage.binary_dilation(labels == PhantomLabel.AIRWAY),
    "Left lung": lambda labels: ndimage.binary_dilation(labels == PhantomLabel.AIRWAY),
}


@pytest.fixture(scope="module")
def tilted_run(
    tilted_study: TiltedStudy,
    body_lung_spec: PipelineSpec,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, JobManifest]:
    spec = body_lung_spec.model_copy(
        update={"outputs": [OutputKind.SEG, OutputKind.SR, OutputKind.SC]}
    )
    folder = tmp_path_factory.mktemp("tilted-job")
    manifest = run_pipeline(spec, tilted_study.study.paths, folder, job_id=41)
    return folder, manifest


def _sources(study: TiltedStudy) -> dict[str, tuple[pydicom.Dataset, SlicePlane]]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.study.paths]
    return {
        str(h.SOPInstanceUID): (h, plane) for h, plane in zip(headers, study.planes, strict=True)
    }


def test_results_pass_dciodvfy(tilted_run: tuple[Path, JobManifest]) -> None:
    folder, _ = tilted_run
    for name in ("seg.dcm", "sr.dcm", "sc-0001.dcm"):
        assert dciodvfy_errors(folder / name) == [], name


def test_seg_frames_lie_on_the_source_slices(
    tilted_run: tuple[Path, JobManifest], tilted_study: TiltedStudy
) -> None:
    folder, _ = tilted_run
    seg = hd.seg.segread(folder / "seg.dcm")
    sources = _sources(tilted_study)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in orientation.ImageOrientationPatient],
        tilted_study.planes[0].orientation,
        atol=1e-6,
    )
    referenced = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        header, _ = sources[source.ReferencedSOPInstanceUID]
        assert frame.PlanePositionSequence[0].ImagePositionPatient == header.ImagePositionPatient
        referenced.add(source.ReferencedSOPInstanceUID)
    # The body is in every source slice: every slice has its frame, none is invented.
    assert referenced == set(sources)
    assert (int(seg.Rows), int(seg.Columns)) == (
        int(header.Rows),
        int(header.Columns),
    )


def _explained(
    study: TiltedStudy,
    plane: SlicePlane,
    pixels: np.ndarray,
    member: Callable[[np.ndarray], np.ndarray],
    normal_mm: float,
) -> np.ndarray:
    """Whether the truth changes within one source voxel of each given pixel."""
    row = np.asarray(plane.orientation[:3])
    column = np.asarray(plane.orientation[3:])
    normal = np.cross(row, column)
    spacing = study.phantom.pixel_spacing_mm
    centre = (
        np.asarray(plane.position)
        + pixels[:, :1] * spacing * column
        + pixels[:, 1:] * spacing * row
    )

    def inside(points: np.ndarray) -> np.ndarray:
        labels = study.phantom.labels_at(points[:, 0], points[:, 1], points[:, 2])
        return np.asarray(member(labels))

    here = inside(centre)
    changes = np.zeros(len(centre), dtype=bool)
    for a, b, d in itertools.product((-1, 0, 1), repeat=3):
        shift = a * spacing * column + b * spacing * row + d * normal_mm * normal
        changes |= inside(centre + shift) != here
    return changes


def test_seg_overlays_the_known_structures_within_one_voxel(
    tilted_run: tuple[Path, JobManifest], tilted_study: TiltedStudy
) -> None:
    folder, _ = tilted_run
    seg = pydicom.dcmread(folder / "seg.dcm")
    names = segment_labels(seg)
    sources = _sources(tilted_study)
    order = {uid: k for k, uid in enumerate(sources)}
    normal_steps = np.asarray(tilted_study.steps_mm) * math.cos(math.radians(tilted_study.tilt_deg))
    pixels = seg.pixel_array
    agreement = {name: [0, 0] for name in TRUTH}
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        name = names[int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = order[uid]
        _, plane = sources[uid]
        labels = tilted_study.phantom.plane_labels(plane)
        truth = TRUTH[name](labels)
        mask = pixels[index].astype(bool)
        wrong = np.argwhere((mask != truth) & ~DONT_CARE[name](labels))
        local_step = float(
            max(normal_steps[max(k - 1, 0)], normal_steps[min(k, len(normal_steps) - 1)])
        )
        if len(wrong):
            explained = _explained(tilted_study, plane, wrong, TRUTH[name], local_step)
            assert explained.all(), (
                f"{name}, slice {k}: {int((~explained).sum())} pixel(s) wrong more than "
                "one voxel from any boundary"
            )
        agreement[name][0] += int(np.count_nonzero(mask & truth))
        agreement[name][1] += int(np.count_nonzero(mask) + np.count_nonzero(truth))
    for name, (both, total) in agreement.items():
        assert 2 * both / total > 0.9, name  # Dice: the structure is there, not merely bordered


def test_sr_volumes_are_measured_on_the_grid_and_match_the_anatomy(
    tilted_run: tuple[Path, JobManifest], tilted_study: TiltedStudy
) -> None:
    """Volumes over the scanned slab, against the anatomy sampled every 1 mm."""
    folder, manifest = tilted_run
    sr = pydicom.dcmread(folder / "sr.dcm")
    names = segment_labels(pydicom.dcmread(folder / "seg.dcm"))
    measured = {names[n]: values["Volume"] for n, values in sr_measurements(sr).items()}
    assert measured["Right lung"] == pytest.approx(manifest.measurements["right_lung.volume_ml"])
    plane = tilted_study.planes[0]
    normal = np.cross(plane.orientation[:3], plane.orientation[3:])
    first = float(np.asarray(tilted_study.planes[0].position) @ normal)
    last = float(np.asarray(tilted_study.planes[-1].position) @ normal)
    half_step = (last - first) / (2 * round((last - first) / (4.0 * normal[2])))
    truth = dict.fromkeys(("Right lung", "Left lung"), 0)
    x, y = np.meshgrid(np.arange(-180.0, 180.0), np.arange(-180.0, 180.0), indexing="ij")
    for z in np.arange(-150.0, 150.0):
        labels = tilted_study.phantom.labels_at(x, y, z)
        along = x * normal[0] + y * normal[1] + z * normal[2]
        slab = (along >= first - half_step) & (along <= last + half_step)
        truth["Right lung"] += int(np.count_nonzero(slab & (labels == PhantomLabel.RIGHT_LUNG)))
        truth["Left lung"] += int(np.count_nonzero(slab & (labels == PhantomLabel.LEFT_LUNG)))
    for name, mm3 in truth.items():
        assert mm3 > 200_000, name  # the slab holds most of each lung
        assert measured[name] == pytest.approx(mm3 / 1000.0, rel=0.03), name


def test_burned_in_images_are_the_source_slices(
    tilted_run: tuple[Path, JobManifest], tilted_study: TiltedStudy
) -> None:
    folder, _ = tilted_run
    images = sorted(folder.glob("sc-*.dcm"))
    assert len(images) == len(tilted_study.planes)  # the body is in every slice
    sources = _sources(tilted_study)
    for path in images[:: max(1, len(images) // 4)]:
        image = pydicom.dcmread(path)
        header, _ = sources[image.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert image.pixel_array.shape[:2] == (int(header.Rows), int(header.Columns))
