"""Studies per hour through the whole node, with 1 and with 2 CPU worker processes.

Each configuration gets a fresh Redis, a fresh Orthanc (the archive), a fresh
node (in this process) and one ``dicom-node worker`` with N pool processes. The
same phantom studies are sent to each; the clock runs from the first instance
sent to the last job DONE (results stored in Orthanc). On a machine with a GPU
it also runs one worker per GPU; where none is present it says so.

Run from the repository root::

    .venv/bin/python bench/throughput.py            # 4 studies of 120 slices 512x512
    .venv/bin/python bench/throughput.py --studies 6 --slices 100

It asserts nothing: it prints seconds, studies per hour and the scaling ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from dicom_node.broker import make_producer
from dicom_node.export import send_files
from dicom_node.gpus import list_gpus
from dicom_node.node import Node
from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.services import free_port, run_orthanc, run_redis, wait_until
from dicom_node.settings import BrokerSettings, DestinationSettings, load_settings
from dicom_node.state import JobState

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Result:
    """One configuration's run."""

    label: str
    seconds: float
    studies: int
    latencies: list[float]

    @property
    def per_hour(self) -> float:
        """Studies per hour."""
        return self.studies / self.seconds * 3600


@contextmanager
def _worker(config: Path, concurrency: int, log: Path, gpus: str) -> Iterator[None]:
    env = dict(os.environ, DICOM_NODE_WORKER__GPUS=gpus, TCP_NODELAY="1")
    args = [sys.executable, "-m", "dicom_node", "worker", "--config", str(config), "-q"]
    if gpus == "none":
        args += ["--concurrency", str(concurrency)]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run_once(
    folder: Path, studies: list[PhantomStudy], label: str, concurrency: int, gpus: str
) -> Result:
    """Send every study through a fresh node and worker; time until all are DONE."""
    with run_redis(folder / "redis") as redis, run_orthanc(folder / "orthanc") as orthanc:
        config = {
            "spool_dir": str(folder / "spool"),
            "pipelines_dir": str(REPO / "config" / "pipelines"),
            "scp": {"host": "127.0.0.1", "port": free_port(), "min_free_bytes": 0},
            "stability": {"quiet_seconds": 1, "poll_seconds": 0.2},
            "broker": {"url": redis.url},
            "job_poll_seconds": 0.2,
            "export": {
                "destinations": [
                    {"name": "archive", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                     "port": orthanc.dicom_port}
                ]
            },
        }  # fmt: skip
        config_path = folder / "node.yaml"
        config_path.write_text(yaml.safe_dump(config))
        node = Node(load_settings(config_path))
        handle = node.start()
        try:
            with _worker(config_path, concurrency, folder / "worker.log", gpus):
                producer = make_producer(BrokerSettings(url=redis.url))
                wait_until(lambda: bool(producer.control.ping(timeout=1.0)), 120, "worker")
                target = DestinationSettings(
                    name="node", ae_title="DICOM_NODE", host="127.0.0.1", port=handle.port
                )
                start = time.monotonic()
                sent_at: dict[str, float] = {}
                for study in studies:
                    results = send_files("BENCH", target, list(study.paths))
                    if not all(r.ok for r in results):
                        raise RuntimeError(f"{label}: the node refused instances")
                    sent_at[study.study_uid] = time.monotonic()
                done_at: dict[int, float] = {}

                def all_done() -> bool:
                    jobs = node.state.jobs(list(JobState))
                    bad = [j for j in jobs if j.state in (JobState.FAILED, JobState.SKIPPED)]
                    if bad:
                        raise RuntimeError(f"{label}: job {bad[0].id} {bad[0].reason}")
                    for job in jobs:
                        if job.state is JobState.DONE:
                            done_at.setdefault(job.id, time.monotonic())
                    return len(jobs) == len(studies) and len(done_at) == len(studies)

                wait_until(all_done, 1800, f"{label}: every job DONE", interval_s=0.1)
                seconds = time.monotonic() - start
                latencies = []
                for job in node.state.jobs([JobState.DONE]):
                    latencies.append(done_at[job.id] - sent_at[job.study_uid])
        finally:
            node.stop()
    return Result(label, seconds, len(studies), latencies)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4, help="studies per configuration")
    parser.add_argument("--slices", type=int, default=120, help="slices per study (512x512)")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    python = platform.python_version()
    print(f"machine: nproc={os.cpu_count()}, {platform.platform()}, python {python}")
    print(
        f"workload: {args.studies} phantom chest CT studies of {args.slices} slices 512x512, "
        "pipeline ct-body-lung (SEG + SR), exported to Orthanc by C-STORE"
    )
    print("clock: first instance sent -> last job DONE (results stored in the archive)")
    studies = [
        ChestPhantom(slices=args.slices, seed=i).write(folder / f"study{i}")
        for i in range(args.studies)
    ]
    results = [
        run_once(folder / "cpu1", studies, "CPU, 1 worker process", 1, "none"),
        run_once(folder / "cpu2", studies, "CPU, 2 worker processes", 2, "none"),
    ]
    gpus = list_gpus()
    if gpus:
        names = ", ".join(g.name for g in gpus)
        results.append(run_once(folder / "gpu", studies, f"GPU x{len(gpus)} ({names})", 1, "auto"))
    base = results[0].per_hour
    print()
    header = ("configuration", "seconds", "studies/h", "median latency s", "scaling")
    print(f"{header[0]:<34} {header[1]:>8} {header[2]:>10} {header[3]:>17} {header[4]:>8}")
    for r in results:
        print(
            f"{r.label:<34} {r.seconds:>8.1f} {r.per_hour:>10.0f} "
            f"{statistics.median(r.latencies):>17.1f} {r.per_hour / base:>8.2f}"
        )
    if not gpus:
        print("no GPU on this machine (nvidia-smi lists none): the GPU path was not measured")
    print(f"logs and spools: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
