"""The bytes around a received data set: its header tags and its Part-10 file meta.

Both sit on the C-STORE hot path, so neither goes through a full decode:

- :func:`read_header` parses the data set only up to group 0028 (pydicom's
  ``stop_when``), never touching Pixel Data;
- :func:`file_meta_bytes` encodes the File Meta Information group (PS3.10 7.1)
  directly, instead of building a pydicom dataset for every instance.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from dicom_node import __version__

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION", "file_meta_bytes", "read_header"]

#: Implementation Class UID of dicom-node (a name-based 2.25 UID, PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "dicom-node").int)
#: Implementation Version Name (SH, at most 16 characters).
IMPLEMENTATION_VERSION = f"DICOM_NODE_{__version__}"[:16]

_PREAMBLE = b"\x00" * 128 + b"DICM"
_LAST_HEADER_TAG = 0x0028FFFF  # every attribute read_header's callers need is below it


def _element(group_element: int, vr: bytes, value: bytes) -> bytes:
    tag = struct.pack("<HH", group_element >> 16, group_element & 0xFFFF)
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information of one received instance.

    Parameters
    ----------
    sop_class_uid : str
        Media Storage SOP Class UID (from the C-STORE request).
    sop_instance_uid : str
        Media Storage SOP Instance UID (from the C-STORE request).
    transfer_syntax_uid : str
        The presentation context's transfer syntax: the encoding of the data set.
    source_ae : str
        Source Application Entity Title (0002,0016): the calling AE.

    Returns
    -------
    bytes
        What precedes the data set in a Part-10 file (PS3.10 7.1), Explicit VR
        Little Endian with a correct group length.
    """
    body = b"".join(
        (
            _element(0x00020001, b"OB", b"\x00\x01"),
            _element(0x00020002, b"UI", _ui(sop_class_uid)),
            _element(0x00020003, b"UI", _ui(sop_instance_uid)),
            _element(0x00020010, b"UI", _ui(transfer_syntax_uid)),
            _element(0x00020012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _element(0x00020013, b"SH", _text(IMPLEMENTATION_VERSION)),
            _element(0x00020016, b"AE", _text(source_ae or "UNKNOWN")),
        )
    )
    return _PREAMBLE + _element(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def read_header(stream: BytesIO, transfer_syntax: UID) -> Dataset:
    """Parse a received data set up to group 0028, leaving Pixel Data unread.

    Parameters
    ----------
    stream : io.BytesIO
        The C-STORE Data Set as received; its position is restored.
    transfer_syntax : pydicom.uid.UID
        The presentation context's transfer syntax.

    Returns
    -------
    pydicom.dataset.Dataset
        The header elements; values convert lazily on access, which can raise
        for malformed data.

    Raises
    ------
    Exception
        Whatever pydicom or zlib raise for malformed input; the caller answers
        0xC000 for any of them.
    """
    position = stream.tell()
    try:
        source: BytesIO = stream
        stream.seek(0)
        if transfer_syntax.is_deflated:
            source = BytesIO(zlib.decompress(stream.getvalue(), -zlib.MAX_WBITS))
        return read_dataset(
            source,
            transfer_syntax.is_implicit_VR,
            transfer_syntax.is_little_endian,
            stop_when=lambda tag, _vr, _length: tag > _LAST_HEADER_TAG,
        )
    finally:
        stream.seek(position)
