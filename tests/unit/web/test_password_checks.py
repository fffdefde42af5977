"""Password checks cannot exhaust the node's memory (argon2 takes 64 MiB per check).

Peak resident memory is read from the kernel (``ru_maxrss``, ``VmHWM``) of a
process of its own, so nothing else in the test session counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from dicom_node.settings import LoginSettings, WebRole, WebUser
from dicom_node.web.auth import Authenticator
from tests.unit.web.conftest import PASSWORDS, REPO

#: Peak memory growth while 16 checks run at once, measured in a fresh interpreter.
PROBE = """
import resource, sys, threading
from dicom_node.settings import LoginSettings, WebUser
from dicom_node.web.auth import Authenticator, LoginBusy, hash_password

slots, names = int(sys.argv[1]), sys.argv[2].split(",")
user = WebUser(name="admin", password_hash=hash_password("right"), role="admin")
auth = Authenticator([user], LoginSettings(max_concurrent_checks=slots, check_wait_s=10))
auth.check("admin", "warm-up")  # one real check: its 64 MiB are in the baseline
auth.check("nobody", "warm-up")

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

base = peak_mib()
barrier = threading.Barrier(16)
answers = []

def attempt(index):
    barrier.wait()
    try:
        answers.append(auth.check(names[index % len(names)], "wrong"))
    except LoginBusy:  # turned away: a bounded outcome too
        answers.append("busy")

threads = [threading.Thread(target=attempt, args=(i,)) for i in range(16)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert len(answers) == 16 and set(answers) <= {None, "busy"}, answers
print(peak_mib() - base)
"""


def _growth_mib(slots: int, names: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(slots), names],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def test_at_most_the_configured_checks_run_at_once() -> None:
    # Two slots: a second argon2 beside the warm-up's peak, whatever 16 callers do.
    assert _growth_mib(2, "admin,nobody,admin,someone") < 2 * 64 + 32


def test_a_name_that_is_no_user_costs_no_argon2_memory() -> None:
    # Sixteen slots, sixteen unknown names at once: they only wait.
    assert _growth_mib(16, "nobody,someone,root,guest") < 32


SERVE = """
import sys
from pathlib import Path
from dicom_node.settings import load_settings
from dicom_node.web import create_app, start_web_server

settings = load_settings(Path(sys.argv[1]))
handle = start_web_server(create_app(settings), settings.web)
print(handle.port, flush=True)
sys.stdin.read()  # serve until the test closes stdin
handle.stop()
"""


def _peak_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def dashboard(
    tmp_path: Path, broker_url: str, password_hashes: dict[str, str]
) -> Iterator[tuple[int, str]]:
    """The dashboard served by uvicorn in a process of its own: its PID and URL."""
    config = {
        "spool_dir": str(tmp_path / "spool"),
        "pipelines_dir": str(REPO / "config" / "pipelines"),
        "broker": {"url": broker_url},
        "scp": {"min_free_bytes": 0},
        "web": {
            "enabled": True,
            "port": 0,
            "session_secret": "flood-test-secret-0123456789",
            "worker_ping_timeout_s": 0.2,
            "users": [
                {"name": name, "password_hash": password_hashes[name], "role": name}
                for name in ("admin", "viewer")
            ],
        },
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield proc.pid, f"http://127.0.0.1:{port}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _login(client: httpx.Client, name: str, password: str) -> httpx.Response:
    token = client.get("/api/session").json()["csrf_token"]
    return client.post(
        "/api/session", json={"name": name, "password": password}, headers={"X-CSRF-Token": token}
    )


@pytest.mark.slow
def test_forty_parallel_logins_leave_the_dashboard_memory_bounded(
    dashboard: tuple[int, str],
) -> None:
    pid, url = dashboard
    with httpx.Client(base_url=url, timeout=60) as first:
        assert _login(first, "viewer", PASSWORDS["viewer"]).status_code == 200
    base = _peak_mib(pid)
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(40)]
    tokens = [client.get("/api/session").json()["csrf_token"] for client in clients]
    barrier = threading.Barrier(len(clients))
    answers: list[httpx.Response] = []

    def attempt(index: int) -> None:
        barrier.wait()
        name = "admin" if index % 2 else f"guess{index}"
        answers.append(
            clients[index].post(
                "/api/session",
                json={"name": name, "password": "not-the-password"},
                headers={"X-CSRF-Token": tokens[index]},
            )
        )

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    growth = _peak_mib(pid) - base
    # Two checks at once (web.login.max_concurrent_checks): about 128 MiB at most.
    assert growth < 256, f"peak memory grew by {growth} MiB"
    statuses = sorted(answer.status_code for answer in answers)
    assert len(statuses) == 40
    assert set(statuses) <= {401, 429, 503}, statuses
    assert 503 in statuses, "the excess was queued instead of turned away"
    assert all(a.headers.get("Retry-After") for a in answers if a.status_code in (429, 503))
    with httpx.Client(base_url=url, timeout=30) as after:
        assert after.get("/health").status_code == 200


def test_a_name_that_is_no_user_takes_as_long_as_a_real_check(
    password_hashes: dict[str, str],
) -> None:
    user = WebUser(name="admin", password_hash=password_hashes["admin"], role=WebRole.ADMIN)
    auth = Authenticator([user], LoginSettings())
    for _ in range(3):
        assert auth.check("admin", "wrong") is None
    real = list(auth._durations)  # what the real checks took, as the authenticator measured
    started = time.perf_counter()
    assert auth.check("no-such-user", "wrong") is None
    # It waits one of the real durations (never less than the shortest).
    assert time.perf_counter() - started >= min(real)
    assert list(auth._durations) == real, "no argon2 ran for the unknown name"
