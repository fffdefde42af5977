"""``dicom-node send``: C-STORE files or folders to a DICOM node."""

from __future__ import annotations

from pathlib import Path

import click

from dicom_node.cli.options import configure_logging
from dicom_node.export import send_files
from dicom_node.settings import DestinationSettings


def collect_files(paths: tuple[Path, ...]) -> list[Path]:
    """Expand folders into the files below them, sorted."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


@click.command()
@click.argument("host")
@click.argument("port", type=int)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--aet", default="DICOM_NODE_SCU", show_default=True, help="Calling AE title.")
@click.option("--aec", default="DICOM_NODE", show_default=True, help="Called AE title.")
@click.option("-v", "--verbose", count=True)
def send(host: str, port: int, paths: tuple[Path, ...], aet: str, aec: str, verbose: int) -> int:
    """Send DICOM files (or folders of them) to HOST PORT."""
    configure_logging(verbose, quiet=not verbose)
    files = collect_files(paths)
    dest = DestinationSettings(name=f"{host}:{port}", ae_title=aec, host=host, port=port)
    results = send_files(aet, dest, files)
    failed = [r for r in results if not r.ok]
    for result in failed:
        click.echo(f"failed {result.path}: {result.error}", err=True)
    click.echo(f"sent {len(results) - len(failed)} of {len(results)} files")
    return 1 if failed else 0
