"""Every result kind, read back by an implementation other than the one that wrote it.

``run_pipeline`` writes every kind for the small phantom with the lungs marked
as findings (the ``every_kind`` fixture). Then:

- dciodvfy finds no error in any object;
- the SR: dcmqi's ``tid1500reader`` still reads a volumetric group per segment,
  and each segment has a planar group whose SCOORD outline lies on its key
  image (what OHIF's SR viewport needs);
- GSPS: dcmtk's ``dcmp2pgm`` applies each presentation state to its image; the
  overlay bitmaps it extracts are the segments' edge pixels and the polylines
  it parses enclose the segment (one pixel at most at the boundary);
- RTSTRUCT: plastimatch rasterises the contours on the CT's grid into masks
  within one voxel of the SEG's;
- KOS and SC: highdicom reads them; the KOS selects the lungs' key images;
- PDF: ``pdftotext`` finds every structure and its measured values.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from pipelines.manifest import OutputObject
from pipelines.spec import OutputKind
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.phantom_series import PipelineResult

NAMES = {1: "Body", 2: "Right lung", 3: "Left lung"}


def _files(result: PipelineResult, kind: OutputKind) -> list[OutputObject]:
    return [o for o in result.manifest.outputs if o.kind == kind]


def _seg_masks(result: PipelineResult) -> dict[str, dict[int, npt.NDArray[np.bool_]]]:
    """The SEG's masks per segment label and source SOP Instance UID, read by highdicom."""
    seg = hd.seg.segread(result.output_dir / "seg.dcm")
    sources = [str(ds.SOPInstanceUID) for ds in _sources(result)]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sources,
        segment_numbers=[1, 2, 3],
        assert_missing_frames_are_empty=True,
    )
    return {
        NAMES[number]: {k: pixels[k, :, :, number - 1].astype(bool) for k in range(len(sources))}
        for number in (1, 2, 3)
    }


def _sources(result: PipelineResult) -> list[pydicom.Dataset]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in result.study.paths]
    return sorted(headers, key=lambda ds: float(ds.ImagePositionPatient[2]))


def test_every_kind_is_written(every_kind: PipelineResult) -> None:
    kinds = {o.kind for o in every_kind.manifest.outputs}
    assert kinds == set(OutputKind)
    assert len(_files(every_kind, OutputKind.GSPS)) == len(_files(every_kind, OutputKind.SC)) > 10


def test_dciodvfy_finds_no_error_in_any_object(every_kind: PipelineResult) -> None:
    for output in every_kind.manifest.outputs:
        assert dciodvfy_errors(every_kind.output_dir / output.file) == [], output.file


def test_sr_planar_regions_lie_on_each_segments_key_image(every_kind: PipelineResult) -> None:
    sr = hd.sr.srread(every_kind.output_dir / "sr.dcm")
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    planar = report.get_planar_roi_measurement_groups()
    volumetric = report.get_volumetric_roi_measurement_groups()
    assert [str(g.tracking_uid) for g in planar] == [str(g.tracking_uid) for g in volumetric]
    masks = _seg_masks(every_kind)
    sources = {str(ds.SOPInstanceUID): k for k, ds in enumerate(_sources(every_kind))}
    for group in planar:
        region = group.roi
        assert region is not None
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        name = str(group.tracking_identifier)
        k = sources[region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
        mask = masks[name][k]
        # The key image is the largest cross-section, and the outline encloses the segment.
        assert mask.sum() == max(m.sum() for m in masks[name].values())
        assert _fill(region.value, mask.shape, half_pixel=True).sum() == pytest.approx(
            mask.sum(), rel=0.05
        )
        (area,) = group.get_measurements(name=hd.sr.CodedConcept("42798000", "SCT", "Area"))
        assert area.value > 0


def test_dcmqi_reads_a_volumetric_group_per_segment(
    every_kind: PipelineResult, tmp_path: Path
) -> None:
    out = tmp_path / "sr.json"
    subprocess.run(
        [str(Path(sys.executable).with_name("tid1500reader")), "--inputDICOM",
         str(every_kind.output_dir / "sr.dcm"), "--outputMetadata", str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    groups = json.loads(out.read_text())["Measurements"]
    segments = [g["ReferencedSegment"] for g in groups if "ReferencedSegment" in g]
    assert segments == [1, 2, 3]


def test_gsps_read_back_by_dcmtk(every_kind: PipelineResult, tmp_path: Path) -> None:
    masks = _seg_masks(every_kind)
    sources = _sources(every_kind)
    by_uid = {str(ds.SOPInstanceUID): k for k, ds in enumerate(sources)}
    paths = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in every_kind.study.paths
    }
    checked = 0
    for output in _files(every_kind, OutputKind.GSPS)[::4]:
        state_path = every_kind.output_dir / output.file
        state = pydicom.dcmread(state_path, stop_before_pixels=True)
        image_uid = str(
            state.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
        )
        k = by_uid[image_uid]
        work = tmp_path / output.file
        work.mkdir()
        done = subprocess.run(
            ["dcmp2pgm", "-v", "-d", "-p", str(state_path), str(paths[image_uid]), "out.pgm"],
            cwd=work, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        log = done.stdout + done.stderr
        # dcmtk applied the presentation state to the image and rendered it.
        assert (work / "out.pgm").stat().st_size > sources[k].Rows * sources[k].Columns
        present = [name for name in NAMES.values() if masks[name][k].any()]
        layers = re.findall(r"Graphic Layer #\d+ \[SEG\d\]\s+I:\s+Description: (.+)", log)
        assert layers == present
        # The overlay bitmaps dcmtk extracted are the segments' edge pixels.
        overlays = sorted(work.glob("ovl_*.pgm"))
        assert len(overlays) == len(present)
        for overlay, name in zip(overlays, present, strict=True):
            bitmap = np.asarray(Image.open(overlay)) > 0
            mask = masks[name][k]
            np.testing.assert_array_equal(bitmap, mask & ~ndimage.binary_erosion(mask))
        # The polylines dcmtk parsed enclose the segment, give or take its boundary pixels.
        for name, coordinates in zip(present, re.findall(r"coordinates: (.+)", log), strict=False):
            points = np.array(
                [
                    [float(v) for v in pair.split("\\")]
                    for pair in coordinates.strip(", ").split(", ")
                ]
            )
            filled = _fill(points, masks[name][k].shape, half_pixel=True)
            _assert_within_one_pixel(filled, masks[name][k])
        checked += 1
    assert checked >= 3


def test_rtstruct_read_back_by_plastimatch(every_kind: PipelineResult, tmp_path: Path) -> None:
    ct = tmp_path / "ct"
    ct.mkdir()
    for path in every_kind.study.paths:
        (ct / path.name).symlink_to(path)
    subprocess.run(
        ["plastimatch", "convert", "--input", str(every_kind.output_dir / "rtstruct.dcm"),
         "--referenced-ct", str(ct), "--output-prefix", str(tmp_path / "masks"),
         "--prefix-format", "nii.gz"],
        capture_output=True, timeout=300, check=True,
    )  # fmt: skip
    masks = _seg_masks(every_kind)
    for name, by_slice in masks.items():
        seg = np.stack([by_slice[k] for k in sorted(by_slice)])
        # ITK's NIfTI keeps the index order (column, row, slice); the slices sorted as the CT's.
        image = nib.load(tmp_path / "masks" / f"{name}.nii.gz")
        assert isinstance(image, nib.Nifti1Image)
        read = np.transpose(np.asarray(image.dataobj) > 0, (2, 1, 0))
        assert read.shape == seg.shape
        dice = 2 * (read & seg).sum() / (read.sum() + seg.sum())
        assert dice > 0.98, (name, dice)
        for k in range(seg.shape[0]):
            _assert_within_one_pixel(read[k], seg[k])


def test_kos_selects_the_lungs_key_images(every_kind: PipelineResult) -> None:
    kos = hd.ko.KeyObjectSelectionDocument.from_dataset(
        pydicom.dcmread(every_kind.output_dir / "kos.dcm")
    )
    selected = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in kos.ContentSequence
        if item.ValueType == "IMAGE"
    }
    report = hd.sr.srread(every_kind.output_dir / "sr.dcm").content
    assert isinstance(report, hd.sr.MeasurementReport)
    regions = [
        g.roi
        for g in report.get_planar_roi_measurement_groups()
        if str(g.tracking_identifier) != "Body"
    ]
    key = {
        str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for region in regions
        if region is not None
    }
    assert len(regions) == 2
    assert selected == key
    (description,) = [
        item.TextValue
        for item in kos.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "113012"  # Key Object Description
    ]
    assert description == "AI findings: Left lung, Right lung (not for diagnosis)"
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113000"


def test_sc_images_are_read_by_highdicom(every_kind: PipelineResult) -> None:
    image = hd.imread(every_kind.output_dir / _files(every_kind, OutputKind.SC)[10].file)
    pixels = image.get_frame(1)
    assert pixels.shape[-1] == 3
    red, blue = pixels[..., 0].astype(int), pixels[..., 2].astype(int)
    assert (blue - red > 60).sum() > 20  # the right lung's blue
    assert (red - blue > 60).sum() > 20  # the left lung's orange


def test_pdf_names_every_finding_and_value(every_kind: PipelineResult, tmp_path: Path) -> None:
    document = pydicom.dcmread(every_kind.output_dir / "report.dcm")
    assert document.MIMETypeOfEncapsulatedDocument == "application/pdf"
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(document.EncapsulatedDocument[: document.EncapsulatedDocumentLength])
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "NOT FOR DIAGNOSIS" in text
    assert "dicom-node body-lung threshold" in text
    assert "ct-body-lung 1.0.0" in text
    measured = every_kind.manifest.measurements
    for name, label in (("body", "Body"), ("right_lung", "Right lung"), ("left_lung", "Left lung")):
        row = next(line for line in text.splitlines() if line.strip().startswith(label))
        assert f"{measured[f'{name}.volume_ml']:.1f}" in row
        assert f"{measured[f'{name}.mean_hu']:.1f}" in row
    assert "Key images" in text


def _fill(
    points: npt.NDArray[np.float64], shape: tuple[int, ...], *, half_pixel: bool
) -> npt.NDArray[np.bool_]:
    """Rasterise a polygon given in DICOM (column, row) image coordinates by pixel centres."""
    points = np.asarray(points, dtype=np.float64)
    offset = 0.5 if half_pixel else 0.0
    # scikit-image ships no type hints.
    rows, columns = fill_polygon(points[:, 1] - offset, points[:, 0] - offset, shape[:2])  # type: ignore[no-untyped-call]
    filled = np.zeros(shape[:2], dtype=bool)
    filled[rows, columns] = True
    return filled


def _assert_within_one_pixel(read: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> None:
    """Every pixel the two masks disagree on lies on the truth's boundary (one pixel wide)."""
    boundary = ndimage.binary_dilation(truth) & ~ndimage.binary_erosion(truth)
    assert not ((read ^ truth) & ~boundary).any()
