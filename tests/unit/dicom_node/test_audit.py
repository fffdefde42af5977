"""The audit trail's file, its chain, syslog, and the configuration-change record."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from dicom_node.audit import (
    AuditLog,
    EventAction,
    EventId,
    Outcome,
    Participant,
    StudyObject,
    read_records,
    record_start,
    verify_chain,
)
from dicom_node.phi import study_tag
from dicom_node.settings import SyslogSettings, load_settings

UID = "1.2.826.0.1.99.7"


def test_records_follow_the_a5_schema_and_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", "NODE@host")
    log.record(
        EventId.PATIENT_RECORD,
        EventAction.READ,
        participants=[Participant("alice", True, "10.1.2.3")],
        studies=[StudyObject(UID, {"Viewed": "study page"})],
        description="alice read study page",
    )
    log.record(EventId.QUERY, EventAction.EXECUTE, Outcome.MINOR_FAILURE)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["EventIdentification"]["EventID"] == {
        "csd-code": "110110", "codeSystemName": "DCM", "originalText": "Patient Record",
    }  # fmt: skip
    assert first["EventIdentification"]["EventActionCode"] == "R"
    assert first["EventIdentification"]["EventOutcomeIndicator"] == "0"
    assert first["ActiveParticipant"][0] == {
        "UserID": "alice", "UserIsRequestor": True, "NetworkAccessPointID": "10.1.2.3",
        "NetworkAccessPointTypeCode": "2",
    }  # fmt: skip
    assert first["ParticipantObjectIdentification"][0]["ParticipantObjectID"] == study_tag(
        "1.2.826.0.1.99.7"
    )
    assert "1.2.826.0.1.99.7" not in lines[0].replace(
        study_tag(UID), ""
    )  # the UID itself is not there
    assert verify_chain(tmp_path / "audit.jsonl") == 2
    total, records = read_records(tmp_path / "audit.jsonl")
    assert total == 2
    assert [r.seq for r in records] == [2, 1]  # newest first
    _, alice = read_records(tmp_path / "audit.jsonl", user="alice")
    assert [r.summary for r in alice] == ["alice read study page"]


def test_an_edited_or_removed_line_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "NODE")
    for _ in range(3):
        log.record(EventId.QUERY, EventAction.EXECUTE, participants=[Participant("bob", True)])
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        verify_chain(path)
    path.write_text("\n".join([lines[0], lines[1].replace("bob", "eve"), lines[2]]) + "\n")
    with pytest.raises(ValueError, match="line 3"):
        verify_chain(path)


def test_records_also_go_to_a_syslog_collector(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(5)
        port = collector.getsockname()[1]
        log = AuditLog(
            tmp_path / "audit.jsonl",
            "NODE",
            SyslogSettings(enabled=True, host="127.0.0.1", port=port, app_name="dicom-node"),
        )
        log.record(EventId.USER_AUTHENTICATION, EventAction.EXECUTE, Outcome.MINOR_FAILURE)
        message, _ = collector.recvfrom(65536)
    header, _, body = message.partition(b" \xef\xbb\xbf")
    fields = header.decode().split(" ")
    assert fields[0] == "<108>1"  # facility 13 (log audit) * 8 + severity 4 (a failure)
    assert fields[3] == "dicom-node"
    assert fields[5:7] == ["DICOM+JSON", "-"]
    assert json.loads(body)["EventIdentification"]["EventOutcomeIndicator"] == "4"


def test_a_changed_configuration_is_recorded_at_start(tmp_path: Path) -> None:
    settings = load_settings(None, spool_dir=tmp_path / "spool")
    log = AuditLog(settings.audit_path, "NODE")
    assert record_start(log, settings, "serve") == []  # the first start has nothing to compare
    assert record_start(log, settings, "serve") == []
    changed = load_settings(
        None, spool_dir=tmp_path / "spool", scp={"port": 11999}, web={"session_secret": "x" * 20}
    )
    assert record_start(log, changed, "serve") == ["scp.port", "web.session_secret"]
    _, records = read_records(settings.audit_path, event="Software Configuration")
    assert len(records) == 1
    assert "scp.port" in records[0].summary
    assert "x" * 20 not in settings.audit_path.read_text()  # digests, never values
    assert "x" * 20 not in Path(str(settings.audit_path) + ".config").read_text()
