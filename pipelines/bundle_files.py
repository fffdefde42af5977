"""Read a MONAI bundle's files as plain data, without torch or MONAI.

A bundle directory in Model Zoo layout holds ``configs/metadata.json`` (what the
network takes and gives, the MONAI and torch versions it was made with, the
packages it needs) and ``configs/inference.json`` (or ``.yaml``). This module
reads both as JSON/YAML so that the node (which never imports torch) can check a
bundle at ``dicom-node config check``, and resolves the pipeline YAML's
``model.overrides`` to config IDs, the way ``monai.bundle run --key value``
addresses them.

An override key is a config ID (``inferer#sw_batch_size``,
``displayable_configs#highres``) or its last part alone (``highres``) when that
names one item. Where several items end in the same name and all but one merely
refer to it (``inferer#sw_batch_size: "@displayable_configs#sw_batch_size"``),
the one referred to is meant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import PipelineConfigError

__all__ = [
    "CONFIG_NAMES",
    "BundleFiles",
    "iter_config_ids",
    "read_bundle_files",
    "resolve_override_keys",
]

#: Inference configuration file names, in order of preference.
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
_ID_SEP = "#"


@dataclass(frozen=True, slots=True, eq=False)
class BundleFiles:
    """A bundle's metadata and raw inference configuration.

    Attributes
    ----------
    root : pathlib.Path
        The bundle directory.
    metadata : dict
        ``configs/metadata.json``.
    config_path : pathlib.Path
        The inference configuration file.
    config : dict
        Its content, unparsed.
    """

    root: Path
    metadata: dict[str, Any]
    config_path: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        """``name`` from the metadata, else the directory name."""
        return str(self.metadata.get("name") or self.root.name)

    @property
    def version(self) -> str:
        """``version`` from the metadata."""
        return str(self.metadata.get("version", ""))

    def channel_def(self, key: str = "pred") -> dict[int, str]:
        """Output channel to name, from ``network_data_format.outputs.<key>.channel_def``.

        Parameters
        ----------
        key : str
            The output's name.

        Returns
        -------
        dict[int, str]
            Empty when the output has no ``channel_def`` (a detector's boxes).

        Raises
        ------
        PipelineConfigError
            If the ``channel_def`` is there but its keys are not integers.
        """
        raw = self._format("outputs", key).get("channel_def") or {}
        try:
            return {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise PipelineConfigError(
                f"bundle {self.root.name}: channel_def of output {key!r} must map channel "
                "numbers to names"
            ) from exc

    def input_channels(self, key: str = "image") -> int:
        """``num_channels`` of an input (1 when not given)."""
        try:
            return int(self._format("inputs", key).get("num_channels", 1))
        except (TypeError, ValueError):
            return 1

    def input_spatial_dims(self, key: str = "image") -> int | None:
        """Number of spatial axes of an input's ``spatial_shape``, when given."""
        shape = self._format("inputs", key).get("spatial_shape")
        return len(shape) if isinstance(shape, list) and shape else None

    def output_type(self, key: str = "pred") -> str:
        """``type`` of an output (``image``, ``object``, ``probabilities`` ...)."""
        return str(self._format("outputs", key).get("type", ""))

    def _format(self, direction: str, key: str) -> dict[str, Any]:
        section = self.metadata.get("network_data_format", {})
        item = section.get(direction, {}).get(key, {}) if isinstance(section, dict) else {}
        return item if isinstance(item, dict) else {}


def read_bundle_files(root: Path) -> BundleFiles:
    """Read ``configs/metadata.json`` and the inference configuration of a bundle.

    Parameters
    ----------
    root : pathlib.Path
        The bundle directory.

    Returns
    -------
    BundleFiles
        Both files' content.

    Raises
    ------
    PipelineConfigError
        If the directory or either file is missing or is not valid JSON / YAML.
    """
    root = Path(root)
    if not root.is_dir():
        raise PipelineConfigError(f"bundle directory {root} does not exist")
    meta_path = root / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise PipelineConfigError(f"bundle {root.name}: configs/metadata.json is missing")
    config_path = next(
        (root / "configs" / n for n in CONFIG_NAMES if (root / "configs" / n).is_file()), None
    )
    if config_path is None:
        raise PipelineConfigError(
            f"bundle {root.name}: configs/inference.json (or .yaml) is missing"
        )
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PipelineConfigError(f"bundle {root.name}: metadata.json is not valid JSON") from exc
    try:
        text = config_path.read_text(encoding="utf-8")
        config = json.loads(text) if config_path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise PipelineConfigError(f"bundle {root.name}: {config_path.name} cannot be read") from exc
    if not isinstance(metadata, dict) or not isinstance(config, dict):
        raise PipelineConfigError(
            f"bundle {root.name}: metadata.json and {config_path.name} must hold mappings"
        )
    return BundleFiles(root=root, metadata=metadata, config_path=config_path, config=config)


def iter_config_ids(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every config ID of a raw configuration with its value, depth first.

    Parameters
    ----------
    config : Any
        A raw configuration (mappings and lists).
    prefix : str
        The ID of ``config`` itself.

    Yields
    ------
    tuple[str, Any]
        ``("inferer#roi_size", [96, 96, 96])``, ... (list items by index).
    """
    items: Iterator[tuple[str, Any]]
    if isinstance(config, Mapping):
        items = ((str(k), v) for k, v in config.items())
    elif isinstance(config, list):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return
    for key, value in items:
        config_id = f"{prefix}{_ID_SEP}{key}" if prefix else key
        yield config_id, value
        yield from iter_config_ids(value, config_id)


def resolve_override_keys(config: Mapping[str, Any], keys: list[str], bundle: str) -> list[str]:
    """Turn the pipeline YAML's override keys into config IDs of the bundle.

    Parameters
    ----------
    config : Mapping[str, Any]
        The raw inference configuration.
    keys : list[str]
        ``model.overrides`` keys: full IDs or unique last parts.
    bundle : str
        The bundle's name, for messages.

    Returns
    -------
    list[str]
        The config ID of each key, in the same order.

    Raises
    ------
    PipelineConfigError
        If a key names no item, or several that do not refer to one another.
    """
    ids = dict(iter_config_ids(config))
    resolved: list[str] = []
    for key in keys:
        if key in ids:
            resolved.append(key)
            continue
        candidates = [i for i in ids if i.rsplit(_ID_SEP, 1)[-1] == key]
        # An item that only refers to another candidate ("@a#b") is not the one to change.
        sources = [c for c in candidates if _reference(ids[c]) not in candidates]
        if len(sources) == 1:
            resolved.append(sources[0])
        elif not candidates:
            raise PipelineConfigError(
                f"bundle {bundle}: model.overrides key {key!r} names no config item "
                "(use a config ID such as 'inferer#sw_batch_size')"
            )
        else:
            raise PipelineConfigError(
                f"bundle {bundle}: model.overrides key {key!r} is ambiguous: "
                f"{', '.join(sorted(candidates))}; write the full config ID"
            )
    return resolved


def _reference(value: Any) -> str | None:
    """The ID a raw value refers to when it is a bare reference (``"@a#b"``)."""
    if isinstance(value, str) and value.startswith("@"):
        return value[1:]
    return None
