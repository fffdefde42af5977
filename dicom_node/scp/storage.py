"""What the Storage SCP does with an association and an instance, whichever engine carries it.

Two engines speak the DICOM upper layer for the receiver (``scp.engine``):
pynetdicom (:mod:`dicom_node.scp.handlers`) and the node's own
(:mod:`dicom_node.scp.upper_layer`). Both call these functions, so the
promises do not depend on the engine. :func:`store_instance` must return a
status and never raise. Its order is the durability contract (DESIGN.md
promise 1): read header tags → validate UIDs → write the bytes as received to
a temp file → fsync → rename → commit the row → return SUCCESS.
"""

from __future__ import annotations

import datetime
import logging
import threading
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from dicom_node.errors import InvalidUID, SpoolFull
from dicom_node.phi import study_tag
from dicom_node.scp.part10 import file_meta_bytes, read_header
from dicom_node.scp.status import StoreStatus
from dicom_node.settings import AllowedCaller, StabilitySettings
from dicom_node.spool import Spool
from dicom_node.state import InstanceRecord, StateDB
from dicom_node.state.schema import utcnow
from dicom_node.uids import validate_uid

__all__ = [
    "ROUTING_KEYWORDS",
    "AssociationStats",
    "StoreContext",
    "StoreRequest",
    "association_released",
    "caller_allowed",
    "close_association",
    "open_association",
    "store_instance",
]

logger = logging.getLogger(__name__)

#: Header attributes kept per series for routing rules. Free text that routing
#: needs (descriptions) is stored in the state DB but never logged.
ROUTING_KEYWORDS = (
    "Modality",
    "SOPClassUID",
    "SeriesDescription",
    "StudyDescription",
    "ProtocolName",
    "BodyPartExamined",
    "ImageType",
    "SliceThickness",
    "ImageOrientationPatient",
    "SeriesNumber",
    "Manufacturer",
    "ManufacturerModelName",
    "ViewPosition",
    "Laterality",
    "ImageLaterality",
    "Rows",
    "Columns",
)


@dataclass(slots=True)
class AssociationStats:
    """Counters of one association, written to the association log at its end."""

    row_id: int
    calling_ae: str
    instances: int = 0
    size: int = 0
    failures: int = 0
    studies: set[str] = field(default_factory=set)
    outcome: str = "open"


@dataclass(slots=True)
class StoreContext:
    """What the handlers need: the spool, the state DB and the policies."""

    spool: Spool
    state: StateDB
    stability: StabilitySettings
    called_ae: str
    accepted_sop_classes: frozenset[str] | None = None
    #: None: anyone may associate. A list: only these callers (AE title and address).
    allowed_callers: list[AllowedCaller] | None = None
    #: Open associations by a key of the engine's choosing (pynetdicom: ``id(assoc)``).
    associations: dict[int, AssociationStats] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Series this process has recorded: their routing attributes need no second read.
    known_series: set[str] = field(default_factory=set)

    def stats(self, key: int) -> AssociationStats | None:
        """Return the counters of an open association, by its engine's key."""
        with self.lock:
            return self.associations.get(key)


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """One C-STORE request, as an engine hands it over.

    Attributes
    ----------
    sop_class_uid : str
        Affected SOP Class UID of the request.
    sop_instance_uid : str
        Affected SOP Instance UID of the request.
    transfer_syntax : pydicom.uid.UID
        The presentation context's transfer syntax: the data set's encoding.
    stream : io.BytesIO or None
        The data set exactly as received (its buffer is what is written); None
        when the request carried no data set.
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: UID
    stream: BytesIO | None


def _json_value(value: object) -> object:
    """Turn a pydicom element value into something JSON can hold."""
    if isinstance(value, MultiValue | list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, int | float):
        return value
    return str(value)


def _routing_attributes(ds: Dataset) -> dict[str, object]:
    out: dict[str, object] = {}
    for keyword in ROUTING_KEYWORDS:
        if keyword not in ds:
            continue
        value = ds.get(keyword)
        # Present but empty stays "": routing tells an empty attribute from an absent one.
        out[keyword] = "" if value is None or value == "" else _json_value(value)
    return out


def caller_allowed(ctx: StoreContext, calling_ae: str, address: str) -> bool:
    """Whether the allow-list (if any) lets this caller associate.

    A caller that is refused gets A-ASSOCIATE-RJ: permanent, by the service
    user, "calling AE title not recognized" (PS3.8 9.3.4). DICOM has no reason
    for a wrong address, so a known AE title from an unknown address is treated
    as unknown.
    """
    if ctx.allowed_callers is None:
        return True
    if any(c.ae_title == calling_ae and c.allows(address) for c in ctx.allowed_callers):
        return True
    logger.warning("association refused: caller %s from %s is not allowed", calling_ae, address)
    return False


def open_association(
    ctx: StoreContext, key: int, calling_ae: str, address: str
) -> AssociationStats:
    """Open the association log row of an accepted association and keep its counters."""
    try:
        row_id = ctx.state.open_association(calling_ae, ctx.called_ae, address)
    except Exception:
        logger.exception("could not open association log row")
        row_id = 0
    stats = AssociationStats(row_id=row_id, calling_ae=calling_ae)
    with ctx.lock:
        ctx.associations[key] = stats
    return stats


def association_released(ctx: StoreContext, stats: AssociationStats) -> None:
    """Note a release; senders configured for it complete their studies early."""
    stats.outcome = "released"
    source = next((s for s in ctx.stability.sources if s.ae_title == stats.calling_ae), None)
    if source is not None and source.complete_on_release and stats.studies:
        at = utcnow() + datetime.timedelta(seconds=ctx.stability.release_grace_seconds)
        ctx.state.complete_early(stats.studies, at)


def close_association(ctx: StoreContext, key: int) -> None:
    """Finish the association log row when the connection closes."""
    with ctx.lock:
        stats = ctx.associations.pop(key, None)
    if stats is None or not stats.row_id:
        return
    try:
        ctx.state.close_association(
            stats.row_id,
            instances=stats.instances,
            size=stats.size,
            failures=stats.failures,
            outcome=stats.outcome if stats.outcome != "open" else "closed",
        )
    except Exception:
        logger.exception("could not close association log row %d", stats.row_id)
    logger.info(
        "association %d from %s ended: %s instances=%d bytes=%d failures=%d",
        stats.row_id,
        stats.calling_ae,
        stats.outcome,
        stats.instances,
        stats.size,
        stats.failures,
    )


def store_instance(ctx: StoreContext, request: StoreRequest, stats: AssociationStats | None) -> int:
    """Store one instance durably, or refuse it with a named status.

    Parameters
    ----------
    ctx : StoreContext
        Spool, state DB and policies.
    request : StoreRequest
        The request and its data set as received.
    stats : AssociationStats or None
        The counters of its association.

    Returns
    -------
    int
        A :class:`StoreStatus` value. SUCCESS only after the bytes are fsync'd
        and the row is committed.
    """
    try:
        status = _store(ctx, request, stats)
    except Exception:
        logger.exception("unexpected error while storing an instance")
        status = StoreStatus.PROCESSING_FAILURE
    if stats is not None and status != StoreStatus.SUCCESS:
        stats.failures += 1
    return int(status)


def _refuse(
    ctx: StoreContext, status: StoreStatus, reason: str, data: list[bytes | memoryview]
) -> StoreStatus:
    path = ctx.spool.quarantine(data, f"0x{int(status):04X} {status.name}: {reason}")
    logger.warning("refused instance 0x%04X: %s (quarantined as %s)", status, reason, path.name)
    return status


def _store(ctx: StoreContext, request: StoreRequest, stats: AssociationStats | None) -> StoreStatus:
    requested_class = request.sop_class_uid
    requested_uid = request.sop_instance_uid
    transfer_syntax = request.transfer_syntax
    stream = request.stream  # the data set as received, never re-encoded
    if stream is None:
        return _refuse(ctx, StoreStatus.CANNOT_UNDERSTAND, "C-STORE without a data set", [b""])
    calling_ae = stats.calling_ae if stats else ""
    # Part-10 bytes: our file meta, then the received buffer without a copy.
    meta = file_meta_bytes(requested_class, requested_uid, transfer_syntax, calling_ae)
    raw: list[bytes | memoryview] = [meta, stream.getbuffer()]

    if ctx.accepted_sop_classes is not None and requested_class not in ctx.accepted_sop_classes:
        return _refuse(
            ctx, StoreStatus.SOP_CLASS_NOT_SUPPORTED, f"SOP class {requested_class} refused", raw
        )
    try:
        ctx.spool.check_space()
    except SpoolFull as exc:
        logger.warning("refused instance 0xA700: %s", exc.reason)
        return StoreStatus.OUT_OF_RESOURCES

    try:
        ds = read_header(stream, transfer_syntax)
        sop_class = str(ds.get("SOPClassUID", "")).rstrip("\x00 ")
        sop_uid = str(ds.get("SOPInstanceUID", "")).rstrip("\x00 ")
        study_uid_raw = ds.get("StudyInstanceUID")
        series_uid_raw = ds.get("SeriesInstanceUID")
        known = str(series_uid_raw) in ctx.known_series
        attributes: dict[str, object] = (
            {"Modality": str(ds.get("Modality", ""))} if known else _routing_attributes(ds)
        )
        accession = str(ds.get("AccessionNumber", "") or "")
        study_date = str(ds.get("StudyDate", "") or "")
    except Exception as exc:  # pydicom raises many types on malformed input
        return _refuse(
            ctx,
            StoreStatus.CANNOT_UNDERSTAND,
            f"data set cannot be parsed ({type(exc).__name__})",
            raw,
        )

    if sop_class != requested_class:
        return _refuse(
            ctx,
            StoreStatus.DATASET_MISMATCH,
            "SOPClassUID in the data set differs from the request",
            raw,
        )
    if sop_uid != requested_uid:
        return _refuse(
            ctx,
            StoreStatus.DATASET_MISMATCH,
            "SOPInstanceUID in the data set differs from the request",
            raw,
        )
    try:
        study_uid = validate_uid(study_uid_raw, "StudyInstanceUID")
        series_uid = validate_uid(series_uid_raw, "SeriesInstanceUID")
        sop_uid = validate_uid(sop_uid, "SOPInstanceUID")
        path = ctx.spool.instance_path(study_uid, series_uid, sop_uid)
    except InvalidUID as exc:
        return _refuse(ctx, StoreStatus.CANNOT_UNDERSTAND, exc.reason, raw)

    # A stat() first: the state DB is asked only when the file is already there.
    if path.exists() and ctx.state.has_instance(sop_uid):
        # Already durable: a re-send of the same instance is stored once.
        if stats is not None:
            stats.instances += 1
        return StoreStatus.SUCCESS

    try:
        size = ctx.spool.write_atomic(path, raw)
    except SpoolFull as exc:
        logger.warning("refused instance 0xA700: %s", exc.reason)
        return StoreStatus.OUT_OF_RESOURCES
    except OSError as exc:
        logger.error("refused instance 0xA700: spool write failed (%s)", exc.strerror)
        return StoreStatus.OUT_OF_RESOURCES

    record = InstanceRecord(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(transfer_syntax),
        path=ctx.spool.relative(path),
        size=size,
        calling_ae=calling_ae,
        association_id=stats.row_id if stats else None,
        modality=str(attributes.get("Modality", "")),
        accession_number=accession,
        study_date=study_date,
        series_attributes=attributes,
    )
    try:
        ctx.state.record_instance(record)
    except Exception:
        # Without a committed row the instance is not ours: take the file back.
        path.unlink(missing_ok=True)
        logger.exception("state DB commit failed; instance refused")
        return StoreStatus.OUT_OF_RESOURCES
    if len(ctx.known_series) > 10_000:
        ctx.known_series.clear()
    ctx.known_series.add(series_uid)
    if stats is not None:
        stats.instances += 1
        stats.size += size
        stats.studies.add(study_uid)
    logger.debug("stored study=%s sop_class=%s bytes=%d", study_tag(study_uid), sop_class, size)
    return StoreStatus.SUCCESS
