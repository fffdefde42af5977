"""Deterministic UIDs for the objects a pipeline writes.

DESIGN.md promise 3: re-running a job is harmless because the result UIDs are a
function of (pipeline name, pipeline version, the input instances' UIDs). A
redelivered task or a retried export therefore produces objects with the same
Series and SOP Instance UIDs, and the archive keeps one copy. A changed input
set (a late slice) gives new UIDs, so the earlier result is not overwritten by
a different one under the same identity.

The UIDs are in the ``2.25`` arc (PS3.5 B.2): the decimal form of a name-based
(SHA-1, version 5) UUID of ISO/IEC 9834-8 / RFC 4122. No root needs to be
registered, and the name hashed is an unambiguous JSON list of the parts.

Note
----
``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` looks like the way
to do this but is not: with ``prefix=None`` pydicom ignores ``entropy_srcs`` and
returns a random UUID. Hence the UUID is built here.

Examples
--------
>>> derive_uid("ct-body-lung", "1.0.0", "seg")
'2.25.223117926627099104381640414120733950676'
>>> uids = result_uids("ct-body-lung", "1.0.0", ["1.2.3.2", "1.2.3.1"])
>>> uids == result_uids("ct-body-lung", "1.0.0", ["1.2.3.1", "1.2.3.2"])
True
>>> uids.seg_series == uids.sr_series
False
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pydicom.uid import RE_VALID_UID

__all__ = ["ResultUIDs", "UIDRole", "derive_uid", "result_uids"]

# Fixed namespace of every UID this project derives; changing it changes every result UID.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicom-node:result-uids")


class UIDRole(StrEnum):
    """What a derived UID identifies inside one job's results."""

    SEG_SERIES = "seg-series"
    SEG = "seg"
    SR_SERIES = "sr-series"
    SR = "sr"


def derive_uid(*parts: str) -> str:
    """Return a ``2.25.<int>`` UID that depends only on ``parts``.

    Parameters
    ----------
    *parts : str
        What the UID is derived from, in order. ``("a", "bc")`` and
        ``("ab", "c")`` give different UIDs.

    Returns
    -------
    str
        A valid DICOM UID of at most 44 characters.

    Raises
    ------
    ValueError
        If no part is given.
    TypeError
        If a part is not a string.
    """
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"derive_uid parts must be str, got {type(part).__name__}")
    name = json.dumps(list(parts), ensure_ascii=True, separators=(",", ":"))
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


@dataclass(frozen=True, slots=True)
class ResultUIDs:
    """The UIDs of one job's results, derived from the job's identity.

    Build it with :func:`result_uids`.

    Attributes
    ----------
    pipeline : str
        Pipeline name.
    version : str
        Pipeline version.
    inputs_digest : str
        SHA-256 (hex) of the sorted input SOP Instance UIDs, one per line.
    model_digest : str
        SHA-256 (hex) of the model's files (see ``pipelines.models.model_digest``);
        only the Device UID depends on it, never a result's UID.
    """

    pipeline: str
    version: str
    inputs_digest: str
    model_digest: str = ""

    def uid(self, role: str, *extra: str) -> str:
        """Return the UID for ``role`` (and optional extra parts).

        Parameters
        ----------
        role : str
            A :class:`UIDRole` value, or another role name such as ``"tracking"``
            or ``"device"``.
        *extra : str
            Further parts, e.g. a label name for a per-segment tracking UID.

        Returns
        -------
        str
            The derived UID.
        """
        return derive_uid(self.pipeline, self.version, self.inputs_digest, str(role), *extra)

    @property
    def seg_series(self) -> str:
        """Series Instance UID of the SEG."""
        return self.uid(UIDRole.SEG_SERIES)

    @property
    def seg_instance(self) -> str:
        """SOP Instance UID of the SEG."""
        return self.uid(UIDRole.SEG)

    @property
    def sr_series(self) -> str:
        """Series Instance UID of the SR."""
        return self.uid(UIDRole.SR_SERIES)

    @property
    def sr_instance(self) -> str:
        """SOP Instance UID of the SR."""
        return self.uid(UIDRole.SR)

    @property
    def device_uid(self) -> str:
        """Device UID of the algorithm: changes with the pipeline, its version or its model files.

        IHE AI Results asks for a Device UID that identifies the algorithm as it
        ran; a retrained model under an unchanged version number gets a new one.
        It does not depend on the inputs: every job of one model shares it.
        """
        return derive_uid("device", self.pipeline, self.version, self.model_digest)


def result_uids(
    pipeline_name: str,
    pipeline_version: str,
    input_sop_instance_uids: Iterable[str],
    model_digest: str = "",
) -> ResultUIDs:
    """Derive the result UIDs of a job.

    Parameters
    ----------
    pipeline_name : str
        Pipeline name, as in its YAML.
    pipeline_version : str
        Pipeline version.
    input_sop_instance_uids : Iterable[str]
        SOP Instance UIDs of the input instances, in any order.
    model_digest : str
        Digest of the model's files; only :attr:`ResultUIDs.device_uid` depends on it.

    Returns
    -------
    ResultUIDs
        Same inputs (in any order) give the same UIDs; a different set gives different ones.

    Raises
    ------
    ValueError
        If there are no inputs, an input is not a valid UID, or a UID occurs twice.
    """
    inputs = sorted(input_sop_instance_uids)
    if not inputs:
        raise ValueError("input_sop_instance_uids must not be empty")
    for index, value in enumerate(inputs):
        if len(value) > 64 or not re.match(RE_VALID_UID, value):
            raise ValueError(f"input_sop_instance_uids[{index}] is not a valid UID: {value!r}")
    if len(set(inputs)) != len(inputs):
        raise ValueError("input_sop_instance_uids holds the same UID more than once")
    digest = hashlib.sha256("\n".join(inputs).encode("ascii")).hexdigest()
    return ResultUIDs(
        pipeline=pipeline_name,
        version=pipeline_version,
        inputs_digest=digest,
        model_digest=model_digest,
    )
