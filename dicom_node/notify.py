"""Notifications: a webhook and/or an e-mail when a job FAILED, is DONE, or found something.

**Durable.** A job's state change and its notification rows commit in one
transaction (:meth:`Notifier.on_job_state` is a :data:`StateDB` job listener):
the ``notifications`` table is an outbox. The node's notify loop sends due rows,
retries a failed attempt with doubling backoff (``notify.backoff_initial_s`` up
to ``backoff_max_s``) and gives up after ``notify.max_attempts``. A restart
resumes where it stopped; a receiver that was down gets its notification late,
never not at all. A notification may arrive twice (a crash between "sent" and
the row's commit): each carries its ``delivery`` number for the receiver to
deduplicate.

**Events.** ``FAILED`` (with the reason), ``DONE``, and ``FINDING``: a DONE job
of a classification pipeline whose probability for a label reached that label's
``threshold`` (the finding the SR reports as present).

**No PHI by default.** The payload names the study by its tag, the job, the
pipeline, the state and the reason (reasons never hold PHI). With
``notify.include_identifiers`` it adds the Study Instance UID and the accession
number, for a receiver allowed to hold them (a RIS, a secure messenger).

**Webhook.** ``POST`` of the JSON payload with the headers
``X-DicomNode-Event``, ``X-DicomNode-Delivery``, ``X-DicomNode-Timestamp``
(Unix seconds) and ``X-DicomNode-Signature: v1=<hex>``, the HMAC-SHA256 with the
webhook's ``secret`` of ``timestamp + "." + body``. A receiver recomputes it
over the raw body, compares in constant time, and refuses a timestamp more
than a few minutes old (:func:`verify_signature`). Any 2xx answer counts.

**E-mail.** SMTP with STARTTLS (certificate verified) and an optional login;
the subject and body carry the same fields as the webhook.
"""

from __future__ import annotations

import datetime
import hmac
import json
import logging
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.export import backoff_delay
from dicom_node.phi import study_tag
from dicom_node.settings import EmailSettings, NotifyEvent, NotifySettings, WebhookSettings
from dicom_node.state import JobState, StateDB
from dicom_node.state.schema import Job, Notification, NotificationState, Study, utcnow
from dicom_node.tls import client_context
from pipelines.spec import PipelineSpec

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Notifier",
    "findings",
    "sign",
    "verify_signature",
]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-DicomNode-Signature"
TIMESTAMP_HEADER = "X-DicomNode-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``v1=`` and the HMAC-SHA256 of ``timestamp.body``.

    Parameters
    ----------
    secret : str
        The webhook's shared secret.
    timestamp : str
        Unix seconds, as sent in the timestamp header.
    body : bytes
        The raw request body.

    Returns
    -------
    str
        ``v1=`` followed by 64 hex digits.

    Examples
    --------
    >>> sign("0123456789abcdef", "1700000000", b"{}")[:11]
    'v1=5e5ad4ca'
    """
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return "v1=" + mac.hexdigest()


def verify_signature(
    secret: str, timestamp: str, body: bytes, signature: str, *, max_age_s: float = 300
) -> bool:
    """What a webhook receiver does: check the signature and the timestamp's age.

    Returns
    -------
    bool
        True when the signature matches and the timestamp is recent.
    """
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    return age <= max_age_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def findings(job: Job, spec: PipelineSpec | None) -> list[dict[str, object]]:
    """The findings a DONE classification job reports as present (probability ≥ threshold).

    Parameters
    ----------
    job : Job
        The job row, with its measurements.
    spec : PipelineSpec or None
        Its pipeline (labels and thresholds); None finds nothing.

    Returns
    -------
    list[dict[str, object]]
        ``{"label", "probability", "threshold"}`` per finding.
    """
    if spec is None or spec.task != "classification":
        return []
    measured = job.measurements or {}
    found: list[dict[str, object]] = []
    for label in spec.labels:
        probability = measured.get(f"{label.name}.probability")
        if probability is not None and probability >= label.threshold:
            found.append(
                {"label": label.label, "probability": round(float(probability), 4),
                 "threshold": label.threshold}
            )  # fmt: skip
    return found


class Notifier:
    """Creates notification rows on job events and sends them.

    Parameters
    ----------
    settings : NotifySettings
        Channels, what they want, retries.
    node_ae : str
        The node's AE title, named in every payload.
    state : StateDB
        The state DB holding the outbox.
    pipelines : Mapping[str, PipelineSpec]
        Pipeline definitions (labels and thresholds for findings).
    """

    def __init__(
        self,
        settings: NotifySettings,
        node_ae: str,
        state: StateDB,
        pipelines: Mapping[str, PipelineSpec],
    ) -> None:
        self.settings = settings
        self.node_ae = node_ae
        self.state = state
        self.pipelines = pipelines
        self._webhooks = {f"webhook:{w.name}": w for w in settings.webhooks}
        self._emails = {f"email:{e.name}": e for e in settings.emails}

    @property
    def enabled(self) -> bool:
        """Whether any channel is configured."""
        return bool(self._webhooks or self._emails)

    # -- the outbox ------------------------------------------------------------

    def on_job_state(self, session: Session, job: Job, state: JobState) -> None:
        """Add the notifications of a job's state change, in its transaction."""
        events: list[tuple[NotifyEvent, list[dict[str, object]]]] = []
        if state is JobState.FAILED:
            events.append((NotifyEvent.FAILED, []))
        elif state is JobState.DONE:
            events.append((NotifyEvent.DONE, []))
            found = findings(job, self.pipelines.get(job.pipeline))
            if found:
                events.append((NotifyEvent.FINDING, found))
        if not events or not self.enabled:
            return
        study = session.get(Study, job.study_uid)
        for event, found in events:
            payload = self._payload(job, event, found, study)
            channels: list[tuple[str, list[NotifyEvent]]] = [
                *((name, w.events) for name, w in self._webhooks.items()),
                *((name, e.events) for name, e in self._emails.items()),
            ]
            for channel, wanted in channels:
                if event in wanted:
                    session.add(
                        Notification(job_id=job.id, event=event, channel=channel, payload=payload)
                    )

    def _payload(
        self, job: Job, event: NotifyEvent, found: list[dict[str, object]], study: Study | None
    ) -> dict[str, object]:
        payload: dict[str, object] = {
            "event": f"job.{event.value.lower()}",
            "node": self.node_ae,
            "job_id": job.id,
            "study_tag": study_tag(job.study_uid),
            "pipeline": job.pipeline,
            "pipeline_version": job.pipeline_version,
            "state": job.state,
            "reason": job.reason,
            "at": utcnow().isoformat(timespec="seconds") + "Z",
        }
        if found:
            payload["findings"] = found
        if self.settings.dashboard_url:
            payload["url"] = f"{self.settings.dashboard_url.rstrip('/')}/jobs/{job.id}"
        if self.settings.include_identifiers:
            payload["study_instance_uid"] = job.study_uid
            payload["accession_number"] = study.accession_number if study else ""
        return payload

    # -- sending ---------------------------------------------------------------

    def send_due(self) -> int:
        """Send every due notification once; return how many were delivered."""
        with self.state.session() as s:
            due = [
                (row.id, row.channel, row.event, dict(row.payload), row.attempts)
                for row in s.scalars(
                    select(Notification)
                    .where(Notification.state == NotificationState.PENDING)
                    .where(Notification.next_attempt_at <= utcnow())
                    .order_by(Notification.id)
                ).all()
            ]
        delivered = 0
        for row_id, channel, event, payload, attempts in due:
            try:
                self._deliver(row_id, channel, event, payload)
            except Exception as exc:  # noqa: BLE001 - any transport error is a failed attempt
                self._failed(row_id, attempts + 1, f"{type(exc).__name__}: {exc}")
                continue
            self._sent(row_id)
            delivered += 1
        return delivered

    def _deliver(self, row_id: int, channel: str, event: str, payload: dict[str, Any]) -> None:
        if channel in self._webhooks:
            self._post(self._webhooks[channel], row_id, event, payload)
        elif channel in self._emails:
            self._mail(self._emails[channel], event, payload)
        else:
            raise LookupError(f"channel {channel} is no longer configured")

    @staticmethod
    def _post(hook: WebhookSettings, row_id: int, event: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, sort_keys=True).encode("utf-8")
        timestamp = str(int(time.time()))
        request = urllib.request.Request(
            hook.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "dicom-node",
                "X-DicomNode-Event": event,
                "X-DicomNode-Delivery": str(row_id),
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(hook.secret.get_secret_value(), timestamp, body),
            },
        )
        context = client_context(hook.tls) if hook.url.startswith("https://") else None
        try:
            with urllib.request.urlopen(request, timeout=hook.timeout_s, context=context) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            raise ConnectionError(f"{hook.name} answered HTTP {exc.code}") from exc

    @staticmethod
    def _mail(mail: EmailSettings, event: str, payload: dict[str, Any]) -> None:
        message = EmailMessage()
        message["From"] = mail.sender
        message["To"] = ", ".join(mail.recipients)
        message["Subject"] = (
            f"[dicom-node {payload.get('node', '')}] job {payload.get('job_id')} {event}: "
            f"{payload.get('pipeline', '')} ({payload.get('study_tag', '')})"
        )
        lines = [f"{key}: {value}" for key, value in payload.items() if key != "findings"]
        for finding in payload.get("findings", []):
            lines.append(f"finding: {finding['label']} (probability {finding['probability']})")
        message.set_content("\n".join(lines) + "\n")
        with smtplib.SMTP(mail.host, mail.port, timeout=mail.timeout_s) as smtp:
            smtp.ehlo()
            if mail.starttls:
                context = ssl.create_default_context(
                    cafile=str(mail.ca_certificates) if mail.ca_certificates else None
                )
                smtp.starttls(context=context)
                smtp.ehlo()
            if mail.username:
                smtp.login(mail.username, mail.password.get_secret_value())
            smtp.send_message(message)

    def _sent(self, row_id: int) -> None:
        with self.state.session() as s:
            row = s.get(Notification, row_id)
            if row is not None:
                row.state = NotificationState.SENT
                row.attempts += 1
                row.sent_at = utcnow()
                row.last_error = ""
                logger.info("notification %d (%s) sent to %s", row_id, row.event, row.channel)

    def _failed(self, row_id: int, attempts: int, error: str) -> None:
        with self.state.session() as s:
            row = s.get(Notification, row_id)
            if row is None:
                return
            row.attempts = attempts
            row.last_error = error[:500]
            if attempts >= self.settings.max_attempts:
                row.state = NotificationState.FAILED
                logger.error(
                    "notification %d to %s given up after %d attempts: %s",
                    row_id, row.channel, attempts, error,
                )  # fmt: skip
            else:
                delay = backoff_delay(self.settings, attempts)
                row.next_attempt_at = utcnow() + datetime.timedelta(seconds=delay)
                logger.warning(
                    "notification %d to %s failed (attempt %d, next in %.0f s): %s",
                    row_id, row.channel, attempts, delay, error,
                )  # fmt: skip
