"""Export by DICOMweb STOW-RS into a real Orthanc with its DICOMweb plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.export import send_files
from dicom_node.phantom import ChestPhantom
from dicom_node.services import OrthancHandle, orthanc_rest, run_orthanc
from dicom_node.settings import DestinationSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dicomweb_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancHandle]:
    with run_orthanc(tmp_path_factory.mktemp("orthanc-web"), dicomweb=True) as handle:
        yield handle


def test_stow_delivers_every_file(dicomweb_orthanc: OrthancHandle, tmp_path: Path) -> None:
    study = ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6).write(tmp_path / "ct")
    dest = DestinationSettings(
        name="web", kind="dicomweb", url=f"{dicomweb_orthanc.http_url}/dicom-web"
    )
    results = send_files("DICOM_NODE", dest, list(study.paths))
    assert [r.ok for r in results] == [True] * 8
    found = orthanc_rest(
        dicomweb_orthanc.http_url,
        "/tools/find",
        {"Level": "Instance", "Query": {"StudyInstanceUID": study.study_uid}},
    )
    assert len(found) == 8


def test_stow_to_a_wrong_url_fails_every_file_with_the_reason(
    dicomweb_orthanc: OrthancHandle, tmp_path: Path
) -> None:
    study = ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6).write(tmp_path / "ct")
    dest = DestinationSettings(
        name="web", kind="dicomweb", url=f"{dicomweb_orthanc.http_url}/no-such-root"
    )
    results = send_files("DICOM_NODE", dest, list(study.paths[:2]))
    assert [r.ok for r in results] == [False, False]
    assert "HTTP 404" in results[0].error


def test_dicomweb_destination_needs_a_url() -> None:
    with pytest.raises(ValueError, match="needs an http"):
        DestinationSettings(name="web", kind="dicomweb")
