"""TLS contexts for DICOM TLS (PS3.15 B.1 / BCP 195): the receiver's, and the export's."""

from __future__ import annotations

import ssl

from dicom_node.settings import ClientTlsSettings, TlsSettings

__all__ = ["client_context", "server_context"]


def server_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """Build the server-side TLS context, or None when TLS is off.

    Parameters
    ----------
    settings : TlsSettings
        Certificate, key, optional client CA and whether client certificates
        are required.

    Returns
    -------
    ssl.SSLContext or None
        TLS 1.2 or newer (BCP 195), with the server's certificate loaded.

    Raises
    ------
    ssl.SSLError
        If the certificate or key cannot be loaded.
    """
    if not settings.enabled:
        return None
    if settings.certificate is None or settings.private_key is None:
        raise ValueError("tls.certificate and tls.private_key are required when TLS is on")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.certificate), str(settings.private_key))
    if settings.ca_certificates is not None:
        context.load_verify_locations(cafile=str(settings.ca_certificates))
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context


def client_context(settings: ClientTlsSettings) -> ssl.SSLContext | None:
    """Build the context the export connects to an archive with, or None when TLS is off.

    The archive's certificate is always verified, and its name checked: against
    ``ca_certificates`` when given, else the system's CAs. A node that sends
    patient images must not fall back to an unverified connection.

    Parameters
    ----------
    settings : ClientTlsSettings
        CA bundle, optional client certificate and key.

    Returns
    -------
    ssl.SSLContext or None
        TLS 1.2 or newer (BCP 195), certificate and host name verified.

    Raises
    ------
    ssl.SSLError
        If a certificate, key or CA bundle cannot be loaded.
    """
    if not settings.enabled:
        return None
    cafile = str(settings.ca_certificates) if settings.ca_certificates is not None else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.certificate is not None and settings.private_key is not None:
        context.load_cert_chain(str(settings.certificate), str(settings.private_key))
    return context
