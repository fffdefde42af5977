"""Pure-torch stand-ins for the three torchvision pieces Model Zoo bundles reach through MONAI.

torchvision cannot be installed beside the CPU torch the project pins (PyPI's
wheel fails with "operator torchvision::nms does not exist"), so the bundle
tests replace only the torchvision-dependent layers, in the test, by these:

- ``IntermediateLayerGetter`` (``torchvision.models._utils``), which
  ``monai.networks.blocks.backbone_fpn_utils.BackboneWithFPN`` wraps around the
  ResNet of ``lung_nodule_ct_detection``: the backbone's children in order, returning
  the outputs of the named ones. The same module names, so the same state dict keys.
- ``_validate_trainable_layers`` (``torchvision.models.detection.backbone_utils``),
  which ``resnet_fpn_feature_extractor`` calls to check an integer.
- ``inception_v3`` (``torchvision.models``), the network ``TorchVisionFCModel`` of
  ``breast_density_classification`` builds: here a small CNN with the attribute
  names MONAI's adapter uses (``fc`` with 2048 inputs), so the adapter, the
  bundle's preprocessing and postprocessing all run as they would.

Everything else of each bundle runs unchanged. The product itself refuses a
bundle that needs torchvision where it is missing, naming it
(``test_model_zoo.py::test_missing_torchvision_is_named``).
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

__all__ = ["install"]


class IntermediateLayerGetter(nn.ModuleDict):
    """The backbone's children up to the last returned one; forward returns those outputs."""

    def __init__(self, model: nn.Module, return_layers: dict[str, str]) -> None:
        wanted = dict(return_layers)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        remaining = set(wanted)
        for name, module in model.named_children():
            layers[name] = module
            remaining.discard(name)
            if not remaining:
                break
        super().__init__(layers)
        self.return_layers = wanted

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


def validate_trainable_layers(
    is_trained: bool, trainable_backbone_layers: int | None, max_value: int, default_value: int
) -> int:
    """All layers train for an untrained backbone, else the given number (or the default)."""
    if not is_trained:
        return max_value
    chosen = default_value if trainable_backbone_layers is None else trainable_backbone_layers
    if not 0 <= chosen <= max_value:
        raise ValueError(f"trainable layers must be in [0, {max_value}], got {chosen}")
    return chosen


class _SmallInception(nn.Module):
    """3-channel 2-D CNN with a 2048-feature ``fc`` head, named as MONAI's adapter expects."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 2048, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(self.features(x)), 1))
        return out


#: Arguments each ``inception_v3`` call received (a test checks ``pretrained``).
CALLS: list[dict[str, Any]] = []


def inception_v3(**kwargs: Any) -> nn.Module:
    """The stand-in for ``torchvision.models.inception_v3``."""
    CALLS.append(kwargs)
    return _SmallInception()


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point MONAI's lazily imported torchvision names at the stand-ins for one test."""
    import monai.apps.detection.networks.retinanet_network as retinanet
    import monai.networks.blocks.backbone_fpn_utils as fpn
    import monai.networks.nets.torchvision_fc as fc

    monkeypatch.setattr(
        fpn,
        "torchvision_models",
        SimpleNamespace(_utils=SimpleNamespace(IntermediateLayerGetter=IntermediateLayerGetter)),
    )
    monkeypatch.setattr(retinanet, "_validate_trainable_layers", validate_trainable_layers)
    monkeypatch.setattr(fc, "models", SimpleNamespace(inception_v3=inception_v3))
