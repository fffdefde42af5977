from __future__ import annotations

import json
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


def test_secrets_come_from_files_named_like_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compose's /run/secrets, a Kubernetes Secret volume, systemd's LoadCredential=."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "DICOM_NODE_WEB__SESSION_SECRET").write_text("from-a-file-0123456789\n")
    users = [{"name": "admin", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$x$y"}]
    (secrets / "DICOM_NODE_WEB__USERS").write_text(json.dumps(users))
    (secrets / "unrelated.txt").write_text("ignored")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "DICOM_NODE_DATABASE_URL").write_text("postgresql+psycopg://node:pw@db/node")
    config = tmp_path / "node.yaml"
    config.write_text("web:\n  enabled: true\n  session_secret: yaml-loses-to-the-file\n")
    monkeypatch.setenv("DICOM_NODE_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = load_settings(config)
    assert settings.web.session_secret.get_secret_value() == "from-a-file-0123456789"
    assert [u.name for u in settings.web.users] == ["admin"]
    assert settings.database_url == "postgresql+psycopg://node:pw@db/node"
    # The environment still wins over a file.
    monkeypatch.setenv("DICOM_NODE_DATABASE_URL", "sqlite:///x.db")
    assert load_settings(config).database_url == "sqlite:///x.db"
