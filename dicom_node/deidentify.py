"""De-identified copies for a research destination: PS3.15 Annex E, Basic Profile and options.

**The profile.** Every attribute of PS3.15 Table E.1-1 gets its action, at every
depth of every sequence: X removed, Z emptied, D replaced by a dummy of its VR,
U replaced by a pseudonymous UID; the combined actions (X/Z, X/D, Z/D, X/Z/D)
take the one that keeps the object usable (Z for X/Z, D for the others, an
empty sequence for a Z/D or X/Z/D sequence); X/Z/U*
sequences stay, with the UIDs inside replaced. The table is the standard's, as
``dicom-anonymizer`` (KitwareMedical) ships it scraped from the DocBook source
(:data:`TABLE_VERSION`); this module only applies it. Every private attribute
is removed (Retain Safe Private is not offered). Patient's Name and Patient ID
become one pseudonym per patient (``ANON-`` and 12 hex digits, keyed), so a
research set can still tell patients apart.

**Options** (``export.destinations[].deidentify``), recorded in De-identification
Method Code Sequence (PS3.16 CID 7050):

- Retain Longitudinal Temporal Information with Modified Dates (113107): every
  date the profile would remove or replace (DA, and the date of a DT) is shifted
  back by a per-patient number of days instead, so intervals between a patient's
  studies survive; times are kept; Patient's Birth Date is still removed.
- Retain Device Identity (113109): :data:`DEVICE_IDENTITY` are kept.
- Clean Descriptors (113105): descriptions, comments and protocol names are kept
  with every identifier of the patient (name parts, IDs, accession number, birth
  date) cut out of them, instead of removed.
- Clean Structured Content (113104, always on): the Content Sequence of an SR is
  kept and the profile applied inside it (its UIDs, dates and names), with the
  same cleaning of text values; without it a result SR would be empty.

**UIDs** are replaced by ``2.25.`` and the first 128 bits of an HMAC-SHA256 of
the destination's name and the original UID, keyed by the destination's secret
key: the same original always gives the same pseudonym, in a source image, in
its SEG's Referenced Series Sequence and in its SR's evidence and content, so
a study and its results stay linked; two destinations get unlinkable sets.
Each pair is kept in the state DB (``deid_uids``) with the original encrypted
(Fernet); the key is a file (``deidentify.key_file``), never in the database.

**Burned-in annotations.** Images of the modalities in :data:`BURNED_IN_MODALITIES`
whose Burned In Annotation (0028,0301) is YES or absent are refused (the
export row fails with the reason) unless ``allow_burned_in_annotation``: the
profile cleans headers, not pixels.
"""

from __future__ import annotations

import datetime
import hmac
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as _e11
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from sqlalchemy import select, text

from dicom_node.errors import NodeError
from dicom_node.phi import study_tag
from dicom_node.settings import DeidentifySettings
from dicom_node.state import StateDB
from dicom_node.state.schema import DeidUid, utcnow

__all__ = [
    "BURNED_IN_MODALITIES",
    "DEVICE_IDENTITY",
    "TABLE_VERSION",
    "Action",
    "DeidentifyError",
    "Deidentifier",
    "Prepared",
    "ResearchExport",
    "UidMap",
    "burned_in_refusal",
    "load_key",
    "profile_table",
]

#: Edition of PS3.15 whose Table E.1-1 is applied.
TABLE_VERSION = "2026c"

#: Modalities whose images may carry burned-in text; without an explicit
#: Burned In Annotation NO they are refused (DX family: DX, MG, IO).
BURNED_IN_MODALITIES = frozenset({"US", "SC", "DX", "MG", "IO", "XC", "OT"})

#: Attributes the Retain Device Identity option keeps (Table E.1-1, "Rtn. Dev. Id." K).
DEVICE_IDENTITY = frozenset(
    {
        "CassetteID", "DetectorID", "DeviceAlternateIdentifier", "DeviceDescription",
        "DeviceLabel", "DeviceSerialNumber", "DeviceUID", "GantryID", "GeneratorID",
        "ManufacturerDeviceClassUID", "ManufacturerDeviceIdentifier",
        "PerformedStationAETitle", "PerformedStationName", "PlateID",
        "ScheduledStationAETitle", "ScheduledStationName", "SourceSerialNumber",
        "StationName", "UDISequence", "UniqueDeviceIdentifier",
    }
)  # fmt: skip

_DESCRIPTOR = re.compile(r"(Description|Comments?|ProtocolName|Notes|Label)$")
_METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "structured": ("113104", "Clean Structured Content Option"),
    "descriptors": ("113105", "Clean Descriptors Option"),
    "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "device": ("113109", "Retain Device Identity Option"),
}
_CONTENT_SEQUENCE = 0x0040A730
_BIRTH_DATE = 0x00100030
_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020


class Action(StrEnum):
    """What Table E.1-1 does to an attribute (PS3.15 Table E.1-1a)."""

    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    #: Z/D and X/Z/D: a dummy value, or an empty sequence (Type 2 sequences stay).
    EMPTY_OR_DUMMY = "Z/D"
    UID = "U"
    KEEP_REFERENCES = "X/Z/U*"


class DeidentifyError(NodeError):
    """De-identification cannot run: no key, a bad key, an unreadable object."""


def _table() -> tuple[dict[int, Action], list[tuple[int, int, int, int]]]:
    actions: dict[int, Action] = {}
    masked: list[tuple[int, int, int, int]] = []
    lists = (
        ("X_TAGS", Action.REMOVE), ("Z_TAGS", Action.EMPTY), ("D_TAGS", Action.DUMMY),
        ("U_TAGS", Action.UID), ("X_Z_TAGS", Action.EMPTY), ("X_D_TAGS", Action.DUMMY),
        ("Z_D_TAGS", Action.EMPTY_OR_DUMMY), ("X_Z_D_TAGS", Action.EMPTY_OR_DUMMY),
        ("X_Z_U_STAR_TAGS", Action.KEEP_REFERENCES),
    )  # fmt: skip
    for name, action in lists:
        for entry in getattr(_e11, name):
            if len(entry) == 4:  # a repeating group: (group, element, group mask, element mask)
                if action is not Action.REMOVE:
                    raise DeidentifyError(f"unexpected masked {name} entry in Table E.1-1")
                masked.append(tuple(entry))
            else:
                actions[(entry[0] << 16) | entry[1]] = action
    return actions, masked


_ACTIONS, _MASKED = _table()


def profile_table() -> dict[int, Action]:
    """Table E.1-1 as applied here: tag to action (repeating groups left out)."""
    return dict(_ACTIONS)


def _action(tag: BaseTag) -> Action | None:
    found = _ACTIONS.get(int(tag))
    if found is not None:
        return found
    for group, element, group_mask, element_mask in _MASKED:
        if tag.group & group_mask == group and tag.element & element_mask == element:
            return Action.REMOVE
    return None


def load_key(path: Path | None) -> bytes:
    """Read and check a Fernet key (32 url-safe base64 bytes) from its file.

    Raises
    ------
    DeidentifyError
        If no file is configured, it cannot be read, or it holds no Fernet key.
    """
    if path is None:
        raise DeidentifyError("deidentify.key_file is not set: no key to pseudonymise with")
    try:
        key = path.read_bytes().strip()
        Fernet(key)
    except OSError as exc:
        raise DeidentifyError(f"deidentify key file cannot be read ({exc.strerror})") from exc
    except ValueError as exc:
        raise DeidentifyError("deidentify key file holds no Fernet key") from exc
    return key


def burned_in_refusal(ds: Dataset) -> str | None:
    """Why an image must not be sent de-identified (burned-in text), or None.

    Examples
    --------
    >>> ds = Dataset(); ds.Modality = "US"
    >>> burned_in_refusal(ds)
    'US image without Burned In Annotation NO: pixels may carry identifying text'
    """
    modality = str(ds.get("Modality", "")).upper()
    if modality not in BURNED_IN_MODALITIES:
        return None
    value = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if value == "NO":
        return None
    if value == "YES":
        return f"{modality} image with Burned In Annotation YES: pixels carry text"
    return f"{modality} image without Burned In Annotation NO: pixels may carry identifying text"


@dataclass
class _Identity:
    """The patient's identifiers, to cut out of text that is kept (clean options)."""

    words: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, ds: Dataset) -> _Identity:
        found: set[str] = set()
        name = str(ds.get("PatientName", ""))
        found.update(part for part in re.split(r"[\^= ,]+", name) if len(part) >= 2)
        for keyword in ("PatientID", "AccessionNumber", "PatientBirthDate", "OtherPatientIDs"):
            value = ds.get(keyword)
            if value:
                found.update(str(v) for v in (value if isinstance(value, list) else [value]))
        return cls(sorted((w for w in found if len(w) >= 2), key=len, reverse=True))

    def clean(self, value: str) -> str:
        for word in self.words:
            value = re.sub(re.escape(word), "", value, flags=re.IGNORECASE)
        return re.sub(r"\s{2,}", " ", value).strip()


class Deidentifier:
    """Applies the Basic Profile and the chosen options to data sets, in place.

    Parameters
    ----------
    settings : DeidentifySettings
        The destination's options.
    destination : str
        The destination's name: part of every pseudonym.
    key : bytes
        The destination's Fernet key (:func:`load_key`).
    """

    def __init__(self, settings: DeidentifySettings, destination: str, key: bytes) -> None:
        self.settings = settings
        self.destination = destination
        self._secret = hmac.new(key, b"dicom-node pseudonyms", "sha256").digest()
        #: Original UID to pseudonym, for every UID replaced since the last :meth:`take_uids`.
        self.replaced: dict[str, str] = {}

    def _digest(self, *parts: str) -> bytes:
        message = "\0".join((self.destination, *parts)).encode("utf-8", "replace")
        return hmac.new(self._secret, message, "sha256").digest()

    def uid(self, original: str) -> str:
        """The pseudonym of a UID: ``2.25.`` and 128 bits of a keyed HMAC.

        Examples
        --------
        >>> d = Deidentifier(DeidentifySettings(), "research", Fernet.generate_key())
        >>> d.uid("1.2.3") == d.uid("1.2.3") != d.uid("1.2.4")
        True
        """
        if not original:
            return original
        pseudonym = "2.25." + str(int.from_bytes(self._digest("uid", original)[:16], "big"))
        self.replaced[original] = pseudonym
        return pseudonym

    def patient_pseudonym(self, patient_id: str) -> str:
        """One pseudonym per patient, for Patient's Name and Patient ID."""
        return "ANON-" + self._digest("patient", patient_id).hex()[:12].upper()

    def date_shift_days(self, patient_id: str) -> int:
        """Days every date of this patient moves back (1 .. ``max_date_shift_days``)."""
        draw = int.from_bytes(self._digest("dates", patient_id)[:8], "big")
        return 1 + draw % self.settings.max_date_shift_days

    def take_uids(self) -> dict[str, str]:
        """The UIDs replaced since the last call, original to pseudonym; then forgets them."""
        taken, self.replaced = self.replaced, {}
        return taken

    # -- the profile ----------------------------------------------------------------

    def apply(self, ds: Dataset) -> None:
        """De-identify a data set in place (and its File Meta Information).

        Parameters
        ----------
        ds : pydicom.dataset.Dataset
            A data set read from a Part 10 file.
        """
        patient_id = str(ds.get("PatientID", ""))
        identity = _Identity.of(ds)
        shift = self.date_shift_days(patient_id)
        self._walk(ds, identity, shift, patient_id)
        pseudonym = self.patient_pseudonym(patient_id)
        ds.PatientName = pseudonym
        ds.PatientID = pseudonym
        ds.PatientIdentityRemoved = "YES"
        self._method(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or self.uid(
                str(meta.MediaStorageSOPInstanceUID)
            )

    def _method(self, ds: Dataset) -> None:
        used = ["basic", "structured"]
        if self.settings.clean_descriptors:
            used.append("descriptors")
        if self.settings.retain_longitudinal_modified_dates:
            used.append("dates")
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        if self.settings.retain_device_identity:
            used.append("device")
        codes = []
        for name in used:
            value, meaning = _METHOD_CODES[name]
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
        ds.DeidentificationMethod = f"dicom-node: PS3.15 {TABLE_VERSION} Table E.1-1"

    def _walk(self, ds: Dataset, identity: _Identity, shift: int, patient_id: str) -> None:
        for tag in list(ds.keys()):
            element = ds[tag]
            if tag.is_private:
                del ds[tag]
                continue
            action = _action(tag)
            if action is None:
                if element.VR == "SQ":
                    self._recurse(element, identity, shift, patient_id)
                continue
            self._act(ds, element, action, identity, shift, patient_id)

    def _recurse(self, element: DataElement, identity: _Identity, shift: int, pid: str) -> None:
        for item in element.value or []:
            self._walk(item, identity, shift, pid)

    def _retained(self, element: DataElement, identity: _Identity) -> bool:
        keyword = element.keyword
        if self.settings.retain_device_identity and keyword in DEVICE_IDENTITY:
            return True
        if (
            self.settings.clean_descriptors
            and element.VR in ("LO", "SH", "ST", "LT", "UT", "UC")
            and _DESCRIPTOR.search(keyword)
        ):
            element.value = identity.clean(str(element.value or ""))
            return True
        return False

    def _act(
        self,
        ds: Dataset,
        element: DataElement,
        action: Action,
        identity: _Identity,
        shift: int,
        patient_id: str,
    ) -> None:
        tag = element.tag
        if self._retained(element, identity):
            return
        if int(tag) == _CONTENT_SEQUENCE:
            # Clean Structured Content: the report stays, de-identified inside.
            self._recurse(element, identity, shift, patient_id)
            return
        if action is Action.KEEP_REFERENCES:
            self._recurse(element, identity, shift, patient_id)
            return
        if action is Action.UID:
            if element.VR == "UI" and element.value:
                values = element.value if element.VM > 1 else [element.value]
                replaced = [self.uid(str(v)) for v in values]
                element.value = replaced if element.VM > 1 else replaced[0]
            return
        dates = self.settings.retain_longitudinal_modified_dates
        if dates and int(tag) != _BIRTH_DATE and element.VR in ("DA", "DT", "TM"):
            if element.VR != "TM":
                element.value = _shift(element.value, element.VR, shift)
            return
        if action is Action.REMOVE:
            del ds[tag]
        elif action is Action.EMPTY or (action is Action.EMPTY_OR_DUMMY and element.VR == "SQ"):
            _empty(ds, element)
        elif int(tag) in (_PATIENT_NAME, _PATIENT_ID):
            return  # set to the patient's pseudonym by apply()
        else:
            _dummy(ds, element, self)


def _empty(ds: Dataset, element: DataElement) -> None:
    if element.VR == "SQ":
        element.value = DicomSequence([])
    elif element.VR in ("US", "SS", "UL", "SL", "FL", "FD", "IS", "DS", "OB", "OW", "UN"):
        element.value = None
    else:
        element.value = ""
    ds[element.tag] = element


def _dummy(ds: Dataset, element: DataElement, deid: Deidentifier) -> None:
    vr = element.VR
    dummies = {
        "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y",
        "IS": "0", "DS": "0",
    }  # fmt: skip
    if vr == "UI":
        element.value = deid.uid(str(element.value)) if element.value else element.value
    elif vr in dummies:
        element.value = dummies[vr]
    elif vr in ("LO", "SH", "PN", "CS", "AE", "LT", "ST", "UT", "UC", "UR"):
        element.value = "ANONYMIZED"
    elif vr in ("US", "SS", "UL", "SL", "FL", "FD"):
        element.value = 0
    else:  # sequences and binary values have no meaningful dummy: removed
        del ds[element.tag]


def _shift(value: object, vr: str, days: int) -> object:
    """Move a DA or DT value (or each of several) ``days`` back; unparseable becomes empty."""
    if value is None or value == "":
        return value
    values = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    out = []
    for item in values:
        raw = str(item)
        try:
            day = datetime.datetime.strptime(raw[:8], "%Y%m%d").date()
        except ValueError:
            return ""
        moved = (day - datetime.timedelta(days=days)).strftime("%Y%m%d")
        out.append(moved + raw[8:] if vr == "DT" else moved)
    return out if len(out) > 1 else out[0]


class UidMap:
    """The pseudonym ↔ original UID pairs of a destination, originals encrypted (Fernet).

    Parameters
    ----------
    state : StateDB
        The state DB (table ``deid_uids``).
    destination : str
        The destination's name.
    key : bytes
        Its Fernet key.
    """

    _INSERT = text(
        "INSERT INTO deid_uids (destination, pseudonym, original_digest, original, study_tag,"
        " created_at) VALUES (:destination, :pseudonym, :digest, :original, :tag, :now)"
        " ON CONFLICT (destination, original_digest) DO NOTHING"
    )

    def __init__(self, state: StateDB, destination: str, key: bytes) -> None:
        self.state = state
        self.destination = destination
        self._fernet = Fernet(key)
        self._digest_key = hmac.new(key, b"dicom-node uid digests", "sha256").digest()

    def _digest(self, original: str) -> str:
        return hmac.new(self._digest_key, original.encode(), "sha256").hexdigest()

    def remember(self, pairs: dict[str, str], study_uid: str) -> None:
        """Keep original → pseudonym pairs (once each)."""
        if not pairs:
            return
        now = utcnow()
        tag = study_tag(study_uid)
        rows = [
            {"destination": self.destination, "pseudonym": pseudonym,
             "digest": self._digest(original),
             "original": self._fernet.encrypt(original.encode()).decode("ascii"),
             "tag": tag, "now": now}
            for original, pseudonym in pairs.items()
        ]  # fmt: skip
        with self.state.session() as s:
            s.execute(self._INSERT, rows)

    def original(self, pseudonym: str) -> tuple[str, str] | None:
        """The original UID of a pseudonym and the study tag it belongs to, or None.

        Raises
        ------
        DeidentifyError
            If the row was encrypted with another key.
        """
        with self.state.session() as s:
            row = s.execute(
                select(DeidUid.original, DeidUid.study_tag)
                .where(DeidUid.destination == self.destination)
                .where(DeidUid.pseudonym == pseudonym)
                .limit(1)
            ).first()
        if row is None:
            return None
        try:
            return self._fernet.decrypt(row[0].encode("ascii")).decode(), row[1]
        except InvalidToken as exc:
            raise DeidentifyError("the mapping was encrypted with another key") from exc


@dataclass
class Prepared:
    """De-identified copies ready to send, in the order of the originals."""

    folder: Path | None
    paths: list[Path | None]
    refusals: dict[int, str]

    def cleanup(self) -> None:
        """Remove the copies (they exist only for the send)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class ResearchExport:
    """Makes de-identified copies of a job's objects for a research destination.

    Parameters
    ----------
    state : StateDB
        Where the UID mapping is kept.
    tmp_dir : pathlib.Path
        A folder on the spool's file system for the copies (the spool's ``tmp``).
    """

    def __init__(self, state: StateDB, tmp_dir: Path) -> None:
        self.state = state
        self.tmp_dir = tmp_dir

    def prepare(
        self, destination: str, settings: DeidentifySettings, study_uid: str, paths: Sequence[Path]
    ) -> Prepared:
        """De-identify every file, or say why one is refused.

        Parameters
        ----------
        destination : str
            The destination's name.
        settings : DeidentifySettings
            Its options and key file.
        study_uid : str
            The study (to tag the mapping rows).
        paths : Sequence[pathlib.Path]
            The originals on the spool.

        Returns
        -------
        Prepared
            A copy per original, or None with a refusal reason at its index.

        Raises
        ------
        DeidentifyError
            If the key cannot be loaded (nothing can be sent: a configuration error).
        """
        key = load_key(settings.key_file)
        deid = Deidentifier(settings, destination, key)
        folder = self.tmp_dir / f"deid-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        out: list[Path | None] = []
        refusals: dict[int, str] = {}
        for index, path in enumerate(paths):
            try:
                ds = dcmread(path)
            except (OSError, ValueError) as exc:
                out.append(None)
                refusals[index] = f"unreadable for de-identification ({type(exc).__name__})"
                continue
            reason = None if settings.allow_burned_in_annotation else burned_in_refusal(ds)
            if reason is not None:
                out.append(None)
                refusals[index] = f"refused for research export: {reason}"
                continue
            deid.apply(ds)
            target = folder / f"{index}.dcm"
            ds.save_as(target, enforce_file_format=True)
            out.append(target)
        UidMap(self.state, destination, key).remember(deid.take_uids(), study_uid)
        return Prepared(folder, out, refusals)
