"""Prometheus metrics of the node, computed at scrape time from what survives restarts.

``deploy/monitoring/`` holds a Grafana dashboard over these and Prometheus alert
rules (a test checks that every metric they name is one this module exports).

The receiver may run in several processes (``scp.processes``) and the node may
restart; in-process counters would see only one process since its start. So
a custom collector reads the counters from the state DB (instances, bytes,
studies, associations, store failures, export failures), the refusals by
status from the quarantine's reason files, the job-stage durations from the
job events, and the live gauges from Redis and Celery, at each scrape.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from dicom_node.state import ExportState
from dicom_node.state.queries import StageDuration, StateQueries
from dicom_node.web.probe import BrokerProbe

__all__ = ["DURATION_BUCKETS_S", "NodeCollector", "QuarantineCounter", "histogram_buckets"]

logger = logging.getLogger(__name__)

#: Upper bounds of the job-stage duration histogram, in seconds.
DURATION_BUCKETS_S = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

_STATUS = re.compile(r"^(0x[0-9A-Fa-f]{4})\b")
#: The supervisor's reason for a job whose export ran out of attempts.
_EXPORT_FAILURE = re.compile(r"^export to (\S+) failed")


class QuarantineCounter:
    """Refusals by C-STORE status, from the quarantine's ``*.reason.txt`` files.

    Each refusal the receiver quarantined has a reason file that starts with
    its status (``0xC000 CANNOT_UNDERSTAND: ...``). Files never change once
    written, so each is read once and remembered. A 0xA700 answered because
    the disk was full leaves no file: it counts only in the store failures.

    Parameters
    ----------
    folder : pathlib.Path
        ``spool/quarantine``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seen: dict[str, str] = {}
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        """Refusals per status (``0xA900`` and so on)."""
        with self._lock:
            try:
                names = [e.name for e in os.scandir(self.folder) if e.name.endswith(".reason.txt")]
            except FileNotFoundError:
                names = []
            for name in names:
                if name in self._seen:
                    continue
                try:
                    first = (self.folder / name).read_text(encoding="utf-8", errors="replace")[:16]
                except OSError:
                    continue
                match = _STATUS.match(first)
                self._seen[name] = match.group(1).upper().replace("0X", "0x") if match else "other"
            out: dict[str, int] = defaultdict(int)
            for status in self._seen.values():
                out[status] += 1
            return dict(out)


def histogram_buckets(
    values: Sequence[float], bounds: Sequence[float] = DURATION_BUCKETS_S
) -> list[tuple[str, float]]:
    """Cumulative bucket counts of ``values`` in Prometheus's form.

    Parameters
    ----------
    values : Sequence[float]
        Observations.
    bounds : Sequence[float]
        Upper bounds, ascending; ``+Inf`` is added.

    Returns
    -------
    list[tuple[str, float]]
        ``(le, count of values <= le)`` pairs.

    Examples
    --------
    >>> histogram_buckets([0.2, 3.0], bounds=(1, 5))
    [('1', 1), ('5', 2), ('+Inf', 2)]
    """
    out: list[tuple[str, float]] = []
    for bound in bounds:
        label = str(int(bound)) if float(bound).is_integer() else str(bound)
        out.append((label, sum(1 for v in values if v <= bound)))
    out.append(("+Inf", len(values)))
    return out


class NodeCollector(Collector):
    """Collects the node's metrics at scrape time.

    Parameters
    ----------
    queries : StateQueries
        Reads over the state DB.
    probe : BrokerProbe
        Queue depths and workers (answers cached for a few seconds).
    spool_root : pathlib.Path
        The spool, for its disk use and quarantine.
    min_free_bytes : int
        The spool's free-space watermark.
    """

    def __init__(
        self, queries: StateQueries, probe: BrokerProbe, spool_root: Path, min_free_bytes: int
    ) -> None:
        self.queries = queries
        self.probe = probe
        self.spool_root = spool_root
        self.min_free_bytes = min_free_bytes
        self.quarantine = QuarantineCounter(spool_root / "quarantine")

    def collect(self) -> Iterator[Metric]:
        """Yield every metric; a failing source leaves its metrics out, not the scrape."""
        for part in (self._received, self._jobs, self._exports, self._broker, self._spool):
            try:
                yield from part()
            except Exception:  # a scrape must answer even when one source is down
                logger.exception("metrics: %s failed", part.__name__)

    def _received(self) -> Iterable[Metric]:
        totals = self.queries.totals()
        yield CounterMetricFamily(
            "dicom_node_instances_received", "Instances stored (unique SOP Instance UIDs).",
            value=totals.instances,
        )  # fmt: skip
        yield CounterMetricFamily(
            "dicom_node_received_bytes", "Bytes of the instances stored.", value=totals.bytes
        )
        yield CounterMetricFamily(
            "dicom_node_studies_received", "Studies seen by the receiver.", value=totals.studies
        )
        assoc = CounterMetricFamily(
            "dicom_node_associations", "Associations accepted, by how they ended.",
            labels=["outcome"],
        )  # fmt: skip
        for outcome, count in sorted(self.queries.associations_by_outcome().items()):
            assoc.add_metric([outcome], count)
        yield assoc
        yield CounterMetricFamily(
            "dicom_node_store_failures",
            "C-STORE requests answered with a failure status (closed associations).",
            value=self.queries.store_failures(),
        )
        refusals = CounterMetricFamily(
            "dicom_node_store_refusals", "Refused and quarantined instances, by C-STORE status.",
            labels=["status"],
        )  # fmt: skip
        for status, count in sorted(self.quarantine.counts().items()):
            refusals.add_metric([status], count)
        yield refusals

    def _jobs(self) -> Iterable[Metric]:
        states = GaugeMetricFamily("dicom_node_jobs", "Jobs in each state.", labels=["state"])
        for state, count in self.queries.job_state_counts().items():
            states.add_metric([state.value], count)
        yield states
        durations: dict[tuple[str, str], list[float]] = defaultdict(list)
        for item in self.queries.stage_durations():
            durations[(item.pipeline, _stage_label(item))].append(item.seconds)
        histogram = HistogramMetricFamily(
            "dicom_node_job_stage_duration_seconds",
            "Time jobs spent per stage: waiting (study arriving), QUEUED, RUNNING, EXPORTING, "
            "total (created to DONE).",
            labels=["pipeline", "stage"],
        )
        for (pipeline, stage), values in sorted(durations.items()):
            histogram.add_metric([pipeline, stage], histogram_buckets(values), sum(values))
        yield histogram

    def _exports(self) -> Iterable[Metric]:
        failures = CounterMetricFamily(
            "dicom_node_job_failures",
            "Times a job ended FAILED, by pipeline and cause (export or pipeline).",
            labels=["pipeline", "cause"],
        )
        export_jobs = CounterMetricFamily(
            "dicom_node_export_job_failures",
            "Jobs that ended FAILED because a destination refused their objects to the last "
            "attempt, by destination.",
            labels=["destination"],
        )
        by_cause: dict[tuple[str, str], int] = defaultdict(int)
        by_destination: dict[str, int] = defaultdict(int)
        for pipeline, reason in self.queries.failure_events():
            match = _EXPORT_FAILURE.match(reason)
            by_cause[(pipeline, "export" if match else "pipeline")] += 1
            if match:
                by_destination[match.group(1)] += 1
        for (pipeline, cause), count in sorted(by_cause.items()):
            failures.add_metric([pipeline, cause], count)
        for destination, count in sorted(by_destination.items()):
            export_jobs.add_metric([destination], count)
        yield failures
        yield export_jobs
        for state, name, text in (
            (ExportState.PENDING, "dicom_node_exports_pending",
             "Result objects waiting to be sent to a destination (the export backlog)."),
            (ExportState.FAILED, "dicom_node_exports_given_up",
             "Result objects a destination has not received and nobody retries now."),
        ):  # fmt: skip
            gauge = GaugeMetricFamily(name, text, labels=["destination"])
            for destination, count in sorted(self.queries.exports_in_state(state).items()):
                gauge.add_metric([destination], count)
            yield gauge

    def _broker(self) -> Iterable[Metric]:
        depths = self.probe.queue_depths()
        yield GaugeMetricFamily(
            "dicom_node_broker_up", "Whether Redis answered.", value=1 if depths.ok else 0
        )
        queue = GaugeMetricFamily(
            "dicom_node_queue_depth", "Jobs waiting in each Celery queue.", labels=["queue"]
        )
        for name, depth in sorted(depths.depths.items()):
            queue.add_metric([name], depth)
        yield queue
        seen = self.probe.workers()
        workers = GaugeMetricFamily(
            "dicom_node_workers", "Workers that answered the broadcast, by device.",
            labels=["device"],
        )  # fmt: skip
        by_device: dict[str, int] = defaultdict(int)
        for worker in seen.workers:
            by_device[worker.device] += 1
        for device, count in sorted(by_device.items()):
            workers.add_metric([device], count)
        yield workers
        yield GaugeMetricFamily(
            "dicom_node_workers_online", "Workers that answered the broadcast.",
            value=len(seen.workers),
        )  # fmt: skip
        per_queue = GaugeMetricFamily(
            "dicom_node_queue_workers", "Live workers consuming each queue the node uses.",
            labels=["queue"],
        )  # fmt: skip
        for name in self.probe.queues:
            per_queue.add_metric([name], sum(name in w.queues for w in seen.workers))
        yield per_queue

    def _spool(self) -> Iterable[Metric]:
        usage = shutil.disk_usage(self.spool_root)
        yield GaugeMetricFamily(
            "dicom_node_spool_free_bytes", "Free bytes on the spool's disk.", value=usage.free
        )
        yield GaugeMetricFamily(
            "dicom_node_spool_min_free_bytes", "Watermark below which instances are refused.",
            value=self.min_free_bytes,
        )  # fmt: skip


def _stage_label(item: StageDuration) -> str:
    return item.stage.lower() if item.stage.isupper() else item.stage
