"""Keep a bundle's run within a memory budget on a CPU worker, or refuse it up front.

A sliding-window segmentation keeps one full-size buffer per output channel:
``wholeBody_ct_segmentation`` at 1.5 mm stitches 105 channels, 6.9 GB for 99
slices in float32, and its postprocessing (softmax, argmax) copies that again. A
worker killed by the kernel for it loses the job without a reason. With
``model.memory_budget_mb`` set, :func:`plan` estimates the peak from the
preprocessed shape before the network runs, and chooses:

1. **float32 as the bundle says**, if that fits;
2. else **half-precision stitching**: the sliding window still runs the network in
   float32 on each window, but the stitched output, its weights and counts are
   float16 (MONAI stitches in the input's dtype), which halves the buffer;
3. and **postprocessing by parts**: a postprocessing that is only
   ``Activationsd`` (softmax / sigmoid), ``AsDiscreted(argmax)`` and ``Invertd`` on
   ``pred`` runs on slabs of the buffer in place (softmax per slab, argmax per
   slab into a small integer label map; ``Invertd`` of many channels a few
   channels at a time with a running argmax; ``Invertd`` of the label map, when the
   preprocessing only reoriented and resampled, as a nearest look-up through the two
   affines a few slices at a time, where MONAI's builds a grid over the whole
   series), so no second full-size copy is made. The result equals the bundle's own
   postprocessing (a test compares them);
4. if even that does not fit, the job FAILS before the network runs, with the
   estimate and the budget in the reason.

Without a budget nothing changes: the bundle runs exactly as configured. On a GPU
(``device`` not the CPU) the plan is not applied: GPU memory is not this budget.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data.meta_tensor import MetaTensor
from monai.inferers.inferer import Inferer, SlidingWindowInferer
from monai.transforms.compose import Compose
from monai.transforms.post.dictionary import Activationsd, AsDiscreted, Invertd

from pipelines.errors import PipelineError

if TYPE_CHECKING:
    from pipelines.bundle import Bundle

__all__ = ["MemoryPlan", "RunShape", "estimate_mb", "plan", "resident_mb"]

logger = logging.getLogger(__name__)

_PRED_KEY = "pred"
# Float32 values per window voxel that a forward pass holds (SegResNet with 32 filters and
# 105 outputs at 96^3: about 1.2 GB; measured with bench/pipeline.py's Model Zoo row).
_WINDOW_FLOATS_PER_VOXEL = 400
# Bytes per input voxel that MONAI's Orientationd + Spacingd + intensity transforms hold
# at their peak (measured: 1.6 GB over a 512x512x300 CT).
_PREPROCESSING_BYTES_PER_VOXEL = 22
# Bytes per input voxel of MONAI's Invertd bringing a label map back (coordinate grids,
# copies and output; measured: 3.3 GB over a 512x512x300 CT).
_INVERT_BYTES_PER_VOXEL = 42
# Operations of the preprocessing that the slab-wise label inverse undoes exactly.
_AFFINE_OPERATIONS = frozenset({"Orientation", "SpatialResample", "Spacing", "Flip", "Identity"})
# Voxels of the input grid inverted at a time (about 40 bytes each).
_SLAB_VOXELS = 4_000_000
# Channels inverted at a time when Invertd resamples probabilities by parts.
_INVERT_CHUNK = 8
_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """How one run is carried out.

    Attributes
    ----------
    half_stitching : bool
        Stitch the sliding window's output in float16.
    by_parts : bool
        Run the postprocessing slab by slab / channel by channel.
    estimate_mb : float
        Expected peak of the run (beyond the process's baseline) in MiB.
    """

    half_stitching: bool = False
    by_parts: bool = False
    estimate_mb: float = 0.0

    def infer(self, inferer: Inferer, batch: torch.Tensor, network: torch.nn.Module) -> Any:
        """Run the inferer, stitching in float16 when the plan says so.

        Parameters
        ----------
        inferer : monai.inferers.Inferer
            The bundle's inferer.
        batch : torch.Tensor
            ``(1, C, *spatial)``.
        network : torch.nn.Module
            The network.

        Returns
        -------
        Any
            What the inferer returns.
        """
        if not self.half_stitching:
            return inferer(batch, network)
        # MONAI allocates the stitched output in the input's dtype; the network
        # itself still sees float32 windows.
        return inferer(batch.half(), _Float32Window(network))

    def postprocess(self, postprocessing: Any, data: dict[str, Any]) -> dict[str, Any]:
        """Run the postprocessing, by parts when the plan says so.

        Parameters
        ----------
        postprocessing : Any
            The parsed postprocessing (a ``Compose``) or None.
        data : dict[str, Any]
            ``image`` and ``pred``.

        Returns
        -------
        dict[str, Any]
            The postprocessed data.
        """
        if postprocessing is None:
            return data
        if self.by_parts and _streamable(postprocessing):
            return run_by_parts(postprocessing, data)
        pred = data.get(_PRED_KEY)
        if isinstance(pred, torch.Tensor) and pred.dtype == torch.float16:
            data = {**data, _PRED_KEY: pred.float()}
        result = postprocessing(data)
        return dict(result) if not isinstance(result, dict) else result


class _Float32Window(torch.nn.Module):
    """Run a network on float32 windows and hand float16 back for stitching."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> Any:
        out = self.network(x.float())
        if isinstance(out, torch.Tensor):
            return out.half()
        if isinstance(out, list | tuple):
            return type(out)(o.half() if isinstance(o, torch.Tensor) else o for o in out)
        return out


@dataclass(frozen=True, slots=True)
class RunShape:
    """What the estimate needs to know of one run.

    Attributes
    ----------
    channels : int
        Output channels of the network.
    original : int
        Voxels of the node's input (where ``Invertd`` brings the result back).
    preprocessed : int
        Voxels after the bundle's preprocessing (where it stitches), estimated from
        the input's spacing and the ``Spacingd`` of the preprocessing.
    roi_voxels : int
        Voxels of one window.
    sw_batch_size : int
        Windows run at once.
    invert_before_argmax : bool
        ``Invertd`` resamples all channels before the argmax (spleen's order).
    """

    channels: int
    original: int
    preprocessed: int
    roi_voxels: int
    sw_batch_size: int
    invert_before_argmax: bool


def estimate_mb(shape: RunShape, *, half: bool, by_parts: bool) -> float:
    """Memory (MiB) one run adds to the process at its peak, for a plan.

    The largest of three moments, each measured on ``wholeBody_ct_segmentation``
    (``bench/pipeline.py``):

    - the bundle's preprocessing: MONAI's orientation, resampling and intensity
      transforms hold about :data:`_PREPROCESSING_BYTES_PER_VOXEL` bytes per input
      voxel (copies and coordinate grids);
    - the sliding window: the stitched output and its counts (4 or 2 bytes per
      value), the preprocessed image, and one window's forward pass (about
      :data:`_WINDOW_FLOATS_PER_VOXEL` floats per window voxel for a 3-D
      UNet/SegResNet);
    - the postprocessing, with the stitched output still held: the activation's
      float32 copy and an int64 argmax as configured, or a small label map by parts;
      ``Invertd`` back to the input grid (its coordinate grid and output).

    Parameters
    ----------
    shape : RunShape
        Channels, voxels, window.
    half : bool
        Stitching in float16.
    by_parts : bool
        Postprocessing by parts.

    Returns
    -------
    float
        MiB above what the process holds before the run.
    """
    c, n_orig, n_pre = shape.channels, shape.original, shape.preprocessed
    value = 2 if half else 4
    preprocessing = n_orig * _PREPROCESSING_BYTES_PER_VOXEL
    stitched = c * n_pre * value + n_pre * value + n_pre * 4 + (n_pre * 2 if half else 0)
    window = shape.sw_batch_size * shape.roi_voxels * 4 * _WINDOW_FLOATS_PER_VOXEL
    invert = n_orig * _INVERT_BYTES_PER_VOXEL
    if by_parts:
        if shape.invert_before_argmax:
            post = min(c, _INVERT_CHUNK) * n_orig * 4 + n_orig * 12 + invert
        else:
            # The label map is inverted slab by slab: its output and one slab's grid.
            post = n_pre * 4 + n_orig * 4 + _SLAB_VOXELS * _INVERT_BYTES_PER_VOXEL
    elif shape.invert_before_argmax:
        post = c * n_pre * 4 + c * n_orig * 4 + invert + n_orig * 8
    else:
        post = c * n_pre * 4 + n_pre * 8 + invert
    return float(max(preprocessing, stitched + window, stitched + post)) / _MB


def plan(bundle: Bundle, image: MetaTensor) -> MemoryPlan:
    """Choose how to run one image within the bundle's memory budget, before it runs.

    The budget is for the whole worker process: what it holds now (interpreter,
    torch, the model, the loaded series) plus what the run adds at its peak
    (:func:`estimate_mb`).

    Parameters
    ----------
    bundle : Bundle
        The loaded bundle (its budget, preprocessing, inferer, postprocessing and
        output channels).
    image : monai.data.MetaTensor
        The node's input ``(C, *spatial)`` with its affine.

    Returns
    -------
    MemoryPlan
        The first plan that fits, keeping the bundle's own precision where it can:
        as configured, half-precision stitching, by parts, both.

    Raises
    ------
    PipelineError
        If no plan fits the budget (the job fails before the network runs).
    """
    budget = bundle.memory_budget_mb
    inferer = bundle.inferer
    if (
        budget is None
        or bundle.device.type != "cpu"
        or not isinstance(inferer, SlidingWindowInferer)
    ):
        return MemoryPlan()
    roi: Any = inferer.roi_size
    roi_voxels = math.prod(int(r) for r in roi) if isinstance(roi, list | tuple) else int(roi) ** 3
    post = bundle.postprocessing
    original = math.prod(int(s) for s in image.shape[1:])
    shape = RunShape(
        channels=_output_channels(bundle),
        original=original,
        preprocessed=_preprocessed_voxels(bundle.preprocessing, image, original),
        roi_voxels=roi_voxels,
        sw_batch_size=int(inferer.sw_batch_size),
        invert_before_argmax=_invert_before_argmax(post),
    )
    held = resident_mb()
    options = [(False, False), (True, False)]
    if post is None or _streamable(post):
        options += [(False, True), (True, True)]
    totals = []
    for half, by_parts in options:
        total = held + estimate_mb(shape, half=half, by_parts=by_parts)
        totals.append(total)
        if total <= budget:
            logger.info(
                "bundle=%s memory plan half=%s by_parts=%s estimate=%.0fMiB budget=%dMiB",
                bundle.name,
                half,
                by_parts,
                total,
                budget,
            )
            return MemoryPlan(half_stitching=half, by_parts=by_parts, estimate_mb=total)
    raise PipelineError(
        f"bundle {bundle.name!r} needs about {min(totals):.0f} MiB for this series "
        f"({shape.channels} channels over about {shape.preprocessed:,} voxels after its "
        f"preprocessing, {held:.0f} MiB already held), more than the memory budget of "
        f"{budget} MiB; raise model.memory_budget_mb on a larger worker, or lower the "
        "resolution (model.overrides)"
    )


def _preprocessed_voxels(preprocessing: Any, image: MetaTensor, original: int) -> int:
    """Voxels after a ``Spacingd`` of the preprocessing (the input's count without one)."""
    transforms = preprocessing.transforms if isinstance(preprocessing, Compose) else ()
    for transform in transforms:
        spacing = getattr(transform, "spacing_transform", None)
        pixdim = getattr(spacing, "pixdim", None)
        if pixdim is None:
            continue
        source = [float(v) for v in image.pixdim]
        target = [float(v) for v in pixdim]
        if len(target) == len(source) and all(t > 0 for t in target):
            return max(
                1, int(original * math.prod(s / t for s, t in zip(source, target, strict=True)))
            )
    return original


def resident_mb() -> float:
    """What this process holds in memory now (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / _MB


def _output_channels(bundle: Bundle) -> int:
    fmt = bundle.files.metadata.get("network_data_format", {}).get("outputs", {}).get(_PRED_KEY)
    if isinstance(fmt, dict) and isinstance(fmt.get("num_channels"), int):
        return int(fmt["num_channels"])
    return max(len(bundle.labels), 1)


def _invert_before_argmax(post: Any) -> bool:
    if not isinstance(post, Compose):
        return False
    seen_invert = False
    for transform in post.transforms:
        if isinstance(transform, Invertd):
            seen_invert = True
        elif isinstance(transform, AsDiscreted) and any(transform.argmax):
            return seen_invert
    return False


def _streamable(post: Any) -> bool:
    """Whether the postprocessing is one the by-parts runner reproduces exactly."""
    if not isinstance(post, Compose):
        return False
    for transform in post.transforms:
        if list(getattr(transform, "keys", ())) != [_PRED_KEY]:
            return False
        if isinstance(transform, Activationsd):
            softmax, sigmoid = bool(transform.softmax[0]), bool(transform.sigmoid[0])
            if transform.other[0] is not None or softmax == sigmoid:
                return False
        elif isinstance(transform, AsDiscreted):
            if (
                not all(transform.argmax)
                or any(transform.to_onehot)
                or any(t is not None for t in transform.threshold)
                or any(transform.rounding)
            ):
                return False
        elif not isinstance(transform, Invertd):
            return False
    return True


def run_by_parts(post: Compose, data: dict[str, Any]) -> dict[str, Any]:
    """Run a streamable postprocessing slab by slab, without full-size copies.

    Parameters
    ----------
    post : monai.transforms.Compose
        ``Activationsd`` / ``AsDiscreted(argmax)`` / ``Invertd`` on ``pred``
        (see :func:`_streamable`).
    data : dict[str, Any]
        ``image`` (the preprocessed image, for ``Invertd``) and ``pred``
        ``(C, *spatial)``; ``pred`` is changed in place.

    Returns
    -------
    dict[str, Any]
        The data with the postprocessed ``pred``.
    """
    pred: torch.Tensor = data[_PRED_KEY]
    transforms = list(post.transforms)
    index = 0
    while index < len(transforms):
        transform = transforms[index]
        if isinstance(transform, Activationsd):
            _activate_in_place(pred, softmax=bool(transform.softmax[0]))
        elif isinstance(transform, AsDiscreted):
            pred = _argmax_by_slabs(pred)
        elif isinstance(transform, Invertd):
            follows_argmax = index + 1 < len(transforms) and isinstance(
                transforms[index + 1], AsDiscreted
            )
            if pred.shape[0] > 1 and follows_argmax:
                pred = _invert_with_running_argmax(transform, data, pred)
                index += 1  # the argmax is done
            else:
                inverted = _invert_labels_by_slabs(data, pred) if pred.shape[0] == 1 else None
                pred = (
                    inverted
                    if inverted is not None
                    else transform(_with_pred(data, pred))[_PRED_KEY]
                )
        index += 1
    return {**data, _PRED_KEY: pred}


def _slabs(length: int, size: int) -> range:
    return range(0, length, max(1, size))


def _activate_in_place(pred: torch.Tensor, *, softmax: bool) -> None:
    """Softmax (over channels) or sigmoid, slab by slab along the last axis, in place."""
    raw = pred.as_tensor() if isinstance(pred, MetaTensor) else pred
    step = max(1, raw.shape[-1] // 16)
    for start in _slabs(raw.shape[-1], step):
        part = raw[..., start : start + step]
        values = part.float()
        values = torch.softmax(values, dim=0) if softmax else torch.sigmoid(values)
        part.copy_(values.to(part.dtype))


def _argmax_by_slabs(pred: torch.Tensor) -> torch.Tensor:
    """``argmax`` over channels as a ``(1, *spatial)`` float label map, slab by slab."""
    raw = pred.as_tensor() if isinstance(pred, MetaTensor) else pred
    out = torch.empty((1, *raw.shape[1:]), dtype=torch.float32)
    step = max(1, raw.shape[-1] // 16)
    for start in _slabs(raw.shape[-1], step):
        out[0, ..., start : start + step] = torch.argmax(
            raw[..., start : start + step], dim=0
        ).float()
    if isinstance(pred, MetaTensor):
        return MetaTensor(
            out, meta=dict(pred.meta), applied_operations=list(pred.applied_operations)
        )
    return out


def _invert_with_running_argmax(
    invert: Invertd, data: dict[str, Any], pred: torch.Tensor
) -> torch.Tensor:
    """``Invertd`` then argmax, a few channels at a time, keeping the best so far."""
    best_value: torch.Tensor | None = None
    best_label: torch.Tensor | None = None
    meta = dict(pred.meta) if isinstance(pred, MetaTensor) else {}
    ops = list(pred.applied_operations) if isinstance(pred, MetaTensor) else []
    raw = pred.as_tensor() if isinstance(pred, MetaTensor) else pred
    inverted: Any = None
    for start in _slabs(raw.shape[0], _INVERT_CHUNK):
        part = MetaTensor(raw[start : start + _INVERT_CHUNK].float(), meta=dict(meta),
                          applied_operations=list(ops))  # fmt: skip
        inverted = invert(_with_pred(data, part))[_PRED_KEY]
        values, labels = torch.max(torch.as_tensor(inverted), dim=0, keepdim=True)
        labels = labels + start
        if best_value is None or best_label is None:
            best_value, best_label = values, labels
        else:
            better = values > best_value
            best_value = torch.where(better, values, best_value)
            best_label = torch.where(better, labels, best_label)
    if best_label is None:
        raise PipelineError("the network gave no output channel")
    result = best_label.float()
    if isinstance(inverted, MetaTensor):
        return MetaTensor(result, meta=dict(inverted.meta))
    return result


def _invert_labels_by_slabs(data: dict[str, Any], pred: torch.Tensor) -> torch.Tensor | None:
    """``Invertd`` of a label map with nearest neighbour, one slab of the input grid at a time.

    MONAI's ``Invertd`` builds a coordinate grid over the whole input grid (about 40
    bytes per voxel: 3.3 GB for a 512x512x300 CT). When the preprocessing only
    reoriented and resampled (affine operations), inverting is a look-up: each input
    voxel takes the label of the preprocessed voxel nearest to it, through the two
    affines. Done slab by slab, it holds a few slices' grid.

    Returns None (and the caller uses ``Invertd``) when the preprocessing did more.
    """
    image = data.get("image")
    if not isinstance(image, MetaTensor):
        return None
    done = {str(op.get("class", "")) for op in image.applied_operations}
    if not done <= _AFFINE_OPERATIONS or "original_affine" not in image.meta:
        return None
    original_affine = torch.as_tensor(image.meta["original_affine"], dtype=torch.float64)
    shape = [int(v) for v in image.meta["spatial_shape"]]
    to_pre = torch.linalg.inv(torch.as_tensor(image.affine, dtype=torch.float64)) @ original_affine
    labels = (pred.as_tensor() if isinstance(pred, MetaTensor) else pred)[0]
    bounds = torch.tensor(labels.shape, dtype=torch.long)
    out = torch.zeros(shape, dtype=labels.dtype)
    axes = [torch.arange(n, dtype=torch.float64) for n in shape[:2]]
    step = max(1, _SLAB_VOXELS // max(1, shape[0] * shape[1]))
    for start in _slabs(shape[2], step):
        zs = torch.arange(start, min(start + step, shape[2]), dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(axes[0], axes[1], zs, indexing="ij"), dim=-1)
        index = torch.round(grid @ to_pre[:3, :3].T + to_pre[:3, 3]).long()
        inside = ((index >= 0) & (index < bounds)).all(dim=-1)
        clipped = torch.minimum(index.clamp(min=0), bounds - 1)
        values = labels[clipped[..., 0], clipped[..., 1], clipped[..., 2]]
        out[:, :, start : start + step] = torch.where(inside, values, torch.zeros_like(values))
    return MetaTensor(out[None], affine=original_affine)


def _with_pred(data: dict[str, Any], pred: torch.Tensor) -> dict[Any, Any]:
    merged: dict[Any, Any] = dict(data)
    merged[_PRED_KEY] = pred
    return merged
