"""Run a TorchScript model with the preprocessing its pipeline YAML declares.

A TorchScript file carries the network but not how its input was prepared, so
the pipeline definition says it (:class:`pipelines.spec.PreprocessingSpec`):
resize, clip and scale an intensity (or percentile) range to [0, 1], z-score. The output is
resized back onto the input's grid (segmentation) and turned into
probabilities by the declared activation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.data.meta_tensor import MetaTensor
from monai.transforms.intensity.array import (
    NormalizeIntensity,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
)
from monai.transforms.spatial.array import Resize

from pipelines.errors import PipelineConfigError, PipelineError
from pipelines.spec import Activation, PreprocessingSpec

__all__ = ["TorchScriptModel", "load_torchscript"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class TorchScriptModel:
    """A TorchScript network and its declared preprocessing.

    Attributes
    ----------
    path : pathlib.Path
        The ``.ts`` / ``.pt`` file.
    network : torch.nn.Module
        The loaded module, in evaluation mode.
    preprocessing : PreprocessingSpec
        What the pipeline declared.
    device : torch.device
        Where the network runs.
    """

    path: Path
    network: torch.nn.Module
    preprocessing: PreprocessingSpec
    device: torch.device

    def run(self, image: MetaTensor) -> torch.Tensor:
        """Preprocess, run and postprocess one channel-first image.

        Parameters
        ----------
        image : monai.data.MetaTensor
            ``(1, *spatial)``.

        Returns
        -------
        torch.Tensor
            On the CPU, without a batch axis: ``(channels, *spatial)``
            probabilities on the input's grid for a segmentation network, or
            ``(channels,)`` for a classifier.

        Raises
        ------
        PipelineError
            If the network fails on this input.
        """
        started = time.perf_counter()
        prep = self.preprocessing
        x = image.as_tensor().float()
        spatial = tuple(x.shape[1:])
        if prep.spatial_size is not None:
            x = torch.as_tensor(Resize(prep.spatial_size, mode="area")(x))
        if prep.intensity_range is not None:
            low, high = prep.intensity_range
            x = torch.as_tensor(ScaleIntensityRange(low, high, 0.0, 1.0, clip=True)(x))
        if prep.percentiles is not None:
            lower, upper = prep.percentiles
            x = torch.as_tensor(
                ScaleIntensityRangePercentiles(lower, upper, 0.0, 1.0, clip=True)(x)
            )
        if prep.normalize:
            x = torch.as_tensor(NormalizeIntensity()(x))
        x = torch.as_tensor(x).to(self.device)
        try:
            with torch.no_grad():
                out = self.network(x[None])[0].float()
        except RuntimeError as exc:
            raise PipelineError(
                f"TorchScript model {self.path.name} failed on this input (RuntimeError)"
            ) from exc
        if prep.activation is Activation.SOFTMAX:
            out = torch.softmax(out, dim=0)
        elif prep.activation is Activation.SIGMOID:
            out = torch.sigmoid(out)
        out = out.cpu()
        if out.ndim == len(spatial) + 1 and tuple(out.shape[1:]) != spatial:
            out = torch.as_tensor(Resize(spatial, mode="nearest")(out))
        logger.info("torchscript=%s seconds=%.3f", self.path.name, time.perf_counter() - started)
        result: torch.Tensor = out
        return result


def load_torchscript(
    path: Path, preprocessing: PreprocessingSpec, device: torch.device | None = None
) -> TorchScriptModel:
    """Load a TorchScript file.

    Parameters
    ----------
    path : pathlib.Path
        The file written by ``torch.jit.save``.
    preprocessing : PreprocessingSpec
        The preprocessing the pipeline declares for it.
    device : torch.device or None
        Where to run; the first CUDA device if there is one, else the CPU.

    Returns
    -------
    TorchScriptModel
        Ready to run.

    Raises
    ------
    PipelineConfigError
        If the file is missing or is not TorchScript.
    """
    if not path.is_file():
        raise PipelineConfigError(f"TorchScript model {path} does not exist")
    if device is None:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        network: torch.nn.Module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    except (OSError, RuntimeError, ValueError) as exc:
        raise PipelineConfigError(f"{path.name} is not a TorchScript model") from exc
    network.eval()
    return TorchScriptModel(path=path, network=network, preprocessing=preprocessing, device=device)
