"""Serve the OHIF viewer (``@ohif/app``'s built ``dist/``) in front of a test Orthanc.

One origin serves both, as a hospital's reverse proxy would: the app's files,
an ``app-config.js`` whose DICOMweb data source is ``/dicom-web`` on the same
origin, and ``/dicom-web/...`` proxied to Orthanc's DICOMweb plugin (the
original Host header is passed on, so the URLs Orthanc writes into its answers
point back here). Any other path without a file is the single-page app's
``index.html``.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.node_process import REPO

__all__ = ["OHIF_DIST", "OhifServer", "serve_ohif"]

#: Where ``make install`` unpacks the app (``npm pack @ohif/app``).
OHIF_DIST = REPO / ".ohif" / "package" / "dist"

_CONFIG = """window.config = {
  name: 'dicom-node viewer test',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'test Orthanc',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""


@dataclass(frozen=True)
class OhifServer:
    """The running viewer."""

    url: str


@contextmanager
def serve_ohif(orthanc_http_port: int) -> Iterator[OhifServer]:
    """Serve OHIF on a free loopback port, its DICOMweb proxied to Orthanc.

    Raises
    ------
    FileNotFoundError
        If the app is not unpacked (run ``make install``).
    """
    if not (OHIF_DIST / "index.html").is_file():
        raise FileNotFoundError(f"{OHIF_DIST} has no OHIF build: run make install")

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(OHIF_DIST), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Quiet: the browser asks for hundreds of files."""

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]
            if path.startswith("/dicom-web"):
                self._proxy()
            elif path == "/app-config.js":
                self._send(_CONFIG.encode(), "application/javascript")
            elif (OHIF_DIST / path.lstrip("/")).is_file():
                super().do_GET()
            else:
                self._send((OHIF_DIST / "index.html").read_bytes(), "text/html")

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _proxy(self) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", orthanc_http_port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            connection.request("GET", self.path, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in {"transfer-encoding", "connection", "content-length"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            connection.close()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="ohif", daemon=True)
    thread.start()
    try:
        yield OhifServer(url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
