"""The node's own DICOM upper layer for the receiver (``scp.engine: builtin``).

pynetdicom's acceptor hands every P-DATA-TF PDU through an event queue, a state
machine and two polling threads, in Python; for a 300-slice CT that costs
about as much as keeping the instances durable. A Verification and Storage
SCP needs far less of the upper layer, so this module speaks just that part
(PS3.8 9), in one thread per association with blocking sockets:

1. optional TLS handshake (the same context as pynetdicom's engine);
2. A-ASSOCIATE-RQ, answered with A-ASSOCIATE-RJ (wrong application context,
   too many associations, a caller the allow-list refuses) or A-ASSOCIATE-AC
   (presentation contexts negotiated as pynetdicom's *unrestricted storage
   service* does: any storage-like abstract syntax with the first transfer
   syntax proposed; Verification in pynetdicom's four default transfer syntaxes);
3. P-DATA-TF: C-ECHO-RQ and C-STORE-RQ messages, each answered after
   :func:`dicom_node.scp.storage.store_instance` returns, so success still
   comes only after fsync and commit; any other command gets 0x0211;
4. A-RELEASE-RQ → A-RELEASE-RP; A-ABORT, a malformed or unexpected PDU,
   or the idle timeout → A-ABORT and close.

The data set of a C-STORE is kept as the fragments received and joined once,
so the bytes stored are exactly the bytes sent.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import struct
import threading
from io import BytesIO

from pydicom.uid import UID
from pynetdicom import DEFAULT_TRANSFER_SYNTAXES, sop_class
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.scp.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from dicom_node.scp.pdu import (
    APPLICATION_CONTEXT,
    AssociateRequest,
    PduError,
    PduType,
    abort,
    associate_ac,
    associate_rj,
    decode_associate_rq,
    decode_command,
    encode_command,
    p_data_tf,
    pdv_items,
    release_rp,
)
from dicom_node.scp.storage import (
    AssociationStats,
    StoreContext,
    StoreRequest,
    association_released,
    caller_allowed,
    close_association,
    open_association,
    store_instance,
)
from dicom_node.settings import ScpSettings

__all__ = ["MAX_PDU_LENGTH", "UpperLayerServer"]

logger = logging.getLogger(__name__)

#: Maximum Length Received that the node announces, and the largest PDU it reads.
MAX_PDU_LENGTH = 4 * 1024 * 1024
#: An A-ASSOCIATE-RQ larger than this is not a real one.
_MAX_ASSOCIATE_RQ = 64 * 1024
# Verification in pynetdicom's default transfer syntaxes, as its engine accepts it.
_VERIFICATION = str(Verification)
_VERIFICATION_SYNTAXES = tuple(str(ts) for ts in DEFAULT_TRANSFER_SYNTAXES)

# DIMSE (PS3.7 E.1): element numbers in group 0000 and command fields.
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_RESPONDED = 0x0120
_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_AFFECTED_SOP_INSTANCE = 0x1000
_NO_DATA_SET = 0x0101
_C_STORE_RQ = 0x0001
_C_ECHO_RQ = 0x0030
_C_CANCEL_RQ = 0x0FFF
_UNRECOGNIZED_OPERATION = 0x0211

# A-ABORT and A-ASSOCIATE-RJ codes (PS3.8 9.3.4, 9.3.8).
_PROVIDER = 2
_UNEXPECTED_PDU = 2
_INVALID_PARAMETER = 6


def _storage_like(uid: str) -> bool:
    """Whether pynetdicom's unrestricted storage service would accept this abstract syntax."""
    value = UID(uid)
    return (
        value.is_private
        or sop_class.uid_to_service_class(value) is StorageServiceClass
        or not hasattr(sop_class, value.keyword)
    )


def _negotiate(request: AssociateRequest) -> tuple[list[tuple[int, int, str]], dict[int, UID]]:
    """Presentation context results for the A-ASSOCIATE-AC, and the accepted ones."""
    results: list[tuple[int, int, str]] = []
    accepted: dict[int, UID] = {}
    for context in request.contexts:
        proposed = context.transfer_syntaxes
        if not context.abstract_syntax:
            result, syntax = 3, proposed[0] if proposed else _VERIFICATION_SYNTAXES[0]
        elif context.abstract_syntax == _VERIFICATION:
            usable = [ts for ts in proposed if ts in _VERIFICATION_SYNTAXES]
            result, syntax = (0, usable[0]) if usable else (4, _VERIFICATION_SYNTAXES[0])
        elif not _storage_like(context.abstract_syntax):
            result, syntax = 3, proposed[0] if proposed else _VERIFICATION_SYNTAXES[0]
        elif not proposed:
            result, syntax = 4, _VERIFICATION_SYNTAXES[0]
        else:
            # Stored as received: the first proposed transfer syntax, whatever it is.
            result, syntax = 0, proposed[0]
        results.append((context.context_id, result, syntax))
        if result == 0:
            accepted[context.context_id] = UID(syntax)
    return results, accepted


class _Closed(Exception):
    """The association is over; nothing more is to be sent."""


class _Association:
    """One association, from the first byte to the closed socket."""

    def __init__(self, server: UpperLayerServer, sock: socket.socket, address: str) -> None:
        self.server = server
        self.sock = sock
        self.address = address
        self.settings = server.settings
        self.ctx = server.ctx
        self.stats: AssociationStats | None = None
        self.peer_max = 0
        self.accepted: dict[int, UID] = {}
        self.admitted = False

    # -- reading and writing PDUs

    def _read_exact(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise _Closed
            got += n
        return buffer

    def _read_pdu(self, limit: int) -> tuple[int, bytearray]:
        kind, _, length = struct.unpack(">BBI", self._read_exact(6))
        if length > limit:
            self._abort(_INVALID_PARAMETER)
            raise _Closed
        return kind, self._read_exact(length)

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _abort(self, reason: int) -> None:
        with contextlib.suppress(OSError):
            self._send(abort(_PROVIDER, reason))
        if self.stats is not None:
            self.stats.outcome = "aborted"

    # -- the association

    def run(self) -> None:
        """Serve the association; never raises."""
        key = id(self)
        try:
            self.sock.settimeout(self.settings.acse_timeout_s)
            if not self._associate(key):
                return
            self.sock.settimeout(self.settings.network_timeout_s)
            self._serve()
        except _Closed:
            if self.stats is not None and self.stats.outcome == "open":
                self.stats.outcome = "aborted"
        except TimeoutError:
            logger.warning("association from %s timed out; aborting", self.address)
            self._abort(0)
        except PduError as exc:
            logger.warning("malformed PDU from %s (%s); aborting", self.address, exc)
            self._abort(_INVALID_PARAMETER)
        except OSError as exc:
            logger.warning("connection from %s failed: %s", self.address, exc)
            if self.stats is not None:
                self.stats.outcome = "aborted"
        except Exception:
            logger.exception("unexpected error in the association from %s", self.address)
            self._abort(0)
        finally:
            if self.stats is not None:
                close_association(self.ctx, key)
            if self.admitted:
                self.server.release()

    def _associate(self, key: int) -> bool:
        kind, body = self._read_pdu(_MAX_ASSOCIATE_RQ)
        if kind != PduType.ASSOCIATE_RQ:
            self._abort(_UNEXPECTED_PDU)
            return False
        request = decode_associate_rq(bytes(body))
        if request.application_context != APPLICATION_CONTEXT:
            self._send(associate_rj(1, 1, 2))  # application context name not supported
            return False
        self.admitted = self.server.admit()
        if not self.admitted:
            logger.warning("association from %s refused: too many associations", self.address)
            self._send(associate_rj(2, 3, 2))  # transient, provider (presentation), limit
            return False
        if not caller_allowed(self.ctx, request.calling_ae, self.address):
            self._send(associate_rj(1, 1, 3))  # calling AE title not recognized
            return False
        results, self.accepted = _negotiate(request)
        self.peer_max = request.max_pdu_length
        self._send(
            associate_ac(
                request,
                results,
                max_pdu_length=MAX_PDU_LENGTH,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION,
            )
        )
        self.stats = open_association(self.ctx, key, request.calling_ae, self.address)
        return True

    def _serve(self) -> None:
        command: list[bytes] = []
        data: list[memoryview] = []
        elements: dict[int, bytes] | None = None
        message_context = 0
        while True:
            kind, body = self._read_pdu(MAX_PDU_LENGTH)
            if kind == PduType.RELEASE_RQ:
                self._send(release_rp())
                if self.stats is not None:
                    association_released(self.ctx, self.stats)
                return
            if kind == PduType.ABORT:
                raise _Closed
            if kind != PduType.P_DATA_TF:
                self._abort(_UNEXPECTED_PDU)
                return
            for context_id, control, fragment in pdv_items(memoryview(body)):
                if context_id not in self.accepted or (
                    elements is not None and context_id != message_context
                ):
                    self._abort(_INVALID_PARAMETER)
                    return
                if control & 0x01:  # a command fragment
                    if elements is not None:
                        self._abort(_UNEXPECTED_PDU)
                        return
                    command.append(bytes(fragment))
                    if not control & 0x02:
                        continue
                    elements = decode_command(b"".join(command))
                    message_context = context_id
                    command = []
                    if _us(elements, _DATA_SET_TYPE) != _NO_DATA_SET:
                        continue  # the data set follows
                elif elements is None:
                    self._abort(_UNEXPECTED_PDU)  # a data set without its command
                    return
                else:
                    data.append(fragment)
                    if not control & 0x02:
                        continue
                self._dispatch(message_context, elements, data)
                elements, data = None, []

    def _dispatch(
        self, context_id: int, elements: dict[int, bytes], data: list[memoryview]
    ) -> None:
        field = _us(elements, _COMMAND_FIELD)
        sop_class_uid = _ui(elements, _AFFECTED_SOP_CLASS)
        identity: list[tuple[int, str]] = []
        if field == _C_ECHO_RQ:
            status = 0x0000
            identity = [(_AFFECTED_SOP_CLASS, sop_class_uid or _VERIFICATION)]
        elif field == _C_STORE_RQ:
            sop_instance_uid = _ui(elements, _AFFECTED_SOP_INSTANCE)
            request = StoreRequest(
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                transfer_syntax=self.accepted[context_id],
                stream=_joined(data) if data else None,
            )
            status = store_instance(self.ctx, request, self.stats)
            identity = [
                (_AFFECTED_SOP_CLASS, sop_class_uid),
                (_AFFECTED_SOP_INSTANCE, sop_instance_uid),
            ]
        elif field == _C_CANCEL_RQ:
            return  # nothing is ever pending: there is nothing to cancel
        else:
            status = _UNRECOGNIZED_OPERATION
            if sop_class_uid:
                identity = [(_AFFECTED_SOP_CLASS, sop_class_uid)]
        response: list[tuple[int, str | int]] = [
            *identity,
            (_COMMAND_FIELD, (field | 0x8000) & 0xFFFF),
            (_MESSAGE_ID_RESPONDED, max(_us(elements, _MESSAGE_ID), 0)),
            (_DATA_SET_TYPE, _NO_DATA_SET),
            (_STATUS, status),
        ]
        response.sort(key=lambda element: element[0])
        for pdu in p_data_tf(context_id, 0x01, encode_command(response), self.peer_max):
            self._send(pdu)


def _joined(fragments: list[memoryview]) -> BytesIO:
    """The data set as one stream, copied once (a BytesIO made from bytes would be
    copied again when the spool asks for its buffer)."""
    stream = BytesIO()
    for fragment in fragments:
        stream.write(fragment)
    return stream


def _us(elements: dict[int, bytes], element: int) -> int:
    raw = elements.get(element, b"")
    return int(struct.unpack("<H", raw[:2])[0]) if len(raw) >= 2 else -1


def _ui(elements: dict[int, bytes], element: int) -> str:
    return elements.get(element, b"").decode("ascii", "replace").rstrip("\x00 ")


class _Handler(socketserver.BaseRequestHandler):
    server: UpperLayerServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        address = str(self.client_address[0])
        if self.server.ssl_context is not None:
            sock.settimeout(self.server.settings.acse_timeout_s)
            try:
                sock = self.server.ssl_context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                logger.warning("TLS handshake with %s failed: %s", address, exc)
                return
        self.server.track(sock, True)
        try:
            _Association(self.server, sock, address).run()
        finally:
            self.server.track(sock, False)


class UpperLayerServer(socketserver.ThreadingTCPServer):
    """Listens for associations; one thread each.

    Parameters
    ----------
    settings : ScpSettings
        Address, timeouts and the association limit.
    ctx : StoreContext
        What the associations store into.
    ssl_context : ssl.SSLContext or None
        DICOM TLS, when on.
    reuse_port : bool
        Bind with SO_REUSEPORT so that several receiver processes share the port.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        settings: ScpSettings,
        ctx: StoreContext,
        ssl_context: ssl.SSLContext | None,
        *,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        self.ctx = ctx
        self.ssl_context = ssl_context
        self.reuse_port = reuse_port
        self._lock = threading.Lock()
        self._admitted = 0
        self._open: set[socket.socket] = set()
        super().__init__((settings.host, settings.port), _Handler)

    def server_bind(self) -> None:
        """Set SO_REUSEPORT when asked, then bind."""
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def admit(self) -> bool:
        """Count an association in, unless ``max_associations`` are already open."""
        with self._lock:
            if self._admitted >= self.settings.max_associations:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        """Count an admitted association out."""
        with self._lock:
            self._admitted -= 1

    def track(self, sock: socket.socket, opened: bool) -> None:
        """Remember open connections, so that :meth:`shutdown` can close them."""
        with self._lock:
            if opened:
                self._open.add(sock)
            else:
                self._open.discard(sock)

    def shutdown(self) -> None:
        """Stop accepting, close every open connection and the listening socket."""
        super().shutdown()
        with self._lock:
            connections = list(self._open)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()
