"""The worker's main process imports torch and MONAI before forking, and never touches CUDA.

CUDA cannot be used in a process forked from one that initialised it, so the
preload must stay an import and nothing more. This checks every door to CUDA
torch has (its lazy initialiser and the C calls below ``is_available`` and
``device_count``) while the preload runs, in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, os, sys
import torch, torch.cuda, torch._C
calls = []
def spy(owner, name):
    real = getattr(owner, name)
    def wrapper(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)
    setattr(owner, name, wrapper)
for name in ("_lazy_init", "init", "is_available", "device_count", "current_device"):
    spy(torch.cuda, name)
for name in ("_cuda_init", "_cuda_getDeviceCount"):
    if hasattr(torch._C, name):
        spy(torch._C, name)
from worker.app import preload_compute
preload_compute(sys.argv[1])
print(json.dumps({"calls": calls, "monai": "monai" in sys.modules,
                  "run": "pipelines.run" in sys.modules,
                  "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}))
"""


def _preload(device: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, device], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_preload_imports_the_pipelines_and_makes_no_cuda_call() -> None:
    seen = _preload("cuda:0")
    assert seen["run"] is True
    assert seen["monai"] is True
    assert seen["calls"] == []


def test_a_cpu_worker_hides_cuda_from_its_whole_process_tree() -> None:
    assert _preload("cpu")["visible"] == ""
    assert _preload("cuda:0")["visible"] != ""
