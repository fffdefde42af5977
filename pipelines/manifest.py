"""What the node asks a worker to do, and what the worker says it did.

The node sends a :class:`JobRequest` as the Celery task's only argument. The
worker writes result objects into the job's folder in the spool and, last and
atomically, ``manifest.json`` holding a :class:`JobManifest`. The manifest on
disk is the truth: if the Celery result is lost with Redis, the node still
learns from it what finished.

Neither model carries PHI: paths are spool-relative and named by UIDs.
"""

from __future__ import annotations

import json
import os
import tempfile
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipelines.spec import OutputKind

__all__ = [
    "MANIFEST_NAME",
    "NODE_ID_NAME",
    "JobManifest",
    "JobRequest",
    "ManifestStatus",
    "OutputObject",
    "read_manifest",
    "read_node_id",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
#: File at the spool root holding the node's identity. Job IDs are only unique
#: within one node, so a worker refuses a job whose node_id is not its spool's.
NODE_ID_NAME = "node_id"


class ManifestStatus(StrEnum):
    """How a job ended on the worker."""

    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


class JobRequest(BaseModel):
    """The payload of the ``worker.run_job`` task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(description="Identity of the node's spool (its node_id file).")
    job_id: int = Field(description="The node's job row ID.")
    attempt: int = Field(
        default=1, ge=1, description="Which delivery this is, counted by the node."
    )
    pipeline: str = Field(description="Pipeline name, as in its YAML.")
    pipeline_version: str = Field(description="Version the node routed with.")
    inputs: list[str] = Field(min_length=1, description="Spool-relative paths of the instances.")
    output_dir: str = Field(description="Spool-relative folder for the results.")
    study_tag: str = Field(
        default="", description="The study's short tag (never its UID), for the worker's logs."
    )
    outputs: list[OutputKind] = Field(
        default_factory=list,
        description="Result kinds to write (what the destinations receive); empty: the "
        "pipeline's own outputs.",
    )


class OutputObject(BaseModel):
    """One DICOM object a job wrote."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: OutputKind
    file: str = Field(description="File name inside the job's output folder.")
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


class JobManifest(BaseModel):
    """What a worker reports for a job: outputs, measurements, timings, or the reason."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    node_id: str = Field(default="", description="The spool identity the job came from.")
    status: ManifestStatus
    reason: str = Field(default="", description="Why a job was skipped or failed; no PHI.")
    outputs: list[OutputObject] = Field(default_factory=list)
    measurements: dict[str, float] = Field(
        default_factory=dict, description="e.g. 'right_lung.volume_ml' to a value."
    )
    timings_s: dict[str, float] = Field(default_factory=dict, description="Stage to seconds.")
    notes: list[str] = Field(
        default_factory=list,
        description="What the admin should know of a finished job (labels that came out "
        "empty, labels without a standard code); no PHI.",
    )
    worker: str = Field(default="", description="Worker host name and device.")


def write_manifest(folder: Path, manifest: JobManifest) -> Path:
    """Write ``manifest.json`` atomically: temporary file, fsync, rename, fsync folder.

    Parameters
    ----------
    folder : pathlib.Path
        The job's output folder (must exist).
    manifest : JobManifest
        What to write.

    Returns
    -------
    pathlib.Path
        The manifest's path.
    """
    target = folder / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(manifest.model_dump_json(indent=2).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def read_manifest(folder: Path) -> JobManifest | None:
    """Read a job's manifest if the worker has written it.

    Parameters
    ----------
    folder : pathlib.Path
        The job's output folder.

    Returns
    -------
    JobManifest or None
        None when there is no manifest yet.

    Raises
    ------
    ValueError
        If the manifest exists but is not valid.
    """
    path = folder / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return JobManifest.model_validate(json.loads(raw))


def read_node_id(spool_root: Path) -> str | None:
    """Return the identity of the spool at ``spool_root``, or None if it has none yet."""
    try:
        return (spool_root / NODE_ID_NAME).read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None
