"""Test certificates for DICOM TLS, made with the openssl command-line tool."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True, slots=True)
class Certificates:
    """A test CA and the server and client certificates it signed (PEM files)."""

    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path


def make_certificates(folder: Path, ca_name: str = "test-ca") -> Certificates:
    """Make a CA, a server certificate for ``localhost`` and 127.0.0.1, and a client one.

    Parameters
    ----------
    folder : pathlib.Path
        Existing folder the files are written to.
    ca_name : str
        Common name of the CA; two calls with different names give CAs that do
        not trust each other's certificates.

    Returns
    -------
    Certificates
        Paths of the files.
    """

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca_name}",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    # Host-name checks read the subject alternative names, not the common name.
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
            "-out", f"{name}.pem")  # fmt: skip
    return Certificates(
        ca=folder / "ca.pem",
        server=folder / "server.pem",
        server_key=folder / "server.key",
        client=folder / "client.pem",
        client_key=folder / "client.key",
    )
