"""Load a MONAI bundle (Model Zoo layout) and run it on one image.

A bundle directory holds::

    configs/metadata.json        network_data_format: inputs, outputs, channel_def
    configs/inference.json       (or .yaml / .yml) preprocessing, network_def,
                                 inferer, postprocessing
    models/model.pt              weights (a state dict) for network_def
    models/model.ts              or a TorchScript export of the network

:func:`load_bundle` reads the configuration with ``monai.bundle.ConfigParser``,
with ``bundle_root`` set to the directory, and keeps the bundle's own
preprocessing, inferer and postprocessing. The transforms that read or write
files (``LoadImage(d)``, ``SaveImage(d)``) are removed before the configuration
is parsed: the node hands the image over as a ``MetaTensor``, already loaded
the way ``LoadImage`` would (:meth:`pipelines.volume.Volume.to_metatensor`),
and takes the prediction back in memory. Postprocessing that refers to
``@preprocessing`` (``Invertd``) sees the stripped chain, so inverting it brings
the prediction back onto the input's grid.

Label names come from ``network_data_format.outputs.pred.channel_def`` in the
metadata: the pipeline's labels are matched to the bundle's by name.

The dictionary keys are MONAI's usual ``image`` (input) and ``pred`` (output).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle.config_parser import ConfigParser
from monai.data.meta_tensor import MetaTensor
from monai.inferers.inferer import Inferer, SimpleInferer

from pipelines.errors import PipelineConfigError, PipelineError

__all__ = ["IO_TRANSFORMS", "Bundle", "load_bundle", "strip_io_transforms"]

logger = logging.getLogger(__name__)

#: Transforms that read or write files; stripped from a bundle's pre- and postprocessing.
IO_TRANSFORMS = frozenset({"LoadImage", "LoadImaged", "SaveImage", "SaveImaged"})
_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
_IMAGE_KEY = "image"
_PRED_KEY = "pred"


@dataclass(frozen=True, slots=True, eq=False)
class Bundle:
    """A loaded bundle, ready to run.

    Attributes
    ----------
    root : pathlib.Path
        The bundle directory.
    name : str
        ``name`` from the metadata (or the directory name).
    version : str
        ``version`` from the metadata.
    labels : dict[int, str]
        Output channel (or label value) to label name, from ``channel_def``.
    network : torch.nn.Module
        The network with its weights, in evaluation mode, on :attr:`device`.
    device : torch.device
        Where the network runs.
    """

    root: Path
    name: str
    version: str
    labels: dict[int, str]
    network: torch.nn.Module
    device: torch.device
    _preprocessing: Any
    _inferer: Inferer
    _postprocessing: Any

    def run(self, image: MetaTensor) -> torch.Tensor:
        """Run preprocessing, inferer and postprocessing on one channel-first image.

        Parameters
        ----------
        image : monai.data.MetaTensor
            ``(1, *spatial)`` with its affine, as ``LoadImage`` plus
            ``EnsureChannelFirst`` would give it.

        Returns
        -------
        torch.Tensor
            The postprocessed ``pred`` on the CPU, without a batch axis: a label
            map or channel probabilities on the input's grid for a segmentation,
            a vector of class probabilities for a classifier.

        Raises
        ------
        PipelineError
            If the bundle's transforms or network fail on this input.
        """
        started = time.perf_counter()
        image = MetaTensor(image, meta=dict(image.meta))
        # Channel first already: EnsureChannelFirst(d) in the bundle becomes a no-op.
        image.meta["original_channel_dim"] = 0
        try:
            data: dict[str, Any] = {_IMAGE_KEY: image}
            if self._preprocessing is not None:
                data = self._preprocessing(data)
            batch = data[_IMAGE_KEY].unsqueeze(0).to(self.device)
            with torch.no_grad():
                output = self._inferer(batch, self.network)
            pred = output[0].detach().cpu()
            if not isinstance(pred, MetaTensor):
                pred = MetaTensor(pred)
            data[_PRED_KEY] = pred
            if self._postprocessing is not None:
                data = self._postprocessing(data)
            result = data[_PRED_KEY]
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise PipelineError(
                f"bundle {self.name!r} failed on this input ({type(exc).__name__})"
            ) from exc
        logger.info("bundle=%s seconds=%.3f", self.name, time.perf_counter() - started)
        tensor = result.as_tensor() if isinstance(result, MetaTensor) else torch.as_tensor(result)
        return tensor.detach().cpu()


def load_bundle(root: Path, device: torch.device | None = None) -> Bundle:
    """Load a MONAI bundle directory in Model Zoo layout.

    Parameters
    ----------
    root : pathlib.Path
        The bundle directory.
    device : torch.device or None
        Where to run the network; the first CUDA device if there is one, else the CPU.

    Returns
    -------
    Bundle
        The parsed transforms, inferer and network with its weights.

    Raises
    ------
    PipelineConfigError
        If the directory, its metadata or inference configuration, its
        ``channel_def`` or its weights are missing or cannot be read, or the
        configuration does not define ``network_def`` (or ``network``) when only
        ``model.pt`` is given.
    """
    root = Path(root)
    if not root.is_dir():
        raise PipelineConfigError(f"bundle directory {root} does not exist")
    meta_path = root / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise PipelineConfigError(f"bundle {root.name}: configs/metadata.json is missing")
    config_path = next(
        (root / "configs" / n for n in _CONFIG_NAMES if (root / "configs" / n).is_file()), None
    )
    if config_path is None:
        raise PipelineConfigError(
            f"bundle {root.name}: configs/inference.json (or .yaml) is missing"
        )
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PipelineConfigError(f"bundle {root.name}: metadata.json is not valid JSON") from exc
    labels = _channel_def(metadata, root.name)
    if device is None:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")

    parser = ConfigParser()
    try:
        parser.read_meta(str(meta_path))
        parser.read_config(str(config_path))
    except (OSError, ValueError) as exc:
        raise PipelineConfigError(f"bundle {root.name}: {config_path.name} cannot be read") from exc
    parser["bundle_root"] = str(root)
    if "device" in parser:
        parser["device"] = f"$torch.device('{device}')"
    for section in ("preprocessing", "postprocessing"):
        if section in parser:
            parser[section] = strip_io_transforms(parser[section])

    try:
        network = _network(parser, root, device)
        preprocessing = _parsed(parser, "preprocessing")
        postprocessing = _parsed(parser, "postprocessing")
        inferer = _parsed(parser, "inferer") or SimpleInferer()
    except PipelineConfigError:
        raise
    except Exception as exc:  # a bundle's config can raise anything while it is evaluated
        raise PipelineConfigError(
            f"bundle {root.name}: its configuration cannot be evaluated ({type(exc).__name__}: "
            f"{exc})"
        ) from exc
    network.eval()
    logger.info("loaded bundle=%s labels=%d device=%s", root.name, len(labels), device)
    return Bundle(
        root=root,
        name=str(metadata.get("name") or root.name),
        version=str(metadata.get("version", "")),
        labels=labels,
        network=network,
        device=device,
        _preprocessing=preprocessing,
        _inferer=inferer,
        _postprocessing=postprocessing,
    )


def _channel_def(metadata: dict[str, Any], name: str) -> dict[int, str]:
    """Label names by channel from ``network_data_format.outputs.pred.channel_def``."""
    try:
        raw = metadata["network_data_format"]["outputs"][_PRED_KEY]["channel_def"]
        labels = {int(k): str(v) for k, v in raw.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PipelineConfigError(
            f"bundle {name}: metadata.json has no network_data_format.outputs.pred.channel_def"
        ) from exc
    if not labels:
        raise PipelineConfigError(f"bundle {name}: channel_def is empty")
    return labels


def strip_io_transforms(section: Any) -> Any:
    """Drop the file-reading and -writing transforms from a Compose's configuration.

    Parameters
    ----------
    section : Any
        A raw (unparsed) configuration item, e.g. ``{"_target_": "Compose",
        "transforms": [...]}``.

    Returns
    -------
    Any
        The same item without the :data:`IO_TRANSFORMS` in its ``transforms``
        list; anything else unchanged.
    """
    if not isinstance(section, dict) or not isinstance(section.get("transforms"), list):
        return section
    kept = [t for t in section["transforms"] if _target_name(t) not in IO_TRANSFORMS]
    return {**section, "transforms": kept}


def _target_name(item: Any) -> str:
    if not isinstance(item, dict):
        return ""
    return str(item.get("_target_", "")).rsplit(".", 1)[-1]


def _parsed(parser: ConfigParser, key: str) -> Any:
    return parser.get_parsed_content(key) if key in parser else None


def _network(parser: ConfigParser, root: Path, device: torch.device) -> torch.nn.Module:
    """The network: ``network_def`` with ``models/model.pt``, else ``models/model.ts``."""
    weights = root / "models" / "model.pt"
    torchscript = root / "models" / "model.ts"
    definition = next((k for k in ("network_def", "network") if k in parser), None)
    if weights.is_file() and definition is not None:
        network = parser.get_parsed_content(definition)
        if not isinstance(network, torch.nn.Module):
            raise PipelineConfigError(f"bundle {root.name}: {definition} is not a torch module")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise PipelineConfigError(
                f"bundle {root.name}: models/model.pt cannot be read"
            ) from exc
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # a checkpoint holding the state dict
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise PipelineConfigError(
                f"bundle {root.name}: models/model.pt does not fit {definition}"
            ) from exc
        return network.to(device)
    if torchscript.is_file():
        try:
            module: torch.nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(torchscript), map_location=device
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise PipelineConfigError(
                f"bundle {root.name}: models/model.ts cannot be read"
            ) from exc
        return module
    raise PipelineConfigError(
        f"bundle {root.name}: needs models/model.pt with network_def, or models/model.ts"
    )
