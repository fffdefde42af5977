"""Decode the stored values of an image's frames, with one seek where possible.

Uncompressed little-endian frames (the common case for CT from a scanner) are
read straight from the file at the Pixel Data offset that
:func:`pipelines.load.read_header` noted, with no second parse; anything else
goes through pydicom and its decoder plugins.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pydicom

from pipelines.errors import PipelineError
from pipelines.load import NATIVE_TRANSFER_SYNTAXES, SeriesFile

__all__ = ["decode_with_pydicom", "read_native"]


def read_native(item: SeriesFile, frame_index: int = 0) -> npt.NDArray[np.integer] | None:
    """Read an uncompressed little-endian frame with one seek, or None to use pydicom.

    The element header at the recorded offset is checked (tag, VR, length), so a
    file that does not look exactly as expected falls back to pydicom.

    Parameters
    ----------
    item : SeriesFile
        The file, with the offset of its Pixel Data element.
    frame_index : int
        0-based frame inside a multi-frame file.

    Returns
    -------
    numpy.ndarray or None
        The stored values ``(rows, columns)``, with bits above Bits Stored
        masked or sign-extended; None when the file is not plain
        little-endian 8/16/32-bit data that can be read this way.
    """
    header = item.header
    syntax = header.file_meta.TransferSyntaxUID
    bits_allocated = int(header.BitsAllocated)
    if item.pixel_offset is None or syntax not in NATIVE_TRANSFER_SYNTAXES:
        return None
    if bits_allocated not in (8, 16, 32):
        return None
    rows, columns = int(header.Rows), int(header.Columns)
    expected = rows * columns * (bits_allocated // 8)
    whole = expected * item.number_of_frames
    explicit = syntax == pydicom.uid.ExplicitVRLittleEndian
    with item.path.open("rb") as fh:
        fh.seek(item.pixel_offset)
        head = fh.read(12 if explicit else 8)
        if len(head) < (12 if explicit else 8) or head[:4] != b"\xe0\x7f\x10\x00":
            return None
        if explicit:
            if head[4:6] not in (b"OW", b"OB"):
                return None
            length = int.from_bytes(head[8:12], "little")
        else:
            length = int.from_bytes(head[4:8], "little")
        # An odd-sized 8-bit frame is padded with one byte.
        if length not in (whole, whole + 1):
            return None
        if frame_index:
            fh.seek(frame_index * expected, 1)
        buffer = fh.read(expected)
    if len(buffer) != expected:
        return None
    signed = int(header.PixelRepresentation) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")
    frame = np.frombuffer(buffer, dtype=dtype).reshape(rows, columns)
    bits_stored = int(header.BitsStored)
    if bits_stored < bits_allocated:
        # Bits above Bits Stored are not pixel data (PS3.5 8.1.1): mask, or sign-extend.
        shift = bits_allocated - bits_stored
        mask = dtype.type((1 << bits_stored) - 1)
        frame = (frame << shift) >> shift if signed else frame & mask
    return frame


def decode_with_pydicom(item: SeriesFile, what: str) -> npt.NDArray[np.generic]:
    """Decode a file's pixel data through pydicom (compressed, deflated, big-endian, 1-bit).

    pydicom hands compressed frames to the installed plugins: pylibjpeg-libjpeg
    (JPEG baseline, extended, lossless; JPEG-LS), pylibjpeg-openjpeg (JPEG 2000),
    pylibjpeg-rle or its own RLE decoder, and GDCM where it is installed.

    Parameters
    ----------
    item : SeriesFile
        The file.
    what : str
        How the refusal names it, e.g. ``"slice 3 of 120"``.

    Returns
    -------
    numpy.ndarray
        Stored values: ``(rows, columns)``, or ``(frames, rows, columns)`` for a
        multi-frame file.

    Raises
    ------
    PipelineError
        If the pixel data cannot be decoded.
    """
    try:
        dataset = pydicom.dcmread(item.path)
        frame: npt.NDArray[np.generic] = dataset.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, EOFError, AttributeError) as exc:
        raise PipelineError(f"pixel data of {what} cannot be decoded") from exc
    return frame
