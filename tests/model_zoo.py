"""The real MONAI Model Zoo bundles of ``shared/model-zoo``, with weights made at test time.

The bundles are the Model Zoo's files as downloaded, without their weights
(``large_files.yml`` only names URLs, and nothing may be downloaded). A test
copies a bundle into a temporary folder and writes what a download would put in
``models/``: a state dict of the bundle's own ``network_def``, built by MONAI's
``ConfigParser`` (not by the node's loader) with seeded random weights.
Weights are made once per test session and bundle.

Also the real series of ``shared/corpus`` (``SHARED`` finds the folder beside the
repository, or beside the worktree's parent). A missing ``shared/`` is a failure
with its reason, never a skip.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from monai.bundle.config_parser import ConfigParser

from tests.unit.pipelines import torchvision_standin

__all__ = ["SHARED", "corpus", "make_weights", "pipeline_spec", "zoo_bundle"]

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    for candidate in (REPO.parent / "shared", REPO.parent.parent / "shared", REPO / "shared"):
        if (candidate / "model-zoo").is_dir():
            return candidate
    raise FileNotFoundError(
        "shared/ (model-zoo, corpus, labels) must lie beside the repository; CI copies it there"
    )


SHARED = _shared()


def corpus(name: str) -> list[Path]:
    """The files of one corpus series (every file of the folder but SOURCES)."""
    folder = SHARED / "corpus" / name
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".md"))
    if not files:
        raise FileNotFoundError(f"corpus series {name} is empty")
    return files


def make_weights(
    root: Path, *, seed: int = 0, name: str = "model.pt", network_def: Any = None
) -> Path:
    """Write a seeded random state dict of the bundle's ``network_def`` into ``models/``.

    Parameters
    ----------
    root : pathlib.Path
        The bundle (its ``scripts/`` are importable while the network is built).
    seed : int
        Seed of the random initialisation.
    name : str
        File name in ``models/``.
    network_def : Any
        Another network definition (a stand-in), instead of the bundle's.

    Returns
    -------
    pathlib.Path
        The weights file.
    """
    config = next(root.glob("configs/inference.*"))
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(root)
    if network_def is not None:
        parser["network_def"] = network_def
    torch.manual_seed(seed)
    sys.path.insert(0, str(root))
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] == "scripts"}
    for module_name in saved:
        del sys.modules[module_name]
    try:
        with pytest.MonkeyPatch.context() as patch:
            torchvision_standin.install(patch)
            network = parser.get_parsed_content("network_def")
    finally:
        sys.path.remove(str(root))
        for module_name in [n for n in sys.modules if n.split(".")[0] == "scripts"]:
            del sys.modules[module_name]
        sys.modules.update(saved)
    (root / "models").mkdir(exist_ok=True)
    path = root / "models" / name
    torch.save(network.state_dict(), path)
    return path


_CACHE: dict[str, Path] = {}


def zoo_bundle(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a Model Zoo bundle with random weights, made once per session.

    Parameters
    ----------
    name : str
        Folder name in ``shared/model-zoo``.
    tmp_path_factory : pytest.TempPathFactory
        Where the copy goes.

    Returns
    -------
    pathlib.Path
        The bundle directory; tests copy it again before changing it.
    """
    if name not in _CACHE:
        root = tmp_path_factory.mktemp("zoo") / name
        shutil.copytree(SHARED / "model-zoo" / name, root)
        make_weights(root)
        _CACHE[name] = root
    return _CACHE[name]


def pipeline_spec(folder: Path, bundle: Path, **fields: Any) -> Path:
    """Write a pipeline YAML for a bundle into ``folder`` and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "name": "zoo-test",
        "version": "1.0.0",
        "selection": {"rules": [{"name": "any", "conditions": {"Modality": ".*"}}]},
        "model": {"kind": "bundle", "path": str(bundle)},
        "algorithm": {"name": "zoo test",
                      "family": {"value": "123110", "scheme": "DCM",
                                 "meaning": "Artificial Intelligence"}},
        "series_description": "AI zoo test (not for diagnosis)",
    }  # fmt: skip
    spec.update(fields)
    (folder / "zoo-test.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(spec))))
    return folder


#: A 1x1x1 convolution for 3-D bundles: channel 1 wins where the preprocessed value > cut.
def threshold_network(cut: float, dims: int = 3) -> tuple[dict[str, Any], Callable[[Path], Path]]:
    """A stand-in ``network_def`` whose output is known, and a writer of its weights.

    Parameters
    ----------
    cut : float
        Preprocessed value above which channel 1 wins the argmax.
    dims : int
        Spatial dimensions.

    Returns
    -------
    tuple
        The ``network_def`` (for ``model.overrides``) and a function that writes
        its weights as ``models/standin.pt`` of a bundle.
    """
    conv = f"torch.nn.Conv{dims}d"
    definition = {"_target_": conv, "in_channels": 1, "out_channels": 2, "kernel_size": 1}

    def write(root: Path) -> Path:
        weight = torch.zeros(2, 1, *([1] * dims))
        weight[1, 0] = 10.0
        bias = torch.tensor([0.0, -10.0 * cut])
        (root / "models").mkdir(exist_ok=True)
        path = root / "models" / "standin.pt"
        torch.save({"weight": weight, "bias": bias}, path)
        return path

    return definition, write
