"""Folders and configurations as users have them: ``dicom-node send`` on a real export, and
commands run from any directory.

The export folder is made the way media are: pydicom's ``FileSet`` writes a
DICOMDIR and its instances, and beside them lie a README, a JPEG thumbnail, an
empty file, a truncated copy of an image and a real LIDC slice whose name starts
with ``-``. A real receiver takes what is sent.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image
from pydicom.fileset import FileSet
from sqlalchemy import func, select

from dicom_node.cli import main, options
from dicom_node.phantom import ChestPhantom
from dicom_node.scp import Receiver, ReceiverHandle
from dicom_node.settings import ScpSettings, StabilitySettings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.schema import Instance
from tests.corpus import corpus_dir

TINY = ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6, slice_thickness_mm=5.0)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[ReceiverHandle, StateDB]]:
    """A real receiver on a fresh spool, accepting every storage class."""
    spool = Spool(tmp_path / "spool")
    state = StateDB(f"sqlite:///{tmp_path / 'spool' / 'state.db'}")
    scp = ScpSettings(host="127.0.0.1", port=0, min_free_bytes=0, acse_timeout_s=5)
    handle = Receiver(scp, StabilitySettings(), spool, state).start()
    yield handle, state
    handle.stop()
    state.close()


def _export_folder(folder: Path) -> tuple[int, Path]:
    """A media export as users copy it; returns the number of images and the '-' file."""
    study = TINY.write(folder.parent / "phantom")
    fileset = FileSet()
    for path in study.paths:
        fileset.add(pydicom.dcmread(path))
    fileset.write(folder)
    assert (folder / "DICOMDIR").is_file()
    (folder / "README.txt").write_text("Images of the study. Open with the viewer on this CD.\n")
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(folder / "thumb.jpg")
    (folder / "empty").write_bytes(b"")
    whole = study.paths[0].read_bytes()
    (folder / "broken.dcm").write_bytes(whole[: len(whole) - 2000])
    lidc = sorted((corpus_dir() / "lidc-idri-0001-chest-ct").iterdir())[0]
    assert lidc.name.startswith("-")
    dashed = folder / lidc.name
    shutil.copyfile(lidc, dashed)
    return len(study.paths) + 1, dashed


def _stored(state: StateDB) -> int:
    with state.session() as s:
        return int(s.scalar(select(func.count(Instance.sop_instance_uid))) or 0)


def test_send_a_real_export_folder(
    receiver: tuple[ReceiverHandle, StateDB],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handle, state = receiver
    folder = tmp_path / "export"
    images, dashed = _export_folder(folder)
    code = main(["send", "127.0.0.1", str(handle.port), "--aec", "ANY", str(folder)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    assert f"sent {images} of {images} DICOM files" in out
    assert (
        "skipped 5 of 14 files: 3 not a DICOM file; "
        "1 DICOMDIR: the media's index, not an instance; "
        "1 truncated: the file ends before its last element does"
    ) in out
    assert f"skipped {folder / 'README.txt'}: not a DICOM file" in err
    assert f"sending {images} files" in err, "progress is shown"
    assert _stored(state) == images

    # A name that starts with '-' on the command line, after '--'.
    monkeypatch.chdir(folder)
    assert main(["send", "127.0.0.1", str(handle.port), "--", dashed.name]) == 0
    assert "sent 1 of 1 DICOM files" in capsys.readouterr().out


def test_send_of_nothing_sendable_says_so(
    receiver: tuple[ReceiverHandle, StateDB], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handle, state = receiver
    (tmp_path / "notes.txt").write_text("no images here")
    assert main(["send", "127.0.0.1", str(handle.port), str(tmp_path / "notes.txt")]) == 0
    out = capsys.readouterr().out
    assert "sent 0 of 0 DICOM files" in out
    assert "skipped 1 of 1 files: 1 not a DICOM file" in out
    assert _stored(state) == 0


@pytest.fixture
def node_config(tmp_path: Path, broker_url: str) -> Path:
    """A node's configuration with absolute paths and an existing spool."""
    spool = tmp_path / "node" / "spool"
    Spool(spool)
    StateDB(f"sqlite:///{spool / 'state.db'}").close()
    path = tmp_path / "node" / "node.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "spool_dir": str(spool),
                "pipelines_dir": str(Path(__file__).resolve().parents[3] / "config" / "pipelines"),
                "broker": {"url": broker_url},
            }
        )
    )
    return path


def test_commands_find_their_configuration_from_any_directory(
    node_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    system = tmp_path / "etc" / "dicom-node" / "node.yaml"
    monkeypatch.setattr(options, "SYSTEM_CONFIG", system)
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    # Nowhere to be found: a reason that says where it looked, not a database traceback.
    for argv in (["status"], ["retry", "1"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "no spool at" in err
        assert f"looked for ./config/node.yaml and {system}" in err
        assert "Traceback" not in err

    # The system-wide file, the last place looked in.
    system.parent.mkdir(parents=True)
    shutil.copyfile(node_config, system)
    assert main(["status"]) == 0
    assert "jobs " in capsys.readouterr().out

    # ./config/node.yaml comes before it, and DICOM_NODE_CONFIG before that.
    local = elsewhere / "config" / "node.yaml"
    local.parent.mkdir()
    local.write_text(yaml.safe_dump({"spool_dir": str(tmp_path / "local-spool")}))
    assert main(["status"]) == 1
    assert str(local.relative_to(elsewhere)) in capsys.readouterr().err
    monkeypatch.setenv("DICOM_NODE_CONFIG", str(node_config))
    assert main(["status"]) == 0
    monkeypatch.setenv("DICOM_NODE_CONFIG", str(tmp_path / "missing.yaml"))
    assert main(["status"]) == 1
    assert "missing.yaml does not exist" in capsys.readouterr().err
