"""The presentation states: the fast path against what highdicom builds for the same image."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pipelines import models
from pipelines.spec import load_pipeline_specs
from pipelines.uids import result_uids
from pipelines.writers.gsps import GSPS_SERIES_NUMBER, _template
from tests.unit.pipelines.phantom_series import PipelineResult

REPO = Path(__file__).resolve().parents[3]
# Identity and creation time differ per object; overlays and graphics are added per image.
_PER_OBJECT = {
    "SOPInstanceUID",
    "InstanceNumber",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "PresentationCreationDate",
    "PresentationCreationTime",
    "ContributionDateTime",
    "GraphicAnnotationSequence",
    "GraphicLayerSequence",
    "MediaStorageSOPInstanceUID",
}


def _plain(ds: Dataset) -> dict[str, object]:
    """Every element as comparable values, sequences item by item."""
    return {
        element.keyword: [_plain(item) for item in element.value]
        if element.VR == "SQ"
        else repr(element.value)
        for element in ds
        if element.keyword not in _PER_OBJECT and element.tag.group < 0x6000
    }


def test_fast_path_equals_highdicoms_object_for_the_same_image(every_kind: PipelineResult) -> None:
    spec = load_pipeline_specs(REPO / "config" / "pipelines")["ct-body-lung"]
    sources = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in every_kind.study.paths)
    }
    uids = result_uids(spec.name, spec.version, sources, models.model_digest(spec))
    for name in ("gsps-0002.dcm", "gsps-0020.dcm"):
        ours = pydicom.dcmread(every_kind.output_dir / name)
        image = ours.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
        # highdicom, given this very image, checks and builds every part itself.
        built = _template(sources[image.ReferencedSOPInstanceUID], spec, uids, GSPS_SERIES_NUMBER)
        buffer = BytesIO()
        built.save_as(buffer, enforce_file_format=True)
        theirs = pydicom.dcmread(BytesIO(buffer.getvalue()))
        assert _plain(ours) == _plain(theirs)
        assert _plain(ours.file_meta) == _plain(theirs.file_meta)
        layers = [layer.GraphicLayer for layer in ours.GraphicLayerSequence]
        annotated = [item.GraphicLayer for item in ours.GraphicAnnotationSequence]
        assert layers == annotated
        for item in ours.GraphicAnnotationSequence:
            assert (
                item.ReferencedImageSequence[0].ReferencedSOPInstanceUID
                == image.ReferencedSOPInstanceUID
            )


def test_graphic_objects_equal_highdicoms(every_kind: PipelineResult) -> None:
    """The hand-encoded outlines hold what highdicom's GraphicObject would for the same points."""
    ours = pydicom.dcmread(every_kind.output_dir / "gsps-0012.dcm")
    for annotation in ours.GraphicAnnotationSequence:
        for item in annotation.GraphicObjectSequence:
            points = np.asarray(item.GraphicData, dtype=np.float32).reshape(-1, 2)
            theirs = hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=points,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                tracking_id=item.TrackingID,
                tracking_uid=item.TrackingUID,
            )
            buffer = BytesIO()
            wrapper = Dataset()
            wrapper.GraphicObjectSequence = [theirs]
            pydicom.dcmwrite(buffer, wrapper, implicit_vr=False, little_endian=True)
            read = pydicom.dcmread(BytesIO(buffer.getvalue()), force=True).GraphicObjectSequence[0]
            assert _plain(item) == _plain(read)
            assert item.NumberOfGraphicPoints == len(points) > 3
            np.testing.assert_array_equal(points[0], points[-1])  # closed
