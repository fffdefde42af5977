"""No values in any log: warnings, library records, exceptions, uncaught errors (promise 5).

The record factory is process-wide, so each case runs in a fresh Python process
that configures logging the way every CLI command does and then provokes the
real thing: highdicom's person-name warning, pydicom reading an ISO date,
highdicom raising on it (issue 15, F7), a library logger, an uncaught error in a
thread, a JSON log line.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dicom_node.errors import NodeError
from dicom_node.log_privacy import safe_exception, safe_traceback

NAME = "DOE JOHN"
BIRTH_DATE = "1961-07-23"

PROGRAM = textwrap.dedent(
    f"""
    import io, logging, tempfile, threading
    from pathlib import Path
    import highdicom as hd
    import pydicom
    from pydicom.dataelem import DataElement
    from dicom_node.cli.options import configure_logging
    from dicom_node.phantom import ChestPhantom

    configure_logging(0, False, log_format="json" if JSON else "text")
    log = logging.getLogger("dicom_node.test")

    # 1. pydicom reads a birth date written the ISO way: it warns, quoting it.
    study = ChestPhantom(slices=8, size=64).write(Path(tempfile.mkdtemp()), patient_name="{NAME}")
    ds = pydicom.dcmread(study.paths[0])
    ds[0x00100030] = DataElement(0x00100030, "DA", "{BIRTH_DATE}")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    read = pydicom.dcmread(buffer)
    _ = read.PatientBirthDate
    # 2. highdicom warns about the name (a retired form), raises on the date, and the
    #    node logs the traceback (F7).
    try:
        hd.base.SOPClass(
            study_instance_uid=read.StudyInstanceUID, series_instance_uid="1.2.3",
            series_number=1, sop_instance_uid="1.2.3.4", sop_class_uid=read.SOPClassUID,
            instance_number=1, modality="OT", manufacturer="t",
            patient_name=read.PatientName, patient_birth_date=read.PatientBirthDate,
        )
    except ValueError:
        log.exception("job 7 failed")
    # 3. A library's own log line quoting a value, and an exception as an argument.
    logging.getLogger("somelib").warning("bad name %s", "{NAME}")
    logging.getLogger("pynetdicom.acse").exception(ValueError("{NAME}"))
    logging.getLogger("pynetdicom.acse").error("Association Rejected")
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG)  # as -vvv does
    logging.getLogger("pynetdicom.dsutils").info("(0010,0010) PN [{NAME}]")
    log.warning("export failed (%s)", ValueError("{NAME}"))
    # 4. Celery's task lines pass a mapping with the exception's repr.
    logging.getLogger("celery.app.trace").error(
        "Task %(name)s raised: %(exc)s", {{"name": "t", "exc": "ValueError('{NAME}')"}}
    )
    # 5. An error nobody catches, in a thread.
    def boom():
        raise RuntimeError("{NAME}")
    t = threading.Thread(target=boom, name="worker-thread")
    t.start()
    t.join()
    log.info("the end")
    """
)


@pytest.mark.parametrize("json_logs", [False, True])
def test_no_value_reaches_the_log(json_logs: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"JSON = {json_logs}\n{PROGRAM}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "the end" in log, "the program must have run to its end"
    assert NAME not in log
    assert BIRTH_DATE not in log
    # What the log keeps: categories, places, types, frames.
    assert "UserWarning at highdicom/base.py" in log
    assert "UserWarning at pydicom/" in log
    assert "job 7 failed" in log
    assert "ValueError (text withheld)" in log
    assert "highdicom/base.py" in log, "the frames of the traceback stay"
    assert "WARNING record of somelib at" in log
    assert "pynetdicom.acse" in log
    assert log.count("ValueError (text withheld)") >= 3, "the node's, pynetdicom's, the argument's"
    assert "Association Rejected" in log, "pynetdicom's protocol errors stay"
    assert "INFO record of pynetdicom.dsutils" in log, "its data set dumps do not"
    assert "export failed (ValueError (text withheld))" in log
    assert "Task t raised: (text withheld)" in log
    assert "uncaught exception in thread worker-thread" in log
    assert "RuntimeError (text withheld)" in log


def test_safe_traceback_keeps_the_chain_and_the_node_reasons() -> None:
    try:
        try:
            raise ValueError(f"Unable to convert '{BIRTH_DATE}' to 'DA' object")
        except ValueError as exc:
            raise NodeError("write SEG: a date is not valid DICOM") from exc
    except NodeError as exc:
        text = safe_traceback((type(exc), exc, exc.__traceback__))
    assert BIRTH_DATE not in text
    assert "ValueError (text withheld)" in text
    assert "direct cause" in text
    assert text.endswith("NodeError: write SEG: a date is not valid DICOM")
    assert 'File "tests/unit/dicom_node/test_log_privacy.py"' in text
    assert safe_exception(OSError(28, "No space left on device", f"/in/{NAME}")) == (
        "OSError: [Errno 28] No space left on device"
    )
