"""Every refusal the receiver makes, provoked over a real association."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from sqlalchemy import select

from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.scp import Receiver, ReceiverHandle, StoreStatus
from dicom_node.settings import ScpSettings, StabilitySettings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.schema import Association, Instance, Study
from tests.certificates import make_certificates
from tests.node_process import storescu


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    return ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6).write(
        tmp_path_factory.mktemp("small") / "ct"
    )


class _Receivers(list[tuple[ReceiverHandle, Spool, StateDB]]):
    """Receivers started by one test, all with the engine under test."""

    def __init__(self, engine: Literal["pynetdicom", "builtin"]) -> None:
        super().__init__()
        self.engine = engine

    def start(self, tmp_path: Path, **scp: Any) -> tuple[ReceiverHandle, Spool, StateDB]:
        spool = Spool(tmp_path / "spool", int(scp.pop("min_free_bytes", 0)))
        state = StateDB(f"sqlite:///{tmp_path / 'spool' / 'state.db'}")
        settings = ScpSettings(
            host="127.0.0.1", port=0, acse_timeout_s=5, engine=self.engine, **scp
        )
        started = (Receiver(settings, StabilitySettings(), spool, state).start(), spool, state)
        self.append(started)
        return started


@pytest.fixture
def started(scp_engine: Literal["pynetdicom", "builtin"]) -> Iterator[_Receivers]:
    running = _Receivers(scp_engine)
    yield running
    for handle, _, state in running:
        handle.stop()
        state.close()


def _send_with_pynetdicom(port: int, path: Path) -> int:
    """Send a file as stored, with the request UIDs taken from its file meta."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="CRAFTED")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    assert assoc.is_established
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # stream the file: request UIDs from its meta
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        assoc.release()
    return int(status.Status)


def _rows(state: StateDB) -> list[Instance]:
    with state.session() as s:
        return list(s.scalars(select(Instance)).all())


def test_sop_instance_mismatch_is_0xA900(
    started: _Receivers, small_study: PhantomStudy, tmp_path: Path
) -> None:
    started.start(tmp_path)
    handle, spool, state = started[0]
    ds = pydicom.dcmread(small_study.paths[0])
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    bad = tmp_path / "mismatch.dcm"
    ds.save_as(bad)
    assert _send_with_pynetdicom(handle.port, bad) == StoreStatus.DATASET_MISMATCH
    assert _rows(state) == []
    reasons = [p.read_text() for p in spool.quarantine_dir.glob("*.reason.txt")]
    assert any("SOPInstanceUID in the data set differs" in r for r in reasons)


def test_missing_study_uid_is_0xC000(
    started: _Receivers, small_study: PhantomStudy, tmp_path: Path
) -> None:
    started.start(tmp_path)
    handle, spool, state = started[0]
    ds = pydicom.dcmread(small_study.paths[0])
    del ds.StudyInstanceUID
    bad = tmp_path / "nostudy.dcm"
    ds.save_as(bad)
    assert _send_with_pynetdicom(handle.port, bad) == StoreStatus.CANNOT_UNDERSTAND
    assert _rows(state) == []
    reasons = [p.read_text() for p in spool.quarantine_dir.glob("*.reason.txt")]
    assert any("StudyInstanceUID is missing" in r for r in reasons)


def test_refused_sop_class_is_0x0122(
    started: _Receivers, small_study: PhantomStudy, tmp_path: Path
) -> None:
    mr_storage = "1.2.840.10008.5.1.4.1.1.4"
    started.start(tmp_path, accepted_sop_classes=[mr_storage])
    handle, spool, state = started[0]
    assert _send_with_pynetdicom(handle.port, small_study.paths[0]) == 0x0122
    assert _rows(state) == []
    assert len(list(spool.quarantine_dir.glob("*.dcm"))) == 1


def test_disk_below_watermark_is_0xA700(
    started: _Receivers, small_study: PhantomStudy, tmp_path: Path
) -> None:
    started.start(tmp_path, min_free_bytes=1 << 62)
    handle, spool, state = started[0]
    assert _send_with_pynetdicom(handle.port, small_study.paths[0]) == StoreStatus.OUT_OF_RESOURCES
    assert _rows(state) == []
    assert list(spool.instances_dir.rglob("*.dcm")) == []


def test_allow_list_rejects_unknown_caller_and_wrong_address(
    started: _Receivers, small_study: PhantomStudy, tmp_path: Path
) -> None:
    callers = [{"ae_title": "KNOWN_CT", "addresses": ["127.0.0.0/8"]},
               {"ae_title": "ELSEWHERE", "addresses": ["10.1.2.3"]}]  # fmt: skip
    started.start(tmp_path, allow_list_enabled=True, allowed_callers=callers)
    handle, _, state = started[0]
    for caller in ("STRANGER", "ELSEWHERE"):
        result = storescu(handle.port, [small_study.paths[0]], calling_ae=caller)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "Association Rejected" in output
        assert "Calling AE Title Not Recognized" in output
    ok = storescu(handle.port, [small_study.paths[0]], calling_ae="KNOWN_CT")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert len(_rows(state)) == 1


def test_one_association_many_studies_and_one_study_many_associations(
    started: _Receivers, tmp_path: Path
) -> None:
    started.start(tmp_path)
    handle, _, state = started[0]
    a = ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6).write(tmp_path / "a")
    b = ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6).write(tmp_path / "b")
    # a and b's first half in one association, b's second half in another.
    assert storescu(handle.port, [*a.paths, *b.paths[:4]]).returncode == 0
    assert storescu(handle.port, list(b.paths[4:])).returncode == 0
    with state.session() as s:
        counts = {st.study_uid: st.instance_count for st in s.scalars(select(Study))}
        associations = s.scalars(select(Association).order_by(Association.id)).all()
        assert [x.instances for x in associations] == [12, 4]
    assert counts == {a.study_uid: 8, b.study_uid: 8}


def test_tls_with_client_certificates(
    started: _Receivers, small_study: PhantomStudy, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    made = make_certificates(certs)
    ca, client = made.ca, made.client
    tls = {"enabled": True, "certificate": made.server, "private_key": made.server_key,
           "ca_certificates": ca, "require_client_certificate": True}  # fmt: skip
    started.start(tmp_path, tls=tls)
    handle, _, state = started[0]
    base = ["storescu", "-v", "-aec", "DICOM_NODE", "-to", "5", "-ta", "5", "-td", "10"]
    plain = subprocess.run(
        [*base, "127.0.0.1", str(handle.port), str(small_study.paths[0])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert plain.returncode != 0
    secure = subprocess.run(
        [*base, "+tls", str(certs / "client.key"), str(client), "+cf", str(ca),
         "127.0.0.1", str(handle.port), str(small_study.paths[0])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert secure.returncode == 0, secure.stdout + secure.stderr
    assert len(_rows(state)) == 1
