"""The receiver's upper layer at the protocol level, on both engines where they must agree.

A hand-written requestor (raw sockets, PDUs packed here with ``struct``, not
with the node's own codec) provokes what dcmtk and pynetdicom never send:
wrong application contexts, malformed PDUs, stray PDVs, unknown commands.
pynetdicom's SCU covers negotiation and fragmented data sets.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, _config, build_role
from pynetdicom.pdu_primitives import MaximumLengthNotification
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.scp import Receiver, ReceiverHandle
from dicom_node.settings import ScpSettings, StabilitySettings
from dicom_node.spool import Spool
from dicom_node.state import StateDB

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"

#: Starts a receiver with the given ``scp`` settings; returns its handle and spool.
Start = Callable[..., tuple[ReceiverHandle, Spool]]


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    return ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6).write(
        tmp_path_factory.mktemp("small") / "ct"
    )


def _starter(tmp_path: Path, engine: Literal["pynetdicom", "builtin"]) -> Iterator[Start]:
    running: list[tuple[ReceiverHandle, StateDB]] = []

    def _start(**scp: Any) -> tuple[ReceiverHandle, Spool]:
        spool = Spool(tmp_path / "spool")
        state = StateDB(f"sqlite:///{tmp_path / 'spool' / 'state.db'}")
        settings = ScpSettings(
            host="127.0.0.1", port=0, min_free_bytes=0, acse_timeout_s=5, engine=engine, **scp
        )
        handle = Receiver(settings, StabilitySettings(), spool, state).start()
        running.append((handle, state))
        return handle, spool

    yield _start
    for handle, state in running:
        handle.stop()
        state.close()


@pytest.fixture
def start(tmp_path: Path, scp_engine: Literal["pynetdicom", "builtin"]) -> Iterator[Start]:
    """Start receivers with the engine under test."""
    yield from _starter(tmp_path, scp_engine)


@pytest.fixture
def builtin(tmp_path: Path) -> Iterator[Start]:
    """Start receivers with the builtin engine (pynetdicom's answers to these are its own)."""
    yield from _starter(tmp_path, "builtin")


# -- a hand-written requestor


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _associate_rq(
    contexts: list[tuple[int, bytes, list[bytes]]], application_context: bytes = APPLICATION_CONTEXT
) -> bytes:
    items = _item(0x10, application_context)
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract) + b"".join(_item(0x40, ts) for ts in syntaxes)
        items += _item(0x20, bytes([context_id, 0, 0, 0]) + sub)
    items += _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    body = struct.pack(">HH", 1, 0) + b"DICOM_NODE".ljust(16) + b"RAW_SCU".ljust(16)
    body += bytes(32) + items
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return 0, b""  # closed
        header += chunk
    kind, _, length = struct.unpack(">BBI", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return kind, body


def _p_data(context_id: int, control: int, payload: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def _command(**elements: object) -> bytes:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    out = DicomBytesIO()
    out.is_implicit_VR = True
    out.is_little_endian = True
    write_dataset(out, ds)
    return out.getvalue()


def _connect(handle: ReceiverHandle) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", handle.port), timeout=10)
    return sock


def _echo_works(handle: ReceiverHandle) -> bool:
    ae = AE(ae_title="CHECK")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="DICOM_NODE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


# -- both engines


def test_too_many_associations_are_rejected_transiently(start: Start) -> None:
    handle, _ = start(max_associations=1)
    first = _connect(handle)
    first.sendall(_associate_rq([(1, Verification.encode(), [ImplicitVRLittleEndian.encode()])]))
    assert _read_pdu(first)[0] == 0x02  # A-ASSOCIATE-AC
    second = _connect(handle)
    second.sendall(_associate_rq([(1, Verification.encode(), [ImplicitVRLittleEndian.encode()])]))
    kind, body = _read_pdu(second)
    # A-ASSOCIATE-RJ: transient, service provider (presentation), local limit exceeded.
    assert (kind, body[1], body[2], body[3]) == (0x03, 2, 3, 2)
    second.close()
    first.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))  # A-RELEASE-RQ
    assert _read_pdu(first)[0] == 0x06
    first.close()
    # The slot is free again.
    deadline = time.monotonic() + 10
    while not _echo_works(handle):
        assert time.monotonic() < deadline, "the released association still counts"
        time.sleep(0.1)


def test_presentation_contexts_are_negotiated_like_unrestricted_storage(start: Start) -> None:
    handle, _ = start()
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification, [JPEGBaseline8Bit])
    ae.add_requested_context("1.2.826.0.1.3680043.10.999.1", [ImplicitVRLittleEndian])  # private
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    accepted = {
        str(cx.abstract_syntax): str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
    }
    rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
    assoc.release()
    assert accepted == {
        CTImageStorage: ExplicitVRLittleEndian,  # the first proposed
        "1.2.826.0.1.3680043.10.999.1": ImplicitVRLittleEndian,
    }
    assert rejected == {
        StudyRootQueryRetrieveInformationModelFind: 0x03,  # abstract syntax not supported
        Verification: 0x04,  # transfer syntaxes not supported
    }


def test_a_data_set_in_tiny_fragments_is_stored_byte_identical(
    start: Start, small_study: PhantomStudy
) -> None:
    handle, spool = start()
    path = small_study.paths[0]
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="TINY")
    ae.maximum_pdu_size = 0
    ae.add_requested_context(CTImageStorage, [ds.file_meta.TransferSyntaxUID])
    # Role selection proposed as SCU and SCP: the node accepts it as SCU.
    role = build_role(CTImageStorage, scu_role=True, scp_role=True)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="DICOM_NODE", ext_neg=[role])
    assert assoc.is_established
    # Send as if the node had announced a 512-byte maximum: fragments of ~500 bytes.
    for item in assoc.acceptor.user_information:
        if isinstance(item, MaximumLengthNotification):
            item.maximum_length_received = 512
    assert assoc.acceptor.maximum_length == 512
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        assoc.release()
    assert int(status.Status) == 0x0000
    stored = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    sent = path.read_bytes()
    sent_offset = 132 + 12 + struct.unpack("<I", sent[140:144])[0]
    stored_bytes = stored.read_bytes()
    stored_offset = 132 + 12 + struct.unpack("<I", stored_bytes[140:144])[0]
    assert stored_bytes[stored_offset:] == sent[sent_offset:]


def test_an_idle_association_is_aborted(start: Start) -> None:
    handle, _ = start(network_timeout_s=1)
    ae = AE(ae_title="IDLE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    deadline = time.monotonic() + 15
    # pynetdicom's thread clears is_established; mypy keeps the assert's narrowing to True.
    while assoc.is_established and time.monotonic() < deadline:  # type: ignore[redundant-expr]
        time.sleep(0.1)
    assert assoc.is_aborted


def test_garbage_gets_no_answer_but_an_abort_and_the_receiver_keeps_serving(start: Start) -> None:
    handle, _ = start()
    sock = _connect(handle)
    sock.sendall(b"\x01\x00\x00\x00\x00\x05hello")  # an A-ASSOCIATE-RQ of five bytes
    kind, _ = _read_pdu(sock)
    assert kind in (0x07, 0)  # A-ABORT, or the connection closed
    sock.close()
    assert _echo_works(handle)


# -- the builtin engine's own answers


def test_a_wrong_application_context_is_rejected(builtin: Start) -> None:
    handle, _ = builtin()
    sock = _connect(handle)
    contexts = [(1, Verification.encode(), [ImplicitVRLittleEndian.encode()])]
    sock.sendall(_associate_rq(contexts, application_context=b"1.2.3.4"))
    kind, body = _read_pdu(sock)
    # Permanent, service user, application context name not supported.
    assert (kind, body[1], body[2], body[3]) == (0x03, 1, 1, 2)


def test_malformed_pdus_are_aborted(builtin: Start) -> None:
    handle, _ = builtin()
    sock = _connect(handle)
    sock.sendall(b"\x01\x00\x00\x00\x00\x05hello")
    kind, body = _read_pdu(sock)
    assert kind == 0x07
    assert body[2] == 2  # source: service provider


def test_unknown_commands_get_0x0211_and_stray_pdvs_an_abort(builtin: Start) -> None:
    handle, _ = builtin()
    sock = _connect(handle)
    sock.sendall(_associate_rq([(1, CTImageStorage.encode(), [ImplicitVRLittleEndian.encode()])]))
    assert _read_pdu(sock)[0] == 0x02
    find = _command(
        AffectedSOPClassUID=CTImageStorage, CommandField=0x0020, MessageID=7, Priority=0,
        CommandDataSetType=0x0101,
    )  # fmt: skip
    sock.sendall(_p_data(1, 0x03, find))
    kind, body = _read_pdu(sock)
    assert kind == 0x04
    response = pydicom.dataset.Dataset()
    with BytesIO(body[6:]) as stream:
        response = pydicom.filereader.read_dataset(stream, True, True)
    assert response.Status == 0x0211
    assert response.MessageIDBeingRespondedTo == 7
    assert response.CommandField == 0x8020
    sock.sendall(_p_data(3, 0x03, find))  # context 3 was never proposed
    assert _read_pdu(sock)[0] == 0x07
    sock.close()
    assert _echo_works(handle)  # the receiver still serves
