"""DICOM upper layer PDUs (PS3.8 9.3) and DIMSE command sets (PS3.7 E), for an acceptor.

Only what a Verification and Storage SCP reads and writes: A-ASSOCIATE-RQ is
decoded; A-ASSOCIATE-AC/RJ, P-DATA-TF, A-RELEASE-RP and A-ABORT are encoded;
command sets are Implicit VR Little Endian group 0000 elements. Everything is
big-endian on the wire except the command set (PS3.8 9.3.1, PS3.7 6.3.1).
Malformed input raises :class:`PduError`, which the caller answers with
A-ABORT.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "APPLICATION_CONTEXT",
    "AssociateRequest",
    "PduError",
    "PduType",
    "PresentationContext",
    "abort",
    "associate_ac",
    "associate_rj",
    "decode_associate_rq",
    "decode_command",
    "encode_command",
    "p_data_tf",
    "pdv_items",
    "release_rp",
]

#: The DICOM Application Context Name (PS3.7 A.2.1).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


class PduType:
    """PDU type codes (PS3.8 9.3.1)."""

    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class PduError(ValueError):
    """A PDU or command set that cannot be decoded."""


@dataclass(frozen=True, slots=True)
class PresentationContext:
    """A proposed presentation context (PS3.8 9.3.2.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(slots=True)
class AssociateRequest:
    """What an A-ASSOCIATE-RQ says (PS3.8 9.3.2)."""

    called_ae: str
    calling_ae: str
    application_context: str = ""
    contexts: list[PresentationContext] = field(default_factory=list)
    #: The requestor's Maximum Length Received (0: unlimited).
    max_pdu_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    async_ops_proposed: bool = False
    #: SCP/SCU Role Selection items: abstract syntax to (SCU role, SCP role).
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ")


def _items(body: bytes | memoryview, offset: int) -> list[tuple[int, bytes]]:
    """Split variable items (type, reserved, 2-byte length, value) from ``offset`` on."""
    items: list[tuple[int, bytes]] = []
    view = memoryview(body)
    while offset < len(view):
        if offset + 4 > len(view):
            raise PduError("truncated item header")
        kind = view[offset]
        (length,) = struct.unpack_from(">H", view, offset + 2)
        start = offset + 4
        if start + length > len(view):
            raise PduError(f"item 0x{kind:02X} runs past the end of its PDU")
        items.append((kind, bytes(view[start : start + length])))
        offset = start + length
    return items


def decode_associate_rq(body: bytes) -> AssociateRequest:
    """Decode the body of an A-ASSOCIATE-RQ PDU (after its 6-byte header).

    Raises
    ------
    PduError
        If the PDU is truncated or an item is malformed.
    """
    if len(body) < 68:
        raise PduError("A-ASSOCIATE-RQ shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    if not version & 0x0001:
        raise PduError("protocol version 1 is not offered")
    request = AssociateRequest(
        called_ae=body[4:20].decode("ascii", "replace").strip(),
        calling_ae=body[20:36].decode("ascii", "replace").strip(),
    )
    for kind, value in _items(body, 68):
        if kind == 0x10:
            request.application_context = _uid(value)
        elif kind == 0x20:
            request.contexts.append(_presentation_context(value))
        elif kind == 0x50:
            _user_information(value, request)
        # Unknown item types are ignored (PS3.8 9.3.1: "shall be ignored").
    return request


def _presentation_context(value: bytes) -> PresentationContext:
    if len(value) < 4:
        raise PduError("presentation context item too short")
    abstract = ""
    transfers: list[str] = []
    for kind, sub in _items(value, 4):
        if kind == 0x30:
            abstract = _uid(sub)
        elif kind == 0x40:
            transfers.append(_uid(sub))
    return PresentationContext(value[0], abstract, tuple(transfers))


def _user_information(value: bytes, request: AssociateRequest) -> None:
    for kind, sub in _items(value, 0):
        if kind == 0x51 and len(sub) == 4:
            (request.max_pdu_length,) = struct.unpack(">I", sub)
        elif kind == 0x52:
            request.implementation_class_uid = _uid(sub)
        elif kind == 0x53:
            request.async_ops_proposed = True
        elif kind == 0x54 and len(sub) >= 2:
            (uid_length,) = struct.unpack_from(">H", sub, 0)
            if len(sub) < 2 + uid_length + 2:
                raise PduError("role selection item too short")
            uid = _uid(sub[2 : 2 + uid_length])
            request.roles[uid] = (sub[2 + uid_length], sub[3 + uid_length])
        elif kind == 0x55:
            request.implementation_version_name = sub.decode("ascii", "replace").strip()


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def associate_ac(
    request: AssociateRequest,
    results: list[tuple[int, int, str]],
    *,
    max_pdu_length: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """Encode an A-ASSOCIATE-AC (PS3.8 9.3.3).

    Parameters
    ----------
    request : AssociateRequest
        The request being answered (AE titles, role and asynchronous-operations
        proposals are echoed as PS3.7 D.3.3 asks).
    results : list[tuple[int, int, str]]
        Per proposed context: its ID, the result (0 acceptance, 1 user rejection,
        3 abstract syntax not supported, 4 transfer syntaxes not supported) and
        the accepted transfer syntax (any proposed one when refused; not
        significant then).
    max_pdu_length : int
        The largest P-DATA-TF PDU this side receives.
    implementation_class_uid, implementation_version_name : str
        This implementation's identity.
    """
    items = [_item(0x10, APPLICATION_CONTEXT.encode("ascii"))]
    for context_id, result, transfer_syntax in results:
        value = struct.pack(">BBBB", context_id, 0, result, 0)
        value += _item(0x40, transfer_syntax.encode("ascii"))
        items.append(_item(0x21, value))
    user = [_item(0x51, struct.pack(">I", max_pdu_length))]
    user.append(_item(0x52, implementation_class_uid.encode("ascii")))
    if request.async_ops_proposed:
        # Asynchronous operations are not supported: one outstanding operation each way.
        user.append(_item(0x53, struct.pack(">HH", 1, 1)))
    accepted = {c.abstract_syntax for c in request.contexts}
    for uid, (scu_role, _scp_role) in request.roles.items():
        if uid in accepted:
            # The requestor may be SCU as it proposes; it is never our SCP.
            raw = uid.encode("ascii")
            user.append(_item(0x54, struct.pack(">H", len(raw)) + raw + bytes([scu_role, 0])))
    user.append(_item(0x55, implementation_version_name.encode("ascii")[:16]))
    items.append(_item(0x50, b"".join(user)))
    fixed = struct.pack(">HH", 1, 0) + _ae(request.called_ae) + _ae(request.calling_ae)
    return _pdu(PduType.ASSOCIATE_AC, fixed + bytes(32) + b"".join(items))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """Encode an A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return _pdu(PduType.ASSOCIATE_RJ, bytes([0, result, source, reason]))


def release_rp() -> bytes:
    """Encode an A-RELEASE-RP (PS3.8 9.3.7)."""
    return _pdu(PduType.RELEASE_RP, bytes(4))


def abort(source: int, reason: int) -> bytes:
    """Encode an A-ABORT (PS3.8 9.3.8): source 0 service user, 2 service provider."""
    return _pdu(PduType.ABORT, bytes([0, 0, source, reason]))


def pdv_items(body: memoryview) -> list[tuple[int, int, memoryview]]:
    """Split a P-DATA-TF body into (context ID, message control header, fragment).

    Raises
    ------
    PduError
        If a PDV item is truncated or shorter than its two header bytes.
    """
    items = []
    offset = 0
    while offset < len(body):
        if offset + 6 > len(body):
            raise PduError("truncated PDV item")
        (length,) = struct.unpack_from(">I", body, offset)
        if length < 2 or offset + 4 + length > len(body):
            raise PduError("PDV item length out of range")
        start = offset + 4
        items.append((body[start], body[start + 1], body[start + 2 : start + length]))
        offset = start + length
    return items


def p_data_tf(context_id: int, control: int, payload: bytes, max_pdu_length: int) -> list[bytes]:
    """Encode a message as P-DATA-TF PDUs that respect the peer's maximum length.

    Parameters
    ----------
    context_id : int
        Presentation context ID.
    control : int
        Message control header without the "last fragment" bit (1: command).
    payload : bytes
        The whole command set or data set.
    max_pdu_length : int
        The peer's Maximum Length Received (0: unlimited).
    """
    # Each PDU carries one PDV: 4 bytes of item length, context ID, control header.
    room = max_pdu_length - 6 if max_pdu_length else len(payload) or 1
    room = max(room, 1)
    pdus = []
    for start in range(0, max(len(payload), 1), room):
        fragment = payload[start : start + room]
        last = start + room >= len(payload)
        header = struct.pack(">IBB", len(fragment) + 2, context_id, control | (2 if last else 0))
        pdus.append(_pdu(PduType.P_DATA_TF, header + fragment))
    return pdus


def decode_command(raw: bytes) -> dict[int, bytes]:
    """Decode a command set (Implicit VR Little Endian, group 0000) into tag → value bytes.

    Raises
    ------
    PduError
        If an element runs past the end or is not in group 0000.
    """
    elements: dict[int, bytes] = {}
    offset = 0
    while offset < len(raw):
        if offset + 8 > len(raw):
            raise PduError("truncated command element")
        group, element, length = struct.unpack_from("<HHI", raw, offset)
        if group != 0x0000:
            raise PduError("command set element outside group 0000")
        start = offset + 8
        if start + length > len(raw):
            raise PduError("command element runs past the end of the command set")
        elements[element] = raw[start : start + length]
        offset = start + length
    return elements


def encode_command(elements: list[tuple[int, str | int]]) -> bytes:
    """Encode a command set: UIDs (str) as UI, numbers (int) as US; group length first.

    Parameters
    ----------
    elements : list[tuple[int, str | int]]
        (element number in group 0000, value), in ascending element order.
    """
    body = b""
    for element, value in elements:
        if isinstance(value, str):
            raw = value.encode("ascii")
            raw += b"\x00" if len(raw) % 2 else b""
        else:
            raw = struct.pack("<H", value)
        body += struct.pack("<HHI", 0x0000, element, len(raw)) + raw
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body
