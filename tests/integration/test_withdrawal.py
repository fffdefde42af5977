"""A result superseded by one over the complete series is withdrawn from a real Orthanc.

The node's own steps run here in order (routing, the worker's job function,
collect, export, withdraw) against a real spool, state DB and Orthanc; only
the Celery transport between node and worker is left out (the fault test
``tests/faults/test_partial_study.py`` runs it all as processes).

Orthanc 1.10 does not implement IOCM: it stores the rejection note as an
ordinary Key Object Selection document and keeps the rejected objects. So the
test reads the note back from Orthanc and checks that it references exactly
the superseded SEG and SR, with the rejection title.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.scp.storage import _routing_attributes
from dicom_node.services import OrthancHandle, orthanc_rest
from dicom_node.settings import Settings, load_settings
from dicom_node.spool import Spool
from dicom_node.state import ExportState, InstanceRecord, JobState, StateDB
from dicom_node.state.supersession import notes_of, superseded_by
from dicom_node.supervisor import Supervisor
from pipelines.manifest import JobRequest, ManifestStatus
from pipelines.spec import load_pipeline_specs
from worker.tasks import execute_job

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture
def node(tmp_path: Path, orthanc: OrthancHandle) -> Iterator[tuple[Supervisor, Settings]]:
    settings = load_settings(
        None,
        spool_dir=tmp_path / "spool",
        pipelines_dir=REPO / "config" / "pipelines",
        scp={"min_free_bytes": 0},
        stability={"quiet_seconds": 0},
        export={
            "destinations": [
                {"name": "archive", "ae_title": orthanc.ae_title, "port": orthanc.dicom_port}
            ]
        },
    )
    spool = Spool(settings.spool_dir, 0)
    state = StateDB(settings.state_db_url)
    specs = load_pipeline_specs(settings.pipelines_dir)
    # No Celery here: the steps that talk to the broker are not called.
    supervisor = Supervisor(
        settings, spool, state, {"ct-body-lung": specs["ct-body-lung"]}, producer=None
    )
    yield supervisor, settings
    state.close()


def _receive(supervisor: Supervisor, paths: Sequence[Path]) -> None:
    """Store instances the way the receiver does: bytes in the spool, rows committed."""
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = supervisor.spool.instance_path(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        size = supervisor.spool.write_atomic(target, path.read_bytes())
        supervisor.state.record_instance(
            InstanceRecord(
                study_uid=ds.StudyInstanceUID,
                series_uid=ds.SeriesInstanceUID,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                path=supervisor.spool.relative(target),
                size=size,
                calling_ae="CT_SCANNER",
                association_id=None,
                modality=ds.Modality,
                accession_number=ds.AccessionNumber,
                study_date=ds.StudyDate,
                series_attributes=_routing_attributes(ds),
            )
        )


def _run_new_job(supervisor: Supervisor, settings: Settings) -> int:
    """Route the study, run its new job as the worker would, collect and export it."""
    before = {job.id for job in supervisor.state.jobs(list(JobState))}
    supervisor.complete_studies()
    (job,) = [job for job in supervisor.state.jobs(list(JobState)) if job.id not in before]
    supervisor.state.record_dispatch(job.id, f"task-{job.id}")
    request = JobRequest(
        node_id=supervisor.spool.node_id,
        job_id=job.id,
        pipeline=job.pipeline,
        pipeline_version=job.pipeline_version,
        inputs=list(job.inputs),
        output_dir=supervisor.spool.relative(supervisor.spool.job_dir(job.id)),
    )
    assert execute_job(settings, request).status is ManifestStatus.DONE
    supervisor.collect()
    supervisor.export()
    supervisor.withdraw()
    return job.id


def _instances(orthanc: OrthancHandle, study: PhantomStudy) -> dict[str, list[dict[str, Any]]]:
    """The archive's instances of the study by modality, with their Orthanc IDs."""
    found = orthanc_rest(
        orthanc.http_url,
        "/tools/find",
        {"Level": "Series", "Query": {"StudyInstanceUID": study.study_uid}, "Expand": True},
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for series in found:
        modality = series["MainDicomTags"].get("Modality", "")
        for orthanc_id in series["Instances"]:
            tags = orthanc_rest(orthanc.http_url, f"/instances/{orthanc_id}")
            out.setdefault(modality, []).append(
                {"id": orthanc_id, "uid": tags["MainDicomTags"]["SOPInstanceUID"]}
            )
    return out


def test_the_archive_receives_a_rejection_note_for_exactly_the_superseded_result(
    node: tuple[Supervisor, Settings], orthanc: OrthancHandle, tmp_path: Path
) -> None:
    supervisor, settings = node
    study = ChestPhantom(
        slices=12, size=64, pixel_spacing_mm=5.6, slice_thickness_mm=5.0, seed=77
    ).write(tmp_path / "ct")
    # The first association broke off after 7 of 12 slices; the study completed like that.
    _receive(supervisor, study.paths[:7])
    partial = _run_new_job(supervisor, settings)
    old = {row.sop_instance_uid for row in supervisor.state.exports_of(partial)}
    assert len(old) == 2
    assert {x["uid"] for x in _instances(orthanc, study)["SEG"]} <= old
    assert "KO" not in _instances(orthanc, study), "nothing is withdrawn before a replacement"
    # The modality sends the whole study again.
    _receive(supervisor, study.paths)
    complete = _run_new_job(supervisor, settings)
    job = supervisor.state.job(partial)
    assert job is not None
    assert job.state is JobState.DONE, "the old job keeps its history"
    assert superseded_by(supervisor.state, [partial]) == {partial: complete}
    (pending,) = notes_of(supervisor.state, partial)
    assert pending.state is ExportState.PENDING
    supervisor.export()  # the next pass delivers the note
    (note,) = notes_of(supervisor.state, partial)
    assert (note.state, note.rejected, note.superseded_by) == (ExportState.SENT, 2, complete)

    held = _instances(orthanc, study)
    (ko,) = held["KO"]
    assert ko["uid"] == note.sop_instance_uid
    document = pydicom.dcmread(
        io.BytesIO(orthanc_rest(orthanc.http_url, f"/instances/{ko['id']}/file", raw=True))
    )
    title = document.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
    assert title.CodeMeaning == "Rejected for Quality Reasons"
    referenced = {
        str(sop.ReferencedSOPInstanceUID)
        for item in document.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert referenced == old
    content = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in document.ContentSequence
        if "ReferencedSOPSequence" in item
    }
    assert content == old
    assert document.StudyInstanceUID == study.study_uid
    # Orthanc 1.10 keeps what the note rejects: both results are there, the note beside them.
    assert len(held["SEG"]) == 2
    assert len(held["SR"]) == 2
    new = {row.sop_instance_uid for row in supervisor.state.exports_of(complete)}
    assert {x["uid"] for x in held["SEG"] + held["SR"]} == old | new

    # Later passes withdraw nothing twice.
    supervisor.withdraw()
    supervisor.export()
    assert len(notes_of(supervisor.state, partial)) == 1
    assert len(_instances(orthanc, study)["KO"]) == 1
