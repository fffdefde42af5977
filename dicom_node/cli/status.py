"""``dicom-node status``: the dashboard's overview in the terminal.

Two ways to ask, one answer (:class:`~dicom_node.web.models.OverviewPublic`):

- on the node machine (the default), it reads the state DB, Redis and the
  spool directly, as the dashboard does; no login, since whoever can read
  the configuration and the spool can read the database anyway;
- from anywhere else, ``--url https://node:8080`` logs in to the dashboard's
  REST API as ``--user`` with the password from ``DICOM_NODE_STATUS_PASSWORD``
  (or a prompt) and reads ``/api/overview``.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import click

from dicom_node.cli.options import (
    build_settings,
    common_options,
    configure_logging,
    require_spool,
)
from dicom_node.web.models import OverviewPublic

__all__ = ["PASSWORD_ENV", "fetch_overview", "format_overview", "local_overview", "status"]

#: Environment variable holding the password for ``--url``.
PASSWORD_ENV = "DICOM_NODE_STATUS_PASSWORD"


def local_overview(config: Path | None) -> OverviewPublic:
    """Build the overview from the state DB, the broker and the spool of this machine.

    Parameters
    ----------
    config : pathlib.Path or None
        The node's configuration file.

    Returns
    -------
    OverviewPublic
        The same snapshot as ``GET /api/overview``.
    """
    from dicom_node.state import StateDB
    from dicom_node.state.queries import StateQueries
    from dicom_node.web.app import queue_names
    from dicom_node.web.probe import BrokerProbe
    from dicom_node.web.views import build_overview

    settings = build_settings(config)
    require_spool(settings, config)
    state = StateDB(settings.state_db_url, upgrade=settings.database_auto_upgrade)
    queries = StateQueries(state)
    probe = BrokerProbe(
        settings.broker, queue_names(settings, None), settings.web.worker_ping_timeout_s
    )
    try:
        return build_overview(
            queries, probe, settings.spool_dir.resolve(), settings.scp.min_free_bytes
        )
    finally:
        probe.close()
        state.close()


def fetch_overview(
    url: str, user: str, password: str, *, cafile: Path | None = None, timeout_s: float = 10
) -> OverviewPublic:
    """Log in to a dashboard's REST API and read its overview.

    Parameters
    ----------
    url : str
        The dashboard's base URL, e.g. ``https://node:8080``.
    user, password : str
        Credentials of a dashboard user (a viewer is enough).
    cafile : pathlib.Path or None
        CA bundle that signs the dashboard's certificate, for HTTPS.
    timeout_s : float
        Timeout of each request.

    Returns
    -------
    OverviewPublic
        The node's overview.

    Raises
    ------
    click.ClickException
        If the node cannot be reached or refuses the login.
    """
    base = url.rstrip("/")
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
        urllib.request.HTTPSHandler(context=context),
    )

    def call(path: str, body: dict[str, str] | None = None, token: str = "") -> dict[str, object]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            base + path, data=data, method="GET" if data is None else "POST"
        )
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
            request.add_header("X-CSRF-Token", token)
        with opener.open(request, timeout=timeout_s) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer

    try:
        token = str(call("/api/session")["csrf_token"])
        call("/api/session", {"name": user, "password": password}, token)
        return OverviewPublic.model_validate(call("/api/overview"))
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise click.ClickException("the dashboard refused the name or password") from exc
        raise click.ClickException(f"the dashboard answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach {base}: {exc}") from exc


def format_overview(overview: OverviewPublic) -> str:
    """The overview as a few aligned lines of text."""
    from dicom_node.web.formatting import human_size, human_time

    hour, day = overview.last_hour, overview.last_day
    jobs = "  ".join(f"{state.value} {count}" for state, count in overview.jobs_by_state.items())
    if overview.broker_ok:
        queues = "  ".join(f"{q.name} {q.depth}" for q in overview.queues) or "none configured"
    else:
        queues = "broker (Redis) does not answer"
    if not overview.workers_ok:
        workers = "broadcast failed"
    else:
        names = ", ".join(f"{w.hostname} ({w.device})" for w in overview.workers)
        workers = f"{len(overview.workers)} online" + (f": {names}" if names else "")
    disk = overview.disk
    disk_state = "BELOW WATERMARK: refusing instances" if disk.below_watermark else "ok"
    lines = [
        f"as of        {human_time(overview.generated_at)} UTC",
        f"received     last hour {hour.instances} instances, {hour.studies} studies, "
        f"{human_size(hour.bytes)}; last 24 h {day.instances} instances, {day.studies} studies, "
        f"{human_size(day.bytes)}",
        f"jobs         {jobs}",
        f"running      {overview.jobs_running}",
        f"failures     {overview.failures_24h} in the last 24 h",
        f"queues       {queues}",
        f"workers      {workers}",
        f"spool disk   {human_size(disk.free_bytes)} free of {human_size(disk.total_bytes)}, "
        f"watermark {human_size(disk.min_free_bytes)}: {disk_state}",
        f"no job       {len(overview.unrouted_24h)} studies completed in the last 24 h got no job"
        + (":" if overview.unrouted_24h else ""),
    ]
    for study in overview.unrouted_24h:
        lines.append(
            f"  {study.study_tag}  {human_time(study.routed_at)} UTC  {study.instance_count} "
            f"instances in {study.series_count} series"
        )
        lines.extend(f"    {reason}" for reason in study.reasons)
    return "\n".join(lines)


@click.command()
@common_options
@click.option("--url", default=None, help="Ask a dashboard instead (e.g. https://node:8080).")
@click.option("--user", default=None, help=f"Dashboard user for --url (password: ${PASSWORD_ENV}).")
@click.option(
    "--cafile",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="CA bundle for an HTTPS dashboard.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the overview as JSON.")
def status(
    config: Path | None,
    verbose: int,
    quiet: bool,
    url: str | None,
    user: str | None,
    cafile: Path | None,
    as_json: bool,
) -> int:
    """Print the node's overview: arrivals, jobs, queues, workers, failures, disk.

    It ends with the studies of the last 24 h that got no job, and why for each
    series and pipeline (values of free-text attributes are never shown).
    """
    configure_logging(verbose, quiet, default="ERROR")
    if url is None:
        overview = local_overview(config)
    else:
        if not user:
            raise click.UsageError("--url needs --user")
        password = os.environ.get(PASSWORD_ENV) or click.prompt(
            f"password of {user}", hide_input=True
        )
        overview = fetch_overview(url, user, password, cafile=cafile)
    click.echo(overview.model_dump_json(indent=2) if as_json else format_overview(overview))
    return 0
