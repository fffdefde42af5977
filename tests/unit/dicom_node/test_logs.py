"""Log lines as text or JSON, and the job/study fields a worker's lines carry."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from dicom_node.logs import log_context, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_job_and_study_inside_a_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("dicom_node.test")
    log.info("before")
    with log_context(job=7, study="a1b2c3d4"):
        log.info("inside %s", "job")
        with log_context(job=8):
            log.warning("nested")
    log.debug("hidden at INFO")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == ["before", "inside job", "nested"]
    assert "job" not in lines[0]
    assert (lines[1]["job"], lines[1]["study"]) == (7, "a1b2c3d4")
    assert (lines[2]["job"], lines[2]["study"], lines[2]["level"]) == (8, "a1b2c3d4", "WARNING")


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_and_the_level_are_honoured(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("WARNING", "text")
    log = logging.getLogger("dicom_node.test")
    log.info("quiet")
    with log_context(job=1):
        log.error("loud")
    err = capsys.readouterr().err
    assert "quiet" not in err
    assert "ERROR dicom_node.test: loud" in err
    assert not err.startswith("{")
