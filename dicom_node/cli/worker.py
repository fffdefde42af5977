"""``dicom-node worker``: a Celery worker that runs pipelines (imports torch)."""

from __future__ import annotations

from pathlib import Path

import click

from dicom_node.cli.options import build_settings, common_options, configure_logging


@click.command()
@common_options
@click.option(
    "-Q", "--queues", default=None, help="Comma-separated queues (default: worker.queues)."
)
@click.option("--concurrency", type=int, default=None, help="Worker processes.")
def worker(
    config: Path | None, verbose: int, quiet: bool, queues: str | None, concurrency: int | None
) -> int:
    """Run a Celery worker consuming pipeline jobs."""
    configure_logging(verbose, quiet)
    settings = build_settings(config)
    from worker.app import make_celery  # torch and MONAI load here, not in the node

    app = make_celery(settings)
    argv = [
        "worker",
        "--queues", queues or ",".join(settings.worker.queues),
        "--concurrency", str(concurrency or settings.worker.concurrency),
        "--pool", "prefork",
        "--hostname", "dicom-node@%h",
        "--loglevel", "WARNING" if quiet else "INFO",
        "--without-gossip",
        "--without-mingle",
    ]  # fmt: skip
    app.worker_main(argv)
    return 0
