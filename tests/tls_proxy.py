"""An HTTPS front for a plain HTTP service, for tests.

Debian's Orthanc 1.10 serves HTTPS through civetweb, which crashes with
OpenSSL 3 on the first request; this puts TLS in front of its plain port
instead, the way a site would with nginx. One request per connection
(``urllib`` sends ``Connection: close``), handled in order: read the request,
forward it, relay the response until the upstream closes.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["https_front"]


def _read_request(conn: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _relay(client: socket.socket, context: ssl.SSLContext, upstream_port: int) -> None:
    with (
        contextlib.suppress(OSError),
        client,
        context.wrap_socket(client, server_side=True) as tls,
    ):
        request = _read_request(tls)
        with socket.create_connection(("127.0.0.1", upstream_port), timeout=30) as upstream:
            upstream.sendall(request)
            while chunk := upstream.recv(65536):
                tls.sendall(chunk)


@contextlib.contextmanager
def https_front(upstream_port: int, certificate: Path, private_key: Path) -> Iterator[int]:
    """Serve HTTPS on a free loopback port, relaying to ``upstream_port``; yield the port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate), str(private_key))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            threading.Thread(
                target=_relay, args=(client, context, upstream_port), daemon=True
            ).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
