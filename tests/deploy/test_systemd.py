"""The systemd units: systemd itself accepts them, they are hardened, and no secret is in argv."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
VENV_BIN = "/opt/dicom-node/.venv/bin/"


def _service(unit: Path) -> dict[str, list[str]]:
    """The [Service] section; a key given several times keeps every value."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().replace("\\\n", " ").splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def _verify(folder: Path, units: list[Path]) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on copies that point at this checkout's programs."""
    copies = []
    for unit in units:
        name = unit.name.replace("@.service", "@cpu.service")
        copy = folder / name
        copy.write_text(unit.read_text().replace(VENV_BIN, str(REPO / ".venv" / "bin") + "/"))
        copies.append(str(copy))
    return subprocess.run(
        ["systemd-analyze", "verify", *copies], capture_output=True, text=True, check=False
    )


def test_systemd_accepts_every_unit(tmp_path: Path) -> None:
    assert len(UNITS) == 4
    result = _verify(tmp_path, UNITS)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # an unknown or misspelt key is only a warning


def test_the_verification_sees_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "src" / "dicom-node.service"
    broken.parent.mkdir()
    broken.write_text(UNITS[0].read_text().replace("ProtectSystem=", "ProtectSistem="))
    (tmp_path / "out").mkdir()
    assert "Unknown key 'ProtectSistem'" in _verify(tmp_path / "out", [broken]).stderr


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_no_secret_in_a_command_line(unit: Path) -> None:
    service = _service(unit)
    for command in service["ExecStart"]:
        # Variables in argv show in every user's `ps`: settings come from files instead.
        assert "$" not in command.replace("%i", ""), command
        assert not re.search(r"(?i)password|auth|secret|token|redis://|postgres", command)


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_hardened(unit: Path) -> None:
    service = _service(unit)
    assert service["User"] == ["dicom-node"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["PrivateTmp"] == ["yes"]
    if unit.name != "dicom-node-flower.service":
        assert service["StateDirectory"] == ["dicom-node"]


def test_receiver_may_bind_port_104_and_web_secrets_are_credentials() -> None:
    node = _service(REPO / "deploy" / "systemd" / "dicom-node.service")
    assert node["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    web = _service(REPO / "deploy" / "systemd" / "dicom-node-web.service")
    loaded = {value.split(":", 1)[0] for value in web["LoadCredential"]}
    assert loaded == {"DICOM_NODE_WEB__SESSION_SECRET", "DICOM_NODE_WEB__USERS"}
    assert not any("Environment" in key and "SECRET" in str(v) for key, v in web.items())
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((REPO / "deploy" / "systemd" / "dicom-node-web.service").read_text())
    assert parser["Service"]["ExecStart"].endswith("dicom-node web serve")
