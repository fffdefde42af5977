"""What a bundle pipeline needs, checked before its first job (no torch, no MONAI).

``configs/metadata.json`` of a Model Zoo bundle names the MONAI and torch versions
it was made with, its optional packages (``optional_packages_version``: einops,
nibabel, torchvision, ...) and each input's ``num_channels``. :func:`check_pipeline`
compares them with what this Python environment has installed and with what the
pipeline gives the network (one series per job: one channel, or a grey image for
a 3-channel 2-D network), and reports the labels that no code table knows. It
runs at ``dicom-node config check`` and when a worker starts, so a missing
package or an impossible input is named before a study arrives, not as a crash
in the network.

A finding is an **error** when the bundle cannot run here (a package its
configuration or scripts import is missing, MONAI older in its major.minor than
the bundle's, more input channels than one series gives, no weights) and a
**warning** otherwise (a package only listed in the metadata, e.g. for training,
labels coded in the node's private scheme).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from importlib.util import find_spec
from pathlib import Path

from pipelines.bundle_files import BundleFiles, iter_config_ids, read_bundle_files
from pipelines.errors import PipelineConfigError
from pipelines.label_table import LabelResolution, resolve_labels
from pipelines.spec import ModelKind, PipelineSpec, TaskKind

__all__ = ["CheckLevel", "CheckResult", "check_pipeline", "pipeline_labels"]

# Distribution name -> the module it installs, where they differ.
_IMPORT_NAMES = {
    "pytorch-ignite": "ignite",
    "scikit-image": "skimage",
    "opencv-python": "cv2",
    "opencv-python-headless": "cv2",
    "pillow": "PIL",
    "pyyaml": "yaml",
    "tensorboard": "tensorboard",
}
# MONAI components that need an optional package (the config names the class only).
_COMPONENT_PACKAGES = {
    "TorchVisionFCModel": "torchvision",
    "TorchVisionFullyConvModel": "torchvision",
    "resnet_fpn_feature_extractor": "torchvision",
    "ITKReader": "itk",
}
_IMPORT_EXPR = re.compile(r"^\$\s*(?:import\s+([\w.]+)|from\s+([\w.]+)\s+import)")


class CheckLevel(StrEnum):
    """How serious a finding is."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One finding about a pipeline's bundle.

    Attributes
    ----------
    level : CheckLevel
        error (the bundle cannot run here) or warning.
    message : str
        What is wrong and what to do, naming the package, version or label.
    """

    level: CheckLevel
    message: str


def pipeline_labels(spec: PipelineSpec) -> LabelResolution:
    """The labels a pipeline writes: the YAML's, or the bundle's with table codes.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline.

    Returns
    -------
    LabelResolution
        For a bundle, every ``channel_def`` label (or only the listed ones), each
        with its channel as ``value``; for another model, the YAML's labels.

    Raises
    ------
    PipelineConfigError
        If the bundle cannot be read, or a YAML label names no channel.
    """
    if spec.model.kind is not ModelKind.BUNDLE or spec.task is TaskKind.DETECTION:
        return LabelResolution(
            labels=tuple(spec.labels), unmapped=(), sources={lb.name: "yaml" for lb in spec.labels}
        )
    if spec.model.path is None:
        raise PipelineConfigError(f"pipeline {spec.name!r}: model.path is missing")
    files = read_bundle_files(spec.model.path)
    channel_def = files.channel_def()
    if not channel_def:
        raise PipelineConfigError(
            f"bundle {files.root.name}: metadata.json has no "
            "network_data_format.outputs.pred.channel_def"
        )
    try:
        return resolve_labels(
            channel_def,
            spec.labels,
            all_labels=spec.all_bundle_labels,
            skip_background=spec.task is TaskKind.SEGMENTATION,
        )
    except ValueError as exc:
        raise PipelineConfigError(
            f"bundle {files.root.name} of pipeline {spec.name!r}: {exc}"
        ) from exc


def check_pipeline(spec: PipelineSpec, *, environment: bool = True) -> list[CheckResult]:
    """Check a bundle pipeline against this environment and its own definition.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline; other model kinds give no findings.
    environment : bool
        Whether to compare the bundle's MONAI/torch versions and the packages it
        imports with what is installed here. False on a machine without the
        compute side (a node's own install): its workers check those at start.

    Returns
    -------
    list[CheckResult]
        Errors first, then warnings; empty when all is well.
    """
    if spec.model.kind is not ModelKind.BUNDLE or spec.model.path is None:
        return []
    try:
        files = read_bundle_files(spec.model.path)
    except PipelineConfigError as exc:
        return [CheckResult(CheckLevel.ERROR, exc.reason)]
    results: list[CheckResult] = []
    if environment:
        results += _versions(files)
        results += _packages(files)
    results += _channels(files, spec)
    results += _weights(files, spec)
    try:
        resolution = pipeline_labels(spec)
    except PipelineConfigError as exc:
        results.append(CheckResult(CheckLevel.ERROR, exc.reason))
    else:
        if resolution.unmapped:
            shown = ", ".join(resolution.unmapped[:8])
            more = (
                f" and {len(resolution.unmapped) - 8} more" if len(resolution.unmapped) > 8 else ""
            )
            results.append(
                CheckResult(
                    CheckLevel.WARNING,
                    f"{len(resolution.unmapped)} label(s) have no code in the label tables and "
                    f"are written with a private code: {shown}{more}; add YAML labels to code them",
                )
            )
    return sorted(results, key=lambda r: r.level is not CheckLevel.ERROR)


def _versions(files: BundleFiles) -> list[CheckResult]:
    results: list[CheckResult] = []
    for distribution, key in (("monai", "monai_version"), ("torch", "pytorch_version")):
        wanted = files.metadata.get(key)
        if not wanted:
            continue
        have = _installed(distribution)
        if have is None:
            results.append(CheckResult(CheckLevel.ERROR, f"{distribution} is not installed"))
        elif _major_minor(have) < _major_minor(str(wanted)):
            level = CheckLevel.ERROR if distribution == "monai" else CheckLevel.WARNING
            results.append(
                CheckResult(
                    level,
                    f"bundle {files.root.name} was made with {distribution} {wanted}, this "
                    f"environment has {have}: upgrade {distribution}",
                )
            )
    return results


def _packages(files: BundleFiles) -> list[CheckResult]:
    """Packages the bundle imports (errors) or only lists in its metadata (warnings)."""
    needed = _imported_packages(files)
    listed = files.metadata.get("optional_packages_version") or {}
    results: list[CheckResult] = []
    for package, why in sorted(needed.items()):
        if not _importable(package):
            hint = (
                "pip install 'dicom-node[torchvision]' with the torchvision built for this torch"
                if package == "torchvision"
                else "pip install 'dicom-node[bundles]'"
            )
            results.append(
                CheckResult(
                    CheckLevel.ERROR,
                    f"bundle {files.root.name} needs {package} ({why}), not installed: {hint}",
                )
            )
    if isinstance(listed, dict):
        for distribution, wanted in sorted(listed.items()):
            module = _IMPORT_NAMES.get(distribution, distribution.replace("-", "_"))
            if module in needed or _importable(module):
                continue
            results.append(
                CheckResult(
                    CheckLevel.WARNING,
                    f"bundle {files.root.name} lists {distribution} {wanted} in its metadata, "
                    "not installed (its inference configuration does not import it)",
                )
            )
    return results


def _imported_packages(files: BundleFiles) -> dict[str, str]:
    """Top-level packages the inference configuration and the bundle's scripts import."""
    own = {p.name for p in files.root.iterdir() if p.is_dir()} | {
        p.stem for p in files.root.glob("*.py")
    }
    needed: dict[str, str] = {}
    for config_id, value in iter_config_ids(files.config):
        if isinstance(value, str):
            found = _IMPORT_EXPR.match(value)
            if found and config_id.split("#", 1)[0] == "imports":
                module = (found.group(1) or found.group(2)).split(".", 1)[0]
                needed.setdefault(module, f"{files.config_path.name} imports it")
        if isinstance(value, dict):
            target = str(value.get("_target_", "")).rsplit(".", 1)[-1]
            if target in _COMPONENT_PACKAGES:
                needed.setdefault(_COMPONENT_PACKAGES[target], f"{target} uses it")
        if isinstance(value, str) and value.startswith("$"):
            for component, package in _COMPONENT_PACKAGES.items():
                if f"{component}(" in value:
                    needed.setdefault(package, f"{component} uses it")
    for path in (
        sorted((files.root / "scripts").rglob("*.py")) if (files.root / "scripts").is_dir() else []
    ):
        for module in _top_level_imports(path):
            if module not in own and module not in sys.stdlib_module_names:
                needed.setdefault(module, f"{path.relative_to(files.root)} imports it")
    return {k: v for k, v in needed.items() if k not in own and k not in sys.stdlib_module_names}


def _top_level_imports(path: Path) -> set[str]:
    """Modules a script imports at module level (not inside functions or ``try``)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return set()
    modules: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".", 1)[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".", 1)[0])
    return modules


def _channels(files: BundleFiles, spec: PipelineSpec) -> list[CheckResult]:
    channels = files.input_channels()
    if channels <= 1:
        return []
    dims = files.input_spatial_dims()
    if channels == 3 and (dims == 2 or spec.task is TaskKind.CLASSIFICATION):
        return []  # an RGB-trained 2-D network: the grey image is repeated
    return [
        CheckResult(
            CheckLevel.ERROR,
            f"bundle {files.root.name} takes {channels} input channels, but pipeline "
            f"{spec.name!r} gives it one series (one channel) per job",
        )
    ]


def _weights(files: BundleFiles, spec: PipelineSpec) -> list[CheckResult]:
    models = files.root / "models"
    if spec.model.weights is not None:
        present = (files.root / spec.model.weights).is_file()
    else:
        present = models.is_dir() and any(
            p.suffix in (".pt", ".ts", ".pth") for p in models.iterdir()
        )
    if present:
        return []
    return [
        CheckResult(
            CheckLevel.ERROR,
            f"bundle {files.root.name} has no weights in models/ (download them as its "
            "large_files.yml says)",
        )
    ]


def _installed(distribution: str) -> str | None:
    try:
        return installed_version(distribution)
    except PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _major_minor(version: str) -> tuple[int, int]:
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    while len(numbers) < 2:
        numbers.append(0)
    return numbers[0], numbers[1]
