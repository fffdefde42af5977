"""scp.processes > 1: several receiver processes share one port and all store durably."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.phantom import ChestPhantom
from dicom_node.services import wait_until
from dicom_node.state import StateDB
from dicom_node.state.schema import Instance
from tests.node_process import run_node, write_config


def _listening_sockets(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


@pytest.mark.slow
def test_three_receiver_processes_share_the_port(tmp_path: Path, scp_engine: str) -> None:
    config = write_config(
        tmp_path, "redis://127.0.0.1:1/0", 1, scp={"processes": 3, "engine": scp_engine},
        stability={"quiet_seconds": 3600},
    )  # fmt: skip
    studies = [
        ChestPhantom(slices=10, size=64, pixel_spacing_mm=5.6, seed=i).write(tmp_path / f"s{i}")
        for i in range(6)
    ]
    with run_node(config) as node:
        wait_until(lambda: _listening_sockets(node.port) == 3, 60, "three listening sockets")
        senders = [
            subprocess.Popen(
                [
                    "storescu",
                    "-aet",
                    f"S{i}",
                    "-aec",
                    "DICOM_NODE",
                    "127.0.0.1",
                    str(node.port),
                    *map(str, s.paths),
                ],
                env=dict(os.environ, TCP_NODELAY="1"),
            )  # fmt: skip
            for i, s in enumerate(studies)
        ]
        assert [p.wait(timeout=120) for p in senders] == [0] * 6
        db = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
        with db.session() as s:
            rows = s.scalars(select(Instance)).all()
        db.close()
        assert len(rows) == 60
        assert _listening_sockets(node.port) == 3
        log = node.log_path.read_text()
        assert "2 extra receiver processes" in log
        assert "Address already in use" not in log
