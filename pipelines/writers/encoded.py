"""Long numeric values written as already-encoded bytes (Explicit VR Little Endian).

An outline has hundreds of points and a job has thousands of outlines. pydicom
checks and converts every number it is given one by one (about 7 microseconds
a number: two seconds for a GSPS series, twenty for an RT Structure Set of 300
slices); encoding the whole array at once with NumPy and handing pydicom the
bytes as a raw element costs almost nothing. pydicom writes raw elements as
they are, provided the data set holding them says it is already in the file's
encoding (:func:`item`); otherwise it decodes every value again to write it.
Every object the node writes is Explicit VR Little Endian, the encoding these
bytes are in. ``tests/unit/pipelines/test_gsps.py`` and the RTSTRUCT read-back
check that readers get the same numbers.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

__all__ = ["decimal_strings", "floats", "item"]

# The character set pydicom gives a data set that declares none (ISO_IR 100).
_DEFAULT_CHARACTER_SET = "iso8859"


def item() -> Dataset:
    """A new sequence item that may hold raw elements: it says it is Explicit VR Little Endian.

    Returns
    -------
    pydicom.dataset.Dataset
        Empty; pydicom writes its raw elements without decoding them.
    """
    dataset = Dataset()
    dataset.set_original_encoding(False, True, _DEFAULT_CHARACTER_SET)
    return dataset


def floats(keyword: str, values: npt.ArrayLike) -> RawDataElement:
    """An FL element holding ``values`` as little-endian 32-bit floats.

    Parameters
    ----------
    keyword : str
        The attribute, e.g. ``"GraphicData"``; its VR must be FL.
    values : numpy.typing.ArrayLike
        The numbers, in order (flattened).

    Returns
    -------
    pydicom.dataelem.RawDataElement
        Ready to assign with ``dataset[element.tag] = element``.

    Raises
    ------
    ValueError
        If the keyword is not a DICOM attribute.
    """
    data = np.ascontiguousarray(np.asarray(values, dtype="<f4").ravel()).tobytes()
    return _raw(keyword, "FL", data)


def decimal_strings(keyword: str, values: npt.ArrayLike, places: int = 3) -> RawDataElement:
    """A DS element holding ``values`` with ``places`` decimals, backslash-separated.

    Parameters
    ----------
    keyword : str
        The attribute, e.g. ``"ContourData"``; its VR must be DS.
    values : numpy.typing.ArrayLike
        The numbers, in order (flattened).
    places : int
        Decimals of each value; each must fit in 16 characters (PS3.5 6.2).

    Returns
    -------
    pydicom.dataelem.RawDataElement
        Ready to assign with ``dataset[element.tag] = element``.

    Raises
    ------
    ValueError
        If the keyword is not a DICOM attribute, or a value is too long for DS.
    """
    numbers = np.asarray(values, dtype=np.float64).ravel()
    text = "\\".join(f"{v:.{places}f}" for v in numbers.tolist())
    if numbers.size and max(len(part) for part in text.split("\\")) > 16:
        raise ValueError(f"{keyword}: a value does not fit in a Decimal String")
    data = text.encode("ascii")
    if len(data) % 2:
        data += b" "  # DS values are padded to even length with a space (PS3.5 6.2)
    return _raw(keyword, "DS", data)


def _raw(keyword: str, vr: str, data: bytes) -> RawDataElement:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    return RawDataElement(Tag(tag), vr, len(data), data, 0, False, True)
