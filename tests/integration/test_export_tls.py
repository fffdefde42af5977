"""Export over DICOM TLS into a real Orthanc whose DICOM port speaks TLS only."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_node.export import echo, send_files
from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.services import OrthancHandle, OrthancTls, orthanc_rest, run_orthanc
from dicom_node.settings import ClientTlsSettings, DestinationSettings
from dicom_node.tls import client_context
from tests.certificates import Certificates, make_certificates
from tests.tls_proxy import https_front

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Certificates from a CA that neither Orthanc nor the node trusts."""
    return make_certificates(tmp_path_factory.mktemp("stranger"), ca_name="stranger-ca")


@pytest.fixture(scope="module")
def tls_orthanc(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[OrthancHandle]:
    tls = OrthancTls(
        certificate=certs.server, private_key=certs.server_key, trusted_certificates=certs.ca
    )
    with run_orthanc(tmp_path_factory.mktemp("orthanc-tls"), tls=tls) as handle:
        yield handle


def _destination(orthanc: OrthancHandle, **tls: Any) -> DestinationSettings:
    return DestinationSettings(
        name="secure",
        ae_title=orthanc.ae_title,
        host="127.0.0.1",
        port=orthanc.dicom_port,
        timeout_s=10,
        tls=ClientTlsSettings(**tls),
    )


def _mutual(orthanc: OrthancHandle, certs: Certificates, **changes: object) -> DestinationSettings:
    """TLS with the right CA and the node's client certificate, unless ``changes`` say otherwise."""
    tls = {
        "enabled": True,
        "ca_certificates": certs.ca,
        "certificate": certs.client,
        "private_key": certs.client_key,
    }
    return _destination(orthanc, **(tls | changes))


def _study(tmp_path: Path) -> PhantomStudy:
    return ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6).write(tmp_path / "ct")


def _held(orthanc: OrthancHandle, study: PhantomStudy) -> int:
    found = orthanc_rest(
        orthanc.http_url,
        "/tools/find",
        {"Level": "Instance", "Query": {"StudyInstanceUID": study.study_uid}},
    )
    return len(found)


def test_store_over_tls_with_a_client_certificate(
    tls_orthanc: OrthancHandle, certs: Certificates, tmp_path: Path
) -> None:
    study = _study(tmp_path)
    dest = _mutual(tls_orthanc, certs)
    results = send_files("DICOM_NODE", dest, list(study.paths))
    assert [r.error for r in results] == [""] * 8
    assert _held(tls_orthanc, study) == 8
    assert echo("DICOM_NODE", dest) == (True, "")


def test_a_plain_association_to_a_tls_port_fails_with_the_reason(
    tls_orthanc: OrthancHandle, tmp_path: Path
) -> None:
    study = _study(tmp_path)
    results = send_files("DICOM_NODE", _destination(tls_orthanc), list(study.paths[:2]))
    assert [r.ok for r in results] == [False, False]
    assert "not established" in results[0].error
    assert _held(tls_orthanc, study) == 0


def test_an_archive_certificate_from_an_unknown_ca_is_refused(
    tls_orthanc: OrthancHandle, certs: Certificates, stranger: Certificates, tmp_path: Path
) -> None:
    # The node trusts only the stranger CA, so Orthanc's certificate does not verify.
    study = _study(tmp_path)
    dest = _mutual(tls_orthanc, certs, ca_certificates=stranger.ca)
    results = send_files("DICOM_NODE", dest, list(study.paths[:2]))
    assert [r.ok for r in results] == [False, False]
    assert "over DICOM TLS" in results[0].error
    assert _held(tls_orthanc, study) == 0


def test_an_archive_name_that_does_not_match_its_certificate_is_refused(
    tls_orthanc: OrthancHandle, certs: Certificates, tmp_path: Path
) -> None:
    study = _study(tmp_path)
    dest = _mutual(tls_orthanc, certs, server_name="pacs.example.org")
    results = send_files("DICOM_NODE", dest, list(study.paths[:1]))
    assert not results[0].ok
    assert _held(tls_orthanc, study) == 0


def test_an_archive_that_wants_a_client_certificate_refuses_the_node_without_one(
    tls_orthanc: OrthancHandle, certs: Certificates, stranger: Certificates, tmp_path: Path
) -> None:
    study = _study(tmp_path)
    for client in ({}, {"certificate": stranger.client, "private_key": stranger.client_key}):
        dest = _destination(tls_orthanc, enabled=True, ca_certificates=certs.ca, **client)
        results = send_files("DICOM_NODE", dest, list(study.paths[:1]))
        assert not results[0].ok, client
    assert _held(tls_orthanc, study) == 0


def test_a_key_that_cannot_be_loaded_is_a_failure_with_the_reason(
    tls_orthanc: OrthancHandle, certs: Certificates, tmp_path: Path
) -> None:
    study = _study(tmp_path)
    broken = tmp_path / "broken.key"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    dest = _mutual(tls_orthanc, certs, private_key=broken)
    results = send_files("DICOM_NODE", dest, list(study.paths[:1]))
    assert not results[0].ok
    assert "cannot be loaded" in results[0].error
    ok, reason = echo("DICOM_NODE", dest)
    assert not ok
    assert "cannot be loaded" in reason


def test_the_client_context_always_verifies_the_archive(certs: Certificates) -> None:
    assert client_context(ClientTlsSettings()) is None
    context = client_context(ClientTlsSettings(enabled=True, ca_certificates=certs.ca))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_tls_settings_are_checked(certs: Certificates, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        ClientTlsSettings(enabled=True, certificate=certs.client)
    with pytest.raises(ValueError, match="does not exist"):
        ClientTlsSettings(enabled=True, ca_certificates=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="must be https"):
        DestinationSettings(
            name="web",
            kind="dicomweb",
            url="http://pacs/dicom-web",
            tls=ClientTlsSettings(enabled=True),
        )


@pytest.fixture(scope="module")
def web_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancHandle]:
    with run_orthanc(tmp_path_factory.mktemp("orthanc-web"), dicomweb=True) as handle:
        yield handle


def _web(port: int, **tls: Any) -> DestinationSettings:
    return DestinationSettings(
        name="web-secure",
        kind="dicomweb",
        url=f"https://localhost:{port}/dicom-web",
        timeout_s=10,
        tls=ClientTlsSettings(**tls),
    )


def test_stow_over_https_verifies_the_archive(
    web_orthanc: OrthancHandle, certs: Certificates, stranger: Certificates, tmp_path: Path
) -> None:
    study, other = _study(tmp_path), _study(tmp_path / "other")
    with https_front(web_orthanc.http_port, certs.server, certs.server_key) as port:
        trusted = _web(port, enabled=True, ca_certificates=certs.ca)
        results = send_files("DICOM_NODE", trusted, list(study.paths))
        untrusted = _web(port, enabled=True, ca_certificates=stranger.ca)
        refused = send_files("DICOM_NODE", untrusted, list(other.paths))
    assert [r.error for r in results] == [""] * 8
    assert _held(web_orthanc, study) == 8
    assert not any(r.ok for r in refused)
    assert "CERTIFICATE_VERIFY_FAILED" in refused[0].error
    assert _held(web_orthanc, other) == 0
