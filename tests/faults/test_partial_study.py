"""A study interrupted by a node crash and sent again in full leaves one valid result.

Before, the archive ended with two SEG and two SR: those computed from the part
received before the crash stayed beside the right ones. Now the node withdraws
the partial result with an IOCM rejection note once the complete one is in
the archive. Every part is a real process; the node gets SIGKILL.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pydicom
import pytest

from dicom_node.phantom import ChestPhantom
from dicom_node.services import OrthancHandle, orthanc_rest, wait_until
from dicom_node.state import ExportState, JobState, StateDB
from dicom_node.state.supersession import notes_of, superseded_by
from tests.node_process import run_node, run_worker, storescu, write_config

pytestmark = [pytest.mark.slow, pytest.mark.serial]


def _instances(orthanc: OrthancHandle, study_uid: str, modality: str) -> list[str]:
    """Orthanc IDs of the study's instances of one modality."""
    found = orthanc_rest(
        orthanc.http_url,
        "/tools/find",
        {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    )
    return [
        orthanc_id
        for series in found
        if series["MainDicomTags"].get("Modality") == modality
        for orthanc_id in series["Instances"]
    ]


def test_crash_mid_study_then_full_resend_withdraws_the_partial_result(
    tmp_path: Path, broker_url: str, orthanc: OrthancHandle
) -> None:
    study = ChestPhantom(
        slices=20, size=96, pixel_spacing_mm=3.7, slice_thickness_mm=5.0, seed=120
    ).write(tmp_path / "ct")
    config = write_config(tmp_path, broker_url, orthanc.dicom_port)
    with run_worker(config):
        with run_node(config) as node:
            assert storescu(node.port, list(study.paths[:12])).returncode == 0
            os.kill(node.proc.pid, signal.SIGKILL)  # the node dies mid-study
            node.proc.wait(timeout=10)
        with run_node(config) as node:
            db = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
            try:
                wait_until(
                    lambda: [j.state for j in db.jobs(list(JobState))] == [JobState.DONE],
                    240,
                    "the job over the partial study DONE",
                    interval_s=0.5,
                )
                (partial,) = db.jobs(list(JobState))
                assert len(partial.inputs) == 12
                old = {row.sop_instance_uid for row in db.exports_of(partial.id)}
                assert len(old) == 2
                # The modality sends the whole study again.
                assert storescu(node.port, list(study.paths)).returncode == 0

                def withdrawn() -> bool:
                    notes = notes_of(db, partial.id)
                    return bool(notes) and all(n.state is ExportState.SENT for n in notes)

                wait_until(withdrawn, 240, "the rejection note delivered", interval_s=0.5)
                jobs = db.jobs(list(JobState))
                assert [(len(j.inputs), j.state) for j in jobs] == [
                    (12, JobState.DONE),
                    (20, JobState.DONE),
                ]
                complete = jobs[1]
                assert superseded_by(db, [partial.id, complete.id]) == {partial.id: complete.id}
                (note,) = notes_of(db, partial.id)
            finally:
                db.close()
    (ko,) = _instances(orthanc, study.study_uid, "KO")
    document = pydicom.dcmread(
        io.BytesIO(orthanc_rest(orthanc.http_url, f"/instances/{ko}/file", raw=True))
    )
    assert document.SOPInstanceUID == note.sop_instance_uid
    assert document.ConceptNameCodeSequence[0].CodeValue == "113001"
    referenced = {
        str(sop.ReferencedSOPInstanceUID)
        for item in document.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert referenced == old
