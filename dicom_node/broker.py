"""The node's side of Celery: the shared configuration and sending jobs.

The node never imports the worker's task code: it sends ``worker.run_job`` by
name. Redis is only a transport (DESIGN.md promise 2): a job row is written
first (the outbox), then sent; the supervisor re-sends what was never sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.result import AsyncResult

from dicom_node.settings import BrokerSettings
from pipelines.manifest import JobRequest

__all__ = [
    "CHECK_PIPELINES_TASK",
    "RUN_JOB_TASK",
    "celery_config",
    "make_producer",
    "BrokerHoldings",
    "broker_holdings",
    "tasks_on_live_workers",
    "send_job",
    "task_state",
    "visibility_timeout",
    "workers_by_queue",
]

RUN_JOB_TASK = "worker.run_job"
#: The doctor's question to a worker: load these pipelines' models, say which load.
CHECK_PIPELINES_TASK = "worker.check_pipelines"


def visibility_timeout(longest_job_s: int) -> int:
    """Seconds before Redis gives an unacknowledged task to another worker.

    It must exceed the longest pipeline's hard time limit, or a long job still
    running would be handed out a second time (Celery's Redis caveat).

    Examples
    --------
    >>> visibility_timeout(900)
    3600
    >>> visibility_timeout(7200)
    15000
    """
    return max(3600, 2 * longest_job_s + 600)


def celery_config(settings: BrokerSettings, longest_job_s: int = 900) -> dict[str, Any]:
    """Celery settings shared by the node (producer) and the workers.

    Parameters
    ----------
    settings : BrokerSettings
        Broker and result backend URLs.
    longest_job_s : int
        The largest hard time limit of any pipeline (sets the visibility timeout).

    Returns
    -------
    dict[str, Any]
        Keyword settings for ``Celery.conf.update``.
    """
    return {
        "broker_url": settings.url,
        "result_backend": settings.backend_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Long GPU jobs: acknowledge after the work, requeue if the process dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "broker_transport_options": {"visibility_timeout": visibility_timeout(longest_job_s)},
        "result_expires": 7 * 24 * 3600,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": "cpu",
        "worker_hijack_root_logger": False,
    }


def make_producer(settings: BrokerSettings, longest_job_s: int = 900) -> Celery:
    """A Celery app that only sends tasks and reads their states."""
    app = Celery("dicom_node")
    app.conf.update(celery_config(settings, longest_job_s))
    return app


def send_job(
    app: Celery, request: JobRequest, *, queue: str, soft_time_limit: int, time_limit: int
) -> str:
    """Publish one job; the task ID is derived from the job and attempt.

    Raises
    ------
    kombu.exceptions.OperationalError
        If the broker cannot be reached after a short retry; the job stays
        in the outbox and is sent on a later pass.
    """
    task_id = f"job-{request.job_id}-{request.attempt}"
    app.send_task(
        RUN_JOB_TASK,
        args=[request.model_dump(mode="json")],
        task_id=task_id,
        queue=queue,
        soft_time_limit=soft_time_limit,
        time_limit=time_limit,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )
    return task_id


def task_state(app: Celery, task_id: str) -> str:
    """Celery's state of a task (PENDING, STARTED, SUCCESS, FAILURE, ...)."""
    return str(AsyncResult(task_id, app=app).state)


def _task_id(raw: bytes | str) -> str | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if isinstance(message, list):  # the "unacked" hash holds [message, exchange, key]
        message = message[0] if message else {}
    headers = message.get("headers", {}) if isinstance(message, dict) else {}
    task_id = headers.get("id")
    return str(task_id) if task_id else None


@dataclass(frozen=True, slots=True)
class BrokerHoldings:
    """Task IDs the broker holds: waiting in a queue, or reserved by some worker."""

    queued: frozenset[str]
    reserved: frozenset[str]


def broker_holdings(broker_url: str, queues: list[str]) -> BrokerHoldings:
    """What the broker still holds: tasks waiting in a queue or reserved by a worker.

    Reads kombu's Redis layout directly (a list per queue, the ``unacked`` hash
    for reserved messages), because Celery's PENDING state cannot tell "waiting"
    from "lost with a flushed or restarted Redis".

    Parameters
    ----------
    broker_url : str
        The Redis broker URL.
    queues : list[str]
        Queue names to look in.

    Returns
    -------
    BrokerHoldings
        Queued and reserved task IDs.

    Raises
    ------
    redis.exceptions.RedisError
        If the broker cannot be reached: the caller must not conclude anything.
    """
    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        queued: set[str] = set()
        for queue in queues:
            # kombu spreads priorities over "queue", "queue\x06\x163", ...; read them all.
            for key in client.scan_iter(match=f"{queue}*", count=100):
                if client.type(key) != b"list":
                    continue
                queued.update(_task_id(raw) or "" for raw in client.lrange(key, 0, -1))
        reserved = {_task_id(raw) or "" for raw in client.hvals("unacked")}
        return BrokerHoldings(frozenset(queued - {""}), frozenset(reserved - {""}))
    finally:
        client.close()


def tasks_on_live_workers(app: Celery, timeout_s: float = 2.0) -> set[str] | None:
    """IDs of tasks that live workers report as running or reserved.

    A message stays in Redis's ``unacked`` hash until its visibility timeout
    (an hour or more) when the whole worker that reserved it is killed; asking
    the live workers tells such an orphan from a job that is still running.

    Returns
    -------
    set[str] or None
        The IDs, or None when the workers could not be asked (then nothing
        may be concluded).
    """
    try:
        inspector = app.control.inspect(timeout=timeout_s)
        active = inspector.active() or {}
        reserved = inspector.reserved() or {}
    except Exception:  # kombu raises several types when the broker is away
        return None
    ids: set[str] = set()
    for tasks in (*active.values(), *reserved.values()):
        ids.update(str(task.get("id")) for task in tasks if task.get("id"))
    return ids


def workers_by_queue(app: Celery, timeout_s: float = 2.0) -> dict[str, list[str]] | None:
    """The live workers consuming each queue (Celery's ``active_queues`` broadcast).

    Returns
    -------
    dict[str, list[str]] or None
        Queue name to worker node names (sorted); None when the broker could
        not be asked.
    """
    try:
        replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    except Exception:  # kombu raises several types when the broker is away
        return None
    out: dict[str, list[str]] = {}
    for worker, queues in sorted(replies.items()):
        for queue in queues or []:
            out.setdefault(str(queue.get("name")), []).append(worker)
    return out
