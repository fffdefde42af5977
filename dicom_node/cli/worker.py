"""``dicom-node worker``: Celery workers that run pipelines, one process per GPU or on CPU."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import click

from dicom_node.cli.options import build_settings, common_options, configure_logging
from dicom_node.gpus import Gpu, list_gpus, select_gpus
from dicom_node.settings import Settings

logger = logging.getLogger(__name__)


def _run_celery(settings: Settings, queues: list[str], concurrency: int, name: str) -> int:
    from worker.app import make_celery  # torch and MONAI load here, not in the node

    worker_settings = settings.worker.model_copy(update={"concurrency": concurrency})
    app = make_celery(settings.model_copy(update={"worker": worker_settings}))
    argv = [
        "worker",
        "--queues", ",".join(queues),
        "--concurrency", str(concurrency),
        "--pool", "prefork",
        "--hostname", f"{name}@%h",
        "--loglevel", logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        "--without-gossip",
        "--without-mingle",
    ]  # fmt: skip
    app.worker_main(argv)
    return 0


def _gpu_child(config: Path | None, gpu: Gpu, queues: list[str]) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES=str(gpu.index),
        DICOM_NODE_WORKER__DEVICE="cuda:0",  # the only device the child can see
        DICOM_NODE_WORKER__GPUS="none",
        DICOM_NODE_WORKER__CONCURRENCY="1",
    )
    args = [sys.executable, "-m", "dicom_node", "worker", "--queues", ",".join(queues)]
    if config is not None:
        args += ["--config", str(config)]
    args += ["--name", f"gpu{gpu.index}"]
    return subprocess.Popen(args, env=env)


def _supervise_gpu_children(config: Path | None, gpus: list[Gpu], queues: list[str]) -> int:
    """Run one pinned worker per GPU; restart one that dies; stop all on a signal."""
    children = {gpu.index: _gpu_child(config, gpu, queues) for gpu in gpus}
    stopping = False

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    by_index = {gpu.index: gpu for gpu in gpus}
    while not stopping:
        time.sleep(2)
        for index, child in list(children.items()):
            if child.poll() is not None and not stopping:
                logger.error("worker on GPU %d exited (%s); restarting", index, child.returncode)
                children[index] = _gpu_child(config, by_index[index], queues)
    for child in children.values():
        child.wait()
    return 0


@click.command()
@common_options
@click.option("-Q", "--queues", default=None, help="Comma-separated queues (default from config).")
@click.option("--concurrency", type=int, default=None, help="Worker processes (CPU mode).")
@click.option("--name", default=None, help="Worker name (default: cpu, or gpuN per GPU).")
def worker(
    config: Path | None,
    verbose: int,
    quiet: bool,
    queues: str | None,
    concurrency: int | None,
    name: str | None,
) -> int:
    """Run pipeline workers: one pinned process per GPU, or CPU processes where none."""
    settings = build_settings(config)
    configure_logging(verbose, quiet, settings.log_level, settings.log_format)
    queue_list = queues.split(",") if queues else list(settings.worker.queues)
    if settings.worker.device == "cpu":
        try:
            gpus = select_gpus(settings.worker.gpus, list_gpus())
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        if gpus:
            gpu_queues = list(dict.fromkeys(["gpu", *queue_list]))
            names = ", ".join(f"{g.index}: {g.name}" for g in gpus)
            click.echo(f"starting one worker per GPU ({names}) on queues {gpu_queues}")
            return _supervise_gpu_children(config, gpus, gpu_queues)
    return _run_celery(
        settings,
        queue_list,
        concurrency or settings.worker.concurrency,
        name or ("cpu" if settings.worker.device == "cpu" else "gpu"),
    )
