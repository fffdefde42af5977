"""The real-world corpus: every file pydicom and pydicom-data ship, sent by storescu as it is.

Each file proposes exactly its own SOP class and transfer syntax (a storescu
configuration profile per file), so nothing is converted on the way. For each
file the node either stores the data set byte-identical to what was sent, or
refuses it with a failure status and a quarantined copy; files that storescu
itself cannot read are reported as such. The node must stay up throughout.

"What was sent" is not the file on disk: storescu re-encodes some data sets
(explicit sequence lengths, no trailing padding). The oracle is dcmtk's own
``storescp --bit-preserving``, which receives every file too and writes the
data set exactly as read from the wire.
"""

from __future__ import annotations

import collections
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pydicom
import pytest
from pydicom.data import get_testdata_files
from sqlalchemy import select

from dicom_node.export import echo
from dicom_node.scp import Receiver, ReceiverHandle
from dicom_node.services import free_port, wait_until
from dicom_node.settings import DestinationSettings, ScpSettings, StabilitySettings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.schema import Instance

pytestmark = pytest.mark.slow


def _dataset_bytes(raw: bytes) -> bytes:
    """The data set after the Part-10 preamble and file meta group (all of a bare data set)."""
    if raw[128:132] != b"DICM":
        return raw
    tag, vr = struct.unpack("<I2s", raw[132:138])
    assert tag == 0x00000002, "file meta must start with its group length"
    assert vr == b"UL"
    (group_length,) = struct.unpack("<I", raw[140:144])
    return raw[144 + group_length :]


def _profile(path: Path, folder: Path) -> list[str]:
    """storescu arguments proposing exactly this file's SOP class and transfer syntax."""
    try:
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        ts, sop_class = meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID
    except Exception:  # the file cannot tell: let storescu propose its defaults
        return []
    config = folder / "profile.cfg"
    config.write_text(
        f"[[TransferSyntaxes]]\n[TS]\nTransferSyntax1 = {ts}\n"
        f"[[PresentationContexts]]\n[PC]\nPresentationContext1 = {sop_class}\\TS\n"
        "[[Profiles]]\n[P]\nPresentationContexts = PC\n"
    )
    return ["-xf", str(config), "P"]


@pytest.fixture
def reference_scp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp in bit-preserving mode: the record of the bytes on the wire."""
    folder = tmp_path / "storescp"
    folder.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "+B", "+xa", "-pm", "-od", str(folder), "-aet", "REFERENCE", str(port)],
        env=dict(os.environ, TCP_NODELAY="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ref = DestinationSettings(name="ref", ae_title="REFERENCE", host="127.0.0.1", port=port,
                              timeout_s=2)  # fmt: skip
    wait_until(lambda: echo("CHECK", ref)[0], 30, "storescp")
    yield port, folder
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def receiver(
    tmp_path: Path, scp_engine: Literal["pynetdicom", "builtin"]
) -> Iterator[tuple[ReceiverHandle, Spool, StateDB]]:
    spool = Spool(tmp_path / "spool")
    state = StateDB(f"sqlite:///{tmp_path / 'state.db'}")
    settings = ScpSettings(
        host="127.0.0.1", port=0, min_free_bytes=0, acse_timeout_s=5, engine=scp_engine
    )
    handle = Receiver(settings, StabilitySettings(), spool, state).start()
    yield handle, spool, state
    handle.stop()
    state.close()


def test_every_shipped_file_is_stored_identical_or_refused(
    receiver: tuple[ReceiverHandle, Spool, StateDB],
    reference_scp: tuple[int, Path],
    tmp_path: Path,
) -> None:
    handle, spool, state = receiver
    ref_port, ref_folder = reference_scp
    files = sorted({Path(f) for f in get_testdata_files() if Path(f).is_file()})
    assert len(files) > 200, "pydicom-data must be installed for the corpus"
    env = dict(os.environ, TCP_NODELAY="1")
    outcome: dict[Path, str] = {}
    first_sender: dict[str, Path] = {}
    on_the_wire: dict[Path, bytes] = {}

    def snapshot() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in ref_folder.iterdir()}

    for path in files:
        before = snapshot()
        subprocess.run(
            ["storescu", *_profile(path, tmp_path), "-aec", "REFERENCE", "-to", "5",
             "-ta", "5", "-td", "10", "127.0.0.1", str(ref_port), str(path)],
            capture_output=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        # storescp names files by SOP Instance UID: a repeated UID overwrites one.
        written = [p for p, mtime in snapshot().items() if before.get(p) != mtime]
        if len(written) == 1:
            on_the_wire[path] = written[0].read_bytes()
        result = subprocess.run(
            ["storescu", "-v", *_profile(path, tmp_path), "-aec", "DICOM_NODE", "-to", "5",
             "-ta", "5", "-td", "10", "127.0.0.1", str(handle.port), str(path)],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        output = result.stdout + result.stderr
        responses = [line for line in output.splitlines() if "Received Store Response" in line]
        if any("(Success)" in line for line in responses):
            sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)
            first_sender.setdefault(sop_uid, path)
            outcome[path] = "stored" if first_sender[sop_uid] == path else "duplicate"
        elif responses:
            outcome[path] = "refused: " + responses[0].split("Response")[-1].strip(" ()")
        else:
            errors = [line for line in output.splitlines() if line[:2] in ("E:", "F:", "W:")]
            outcome[path] = "not sent by storescu"
            assert errors, f"storescu neither sent {path.name} nor said why"

    # The node is still up and answering.
    node = DestinationSettings(name="node", ae_title="DICOM_NODE", host="127.0.0.1",
                               port=handle.port, timeout_s=5)  # fmt: skip
    assert echo("CHECK", node)[0]

    with state.session() as s:
        stored = {row.sop_instance_uid: row.path for row in s.scalars(select(Instance))}
    mismatched = []
    for sop_uid, source in first_sender.items():
        assert sop_uid in stored, f"{source.name} was acknowledged but not recorded"
        received = _dataset_bytes(spool.resolve(stored[sop_uid]).read_bytes())
        assert source in on_the_wire, f"the reference storescp did not receive {source.name}"
        if received != _dataset_bytes(on_the_wire[source]):
            mismatched.append(source.name)
    assert mismatched == [], f"stored data sets differ from what was sent: {mismatched}"

    refused = [p for p, o in outcome.items() if o.startswith("refused")]
    quarantined = list(spool.quarantine_dir.glob("*.reason.txt"))
    assert len(quarantined) >= len(refused)
    counts = collections.Counter(o for o in outcome.values())
    print("\ncorpus outcome:")
    for what, n in counts.most_common():
        print(f"  {n:4d}  {what}")
    for path in refused:
        print(f"  refused {path.name}: {outcome[path]}")
    for reason_file in quarantined:
        print(f"  quarantine reason: {reason_file.read_text()}")
    assert counts["stored"] > 100
