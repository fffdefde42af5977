"""The worker's Celery application."""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import worker_process_init

from dicom_node.broker import celery_config
from dicom_node.settings import Settings
from pipelines.bundle_check import CheckLevel, check_pipeline
from pipelines.spec import PipelineSpec, load_pipeline_specs
from worker.tasks import register_tasks

logger = logging.getLogger(__name__)

__all__ = ["make_celery"]


def make_celery(settings: Settings) -> Celery:
    """Build the worker's Celery app with its tasks registered.

    Parameters
    ----------
    settings : Settings
        Node settings: broker URLs, spool and pipeline folders, worker limits.

    Returns
    -------
    celery.Celery
        The app; ``app.conf.dicom_node_settings`` carries the settings to tasks.
    """
    specs = load_pipeline_specs(settings.pipelines_dir)
    _check_bundles(specs)
    longest = max((spec.time_limit_s for spec in specs.values()), default=900)
    app = Celery("worker")
    app.conf.update(celery_config(settings.broker, longest))
    memory = settings.worker.max_memory_per_child_mb
    app.conf.update(
        worker_max_tasks_per_child=settings.worker.max_tasks_per_child,
        # Celery counts KiB; a process above it is replaced after its current job.
        worker_max_memory_per_child=memory * 1024 if memory else None,
        dicom_node_settings=settings,
    )
    register_tasks(app)
    concurrency = settings.worker.concurrency
    device = settings.worker.device

    def _init_pool_process(**_: object) -> None:
        """Set up torch in each pool process (CUDA initialises here, after the fork)."""
        if device == "cpu":
            # A CPU worker on a GPU machine (worker.gpus: none) must not take GPU 0:
            # the model loaders pick "cuda:0" whenever CUDA is visible.
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        import torch  # the parent never initialises CUDA: forked children could not use it

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            logger.info("pool process on %s (CUDA %s)", name, torch.version.cuda)
            return
        # N processes on C cores: C/N threads each, or they fight over the cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // concurrency))
        logger.info("pool process on CPU (%d threads)", torch.get_num_threads())

    worker_process_init.connect(_init_pool_process, weak=False)
    return app


def _check_bundles(specs: dict[str, PipelineSpec]) -> None:
    """Name, at worker start, what an enabled bundle pipeline lacks on this worker.

    The worker still starts (other pipelines may run, and a job of a broken one
    fails with its reason); the log says at once what to install.
    """
    for spec in specs.values():
        if not spec.enabled:
            continue
        for result in check_pipeline(spec):
            level = logging.ERROR if result.level is CheckLevel.ERROR else logging.WARNING
            logger.log(level, "pipeline %s: %s", spec.name, result.message)
