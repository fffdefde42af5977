from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.errors import InvalidUID, SpoolFull
from dicom_node.spool import Spool
from dicom_node.uids import validate_uid


@pytest.mark.parametrize(
    "bad",
    ["", "../../etc/passwd", "1.2/3", "1.2.03", "1..2", "1.2.", "a.b", "1." * 40 + "1", None],
)
def test_invalid_uids_are_refused(bad: object) -> None:
    with pytest.raises(InvalidUID):
        validate_uid(bad, "SOPInstanceUID")


def test_valid_uid_is_returned_without_padding() -> None:
    assert validate_uid("1.2.840.10008.1.1\x00", "X") == "1.2.840.10008.1.1"


def test_instance_path_cannot_escape_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(InvalidUID):
        spool.instance_path("1.2.3", "../../..", "1.2.4")
    path = spool.instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert path.is_relative_to(spool.instances_dir)


def test_write_atomic_leaves_whole_file_and_no_temp(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    target = spool.instance_path("1.2", "1.2.3", "1.2.3.4")
    assert spool.write_atomic(target, b"x" * 1000) == 1000
    assert target.read_bytes() == b"x" * 1000
    assert list(spool.tmp_dir.iterdir()) == []


def test_watermark_refuses_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=1 << 62)
    target = spool.instance_path("1.2", "1.2.3", "1.2.3.4")
    with pytest.raises(SpoolFull):
        spool.write_atomic(target, b"data")
    assert not target.exists()


def test_stale_temporaries_are_removed_only_when_asked(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.tmp_dir / "half.part").write_bytes(b"partial")
    # A second Spool (a CLI command, another receiver) must not touch in-flight writes.
    Spool(tmp_path / "spool")
    assert [p.name for p in spool.tmp_dir.iterdir()] == ["half.part"]
    assert spool.remove_stale_temporaries() == 1
    assert list(spool.tmp_dir.iterdir()) == []


def test_quarantine_keeps_data_and_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.quarantine(b"bad bytes", "0xC000 CANNOT_UNDERSTAND: test")
    assert path.read_bytes() == b"bad bytes"
    reason = path.with_name(path.stem + ".reason.txt").read_text()
    assert "CANNOT_UNDERSTAND" in reason
