"""Deliberate refusals of the node, each with a reason the admin can read."""

from __future__ import annotations

__all__ = ["InvalidUID", "NodeError", "SpoolFull"]


class NodeError(Exception):
    """Base of every refusal raised on purpose by :mod:`dicom_node`.

    Parameters
    ----------
    reason : str
        A short sentence without PHI.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidUID(NodeError):
    """A UID is not a valid DICOM UID (PS3.5 9.1) and must not be used in a path."""


class SpoolFull(NodeError):
    """The spool's disk is below its free-space watermark, or a write ran out of space."""
