"""One pinned worker process per GPU. No GPU exists here, so nvidia-smi is a stand-in
script listing two; everything else (Celery, Redis, the processes) is real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.broker import make_producer
from dicom_node.gpus import Gpu, select_gpus
from dicom_node.services import wait_until
from dicom_node.settings import BrokerSettings
from tests.node_process import REPO, write_config


def test_select_gpus() -> None:
    found = [Gpu(0, "A100"), Gpu(1, "A100")]
    assert select_gpus("1", found) == [Gpu(1, "A100")]
    assert select_gpus("auto", []) == []
    with pytest.raises(ValueError, match="not present"):
        select_gpus("2", found)
    with pytest.raises(ValueError, match="indices"):
        select_gpus("first", found)


@pytest.mark.slow
def test_worker_starts_one_pinned_process_per_gpu(tmp_path: Path, broker_url: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, Fake GPU A'\necho '1, Fake GPU B'\n")
    fake.chmod(0o755)
    config = write_config(tmp_path, broker_url, 1)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    parent = subprocess.Popen(
        [sys.executable, "-m", "dicom_node", "worker", "--config", str(config)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    producer = make_producer(BrokerSettings(url=broker_url))
    try:
        names: set[str] = set()

        def both_answer() -> bool:
            replies = producer.control.ping(timeout=1.0) or []
            names.update(name for reply in replies for name in reply)
            return {n.split("@")[0] for n in names} >= {"gpu0", "gpu1"}

        wait_until(both_answer, 120, "two GPU workers answering ping", interval_s=0.5)
        children = subprocess.run(
            ["pgrep", "-P", str(parent.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        pinned = set()
        for pid in children:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            pinned |= {e.decode() for e in environ if e.startswith(b"CUDA_VISIBLE_DEVICES=")}
        assert pinned == {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"}
    finally:
        parent.send_signal(signal.SIGTERM)
        output = parent.communicate(timeout=60)[0]
    assert "starting one worker per GPU (0: Fake GPU A, 1: Fake GPU B)" in output
    assert parent.returncode == 0
