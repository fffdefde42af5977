"""Start the real companion servers on loopback: redis-server, Orthanc and PostgreSQL.

The demo and the test suite both need a broker and an archive, and the tests
a PostgreSQL state DB beside SQLite. These context managers start the Debian
binaries in a temporary folder on free ports, wait until they answer (with a
deadline, never a fixed sleep), and stop them by their own PID. Nothing here
is used by ``dicom-node serve`` in production.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "OrthancHandle",
    "OrthancTls",
    "PostgresHandle",
    "RedisHandle",
    "ServiceError",
    "free_port",
    "orthanc_rest",
    "run_orthanc",
    "run_postgres",
    "run_redis",
    "wait_until",
]


#: Orthanc's DICOMweb plugin from Debian's orthanc-dicomweb (STOW-RS for the export tests).
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class ServiceError(RuntimeError):
    """A companion server could not be started or did not become ready."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll ``check()`` until it returns true, or raise after ``timeout_s``.

    Raises
    ------
    ServiceError
        If the deadline passes; the message names ``what``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        time.sleep(interval_s)
    raise ServiceError(f"{what} not ready after {timeout_s:.0f} s")


def _binary(name: str, package: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path is None:
        raise ServiceError(f"{name} not found: install the Debian package '{package}'")
    return path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@dataclass(frozen=True, slots=True)
class RedisHandle:
    """A running redis-server."""

    port: int
    pid: int
    folder: Path

    @property
    def url(self) -> str:
        """Broker URL of database 0."""
        return self.db_url(0)

    def db_url(self, db: int) -> str:
        """Broker URL of database ``db`` (0-15): one node per database."""
        return f"redis://127.0.0.1:{self.port}/{db}"


def redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a Redis server answers PING."""
    with socket.create_connection((host, port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


@contextmanager
def run_redis(
    folder: Path, port: int | None = None, *, appendonly: bool = True
) -> Iterator[RedisHandle]:
    """Run redis-server on loopback with its data in ``folder``.

    Parameters
    ----------
    folder : pathlib.Path
        Working directory (AOF and RDB files).
    port : int or None
        Port; a free one when None.
    appendonly : bool
        Persist with AOF, as the deployment does, so a restart keeps the queue.

    Yields
    ------
    RedisHandle
        The running server.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        _binary("redis-server", "redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(folder),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--logfile", str(folder / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is None and redis_ping(port), 20, "redis-server")
        yield RedisHandle(port=port, pid=proc.pid, folder=folder)
    finally:
        _stop(proc)


@dataclass(frozen=True, slots=True)
class OrthancTls:
    """DICOM TLS for Orthanc's DICOM port (Orthanc 1.9 and newer).

    Attributes
    ----------
    certificate : pathlib.Path
        Orthanc's certificate (PEM).
    private_key : pathlib.Path
        Its private key (PEM).
    trusted_certificates : pathlib.Path
        Certificates (PEM) of the CAs or peers Orthanc trusts.
    remote_certificate_required : bool
        Whether a peer must present a certificate signed by one of them.
    """

    certificate: Path
    private_key: Path
    trusted_certificates: Path
    remote_certificate_required: bool = True


@dataclass(frozen=True, slots=True)
class OrthancHandle:
    """A running Orthanc used as the archive."""

    dicom_port: int
    http_port: int
    ae_title: str
    pid: int
    folder: Path

    @property
    def http_url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"


def orthanc_rest(base_url: str, path: str, body: object | None = None, *, raw: bool = False) -> Any:
    """Call Orthanc's REST API; JSON in and out unless ``raw``.

    Raises
    ------
    urllib.error.URLError
        If Orthanc does not answer.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = response.read()
    return payload if raw else json.loads(payload)


@contextmanager
def run_orthanc(
    folder: Path,
    dicom_port: int | None = None,
    http_port: int | None = None,
    ae_title: str = "ORTHANC",
    *,
    dicomweb: bool = False,
    tls: OrthancTls | None = None,
) -> Iterator[OrthancHandle]:
    """Run Debian's Orthanc on loopback with its storage in ``folder``.

    With ``tls``, its DICOM port accepts DICOM TLS only (the REST API stays
    plain HTTP on loopback).

    ``TCP_NODELAY=1`` is set in its environment: Orthanc 1.10 on Linux otherwise
    waits ~40 ms per instance on Nagle's algorithm.

    Yields
    ------
    OrthancHandle
        The running server, ready on both ports.
    """
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    config = {
        "Name": "dicom-node archive",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        "StableAge": 2,
    }
    if tls is not None:
        config |= {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(tls.certificate),
            "DicomTlsPrivateKey": str(tls.private_key),
            "DicomTlsTrustedCertificates": str(tls.trusted_certificates),
            "DicomTlsRemoteCertificateRequired": tls.remote_certificate_required,
        }
    if dicomweb and not Path(DICOMWEB_PLUGIN).is_file():
        raise ServiceError("DICOMweb needs the Debian package 'orthanc-dicomweb'")
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ, TCP_NODELAY="1")
    log = (folder / "orthanc.log").open("wb")
    proc = subprocess.Popen(
        [_binary("Orthanc", "orthanc"), str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    handle = OrthancHandle(
        dicom_port=dicom_port, http_port=http_port, ae_title=ae_title, pid=proc.pid, folder=folder
    )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise ServiceError(f"Orthanc exited; see {folder / 'orthanc.log'}")
            try:
                orthanc_rest(handle.http_url, "/system")
            except urllib.error.URLError:
                return False
            with socket.create_connection(("127.0.0.1", dicom_port), timeout=1):
                return True

        wait_until(ready, 60, "Orthanc")
        yield handle
    finally:
        _stop(proc)
        log.close()


def orthanc_study_objects(base_url: str, study_uid: str, modalities: set[str]) -> list[bytes]:
    """Download every instance of a study whose series modality is in ``modalities``.

    Parameters
    ----------
    base_url : str
        Orthanc REST base URL.
    study_uid : str
        Study Instance UID.
    modalities : set[str]
        e.g. ``{"SEG", "SR"}``.

    Returns
    -------
    list[bytes]
        Part-10 files as Orthanc stores them.
    """
    found = orthanc_rest(
        base_url,
        "/tools/find",
        {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    )
    files = []
    for series in found:
        if series.get("MainDicomTags", {}).get("Modality") not in modalities:
            continue
        for instance_id in series.get("Instances", []):
            files.append(orthanc_rest(base_url, f"/instances/{instance_id}/file", raw=True))
    return files


@dataclass(frozen=True, slots=True)
class PostgresHandle:
    """A running PostgreSQL server; ``user`` may create databases, without a password."""

    port: int
    pid: int
    folder: Path
    user: str = "dicom_node"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL.

        Raises
        ------
        ValueError
            If ``name`` is not a plain identifier (letters, digits, underscores).
        """
        import psycopg  # the PostgreSQL driver; only this helper and SQLAlchemy use it

        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name must be a plain identifier, got {name!r}")
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # an identifier cannot be a parameter
        return self.url(name)

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={database}"


def _postgres_binary(name: str) -> str:
    # Debian keeps the server's programs out of PATH, in one folder per major version.
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise ServiceError(f"{name} not found: install the Debian package 'postgresql'")
    return found


def _postgres_ready(handle: PostgresHandle, proc: subprocess.Popen[bytes]) -> bool:
    import psycopg

    if proc.poll() is not None:
        raise ServiceError(f"postgres exited; see {handle.folder / 'postgres.log'}")
    try:
        with psycopg.connect(handle._dsn("postgres"), connect_timeout=1):
            return True
    except psycopg.OperationalError:
        return False


@contextmanager
def run_postgres(folder: Path, port: int | None = None) -> Iterator[PostgresHandle]:
    """Run Debian's PostgreSQL on loopback: ``initdb`` in a new folder, then ``postgres``.

    PostgreSQL refuses to run as root, so under root the cluster belongs to the
    ``postgres`` user (made by Debian's package; ``nobody`` otherwise) and lives
    in a folder of its own under the system's temporary directory, since a
    test's ``tmp_path`` is private to root. It is removed afterwards. Durability
    is off (``fsync=off``): a test server, never a production one.

    Parameters
    ----------
    folder : pathlib.Path
        Holds the server's log (and its data, when not root).
    port : int or None
        Port; a free one when None.

    Yields
    ------
    PostgresHandle
        The running server, answering connections.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    run_as: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            run_as = pwd.getpwnam("postgres")
        except KeyError:
            run_as = pwd.getpwnam("nobody")
        cluster = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
        os.chown(cluster, run_as.pw_uid, run_as.pw_gid)
    else:
        cluster = folder / "cluster"
        cluster.mkdir()
    uid, gid = (run_as.pw_uid, run_as.pw_gid) if run_as else (None, None)
    data = cluster / "data"
    log = (folder / "postgres.log").open("ab")
    proc: subprocess.Popen[bytes] | None = None
    try:
        initdb = subprocess.run(
            [_postgres_binary("initdb"), "-D", str(data), "-U", "dicom_node", "-A", "trust",
             "-E", "UTF8", "--no-sync"],
            stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120, cwd=cluster,
            user=uid, group=gid,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise ServiceError(f"initdb failed; see {folder / 'postgres.log'}")
        proc = subprocess.Popen(
            [_postgres_binary("postgres"), "-D", str(data), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={cluster}",
             "-c", "max_connections=300", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off"],
            stdout=log, stderr=subprocess.STDOUT, cwd=cluster, user=uid, group=gid,
        )  # fmt: skip
        handle = PostgresHandle(port=port, pid=proc.pid, folder=folder)
        wait_until(lambda: _postgres_ready(handle, proc), 60, "postgres")
        yield handle
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: ends open sessions
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        shutil.rmtree(cluster, ignore_errors=True)
