"""A pool process killed on a loaded machine is replaced, and the next job runs.

Celery gives a new pool process ``worker_proc_alive_timeout`` (4 s by default)
to report ready, and kills it otherwise. When every replacement imported torch
on its own, a busy machine made each of them miss that deadline: the
replacements were killed one after another and the queue stood still. Here
the worker and four CPU burners share one core, so a replacement gets about a
fifth of it; the next study must still be processed, and the worker log must
not show a single replacement timed out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dicom_node.phantom import ChestPhantom
from dicom_node.services import OrthancHandle, wait_until
from dicom_node.state import JobState, StateDB
from tests.node_process import child_pids, run_node, run_worker, storescu, write_config

pytestmark = [pytest.mark.slow, pytest.mark.serial]

#: What Celery logs when it kills a pool process that did not start in time.
TIMED_OUT = "Timed out waiting for UP message"
BURNERS = 4
CORE = 0


@contextmanager
def _burning(core: int, count: int) -> Iterator[None]:
    """Processes that keep one core busy until the block ends."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        for proc in burners:
            os.sched_setaffinity(proc.pid, {core})
        yield
    finally:
        for proc in burners:
            proc.kill()
            proc.wait(timeout=10)


def test_pool_process_killed_under_load_is_replaced_and_the_next_job_runs(
    tmp_path: Path, broker_url: str, orthanc: OrthancHandle
) -> None:
    study = ChestPhantom(slices=12, size=96, pixel_spacing_mm=3.7, slice_thickness_mm=5.0).write(
        tmp_path / "ct"
    )
    config = write_config(tmp_path, broker_url, orthanc.dicom_port)
    log = tmp_path / "worker.log"
    with run_node(config) as node, run_worker(config) as worker:
        wait_until(lambda: " ready." in log.read_text(errors="replace"), 120, "the worker")
        # Replacements fork from the main process, so they inherit its core.
        os.sched_setaffinity(worker.pid, {CORE})
        first = child_pids(worker.pid)
        assert first, "the Celery worker has no pool process"
        with _burning(CORE, BURNERS):
            for pid in first:
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: bool(set(child_pids(worker.pid)) - set(first)), 60, "a replacement")
            assert storescu(node.port, list(study.paths)).returncode == 0
            db = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
            try:

                def done() -> bool:
                    assert TIMED_OUT not in log.read_text(errors="replace"), "a replacement died"
                    jobs = db.jobs(list(JobState))
                    assert all(j.state not in (JobState.FAILED, JobState.SKIPPED) for j in jobs)
                    return bool(jobs) and all(j.state is JobState.DONE for j in jobs)

                wait_until(done, 300, "the next job DONE on the replacement", interval_s=0.5)
            finally:
                db.close()
    assert TIMED_OUT not in log.read_text(errors="replace")
