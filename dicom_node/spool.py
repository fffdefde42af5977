"""The spool: instances as received, quarantined refusals, and job folders.

Layout under ``spool_dir``::

    instances/<study uid>/<series uid>/<sop instance uid>.dcm   as received
    quarantine/<utc time>-<n>.dcm + .reason.txt                  refused data
    jobs/<job id>/                                               worker results
    node_id                                                      this node's identity
    tmp/                                                         partial writes

Every write is atomic and durable: a temporary file in ``tmp/`` (same file
system), ``fsync``, ``rename`` into place, ``fsync`` of the target folder. A
crash leaves the whole file or none of it; stray temporaries are removed on start.
"""

from __future__ import annotations

import datetime
import errno
import itertools
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from dicom_node.errors import SpoolFull
from dicom_node.uids import validate_uid
from pipelines.manifest import NODE_ID_NAME, read_node_id

__all__ = ["Spool"]

logger = logging.getLogger(__name__)

_quarantine_counter = itertools.count()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable file storage shared by the node and its workers.

    Parameters
    ----------
    root : pathlib.Path
        The spool folder; created if missing.
    min_free_bytes : int
        Writes are refused with :class:`SpoolFull` below this much free space.
    """

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = root.resolve()
        self.min_free_bytes = min_free_bytes
        self.instances_dir = self.root / "instances"
        self.quarantine_dir = self.root / "quarantine"
        self.jobs_dir = self.root / "jobs"
        self.tmp_dir = self.root / "tmp"
        for folder in (self.instances_dir, self.quarantine_dir, self.jobs_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.node_id = read_node_id(self.root) or self._create_node_id()

    def _create_node_id(self) -> str:
        node_id = str(uuid.uuid4())
        self.write_atomic(self.root / NODE_ID_NAME, node_id.encode("ascii"), check_space=False)
        return read_node_id(self.root) or node_id

    def remove_stale_temporaries(self) -> int:
        """Delete partial writes left by a previous run; they can never become instances.

        Only the node calls this, once, before its receivers start: any other
        process (a CLI command, an extra receiver) would delete files that a
        running receiver is still writing.

        Returns
        -------
        int
            How many files were removed.
        """
        removed = 0
        for stale in self.tmp_dir.iterdir():
            stale.unlink(missing_ok=True)
            removed += 1
        return removed

    def free_bytes(self) -> int:
        """Free bytes on the spool's file system."""
        return shutil.disk_usage(self.root).free

    def check_space(self) -> None:
        """Refuse when the disk is below the watermark.

        Raises
        ------
        SpoolFull
            If free space is below ``min_free_bytes``.
        """
        if self.min_free_bytes and self.free_bytes() < self.min_free_bytes:
            raise SpoolFull("spool disk is below its free-space watermark")

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Return where an instance lives; every UID is validated first.

        Raises
        ------
        InvalidUID
            If any UID is not valid, so no crafted value can leave the spool.
        """
        return (
            self.instances_dir
            / validate_uid(study_uid, "StudyInstanceUID")
            / validate_uid(series_uid, "SeriesInstanceUID")
            / f"{validate_uid(sop_uid, 'SOPInstanceUID')}.dcm"
        )

    def relative(self, path: Path) -> str:
        """Return a spool path relative to the root, as stored in the state DB."""
        return path.relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        """Turn a spool-relative path back into an absolute one inside the spool.

        Raises
        ------
        ValueError
            If the path would point outside the spool.
        """
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("path points outside the spool")
        return path

    def write_atomic(
        self, target: Path, data: bytes | Sequence[bytes | memoryview], *, check_space: bool = True
    ) -> int:
        """Write ``data`` to ``target`` durably: temp file, fsync, rename, fsync dir.

        Parameters
        ----------
        target : pathlib.Path
            Final path inside the spool.
        data : bytes or Sequence[bytes | memoryview]
            The bytes, written as they are; several buffers are written one
            after the other (no copy to join them).
        check_space : bool
            Whether to refuse below the free-space watermark.

        Returns
        -------
        int
            Bytes written.

        Raises
        ------
        SpoolFull
            If the disk is below the watermark or the write runs out of space;
            nothing is left behind.
        OSError
            For other I/O failures; nothing is left behind.
        """
        if check_space:
            self.check_space()
        target.parent.mkdir(parents=True, exist_ok=True)
        chunks = [data] if isinstance(data, bytes) else list(data)
        size = sum(len(chunk) for chunk in chunks)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
        try:
            with os.fdopen(fd, "wb", buffering=0) as fh:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[fh.write(view) :]
                os.fsync(fh.fileno())
            try:
                os.replace(tmp_name, target)
            except FileNotFoundError:
                # Retention removed the (empty) folder meanwhile: make it again, once.
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp_name, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            Path(tmp_name).unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull("spool disk ran out of space during a write") from exc
            raise
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return size

    def quarantine(self, data: bytes | Sequence[bytes | memoryview], reason: str) -> Path:
        """Keep refused data with a reason file, so nothing sent is silently dropped.

        Parameters
        ----------
        data : bytes or Sequence[bytes | memoryview]
            The bytes as received (may be empty when nothing could be read).
        reason : str
            Why it was refused; must hold no PHI.

        Returns
        -------
        pathlib.Path
            The quarantined file.
        """
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{stamp}-{os.getpid()}-{next(_quarantine_counter)}"
        target = self.quarantine_dir / f"{name}.dcm"
        try:
            # Quarantine ignores the watermark: it is small and explains a refusal.
            self.write_atomic(target, data, check_space=False)
            reason_path = self.quarantine_dir / f"{name}.reason.txt"
            self.write_atomic(reason_path, reason.encode("utf-8"), check_space=False)
        except OSError:
            logger.exception("could not quarantine refused data")
        return target

    def job_dir(self, job_id: int) -> Path:
        """Return (and create) the folder a job's results go to."""
        path = self.jobs_dir / str(int(job_id))
        path.mkdir(parents=True, exist_ok=True)
        return path
