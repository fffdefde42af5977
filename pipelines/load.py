"""Read a series' headers from disk and check that they can form one volume.

This is the first step of a pipeline (``load_series`` → ``to_volume`` → model →
writers). It reads only headers (``stop_before_pixels``), so a series that is
not for us is refused before any pixel is decoded. While reading, it notes
where each file's Pixel Data element starts, which lets
:func:`pipelines.volume.to_volume` read uncompressed pixels with one seek
instead of parsing the file a second time.

Besides its geometry, :func:`frame_kind` reads what tells repeated passes over
the same positions apart (:class:`FrameKind`: image or frame type, temporal
position, echo, diffusion weighting, acquisition), so that
:func:`pipelines.volume.to_volume` can pick one stack out of an fMRI time
series, a magnitude/field-map pair or a re-scan.

A series is a list of frames, each with its own geometry: one per file for
single-frame images (CT, MR, PET), one per frame for Enhanced multi-frame
images (Enhanced CT/MR, PS3.3 C.7.6.16), whose positions, orientations,
spacings and rescale values live in the Shared and Per-frame Functional Groups.
:func:`scan_headers` and :func:`group_by_series` let a caller look at a folder
of mixed files first and decode only the series a pipeline selected.

Nothing here logs patient data: messages and refusal reasons name inputs by
their position ("input 3 of 120"), never by path or header value.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pipelines.errors import InconsistentGeometry, PipelineError, UnsupportedInput

__all__ = [
    "NATIVE_TRANSFER_SYNTAXES",
    "FrameKind",
    "Series",
    "SeriesFile",
    "SeriesFrame",
    "frame_group",
    "frame_kind",
    "group_by_series",
    "load_series",
    "read_header",
    "scan_headers",
]

logger = logging.getLogger(__name__)

#: Uncompressed little-endian transfer syntaxes whose pixels are read without pydicom.
NATIVE_TRANSFER_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})

# Attributes without which an image cannot be decoded or referenced by a result.
_REQUIRED_IMAGE = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)
# ... and, for a slice of a volume, what places it in space (single-frame images).
_REQUIRED_GEOMETRY = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient")

# Functional groups whose Frame Type says what a frame is (PS3.3 C.8.15.3.1, C.8.13.5.1).
_FRAME_TYPE_GROUPS = (
    "CTImageFrameTypeSequence",
    "MRImageFrameTypeSequence",
    "PETFrameTypeSequence",
)

_PIXEL_DATA_LE = struct.pack("<HH", 0x7FE0, 0x0010)
_PIXEL_DATA_BE = struct.pack(">HH", 0x7FE0, 0x0010)


@dataclass(frozen=True, slots=True)
class SeriesFile:
    """One input file: its path, its header and where its Pixel Data starts.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    header : pydicom.dataset.Dataset
        Everything before Pixel Data (read with ``stop_before_pixels``).
    pixel_offset : int or None
        Byte offset of the Pixel Data element's tag in the file, or None when the
        file is deflated (offsets in the inflated stream do not apply to the file).
    """

    path: Path
    header: Dataset
    pixel_offset: int | None

    @property
    def number_of_frames(self) -> int:
        """Number of Frames (1 for a single-frame image)."""
        return int(self.header.get("NumberOfFrames", 1) or 1)

    @property
    def is_multiframe(self) -> bool:
        """Whether the file holds several frames or per-frame functional groups."""
        return self.number_of_frames > 1 or "PerFrameFunctionalGroupsSequence" in self.header


@dataclass(frozen=True, slots=True)
class FrameKind:
    """What tells frames at the same position apart (repeated passes of one series).

    Each value is kept as text (or empty), so that frames compare and group
    alike whether they came from single-frame headers or functional groups.

    Attributes
    ----------
    image_type : tuple[str, ...]
        Image Type, or the per-frame Frame Type of an Enhanced image
        (PS3.3 C.8.13.1.1.1, C.8.15.3.1), e.g. ``("ORIGINAL", "PRIMARY", "T1", "M")``.
    temporal_position : str
        Temporal Position Index (Frame Content) or Temporal Position Identifier.
    echo : str
        Echo Numbers, or the Effective Echo Time of an Enhanced MR frame.
    diffusion : str
        Diffusion b-value and gradient orientation.
    acquisition : str
        Acquisition Number, or the Frame Acquisition Number of a frame.
    """

    image_type: tuple[str, ...] = ()
    temporal_position: str = ""
    echo: str = ""
    diffusion: str = ""
    acquisition: str = ""


@dataclass(frozen=True, slots=True)
class SeriesFrame:
    """One 2-D frame of a series and where it lies in the patient.

    Attributes
    ----------
    file_index : int
        Index of its file in :attr:`Series.files`.
    frame_number : int or None
        1-based frame number inside a multi-frame file; None for a single-frame file.
    position : tuple[float, float, float]
        Image Position (Patient) of its first pixel, LPS mm.
    orientation : tuple[float, ...]
        Image Orientation (Patient): row, then column direction cosines.
    pixel_spacing : tuple[float, float]
        Pixel Spacing: between rows, then between columns (mm).
    slope : float
        Rescale Slope.
    intercept : float
        Rescale Intercept.
    """

    file_index: int
    frame_number: int | None
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float


@dataclass(frozen=True, slots=True)
class Series:
    """The headers of one series, checked to be grayscale images of one size.

    Attributes
    ----------
    study_uid : str
        Study Instance UID.
    series_uid : str
        Series Instance UID.
    frame_of_reference_uid : str
        Frame of Reference UID shared by every slice.
    files : tuple[SeriesFile, ...]
        The inputs, in the order given (not yet sorted in space).
    frames : tuple[SeriesFrame, ...]
        Every frame of every file, in input order (not yet sorted in space).
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    files: tuple[SeriesFile, ...]
    frames: tuple[SeriesFrame, ...] = ()

    @property
    def headers(self) -> tuple[Dataset, ...]:
        """The headers, in input order."""
        return tuple(f.header for f in self.files)


def scan_headers(paths: Sequence[Path]) -> tuple[SeriesFile, ...]:
    """Read the headers of image files without their pixel data.

    Parameters
    ----------
    paths : Sequence[pathlib.Path]
        DICOM files of any series, in any order.

    Returns
    -------
    tuple[SeriesFile, ...]
        Headers and Pixel Data offsets, in input order.

    Raises
    ------
    UnsupportedInput
        If a file is not DICOM, has no Pixel Data, lacks an attribute every
        image needs, is colour, or uses a transfer syntax no installed decoder
        handles.
    PipelineError
        If a file is missing.
    """
    total = len(paths)
    return tuple(read_header(Path(p), index, total) for index, p in enumerate(paths))


def group_by_series(files: Sequence[SeriesFile]) -> dict[str, tuple[SeriesFile, ...]]:
    """Group scanned files by Series Instance UID, keeping their order.

    Parameters
    ----------
    files : Sequence[SeriesFile]
        The output of :func:`scan_headers`.

    Returns
    -------
    dict[str, tuple[SeriesFile, ...]]
        Series Instance UID to its files, in order of first appearance.
    """
    groups: dict[str, list[SeriesFile]] = {}
    for item in files:
        groups.setdefault(str(item.header.SeriesInstanceUID), []).append(item)
    return {uid: tuple(items) for uid, items in groups.items()}


def load_series(paths: Sequence[Path]) -> Series:
    """Read the headers of a series and check that it can become a volume.

    Parameters
    ----------
    paths : Sequence[pathlib.Path]
        One file per slice, in any order.

    Returns
    -------
    Series
        Headers, Pixel Data offsets and the geometry of every frame, in input order.

    Raises
    ------
    UnsupportedInput
        If there is no input, a file is not DICOM, lacks an attribute a volume
        needs, has no Pixel Data, is colour, uses a transfer syntax that cannot be
        decoded, is a multi-frame image without per-frame plane positions, or the
        files belong to more than one series.
    InconsistentGeometry
        If the slices differ in size or frame of reference.
    PipelineError
        If an input file is missing or the same instance is given twice.
    """
    if not paths:
        raise UnsupportedInput("the job has no input files")
    total = len(paths)
    files = scan_headers(paths)
    headers = [f.header for f in files]
    for index, header in enumerate(headers):
        where = f"input {index + 1} of {total}"
        for keyword in _REQUIRED_GEOMETRY:
            if keyword == "FrameOfReferenceUID" or not files[index].is_multiframe:
                _require(header, keyword, where)

    series_uids = {str(h.SeriesInstanceUID) for h in headers}
    if len(series_uids) != 1:
        raise UnsupportedInput(f"the inputs belong to {len(series_uids)} series, expected 1")
    sop_uids = [str(h.SOPInstanceUID) for h in headers]
    if len(set(sop_uids)) != len(sop_uids):
        raise PipelineError(
            f"{len(sop_uids) - len(set(sop_uids))} input instance(s) are given more than once"
        )
    frames_of_reference = {str(h.FrameOfReferenceUID) for h in headers}
    if len(frames_of_reference) != 1:
        raise InconsistentGeometry(
            f"the slices use {len(frames_of_reference)} frames of reference, expected 1"
        )
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) != 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sorted(sizes))
        raise InconsistentGeometry(f"the slices differ in size ({listed})")

    frames: list[SeriesFrame] = []
    for index, item in enumerate(files):
        where = f"input {index + 1} of {total}"
        if item.is_multiframe:
            frames.extend(_multiframe_geometry(item, index, where))
        else:
            frames.append(_single_frame_geometry(item.header, index, where))

    first = headers[0]
    logger.debug("read %d headers, %d frames", total, len(frames))
    return Series(
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=frames_of_reference.pop(),
        files=files,
        frames=tuple(frames),
    )


def _require(header: Dataset, keyword: str, where: str) -> None:
    if keyword not in header or header[keyword].value in (None, ""):
        raise UnsupportedInput(f"{where} lacks {keyword}")


def _floats(value: object, count: int, what: str, where: str) -> tuple[float, ...]:
    """Read a multi-valued DS as floats, refusing the wrong number of values."""
    try:
        values = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise UnsupportedInput(f"{where} has a malformed {what}") from exc
    if len(values) != count:
        raise UnsupportedInput(f"{where} has a malformed {what}")
    return values


def _single_frame_geometry(header: Dataset, index: int, where: str) -> SeriesFrame:
    if "PixelSpacing" not in header:
        raise UnsupportedInput(f"{where} lacks PixelSpacing")
    position = _floats(header.ImagePositionPatient, 3, "Image Position (Patient)", where)
    return SeriesFrame(
        file_index=index,
        frame_number=None,
        position=(position[0], position[1], position[2]),
        orientation=_floats(
            header.ImageOrientationPatient, 6, "Image Orientation (Patient)", where
        ),
        pixel_spacing=_spacing(header.PixelSpacing, where),
        slope=float(header.get("RescaleSlope", 1.0) or 1.0),
        intercept=float(header.get("RescaleIntercept", 0.0) or 0.0),
    )


def _text(value: object) -> str:
    """A header value as text for grouping ("" when absent); several values joined by \\."""
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return str(value).strip()
    try:
        return "\\".join(str(v).strip() for v in value)  # type: ignore[attr-defined]
    except TypeError:
        return str(value).strip()


def _texts(value: object) -> tuple[str, ...]:
    """A multi-valued CS (Image Type, Frame Type) as upper-case values."""
    text = _text(value)
    return tuple(v.upper() for v in text.split("\\")) if text else ()


def _diffusion(item: Dataset | None) -> str:
    """b-value and gradient orientation of a header or an MR Diffusion macro item."""
    if item is None or "DiffusionBValue" not in item:
        return ""
    direction = item.get("DiffusionGradientOrientation")
    gradient = _group(item, "DiffusionGradientDirectionSequence")
    if direction is None and gradient is not None:
        direction = gradient.get("DiffusionGradientOrientation")
    return f"{_text(item.get('DiffusionBValue'))}/{_text(direction)}"


def _spacing(value: object, where: str) -> tuple[float, float]:
    row, column = _floats(value, 2, "Pixel Spacing", where)
    return (row, column)


def _group(item: Dataset | None, sequence: str) -> Dataset | None:
    """The single item of a functional group macro, or None when absent."""
    if item is None or sequence not in item or not item[sequence].value:
        return None
    found: Dataset = item[sequence].value[0]
    return found


def frame_kind(series: Series, frame: SeriesFrame) -> FrameKind:
    """What tells a frame apart from others at its position, read when it is needed.

    Reading these attributes for every slice would cost a tenth of a plain
    series' load, and only a series that repeats its positions needs them.

    Parameters
    ----------
    series : Series
        The series.
    frame : SeriesFrame
        One of its frames.

    Returns
    -------
    FrameKind
        From the header of a single-frame image, or from the functional groups
        of a multi-frame one (Frame Type, Frame Content, MR Echo, MR Diffusion).
    """
    header = series.files[frame.file_index].header
    number = frame.frame_number
    if number is None:
        return FrameKind(
            image_type=_texts(header.get("ImageType")),
            temporal_position=_text(header.get("TemporalPositionIdentifier")),
            echo=_text(header.get("EchoNumbers")),
            diffusion=_diffusion(header),
            acquisition=_text(header.get("AcquisitionNumber")),
        )
    content = frame_group(header, number, "FrameContentSequence") or Dataset()
    frame_type = next(
        (
            _texts(item.get("FrameType"))
            for item in (frame_group(header, number, name) for name in _FRAME_TYPE_GROUPS)
            if item is not None and "FrameType" in item
        ),
        _texts(header.get("ImageType")),
    )
    echo = frame_group(header, number, "MREchoSequence")
    return FrameKind(
        image_type=frame_type,
        temporal_position=_text(content.get("TemporalPositionIndex")),
        echo=_text(echo.get("EffectiveEchoTime")) if echo is not None else "",
        diffusion=_diffusion(frame_group(header, number, "MRDiffusionSequence")),
        acquisition=_text(content.get("FrameAcquisitionNumber")),
    )


def frame_group(header: Dataset, frame_number: int | None, sequence: str) -> Dataset | None:
    """The item of a functional group macro that applies to one frame.

    Parameters
    ----------
    header : pydicom.dataset.Dataset
        An Enhanced multi-frame image's header (any other header gives None).
    frame_number : int or None
        1-based frame number; None looks in the Shared Functional Groups only.
    sequence : str
        The macro's sequence keyword, e.g. ``"FrameVOILUTSequence"``.

    Returns
    -------
    pydicom.dataset.Dataset or None
        The Per-frame item if the frame has one, else the Shared item, else None
        (PS3.3 C.7.6.16: a macro is in one of the two).
    """
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if frame_number is not None and per_frame and 0 < frame_number <= len(per_frame):
        found = _group(per_frame[frame_number - 1], sequence)
        if found is not None:
            return found
    shared = header.get("SharedFunctionalGroupsSequence")
    return _group(shared[0], sequence) if shared else None


def _multiframe_geometry(item: SeriesFile, index: int, where: str) -> list[SeriesFrame]:
    """Per-frame geometry from the Shared and Per-frame Functional Groups (PS3.3 C.7.6.16)."""
    header = item.header
    count = item.number_of_frames
    per_frame = list(header.get("PerFrameFunctionalGroupsSequence", []))
    if len(per_frame) != count:
        raise UnsupportedInput(
            f"{where} is a multi-frame image without per-frame functional groups "
            f"({len(per_frame)} for {count} frames), so its frames cannot be placed in space"
        )
    shared_items = header.get("SharedFunctionalGroupsSequence", [])
    shared: Dataset | None = shared_items[0] if shared_items else None
    frames: list[SeriesFrame] = []
    for number, groups in enumerate(per_frame, start=1):

        def find(sequence: str, groups: Dataset = groups) -> Dataset | None:
            return _group(groups, sequence) or _group(shared, sequence)

        plane = find("PlanePositionSequence")
        orientation = find("PlaneOrientationSequence")
        measures = find("PixelMeasuresSequence")
        if plane is None or "ImagePositionPatient" not in plane:
            raise UnsupportedInput(f"{where}: frame {number} has no Plane Position (Patient)")
        if orientation is None or "ImageOrientationPatient" not in orientation:
            raise UnsupportedInput(f"{where}: frame {number} has no Plane Orientation (Patient)")
        if measures is None or "PixelSpacing" not in measures:
            raise UnsupportedInput(f"{where}: frame {number} has no Pixel Measures")
        transform = find("PixelValueTransformationSequence") or header
        position = _floats(plane.ImagePositionPatient, 3, "Image Position (Patient)", where)
        frames.append(
            SeriesFrame(
                file_index=index,
                frame_number=number,
                position=(position[0], position[1], position[2]),
                orientation=_floats(
                    orientation.ImageOrientationPatient, 6, "Image Orientation (Patient)", where
                ),
                pixel_spacing=_spacing(measures.PixelSpacing, where),
                slope=float(transform.get("RescaleSlope", 1.0) or 1.0),
                intercept=float(transform.get("RescaleIntercept", 0.0) or 0.0),
            )
        )
    return frames


def read_header(path: Path, index: int, total: int) -> SeriesFile:
    """Read one file's header, find its Pixel Data and check what every image needs.

    Parameters
    ----------
    path : pathlib.Path
        The file.
    index : int
        Its position among the inputs (0-based), for the refusal messages.
    total : int
        Number of inputs.

    Returns
    -------
    SeriesFile
        The header (without Pixel Data) and where Pixel Data starts.

    Raises
    ------
    UnsupportedInput
        If the file is not DICOM, has no Pixel Data, lacks an image attribute,
        is colour or uses a Modality LUT Sequence, or no decoder is installed
        for its transfer syntax.
    PipelineError
        If the file is missing.
    """
    where = f"input {index + 1} of {total}"
    try:
        with path.open("rb") as fh:
            header = pydicom.dcmread(fh, stop_before_pixels=True)
            offset = fh.tell()
            next_tag = fh.read(4)
    except FileNotFoundError as exc:
        raise PipelineError(f"{where} is missing from the spool") from exc
    except InvalidDicomError as exc:
        raise UnsupportedInput(f"{where} is not a DICOM file") from exc
    except (EOFError, ValueError, struct.error, KeyError, TypeError) as exc:
        raise UnsupportedInput(f"{where} cannot be parsed as DICOM") from exc

    transfer_syntax = header.file_meta.get("TransferSyntaxUID")
    if transfer_syntax is None:
        raise UnsupportedInput(f"{where} has no Transfer Syntax UID")
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        # Offsets inside the inflated stream mean nothing in the file; decode via pydicom.
        pixel_offset: int | None = None
    else:
        expected = _PIXEL_DATA_BE if transfer_syntax == ExplicitVRBigEndian else _PIXEL_DATA_LE
        if next_tag != expected:
            raise UnsupportedInput(f"{where} has no Pixel Data")
        pixel_offset = offset

    for keyword in _REQUIRED_IMAGE:
        _require(header, keyword, where)
    if int(header.SamplesPerPixel) != 1:
        raise UnsupportedInput(f"{where} is a colour image; only grayscale is supported")
    if "ModalityLUTSequence" in header:
        raise UnsupportedInput(f"{where} uses a Modality LUT Sequence, which is not supported")
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise UnsupportedInput(
            f"{where} uses transfer syntax {transfer_syntax.name}, which cannot be decoded"
        ) from exc
    if not decoder.is_available:
        raise UnsupportedInput(
            f"{where} uses transfer syntax {transfer_syntax.name}; no decoder is installed for it"
        )
    return SeriesFile(path=path, header=header, pixel_offset=pixel_offset)
