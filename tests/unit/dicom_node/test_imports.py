"""DESIGN.md ownership: the node never loads torch or MONAI."""

from __future__ import annotations

import subprocess
import sys


def test_node_imports_no_torch() -> None:
    code = (
        "import sys, dicom_node.cli, dicom_node.node, dicom_node.supervisor;"
        "bad = [m for m in ('torch', 'monai') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
