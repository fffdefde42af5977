"""A failed export attempt is logged once, by the supervisor, with pynetdicom's cause in it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicom_node.export import echo
from dicom_node.services import free_port
from dicom_node.settings import DestinationSettings, load_settings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.schema import Job
from dicom_node.supervisor import Supervisor


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Supervisor, StateDB, int]]:
    """A supervisor whose only destination is a port nobody listens on, and one export row."""
    settings = load_settings(
        None,
        spool_dir=tmp_path / "spool",
        export={"destinations": [{"name": "archive", "port": free_port(), "timeout_s": 2}]},
    )
    spool = Spool(settings.spool_dir, 0)
    state = StateDB(settings.state_db_url)
    with state.session() as s:
        job = Job(
            study_uid="1.2.3",
            series_uid="1.2.3.4",
            pipeline="p",
            pipeline_version="1",
            input_hash="0" * 64,
            inputs=[],
        )
        s.add(job)
        s.flush()
        job_id = job.id
    result = spool.job_dir(job_id) / "seg.dcm"
    result.write_bytes(Path(str(get_testdata_file("CT_small.dcm"))).read_bytes())
    state.create_exports(job_id, [("archive", spool.relative(result), "1.2.3.4.5")], {})
    # The producer is only used by the broker steps, not by export.
    yield Supervisor(settings, spool, state, {}, producer=None), state, job_id
    state.close()


def test_a_failed_attempt_is_one_warning_with_its_cause(
    node: tuple[Supervisor, StateDB, int], caplog: pytest.LogCaptureFixture
) -> None:
    supervisor, state, job_id = node
    with caplog.at_level(logging.INFO):
        supervisor.export()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in loud] == ["dicom_node.supervisor"], [r.getMessage() for r in loud]
    assert "Connection refused" in loud[0].getMessage()
    (row,) = state.exports_of(job_id)
    assert "not established" in row.last_error
    assert "Connection refused" in row.last_error


def test_echo_folds_the_cause_into_its_answer(caplog: pytest.LogCaptureFixture) -> None:
    dest = DestinationSettings(name="gone", port=free_port(), timeout_s=2)
    with caplog.at_level(logging.INFO):
        ok, reason = echo("DICOM_NODE", dest)
    assert not ok
    assert "Connection refused" in reason
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_other_pynetdicom_records_still_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    # The receiver's pynetdicom warnings come from threads of no export: they pass.
    with caplog.at_level(logging.INFO):
        logging.getLogger("pynetdicom.transport").warning("receiver-side warning")
    assert "receiver-side warning" in caplog.text
