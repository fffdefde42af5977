"""Deliberate refusals of a pipeline, each with a reason the dashboard shows."""

from __future__ import annotations

__all__ = ["PipelineError", "UnsupportedInput", "InconsistentGeometry", "PipelineConfigError"]


class PipelineError(Exception):
    """Base of every refusal raised on purpose by :mod:`pipelines`.

    Parameters
    ----------
    reason : str
        A short sentence without PHI, shown to the admin as the job's reason.
    """

    #: Whether the job ends SKIPPED (the input is not for this pipeline) rather than FAILED.
    skip: bool = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedInput(PipelineError):
    """The input series is not something this pipeline can process (job SKIPPED)."""

    skip = True


class InconsistentGeometry(PipelineError):
    """The series' slices do not form a volume: gaps, duplicates, mixed orientation."""


class PipelineConfigError(PipelineError):
    """The pipeline definition is invalid or its model cannot be loaded."""
