"""The worker's Celery application.

torch and MONAI are imported once, in the worker's main process, before the
pool forks (``worker_init``): a pool process, first or replacement, then starts
without importing anything heavy, and reports ready to Celery in well under a
second even on a loaded machine. Importing torch does not initialise CUDA (it
is initialised lazily, on first use), so forked processes can still use the
GPU; the main process never touches it. ``worker.process_start_timeout_s``
leaves a replacement time to start when the machine is very busy.
"""

from __future__ import annotations

import logging
import os

from celery import Celery, bootsteps
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_process_init,
)

from dicom_node.broker import celery_config
from dicom_node.logs import decorate_handlers
from dicom_node.settings import Settings
from pipelines.bundle_check import CheckLevel, check_pipeline
from pipelines.spec import PipelineSpec, load_pipeline_specs
from worker.tasks import register_tasks

logger = logging.getLogger(__name__)

__all__ = ["NodeInfo", "make_celery", "preload_compute"]


def preload_compute(device: str) -> None:
    """Import torch and the pipelines in the worker's main process, before the pool forks.

    Parameters
    ----------
    device : str
        ``worker.device``: on "cpu" CUDA is hidden from the whole process tree,
        so a CPU worker on a GPU machine (``worker.gpus: none``) never takes GPU 0
        (the model loaders pick "cuda:0" whenever CUDA is visible).

    Note
    ----
    Nothing here initialises CUDA: torch does that lazily, on first use, which
    only ever happens in a pool process.
    """
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import pipelines.run  # noqa: F401  (torch and MONAI: paid once, shared by every fork)


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
    _check_bundles(specs)
    longest = max((spec.time_limit_s for spec in specs.values()), default=900)
    app = Celery("worker")
    app.conf.update(celery_config(settings.broker, longest))
    memory = settings.worker.max_memory_per_child_mb
    app.conf.update(
        worker_max_tasks_per_child=settings.worker.max_tasks_per_child,
        # Celery counts KiB; a process above it is replaced after its current job.
        worker_max_memory_per_child=memory * 1024 if memory else None,
        worker_proc_alive_timeout=settings.worker.process_start_timeout_s,
        dicom_node_settings=settings,
    )
    register_tasks(app)
    app.steps["worker"].add(NodeInfo)
    concurrency = settings.worker.concurrency
    device = settings.worker.device

    def _preload(**_: object) -> None:
        preload_compute(device)

    def _init_pool_process(**_: object) -> None:
        """Fit torch to this pool process (CUDA initialises here, after the fork)."""
        import torch  # already imported by the main process: no cost here

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            logger.info("pool process on %s (CUDA %s)", name, torch.version.cuda)
            return
        # N processes on C cores: C/N threads each, or they fight over the cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // concurrency))
        logger.info("pool process on CPU (%d threads)", torch.get_num_threads())

    worker_init.connect(_preload, weak=False)
    worker_process_init.connect(_init_pool_process, weak=False)

    def _decorate(logger: logging.Logger, **_: object) -> None:
        """Celery's own handlers get the node's log format and the job/study fields."""
        decorate_handlers(logger, settings.log_format)

    after_setup_logger.connect(_decorate, weak=False)
    after_setup_task_logger.connect(_decorate, weak=False)
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
