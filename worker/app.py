"""The worker's Celery application."""

from __future__ import annotations

import logging
import os

from celery import Celery, bootsteps
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init

from dicom_node.broker import celery_config
from dicom_node.logs import decorate_handlers
from dicom_node.settings import Settings
from pipelines.spec import load_pipeline_specs
from worker.tasks import register_tasks

logger = logging.getLogger(__name__)

__all__ = ["NodeInfo", "make_celery"]


class NodeInfo(bootsteps.StartStopStep):  # type: ignore[misc]
    """Adds what the node's dashboard shows to the worker's ``stats`` answer.

    One broadcast then tells the dashboard each worker's device and queues
    (``{"dicom_node": {"device": "cuda:0", "queues": ["gpu"]}}``). A start-stop
    step, because Celery gathers ``info`` from those only.
    """

    def info(self, worker: object) -> dict[str, object]:
        """This worker's device and the queues it consumes."""
        app = getattr(worker, "app", None)
        consumed = app.amqp.queues.consume_from if app is not None else None
        settings: Settings | None = app.conf.dicom_node_settings if app is not None else None
        return {
            "dicom_node": {
                "device": settings.worker.device if settings is not None else "unknown",
                "queues": sorted(consumed or []),
            }
        }


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
    app.steps["worker"].add(NodeInfo)
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

    def _decorate(logger: logging.Logger, **_: object) -> None:
        """Celery's own handlers get the node's log format and the job/study fields."""
        decorate_handlers(logger, settings.log_format)

    after_setup_logger.connect(_decorate, weak=False)
    after_setup_task_logger.connect(_decorate, weak=False)
    return app
