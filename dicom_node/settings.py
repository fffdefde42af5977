"""The node's configuration: one pydantic-settings tree.

Sources, highest priority first: values passed by the CLI, ``DICOM_NODE_...``
environment variables (``__`` separates nesting levels, e.g.
``DICOM_NODE_SCP__PORT=11113``), secret files, the YAML file
(``config/node.yaml`` or the file named by ``--config`` / ``DICOM_NODE_CONFIG``),
then the defaults below. Every field has a default, and unknown keys are errors.

Secret files keep secrets out of the YAML, the environment and every command
line: a file named like the environment variable (``DICOM_NODE_WEB__SESSION_SECRET``)
holds the value (JSON for a list, such as ``DICOM_NODE_WEB__USERS``). They are
read from the folder ``DICOM_NODE_SECRETS_DIR`` names (``/run/secrets`` of
compose, a mounted Kubernetes Secret) and from systemd's
``CREDENTIALS_DIRECTORY`` (``LoadCredential=``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from pipelines.spec import OutputKind

__all__ = [
    "AllowedCaller",
    "AuditSettings",
    "BrokerSettings",
    "ClientTlsSettings",
    "DeidentifySettings",
    "DestinationSettings",
    "EmailSettings",
    "ExportSettings",
    "JobSettings",
    "NotifyEvent",
    "NotifySettings",
    "RetentionRule",
    "RetentionSettings",
    "RetentionSource",
    "LoginSettings",
    "ScpSettings",
    "Settings",
    "SourceSettings",
    "StabilitySettings",
    "SyslogSettings",
    "TlsSettings",
    "WebRole",
    "WebSettings",
    "WebTlsSettings",
    "WebUser",
    "WebhookSettings",
    "WorkerSettings",
    "SecretFilesSource",
    "load_settings",
]

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: no backslash, no controls


def _check_ae_title(value: str) -> str:
    if not value.strip() or not _AE_TITLE.match(value):
        raise ValueError(f"AE title must be 1-16 printable characters without '\\', got {value!r}")
    return value.strip()


#: An AE title, validated on entry (PS3.5 6.2, value representation AE).
AETitle = Annotated[str, AfterValidator(_check_ae_title)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSettings(_Section):
    """What the node knows about one sending AE."""

    ae_title: AETitle = Field(description="Calling AE title of the sender.")
    quiet_seconds: float | None = Field(
        default=None, ge=0, description="Quiet period for this sender; None uses the default."
    )
    complete_on_release: bool = Field(
        default=False,
        description="Complete the studies an association delivered shortly after its release.",
    )


class AllowedCaller(_Section):
    """A sender allowed to associate: its AE title and, optionally, its addresses."""

    ae_title: AETitle = Field(description="Calling AE title.")
    addresses: list[str] = Field(
        default_factory=list,
        description="IP addresses or networks (CIDR) it may connect from; empty allows any.",
    )

    @field_validator("addresses")
    @classmethod
    def _check_addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # raises ValueError with the bad value
        return value

    def allows(self, address: str) -> bool:
        """Whether ``address`` is one of this caller's addresses."""
        if not self.addresses:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.addresses)


class TlsSettings(_Section):
    """DICOM TLS (PS3.15 B.1, the BCP 195 profiles) for the receiver."""

    enabled: bool = Field(default=False, description="Accept only TLS connections.")
    certificate: Path | None = Field(default=None, description="Server certificate (PEM).")
    private_key: Path | None = Field(default=None, description="Server private key (PEM).")
    ca_certificates: Path | None = Field(
        default=None, description="CA bundle (PEM) that signs accepted client certificates."
    )
    require_client_certificate: bool = Field(
        default=False, description="Refuse clients without a certificate signed by the CA."
    )

    @model_validator(mode="after")
    def _check_files(self) -> TlsSettings:
        if not self.enabled:
            return self
        if self.certificate is None or self.private_key is None:
            raise ValueError("tls.certificate and tls.private_key are required when TLS is on")
        for path in (self.certificate, self.private_key, self.ca_certificates):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("tls.ca_certificates is required to verify client certificates")
        return self


class ScpSettings(_Section):
    """The DICOM receiver (C-ECHO and C-STORE SCP)."""

    ae_title: AETitle = Field(default="DICOM_NODE", description="The node's own AE title.")
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=11112, ge=0, le=65535, description="TCP port (0 picks a free one).")
    max_associations: int = Field(default=16, ge=1, description="Concurrent associations.")
    acse_timeout_s: float = Field(default=30, gt=0, description="Association setup timeout.")
    dimse_timeout_s: float = Field(default=60, gt=0, description="DIMSE message timeout.")
    network_timeout_s: float = Field(default=60, gt=0, description="Idle network timeout.")
    min_free_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description="Refuse instances with 0xA700 when the spool disk has less free space.",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Receiver processes sharing the port (SO_REUSEPORT); >1 uses several cores.",
    )
    engine: Literal["pynetdicom", "builtin"] = Field(
        default="pynetdicom",
        description="DICOM upper layer of the receiver: pynetdicom's, or the node's own "
        "(C-ECHO and C-STORE only, about 1.8x as fast; see docs/conformance.md).",
    )
    allow_list_enabled: bool = Field(
        default=False, description="Refuse associations from callers not in allowed_callers."
    )
    allowed_callers: list[AllowedCaller] = Field(
        default_factory=list, description="Senders allowed when the allow-list is enabled."
    )
    accepted_sop_classes: list[str] = Field(
        default_factory=list,
        description="Storage SOP Class UIDs to accept; empty accepts all, others get 0x0122.",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings, description="DICOM TLS.")


class StabilitySettings(_Section):
    """When a study counts as complete."""

    quiet_seconds: float = Field(
        default=30, ge=0, description="A study is complete after this long without instances."
    )
    poll_seconds: float = Field(default=1.0, gt=0, description="How often the node looks.")
    release_grace_seconds: float = Field(
        default=2.0, ge=0, description="Delay after a release before the study completes."
    )
    sources: list[SourceSettings] = Field(
        default_factory=list, description="Per-sender overrides of the quiet period."
    )

    def quiet_for(self, calling_ae: str) -> float:
        """Return the quiet period for a calling AE title."""
        for source in self.sources:
            if source.ae_title == calling_ae and source.quiet_seconds is not None:
                return source.quiet_seconds
        return self.quiet_seconds


class BrokerSettings(_Section):
    """The Celery broker and result backend (Redis)."""

    url: str = Field(default="redis://127.0.0.1:6379/0", description="Broker URL.")
    result_backend: str | None = Field(
        default=None, description="Result backend URL; defaults to the broker URL."
    )

    @property
    def backend_url(self) -> str:
        """The result backend URL in effect."""
        return self.result_backend or self.url


class WorkerSettings(_Section):
    """The Celery worker started by ``dicom-node worker``."""

    queues: list[str] = Field(default=["cpu"], description="Queues this worker consumes.")
    concurrency: int = Field(default=1, ge=1, description="Worker processes.")
    max_tasks_per_child: int = Field(
        default=50, ge=1, description="Recycle a worker process after this many jobs."
    )
    max_memory_per_child_mb: int | None = Field(
        default=8192,
        ge=64,
        description="Recycle a worker process after a job leaves it above this resident size.",
    )
    gpus: str = Field(
        default="auto",
        description="'auto' (every GPU nvidia-smi lists), 'none', or indices like '0,1': "
        "one worker process per GPU, pinned to it.",
    )
    device: str = Field(
        default="cpu",
        description="Torch device of this worker process; set per GPU process by the parent.",
    )
    process_start_timeout_s: float = Field(
        default=60,
        gt=0,
        description="How long a new pool process may take to report ready before Celery "
        "kills it (Celery's own default, 4 s, is too short on a loaded machine).",
    )


class JobSettings(_Section):
    """How often a job may be tried, and how lost jobs are found."""

    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Deliveries of a job (worker deaths and re-sends count) before FAILED.",
    )
    lost_check_seconds: float = Field(
        default=30, gt=0, description="How often the node looks for jobs the broker lost."
    )
    lost_grace_seconds: float = Field(
        default=20, ge=0, description="A job sent less than this long ago is never 'lost'."
    )


class ClientTlsSettings(_Section):
    """TLS towards an archive: DICOM TLS (PS3.15 B.1, BCP 195) for dimse, HTTPS for dicomweb."""

    enabled: bool = Field(default=False, description="Connect to this archive over TLS only.")
    ca_certificates: Path | None = Field(
        default=None,
        description="CA bundle (PEM) that signs the archive's certificate; the system's CAs "
        "when empty.",
    )
    certificate: Path | None = Field(
        default=None, description="The node's client certificate (PEM), if the archive asks."
    )
    private_key: Path | None = Field(default=None, description="Its private key (PEM).")
    server_name: str = Field(
        default="",
        description="Name the archive's certificate must carry (dimse); the destination's "
        "host when empty. A dicomweb certificate is checked against the URL's host.",
    )

    @model_validator(mode="after")
    def _check_files(self) -> ClientTlsSettings:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("tls.certificate and tls.private_key go together")
        if not self.enabled:
            return self
        for path in (self.ca_certificates, self.certificate, self.private_key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        return self


class DeidentifySettings(_Section):
    """De-identification for a research destination (PS3.15 Annex E, Basic Profile).

    The Basic Application Level Confidentiality Profile always applies; the
    options below retain or clean what it would otherwise remove. See
    :mod:`dicom_node.deidentify`.
    """

    enabled: bool = Field(
        default=False,
        description="De-identify everything sent to this destination: the job's source "
        "series and its results.",
    )
    key_file: Path | None = Field(
        default=None,
        description="File holding the Fernet key that encrypts the UID mapping and keys the "
        "pseudonyms (readable by the node only); never in the state DB.",
    )
    retain_longitudinal_modified_dates: bool = Field(
        default=True,
        description="Retain Longitudinal Temporal Information with Modified Dates: dates are "
        "shifted by a per-patient offset instead of removed (PS3.15 E.3.6).",
    )
    retain_device_identity: bool = Field(
        default=False,
        description="Retain Device Identity: serial numbers, station names (PS3.15 E.3.9).",
    )
    clean_descriptors: bool = Field(
        default=False,
        description="Clean Descriptors: keep descriptions and comments with the patient's "
        "identifiers removed from them, instead of removing them (PS3.15 E.3.5).",
    )
    send_sources: bool = Field(
        default=True,
        description="Send the job's source series with its results (research needs both).",
    )
    allow_burned_in_annotation: bool = Field(
        default=False,
        description="Send US, SC, DX, MG, IO, XC and OT images whose Burned In Annotation "
        "is YES or absent; off refuses them.",
    )
    max_date_shift_days: int = Field(
        default=3650, ge=1, description="Largest per-patient date shift, in days."
    )


class DestinationSettings(_Section):
    """An archive results are sent to: by C-STORE (dimse) or DICOMweb STOW-RS (dicomweb)."""

    name: str = Field(default="archive", description="Name used in logs and the CLI.")
    kind: Literal["dimse", "dicomweb"] = Field(default="dimse", description="Protocol.")
    ae_title: AETitle = Field(default="ORTHANC", description="Called AE title (dimse).")
    host: str = Field(default="127.0.0.1", description="Archive host (dimse).")
    port: int = Field(default=4242, ge=1, le=65535, description="Archive DICOM port (dimse).")
    url: str = Field(
        default="", description="DICOMweb base URL, e.g. http://pacs:8042/dicom-web (dicomweb)."
    )
    username: str = Field(default="", description="HTTP basic user (dicomweb), optional.")
    password: SecretStr = Field(default=SecretStr(""), description="HTTP basic password.")
    timeout_s: float = Field(default=30, gt=0, description="Network and DIMSE timeout.")
    tls: ClientTlsSettings = Field(
        default_factory=ClientTlsSettings, description="TLS towards this archive."
    )
    deidentify: DeidentifySettings = Field(
        default_factory=DeidentifySettings,
        description="Send de-identified copies (a research destination).",
    )
    outputs: list[OutputKind] | None = Field(
        default=None,
        description="Result kinds this destination receives (seg, sr, sc, gsps, rtstruct, kos, "
        "pdf); empty or absent: what each pipeline declares. A legacy PACS: [sc, gsps]; an "
        "OHIF/dcm4chee archive: [seg, sr].",
    )

    @model_validator(mode="after")
    def _check_kind(self) -> DestinationSettings:
        if self.deidentify.enabled and self.deidentify.key_file is None:
            raise ValueError(f"destination {self.name}: deidentify needs a key_file")
        if self.kind == "dicomweb" and not self.url.startswith(("http://", "https://")):
            raise ValueError(
                f"destination {self.name}: a dicomweb destination needs an http(s) url"
            )
        if self.kind == "dicomweb" and self.tls.enabled and not self.url.startswith("https://"):
            raise ValueError(f"destination {self.name}: TLS is on, so its url must be https")
        return self


class ExportSettings(_Section):
    """Where results go, and how failures are retried."""

    destinations: list[DestinationSettings] = Field(
        default_factory=lambda: [DestinationSettings()], description="Archives to send to."
    )
    max_attempts: int = Field(default=12, ge=1, description="Attempts before FAILED.")
    backoff_initial_s: float = Field(default=5, gt=0, description="First retry delay.")
    backoff_max_s: float = Field(default=900, gt=0, description="Longest retry delay.")


class NotifyEvent(StrEnum):
    """What a notification can be sent for."""

    FAILED = "FAILED"
    DONE = "DONE"
    FINDING = "FINDING"


class WebhookSettings(_Section):
    """A webhook: JSON POSTed to a URL, signed with HMAC-SHA256 (see :mod:`dicom_node.notify`)."""

    name: str = Field(min_length=1, max_length=64, description="Name in logs and the audit.")
    url: str = Field(description="http(s) URL the JSON is POSTed to.")
    secret: SecretStr = Field(
        description="Shared secret of the HMAC-SHA256 signature (16+ characters)."
    )
    events: list[NotifyEvent] = Field(
        default_factory=lambda: [NotifyEvent.FAILED], description="Events sent here."
    )
    timeout_s: float = Field(default=10, gt=0, description="Connect and read timeout.")
    tls: ClientTlsSettings = Field(
        default_factory=ClientTlsSettings, description="CA and client certificate for https."
    )

    @model_validator(mode="after")
    def _check(self) -> WebhookSettings:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook {self.name}: url must be http(s)")
        if len(self.secret.get_secret_value()) < 16:
            raise ValueError(f"webhook {self.name}: secret must be at least 16 characters")
        return self


class EmailSettings(_Section):
    """E-mail by SMTP, optionally with STARTTLS and a login."""

    name: str = Field(min_length=1, max_length=64, description="Name in logs and the audit.")
    host: str = Field(description="SMTP server.")
    port: int = Field(default=587, ge=1, le=65535, description="SMTP port.")
    starttls: bool = Field(default=True, description="Upgrade with STARTTLS before sending.")
    ca_certificates: Path | None = Field(
        default=None, description="CA bundle for the server's certificate; the system's if empty."
    )
    username: str = Field(default="", description="SMTP login; empty sends without one.")
    password: SecretStr = Field(default=SecretStr(""), description="SMTP password.")
    sender: str = Field(description="From address.")
    recipients: list[str] = Field(min_length=1, description="To addresses.")
    events: list[NotifyEvent] = Field(
        default_factory=lambda: [NotifyEvent.FAILED], description="Events sent here."
    )
    timeout_s: float = Field(default=10, gt=0, description="Connection timeout.")

    @model_validator(mode="after")
    def _check(self) -> EmailSettings:
        if self.username and not self.starttls:
            raise ValueError(f"email {self.name}: a login needs starttls (no password in clear)")
        return self


class NotifySettings(_Section):
    """Webhooks and e-mails on FAILED, DONE and pipeline findings; durable and retried."""

    webhooks: list[WebhookSettings] = Field(default_factory=list, description="Webhooks.")
    emails: list[EmailSettings] = Field(default_factory=list, description="E-mail channels.")
    include_identifiers: bool = Field(
        default=False,
        description="Add the Study Instance UID and accession number to every notification "
        "(PHI: only towards systems allowed to hold it). Off: the study tag only.",
    )
    dashboard_url: str = Field(
        default="", description="Base URL of the dashboard, for a link to the job."
    )
    max_attempts: int = Field(default=10, ge=1, description="Attempts before giving up.")
    backoff_initial_s: float = Field(default=5, gt=0, description="First retry delay.")
    backoff_max_s: float = Field(default=600, gt=0, description="Longest retry delay.")


class RetentionRule(_Section):
    """How long a study's files stay on the spool after it settled, per outcome."""

    done_after_s: float | None = Field(
        default=None,
        ge=0,
        description="Received instances of a study whose every job is DONE (all exports "
        "sent), or SKIPPED, are removed this long after the last job ended.",
    )
    failed_after_s: float | None = Field(
        default=None,
        ge=0,
        description="A study with a FAILED job is kept until it is retried, or this long.",
    )
    unrouted_after_s: float | None = Field(
        default=None, ge=0, description="A complete study no pipeline matched: this long."
    )
    results_after_s: float | None = Field(
        default=None,
        ge=0,
        description="Result objects of a finished job stay this long, for re-export.",
    )


class RetentionSource(RetentionRule):
    """Retention overrides for one sender (calling AE title)."""

    ae_title: AETitle = Field(description="Calling AE title of the sender.")


class RetentionSettings(_Section):
    """What the spool keeps, and for how long (see :mod:`dicom_node.retention`)."""

    enabled: bool = Field(default=False, description="Remove files by the rules below.")
    interval_s: float = Field(default=600, gt=0, description="How often the clean-up runs.")
    defaults: RetentionRule = Field(
        default_factory=lambda: RetentionRule(
            done_after_s=7 * 86400,
            failed_after_s=30 * 86400,
            unrouted_after_s=2 * 86400,
            results_after_s=30 * 86400,
        ),
        description="Rules for every sender; None keeps forever.",
    )
    sources: list[RetentionSource] = Field(
        default_factory=list, description="Per-sender overrides (None inherits the default)."
    )

    def rule_for(self, calling_ae: str) -> RetentionRule:
        """The rule in effect for a sender: its overrides over the defaults."""
        merged = self.defaults.model_dump()
        for source in self.sources:
            if source.ae_title == calling_ae:
                merged.update(
                    {
                        k: v
                        for k, v in source.model_dump(exclude={"ae_title"}).items()
                        if v is not None
                    }
                )
        return RetentionRule(**merged)


class SyslogSettings(_Section):
    """RFC 5424 syslog for the audit trail (a SIEM's collector)."""

    enabled: bool = Field(default=False, description="Also send each audit record by syslog.")
    host: str = Field(default="127.0.0.1", description="Collector host.")
    port: int = Field(default=514, ge=1, le=65535, description="Collector port.")
    protocol: Literal["udp", "tcp"] = Field(
        default="udp", description="udp, or tcp with octet-counting framing (RFC 6587)."
    )
    app_name: str = Field(default="dicom-node", max_length=48, description="APP-NAME field.")


class AuditSettings(_Section):
    """The audit trail (see :mod:`dicom_node.audit`)."""

    enabled: bool = Field(default=True, description="Record the audit trail.")
    path: Path | None = Field(
        default=None, description="JSON lines file; audit/audit.jsonl in the spool when empty."
    )
    syslog: SyslogSettings = Field(default_factory=SyslogSettings, description="Syslog.")


class WebRole(StrEnum):
    """What a dashboard user may do."""

    VIEWER = "viewer"
    ADMIN = "admin"


#: Values of ``web.session_secret`` that mean "nobody set this": refused outside demo mode.
PLACEHOLDER_SECRETS = frozenset({"", "changethis", "change-me", "changeme", "secret"})


class WebUser(_Section):
    """A dashboard user: a name, an argon2 password hash and a role."""

    name: str = Field(min_length=1, max_length=64, description="Login name.")
    password_hash: str = Field(
        description="argon2 hash of the password (make one: dicom-node web hash-password)."
    )
    role: WebRole = Field(default=WebRole.VIEWER, description="viewer or admin.")

    @field_validator("password_hash")
    @classmethod
    def _check_hash(cls, value: str) -> str:
        # Never echo the value: it is a secret.
        if not value.startswith("$argon2"):
            raise ValueError("password_hash must be an argon2 hash ($argon2id$...)")
        return value


class WebTlsSettings(_Section):
    """HTTPS for the dashboard; session cookies are then marked Secure."""

    certificate: Path | None = Field(default=None, description="Server certificate (PEM).")
    private_key: Path | None = Field(default=None, description="Server private key (PEM).")

    @property
    def enabled(self) -> bool:
        """Whether the dashboard is served over TLS."""
        return self.certificate is not None

    @model_validator(mode="after")
    def _check_files(self) -> WebTlsSettings:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("web.tls.certificate and web.tls.private_key go together")
        for path in (self.certificate, self.private_key):
            if path is not None and not path.is_file():
                raise ValueError(f"web TLS file {path} does not exist")
        return self


class LoginSettings(_Section):
    """Brakes on password guessing and on the memory password checks take."""

    max_concurrent_checks: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Password checks (argon2, 64 MiB each) running at once; a login that "
        "finds none free within check_wait_s is answered 503.",
    )
    check_wait_s: float = Field(
        default=0.5, ge=0, le=10, description="How long a login waits for a free check."
    )
    free_failures: int = Field(
        default=3,
        ge=1,
        description="Failed logins for one name (or one remembered browser) before each "
        "further attempt must wait.",
    )
    free_failures_per_source: int = Field(
        default=10,
        ge=1,
        description="Failed logins from one address (many users may share one) before "
        "each further attempt must wait.",
    )
    first_delay_s: float = Field(
        default=1, gt=0, description="The first wait; it doubles with every further failure."
    )
    max_delay_s: float = Field(default=300, gt=0, description="The longest wait.")
    forget_after_s: float = Field(
        default=24 * 3600, gt=0, description="Failures older than this no longer count."
    )
    device_cookie_days: int = Field(
        default=30,
        ge=1,
        description="A browser that logged in as a user is remembered this long: its "
        "logins as that user skip the name's and the address's waits.",
    )


class WebSettings(_Section):
    """The admin dashboard, its REST API and Prometheus metrics.

    ``dicom-node web serve`` runs them in a process of their own (compose,
    Kubernetes and systemd do so); ``dicom-node serve`` runs them too when
    ``enabled``, as a supervised child process by default.
    """

    enabled: bool = Field(
        default=False,
        description="Run the dashboard from dicom-node serve (see mode); 'dicom-node web serve' "
        "runs it on its own whatever this says.",
    )
    mode: Literal["process", "thread"] = Field(
        default="process",
        description="How serve runs the dashboard: 'process', a child process that serve "
        "restarts if it dies, so a crash or a memory blow-up there never reaches the DICOM "
        "receiver; 'thread', inside serve's own process (embedding, small tests).",
    )
    host: str = Field(default="127.0.0.1", description="Address the dashboard listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP(S) port (0 picks one).")
    session_secret: SecretStr = Field(
        default=SecretStr("changethis"),
        description="Key that signs session cookies; a placeholder is refused outside demo.",
    )
    session_max_age_s: int = Field(default=8 * 3600, gt=0, description="Session lifetime.")
    session_idle_timeout_s: int = Field(
        default=3600, gt=0, description="A session unused for this long ends."
    )
    login: LoginSettings = Field(
        default_factory=LoginSettings, description="Login throttling and password checks."
    )
    users: list[WebUser] = Field(default_factory=list, description="Who may log in.")
    show_patient_names: bool = Field(
        default=False, description="Show patient names and accession numbers to viewers too."
    )
    metrics_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token a Prometheus scraper may use for /metrics; empty: login only.",
    )
    worker_ping_timeout_s: float = Field(
        default=1.0, gt=0, le=10, description="How long to wait for workers to answer a ping."
    )
    tls: WebTlsSettings = Field(default_factory=WebTlsSettings, description="HTTPS.")
    demo: bool = Field(
        default=False, description="Demo mode: placeholder secrets allowed. Never in production."
    )

    @model_validator(mode="after")
    def _check_secrets(self) -> WebSettings:
        names = [user.name for user in self.users]
        if len(set(names)) != len(names):
            raise ValueError("web.users names must be unique")
        if not self.enabled or self.demo:
            return self
        secret = self.session_secret.get_secret_value()
        if secret.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("web.session_secret is a placeholder: set a long random value")
        if len(secret) < 16:
            raise ValueError("web.session_secret must be at least 16 characters")
        if not self.users:
            raise ValueError("web.users is empty: nobody could log in to the dashboard")
        return self


#: Prefix of the environment variables and of the secret files' names.
ENV_PREFIX = "DICOM_NODE_"


class SecretFilesSource(PydanticBaseSettingsSource):
    """Settings from files named like their environment variables, one value per file.

    Parameters
    ----------
    settings_cls : type[BaseSettings]
        The settings class.
    folders : list[pathlib.Path]
        Folders to read; later ones win. Missing folders are skipped.
    """

    def __init__(self, settings_cls: type[BaseSettings], folders: list[Path]) -> None:
        super().__init__(settings_cls)
        self.folders = folders

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # noqa: ARG002
        """Unused: :meth:`__call__` reads every file at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The nested values of every ``DICOM_NODE_*`` file in the folders."""
        values: dict[str, Any] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if not path.name.upper().startswith(ENV_PREFIX) or not path.is_file():
                    continue
                keys = path.name[len(ENV_PREFIX) :].lower().split("__")
                text = path.read_text(encoding="utf-8").rstrip("\r\n")
                value: Any = json.loads(text) if text[:1] in "[{" and text else text
                target = values
                for key in keys[:-1]:
                    target = target.setdefault(key, {})
                target[keys[-1]] = value
        return values


def _secret_folders() -> list[Path]:
    names = (os.environ.get("CREDENTIALS_DIRECTORY"), os.environ.get("DICOM_NODE_SECRETS_DIR"))
    return [Path(name) for name in names if name]


class Settings(BaseSettings):
    """The whole node configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        # Validation errors must not echo secrets (session secret, passwords) back.
        hide_input_in_errors=True,
    )

    #: Set by :func:`load_settings` before the class is instantiated.
    yaml_file: ClassVar[Path | None] = None

    spool_dir: Path = Field(default=Path("var/spool"), description="Spool (shared with workers).")
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the state database; empty means SQLite in the spool.",
    )
    pipelines_dir: Path = Field(
        default=Path("config/pipelines"), description="Folder of pipeline YAML files."
    )
    scp: ScpSettings = Field(default_factory=ScpSettings, description="DICOM receiver.")
    stability: StabilitySettings = Field(
        default_factory=StabilitySettings, description="Study completeness."
    )
    broker: BrokerSettings = Field(default_factory=BrokerSettings, description="Celery broker.")
    worker: WorkerSettings = Field(default_factory=WorkerSettings, description="Worker.")
    jobs: JobSettings = Field(default_factory=JobSettings, description="Attempts, lost jobs.")
    export: ExportSettings = Field(default_factory=ExportSettings, description="Export.")
    web: WebSettings = Field(default_factory=WebSettings, description="Dashboard and API.")
    notify: NotifySettings = Field(
        default_factory=NotifySettings, description="Webhooks and e-mails."
    )
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings, description="Spool clean-up."
    )
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Audit trail.")
    database_auto_upgrade: bool = Field(
        default=True,
        description="Bring the state DB's schema to this version at start (under a lock, safe "
        "with several processes); false: run 'dicom-node db upgrade' yourself, and a process "
        "refuses an older schema.",
    )
    job_poll_seconds: float = Field(default=1.0, gt=0, description="Job/export loop period.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Logging level of serve, web serve and worker."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as text or as JSON objects (one per line, with job and study "
        "tag as fields), for serve, web serve and worker.",
    )

    @property
    def audit_path(self) -> Path:
        """The audit trail's JSON lines file in effect."""
        return self.audit.path or self.spool_dir / "audit" / "audit.jsonl"

    @property
    def state_db_url(self) -> str:
        """The SQLAlchemy URL in effect."""
        return self.database_url or f"sqlite:///{self.spool_dir / 'state.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order the sources: CLI values, environment, secret files, YAML, defaults."""
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            SecretFilesSource(settings_cls, _secret_folders()),
        ]
        if cls.yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls.yaml_file))
        return tuple(sources)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from a YAML file, the environment and explicit overrides.

    Parameters
    ----------
    config : pathlib.Path or None
        YAML file; None uses defaults and the environment only.
    **overrides : Any
        Values that win over every other source (the CLI's flags).

    Returns
    -------
    Settings
        The validated configuration.

    Raises
    ------
    FileNotFoundError
        If ``config`` names a missing file.
    pydantic.ValidationError
        If any value is invalid; the message names the field.
    """
    if config is not None and not config.is_file():
        raise FileNotFoundError(f"configuration file {config} does not exist")

    class _Loaded(Settings):
        yaml_file: ClassVar[Path | None] = config

    loaded = _Loaded(**overrides)
    # Hand out the public type: the subclass only existed to carry the file name.
    return Settings.model_construct(**dict(loaded))
