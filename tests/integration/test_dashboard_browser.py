"""The admin's view in a real browser, over a real node, worker, Redis and Orthanc.

``dicom-node serve`` runs with its dashboard on a free port, ``dicom-node
worker`` runs the pipeline, storescu sends two small phantom studies and
Orthanc is the archive. The first study goes all the way. The second fails on
the worker for a real reason: one of its instances is taken off the spool
before the worker reads it (a disk or a shared-file-system fault). Debian's
chromium, driven by Playwright, logs in as the admin, opens the first job and
its overlay picture, finds the failure, puts the file back, presses Retry and
watches the job finish. Each page is saved under ``test-artifacts/dashboard``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, expect

from dicom_node.phantom import ChestPhantom
from dicom_node.phi import study_tag
from dicom_node.services import OrthancHandle, orthanc_study_objects, wait_until
from dicom_node.state import JobState, StateDB
from dicom_node.web.auth import hash_password
from tests.browsers import chromium
from tests.node_process import REPO, run_node, run_worker, storescu, write_config

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts" / "dashboard"
ADMIN_PASSWORD = "dashboard-admin-7f3"
SENTINEL = "SENTINEL^BROWSER^X9"
PHANTOM = ChestPhantom(slices=40, size=256, pixel_spacing_mm=1.4)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless (Playwright's own browsers are never downloaded)."""
    with chromium("--disable-gpu") as launched:
        yield launched


def _dashboard_url(log: Path) -> str:
    found: list[str] = []

    def printed() -> bool:
        match = re.search(r"^dashboard (http://\S+)$", log.read_text(errors="replace"), re.M)
        if match:
            found.append(match.group(1))
        return bool(match)

    wait_until(printed, 30, "the dashboard line of dicom-node serve", interval_s=0.1)
    return found[0]


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _job_of(state: StateDB, study_uid: str) -> int:
    jobs = [j for j in state.jobs(list(JobState)) if j.study_uid == study_uid]
    return jobs[0].id if jobs else 0


def test_admin_follows_a_study_and_retries_a_failure(
    tmp_path: Path, broker_url: str, orthanc: OrthancHandle, browser: Browser
) -> None:
    config = write_config(
        tmp_path,
        broker_url,
        orthanc.dicom_port,
        web={
            "enabled": True,
            "port": 0,
            "session_secret": "browser-test-secret-0123456789",
            "worker_ping_timeout_s": 0.5,
            "users": [
                {"name": "admin", "password_hash": hash_password(ADMIN_PASSWORD), "role": "admin"}
            ],
        },
        log_format="json",
    )
    good = PHANTOM.write(tmp_path / "good", patient_name=SENTINEL, accession_number="ACC-DASH-1")
    bad = PHANTOM.write(tmp_path / "bad", accession_number="ACC-DASH-2")
    with run_node(config) as node, run_worker(config):
        url = _dashboard_url(node.log_path)
        state = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")

        # 1. A study that goes all the way to Orthanc.
        assert storescu(node.port, tmp_path / "good").returncode == 0
        wait_until(
            lambda: (job := state.job(_job_of(state, good.study_uid))) is not None
            and job.state is JobState.DONE,
            240, "the first job DONE", interval_s=0.5,
        )  # fmt: skip
        good_job = _job_of(state, good.study_uid)
        stored = orthanc_study_objects(orthanc.http_url, good.study_uid, {"SEG", "SR"})
        assert len(stored) == 2

        # 2. A study that fails on the worker: an instance leaves the spool before it runs.
        assert storescu(node.port, tmp_path / "bad").returncode == 0
        series = node.spool_dir / "instances" / bad.study_uid / bad.series_uid
        victim = sorted(series.iterdir())[5]
        hidden = tmp_path / "hidden.dcm"
        victim.rename(hidden)
        wait_until(
            lambda: (job := state.job(_job_of(state, bad.study_uid))) is not None
            and job.state is JobState.FAILED,
            120, "the second job FAILED", interval_s=0.5,
        )  # fmt: skip
        bad_job = _job_of(state, bad.study_uid)
        bad_view = state.job(bad_job)
        assert bad_view is not None
        assert "missing from the spool" in bad_view.reason

        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # Nothing is visible without logging in.
        page.goto(f"{url}/studies")
        expect(page).to_have_url(re.compile(r"/login\?next=/studies$"))
        _shot(page, "01-login")
        page.fill("input[name=name]", "admin")
        page.fill("input[name=password]", ADMIN_PASSWORD)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{url}/studies")

        page.goto(f"{url}/")
        expect(page.locator("#card-failures .value")).to_have_text("1")
        expect(page.locator("#workers")).to_contain_text("cpu@")
        expect(page.locator("#queues")).to_contain_text("cpu")
        _shot(page, "02-overview")
        ready = page.request.get(f"{url}/ready")
        assert ready.status == 200, ready.text()

        # The study search finds the good study by its accession number, its job DONE.
        page.goto(f"{url}/studies")
        page.fill("input[name=q]", "ACC-DASH-1")
        page.click("form.search button[type=submit]")
        rows = page.locator("#studies tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("DONE")
        _shot(page, "03-studies")

        # Its job page: the timeline, the outputs, and the picture drawn from the SEG.
        rows.first.locator(f"a[href='/jobs/{good_job}']").click()
        expect(page.locator("#job-state")).to_have_text("DONE")
        expect(page.locator("#timeline")).to_contain_text("WAITING")
        expect(page.locator("#timeline")).to_contain_text("EXPORTING")
        expect(page.locator("#outputs")).to_contain_text("SEG")
        expect(page.locator("#patient-name")).to_have_text(SENTINEL)
        overlay = page.locator("#overlay")
        expect(overlay).to_be_visible()
        # The page's CSP forbids eval, so wait_for_function cannot run; poll from here.
        wait_until(
            lambda: overlay.evaluate("img => img.complete && img.naturalWidth > 0"),
            30, "the overlay picture", interval_s=0.2,
        )  # fmt: skip
        width = overlay.evaluate("img => img.naturalWidth")
        assert width > 4 * 200, width  # four slices side by side
        _shot(page, "04-job-done")

        # The failure, its reason, and the retry once the file is back.
        page.goto(f"{url}/failures")
        row = page.locator(f"#job-{bad_job}")
        expect(row).to_contain_text("missing from the spool")
        _shot(page, "05-failures")
        hidden.rename(victim)
        row.locator("button", has_text="Retry").click()
        expect(page).to_have_url(f"{url}/jobs/{bad_job}")
        expect(page.locator("#flash")).to_contain_text("queued to run again")
        _shot(page, "06-job-retried")

        def finished() -> bool:
            answer: dict[str, object] = page.request.get(f"{url}/api/jobs/{bad_job}").json()
            assert answer["state"] != "FAILED", answer["reason"]
            return answer["state"] == "DONE"

        wait_until(finished, 240, "the retried job DONE", interval_s=1)
        page.reload()
        expect(page.locator("#job-state")).to_have_text("DONE")
        expect(page.locator("#log")).to_contain_text("retried by admin")
        expect(page.locator("#log")).to_contain_text("attempt 1: failed")
        expect(page.locator("#overlay")).to_be_visible()
        _shot(page, "07-job-done-after-retry")
        assert len(orthanc_study_objects(orthanc.http_url, bad.study_uid, {"SEG", "SR"})) == 2

        page.goto(f"{url}/associations")
        expect(page.locator("#associations")).to_contain_text("STORESCU")
        _shot(page, "08-associations")
        page.goto(f"{url}/config")
        expect(page.locator("#config")).to_contain_text("********")
        expect(page.locator("#config")).not_to_contain_text("browser-test-secret")
        _shot(page, "09-config")
        metrics = page.request.get(f"{url}/metrics").text()
        assert "dicom_node_instances_received_total 80.0" in metrics
        assert 'dicom_node_workers{device="cpu"} 1.0' in metrics
        assert 'dicom_node_queue_workers{queue="cpu"} 1.0' in metrics
        page.close()
        state.close()
    log = node.log_path.read_text(errors="replace")
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [r["message"] for r in records if r["logger"] == "dicom_node.web.access"]
    # The search put an accession number in a URL; the access log names the route only.
    assert any(message.startswith("GET /studies 200") for message in access)
    assert any(message.startswith("POST /jobs/{job_id}/retry 303") for message in access)
    for secret in ("ACC-DASH-1", SENTINEL, ADMIN_PASSWORD):
        assert secret not in log
    # The worker logs JSON too, each line of a job carrying the job and the study's tag.
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")
    lines = [json.loads(line) for line in worker_log.splitlines() if line.startswith("{")]
    of_good_job = [line for line in lines if line.get("job") == good_job]
    assert of_good_job, "no worker line carries the job's ID"
    assert {line["study"] for line in of_good_job} == {study_tag(good.study_uid)}
    assert SENTINEL not in worker_log
    assert redis.Redis.from_url(broker_url).ping()
