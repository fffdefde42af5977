"""Read a series' headers from disk and check that they can form one volume.

This is the first step of a pipeline (``load_series`` → ``to_volume`` → model →
writers). It reads only headers (``stop_before_pixels``), so a series that is
not for us is refused before any pixel is decoded. While reading, it notes
where each file's Pixel Data element starts, which lets
:func:`pipelines.volume.to_volume` read uncompressed pixels with one seek
instead of parsing the file a second time.

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

__all__ = ["NATIVE_TRANSFER_SYNTAXES", "Series", "SeriesFile", "load_series"]

logger = logging.getLogger(__name__)

#: Uncompressed little-endian transfer syntaxes whose pixels are read without pydicom.
NATIVE_TRANSFER_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})

# Attributes without which a slice cannot be placed in a volume or referenced by a SEG.
_REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
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


@dataclass(frozen=True, slots=True)
class Series:
    """The headers of one series, checked to be single-frame images of one size.

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
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    files: tuple[SeriesFile, ...]

    @property
    def headers(self) -> tuple[Dataset, ...]:
        """The headers, in input order."""
        return tuple(f.header for f in self.files)


def load_series(paths: Sequence[Path]) -> Series:
    """Read the headers of a series and check that it can become a volume.

    Parameters
    ----------
    paths : Sequence[pathlib.Path]
        One file per slice, in any order.

    Returns
    -------
    Series
        Headers and Pixel Data offsets, in input order.

    Raises
    ------
    UnsupportedInput
        If there is no input, a file is not DICOM, lacks an attribute a volume
        needs, has no Pixel Data, is multi-frame or colour, uses a transfer syntax
        that cannot be decoded, or the files belong to more than one series.
    InconsistentGeometry
        If the slices differ in size or frame of reference.
    PipelineError
        If an input file is missing or the same instance is given twice.
    """
    if not paths:
        raise UnsupportedInput("the job has no input files")
    total = len(paths)
    files = tuple(_read_header(Path(p), index, total) for index, p in enumerate(paths))
    headers = [f.header for f in files]

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

    first = headers[0]
    logger.debug("read %d headers", total)
    return Series(
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=frames_of_reference.pop(),
        files=files,
    )


def _read_header(path: Path, index: int, total: int) -> SeriesFile:
    """Read one file's header, find its Pixel Data and check the attributes."""
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

    for keyword in _REQUIRED:
        if keyword not in header or header[keyword].value in (None, ""):
            raise UnsupportedInput(f"{where} lacks {keyword}")
    if int(header.get("NumberOfFrames", 1) or 1) != 1:
        raise UnsupportedInput(f"{where} is a multi-frame image; only single-frame is supported")
    if int(header.SamplesPerPixel) != 1:
        raise UnsupportedInput(f"{where} is a colour image; only grayscale is supported")
    if "ModalityLUTSequence" in header:
        raise UnsupportedInput(f"{where} uses a Modality LUT Sequence, which is not supported")
    if len(header.ImageOrientationPatient) != 6 or len(header.ImagePositionPatient) != 3:
        raise UnsupportedInput(f"{where} has a malformed Image Position/Orientation (Patient)")
    if len(header.PixelSpacing) != 2:
        raise UnsupportedInput(f"{where} has a malformed Pixel Spacing")
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
