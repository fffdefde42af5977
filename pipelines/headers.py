"""Source headers as hospitals send them, made fit to copy into results (PS3.5 6.2).

highdicom copies the Patient and Study modules of the source images into every
SEG, SR and Secondary Capture, and reads a few attributes directly (Patient's
Name, ID, Birth Date and Sex, Accession Number, Study ID, Study Date and Time).
Real modalities send headers that the standard does not allow, or that
highdicom refuses: an empty or misspelt Specific Character Set (a real GE CT has
(0008,0005) present but empty), ISO 8601 dates (``1961-07-23``) and times
(``12:30:00``), lower-case codes (``m``), strings longer than their VR allows,
missing Type 2 attributes (no Study ID), code extension sets with an empty first
value. :func:`normalise_headers` fixes what DICOM allows to fix, in place, on the
header copies the writers get (never on the files in the spool):

- **Specific Character Set**: kept when highdicom accepts it and it can encode
  every text value; otherwise removed when every value is ASCII (the default
  repertoire), else ``ISO_IR 192`` (UTF-8), which can encode any text. Values
  are decoded with the source's own character set first, so nothing is lost.
- **Dates and times** (DA, TM, DT): ISO 8601 and dotted/slashed forms are
  rewritten to the DICOM form; a value that is no date at all becomes empty.
- **Strings**: control characters removed, codes (CS) upper-cased, values cut
  to the VR's maximum length (LO 64, SH 16, CS 16, a PN component group 64 ...);
  what is still invalid after that becomes empty. Patient numbers (DS, IS in
  group 0010, e.g. Patient's Weight) are re-formatted to fit their VR.
  Geometry (other DS, IS, FD) and UIDs are never touched.
- **Patient's Sex**: ``M``, ``F``, ``O`` or empty (``male`` → ``M``; anything
  else unknown → empty, the Type 2 way of saying "unknown").
- **Type 2 attributes the writers read** are added empty when missing.
- **Private elements** are removed from the copies: no writer needs them, and a
  private element of unknown VR cannot be decoded safely.

Names are never rewritten beyond what the VR forces: a Patient's Name in a
retired form (``DOE JOHN``, no component separator) is copied as it came,
because a result must name the patient exactly as the images do. Each fix is
returned as a :class:`HeaderFix` that names the attribute and the kind of fix,
never the value, so it can be logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import MAX_VALUE_LEN, PersonName, format_number_as_ds, validate_value

__all__ = ["WRITER_TYPE2", "HeaderFix", "normalise_headers"]

#: Type 2 attributes (PS3.3 C.7.1.1, C.7.2.1) highdicom reads from the source directly.
WRITER_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)

# Specific Character Set terms highdicom accepts (highdicom.enum.SpecificCharacterSetValues).
_SINGLE_SETS = frozenset(
    {"ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144", "ISO_IR 127",
     "ISO_IR 126", "ISO_IR 138", "ISO_IR 148", "ISO_IR 203", "ISO_IR 13", "ISO_IR 166",
     "ISO_IR 192", "GB18030", "GBK"}
)  # fmt: skip
_EXTENSION_SETS = frozenset(
    {"ISO 2022 IR 6", "ISO 2022 IR 100", "ISO 2022 IR 101", "ISO 2022 IR 109",
     "ISO 2022 IR 110", "ISO 2022 IR 144", "ISO 2022 IR 127", "ISO 2022 IR 126",
     "ISO 2022 IR 138", "ISO 2022 IR 148", "ISO 2022 IR 203", "ISO 2022 IR 13",
     "ISO 2022 IR 166", "ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149",
     "ISO 2022 IR 58"}
)  # fmt: skip
_MULTI_BYTE = frozenset({"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"})
_UTF8 = "ISO_IR 192"

_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"}
)
#: VRs whose values may hold line breaks and tabs (PS3.5 6.2: ST, LT, UT).
_MULTILINE = frozenset({"LT", "ST", "UT"})
_MAX_LENGTH = {**MAX_VALUE_LEN, "PN": 64, "AS": 4, "TM": 28, "DA": 8, "DT": 54}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_CODE = re.compile(r"[^A-Z0-9 _]")
_DATE = re.compile(r"^(\d{4})[-./]?(\d{2})[-./]?(\d{2})$")
_TIME = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:[.,](\d{1,6}))?)?)?$")
_DATETIME = re.compile(
    r"^(\d{4})-?(\d{2})-?(\d{2})(?:[T ](\d{2}):?(\d{2})(?::?(\d{2})(?:[.,](\d{1,6}))?)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?$"
)
#: The Patient group: its numbers (weight, size) are copied into results; geometry is not there.
_PATIENT = 0x0010
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}


@dataclass(frozen=True, slots=True)
class HeaderFix:
    """One normalisation made to a source header: the attribute and what was done.

    Attributes
    ----------
    keyword : str
        The attribute's keyword (or its tag, for one the dictionary lacks).
    what : str
        The kind of fix, without the value: "written the DICOM way", "cut to
        the VR's maximum length", "emptied: not valid for its VR", "added
        empty", "removed", ...
    """

    keyword: str
    what: str

    def __str__(self) -> str:
        return f"{self.keyword} ({self.what})"


def normalise_headers(datasets: Iterable[Dataset]) -> tuple[HeaderFix, ...]:
    """Make source headers fit to copy into results, in place (see the module docstring).

    Parameters
    ----------
    datasets : Iterable[pydicom.dataset.Dataset]
        The source headers the writers will get; a data set given twice (the
        frames of one multi-frame image) is normalised once.

    Returns
    -------
    tuple[HeaderFix, ...]
        The distinct fixes made, in the order first made; empty when the
        headers were fine.

    Examples
    --------
    >>> ds = Dataset()
    >>> ds.SpecificCharacterSet = ""
    >>> ds.StudyTime = "12:30:00"
    >>> fixes = normalise_headers([ds])
    >>> [str(fix) for fix in fixes if fix.keyword in ("StudyTime", "SpecificCharacterSet")]
    ['StudyTime (written the DICOM way)', \
'SpecificCharacterSet (removed: not valid, and every value is ASCII)']
    >>> ds.StudyTime, "SpecificCharacterSet" in ds, ds.StudyID
    ('123000', False, '')
    """
    fixes: dict[HeaderFix, None] = {}
    seen: set[int] = set()
    for ds in datasets:
        if id(ds) in seen:
            continue
        seen.add(id(ds))
        for fix in _normalise(ds):
            fixes.setdefault(fix, None)
    return tuple(fixes)


def _normalise(ds: Dataset) -> list[HeaderFix]:
    fixes: list[HeaderFix] = []
    charset = ds.get("SpecificCharacterSet")
    # Decode every text value with the source's own character set before it changes.
    for elem in list(_elements(ds, fixes)):
        if elem.VR in _TEXT_VRS or (elem.VR in ("DS", "IS") and elem.tag.group == _PATIENT):
            fix = _fix_element(elem)
            if fix is not None:
                fixes.append(fix)
    for keyword in WRITER_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
            fixes.append(HeaderFix(keyword, "added empty: a Type 2 attribute the writers read"))
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    if sex and _SEX.get(sex) != ds.PatientSex:
        ds.PatientSex = _SEX.get(sex, "")
        fixes.append(HeaderFix("PatientSex", "written as M, F, O or empty"))
    fix = _fix_charset(ds, charset)
    if fix is not None:
        fixes.append(fix)
    return fixes


def _elements(ds: Dataset, fixes: list[HeaderFix]) -> Iterator[DataElement]:
    """Every element, sequences' items included; private and unreadable ones removed."""
    for tag in list(ds.keys()):
        if tag.is_private:
            del ds[tag]
            fixes.append(HeaderFix("private elements", "removed: no writer needs them"))
            continue
        try:
            elem = ds[tag]
        except Exception:  # noqa: BLE001 - pydicom raises many types on a damaged value
            del ds[tag]
            fixes.append(HeaderFix(keyword_for_tag(tag) or str(tag), "removed: unreadable"))
            continue
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _elements(item, fixes)
        else:
            yield elem


def _keyword(elem: DataElement) -> str:
    return elem.keyword or str(elem.tag)


def _valid(vr: str, value: object) -> bool:
    try:
        validate_value(vr, value, config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def _fix_element(elem: DataElement) -> HeaderFix | None:
    """Fix one element's values if its VR does not allow them; say what was done."""
    vr = elem.VR
    raw = elem.value
    values = list(raw) if isinstance(raw, MultiValue | list) else [raw]
    if all(v is None or v == "" for v in values):
        return None
    what = ""
    fixed = []
    for value in values:
        text = "" if value is None else str(value)
        new, how = _fix_number(vr, text) if vr in ("DS", "IS") else _fix_text(vr, text)
        if new != text:
            what = what or how
        fixed.append(new)
    if not what:
        return None
    if vr == "PN":
        elem.value = [PersonName(v) for v in fixed] if len(fixed) > 1 else PersonName(fixed[0])
    elif vr == "IS":
        numbers = [int(v) if v else None for v in fixed]
        elem.value = numbers if len(numbers) > 1 else numbers[0]
    else:
        elem.value = fixed if len(fixed) > 1 else fixed[0]
    return HeaderFix(_keyword(elem), what)


def _fix_number(vr: str, text: str) -> tuple[str, str]:
    """A Patient number (DS, IS) made to fit its VR, and what was done."""
    if _valid(vr, text):
        return text, ""
    try:
        number = float(text)
        fitted = format_number_as_ds(number) if vr == "DS" else str(round(number))
    except (ValueError, OverflowError):
        return "", "emptied: not a number"
    if _valid(vr, fitted):
        return fitted, "re-formatted to fit its VR"
    return "", "emptied: not valid for its VR"


def _fix_text(vr: str, text: str) -> tuple[str, str]:
    """A value made valid for its VR, and what was done ("" when nothing was)."""
    cleaned = (_CONTROL_BUT_LINES if vr in _MULTILINE else _CONTROL).sub("", text)
    how = "control characters removed" if cleaned != text else ""
    if vr in ("DA", "TM", "DT"):
        cleaned = cleaned.strip()
    if _valid(vr, cleaned):
        return cleaned, how
    if vr in ("DA", "TM", "DT"):
        rewritten = _date_time(vr, cleaned)
        if rewritten is not None and _valid(vr, rewritten):
            return rewritten, "written the DICOM way"
        return "", "emptied: not a valid date or time"
    if vr == "CS":
        cleaned = _CODE.sub("_", cleaned.upper().strip())
        how = "written as a code (upper case)"
    if vr == "PN":
        cut = "=".join(group_[:64] for group_ in cleaned.split("="))
    else:
        cut = cleaned[: _MAX_LENGTH.get(vr, len(cleaned))]
    if cut != cleaned:
        how = "cut to the VR's maximum length"
    if _valid(vr, cut):
        return cut, how
    return "", "emptied: not valid for its VR"


def _date_time(vr: str, text: str) -> str | None:
    """An ISO 8601 or dotted date, time or date-time written the DICOM way, else None."""
    if vr == "DA":
        match = _DATE.match(text)
        return "".join(match.groups()) if match else None
    if vr == "TM":
        match = _TIME.match(text)
        if not match:
            return None
        hh, mm, ss, frac = match.groups()
        return hh + (mm or "") + (ss or "") + (f".{frac}" if frac else "")
    match = _DATETIME.match(text)
    if not match:
        return None
    year, month, day, hh, mm, ss, frac, zone = match.groups()
    out = year + month + day + (hh or "") + (mm or "") + (ss or "") + (f".{frac}" if frac else "")
    if zone:
        out += "+0000" if zone == "Z" else zone.replace(":", "")
    return out


def _charset_ok(charset: object) -> bool:
    """Whether highdicom accepts this Specific Character Set value."""
    values = [str(v) for v in charset] if isinstance(charset, MultiValue | list) else [charset]
    if len(values) == 1:
        return values[0] in _SINGLE_SETS
    return all(v in _EXTENSION_SETS for v in values) and values[0] not in _MULTI_BYTE


def _texts(ds: Dataset) -> list[str]:
    out: list[str] = []
    for elem in ds.iterall():
        if elem.VR in _TEXT_VRS and elem.value not in (None, ""):
            values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
            out.extend(str(v) for v in values)
    return out


def _encodes(texts: list[str], charset: object) -> bool:
    """Whether a single-valued character set encodes every text (ISO 2022 sets: trusted)."""
    if isinstance(charset, MultiValue | list):
        return True
    try:
        (encoding,) = convert_encodings([str(charset)])
        for text in texts:
            text.encode(encoding)
    except (LookupError, UnicodeError, ValueError):
        return False
    return True


def _fix_charset(ds: Dataset, charset: object) -> HeaderFix | None:
    texts = _texts(ds)
    if charset not in (None, "") and _charset_ok(charset) and _encodes(texts, charset):
        return None
    if all(text.isascii() for text in texts):
        if "SpecificCharacterSet" not in ds:
            return None
        del ds.SpecificCharacterSet
        return HeaderFix("SpecificCharacterSet", "removed: not valid, and every value is ASCII")
    ds.SpecificCharacterSet = _UTF8
    return HeaderFix("SpecificCharacterSet", "set to ISO_IR 192 (UTF-8): the source's cannot")
