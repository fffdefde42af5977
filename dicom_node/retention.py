"""Retention: the spool keeps what is still needed, and removes the rest on schedule.

Each study *settles* when it is complete, every job of it has ended (DONE,
SKIPPED or FAILED) and no export of it is pending; its settle time is the
later of its last instance and its last job's end. Then, by the rule of its
sender (``retention.sources``, else ``retention.defaults``) and its outcome:

- **done** (every job DONE or SKIPPED): received instances go ``done_after_s``
  after it settled;
- **failed** (a job FAILED): kept until retried (which unsettles it) or for
  ``failed_after_s``;
- **unrouted** (complete, no pipeline matched): ``unrouted_after_s``;
- **results** of a DONE or SKIPPED job (the objects in its job folder, the
  manifest stays) go ``results_after_s`` after the job ended, so they can be
  sent again until then; a FAILED job's results go with its study.

Nothing that is not yet processed or exported is ever a candidate. The state
DB keeps the history: rows are marked (``purged_at``), never deleted, so the
dashboard, the metrics and the job pages keep working without the files.

**Races.** The decision is re-checked and the rows are marked in one write
transaction (the write lock on SQLite, ``FOR UPDATE`` on PostgreSQL): a late
instance that re-opened the study, a retry that re-queued a job, or an export
made pending again since the plan make it skip the study. Each file's inode
is noted in that transaction; after the commit the file is renamed aside and
removed only if it is still that inode. A copy the receiver wrote after the
decision (a re-sent instance, stored again because its row says purged) is
put back. Folders left empty are removed; the spool's writer re-creates a
folder that vanished under it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.phi import study_tag
from dicom_node.settings import RetentionSettings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.schema import (
    TERMINAL_JOB_STATES,
    Export,
    ExportState,
    Instance,
    Job,
    JobState,
    Study,
    StudyState,
    utcnow,
)

__all__ = [
    "AGE_BUCKETS",
    "Candidate",
    "Retention",
    "RetentionReport",
    "UsageBucket",
]

logger = logging.getLogger(__name__)

#: Age buckets of the dashboard's disk use, (label, upper bound in seconds).
AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 1 h", 3600),
    ("1 h - 1 d", 86400),
    ("1 - 7 d", 7 * 86400),
    ("7 - 30 d", 30 * 86400),
    ("> 30 d", float("inf")),
)

_STATUS_FILE = "retention.json"


@dataclass(frozen=True, slots=True)
class Candidate:
    """Files retention will remove: a study's instances, or a job's results."""

    kind: str  # "instances" or "results"
    study_uid: str
    job_id: int | None
    calling_ae: str
    outcome: str  # done, failed, unrouted
    settled_at: datetime.datetime
    due_at: datetime.datetime
    bytes: int


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """Bytes on the spool received (instances) or written (results) within an age range."""

    label: str
    instance_bytes: int
    result_bytes: int


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one clean-up removed."""

    studies: int
    jobs: int
    files: int
    bytes: int
    skipped: int


def _folder_bytes(folder: Path, keep: Iterable[str] = ()) -> tuple[int, list[Path]]:
    kept = set(keep)
    total, files = 0, []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0, []
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and not entry.name.startswith(tuple(kept)):
            try:
                total += entry.stat().st_size
            except OSError:
                continue
            files.append(Path(entry.path))
    return total, files


class Retention:
    """Plans and runs the spool clean-up.

    Parameters
    ----------
    settings : RetentionSettings
        The rules.
    spool : Spool
        The spool.
    state : StateDB
        The state DB.
    """

    def __init__(self, settings: RetentionSettings, spool: Spool, state: StateDB) -> None:
        self.settings = settings
        self.spool = spool
        self.state = state

    # -- planning ---------------------------------------------------------------

    def _settled_studies(self) -> list[tuple[str, str, datetime.datetime, str, int]]:
        """(study, sender, settled at, outcome, bytes) of settled studies with files left."""
        with self.state.read_engine.connect() as conn:
            studies = conn.execute(
                select(Study.study_uid, Study.calling_ae, Study.last_received)
                .where(Study.state == StudyState.COMPLETE)
                .where(
                    Study.study_uid.in_(
                        select(Instance.study_uid).where(Instance.purged_at.is_(None))
                    )
                )
            ).all()
            jobs: dict[str, list[tuple[str, datetime.datetime]]] = defaultdict(list)
            for uid, state, updated in conn.execute(
                select(Job.study_uid, Job.state, Job.updated_at)
            ):
                jobs[uid].append((state, updated))
            pending = {
                uid
                for (uid,) in conn.execute(
                    select(Job.study_uid)
                    .join(Export, Export.job_id == Job.id)
                    .where(Export.state == ExportState.PENDING)
                    .distinct()
                )
            }
            sizes = dict(
                conn.execute(
                    select(Instance.study_uid, func.coalesce(func.sum(Instance.size), 0))
                    .where(Instance.purged_at.is_(None))
                    .group_by(Instance.study_uid)
                ).all()
            )
        out = []
        for uid, sender, last in studies:
            states = jobs.get(uid, [])
            if uid in pending or any(JobState(s) not in TERMINAL_JOB_STATES for s, _ in states):
                continue
            if not states:
                outcome = "unrouted"
            elif any(s == JobState.FAILED for s, _ in states):
                outcome = "failed"
            else:
                outcome = "done"
            settled = max([last, *(at for _, at in states)])
            out.append((uid, sender, settled, outcome, int(sizes.get(uid, 0))))
        return out

    def candidates(self, now: datetime.datetime, horizon_s: float = 0) -> list[Candidate]:
        """Everything due for removal by ``now + horizon_s``.

        Parameters
        ----------
        now : datetime.datetime
            Naive UTC.
        horizon_s : float
            Look this far ahead (the dashboard's "next clean-up").

        Returns
        -------
        list[Candidate]
            Studies' instances and jobs' results, earliest due first.
        """
        until = now + datetime.timedelta(seconds=horizon_s)
        out: list[Candidate] = []
        senders: dict[str, str] = {}
        for uid, sender, settled, outcome, size in self._settled_studies():
            senders[uid] = sender
            rule = self.settings.rule_for(sender)
            after = {
                "done": rule.done_after_s,
                "failed": rule.failed_after_s,
                "unrouted": rule.unrouted_after_s,
            }[outcome]
            if after is None:
                continue
            due = settled + datetime.timedelta(seconds=after)
            if due <= until:
                out.append(Candidate("instances", uid, None, sender, outcome, settled, due, size))
        out.extend(self._result_candidates(until))
        return sorted(out, key=lambda c: c.due_at)

    def _result_candidates(self, until: datetime.datetime) -> list[Candidate]:
        with self.state.read_engine.connect() as conn:
            rows = conn.execute(
                select(Job.id, Job.study_uid, Job.state, Job.updated_at, Study.calling_ae)
                .join(Study, Study.study_uid == Job.study_uid)
                .where(Job.state.in_([JobState.DONE, JobState.SKIPPED]))
                .where(Job.results_purged_at.is_(None))
                .where(
                    ~select(Export.id)
                    .where(Export.job_id == Job.id)
                    .where(Export.state == ExportState.PENDING)
                    .exists()
                )
            ).all()
        out = []
        for job_id, uid, _state, ended, sender in rows:
            after = self.settings.rule_for(sender).results_after_s
            if after is None:
                continue
            due = ended + datetime.timedelta(seconds=after)
            if due > until:
                continue
            size, files = _folder_bytes(self.spool.jobs_dir / str(job_id), keep=("manifest",))
            if files:
                out.append(Candidate("results", uid, job_id, sender, "done", ended, due, size))
        return out

    def usage(self, now: datetime.datetime) -> list[UsageBucket]:
        """Bytes on the spool by age: instances by arrival, results by job end."""
        instance_bytes: dict[str, int] = defaultdict(int)
        result_bytes: dict[str, int] = defaultdict(int)

        def bucket(at: datetime.datetime) -> str:
            age = (now - at).total_seconds()
            return next(label for label, bound in AGE_BUCKETS if age < bound)

        with self.state.read_engine.connect() as conn:
            for at, size in conn.execute(
                select(Instance.received_at, Instance.size).where(Instance.purged_at.is_(None))
            ):
                instance_bytes[bucket(at)] += int(size)
            jobs = conn.execute(
                select(Job.id, Job.updated_at).where(Job.results_purged_at.is_(None))
            ).all()
        for job_id, ended in jobs:
            size, _ = _folder_bytes(self.spool.jobs_dir / str(job_id))
            result_bytes[bucket(ended)] += size
        return [
            UsageBucket(label, instance_bytes[label], result_bytes[label])
            for label, _ in AGE_BUCKETS
        ]

    # -- running ----------------------------------------------------------------

    def run(self, now: datetime.datetime | None = None) -> RetentionReport:
        """Remove everything due now, study by study (the node's retention loop).

        Returns
        -------
        RetentionReport
            What was removed, and how many candidates changed meanwhile (skipped).
        """
        now = now or utcnow()
        studies = jobs = files = size = skipped = 0
        for candidate in self.candidates(now):
            if candidate.kind == "instances":
                removed = self._purge_study(candidate, now)
                studies += removed is not None
            else:
                removed = self._purge_results(candidate, now)
                jobs += removed is not None
            if removed is None:
                skipped += 1
                continue
            files += removed[0]
            size += removed[1]
        report = RetentionReport(studies, jobs, files, size, skipped)
        if files or skipped:
            logger.info(
                "retention: %d studies and %d result sets removed, %d files, %d bytes; "
                "%d changed meanwhile",
                studies, jobs, files, size, skipped,
            )  # fmt: skip
        self._write_status(now, report)
        return report

    def _purge_study(self, candidate: Candidate, now: datetime.datetime) -> tuple[int, int] | None:
        doomed: list[tuple[Path, tuple[int, int] | None]] = []
        freed = 0
        with self.state.session() as s:
            study = s.scalars(
                select(Study).where(Study.study_uid == candidate.study_uid).with_for_update()
            ).first()
            if study is None or study.state != StudyState.COMPLETE:
                return None
            if self._unsettled(s, candidate.study_uid):
                return None
            rows = s.scalars(
                select(Instance)
                .where(Instance.study_uid == candidate.study_uid)
                .where(Instance.purged_at.is_(None))
            ).all()
            for row in rows:
                path = self.spool.resolve(row.path)
                doomed.append((path, _identity(path)))
                row.purged_at = now
                freed += row.size
            study.purged_at = now
            study.purged_bytes = (study.purged_bytes or 0) + freed
        removed = sum(_remove(path, ident, self.spool.tmp_dir) for path, ident in doomed)
        for folder in {path.parent for path, _ in doomed}:
            for empty in (folder, folder.parent):
                try:
                    empty.rmdir()
                except OSError:
                    break  # not empty (a late instance) or already gone
        logger.info(
            "retention: study=%s (%s, %s) instances removed: %d files, %d bytes",
            study_tag(candidate.study_uid), candidate.calling_ae, candidate.outcome, removed, freed,
        )  # fmt: skip
        return removed, freed

    @staticmethod
    def _unsettled(session: Session, study_uid: str) -> bool:
        """Whether a job of the study runs again or an export of it is pending."""
        jobs = session.execute(select(Job.id, Job.state).where(Job.study_uid == study_uid)).all()
        if any(JobState(state) not in TERMINAL_JOB_STATES for _, state in jobs):
            return True
        ids = [job_id for job_id, _ in jobs]
        pending = session.execute(
            select(func.count(Export.id))
            .where(Export.job_id.in_(ids))
            .where(Export.state == ExportState.PENDING)
        ).scalar_one()
        return bool(pending)

    def _purge_results(
        self, candidate: Candidate, now: datetime.datetime
    ) -> tuple[int, int] | None:
        assert candidate.job_id is not None
        folder = self.spool.jobs_dir / str(candidate.job_id)
        with self.state.session() as s:
            job = s.scalars(select(Job).where(Job.id == candidate.job_id).with_for_update()).first()
            if job is None or job.state not in (JobState.DONE, JobState.SKIPPED):
                return None
            pending = s.execute(
                select(func.count(Export.id))
                .where(Export.job_id == job.id)
                .where(Export.state == ExportState.PENDING)
            ).scalar_one()
            if pending:
                return None
            size, files = _folder_bytes(folder, keep=("manifest",))
            doomed = [(path, _identity(path)) for path in files]
            job.results_purged_at = now
        removed = sum(_remove(path, ident, self.spool.tmp_dir) for path, ident in doomed)
        logger.info(
            "retention: job %d results removed: %d files, %d bytes", candidate.job_id, removed, size
        )
        return removed, size

    # -- status for the dashboard -----------------------------------------------------

    def _write_status(self, now: datetime.datetime, report: RetentionReport) -> None:
        status = {
            "last_run": now.isoformat(timespec="seconds") + "Z",
            "next_run": (now + datetime.timedelta(seconds=self.settings.interval_s)).isoformat(
                timespec="seconds"
            )
            + "Z",
            "last_report": asdict(report),
        }
        try:
            self.spool.write_atomic(
                self.spool.root / _STATUS_FILE,
                json.dumps(status).encode(),
                check_space=False,
            )
        except OSError:
            logger.exception("retention status could not be written")

    def status(self) -> dict[str, object]:
        """The last run's time, the next one's and what it removed (empty before the first)."""
        try:
            loaded: dict[str, object] = json.loads((self.spool.root / _STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return loaded


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _remove(path: Path, identity: tuple[int, int] | None, tmp_dir: Path) -> int:
    """Remove ``path`` if it is still the file decided on; put a newer copy back."""
    if identity is None:
        return 0
    aside = tmp_dir / f"purge-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return 0
    st = os.stat(aside)
    if (st.st_dev, st.st_ino) == identity:
        aside.unlink()
        return 1
    # The receiver stored this instance again after the decision: it stays.
    with contextlib.suppress(FileExistsError):  # an even newer copy is already in place
        os.link(aside, path)
    aside.unlink()
    return 0
