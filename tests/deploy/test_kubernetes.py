"""The Kubernetes manifests render with kustomize and validate against the schemas, offline.

``kubectl kustomize`` renders the base and the single-site overlay;
kubernetes-validate checks every object against the OpenAPI schemas of the
oldest and the newest Kubernetes release it ships (strict: an unknown field is an
error). Then the wiring a site relies on: probes, the GPU request, the spool's
access mode, the DICOM port.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
#: The releases validated against: a long-lived one still common at sites, and the latest.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` makes of a kustomization folder."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("folder", ["base", "overlays/single-site"])
@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_against_the_schemas(folder: str, version: str) -> None:
    objects = render(KUBERNETES / folder)
    assert len(objects) >= 8
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_validation_refuses_a_broken_object() -> None:
    """The check above can fail: a misspelt field is refused in strict mode."""
    (statefulset,) = [o for o in render(KUBERNETES / "base") if o["kind"] == "StatefulSet"]
    statefulset["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, VERSIONS[-1], strict=True)


def _by_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_the_wiring_a_site_relies_on() -> None:
    objects = _by_name(render(KUBERNETES / "overlays" / "single-site"))
    node = objects[("StatefulSet", "dicom-node")]["spec"]["template"]["spec"]
    assert node["containers"][0]["args"] == ["serve"]
    assert node["initContainers"][0]["args"] == ["db", "upgrade"]
    web = objects[("Deployment", "dicom-node-web")]["spec"]["template"]["spec"]["containers"][0]
    assert web["args"] == ["web", "serve"]
    assert web["livenessProbe"]["httpGet"]["path"] == "/health"
    assert web["readinessProbe"]["httpGet"]["path"] == "/ready"
    gpu = objects[("Deployment", "dicom-node-worker-gpu")]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    spool = objects[("PersistentVolumeClaim", "dicom-node-spool")]["spec"]
    assert spool["accessModes"] == ["ReadWriteMany"]
    dicom = objects[("Service", "dicom-node-dicom")]["spec"]
    assert dicom["type"] == "LoadBalancer"
    assert dicom["ports"][0]["port"] == 11112
    # Every pod runs as the image's unprivileged user; no secret sits in a manifest.
    for obj in objects.values():
        if obj["kind"] in ("StatefulSet", "Deployment"):
            assert obj["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert obj["kind"] != "Secret"
    assert all(o["metadata"].get("namespace") == "dicom-node" for o in objects.values())
