"""A MONAI bundle written by a test, in Model Zoo layout, and a pipeline YAML for it.

The network is a 1x1x1 convolution whose weights the test sets: after the
bundle's own preprocessing (HU -1000..500 scaled to [0, 1]), channel 1 wins
the argmax where the scaled value exceeds 0.5, that is above -250 HU: soft
tissue and bone. Its output is therefore known without training, and the
bundle still goes through every step a Model Zoo bundle does: ConfigParser with
``bundle_root``, ``LoadImaged``/``SaveImaged`` stripped, ``Orientationd`` and
``Spacingd`` inverted by ``Invertd``, weights from ``models/model.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import torch
import yaml

__all__ = ["THRESHOLD_HU", "write_pipeline_yaml", "write_threshold_bundle"]

#: Where the bundle's network switches from background to "dense".
THRESHOLD_HU = -250.0


def write_threshold_bundle(root: Path, *, config_format: str = "json") -> Path:
    """Write the bundle to ``root`` and return it.

    Parameters
    ----------
    root : pathlib.Path
        The bundle directory (created).
    config_format : str
        ``json`` or ``yaml``: the format of ``configs/inference.*``.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    inference: dict[str, Any] = {
        "imports": ["$import torch"],
        "bundle_root": "/nowhere",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2,
                        "kernel_size": 1},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [6.0, 6.0, 6.0],
             "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 500,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32],
                    "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
             "orig_keys": "image", "nearest_interp": True, "to_tensor": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "/nowhere/eval"},
        ]},
    }  # fmt: skip
    metadata = {
        "name": "test_threshold",
        "version": "0.1.0",
        "description": "A test bundle: tissue above -250 HU.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1}},
            "outputs": {
                "pred": {
                    "type": "image",
                    "num_channels": 2,
                    "channel_def": {"0": "background", "1": "dense"},
                }
            },
        },
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    if config_format == "yaml":
        (root / "configs" / "inference.yaml").write_text(yaml.safe_dump(inference))
    else:
        (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    weight = torch.zeros(2, 1, 1, 1, 1)
    weight[1, 0] = 10.0
    bias = torch.tensor([0.0, -5.0])  # channel 1 > channel 0 where the scaled value > 0.5
    torch.save({"weight": weight, "bias": bias}, root / "models" / "model.pt")
    return root


def write_pipeline_yaml(folder: Path, bundle: Path, **changes: Any) -> Path:
    """Write ``ct-test-bundle.yaml`` for the threshold bundle into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "name": "ct-test-bundle",
        "version": "0.1.0",
        "selection": {"rules": [{"name": "CT", "conditions": {"Modality": "^CT$"}}]},
        "model": {"kind": "bundle", "path": str(bundle)},
        "algorithm": {"name": "test threshold bundle",
                      "family": {"value": "123110", "scheme": "DCM",
                                 "meaning": "Artificial Intelligence"}},
        "labels": [{"value": 1, "name": "dense", "label": "Dense tissue",
                    "category": {"value": "85756007", "meaning": "Tissue"},
                    "type": {"value": "87784001", "meaning": "Soft tissue"}}],
        "outputs": ["seg", "sr"],
        "series_description": "AI test bundle (not for diagnosis)",
    }  # fmt: skip
    spec.update(changes)
    path = folder / "ct-test-bundle.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def relabel(paths: list[Path], description: str) -> None:
    """Give a written series another Series Description (what selection rules match)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        ds.save_as(path)


def write_bundle_with_network(root: Path, imports: list[str], network_def: str) -> Path:
    """The threshold bundle with another ``network_def``: a model that misbehaves on load.

    Parameters
    ----------
    root : pathlib.Path
        The bundle directory (created).
    imports : list[str]
        The config's ``imports`` (``"$import os"`` ...).
    network_def : str
        The expression that builds the network, e.g. ``"$time.sleep(3600)"``.
    """
    write_threshold_bundle(root)
    config_path = root / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["imports"] = imports
    config["network_def"] = network_def
    config_path.write_text(json.dumps(config))
    return root
