from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dicom_node.settings import load_settings

REPO = Path(__file__).resolve().parents[3]


def test_shipped_config_is_valid() -> None:
    settings = load_settings(REPO / "config" / "node.yaml")
    assert settings.scp.ae_title == "DICOM_NODE"
    assert settings.export.destinations[0].port == 4242


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_SCP__PORT", "11999")
    monkeypatch.setenv("DICOM_NODE_STABILITY__QUIET_SECONDS", "7")
    settings = load_settings(REPO / "config" / "node.yaml")
    assert settings.scp.port == 11999
    assert settings.stability.quiet_seconds == 7


def test_cli_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_LOG_LEVEL", "DEBUG")
    assert load_settings(None, log_level="WARNING").log_level == "WARNING"


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("scp:\n  prot: 1\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(path)


def test_bad_ae_title_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("scp:\n  ae_title: 'THIS_TITLE_IS_FAR_TOO_LONG'\n")
    with pytest.raises(ValidationError, match="AE title"):
        load_settings(path)


def test_per_source_quiet_period() -> None:
    settings = load_settings(
        None, stability={"quiet_seconds": 30, "sources": [{"ae_title": "CT1", "quiet_seconds": 5}]}
    )
    assert settings.stability.quiet_for("CT1") == 5
    assert settings.stability.quiet_for("OTHER") == 30
