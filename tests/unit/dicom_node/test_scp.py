"""The receiver in-process, fed by dcmtk's storescu over a real socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.scp import Receiver, ReceiverHandle
from dicom_node.settings import ScpSettings, StabilitySettings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.schema import Association, Instance, Study
from tests.node_process import storescu


@pytest.fixture
def receiver(
    tmp_path: Path, scp_engine: Literal["pynetdicom", "builtin"]
) -> Iterator[tuple[ReceiverHandle, Spool, StateDB]]:
    spool = Spool(tmp_path / "spool")
    state = StateDB(f"sqlite:///{tmp_path / 'spool' / 'state.db'}")
    settings = ScpSettings(
        host="127.0.0.1", port=0, min_free_bytes=0, acse_timeout_s=5, engine=scp_engine
    )
    handle = Receiver(settings, StabilitySettings(), spool, state).start()
    yield handle, spool, state
    handle.stop()
    state.close()


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    return ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6).write(
        tmp_path_factory.mktemp("small") / "ct"
    )


def test_stores_bytes_as_received_and_commits_rows(
    receiver: tuple[ReceiverHandle, Spool, StateDB], small_study: PhantomStudy
) -> None:
    handle, spool, state = receiver
    result = storescu(handle.port, list(small_study.paths))
    assert result.returncode == 0, result.stderr
    with state.session() as s:
        rows = s.scalars(select(Instance)).all()
        study = s.get(Study, small_study.study_uid)
        assoc = s.scalars(select(Association)).one()
    assert len(rows) == len(small_study.paths)
    assert study is not None
    assert study.instance_count == len(small_study.paths)
    assert assoc.calling_ae == "STORESCU"
    assert assoc.instances == len(small_study.paths)
    assert assoc.failures == 0
    assert assoc.ended_at is not None
    for source in small_study.paths:
        sent = pydicom.dcmread(source)
        stored_path = spool.instance_path(
            sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID
        )
        stored = stored_path.read_bytes()
        # The data set part is byte-identical to what was sent.
        assert stored.endswith(source.read_bytes()[-1000:])
        assert pydicom.dcmread(stored_path).PixelData == sent.PixelData


def test_duplicate_instance_is_stored_once(
    receiver: tuple[ReceiverHandle, Spool, StateDB], small_study: PhantomStudy
) -> None:
    handle, _, state = receiver
    assert storescu(handle.port, list(small_study.paths[:2])).returncode == 0
    assert storescu(handle.port, list(small_study.paths[:2])).returncode == 0
    with state.session() as s:
        assert len(s.scalars(select(Instance)).all()) == 2
        study = s.get(Study, small_study.study_uid)
        assert study is not None
        assert study.instance_count == 2


def test_invalid_uid_is_refused_and_quarantined(
    receiver: tuple[ReceiverHandle, Spool, StateDB], small_study: PhantomStudy, tmp_path: Path
) -> None:
    handle, spool, state = receiver
    ds = pydicom.dcmread(small_study.paths[0])
    bad = tmp_path / "bad.dcm"
    # A crafted sender: pydicom must be allowed to write the invalid UID.
    pydicom.config.settings.writing_validation_mode = pydicom.config.WARN
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.SeriesInstanceUID = "1.2.3/../../../evil"
    ds.save_as(bad, enforce_file_format=True)
    result = storescu(handle.port, [bad])
    # storescu names every 0xCxxx status "CannotUnderstand".
    assert "Error: CannotUnderstand" in result.stdout + result.stderr
    with state.session() as s:
        assert s.scalars(select(Instance)).all() == []
    reasons = list(spool.quarantine_dir.glob("*.reason.txt"))
    assert len(reasons) == 1
    assert "SeriesInstanceUID is not a valid UID" in reasons[0].read_text()
    assert not any("evil" in str(p) for p in spool.root.rglob("*"))
