"""``dicom-node doctor``: the checks a site runs after install and before go-live.

Each check says pass or fail with a reason an administrator can act on; one
failing check never stops the others. In order:

1. configuration: the settings and every pipeline definition are valid;
2. spool: the folder is writable and has more free space than the watermark;
3. state DB: reachable, and its schema at the revision this version needs;
4. broker: Redis answers, and its clock agrees with this machine's;
5. workers: each queue an enabled pipeline uses has a live worker (with its device);
6. models: on a worker of each such queue, each pipeline's model loads
   (the node never imports torch, so a worker loads them: ``worker.check_pipelines``);
7. destinations: each export destination answers C-ECHO (DICOMweb: HTTP), with
   its TLS settings;
8. receiver port: free, or held by a DICOM node answering as this node's AE title.
"""

from __future__ import annotations

import base64
import errno
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError

from dicom_node.broker import CHECK_PIPELINES_TASK, make_producer, workers_by_queue
from dicom_node.export import echo
from dicom_node.settings import ClientTlsSettings, DestinationSettings, Settings
from dicom_node.state import migrate
from dicom_node.state.db import make_engine
from dicom_node.tls import client_context
from dicom_node.web.probe import worker_device
from pipelines.errors import PipelineConfigError
from pipelines.spec import PipelineSpec, load_pipeline_specs

__all__ = ["CLOCK_TOLERANCE_S", "Check", "own_receiver", "run_checks"]

#: Largest clock difference with the broker that passes.
CLOCK_TOLERANCE_S = 2.0


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's answer."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """``PASS name: detail`` or ``FAIL name: detail``."""
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def _gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB"


def check_spool(settings: Settings) -> Check:
    """The spool folder takes a file (written, fsync'd, removed) and has free space."""
    root = settings.spool_dir
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-") as probe:
            probe.write(b"dicom-node doctor")
            probe.flush()
    except OSError as exc:
        return Check("spool", False, f"{root} is not writable ({exc.strerror or exc})")
    free = shutil.disk_usage(root).free
    watermark = settings.scp.min_free_bytes
    if free < watermark:
        return Check(
            "spool",
            False,
            f"{root}: {_gib(free)} free, below the watermark of {_gib(watermark)} "
            "(instances would be refused with 0xA700)",
        )
    return Check("spool", True, f"{root} writable, {_gib(free)} free")


def check_state_db(settings: Settings) -> Check:
    """The state DB answers and its schema is at this version's head revision."""
    engine = make_engine(settings.state_db_url, writer=False)
    try:
        revision = migrate.current_revision(engine)
    except Exception as exc:  # any driver error: the database is not usable
        return Check("state DB", False, f"unreachable ({type(exc).__name__})")
    finally:
        engine.dispose()
    head = migrate.head_revision()
    dialect = settings.state_db_url.split(":", 1)[0]
    if revision != head:
        return Check(
            "state DB",
            False,
            f"{dialect}: schema at revision {revision or 'none'}, this version needs {head} "
            "(run 'dicom-node db upgrade', or start the node with database_auto_upgrade)",
        )
    return Check("state DB", True, f"{dialect}: reachable, schema at revision {head}")


def check_broker(settings: Settings) -> list[Check]:
    """Redis answers PING, and its clock is within :data:`CLOCK_TOLERANCE_S` of ours."""
    client = redis.Redis.from_url(settings.broker.url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
        before = time.time()
        seconds, micros = client.time()
        after = time.time()
    except redis.RedisError as exc:
        reason = f"Redis at {_where(settings.broker.url)} does not answer ({type(exc).__name__})"
        return [Check("broker", False, reason), Check("clock", False, "broker unreachable")]
    finally:
        client.close()
    offset = seconds + micros / 1e6 - (before + after) / 2
    broker = Check("broker", True, f"Redis at {_where(settings.broker.url)} answers")
    if abs(offset) > CLOCK_TOLERANCE_S:
        clock = Check(
            "clock",
            False,
            f"this machine is {offset:+.1f} s off the broker's clock (more than "
            f"{CLOCK_TOLERANCE_S:.0f} s): synchronise both with NTP",
        )
    else:
        clock = Check("clock", True, f"{offset:+.2f} s from the broker's clock")
    return [broker, clock]


def _where(url: str) -> str:
    """A broker URL without its password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def check_workers(
    settings: Settings, pipelines: dict[str, PipelineSpec], timeout_s: float
) -> tuple[list[Check], dict[str, list[str]]]:
    """Each queue an enabled pipeline uses has a live worker; return them per queue."""
    wanted: dict[str, list[str]] = {}
    for spec in pipelines.values():
        if spec.enabled:
            wanted.setdefault(spec.queue, []).append(spec.name)
    if not wanted:
        return [Check("workers", True, "no enabled pipeline needs a worker")], {}
    app = make_producer(settings.broker)
    stats: dict[str, Any] = {}
    try:
        seen = workers_by_queue(app, timeout_s)
        if seen:
            stats = app.control.inspect(timeout=timeout_s).stats() or {}
    except Exception:  # kombu raises several types when the broker is away
        seen = None
    finally:
        app.close()
    if seen is None:
        return [Check("workers", False, "the broker could not be asked")], {}
    checks = []
    for queue, names in sorted(wanted.items()):
        workers = seen.get(queue, [])
        if not workers:
            checks.append(
                Check(
                    f"workers {queue}",
                    False,
                    f"no live worker consumes queue {queue!r}, which {', '.join(names)} "
                    f"use(s): start one (dicom-node worker --queues {queue})",
                )
            )
            continue
        described = ", ".join(f"{w} ({worker_device(w, stats.get(w) or {})})" for w in workers)
        checks.append(Check(f"workers {queue}", True, f"{len(workers)} live: {described}"))
    return checks, {queue: wanted[queue] for queue in wanted if seen.get(queue)}


def check_models(
    settings: Settings, by_queue: dict[str, list[str]], timeout_s: float
) -> list[Check]:
    """Ask a worker of each queue to load its pipelines' models."""
    checks: list[Check] = []
    if not by_queue:
        return checks
    app = make_producer(settings.broker)
    try:
        pending = {
            queue: app.send_task(CHECK_PIPELINES_TASK, args=[names], queue=queue)
            for queue, names in by_queue.items()
        }
        for queue, result in sorted(pending.items()):
            try:
                answer: dict[str, Any] = result.get(timeout=timeout_s)
            except Exception as exc:  # a timeout, or the task failing on the worker
                reason = (
                    f"no answer from queue {queue!r} within {timeout_s:.0f} s "
                    f"({type(exc).__name__})"
                )
                checks.extend(Check(f"model {name}", False, reason) for name in by_queue[queue])
                continue
            where = answer.get("worker", "?")
            device = answer.get("gpu") or answer.get("device", "?")
            for name, (loaded, reason) in sorted(answer.get("pipelines", {}).items()):
                checks.append(
                    Check(f"model {name}", bool(loaded), f"{reason} on {where} ({device})")
                )
    finally:
        app.close()
    return checks


def check_destination(settings: Settings, dest: DestinationSettings) -> Check:
    """A destination answers: C-ECHO for DIMSE, an HTTP request for DICOMweb."""
    tls = " over TLS" if dest.tls.enabled else ""
    if dest.kind == "dimse":
        ok, reason = echo(settings.scp.ae_title, dest)
        where = f"{dest.ae_title}@{dest.host}:{dest.port}{tls}"
        return Check(f"destination {dest.name}", ok, f"C-ECHO {where}: " + (reason or "success"))
    return _check_dicomweb(dest)


def _check_dicomweb(dest: DestinationSettings) -> Check:
    # A QIDO-RS search for one study: the least a STOW-RS archive's DICOMweb answers.
    url = dest.url.rstrip("/") + "/studies?limit=1"
    request = urllib.request.Request(url, headers={"Accept": "application/dicom+json"})
    if dest.username:
        token = f"{dest.username}:{dest.password.get_secret_value()}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode("ascii"))
    name = f"destination {dest.name}"
    try:
        with urllib.request.urlopen(
            request, timeout=dest.timeout_s, context=client_context(dest.tls)
        ) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return Check(name, False, f"{dest.url} answered HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        return Check(name, False, f"{dest.url} unreachable ({getattr(exc, 'reason', exc)})")
    return Check(name, True, f"{dest.url} answered HTTP {status}")


def check_receiver_port(settings: Settings) -> Check:
    """The receiver's port is free, or held by a node answering as our AE title."""
    scp = settings.scp
    family = socket.AF_INET6 if ":" in scp.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((scp.host, scp.port))
        except OSError as exc:
            if exc.errno == errno.EACCES:
                return Check(
                    "receiver port",
                    False,
                    f"{scp.host}:{scp.port} needs privileges (ports below 1024: "
                    "CAP_NET_BIND_SERVICE)",
                )
            if exc.errno != errno.EADDRINUSE:
                return Check("receiver port", False, f"{scp.host}:{scp.port}: {exc.strerror}")
        else:
            return Check("receiver port", True, f"{scp.host}:{scp.port} is free")
    answered, _ = echo(scp.ae_title, own_receiver(settings))
    if answered:
        return Check(
            "receiver port",
            True,
            f"{scp.host}:{scp.port} in use by a node answering C-ECHO as {scp.ae_title} "
            "(this node, running)",
        )
    return Check(
        "receiver port",
        False,
        f"{scp.host}:{scp.port} is taken by another program (no C-ECHO answer as {scp.ae_title})",
    )


def own_receiver(settings: Settings, timeout_s: float = 5.0) -> DestinationSettings:
    """This node's receiver as a C-ECHO destination on this machine (with its TLS)."""
    scp = settings.scp
    host = "127.0.0.1" if scp.host in ("0.0.0.0", "") else "::1" if scp.host == "::" else scp.host
    tls = scp.tls
    client = ClientTlsSettings()
    if tls.enabled:
        # Trust our own certificate, and present it where clients must show one.
        client = ClientTlsSettings(
            enabled=True,
            ca_certificates=tls.ca_certificates or tls.certificate,
            certificate=tls.certificate if tls.require_client_certificate else None,
            private_key=tls.private_key if tls.require_client_certificate else None,
        )
    return DestinationSettings(
        name="receiver", ae_title=scp.ae_title, host=host, port=scp.port, timeout_s=timeout_s,
        tls=client,
    )  # fmt: skip


def run_checks(
    load: Callable[[], Settings], worker_timeout_s: float = 5.0, model_timeout_s: float = 120.0
) -> Iterator[Check]:
    """Run every check, yielding each line as soon as it is known.

    Parameters
    ----------
    load : Callable[[], Settings]
        Builds the settings (its errors become the first, failed check).
    worker_timeout_s : float
        How long workers may take to answer the broadcast.
    model_timeout_s : float
        How long a worker may take to load a queue's models.

    Yields
    ------
    Check
        One line per check, in the module docstring's order.
    """
    try:
        settings = load()
    except (ValidationError, FileNotFoundError) as exc:
        yield Check("configuration", False, str(exc).replace("\n", " "))
        return
    try:
        pipelines = load_pipeline_specs(settings.pipelines_dir)
    except PipelineConfigError as exc:
        yield Check("configuration", False, exc.reason)
        pipelines = {}
    else:
        enabled = [spec.name for spec in pipelines.values() if spec.enabled]
        yield Check(
            "configuration",
            True,
            f"AE {settings.scp.ae_title}, {len(enabled)} enabled pipeline(s): "
            f"{', '.join(enabled) or '-'}",
        )
    yield check_spool(settings)
    yield check_state_db(settings)
    broker_checks = check_broker(settings)
    yield from broker_checks
    if broker_checks[0].ok:
        worker_checks, by_queue = check_workers(settings, pipelines, worker_timeout_s)
        yield from worker_checks
        yield from check_models(settings, by_queue, model_timeout_s)
    for dest in settings.export.destinations:
        yield check_destination(settings, dest)
    yield check_receiver_port(settings)
