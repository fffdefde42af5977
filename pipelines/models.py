"""A pipeline's model as a function, loaded once per process.

:func:`segmenter` gives ``Volume -> masks by label name``, :func:`classifier`
gives ``Radiograph -> probability by label name`` and :func:`detector` gives
``Volume -> findings`` (boxes placed on the source slices), whatever the model
source of the pipeline: a built-in algorithm, a MONAI bundle or a TorchScript file.
A bundle's segmentation comes back as one label map behind the masks
(:class:`pipelines.labelmap.LabelMapMasks`), so 104 labels cost one array, not 104.

A worker keeps the models it loaded between jobs (a bundle takes seconds to
load and holds its weights in memory): the cache key is the model source and
the modification time of its files, so a replaced bundle is loaded afresh.

Labels are matched by name for a bundle (its ``channel_def``, with codes from
:mod:`pipelines.label_table`) and by value for a TorchScript model (the label
value is the output channel). A bundle is loaded with the pipeline's
``model.overrides``, ``model.weights`` and ``model.memory_budget_mb``, which are
part of the cache key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from pipelines.algorithms import Algorithm, get_builtin
from pipelines.bundle import Bundle, BundleOutput, load_bundle
from pipelines.bundle_check import pipeline_labels
from pipelines.detection import Finding, findings
from pipelines.errors import PipelineConfigError, PipelineError
from pipelines.labelmap import LabelMapMasks
from pipelines.radiograph import Radiograph
from pipelines.spec import ModelKind, PipelineSpec
from pipelines.torchscript import TorchScriptModel, load_torchscript
from pipelines.volume import Volume

__all__ = [
    "Classifier",
    "Detector",
    "classifier",
    "clear_model_cache",
    "detector",
    "loaded_models",
    "model_digest",
    "segmenter",
]

logger = logging.getLogger(__name__)

#: A classification: one radiograph in, the probability of each label out.
Classifier = Callable[[Radiograph], dict[str, float]]

#: A detection: one volume in, the findings at or above the threshold out, best first.
Detector = Callable[[Volume], list[Finding]]

_Loaded = Bundle | TorchScriptModel
_MODELS: dict[tuple[str, str, float, str], _Loaded | Algorithm] = {}
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
    # The settings that choose weights or change what the bundle computes are part of
    # the model as much as its files are.
    options = json.dumps(
        {"overrides": spec.model.overrides, "weights": spec.model.weights},
        sort_keys=True,
        default=str,
    )
    key = (spec.model.kind.value, str(path), _mtime(path))
    cached = _DIGESTS.get(key)
    if cached is not None:
        return hashlib.sha256(f"{cached}:{options}".encode()).hexdigest()
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
    return hashlib.sha256(f"{_DIGESTS[key]}:{options}".encode()).hexdigest()


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
        key = ("builtin", name, 0.0, "")
        cached = _MODELS.get(key)
        if cached is None:
            cached = get_builtin(name)
            _MODELS[key] = cached
        if isinstance(cached, Bundle | TorchScriptModel):  # pragma: no cover - keys differ
            raise PipelineConfigError("model cache holds the wrong kind of model")
        return cached
    model = _load(spec)
    channels = _channels(spec, model)

    def segment(volume: Volume) -> dict[str, npt.NDArray[np.bool_]] | LabelMapMasks:
        pred = _tensor(spec, model.run(volume.to_metatensor()))
        if pred.ndim == 4 and pred.shape[0] > 1:
            labelmap = torch.argmax(pred, dim=0)
        elif pred.ndim == 4:
            # A label map, perhaps resampled with interpolation: nearest label, no fractions.
            labelmap = pred[0].float().round()
        else:
            raise PipelineConfigError(
                f"the model of pipeline {spec.name!r} gave a {pred.ndim}-D output, "
                "expected channels and 3 spatial axes"
            )
        top = max(channels.values(), default=0)
        labels_array = (
            labelmap.clamp(0, max(top + 1, 1)).to(torch.uint8 if top < 255 else torch.int16).numpy()
        )
        try:
            ours = volume.from_monai_layout(labels_array)
        except ValueError as exc:
            raise PipelineConfigError(
                f"the model of pipeline {spec.name!r} gave an output of shape "
                f"{tuple(labels_array.shape)} for an input of {volume.shape[::-1]}: its "
                "postprocessing must bring the prediction back onto the input grid (Invertd)"
            ) from exc
        return LabelMapMasks(np.ascontiguousarray(ours), channels)

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
        probabilities = _tensor(spec, model.run(image.to_metatensor()), by_name=channels)
        probabilities = probabilities.reshape(-1).float()
        if probabilities.numel() <= max(channels.values()):
            raise PipelineConfigError(
                f"the model of pipeline {spec.name!r} gave {probabilities.numel()} outputs, "
                f"expected at least {max(channels.values()) + 1}"
            )
        return {name: float(probabilities[channel]) for name, channel in channels.items()}

    return classify


def detector(spec: PipelineSpec) -> Detector:
    """The pipeline's detection as ``Volume -> findings`` (boxes on the source slices).

    Parameters
    ----------
    spec : PipelineSpec
        A detection pipeline with a bundle model.

    Returns
    -------
    Detector
        Findings at or above ``detection.score_threshold``, best first.

    Raises
    ------
    PipelineConfigError
        If the model is not a bundle or cannot be loaded.
    """
    model = _load(spec)
    if not isinstance(model, Bundle):
        raise PipelineConfigError(f"pipeline {spec.name!r}: detection needs a bundle model")

    def detect(volume: Volume) -> list[Finding]:
        output = model.run(volume.to_metatensor())
        if output.pred is not None and not output.values:
            raise PipelineConfigError(
                f"bundle {model.name!r} gave a tensor, not boxes: it is not a detector"
            )
        return findings(
            output.values, output.image, volume, list(spec.labels), spec.detection,
            model.postprocessing,
        )  # fmt: skip

    return detect


def _tensor(
    spec: PipelineSpec, output: BundleOutput | torch.Tensor, by_name: dict[str, int] | None = None
) -> torch.Tensor:
    """The tensor of a model's output, or a clear refusal of one that has none."""
    if isinstance(output, torch.Tensor):
        return output
    if output.pred is not None:
        return output.pred
    if by_name is not None and all(name in output.values for name in by_name):
        # A classifier that answers with a dictionary of class name -> probability.
        ordered = sorted(by_name, key=by_name.__getitem__)
        return torch.stack([torch.as_tensor(output.values[n]).float().reshape(()) for n in ordered])
    raise PipelineError(
        f"the model of pipeline {spec.name!r} gave no tensor but {', '.join(sorted(output.values))}"
        f"; a {spec.task} pipeline needs one (a detector's boxes need task: detection)"
    )


def _load(spec: PipelineSpec) -> _Loaded:
    """Load (or take from the cache) a bundle or TorchScript model."""
    path = spec.model.path
    if path is None:  # PipelineSpec guarantees a path for these kinds.
        raise PipelineConfigError(f"pipeline {spec.name!r}: model.path is missing")
    options = json.dumps(
        [spec.model.overrides, spec.model.weights, spec.model.memory_budget_mb],
        sort_keys=True,
        default=str,
    )
    key = (spec.model.kind.value, str(path), _mtime(path), options)
    cached = _MODELS.get(key)
    if isinstance(cached, Bundle | TorchScriptModel):
        return cached
    if spec.model.kind is ModelKind.BUNDLE:
        model: _Loaded = load_bundle(
            path,
            overrides=spec.model.overrides,
            weights=spec.model.weights,
            memory_budget_mb=spec.model.memory_budget_mb,
        )
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
        labels = pipeline_labels(spec).labels
        return {label.name: int(label.value or 0) for label in labels}
    return {label.name: int(label.value or 0) for label in spec.labels}
