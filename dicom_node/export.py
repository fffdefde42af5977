"""Export: result objects go to the archive by C-STORE, retried with backoff.

Each (object, destination) is an export row. A failed attempt is retried after
``backoff_initial_s * 2**(attempts-1)`` seconds (at most ``backoff_max_s``);
after ``max_attempts`` the row is FAILED with its last error and the job with
it. Objects a destination accepted are never sent again: only PENDING rows are
sent. Result UIDs are deterministic, so a resend after a crash between
"archive accepted" and "row committed" gives the archive the same object again,
which it keeps once.

pynetdicom's own warnings and errors about the node's outgoing associations
(connection refused, the TLS handshake, an abort) are folded into the
attempt's error instead of being logged, so each failed attempt is logged
once, by the supervisor, with its cause.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.settings import DestinationSettings, ExportSettings
from dicom_node.state.schema import utcnow
from dicom_node.tls import client_context

__all__ = [
    "DeliveryResult",
    "backoff_delay",
    "echo",
    "next_attempt",
    "send_files",
    "store_files",
    "stow_files",
]

logger = logging.getLogger(__name__)

#: Statuses that mean "stored" (PS3.4 B.2.3): success and the coercion/warning family.
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class Backoff(Protocol):
    """Settings with a doubling backoff (export, notifications)."""

    @property
    def backoff_initial_s(self) -> float: ...  # noqa: D102

    @property
    def backoff_max_s(self) -> float: ...  # noqa: D102


class _PynetdicomCapture(logging.Filter):
    """Holds back pynetdicom's warnings and errors about the node's own SCU associations.

    pynetdicom connects in the association's DUL thread, so the records are told
    apart by the application entity of the thread that logs them: the AE of an
    export in progress collects them, any other (the receiver's) logs as before.
    A logger's filters apply only to records logged on that very logger, so the
    filter sits on every ``pynetdicom.*`` logger.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sinks: dict[int, list[str]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not self.sinks:
            return True
        thread = next((t for t in threading.enumerate() if t.ident == record.thread), None)
        # The DUL thread knows its association, the association its AE.
        assoc = getattr(thread, "assoc", thread)
        sink = self.sinks.get(id(getattr(assoc, "ae", None)))
        if sink is None:
            return True
        sink.append(record.getMessage())
        return False


_capture = _PynetdicomCapture()
for _name in logging.Logger.manager.loggerDict:
    if _name == "pynetdicom" or _name.startswith("pynetdicom."):
        logging.getLogger(_name).addFilter(_capture)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """Outcome of sending one file."""

    path: Path
    ok: bool
    error: str


@contextmanager
def _pynetdicom_errors(ae: AE) -> Iterator[list[str]]:
    """Collect what pynetdicom warns about ``ae``'s associations instead of logging it."""
    sink: list[str] = []
    _capture.sinks[id(ae)] = sink
    try:
        yield sink
    finally:
        del _capture.sinks[id(ae)]


def backoff_delay(settings: Backoff, attempts: int) -> float:
    """Seconds to wait before the next attempt after ``attempts`` failures.

    Parameters
    ----------
    settings : Backoff
        Backoff configuration (``export``, ``notify``).
    attempts : int
        Failed attempts so far (1 after the first failure).

    Returns
    -------
    float
        The delay, doubling from ``backoff_initial_s`` up to ``backoff_max_s``.

    Examples
    --------
    >>> backoff_delay(ExportSettings(backoff_initial_s=5, backoff_max_s=60), 3)
    20.0
    """
    exponent = max(attempts - 1, 0)
    return float(min(settings.backoff_initial_s * 2.0**exponent, settings.backoff_max_s))


def _scu(ae_title: str, timeout_s: float) -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    return ae


def _associate(ae: AE, dest: DestinationSettings) -> Association:
    """Associate with a destination, over DICOM TLS when its settings say so.

    Raises
    ------
    ssl.SSLError
        If the TLS certificate, key or CA bundle cannot be loaded.
    """
    context = client_context(dest.tls)
    if context is None:
        return ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    server_name = dest.tls.server_name or dest.host
    return ae.associate(
        dest.host, dest.port, ae_title=dest.ae_title, tls_args=(context, server_name)
    )


def _not_established(dest: DestinationSettings, causes: Sequence[str]) -> str:
    """Why an association failed, in words an administrator can act on.

    Parameters
    ----------
    dest : DestinationSettings
        The destination.
    causes : Sequence[str]
        pynetdicom's messages about the attempt (connection refused, the TLS error).
    """
    reason = f"association with {dest.name} ({dest.host}:{dest.port}) not established"
    if dest.tls.enabled:
        reason += " over DICOM TLS"
    if causes:
        reason += ": " + "; ".join(dict.fromkeys(causes))
    return reason


def _unusable_tls(dest: DestinationSettings, exc: ssl.SSLError) -> str:
    return f"TLS settings of {dest.name} cannot be loaded ({exc.reason or exc})"


def echo(calling_ae: str, dest: DestinationSettings) -> tuple[bool, str]:
    """Verify a destination with C-ECHO.

    Returns
    -------
    tuple[bool, str]
        Whether it answered success, and a reason when not.
    """
    ae = _scu(calling_ae, dest.timeout_s)
    ae.add_requested_context(Verification)
    try:
        with _pynetdicom_errors(ae) as causes:
            assoc = _associate(ae, dest)
    except ssl.SSLError as exc:
        return False, _unusable_tls(dest, exc)
    if not assoc.is_established:
        return False, _not_established(dest, causes)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and status.Status == 0x0000:
        return True, ""
    return False, f"C-ECHO to {dest.name} failed"


def send_files(
    calling_ae: str, dest: DestinationSettings, paths: Sequence[Path]
) -> list[DeliveryResult]:
    """Send DICOM files to a destination: one association, or one STOW-RS request.

    Parameters
    ----------
    calling_ae : str
        The node's AE title (C-STORE only).
    dest : DestinationSettings
        Where to send.
    paths : Sequence[pathlib.Path]
        Part-10 files to send.

    Returns
    -------
    list[DeliveryResult]
        One result per path, in order.
    """
    if dest.kind == "dicomweb":
        return stow_files(dest, paths)
    return store_files(calling_ae, dest, paths)


def store_files(
    calling_ae: str, dest: DestinationSettings, paths: Sequence[Path]
) -> list[DeliveryResult]:
    """Send DICOM files to a destination by C-STORE in one association.

    Parameters
    ----------
    calling_ae : str
        The node's AE title.
    dest : DestinationSettings
        Where to send.
    paths : Sequence[pathlib.Path]
        Part-10 files to send.

    Returns
    -------
    list[DeliveryResult]
        One result per path, in order. Files after a broken association are
        reported failed with the reason, so they are retried.
    """
    headers = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        headers.append((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    ae = _scu(calling_ae, dest.timeout_s)
    for sop_class, ts in sorted(set(headers)):
        ae.add_requested_context(sop_class, [ts])

    with _pynetdicom_errors(ae) as causes:
        results = _store(ae, dest, paths, causes)
    if causes and not all(result.ok for result in results):
        # What pynetdicom said about a lost association or a missing response.
        detail = "; ".join(dict.fromkeys(causes))
        results = [
            r
            if r.ok or detail in r.error
            else DeliveryResult(r.path, False, f"{r.error}: {detail}")
            for r in results
        ]
    return results


def _store(
    ae: AE, dest: DestinationSettings, paths: Sequence[Path], causes: list[str]
) -> list[DeliveryResult]:
    try:
        assoc = _associate(ae, dest)
    except ssl.SSLError as exc:
        reason = _unusable_tls(dest, exc)
        return [DeliveryResult(path, False, reason) for path in paths]
    if not assoc.is_established:
        reason = _not_established(dest, causes)
        return [DeliveryResult(path, False, reason) for path in paths]
    results: list[DeliveryResult] = []
    try:
        for path in paths:
            # The peer may abort between two stores; mypy cannot know the flag changes.
            if not assoc.is_established:
                lost = DeliveryResult(path, False, f"association with {dest.name} lost")  # type: ignore[unreachable]
                results.append(lost)
                continue
            status = assoc.send_c_store(path)
            code = int(status.Status) if status and "Status" in status else None
            if code in _STORED:
                results.append(DeliveryResult(path, True, ""))
            elif code is None:
                results.append(DeliveryResult(path, False, f"no C-STORE response from {dest.name}"))
            else:
                results.append(
                    DeliveryResult(path, False, f"{dest.name} answered status 0x{code:04X}")
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def next_attempt(settings: ExportSettings, attempts: int) -> datetime.datetime | None:
    """When to try again after ``attempts`` failures, or None when the budget is spent."""
    if attempts >= settings.max_attempts:
        return None
    return utcnow() + datetime.timedelta(seconds=backoff_delay(settings, attempts))


def _stow_body(paths: Sequence[Path], boundary: str) -> bytes:
    parts = []
    for path in paths:
        parts.append(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
            + path.read_bytes()
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(parts)


def _failed_uids(response: dict[str, object]) -> dict[str, str]:
    """SOP Instance UID to failure reason from a STOW-RS response (PS3.18 10.5.3)."""
    failed: dict[str, str] = {}
    sequence = response.get("00081198", {})  # Failed SOP Sequence
    items = sequence.get("Value", []) if isinstance(sequence, dict) else []
    for item in items:
        uid = item.get("00081155", {}).get("Value", [""])[0]
        reason = item.get("00081197", {}).get("Value", [0])[0]
        failed[str(uid)] = f"failure reason {int(reason):#06x}" if reason else "failed"
    return failed


def stow_files(dest: DestinationSettings, paths: Sequence[Path]) -> list[DeliveryResult]:
    """Send DICOM files with one DICOMweb STOW-RS request (PS3.18 10.5).

    Parameters
    ----------
    dest : DestinationSettings
        A ``dicomweb`` destination: base URL and optional basic auth.
    paths : Sequence[pathlib.Path]
        Part-10 files to send.

    Returns
    -------
    list[DeliveryResult]
        One result per path: failed when the request fails, or when the
        response lists the instance in its Failed SOP Sequence.
    """
    boundary = f"dicom-node-{uuid.uuid4().hex}"
    request = urllib.request.Request(
        dest.url.rstrip("/") + "/studies",
        data=_stow_body(paths, boundary),
        method="POST",
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    if dest.username:
        token = f"{dest.username}:{dest.password.get_secret_value()}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode("ascii"))
    try:
        context = client_context(dest.tls)
        with urllib.request.urlopen(request, timeout=dest.timeout_s, context=context) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        reason = f"{dest.name} answered HTTP {exc.code}"
        return [DeliveryResult(path, False, reason) for path in paths]
    except (urllib.error.URLError, OSError) as exc:
        reason = f"{dest.name} unreachable ({getattr(exc, 'reason', exc)})"
        return [DeliveryResult(path, False, reason) for path in paths]
    try:
        failed = _failed_uids(json.loads(payload)) if payload else {}
    except ValueError:
        failed = {}
    results = []
    for path in paths:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        if uid in failed:
            results.append(DeliveryResult(path, False, f"{dest.name}: {failed[uid]}"))
        else:
            results.append(DeliveryResult(path, True, ""))
    return results
