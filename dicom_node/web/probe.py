"""What the broker knows: queue depths (Redis ``LLEN``) and the workers online (Celery).

Both questions go over the network, so each has a short timeout, and answers
are kept for a few seconds: a dashboard refreshed by several admins and a
Prometheus scrape ask the broker at most once per period.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from dicom_node.broker import make_producer
from dicom_node.settings import BrokerSettings

__all__ = ["BrokerProbe", "QueueDepths", "WorkerInfo", "WorkersSeen", "worker_device"]

logger = logging.getLogger(__name__)

#: kombu's Redis transport keeps messages of priority 3, 6 and 9 in keys of their own.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)

_DEVICE_IN_NAME = re.compile(r"(cuda[:\-_]?\d+|gpu[\-_]?\d*|cuda|cpu)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker that answered the broadcast."""

    hostname: str
    device: str
    processes: int | None
    #: Queues it consumes.
    queues: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkersSeen:
    """The answer to "who is online": ``ok`` is False when the broker could not be asked."""

    ok: bool
    workers: tuple[WorkerInfo, ...]


@dataclass(frozen=True, slots=True)
class QueueDepths:
    """Messages waiting per queue; ``ok`` is False when Redis did not answer."""

    ok: bool
    depths: dict[str, int]


def worker_device(hostname: str, stats: Mapping[str, Any]) -> str:
    """Return the device a worker runs on, from its stats or its host name.

    A worker may report it as a custom stat (``{"dicom_node": {"device": "cuda:0"}}``
    or ``{"device": "cuda:0"}``) or in its node name (``dicom-node-cuda0@host``).

    Parameters
    ----------
    hostname : str
        The Celery node name, ``name@host``.
    stats : Mapping[str, Any]
        The worker's answer to ``inspect().stats()``.

    Returns
    -------
    str
        e.g. ``cuda:0``, ``gpu1``, ``cpu``, or ``unknown``.

    Examples
    --------
    >>> worker_device("dicom-node-gpu1@box", {})
    'gpu1'
    >>> worker_device("w@box", {"dicom_node": {"device": "cuda:0"}})
    'cuda:0'
    """
    custom = stats.get("dicom_node")
    if isinstance(custom, Mapping) and custom.get("device"):
        return str(custom["device"])
    if stats.get("device"):
        return str(stats["device"])
    name = hostname.split("@", 1)[0]
    match = _DEVICE_IN_NAME.search(name)
    return match.group(1).lower() if match else "unknown"


class BrokerProbe:
    """Asks Redis for queue depths and Celery for the workers online.

    Parameters
    ----------
    broker : BrokerSettings
        The broker URL (Redis).
    queues : Iterable[str]
        Queue names to measure, e.g. ``cpu`` and ``gpu``.
    ping_timeout_s : float
        How long a worker broadcast waits for answers.
    cache_s : float
        How long an answer is reused.
    """

    def __init__(
        self,
        broker: BrokerSettings,
        queues: Iterable[str],
        ping_timeout_s: float = 1.0,
        cache_s: float = 5.0,
    ) -> None:
        self.queues = tuple(dict.fromkeys(queues))
        self.ping_timeout_s = ping_timeout_s
        self.cache_s = cache_s
        self._broker = broker
        self._redis = redis.Redis.from_url(broker.url, socket_timeout=2, socket_connect_timeout=2)
        self._celery: Celery | None = None
        self._lock = threading.Lock()
        self._workers: tuple[float, WorkersSeen] | None = None
        self._depths: tuple[float, QueueDepths] | None = None

    def close(self) -> None:
        """Close the connections."""
        self._redis.close()
        if self._celery is not None:
            self._celery.close()

    def ping(self) -> bool:
        """Whether Redis answers PING."""
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def _app(self) -> Celery:
        with self._lock:
            if self._celery is None:
                self._celery = make_producer(self._broker)
            return self._celery

    def revoke(self, task_id: str, *, terminate: bool = False) -> bool:
        """Ask workers to drop a task; False if the broker is away.

        Parameters
        ----------
        task_id : str
            The Celery task ID.
        terminate : bool
            Also end the pool process running it, if one is (SIGTERM; the worker
            starts a fresh one). Without it a running task finishes.
        """
        try:
            self._app().control.revoke(task_id, terminate=terminate, signal="SIGTERM")
        except Exception as exc:  # kombu raises several types when Redis is away
            logger.warning("revoke failed: %s", type(exc).__name__)
            return False
        return True

    def queue_depths(self) -> QueueDepths:
        """Messages waiting in each queue (all priorities), cached for ``cache_s``."""
        with self._lock:
            if self._depths is not None and time.monotonic() - self._depths[0] < self.cache_s:
                return self._depths[1]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for queue in self.queues:
                pipe.llen(queue)
                for step in _PRIORITY_STEPS:
                    pipe.llen(f"{queue}{_PRIORITY_SEPARATOR}{step}")
            lengths = pipe.execute()
            per_queue = 1 + len(_PRIORITY_STEPS)
            depths = QueueDepths(
                True,
                {
                    queue: int(sum(lengths[i * per_queue : (i + 1) * per_queue]))
                    for i, queue in enumerate(self.queues)
                },
            )
        except redis.RedisError as exc:
            logger.warning("queue depths unavailable: %s", type(exc).__name__)
            depths = QueueDepths(False, {})
        with self._lock:
            self._depths = (time.monotonic(), depths)
        return depths

    def workers(self) -> WorkersSeen:
        """Workers that answer a Celery ``stats`` broadcast, cached for ``cache_s``."""
        with self._lock:
            if self._workers is not None and time.monotonic() - self._workers[0] < self.cache_s:
                return self._workers[1]
        if not self.ping():
            # Celery would retry its connection for seconds; Redis has already said no.
            seen = WorkersSeen(False, ())
            with self._lock:
                self._workers = (time.monotonic(), seen)
            return seen
        try:
            replies = self._app().control.inspect(timeout=self.ping_timeout_s).stats() or {}
            seen = WorkersSeen(
                True,
                tuple(
                    WorkerInfo(
                        hostname=name,
                        device=worker_device(name, stats or {}),
                        processes=_processes(stats or {}),
                        queues=_queues(stats or {}),
                    )
                    for name, stats in sorted(replies.items())
                ),
            )
        except Exception as exc:  # kombu raises several types when Redis is away
            logger.warning("worker broadcast failed: %s", type(exc).__name__)
            seen = WorkersSeen(False, ())
        with self._lock:
            self._workers = (time.monotonic(), seen)
        return seen


def _queues(stats: Mapping[str, Any]) -> tuple[str, ...]:
    """The queues a worker reported (:class:`worker.app.NodeInfo`); () if it did not."""
    custom = stats.get("dicom_node")
    queues = custom.get("queues") if isinstance(custom, Mapping) else None
    return tuple(str(q) for q in queues) if isinstance(queues, list) else ()


def _processes(stats: Mapping[str, Any]) -> int | None:
    pool = stats.get("pool")
    if isinstance(pool, Mapping):
        count = pool.get("max-concurrency")
        if isinstance(count, int):
            return count
    return None
