"""Output profiles: which result kinds each export destination receives.

A destination lists the kinds it takes (``export.destinations[].outputs``): a
legacy PACS that shows only images and presentation states takes ``[sc,
gsps]``, an OHIF or dcm4chee archive ``[seg, sr]``, a planning system
``[rtstruct]``, an EHR feed ``[pdf]``. A destination that lists none takes what
each pipeline declares (its ``outputs``).

The decision, in three steps:

1. the pipeline declares its outputs (the default);
2. each destination filters (:func:`receives`);
3. the worker writes the union of what the destinations receive
   (:func:`job_outputs`), so every destination gets all it asked for, and
   nothing is written that no one receives (but the SEG an SR refers to).

The node sends each destination only the objects of its kinds
(``Supervisor._finish`` creates the export rows per destination).
"""

from __future__ import annotations

from collections.abc import Sequence

from dicom_node.settings import DestinationSettings
from pipelines.spec import OutputKind, PipelineSpec

__all__ = ["delivered", "job_outputs", "receives"]


def receives(destination: DestinationSettings, spec: PipelineSpec | None) -> frozenset[OutputKind]:
    """The result kinds a destination receives from a pipeline's jobs.

    Parameters
    ----------
    destination : DestinationSettings
        The destination.
    spec : PipelineSpec or None
        The pipeline; None when it is no longer configured (then the
        destination's own list, else every kind, decides).

    Returns
    -------
    frozenset[OutputKind]
        The destination's ``outputs`` if it lists any, else the pipeline's.

    Examples
    --------
    >>> pacs = DestinationSettings(name="pacs", outputs=["sc", "gsps"])
    >>> sorted(receives(pacs, None))
    [<OutputKind.GSPS: 'gsps'>, <OutputKind.SC: 'sc'>]
    """
    if destination.outputs:
        return frozenset(destination.outputs)
    if spec is None:
        return frozenset(OutputKind)
    return frozenset(spec.outputs)


def job_outputs(
    spec: PipelineSpec, destinations: Sequence[DestinationSettings]
) -> list[OutputKind]:
    """The kinds a job of ``spec`` writes: the union of what the destinations receive.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline.
    destinations : Sequence[DestinationSettings]
        The export destinations; with none, the pipeline's own outputs.

    Returns
    -------
    list[OutputKind]
        What the pipeline's task can write of that union, with the SEG its SR
        refers to (:meth:`pipelines.spec.PipelineSpec.producible`).
    """
    wanted: set[OutputKind] = set(spec.outputs) if not destinations else set()
    for destination in destinations:
        wanted |= receives(destination, spec)
    return list(spec.producible(wanted))


def delivered(destination: DestinationSettings, spec: PipelineSpec) -> list[OutputKind]:
    """What a destination gets from a pipeline's jobs: what it receives that the task writes.

    Parameters
    ----------
    destination : DestinationSettings
        The destination.
    spec : PipelineSpec
        The pipeline.

    Returns
    -------
    list[OutputKind]
        In :class:`OutputKind` order; empty when the pipeline writes nothing it takes.
    """
    kinds = receives(destination, spec)
    return [kind for kind in spec.producible(kinds) if kind in kinds]
