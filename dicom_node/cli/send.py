"""``dicom-node send``: C-STORE files or folders to a DICOM node, as users have them.

A real export folder holds more than images: a DICOMDIR, a README, thumbnails,
viewer programs, files cut short by a full disk. Each file is looked at first
(:func:`scan`): a DICOM Part 10 file with its SOP class and instance in the file
meta is sent; anything else is skipped with a reason (not DICOM, the DICOMDIR
index, truncated, no file meta) and counted. Sending goes in batches, one
association each, with progress on stderr; the summary says how many were sent,
failed and skipped, and why. File names that start with ``-`` are fine inside a
folder; on the command line, put ``--`` before them.
"""

from __future__ import annotations

import collections
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import click
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import MediaStorageDirectoryStorage

from dicom_node.cli.options import configure_logging
from dicom_node.export import DeliveryResult, send_files
from dicom_node.settings import DestinationSettings

__all__ = ["SkippedFile", "collect_files", "scan", "send"]

#: Files per association: progress after each batch, and at most this many presentation
#: contexts (PS3.8 allows 128).
BATCH = 100
# A declared length that means "undefined" (sequences, encapsulated Pixel Data).
_UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file that is not sent, and why."""

    path: Path
    reason: str


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders into the files below them, sorted; files are kept as given."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def _truncated(ds: pydicom.Dataset) -> bool:
    """Whether the last element read holds fewer bytes than it declares (a cut-off file)."""
    tags = list(ds.keys())
    if not tags:
        return True
    raw = ds.get_item(tags[-1])
    length = getattr(raw, "length", _UNDEFINED)
    value = getattr(raw, "value", None)
    return length != _UNDEFINED and isinstance(value, bytes | bytearray) and len(value) < length


def _why_not(path: Path) -> str | None:
    """Why a file cannot be sent as a DICOM instance, or None when it can."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except InvalidDicomError:
        return "not a DICOM file"
    except Exception as exc:  # pydicom raises many types on damaged files
        return f"unreadable DICOM ({type(exc).__name__})"
    meta: Dataset = getattr(ds, "file_meta", None) or Dataset()
    sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
    if sop_class == MediaStorageDirectoryStorage:
        return "DICOMDIR: the media's index, not an instance"
    if not sop_class or not str(meta.get("MediaStorageSOPInstanceUID", "")):
        return "no SOP class or instance in its file meta"
    if not str(meta.get("TransferSyntaxUID", "")):
        return "no transfer syntax in its file meta"
    if _truncated(ds):
        return "truncated: the file ends before its last element does"
    return None


def scan(files: Iterable[Path]) -> tuple[list[Path], list[SkippedFile]]:
    """Split files into those to send and those skipped, with a reason each.

    Parameters
    ----------
    files : Iterable[pathlib.Path]
        Candidate files.

    Returns
    -------
    tuple[list[pathlib.Path], list[SkippedFile]]
        DICOM instances to send, in order; the rest with why.
    """
    sendable: list[Path] = []
    skipped: list[SkippedFile] = []
    for path in files:
        reason = _why_not(path)
        if reason is None:
            sendable.append(path)
        else:
            skipped.append(SkippedFile(path, reason))
    return sendable, skipped


@click.command()
@click.argument("host")
@click.argument("port", type=int)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--aet", default="DICOM_NODE_SCU", show_default=True, help="Calling AE title.")
@click.option("--aec", default="DICOM_NODE", show_default=True, help="Called AE title.")
@click.option("-v", "--verbose", count=True, help="List every skipped file.")
def send(host: str, port: int, paths: tuple[Path, ...], aet: str, aec: str, verbose: int) -> int:
    """Send DICOM files (or folders of them) to HOST PORT; skip what is not DICOM.

    Put ``--`` before file names that start with ``-``.
    """
    configure_logging(verbose, quiet=not verbose)
    files = collect_files(paths)
    sendable, skipped = scan(files)
    dest = DestinationSettings(name=f"{host}:{port}", ae_title=aec, host=host, port=port)
    failed: list[DeliveryResult] = []
    with click.progressbar(
        length=len(sendable),
        label=f"sending {len(sendable)} files",
        file=sys.stderr,
    ) as bar:
        for start in range(0, len(sendable), BATCH):
            batch = sendable[start : start + BATCH]
            results = send_files(aet, dest, batch)
            failed.extend(r for r in results if not r.ok)
            bar.update(len(batch))
    for result in failed:
        click.echo(f"failed {result.path}: {result.error}", err=True)
    shown = skipped if verbose or len(skipped) <= 20 else skipped[:20]
    for item in shown:
        click.echo(f"skipped {item.path}: {item.reason}", err=True)
    if len(shown) < len(skipped):
        click.echo(f"... and {len(skipped) - len(shown)} more skipped (-v lists all)", err=True)
    click.echo(f"sent {len(sendable) - len(failed)} of {len(sendable)} DICOM files")
    if skipped:
        counts = collections.Counter(item.reason for item in skipped)
        why = "; ".join(f"{count} {reason}" for reason, count in counts.most_common())
        click.echo(f"skipped {len(skipped)} of {len(files)} files: {why}")
    return 1 if failed else 0
