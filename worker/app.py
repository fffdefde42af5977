"""The worker's Celery application."""

from __future__ import annotations

from celery import Celery

from dicom_node.broker import celery_config
from dicom_node.settings import Settings
from worker.tasks import register_tasks

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
    app = Celery("worker")
    app.conf.update(celery_config(settings.broker))
    app.conf.update(
        worker_max_tasks_per_child=settings.worker.max_tasks_per_child,
        task_queues=None,
        dicom_node_settings=settings,
    )
    register_tasks(app)
    return app
