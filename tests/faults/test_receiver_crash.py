"""SIGKILL the node while four senders are mid-study: nothing acknowledged may be lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.services import wait_until
from dicom_node.state import StateDB, StudyState
from dicom_node.state.schema import Instance, Study
from tests.node_process import run_node, storescu, write_config

pytestmark = pytest.mark.slow

_SENDING = re.compile(r"Sending file: (\S+)")


def _acknowledged(output: str) -> set[Path]:
    """Files storescu -v reports as answered with Success."""
    acked: set[Path] = set()
    current: Path | None = None
    for line in output.splitlines():
        match = _SENDING.search(line)
        if match:
            current = Path(match.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            acked.add(current)
            current = None
    return acked


def _count(db: StateDB) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count(Instance.sop_instance_uid))) or 0)


@pytest.mark.parametrize("round_", [1, 2])
def test_sigkill_mid_ingest_loses_no_acknowledged_instance(
    tmp_path: Path, broker_url: str, scp_engine: str, round_: int
) -> None:
    studies: list[PhantomStudy] = [
        ChestPhantom(slices=40, size=128, pixel_spacing_mm=2.8, seed=i).write(tmp_path / f"s{i}")
        for i in range(4)
    ]
    config = write_config(
        tmp_path,
        broker_url,
        1,
        scp={"engine": scp_engine},
        stability={"quiet_seconds": 3, "poll_seconds": 0.25},
    )
    db_url = f"sqlite:///{tmp_path / 'spool' / 'state.db'}"
    with run_node(config) as node:
        senders = [
            subprocess.Popen(
                [
                    "storescu",
                    "-v",
                    "-aet",
                    f"SENDER{i}",
                    "-aec",
                    "DICOM_NODE",
                    "-to",
                    "5",
                    "-ta",
                    "5",
                    "-td",
                    "10",
                    "127.0.0.1",
                    str(node.port),
                    *map(str, s.paths),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=dict(os.environ, TCP_NODELAY="1"),
            )  # fmt: skip
            for i, s in enumerate(studies)
        ]
        db = StateDB(db_url)
        # Kill once the senders are well into their studies, never at a fixed time.
        wait_until(lambda: _count(db) >= 30 * round_, 60, "instances arriving", interval_s=0.02)
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=10)
        outputs = [p.communicate(timeout=60)[0] for p in senders]
        db.close()

    acked = set().union(*(_acknowledged(out) for out in outputs))
    total = sum(len(s.paths) for s in studies)
    assert 0 < len(acked) < total, "the kill must land mid-ingest for the test to mean anything"

    with run_node(config) as node:
        db = StateDB(db_url)
        spool_root = tmp_path / "spool"
        with db.session() as s:
            rows = {r.sop_instance_uid: r.path for r in s.scalars(select(Instance))}
        for path in acked:
            sop_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert sop_uid in rows, f"{path.name} was acknowledged but has no row"
            stored = pydicom.dcmread(spool_root / rows[sop_uid])
            assert stored.SOPInstanceUID == sop_uid
            assert stored.PixelData == pydicom.dcmread(path).PixelData

        # The senders retry what was not acknowledged; every study then completes.
        for study in studies:
            result = storescu(node.port, list(study.paths))
            assert result.returncode == 0, result.stdout + result.stderr

        def all_complete() -> bool:
            with db.session() as s:
                found = {st.study_uid: st for st in s.scalars(select(Study))}
            return all(
                uid in found
                and found[uid].state == StudyState.COMPLETE
                and found[uid].instance_count == 40
                for uid in (s.study_uid for s in studies)
            )

        wait_until(all_complete, 60, "studies complete after restart", interval_s=0.25)
        db.close()
