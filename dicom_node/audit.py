"""The audit trail: who looked at which study, who changed what, what was sent where.

Each record follows the fields of DICOM's audit message schema (PS3.15 A.5,
itself RFC 3881): ``EventIdentification`` (EventID, EventActionCode,
EventDateTime, EventOutcomeIndicator, EventTypeCode), ``ActiveParticipant``
(UserID, UserIsRequestor, NetworkAccessPointID, RoleIDCode),
``AuditSourceIdentification`` and ``ParticipantObjectIdentification``, written
as one JSON object per line. Codes are ``{"csd-code", "codeSystemName",
"originalText"}`` as in the schema; events the standard has no code for
(retrying a job) carry an EventTypeCode of the scheme ``99DICOMNODE``.

A study is named by its tag (:func:`dicom_node.phi.study_tag`), never by its
UID or a patient's identity, so the file can go to a security team's SIEM
without carrying PHI; the dashboard resolves a tag to the study for an admin.

The file is append-only: opened with ``O_APPEND``, one ``write`` per record
under an exclusive ``flock`` (the node and a separate web process append to
the same file), each record numbered (``seq``) and chained to the previous
one by ``prev``, the SHA-256 of the previous line, so a removed or edited
line breaks the chain (:func:`verify_chain`). Optionally each record also
goes to a syslog collector as RFC 5424 (UDP, or TCP with octet counting).
Writing a record never fails the action it describes: a failure is logged.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from dicom_node.phi import study_tag
from dicom_node.settings import Settings, SyslogSettings

__all__ = [
    "AuditLog",
    "EventType",
    "Role",
    "open_audit",
    "record_start",
    "record_stop",
    "AuditRecord",
    "Code",
    "EventAction",
    "EventId",
    "Outcome",
    "Participant",
    "StudyObject",
    "read_records",
    "syslog_line",
    "verify_chain",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value as the audit schema writes it (PS3.15 A.5.1)."""

    code: str
    scheme: str
    meaning: str

    def as_json(self) -> dict[str, str]:
        """The ``csd-code`` form of the schema."""
        return {"csd-code": self.code, "codeSystemName": self.scheme, "originalText": self.meaning}


class EventId:
    """EventID values used here (PS3.16 CID 400, Audit Event ID)."""

    APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
    AUDIT_LOG_USED = Code("110101", "DCM", "Audit Log Used")
    INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
    INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
    PATIENT_RECORD = Code("110110", "DCM", "Patient Record")
    QUERY = Code("110112", "DCM", "Query")
    SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
    USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")


class EventType:
    """EventTypeCode values (PS3.16 CID 401 and 402; the node's own for job actions)."""

    APPLICATION_START = Code("110120", "DCM", "Application Start")
    APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
    LOGIN = Code("110122", "DCM", "Login")
    LOGOUT = Code("110123", "DCM", "Logout")
    SOFTWARE_CONFIGURATION = Code("110129", "DCM", "Software Configuration")
    JOB_RETRY = Code("JOB_RETRY", "99DICOMNODE", "Job retried")
    JOB_CANCEL = Code("JOB_CANCEL", "99DICOMNODE", "Job cancelled")
    UID_MAPPING_READ = Code("UID_MAPPING_READ", "99DICOMNODE", "De-identification map read")


class Role:
    """RoleIDCode values (PS3.16 CID 402)."""

    APPLICATION = Code("110150", "DCM", "Application")
    APPLICATION_LAUNCHER = Code("110151", "DCM", "Application Launcher")
    DESTINATION = Code("110152", "DCM", "Destination Role ID")
    SOURCE = Code("110153", "DCM", "Source Role ID")


#: The participant object ID type of a study tag (the schema's codes name a UID; ours is a hash).
STUDY_TAG_TYPE = Code("STUDY_TAG", "99DICOMNODE", "Study tag: SHA-256 of the Study Instance UID")


class EventAction(StrEnum):
    """EventActionCode (PS3.15 A.5.1): create, read, update, delete, execute."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(StrEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1)."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


@dataclass(frozen=True, slots=True)
class Participant:
    """An ActiveParticipant: a person or a process taking part in the event."""

    user_id: str
    is_requestor: bool
    address: str = ""
    role: Code | None = None

    def as_json(self) -> dict[str, Any]:
        """The schema's ActiveParticipant element."""
        out: dict[str, Any] = {"UserID": self.user_id, "UserIsRequestor": self.is_requestor}
        if self.address:
            out["NetworkAccessPointID"] = self.address
            # 1: machine name, 2: IP address (PS3.15 A.5.1).
            out["NetworkAccessPointTypeCode"] = "2" if _is_ip(self.address) else "1"
        if self.role is not None:
            out["RoleIDCode"] = self.role.as_json()
        return out


@dataclass(frozen=True, slots=True)
class StudyObject:
    """A ParticipantObjectIdentification for a study, named by its tag.

    Give the Study Instance UID (the tag is derived from it) or, where only the
    tag is known, ``tag``.
    """

    study_uid: str
    details: dict[str, str] = field(default_factory=dict)
    tag: str = ""

    @property
    def study_tag(self) -> str:
        """The study's tag."""
        return self.tag or study_tag(self.study_uid)

    def as_json(self) -> dict[str, Any]:
        """The schema's ParticipantObjectIdentification element (type 2, role 3: report)."""
        out: dict[str, Any] = {
            "ParticipantObjectID": self.study_tag,
            "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3",
            "ParticipantObjectIDTypeCode": STUDY_TAG_TYPE.as_json(),
        }
        if self.details:
            out["ParticipantObjectDetail"] = [
                {"type": key, "value": value} for key, value in sorted(self.details.items())
            ]
        return out


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One record as read back from the file."""

    seq: int
    time: datetime.datetime
    event: str
    action: str
    outcome: str
    user: str
    study_tags: tuple[str, ...]
    summary: str
    raw: dict[str, Any]


def _is_ip(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        return False
    return True


def syslog_line(record: dict[str, Any], settings: SyslogSettings, hostname: str) -> bytes:
    """Format a record as an RFC 5424 syslog message.

    Facility 13 (log audit); severity 6 (informational) for success, 4
    (warning) for a failure. MSGID ``DICOM+JSON``; no structured data; the
    message is the record's JSON, UTF-8 with a BOM (RFC 5424 6.4).

    Parameters
    ----------
    record : dict[str, Any]
        The audit record.
    settings : SyslogSettings
        The APP-NAME.
    hostname : str
        The HOSTNAME field.

    Returns
    -------
    bytes
        The message without transport framing.
    """
    failed = record["EventIdentification"]["EventOutcomeIndicator"] != Outcome.SUCCESS
    pri = 13 * 8 + (4 if failed else 6)
    stamp = record["EventIdentification"]["EventDateTime"]
    header = f"<{pri}>1 {stamp} {hostname or '-'} {settings.app_name} {os.getpid()} DICOM+JSON -"
    body = json.dumps(record, separators=(",", ":"), sort_keys=True)
    return header.encode("ascii", "replace") + b" \xef\xbb\xbf" + body.encode("utf-8")


class _SyslogSender:
    """Sends records to a collector; a TCP connection is opened lazily and reopened once."""

    def __init__(self, settings: SyslogSettings) -> None:
        self.settings = settings
        self.hostname = socket.gethostname()
        self._tcp: socket.socket | None = None
        self._lock = threading.Lock()

    def send(self, record: dict[str, Any]) -> None:
        message = syslog_line(record, self.settings, self.hostname)
        with self._lock:
            if self.settings.protocol == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.sendto(message, (self.settings.host, self.settings.port))
                return
            framed = f"{len(message)} ".encode("ascii") + message  # RFC 6587 octet counting
            for attempt in range(2):
                try:
                    if self._tcp is None:
                        self._tcp = socket.create_connection(
                            (self.settings.host, self.settings.port), timeout=5
                        )
                    self._tcp.sendall(framed)
                    return
                except OSError:
                    self.close()
                    if attempt:
                        raise

    def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None


def _last_line(fd: int) -> bytes:
    """The last complete line of an open file (without its newline), or b""."""
    end = os.lseek(fd, 0, os.SEEK_END)
    if end == 0:
        return b""
    block = 4096
    tail = b""
    position = end
    while position > 0:
        step = min(block, position)
        position -= step
        tail = os.pread(fd, step, position) + tail
        stripped = tail.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    return tail.rstrip(b"\n")


class AuditLog:
    """Appends audit records to a JSON lines file, and optionally to syslog.

    Parameters
    ----------
    path : pathlib.Path
        The JSON lines file; created (mode 0600) with its folder if missing.
    source_id : str
        AuditSourceID: which node wrote the record (its AE title and host).
    syslog : SyslogSettings or None
        A collector to send each record to as well.
    enabled : bool
        False makes :meth:`record` do nothing (``audit.enabled``).
    """

    def __init__(
        self,
        path: Path,
        source_id: str,
        syslog: SyslogSettings | None = None,
        *,
        enabled: bool = True,
    ) -> None:
        self.path = path
        self.source_id = source_id
        self.enabled = enabled
        self._syslog = _SyslogSender(syslog) if syslog is not None and syslog.enabled else None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the syslog connection, if any."""
        if self._syslog is not None:
            self._syslog.close()

    def record(
        self,
        event_id: Code,
        action: EventAction,
        outcome: Outcome = Outcome.SUCCESS,
        *,
        participants: Sequence[Participant] = (),
        studies: Sequence[StudyObject] = (),
        event_type: Code | None = None,
        description: str = "",
    ) -> dict[str, Any] | None:
        """Append one record.

        Parameters
        ----------
        event_id : Code
            EventID (:class:`EventId`).
        action : EventAction
            EventActionCode.
        outcome : Outcome
            EventOutcomeIndicator.
        participants : Sequence[Participant]
            ActiveParticipant: the user (requestor) and the systems involved.
        studies : Sequence[StudyObject]
            The studies the event touched.
        event_type : Code or None
            EventTypeCode.
        description : str
            EventOutcomeDescription: what happened, in words, without PHI.

        Returns
        -------
        dict[str, Any] or None
            The record written, or None when auditing is off or the record could
            not be written (logged).
        """
        if not self.enabled:
            return None
        now = datetime.datetime.now(datetime.UTC)
        event: dict[str, Any] = {
            "EventID": event_id.as_json(),
            "EventActionCode": str(action),
            "EventDateTime": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "EventOutcomeIndicator": str(outcome),
        }
        if event_type is not None:
            event["EventTypeCode"] = [event_type.as_json()]
        if description:
            event["EventOutcomeDescription"] = description
        requestors = [p.user_id for p in participants if p.is_requestor]
        record: dict[str, Any] = {
            # Flat fields first, for a quick grep or a SIEM's field extraction.
            "time": event["EventDateTime"],
            "event": (event_type or event_id).meaning,
            "user": requestors[0] if requestors else "",
            "study_tags": [s.study_tag for s in studies],
            "EventIdentification": event,
            "ActiveParticipant": [p.as_json() for p in participants],
            "AuditSourceIdentification": {"AuditSourceID": self.source_id},
            "ParticipantObjectIdentification": [s.as_json() for s in studies],
        }
        try:
            self._append(record)
        except OSError:
            logger.exception("audit record %s could not be written", record["event"])
            return None
        if self._syslog is not None:
            try:
                self._syslog.send(record)
            except OSError as exc:
                logger.warning("audit record not sent to syslog (%s); it is in the file", exc)
        return record

    def _append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                previous = _last_line(fd)
                if previous:
                    record["seq"] = int(json.loads(previous)["seq"]) + 1
                    record["prev"] = hashlib.sha256(previous).hexdigest()
                else:
                    record["seq"], record["prev"] = 1, ""
                line = json.dumps(record, separators=(",", ":"), sort_keys=True)
                os.write(fd, line.encode("utf-8") + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the lock


def _reversed_lines(path: Path, block: int = 65536) -> Iterator[bytes]:
    """The file's lines, last first, read from the end in blocks."""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        position = fh.tell()
        rest = b""
        while position > 0:
            step = min(block, position)
            position -= step
            fh.seek(position)
            chunk = fh.read(step) + rest
            lines = chunk.split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line:
                    yield line
        if rest:
            yield rest


def _as_record(raw: dict[str, Any]) -> AuditRecord:
    event = raw.get("EventIdentification", {})
    return AuditRecord(
        seq=int(raw.get("seq", 0)),
        time=datetime.datetime.fromisoformat(str(raw.get("time", "")).replace("Z", "+00:00")),
        event=str(raw.get("event", "")),
        action=str(event.get("EventActionCode", "")),
        outcome=str(event.get("EventOutcomeIndicator", "")),
        user=str(raw.get("user", "")),
        study_tags=tuple(raw.get("study_tags", ())),
        summary=str(event.get("EventOutcomeDescription", "")),
        raw=raw,
    )


def read_records(
    path: Path,
    *,
    user: str = "",
    tag: str = "",
    event: str = "",
    limit: int = 100,
    offset: int = 0,
) -> tuple[int | None, list[AuditRecord]]:
    """Records newest first, filtered; the file is read from its end.

    Parameters
    ----------
    path : pathlib.Path
        The JSON lines file.
    user, tag, event : str
        Only records of this user, touching this study tag, of this event
        (exact, case-insensitive); empty for all.
    limit, offset : int
        The page.

    Returns
    -------
    tuple[int | None, list[AuditRecord]]
        How many records there are in all (None when filtered: counting would
        read the whole file), and the page.
    """
    if not path.is_file():
        return 0, []
    wanted_event = event.strip().lower()
    skipped = 0
    page: list[AuditRecord] = []
    total: int | None = None
    for line in _reversed_lines(path):
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        if total is None and not (user or tag or wanted_event):
            total = int(raw.get("seq", 0))
        if user and raw.get("user") != user:
            continue
        if tag and tag not in raw.get("study_tags", ()):
            continue
        if wanted_event and str(raw.get("event", "")).lower() != wanted_event:
            continue
        if skipped < offset:
            skipped += 1
            continue
        page.append(_as_record(raw))
        if len(page) >= limit:
            break
    return total, page


def verify_chain(path: Path) -> int:
    """Check that no record was removed or changed; return how many there are.

    Raises
    ------
    ValueError
        If a record's ``seq`` or ``prev`` does not follow from the line before.
    """
    previous = b""
    count = 0
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.rstrip(b"\n")
            raw = json.loads(line)
            expected = hashlib.sha256(previous).hexdigest() if previous else ""
            if raw.get("seq") != number or raw.get("prev") != expected:
                raise ValueError(f"audit chain broken at line {number}")
            previous = line
            count = number
    return count


def open_audit(settings: Settings) -> AuditLog:
    """The node's audit trail, as ``settings.audit`` describes it."""
    return AuditLog(
        settings.audit_path,
        f"{settings.scp.ae_title}@{socket.gethostname()}",
        settings.audit.syslog,
        enabled=settings.audit.enabled,
    )


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _leaves(getattr(value, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{prefix}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}")
    elif isinstance(value, SecretStr):
        yield prefix, value.get_secret_value()
    else:
        yield prefix, str(value)


def config_digests(settings: Settings) -> dict[str, str]:
    """A SHA-256 per configuration value (secrets too), keyed by its path (``scp.port``).

    Digests, not values: the file that keeps them must not hold passwords.
    """
    return {
        path: hashlib.sha256(f"{path}={value}".encode()).hexdigest()
        for path, value in _leaves(settings)
    }


def record_start(log: AuditLog, settings: Settings, process: str) -> list[str]:
    """Record an Application Start, and a Software Configuration alert if the settings changed.

    The digests of the previous start are kept beside the audit file
    (``audit.jsonl.config``); the alert lists the paths of the values that
    changed, were added or removed, never the values.

    Parameters
    ----------
    log : AuditLog
        The audit trail.
    settings : Settings
        The configuration in effect.
    process : str
        Which process starts (``serve``, ``web``).

    Returns
    -------
    list[str]
        The changed paths (empty at the first start or when nothing changed).
    """
    node = Participant(process, False, socket.gethostname(), Role.APPLICATION)
    log.record(
        EventId.APPLICATION_ACTIVITY,
        EventAction.EXECUTE,
        participants=[node],
        event_type=EventType.APPLICATION_START,
        description=f"dicom-node {process} started",
    )
    if not log.enabled:
        return []
    current = config_digests(settings)
    kept = log.path.with_name(log.path.name + ".config")
    try:
        previous: dict[str, str] = json.loads(kept.read_text())
    except (OSError, ValueError):
        previous = {}
    changed = sorted(
        path for path in current.keys() | previous.keys() if current.get(path) != previous.get(path)
    )
    if previous and changed:
        log.record(
            EventId.SECURITY_ALERT,
            EventAction.UPDATE,
            participants=[node],
            event_type=EventType.SOFTWARE_CONFIGURATION,
            description="configuration changed: " + ", ".join(changed),
        )
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_name(kept.name + ".tmp")
        tmp.write_text(json.dumps(current, sort_keys=True))
        tmp.replace(kept)
    except OSError:
        logger.exception("configuration digests could not be kept")
    return changed if previous else []


def record_stop(log: AuditLog, process: str) -> None:
    """Record an Application Stop."""
    log.record(
        EventId.APPLICATION_ACTIVITY,
        EventAction.EXECUTE,
        participants=[Participant(process, False, socket.gethostname(), Role.APPLICATION)],
        event_type=EventType.APPLICATION_STOP,
        description=f"dicom-node {process} stopped",
    )
