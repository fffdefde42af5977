"""A pipeline's model as a function, loaded once per process.

:func:`segmenter` gives ``Volume -> masks by label name`` and :func:`classifier`
gives ``Radiograph -> probability by label name``, whatever the model source of
the pipeline: a built-in algorithm, a MONAI bundle or a TorchScript file.

A worker keeps the models it loaded between jobs (a bundle takes seconds to
load and holds its weights in memory): the cache key is the model source and
the modification time of its files, so a replaced bundle is loaded afresh.

Labels are matched by name for a bundle (its ``channel_def``) and by value for
a TorchScript model (the label value is the output channel).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from pipelines.algorithms import Algorithm, get_builtin
from pipelines.bundle import Bundle, load_bundle
from pipelines.errors import PipelineConfigError
from pipelines.radiograph import Radiograph
from pipelines.spec import ModelKind, PipelineSpec
from pipelines.torchscript import TorchScriptModel, load_torchscript
from pipelines.volume import Volume

__all__ = [
    "Classifier",
    "classifier",
    "clear_model_cache",
    "loaded_models",
    "model_digest",
    "segmenter",
]

logger = logging.getLogger(__name__)

#: A classification: one radiograph in, the probability of each label out.
Classifier = Callable[[Radiograph], dict[str, float]]

_Loaded = Bundle | TorchScriptModel
_MODELS: dict[tuple[str, str, float], _Loaded | Algorithm] = {}
_DIGESTS: dict[tuple[str, str, float], str] = {}
_CHUNK = 1 << 20


def clear_model_cache() -> None:
    """Forget every loaded model (tests; a worker keeps them for its lifetime)."""
    _MODELS.clear()
    _DIGESTS.clear()


def model_digest(spec: PipelineSpec) -> str:
    """SHA-256 (hex) of what the pipeline's model is: its files, or the built-in's code.

    A bundle's digest covers every file of its directory (configs and weights,
    with their relative paths), a TorchScript model's its file, a built-in
    algorithm's its name and the installed dicom-node version (the code is the
    model). The Device UID of the results derives from it, so a retrained model
    gets a new Device UID even under an unchanged pipeline version (IHE AIR).
    Computed once per model and modification time in a process.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline.

    Returns
    -------
    str
        64 hexadecimal digits.

    Raises
    ------
    PipelineConfigError
        If the model's files cannot be read.
    """
    if spec.model.kind is ModelKind.BUILTIN:
        try:
            node = version("dicom-node")
        except PackageNotFoundError:  # a source tree that was never installed
            node = "unknown"
        return hashlib.sha256(f"builtin:{spec.model.name}:{node}".encode()).hexdigest()
    path = spec.model.path
    if path is None:
        raise PipelineConfigError(f"pipeline {spec.name!r}: model.path is missing")
    key = (spec.model.kind.value, str(path), _mtime(path))
    cached = _DIGESTS.get(key)
    if cached is not None:
        return cached
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    try:
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            with file.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
    except OSError as exc:
        raise PipelineConfigError(f"pipeline {spec.name!r}: cannot read its model ({exc})") from exc
    _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def loaded_models() -> int:
    """How many models this process holds loaded."""
    return len(_MODELS)


def segmenter(spec: PipelineSpec) -> Algorithm:
    """The pipeline's segmentation as ``Volume -> {label name: boolean mask}``.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline.

    Returns
    -------
    Algorithm
        Masks shaped like the volume, one per label of the model.

    Raises
    ------
    PipelineConfigError
        If the model cannot be loaded or does not produce the pipeline's labels.
    """
    if spec.model.kind is ModelKind.BUILTIN:
        name = spec.model.name or ""
        key = ("builtin", name, 0.0)
        cached = _MODELS.get(key)
        if cached is None:
            cached = get_builtin(name)
            _MODELS[key] = cached
        if isinstance(cached, Bundle | TorchScriptModel):  # pragma: no cover - keys differ
            raise PipelineConfigError("model cache holds the wrong kind of model")
        return cached
    model = _load(spec)
    channels = _channels(spec, model)

    def segment(volume: Volume) -> dict[str, npt.NDArray[np.bool_]]:
        pred = model.run(volume.to_metatensor())
        if pred.ndim == 4 and pred.shape[0] > 1:
            labelmap = torch.argmax(pred, dim=0).numpy()
        elif pred.ndim == 4:
            labelmap = pred[0].round().to(torch.int16).numpy()
        else:
            raise PipelineConfigError(
                f"the model of pipeline {spec.name!r} gave a {pred.ndim}-D output, "
                "expected channels and 3 spatial axes"
            )
        try:
            ours = volume.from_monai_layout(labelmap)
        except ValueError as exc:
            raise PipelineConfigError(
                f"the model of pipeline {spec.name!r} gave an output of shape "
                f"{tuple(labelmap.shape)} for an input of {volume.shape[::-1]}: its "
                "postprocessing must bring the prediction back onto the input grid (Invertd)"
            ) from exc
        return {name: ours == channel for name, channel in channels.items()}

    return segment


def classifier(spec: PipelineSpec) -> Classifier:
    """The pipeline's classification as ``Radiograph -> {label name: probability}``.

    Parameters
    ----------
    spec : PipelineSpec
        A classification pipeline with a bundle or TorchScript model.

    Returns
    -------
    Classifier
        The probability of each label of the pipeline.

    Raises
    ------
    PipelineConfigError
        If the model is built-in, cannot be loaded, or lacks a label's channel.
    """
    if spec.model.kind is ModelKind.BUILTIN:
        raise PipelineConfigError(f"pipeline {spec.name!r}: no built-in classifier exists")
    model = _load(spec)
    channels = _channels(spec, model)

    def classify(image: Radiograph) -> dict[str, float]:
        probabilities = model.run(image.to_metatensor()).reshape(-1)
        if probabilities.numel() <= max(channels.values()):
            raise PipelineConfigError(
                f"the model of pipeline {spec.name!r} gave {probabilities.numel()} outputs, "
                f"expected at least {max(channels.values()) + 1}"
            )
        return {name: float(probabilities[channel]) for name, channel in channels.items()}

    return classify


def _load(spec: PipelineSpec) -> _Loaded:
    """Load (or take from the cache) a bundle or TorchScript model."""
    path = spec.model.path
    if path is None:  # PipelineSpec guarantees a path for these kinds.
        raise PipelineConfigError(f"pipeline {spec.name!r}: model.path is missing")
    key = (spec.model.kind.value, str(path), _mtime(path))
    cached = _MODELS.get(key)
    if isinstance(cached, Bundle | TorchScriptModel):
        return cached
    if spec.model.kind is ModelKind.BUNDLE:
        model: _Loaded = load_bundle(path)
    else:
        if spec.model.preprocessing is None:
            raise PipelineConfigError(f"pipeline {spec.name!r}: model.preprocessing is missing")
        model = load_torchscript(path, spec.model.preprocessing)
    _MODELS[key] = model
    logger.info("pipeline=%s model loaded; %d model(s) in this process", spec.name, len(_MODELS))
    return model


def _mtime(path: Path) -> float:
    """Latest modification time of a model file or of the files of a bundle directory."""
    try:
        if path.is_dir():
            return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=0.0)
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _channels(spec: PipelineSpec, model: _Loaded) -> dict[str, int]:
    """Output channel (label value) of each label of the pipeline."""
    if isinstance(model, Bundle):
        by_name = {name: channel for channel, name in model.labels.items()}
        missing = [label.name for label in spec.labels if label.name not in by_name]
        if missing:
            raise PipelineConfigError(
                f"bundle {model.name!r} has no channel for label(s) {', '.join(missing)} of "
                f"pipeline {spec.name!r} (its channel_def names: "
                f"{', '.join(sorted(by_name))})"
            )
        return {label.name: by_name[label.name] for label in spec.labels}
    return {label.name: label.value for label in spec.labels}
