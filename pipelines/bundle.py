"""Load a MONAI bundle (Model Zoo layout) as downloaded and run it on one image.

A bundle directory holds::

    configs/metadata.json        network_data_format: inputs, outputs, channel_def
    configs/inference.json       (or .yaml / .yml) preprocessing, network_def,
                                 inferer, postprocessing
    models/model.pt              weights for network_def (a state dict or a checkpoint)
    models/model.ts              or a TorchScript export of the network
    scripts/                     the bundle's own Python components (optional)

:func:`load_bundle` does what ``monai.bundle run`` would, minus the files:

1. Read both configs (:mod:`pipelines.bundle_files`) into ``monai.bundle.ConfigParser``
   with ``bundle_root`` set to the directory, which also goes on the import path
   while the bundle loads and runs, so ``scripts.detection_inferer.RetinaNetInferer``
   resolves (each bundle's ``scripts`` package is kept apart from another's).
2. Apply the node's settings over the bundle's: every ``device`` / ``sw_device`` /
   ``map_location`` item becomes the worker's device, and expressions that name
   ``torch.device('cuda...')`` or call ``.cuda()`` are pointed at it, so a config
   written for a GPU runs on a CPU worker; ``network_def#pretrained`` is set false
   (the weights come from the bundle, and nothing may be downloaded); then the
   pipeline YAML's ``model.overrides`` (any config value, by ID or unique last part).
3. Disable the transforms that read or write files (``LoadImage(d)``,
   ``SaveImage(d)``) wherever they are in the raw configuration (``_disabled_``), so
   a ``"$@transforms"`` list loses them too; after parsing, remove any left in the
   parsed ``Compose`` objects (as MONAI Deploy's ``filter_compose`` does), and drop
   ``EnsureChannelFirst(d)``: the node hands over a channel-first ``MetaTensor``
   (:meth:`pipelines.volume.Volume.to_metatensor`), so ``channel_dim=2`` for a
   JPEG-trained model must not move a spatial axis.
4. An ``Invertd`` that follows an ``AsDiscreted(argmax=True)`` resamples a label map:
   it is set to nearest-neighbour, so no label becomes the average of two others.
5. Weights: ``model.weights`` if the YAML names a file, else the file the bundle's
   own ``CheckpointLoader`` loads (``models/model_lowres.pt`` when
   ``highres: false``), else ``models/model.pt``, else ``models/model.ts``
   (TorchScript). A checkpoint keyed ``model`` / ``state_dict`` / ``network`` (or the
   ``load_dict`` key) is unwrapped, a ``module.`` prefix (DataParallel) removed.
   Everything is mapped to the CPU first, then moved to the device.

A failure says why: a missing optional package names the package (torchvision,
einops ...), a constructor that rejects an argument names the argument and the
MONAI version beside the one the bundle was written for.

:meth:`Bundle.run` adapts the image to the network's declared input (a grey image
repeated into the 3 channels of an RGB-trained 2-D network), runs preprocessing,
inferer and postprocessing, and returns a :class:`BundleOutput`: a tensor for a
segmentation or classification, the non-tensor values (a detector's boxes, a
classifier's dictionary) otherwise. Memory is planned by :mod:`pipelines.bundle_memory`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from monai.bundle.config_parser import ConfigParser
from monai.data.meta_tensor import MetaTensor
from monai.inferers.inferer import Inferer, SimpleInferer
from monai.transforms.compose import Compose
from monai.transforms.post.dictionary import AsDiscreted, Invertd
from monai.transforms.transform import MapTransform
from monai.utils.module import OptionalImportError

from pipelines import bundle_memory
from pipelines.bundle_files import (
    BundleFiles,
    iter_config_ids,
    read_bundle_files,
    resolve_override_keys,
)
from pipelines.errors import PipelineConfigError, PipelineError

__all__ = [
    "CHANNEL_FIRST_TRANSFORMS",
    "IO_TRANSFORMS",
    "Bundle",
    "BundleOutput",
    "load_bundle",
    "strip_io_transforms",
]

logger = logging.getLogger(__name__)

#: Transforms that read or write files; disabled in a bundle's configuration.
IO_TRANSFORMS = frozenset({"LoadImage", "LoadImaged", "SaveImage", "SaveImaged"})
#: Transforms that move the channel axis; the node's input is channel-first already.
CHANNEL_FIRST_TRANSFORMS = frozenset(
    {"EnsureChannelFirst", "EnsureChannelFirstd", "AddChannel", "AddChanneld"}
)
_IMAGE_KEY = "image"
_PRED_KEY = "pred"
_DEVICE_KEYS = frozenset({"device", "sw_device", "map_location"})
_CUDA_DEVICE = re.compile(r"torch\.device\(\s*['\"]cuda(:\d+)?['\"]\s*\)")
_CUDA_CALL = re.compile(r"\.cuda\(\s*\)")
_UNEXPECTED_ARG = re.compile(r"unexpected keyword argument '(\w+)'")
_MISSING_MODULE = re.compile(
    r"No module named '([\w.]+)'|import of ([\w.]+) halted|required package `([\w.]+)`|"
    r"import '([\w.]+)'|module '([\w.]+)'"
)
# Packages whose wheels are named differently from their import name.
_DISTRIBUTIONS = {"skimage": "scikit-image", "ignite": "pytorch-ignite", "PIL": "pillow",
                  "cv2": "opencv-python-headless", "yaml": "pyyaml"}  # fmt: skip
# Components of an inference workflow whose "_requires_" prepare the network or inferer.
_WORKFLOW_KEYS = ("evaluator", "inferer", "network", "network_def", "detector")
_CHECKPOINT_KEYS = ("model", "state_dict", "network", "net", "model_state_dict")


@dataclass(frozen=True, slots=True, eq=False)
class BundleOutput:
    """What a bundle gave for one image.

    Attributes
    ----------
    pred : torch.Tensor or None
        The postprocessed ``pred`` on the CPU without a batch axis: a label map or
        channel probabilities on the input's grid, or a vector of class
        probabilities; None when the output is not a tensor.
    values : dict[str, Any]
        Every other item the postprocessing left (a detector's ``box``, ``label``,
        ``label_scores``; a classifier's dictionary), tensors on the CPU.
    image : monai.data.MetaTensor
        The preprocessed image (its affine places boxes given in its voxels).
    """

    pred: torch.Tensor | None
    values: dict[str, Any]
    image: MetaTensor


class _BundleImports:
    """The bundle's own modules (``scripts...``), swapped in while it loads or runs.

    Two bundles both ship a package called ``scripts``; Python keeps one module
    per name, so each bundle's modules are kept here and put in ``sys.modules``
    only while that bundle is active.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names = {
            p.stem if p.suffix == ".py" else p.name
            for p in root.iterdir()
            if (p.is_dir() and (p / "__init__.py").is_file()) or p.suffix == ".py"
        }
        self.modules: dict[str, ModuleType] = {}

    def _ours(self, name: str) -> bool:
        return name.split(".", 1)[0] in self.names

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = {n: m for n, m in sys.modules.items() if self._ours(n)}
        for name in saved:
            del sys.modules[name]
        sys.modules.update(self.modules)
        sys.path.insert(0, str(self.root))
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(self.root))
            self.modules = {n: m for n, m in sys.modules.items() if self._ours(n)}
            for name in self.modules:
                del sys.modules[name]
            sys.modules.update(saved)


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
        Output channel (or label value) to label name, from ``channel_def``
        (empty for an output without one, e.g. a detector's boxes).
    network : torch.nn.Module
        The network with its weights, in evaluation mode, on :attr:`device`.
    device : torch.device
        Where the network runs.
    files : BundleFiles
        The metadata and raw configuration.
    weights : pathlib.Path
        The weights file that was loaded.
    """

    root: Path
    name: str
    version: str
    labels: dict[int, str]
    network: torch.nn.Module
    device: torch.device
    files: BundleFiles
    weights: Path
    memory_budget_mb: int | None
    _preprocessing: Any
    _inferer: Inferer
    _postprocessing: Any
    _imports: _BundleImports = field(repr=False)

    @property
    def input_channels(self) -> int:
        """Channels the network takes (``num_channels`` of the input)."""
        return self.files.input_channels(_IMAGE_KEY)

    @property
    def preprocessing(self) -> Any:
        """The parsed preprocessing (after the node's changes), or None."""
        return self._preprocessing

    @property
    def inferer(self) -> Inferer:
        """The parsed inferer."""
        return self._inferer

    @property
    def postprocessing(self) -> Any:
        """The parsed postprocessing (after the node's changes), or None."""
        return self._postprocessing

    def run(
        self, image: MetaTensor, memory_plan: bundle_memory.MemoryPlan | None = None
    ) -> BundleOutput:
        """Run preprocessing, inferer and postprocessing on one channel-first image.

        Parameters
        ----------
        image : monai.data.MetaTensor
            ``(1, *spatial)`` with its affine, as ``LoadImage`` plus
            ``EnsureChannelFirst`` would give it.
        memory_plan : MemoryPlan or None
            How to stitch and postprocess; default: planned from the bundle's
            memory budget (:func:`pipelines.bundle_memory.plan`).

        Returns
        -------
        BundleOutput
            The prediction on the CPU.

        Raises
        ------
        PipelineError
            If the bundle's transforms or network fail on this input, or the job
            would not fit the memory budget.
        """
        started = time.perf_counter()
        image = MetaTensor(image, meta=dict(image.meta))
        image.meta["original_channel_dim"] = 0
        if self.input_channels == 3 and image.shape[0] == 1 and image.ndim == 3:
            # An RGB-trained 2-D network: the grey image goes into every channel.
            image = MetaTensor(image.repeat(3, 1, 1), meta=dict(image.meta))
        elif self.input_channels != image.shape[0]:
            raise PipelineConfigError(
                f"bundle {self.name!r} takes {self.input_channels} input channel(s), the job "
                f"gives {image.shape[0]}"
            )
        try:
            with self._imports.active(), torch.no_grad():
                plan = memory_plan or bundle_memory.plan(self, image)
                data = _apply(self._preprocessing, {_IMAGE_KEY: image})
                preprocessed = data[_IMAGE_KEY]
                output = plan.infer(self._inferer, preprocessed[None].to(self.device), self.network)
                data = _with_output(data, output)
                data = plan.postprocess(self._postprocessing, data)
        except PipelineError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise PipelineError(
                f"bundle {self.name!r} failed on this input ({type(exc).__name__}: {_short(exc)})"
            ) from exc
        logger.info("bundle=%s seconds=%.3f", self.name, time.perf_counter() - started)
        pred = data.pop(_PRED_KEY, None)
        data.pop(_IMAGE_KEY, None)
        values = {k: _to_cpu(v) for k, v in data.items() if not _is_meta_key(k)}
        tensor = None
        if isinstance(pred, torch.Tensor):
            raw = pred.as_tensor() if isinstance(pred, MetaTensor) else pred
            tensor = raw.detach().cpu()
        elif pred is not None:
            values[_PRED_KEY] = _to_cpu(pred)
        return BundleOutput(pred=tensor, values=values, image=preprocessed)


def load_bundle(
    root: Path,
    device: torch.device | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    weights: str | None = None,
    memory_budget_mb: int | None = None,
) -> Bundle:
    """Load a MONAI bundle directory in Model Zoo layout, as downloaded.

    Parameters
    ----------
    root : pathlib.Path
        The bundle directory.
    device : torch.device or None
        Where to run the network; the first CUDA device if there is one, else the CPU.
        Every device the bundle's configuration names is replaced by it.
    overrides : Mapping[str, Any] or None
        Config values to replace: config ID (or a unique last part) to value.
    weights : str or None
        The weights file inside the bundle; default: the bundle's own choice.
    memory_budget_mb : int or None
        Peak memory one run may use on a CPU (see :mod:`pipelines.bundle_memory`).

    Returns
    -------
    Bundle
        The parsed transforms, inferer and network with its weights.

    Raises
    ------
    PipelineConfigError
        If a file is missing or cannot be read, an override names no config item,
        the weights do not fit ``network_def``, a package the bundle needs is
        missing, or a component of the configuration cannot be built.
    """
    files = read_bundle_files(Path(root))
    root = files.root
    if device is None:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    imports = _BundleImports(root)
    parser = ConfigParser()
    parser.read_meta(f=files.metadata)
    parser.read_config(f=files.config)
    parser["bundle_root"] = str(root)
    _disable_io_transforms(parser, files.config)
    _set_device(parser, files.config, device)
    if "network_def" in parser and isinstance(parser["network_def"], dict):
        with contextlib.suppress(KeyError):
            if parser["network_def"].get("pretrained") is True:
                # Pretrained backbone weights would be downloaded; the bundle's own replace them.
                parser["network_def#pretrained"] = False
    given = dict(overrides or {})
    for config_id, value in zip(
        resolve_override_keys(files.config, list(given), files.name), given.values(), strict=True
    ):
        parser[config_id] = value
        logger.info("bundle=%s override %s", root.name, config_id)

    try:
        with imports.active():
            weights_path, checkpoint_key = _weights_file(parser, files, weights)
            network = _network(parser, files, weights_path, checkpoint_key, device)
            preprocessing = _filtered(_parsed(parser, "preprocessing"))
            postprocessing = _nearest_after_argmax(_filtered(_parsed(parser, "postprocessing")))
            inferer = _parsed(parser, "inferer") or SimpleInferer()
            _run_requirements(parser, files.config)
    except PipelineConfigError:
        raise
    except Exception as exc:  # a bundle's config can raise anything while it is evaluated
        raise PipelineConfigError(_explain(exc, files)) from exc
    network.eval()
    labels = files.channel_def(_PRED_KEY)
    logger.info(
        "loaded bundle=%s labels=%d device=%s weights=%s",
        root.name,
        len(labels),
        device,
        weights_path.relative_to(root),
    )
    return Bundle(
        root=root,
        name=files.name,
        version=files.version,
        labels=labels,
        network=network,
        device=device,
        files=files,
        weights=weights_path,
        memory_budget_mb=memory_budget_mb,
        _preprocessing=preprocessing,
        _inferer=inferer,
        _postprocessing=postprocessing,
        _imports=imports,
    )


def strip_io_transforms(compose: Any) -> Any:
    """Remove file I/O and channel-moving transforms from a parsed ``Compose``, in place.

    Parameters
    ----------
    compose : Any
        A parsed transform chain; nested ``Compose`` objects are filtered too.

    Returns
    -------
    Any
        The same object, without :data:`IO_TRANSFORMS` and
        :data:`CHANNEL_FIRST_TRANSFORMS`, and with ``allow_missing_keys`` on each
        dictionary transform (a ``label`` key of an evaluation is absent at
        inference); anything that is not a ``Compose`` unchanged.
    """
    if not isinstance(compose, Compose):
        return compose
    kept = []
    for transform in compose.transforms:
        name = type(transform).__name__
        if name in IO_TRANSFORMS or name in CHANNEL_FIRST_TRANSFORMS:
            continue
        if isinstance(transform, MapTransform):
            # Keys only an evaluation has (a "label" beside "pred") are skipped, not fatal.
            transform.allow_missing_keys = True
        kept.append(strip_io_transforms(transform))
    compose.transforms = tuple(kept)
    return compose


def _run_requirements(parser: ConfigParser, config: Mapping[str, Any]) -> None:
    """Evaluate what the bundle's inference workflow requires before it runs.

    ``"_requires_": "@detector_ops"`` on the evaluator is how a bundle configures
    its detector (target keys, score threshold, NMS) before inference; the node
    never builds the evaluator (it has no data loader), so it runs those items.
    """
    for key in _WORKFLOW_KEYS:
        item = config.get(key)
        requires = item.get("_requires_") if isinstance(item, dict) else None
        for reference in requires if isinstance(requires, list) else [requires]:
            if isinstance(reference, str) and reference.startswith("@"):
                parser.get_parsed_content(reference[1:])


def _filtered(section: Any) -> Any:
    if section is None:
        return None
    if isinstance(section, list | tuple):
        section = Compose(list(section))
    return strip_io_transforms(section)


def _nearest_after_argmax(compose: Any) -> Any:
    """Set ``Invertd`` after an ``AsDiscreted(argmax)`` of the same key to nearest."""
    if not isinstance(compose, Compose):
        return compose
    discrete: set[str] = set()
    for transform in compose.transforms:
        if isinstance(transform, AsDiscreted):
            for key, argmax in zip(transform.keys, transform.argmax, strict=False):
                if argmax:
                    discrete.add(str(key))
        elif isinstance(transform, Invertd):
            nearest = list(transform.nearest_interp)
            for index, key in enumerate(transform.keys):
                if str(key) in discrete and not nearest[index]:
                    logger.info("Invertd of label map %r set to nearest interpolation", key)
                    nearest[index] = True
            transform.nearest_interp = tuple(nearest)
    return compose


def _disable_io_transforms(parser: ConfigParser, config: Mapping[str, Any]) -> None:
    for config_id, value in list(iter_config_ids(config)):
        if isinstance(value, dict) and _target_name(value) in IO_TRANSFORMS:
            parser[f"{config_id}#_disabled_"] = True


def _set_device(parser: ConfigParser, config: Mapping[str, Any], device: torch.device) -> None:
    """Point every device the configuration names at the worker's device."""
    expression = f"$torch.device('{device}')"
    for config_id, value in list(iter_config_ids(config)):
        last = config_id.rsplit("#", 1)[-1]
        if config_id.startswith("_meta_"):
            continue
        if last in _DEVICE_KEYS and isinstance(value, str):
            parser[config_id] = expression
        elif (
            isinstance(value, str)
            and value.startswith("$")
            and (_CUDA_DEVICE.search(value) or _CUDA_CALL.search(value))
        ):
            value = _CUDA_DEVICE.sub(f"torch.device('{device}')", value)
            parser[config_id] = _CUDA_CALL.sub(f".to(torch.device('{device}'))", value)


def _target_name(item: Any) -> str:
    if not isinstance(item, dict):
        return ""
    return str(item.get("_target_", "")).rsplit(".", 1)[-1]


def _parsed(parser: ConfigParser, key: str) -> Any:
    return parser.get_parsed_content(key) if key in parser else None


def _weights_file(
    parser: ConfigParser, files: BundleFiles, chosen: str | None
) -> tuple[Path, str | None]:
    """The weights file to load and the checkpoint key its CheckpointLoader uses."""
    root = files.root
    if chosen is not None:
        path = root / chosen
        if not path.is_file():
            raise PipelineConfigError(f"bundle {root.name}: model.weights {chosen} does not exist")
        return path, None
    for config_id, value in iter_config_ids(files.config):
        if _target_name(value) != "CheckpointLoader" or config_id.startswith("_meta_"):
            continue
        if value.get("_disabled_") is True:
            continue
        load_path = parser.get_parsed_content(f"{config_id}#load_path")
        path = Path(str(load_path))
        path = path if path.is_absolute() else root / path
        load_dict = value.get("load_dict")
        key = next(iter(load_dict)) if isinstance(load_dict, dict) and load_dict else None
        if path.is_file():
            return path, key
        logger.info("bundle=%s: its CheckpointLoader file %s is missing", root.name, path.name)
    for name in ("model.pt", "model.ts"):
        if (root / "models" / name).is_file():
            return root / "models" / name, None
    raise PipelineConfigError(
        f"bundle {root.name}: no weights (models/model.pt for network_def, or models/model.ts)"
    )


def _network(
    parser: ConfigParser,
    files: BundleFiles,
    weights: Path,
    checkpoint_key: str | None,
    device: torch.device,
) -> torch.nn.Module:
    """The network: ``network_def`` with a state dict, or a TorchScript module."""
    name = files.root.name
    if weights.suffix == ".ts" or _is_torchscript(weights):
        try:
            module: torch.nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(weights), map_location=device
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise PipelineConfigError(f"bundle {name}: {weights.name} cannot be read") from exc
        return module
    definition = next((k for k in ("network_def", "network") if k in parser), None)
    if definition is None:
        raise PipelineConfigError(
            f"bundle {name}: {weights.name} needs network_def in the configuration"
        )
    network = parser.get_parsed_content(definition)
    if not isinstance(network, torch.nn.Module):
        raise PipelineConfigError(f"bundle {name}: {definition} is not a torch module")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise PipelineConfigError(f"bundle {name}: {weights.name} cannot be read") from exc
    state = _state_dict(state, checkpoint_key)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        missing, unexpected = _key_mismatch(network, state)
        raise PipelineConfigError(
            f"bundle {name}: {weights.name} does not fit {definition} "
            f"({len(missing)} missing key(s) e.g. {missing[:2]}, {len(unexpected)} unexpected "
            f"e.g. {unexpected[:2]}, or different shapes)"
        ) from exc
    return network.to(device)


def _is_torchscript(path: Path) -> bool:
    """Whether a ``.pt`` file is a TorchScript archive (it holds ``constants.pkl``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _state_dict(state: Any, key: str | None) -> Any:
    """Unwrap a checkpoint to the network's state dict."""
    if isinstance(state, Mapping):
        for candidate in (key, *_CHECKPOINT_KEYS):
            inner = state.get(candidate) if candidate else None
            if isinstance(inner, Mapping):
                state = inner
                break
        if state and all(str(k).startswith("module.") for k in state):
            state = {str(k)[len("module.") :]: v for k, v in state.items()}
    return state


def _key_mismatch(network: torch.nn.Module, state: Any) -> tuple[list[str], list[str]]:
    ours = set(network.state_dict())
    theirs = set(state) if isinstance(state, Mapping) else set()
    return sorted(ours - theirs), sorted(theirs - ours)


def _explain(exc: BaseException, files: BundleFiles) -> str:
    """A reason for a configuration that failed to build, naming what is missing."""
    name = files.root.name
    chain = list(_causes(exc))
    for item in chain:
        if isinstance(item, OptionalImportError | ModuleNotFoundError | ImportError):
            package = _missing_package(str(item))
            if package is not None and not _is_bundle_module(package, files):
                hint = (
                    " (install the 'torchvision' extra: pip install 'dicom-node[torchvision]' "
                    "with a torchvision built for this torch)"
                    if package == "torchvision"
                    else " (pip install 'dicom-node[bundles]' or the package itself)"
                )
                return f"bundle {name} needs the package {package}, not installed here{hint}"
    for item in chain:
        found = _UNEXPECTED_ARG.search(str(item))
        if isinstance(item, TypeError) and found:
            component = _component(chain)
            wanted = files.metadata.get("monai_version", "unknown")
            return (
                f"bundle {name}: {component} does not take the argument {found.group(1)!r} in "
                f"MONAI {_installed('monai')}; the bundle was written for MONAI {wanted}: "
                "override the argument in model.overrides or use a bundle made for this MONAI"
            )
    last = chain[-1]
    return (
        f"bundle {name}: its configuration cannot be evaluated "
        f"({type(last).__name__}: {_short(last)})"
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _component(chain: list[BaseException]) -> str:
    for item in chain:
        found = re.search(r"Failed to instantiate component '([^']+)'", str(item))
        if found:
            return found.group(1).rsplit(".", 1)[-1]
    return "a component"


def _missing_package(message: str) -> str | None:
    found = _MISSING_MODULE.search(message)
    if found is None:
        return None
    module = next(g for g in found.groups() if g)
    top = module.split(".", 1)[0]
    return _DISTRIBUTIONS.get(top, top)


def _is_bundle_module(package: str, files: BundleFiles) -> bool:
    return (files.root / package).is_dir() or (files.root / f"{package}.py").is_file()


def _installed(distribution: str) -> str:
    try:
        return installed_version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _apply(transforms: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Run a dictionary or array transform chain on the image."""
    if transforms is None:
        return data
    if _is_map_compose(transforms):
        result = transforms(data)
        if isinstance(result, list):  # a transform that yields samples: inference takes one
            result = result[0]
        return dict(result)
    return {**data, _IMAGE_KEY: transforms(data[_IMAGE_KEY])}


def _is_map_compose(transforms: Any) -> bool:
    if isinstance(transforms, Compose):
        return any(isinstance(t, MapTransform | Compose) for t in transforms.transforms)
    return isinstance(transforms, MapTransform)


def _with_output(data: dict[str, Any], output: Any) -> dict[str, Any]:
    """Put the network's output for the one image into the data, as the bundle's handler does."""
    batched = True
    if isinstance(output, list | tuple) and output and isinstance(output[0], Mapping):
        output, batched = output[0], False  # a detector: one dictionary per image
    elif isinstance(output, list | tuple) and output and isinstance(output[0], torch.Tensor):
        output = output[0][0]  # deep supervision: the first head, first image
    elif isinstance(output, torch.Tensor):
        output = output[0]
    if isinstance(output, Mapping):
        merged = dict(data)
        for key, value in output.items():
            merged[str(key)] = value[0] if batched and _batched(value) else value
        return merged
    if not isinstance(output, torch.Tensor):
        raise PipelineError(
            f"the network gave a {type(output).__name__}, not a tensor or a dictionary"
        )
    pred = output.detach()
    return {**data, _PRED_KEY: pred if isinstance(pred, MetaTensor) else MetaTensor(pred)}


def _batched(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == 1


def _to_cpu(value: Any) -> Any:
    if isinstance(value, MetaTensor):
        return value.as_tensor().detach().cpu()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return value


def _is_meta_key(key: str) -> bool:
    return key.endswith(("_meta_dict", "_transforms"))


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200]
