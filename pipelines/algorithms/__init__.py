"""Built-in algorithms: classical segmentations that need no downloaded weights.

A pipeline whose ``model.kind`` is ``builtin`` names one of these. Each takes a
:class:`pipelines.volume.Volume` and returns one boolean mask per label name,
shaped like the volume; masks may overlap (a body contains its lungs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

from pipelines.errors import PipelineConfigError
from pipelines.volume import Volume

__all__ = ["Algorithm", "builtin_names", "get_builtin"]

#: A segmentation: volume in, boolean masks by label name out.
Algorithm = Callable[[Volume], Mapping[str, npt.NDArray[np.bool_]]]


def _body_lung_threshold() -> Algorithm:
    from pipelines.algorithms.body_lung import segment_body_lungs

    return segment_body_lungs


# Factories, so that importing this package does not import every algorithm's dependencies.
_BUILTINS: dict[str, Callable[[], Algorithm]] = {
    "body_lung_threshold": _body_lung_threshold,
}


def builtin_names() -> tuple[str, ...]:
    """Names of the built-in algorithms, sorted.

    Returns
    -------
    tuple[str, ...]
        What ``model.name`` may say when ``model.kind`` is ``builtin``.
    """
    return tuple(sorted(_BUILTINS))


def get_builtin(name: str) -> Algorithm:
    """Return the built-in algorithm called ``name``.

    Parameters
    ----------
    name : str
        e.g. ``"body_lung_threshold"``.

    Returns
    -------
    Algorithm
        The segmentation function.

    Raises
    ------
    PipelineConfigError
        If there is no built-in algorithm of that name.
    """
    try:
        factory = _BUILTINS[name]
    except KeyError:
        known = ", ".join(builtin_names())
        raise PipelineConfigError(f"unknown built-in algorithm {name!r}; known: {known}") from None
    return factory()
