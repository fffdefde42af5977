"""Why a series got a pipeline or not: stored by the supervisor, shown by API, pages and status.

Two studies go the way the node takes them: stored with the receiver's own
routing attributes, completed by the real :meth:`Supervisor.complete_studies`
over the shipped pipeline definitions. One is a CT without a Series Description
(it must be selected: that is the bug of issue 10), one an MR whose Series
Description is free text that only an admin may see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from celery import Celery
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage
from sqlalchemy import func, select, update

from dicom_node.cli import main
from dicom_node.phantom import PhantomStudy
from dicom_node.phi import study_tag
from dicom_node.routing_reasons import Outcome, Presence
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.schema import RoutingVerdict, Study, StudyState, utcnow
from dicom_node.supervisor import Supervisor
from pipelines.spec import load_pipeline_specs
from tests.node_process import REPO
from tests.unit.web.conftest import ingest

#: Free text in a Series Description: an admin sees it, a viewer, the logs and status do not.
DESCRIPTION = "SENTINEL^SERIES^DESC"


@dataclass(frozen=True)
class Routed:
    """The two routed studies."""

    ct: PhantomStudy
    mr: PhantomStudy


def _no_description(ds: Dataset) -> None:
    del ds.SeriesDescription


def _mr(ds: Dataset) -> None:
    ds.Modality = "MR"
    ds.SOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.SeriesDescription = DESCRIPTION


def _complete(settings: Settings, spool: Spool, state: StateDB, *studies: PhantomStudy) -> None:
    """Let the studies complete now and run the supervisor's routing step on them."""
    state.complete_early([s.study_uid for s in studies], utcnow())
    supervisor = Supervisor(
        settings, spool, state, load_pipeline_specs(settings.pipelines_dir), Celery("unused")
    )
    supervisor.complete_studies()


@pytest.fixture
def routed(
    settings: Settings,
    spool: Spool,
    state: StateDB,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> Routed:
    """A CT without a Series Description and an MR with one, routed by the supervisor."""
    ct = ingest(state, spool, tmp_path / "ct", edit=_no_description)
    mr = ingest(state, spool, tmp_path / "mr", accession="ACC-3003", edit=_mr)
    with caplog.at_level("INFO", logger="dicom_node.supervisor"):
        _complete(settings, spool, state, ct, mr)
    return Routed(ct=ct, mr=mr)


def test_supervisor_stores_a_verdict_per_series_and_pipeline(
    routed: Routed, state: StateDB, caplog: pytest.LogCaptureFixture
) -> None:
    with state.session() as s:
        rows = s.scalars(select(RoutingVerdict).order_by(RoutingVerdict.id)).all()
        outcomes = {(r.study_uid, r.pipeline): (r.outcome, r.job_id, r.new_job) for r in rows}
    shipped = len(load_pipeline_specs(REPO / "config" / "pipelines"))
    assert len(rows) == 2 * shipped, "two single-series studies, every shipped pipeline"
    outcome, job_id, new_job = outcomes[(routed.ct.study_uid, "ct-body-lung")]
    assert outcome == Outcome.SELECTED
    assert job_id is not None
    assert new_job
    assert outcomes[(routed.mr.study_uid, "ct-body-lung")] == (Outcome.NOT_SELECTED, None, False)
    assert outcomes[(routed.ct.study_uid, "ct-chest-unet")][0] == Outcome.DISABLED
    # The log says why no job was made, in words without values.
    lines = [r.getMessage() for r in caplog.get_records("setup")]
    mr_tag = study_tag(routed.mr.study_uid)
    why = [line for line in lines if mr_tag in line and "ct-body-lung" in line]
    assert why, lines
    assert "not selected: rule 'axial CT': Modality ≠ CT" in why[0]
    assert all(DESCRIPTION not in line and " MR " not in line for line in lines)
    assert not any("ct-chest-unet" in line for line in lines), "disabled and not matching"


def test_a_changed_study_stores_no_verdict_and_a_rerouting_replaces_them(
    routed: Routed, settings: Settings, spool: Spool, state: StateDB
) -> None:
    def count() -> int:
        with state.session() as s:
            return int(s.scalar(select(func.count(RoutingVerdict.id))) or 0)

    # Two single-series studies, a verdict for every shipped pipeline each.
    expected = 2 * len(load_pipeline_specs(REPO / "config" / "pipelines"))

    assert count() == expected
    # Routed again (a late instance re-opened it): the verdicts are replaced, and the
    # existing job is linked, not duplicated. The old rows are marked to tell them apart.
    with state.session() as s:
        s.execute(update(RoutingVerdict).values(rules=[]))
        study = s.get(Study, routed.ct.study_uid)
        assert study is not None
        study.state = StudyState.ARRIVING
    _complete(settings, spool, state, routed.ct)
    with state.session() as s:
        rows = s.scalars(
            select(RoutingVerdict).where(RoutingVerdict.study_uid == routed.ct.study_uid)
        ).all()
        lung = [r for r in rows if r.pipeline == "ct-body-lung"]
    assert count() == expected
    assert all(r.rules for r in rows), "the study's old rows were replaced"
    assert len(lung) == 1
    assert lung[0].job_id is not None
    assert not lung[0].new_job, "the same input set ran before: linked, not a new job"
    # A study whose instance count moved on since routing read it: nothing is stored.
    assert state.complete_study(routed.ct.study_uid, 999, [], []) == []
    assert count() == expected


def test_api_tells_why_with_values_by_role(
    routed: Routed, admin: tuple[TestClient, str], viewer: tuple[TestClient, str]
) -> None:
    browser, _ = admin
    ct = browser.get(f"/api/studies/{routed.ct.study_uid}").json()
    assert ct["routed_at"] is not None
    lung = next(v for v in ct["routing"] if v["pipeline"] == "ct-body-lung")
    assert lung["outcome"] == Outcome.SELECTED
    assert lung["job_id"] == ct["jobs"][0]["id"]
    conditions = {c["keyword"]: c for c in lung["rules"][0]["conditions"]}
    assert conditions["SeriesDescription"]["presence"] == Presence.ABSENT
    assert conditions["SeriesDescription"]["holds"] is True
    assert conditions["SeriesDescription"]["text"] == "SeriesDescription absent (holds)"

    mr_admin = browser.get(f"/api/studies/{routed.mr.study_uid}")
    lung = next(v for v in mr_admin.json()["routing"] if v["pipeline"] == "ct-body-lung")
    assert lung["outcome"] == Outcome.NOT_SELECTED
    assert "Modality MR ≠ CT" in lung["why"]
    assert lung["series_description"] == DESCRIPTION
    assert mr_admin.json()["jobs"] == []

    mr_viewer = viewer[0].get(f"/api/studies/{routed.mr.study_uid}")
    assert mr_viewer.status_code == 200
    lung = next(v for v in mr_viewer.json()["routing"] if v["pipeline"] == "ct-body-lung")
    assert "Modality MR ≠ CT" in lung["why"]
    assert DESCRIPTION not in mr_viewer.text
    description = next(
        c for c in lung["rules"][0]["conditions"] if c["keyword"] == "SeriesDescription"
    )
    assert description["hidden"] is True
    assert description["seen"] is None


def test_study_page_and_overview_show_why(
    routed: Routed, admin: tuple[TestClient, str], viewer: tuple[TestClient, str]
) -> None:
    page = viewer[0].get(f"/studies/{routed.mr.study_uid}").text
    assert 'id="routing"' in page
    assert "not selected" in page
    assert "Modality MR ≠ CT" in page
    assert DESCRIPTION not in page
    assert DESCRIPTION in admin[0].get(f"/studies/{routed.mr.study_uid}").text
    ct_page = viewer[0].get(f"/studies/{routed.ct.study_uid}").text
    assert "selected by rule &#39;axial CT&#39;" in ct_page
    overview = viewer[0].get("/").text
    unrouted = overview[overview.index('id="unrouted"') :]
    assert study_tag(routed.mr.study_uid) in unrouted
    assert study_tag(routed.ct.study_uid) not in unrouted.split("</table>")[0]


def test_status_lists_studies_without_a_job_and_why(
    routed: Routed, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"web"})))
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "no job       1 studies completed in the last 24 h got no job:" in out
    assert study_tag(routed.mr.study_uid) in out
    assert "ct-body-lung: not selected: rule 'axial CT': Modality MR ≠ CT" in out
    assert study_tag(routed.ct.study_uid) not in out
    assert DESCRIPTION not in out
    assert "ct-chest-unet" not in out, "a disabled pipeline that would not match is no news"
