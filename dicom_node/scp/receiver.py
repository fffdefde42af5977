"""The Application Entity that receives studies: configuration, start and stop."""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.scp.handlers import (
    handle_aborted,
    handle_accepted,
    handle_closed,
    handle_echo,
    handle_released,
    handle_requested,
    handle_store,
)
from dicom_node.scp.storage import StoreContext
from dicom_node.scp.upper_layer import UpperLayerServer
from dicom_node.settings import ScpSettings, StabilitySettings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.tls import server_context

__all__ = ["Receiver", "ReceiverHandle"]

logger = logging.getLogger(__name__)

# Identifiers in pynetdicom's own logs can carry PHI (DESIGN.md promise 5).
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# Accept every storage SOP class, public or private, with the first transfer
# syntax the sender proposes: bytes are stored as received, never re-encoded.
# Refusals by SOP class policy are answered per instance with 0x0122.
_config.UNRESTRICTED_STORAGE_SERVICE = True


class _ReusePortServer(ThreadedAssociationServer):
    """An association server that shares its port with other processes (SO_REUSEPORT).

    pynetdicom's ``server_bind`` replaces socketserver's, which is the only place
    that reads ``allow_reuse_port``; so the option is set here, before the bind.
    """

    def server_bind(self) -> None:
        """Set SO_REUSEPORT, then bind as pynetdicom does."""
        if self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


@dataclass(frozen=True, slots=True)
class ReceiverHandle:
    """A running receiver."""

    server: ThreadedAssociationServer | UpperLayerServer
    host: str
    port: int

    def stop(self) -> None:
        """Stop accepting, abort open associations and close the socket."""
        self.server.shutdown()


class Receiver:
    """The node's C-ECHO / C-STORE SCP.

    Parameters
    ----------
    settings : ScpSettings
        AE title, address, timeouts, association limit, free-space watermark.
    stability : StabilitySettings
        Per-source policies (completion on release).
    spool : Spool
        Where instances are written.
    state : StateDB
        Where their rows are committed.
    """

    def __init__(
        self, settings: ScpSettings, stability: StabilitySettings, spool: Spool, state: StateDB
    ) -> None:
        self.settings = settings
        self.context = StoreContext(
            spool=spool,
            state=state,
            stability=stability,
            called_ae=settings.ae_title,
            accepted_sop_classes=frozenset(settings.accepted_sop_classes) or None,
            allowed_callers=list(settings.allowed_callers) if settings.allow_list_enabled else None,
        )
        ae = AE(ae_title=settings.ae_title)
        ae.maximum_associations = settings.max_associations
        ae.acse_timeout = settings.acse_timeout_s
        ae.dimse_timeout = settings.dimse_timeout_s
        ae.network_timeout = settings.network_timeout_s
        ae.maximum_pdu_size = 0  # no limit: fewer, larger P-DATA PDUs
        ae.add_supported_context(Verification)
        self.ae = ae

    def start(self, *, reuse_port: bool = False) -> ReceiverHandle:
        """Start listening in background threads.

        Parameters
        ----------
        reuse_port : bool
            Bind with SO_REUSEPORT so several receiver processes share the port
            and the kernel spreads incoming associations over them.

        Returns
        -------
        ReceiverHandle
            With the bound port (useful when the configured port is 0).
        """
        ctx = self.context
        tls = server_context(self.settings.tls)
        server: ThreadedAssociationServer | UpperLayerServer
        if self.settings.engine == "builtin":
            server = UpperLayerServer(self.settings, ctx, tls, reuse_port=reuse_port)
        else:
            handlers: list[Any] = [
                (evt.EVT_REQUESTED, handle_requested, [ctx]),
                (evt.EVT_C_ECHO, handle_echo),
                (evt.EVT_C_STORE, handle_store, [ctx]),
                (evt.EVT_ACCEPTED, handle_accepted, [ctx]),
                (evt.EVT_RELEASED, handle_released, [ctx]),
                (evt.EVT_ABORTED, handle_aborted, [ctx]),
                (evt.EVT_CONN_CLOSE, handle_closed, [ctx]),
            ]
            # SO_REUSEPORT only when asked: a second node started by mistake must fail
            # to bind instead of silently taking half the traffic.
            server = self.ae.make_server(
                (self.settings.host, self.settings.port),
                evt_handlers=handlers,
                ssl_context=tls,
                server_class=_ReusePortServer if reuse_port else ThreadedAssociationServer,
            )
            # As AE.start_server does: the server's shutdown() removes itself from this list.
            self.ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="scp-acceptor", daemon=True).start()
        host, port = server.server_address[:2]
        logger.info(
            "receiving as %s on %s:%d (%s)",
            self.settings.ae_title,
            host,
            port,
            self.settings.engine,
        )
        return ReceiverHandle(server=server, host=str(host), port=int(port))
