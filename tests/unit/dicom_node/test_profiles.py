"""Output profiles: what each destination receives and what a job therefore writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.profiles import delivered, job_outputs, receives
from dicom_node.settings import DestinationSettings
from pipelines.spec import OutputKind, PipelineSpec, load_pipeline_specs

REPO = Path(__file__).resolve().parents[3]
K = OutputKind


@pytest.fixture(scope="module")
def specs() -> dict[str, PipelineSpec]:
    return load_pipeline_specs(REPO / "config" / "pipelines")


def test_a_destination_without_a_list_receives_what_the_pipeline_declares(
    specs: dict[str, PipelineSpec],
) -> None:
    archive = DestinationSettings(name="archive")
    assert receives(archive, specs["ct-body-lung"]) == {K.SEG, K.SR}
    assert job_outputs(specs["ct-body-lung"], [archive]) == [K.SEG, K.SR]


def test_the_job_writes_the_union_of_what_destinations_receive(
    specs: dict[str, PipelineSpec],
) -> None:
    pacs = DestinationSettings(name="pacs", outputs=[K.SC, K.GSPS])
    ohif = DestinationSettings(name="ohif", outputs=[K.SEG, K.SR])
    planning = DestinationSettings(name="planning", outputs=[K.RTSTRUCT])
    assert receives(pacs, specs["ct-body-lung"]) == {K.SC, K.GSPS}
    assert job_outputs(specs["ct-body-lung"], [pacs, ohif, planning]) == [
        K.SEG, K.SR, K.SC, K.GSPS, K.RTSTRUCT,
    ]  # fmt: skip
    assert job_outputs(specs["ct-body-lung"], [pacs]) == [K.SC, K.GSPS]


def test_an_sr_brings_the_seg_it_refers_to(specs: dict[str, PipelineSpec]) -> None:
    reports = DestinationSettings(name="reports", outputs=[K.SR])
    assert job_outputs(specs["ct-body-lung"], [reports]) == [K.SEG, K.SR]
    assert receives(reports, specs["ct-body-lung"]) == {K.SR}


def test_a_classification_writes_only_what_it_can(specs: dict[str, PipelineSpec]) -> None:
    pacs = DestinationSettings(name="pacs", outputs=[K.SC, K.GSPS, K.KOS, K.PDF])
    assert job_outputs(specs["dx-chest-nodule"], [pacs]) == [K.KOS, K.PDF]
    assert delivered(pacs, specs["dx-chest-nodule"]) == [K.KOS, K.PDF]
    reports = DestinationSettings(name="reports", outputs=[K.SR])
    assert delivered(reports, specs["ct-body-lung"]) == [K.SR]


def test_no_destination_means_the_pipelines_own_outputs(specs: dict[str, PipelineSpec]) -> None:
    assert job_outputs(specs["ct-body-lung"], []) == [K.SEG, K.SR]


def test_an_unknown_kind_is_refused_at_configuration() -> None:
    with pytest.raises(ValueError, match="outputs"):
        DestinationSettings(name="pacs", outputs=["png"])  # type: ignore[list-item]


def test_a_pipeline_that_asks_for_what_its_task_cannot_write_is_refused(
    specs: dict[str, PipelineSpec],
) -> None:
    raw = specs["dx-chest-nodule"].model_dump()
    raw["outputs"] = ["sr", "gsps"]
    with pytest.raises(ValueError, match="cannot write gsps"):
        PipelineSpec.model_validate(raw)


def test_config_check_says_what_each_destination_receives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        f"pipelines_dir: {REPO / 'config' / 'pipelines'}\n"
        "export:\n  destinations:\n"
        "    - {name: pacs, ae_title: PACS, outputs: [sc, gsps]}\n"
        "    - {name: ohif, ae_title: OHIF, outputs: [seg, sr]}\n"
    )
    assert main(["config", "check", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "pipeline ct-body-lung 1.0.0 (enabled, queue cpu) writes seg, sr, sc, gsps" in printed
    assert "  to pacs: sc, gsps\n  to ohif: seg, sr\n" in printed
    assert (
        "pipeline dx-chest-nodule 1.0.0 (enabled, queue cpu) writes sr\n  to pacs: nothing"
        in printed
    )
