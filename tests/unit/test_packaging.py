"""Packaging a site can trust: every import declared, the node free of the compute side, locks true.

The node (receiver, supervisor, dashboard) installs without torch, MONAI,
SciPy, nibabel and highdicom: those are the ``worker`` extra. The lock files in
``requirements/`` pin versions inside the bounds ``pyproject.toml`` declares.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
FIRST_PARTY = {"dicom_node", "pipelines", "worker", "tests"}
#: The compute side: never needed by the node. (highdicom is not among them: the node
#: writes the IOCM rejection notes that withdraw superseded results.)
WORKER_ONLY = {"torch", "monai", "scipy", "nibabel"}
#: Demo scaffolding in dicom_node that imports the compute side (imported lazily by
#: ``dicom-node demo``, which runs a worker anyway).
DEMO_MODULES = {"phantom.py"}


def _requirements(items: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, items)}


CORE = _requirements(PROJECT["dependencies"])
WORKER = _requirements(PROJECT["optional-dependencies"]["worker"])


def _imported_distributions(files: list[Path]) -> dict[str, set[str]]:
    """Distribution name -> the files that import it (absolute, third-party imports)."""
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in FIRST_PARTY:
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(canonicalize_name(dist), set()).add(path.name)
    return found


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_every_imported_package_is_declared() -> None:
    node_files = [p for p in _sources("dicom_node") if p.name not in DEMO_MODULES]
    node = _imported_distributions(node_files)
    undeclared = {dist: files for dist, files in node.items() if dist not in CORE}
    assert undeclared == {}, "dicom_node imports these without declaring them in dependencies"
    compute = _imported_distributions(
        _sources("pipelines") + _sources("worker") + [REPO / "dicom_node" / "phantom.py"]
    )
    undeclared = {d: f for d, f in compute.items() if d not in CORE and d not in WORKER}
    assert undeclared == {}, "the compute side imports these without declaring them"
    # The check sees what it must: the worker side really imports torch and highdicom.
    assert {"torch", "highdicom", "monai"} <= compute.keys()


def test_node_runs_without_the_worker_extra() -> None:
    """The node's commands import and run with the compute side made unimportable."""
    code = (
        "import importlib.abc, sys\n"
        f"BLOCKED = {sorted(WORKER_ONLY)!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(name + ' is the worker extra')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dicom_node.node, dicom_node.doctor, dicom_node.web.app, dicom_node.web.process\n"
        "from dicom_node.cli import main\n"
        "sys.exit(main(['config', 'check', '--config', 'config/node.yaml']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration ok" in result.stdout


def _lock(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "requirements" / name).read_text().splitlines():
        if line and not line.startswith((" ", "#")) and "==" in line:
            package, _, version = line.split(" ")[0].partition("==")
            pins[canonicalize_name(package)] = version
    return pins


def test_node_lock_carries_no_compute_side() -> None:
    node, worker, dev = _lock("node.txt"), _lock("worker.txt"), _lock("dev.txt")
    assert not WORKER_ONLY & node.keys()
    assert {"monai", "highdicom", "scipy", "nibabel"} <= worker.keys()
    # torch is the machine's choice (CPU, or the CUDA build of its driver), never locked
    # for a worker; development and CI take the CPU build.
    assert "torch" not in worker
    assert dev["torch"].startswith("2.13.0")


def test_locks_are_inside_the_declared_bounds() -> None:
    for name, declared in (
        ("node.txt", CORE),
        ("worker.txt", CORE | WORKER),
        ("dev.txt", CORE | WORKER),
    ):
        pins = _lock(name)
        missing = set(declared) - pins.keys() - {"torch"}
        assert not missing, f"{name} lacks {missing}: run make lock"
        outside = {
            package: pins[package]
            for package, requirement in declared.items()
            if package in pins and not requirement.specifier.contains(pins[package], True)
        }
        assert outside == {}, f"{name} pins versions pyproject.toml excludes: run make lock"
